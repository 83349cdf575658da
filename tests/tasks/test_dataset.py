"""TaskDataset: grouping, splits by task, K-shot splits, training batches, frames without pandas."""

import numpy as np
import pytest
import torch

from bayesmeta.tasks import TaskDataset


def _ds(sizes=(3, 5, 2, 8)):
    ids, x, y = [], [], []
    for t, n in enumerate(sizes):
        ids += [f"g{t}"] * n
        x += [[float(t), float(i)] for i in range(n)]
        y += [10.0 * t + i for i in range(n)]
    return TaskDataset.from_arrays(ids, x, y, x_names=["a", "b"], y_names=["c"])


def test_groups_keep_order_and_rows():
    ds = _ds()
    assert ds.task_ids == ["g0", "g1", "g2", "g3"] and ds.sizes == [3, 5, 2, 8]
    assert ds.x[1][:, 1].tolist() == [0, 1, 2, 3, 4] and ds.y[3][2, 0] == 32.0


def test_split_is_by_task_and_seeded():
    ds = _ds(sizes=(2,) * 20)
    a, b, c = ds.split((0.5, 0.25, 0.25), seed=3)
    assert (len(a), len(b), len(c)) == (10, 5, 5)
    assert sorted(a.task_ids + b.task_ids + c.task_ids) == sorted(ds.task_ids)
    assert ds.split((0.5, 0.25, 0.25), seed=3)[0].task_ids == a.task_ids
    assert ds.split((0.5, 0.25, 0.25), seed=4)[0].task_ids != a.task_ids


def test_kshot_split_is_deterministic_and_reports_small_tasks():
    ds = _ds()
    batch, kept, skipped = ds.kshot(3, seed=0)
    assert kept == ["g1", "g3"] and skipped == ["g0", "g2"]
    assert batch.mask_support.sum(-1).tolist() == [3, 3] and batch.mask_query.sum(-1).tolist() == [2, 5]
    again, _, _ = ds.kshot(3, seed=0)
    assert torch.equal(again.x_support, batch.x_support)
    rows = torch.cat([batch.y_support[1, :3, 0], batch.y_query[1, :5, 0]]).sort().values
    assert rows.tolist() == [30.0 + i for i in range(8)]  # support and query partition the task's rows
    with pytest.raises(ValueError, match="no task has more than 8 rows"):
        ds.kshot(8)


def test_sample_batch_draws_eligible_tasks_only():
    ds = _ds()
    b = ds.sample_batch(50, shots=4, num_query=3, generator=torch.Generator().manual_seed(0))
    assert b.x_support.shape == (50, 4, 2) and set(b.x_support[:, 0, 0].tolist()) <= {1.0, 3.0}
    assert b.mask_query.sum(-1).tolist() == [1 if x == 1.0 else 3 for x in b.x_support[:, 0, 0].tolist()]


class _Frame:
    """The part of a data-frame interface TaskDataset uses (so the test needs no pandas)."""

    def __init__(self, cols):
        self.cols = cols
        self.columns = list(cols)

    def __getitem__(self, key):
        return type("Col", (), {"to_numpy": lambda s, v=self.cols[key]: np.asarray(v)})()


def test_from_frame_and_its_errors():
    df = _Frame({"s": ["a", "a", "b"], "t": [0.0, 1.0, 2.0], "r": [1.0, 2.0, 3.0]})
    ds = TaskDataset.from_frame(df, task="s", x="t", y="r")
    assert ds.task_ids == ["a", "b"] and ds.sizes == [2, 1]
    with pytest.raises(ValueError, match=r"missing y column\(s\) \['z'\]"):
        TaskDataset.from_frame(df, task="s", x="t", y="z")
    bad = _Frame({"s": ["a"], "t": ["x"], "r": [1.0]})
    with pytest.raises(ValueError, match="column 't' is not numeric"):
        TaskDataset.from_frame(bad, task="s", x="t", y="r")


def test_csv_row_numbers_in_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("s,t,r\na,1,2\na,2\n")
    with pytest.raises(ValueError, match="row 3 has 2 fields; the header has 3"):
        TaskDataset.from_csv(p, task="s", x="t", y="r")
    with pytest.raises(FileNotFoundError, match="no such file"):
        TaskDataset.from_csv(tmp_path / "missing.csv", task="s", x="t", y="r")
    p.write_text("s,t,r\n")
    with pytest.raises(ValueError, match="no data rows"):
        TaskDataset.from_csv(p, task="s", x="t", y="r")
