"""TaskDataset: grouping, splits by task, K-shot splits, training batches, frames without pandas."""

import numpy as np
import pytest
import torch

from bayesmeta.tasks import Standardization, TaskDataset


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


@pytest.mark.parametrize(("body", "match"), [
    ("a,1,2\na,2,1e300\n", r"row 3, column 'r': value '1e300' is out of range \(\|value\| > 3.4e\+38"),
    ("a,1,2\n\na,-4e38,1\n", r"row 4, column 't': value '-4e38' is out of range"),  # blank rows count
    ("a,1,2\na,2,-inf\n", r"row 3, column 'r': non-finite value '-inf'"),
])
def test_csv_values_out_of_range_name_file_row_and_column(tmp_path, body, match):
    p = tmp_path / "inf_1e300.csv"  # the value's text must not be confused with the file's name
    p.write_text("s,t,r\n" + body)
    with pytest.raises(ValueError, match=match) as err:
        TaskDataset.from_csv(p, task="s", x="t", y="r")
    assert str(err.value).startswith(f"{p}: ")


def test_arrays_out_of_range_name_row_and_column():
    with pytest.raises(ValueError, match=r"arrays: row 2, column 'c': value 1e\+300 is out of range"):
        TaskDataset.from_arrays(["a", "a", "b"], [[0.0], [1.0], [2.0]], [1.0, 2.0, 1e300], y_names=["c"])
    with pytest.raises(ValueError, match=r"arrays: row 1, column 'x0': non-finite value nan"):
        TaskDataset.from_arrays(["a", "b"], [0.0, float("nan")], [1.0, 2.0])


def test_standardised_values_that_overflow_name_the_file_row(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("s,t,r\na,1,2\nb,2,3\n\nb,3,1e25\n")
    ds = TaskDataset.from_csv(p, task="s", x="t", y="r")
    std = ds.fit_standardization()
    assert all(np.isfinite(v).all() for v in (std.x_std, std.y_std, std.y_mean))
    ds.check_standardized(std)  # fitted on this data: never overflows
    with pytest.raises(ValueError, match=r"d.csv: row 5, column 'r': value 1e\+25 is beyond ±1.8e\+19, where its "
                                         r"square overflows float32"):
        ds.check_standardized(Standardization.identity(1, 1))
    tight = Standardization((0.0,), (1e-30,), (0.0,), (1.0,))
    with pytest.raises(ValueError, match=r"row 3, column 't': value 2.0 is 2e\+30 after standardisation with x"):
        ds.subset(["b"]).check_standardized(tight, what="with x")


def test_standardisation_record_must_be_finite_and_positive():
    with pytest.raises(ValueError, match=r"y_std must be finite and > 0; got \[0.0\]"):
        Standardization((0.0,), (1.0,), (0.0,), (0.0,))
    with pytest.raises(ValueError, match=r"not a standardisation record: .*x_mean must be finite"):
        Standardization.from_dict({"x_mean": [float("nan")], "x_std": [1], "y_mean": [0], "y_std": [1]})


def test_to_batch_standardises_in_float64():
    base = 1.7e9  # seconds since 1970: float32 cannot tell 1.7e9 from 1.7e9 + 50
    ds = TaskDataset.from_arrays(["a", "a", "b", "b"], [base, base + 50, base + 100, base + 150], [0.0, 1, 2, 3])
    b = ds.to_batch(ds.fit_standardization())
    assert torch.allclose(b.x_support[:, :, 0], torch.tensor([[-1.3416, -0.4472], [0.4472, 1.3416]]), atol=1e-4)


def test_csv_byte_order_mark_directory_and_binary(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbfs,t,r\r\na,1,2\r\nb,2,3\r\n")  # as Excel writes "CSV UTF-8"
    ds = TaskDataset.from_csv(p, task="s", x="t", y="r")
    assert ds.task_ids == ["a", "b"] and ds.rows[1].tolist() == [3]
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a directory, not a CSV file"):
        TaskDataset.from_csv(tmp_path, task="s", x="t", y="r")
    p.write_bytes(b"s,t,r\n\xff\xfe,1,2\n")
    with pytest.raises(ValueError, match=f"{p}: not a UTF-8 text file"):
        TaskDataset.from_csv(p, task="s", x="t", y="r")


def test_csv_task_column_optional_and_inputs_only(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text("t,s\n1,a\n2,b\n3,a\n")
    ds = TaskDataset.from_csv(p, task="s", x="t", y=[], task_optional=True)
    assert ds.task_ids == ["a", "b"] and ds.y_dim == 0 and ds.y[0].shape == (2, 0)
    assert ds.x[0][:, 0].tolist() == [1.0, 3.0] and ds.rows[0].tolist() == [2, 4]
    p.write_text("t\n1\n\n2\n")
    one = TaskDataset.from_csv(p, task="s", x="t", y=[], task_optional=True)
    assert one.task_ids == ["new"] and one.rows[0].tolist() == [2, 4]
    with pytest.raises(ValueError, match=r"missing task column\(s\) \['s'\]"):
        TaskDataset.from_csv(p, task="s", x="t", y=[])
    with pytest.raises(ValueError, match="no x column given"):
        TaskDataset.from_csv(p, task=None, x=[], y="t")


def test_an_empty_group_id_and_a_column_listed_twice_are_refused_naming_them(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("s,t,r\na,1,2\n,2,3\nb,1,1\n")
    with pytest.raises(ValueError, match=r"d.csv: row 3, column 's': empty group id \(a missing value\?\); give every "
                                         r"row its group"):
        TaskDataset.from_csv(p, task="s", x="t", y="r")
    p.write_text("s,t,r\na,1,2\nb,2,3\n")
    with pytest.raises(ValueError, match=r"d.csv: x column\(s\) \['t'\] listed more than once \(x=\['t', 't'\]\)"):
        TaskDataset.from_csv(p, task="s", x=["t", "t"], y="r")
