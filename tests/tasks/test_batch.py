import math

import pytest
import torch

import bayesmeta as bm


def test_from_arrays_pads_and_masks():
    b = bm.TaskBatch.from_arrays(
        x_support=[[0.0, 1.0, 2.0], [5.0]], y_support=[[1.0, 2.0, 3.0], [4.0]],
        x_query=[[0.5], [1.5, 2.5]], y_query=[[0.0], [1.0, 2.0]],
    )
    assert b.x_support.shape == (2, 3, 1) and b.y_query.shape == (2, 2, 1)
    assert b.mask_support.tolist() == [[True, True, True], [True, False, False]]
    assert b.mask_query.tolist() == [[True, False], [True, True]]
    x, y, m = b.all_points()
    assert x.shape == (2, 5, 1) and m.sum(-1).tolist() == [4, 3]
    sub = b[1]
    assert len(sub) == 1 and sub.x_support[0, 0, 0].item() == 5.0
    assert b[torch.tensor([True, False])].num_tasks == 1


def test_family_sampling_is_reproducible():
    fam = bm.tasks.Sinusoid(noise_std=0.1)
    a = fam.sample(5, shots=3, num_query=4, generator=torch.Generator().manual_seed(3))
    b = fam.sample(5, shots=3, num_query=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.y_query, b.y_query)
    amp = a.params["amplitude"]
    assert ((amp >= 0.1) & (amp <= 5.0)).all()
    assert ((a.params["phase"] >= 0) & (a.params["phase"] <= math.pi)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x_support": [[0.0, 1.0]], "y_support": [[1.0]]}, "task 0: x_support has 2 points"),
        ({"x_support": [[0.0], [1.0]], "y_support": [[1.0]]}, "x_support has 2 tasks but y_support has 1"),
        ({"x_support": [[0.0], [float("nan")]], "y_support": [[1.0], [2.0]]}, "non-finite value in task 1"),
        ({"x_support": [[[0.0, 1.0]], [[1.0]]], "y_support": [[1.0], [2.0]]}, "tasks disagree on x_dim"),
        ({"x_support": [], "y_support": []}, "empty"),
        ({"x_support": [["a"]], "y_support": [[1.0]]}, "numeric"),
    ],
)
def test_from_arrays_errors_name_task_and_field(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bm.TaskBatch.from_arrays(**kwargs)


def test_query_set_without_its_mask_is_named():
    # A query set needs x, y and mask: a missing one is named, not returned as None.
    x = torch.zeros(2, 3, 1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    b = bm.TaskBatch(x, x, mask, x_query=x, y_query=x)
    with pytest.raises(ValueError, match="no mask_query"):
        _ = b.query
    with pytest.raises(ValueError, match="no mask_query"):
        b.all_points()
    with pytest.raises(ValueError, match="no query set"):
        _ = bm.TaskBatch(x, x, mask).query


def test_validate_min_points_names_task():
    b = bm.TaskBatch.from_arrays(x_support=[[0.0, 1.0], [2.0]], y_support=[[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="task 1 has 1 observed support points; this method needs at least 2"):
        b.validate(min_support=2)


def test_padding_is_zero_filled_on_construction_and_validation():
    nan = float("nan")
    mask = torch.tensor([[True, True], [True, False]])
    x = torch.tensor([[[0.0], [1.0]], [[2.0], [nan]]])
    b = bm.TaskBatch(x, torch.tensor([[[1.0], [2.0]], [[3.0], [nan]]]), mask)
    assert b.x_support[1, 1, 0].item() == 0.0 and b.y_support[1, 1, 0].item() == 0.0
    assert torch.isnan(x[1, 1, 0])  # the caller's tensor is not modified
    b.y_support[1, 1] = nan  # written after construction
    assert b.validate() is b and b.y_support[1, 1, 0].item() == 0.0
    assert torch.isfinite(b[1].y_support).all() and torch.isfinite(b.to("cpu").x_support).all()
    b.y_support[1, 0] = nan  # an observed point
    with pytest.raises(ValueError, match="support y has a non-finite value in task 1, point 0"):
        b.validate()


def test_nan_padding_never_reaches_the_model():
    """Raw tensors with NaN at masked-out points: adapt and predict as if the padding were zero."""
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    x = torch.tensor([[[0.5], [1.0], [float("nan")]]])
    y = torch.tensor([[[1.0], [2.0], [float("inf")]]])
    mask = torch.tensor([[True, True, False]])
    pred = learner.adapt(x, y, mask).predict(torch.tensor([[[0.0], [2.0]]]))
    ref = learner.adapt(x.nan_to_num(0.0), y.nan_to_num(0.0, 0.0), mask).predict(torch.tensor([[[0.0], [2.0]]]))
    assert torch.isfinite(pred.mean).all() and torch.equal(pred.mean, ref.mean)


def _loop_pad(tensors, size, dtype):
    """The per-task loop the batch, the dataset and `predict` each had before `pad_ragged`."""
    out = torch.zeros(len(tensors), size, tensors[0].shape[1], dtype=dtype)
    mask = torch.zeros(len(tensors), size, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


@pytest.mark.parametrize("sizes", [(3, 1, 4), (0, 2), (0, 0), (5,)])
@pytest.mark.parametrize("min_size", [0, 1, 7])
def test_pad_ragged_equals_the_loop_it_replaced(sizes, min_size):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, 2, generator=g, dtype=torch.float64) for n in sizes]
    v, m = bm.tasks.batch.pad_ragged(tensors, min_size=min_size)
    ref_v, ref_m = _loop_pad(tensors, max([*sizes, min_size]), torch.float64)
    assert v.dtype == torch.float64 and torch.equal(v, ref_v) and torch.equal(m, ref_m)


def test_pad_ragged_takes_the_first_tensors_dtype_and_rejects_nothing():
    v, m = bm.tasks.batch.pad_ragged([torch.ones(1, 1, dtype=torch.float32), torch.ones(2, 1, dtype=torch.float64)])
    assert v.dtype == torch.float32 and m.tolist() == [[True, False], [True, True]]
    with pytest.raises(ValueError, match="no tensors"):
        bm.tasks.batch.pad_ragged([])


def test_kshot_batches_pad_like_before():
    ds = bm.tasks.TaskDataset.from_arrays(["a"] * 4 + ["b"] * 2, [[float(i)] for i in range(6)], list(range(6)))
    batch, _, _ = ds.kshot(1, seed=0)
    ref, ref_m = _loop_pad([torch.as_tensor(v[1:], dtype=torch.float32) for v in (ds.x[0], ds.x[1])], 3,
                           torch.float32)
    assert torch.equal(batch.mask_query, ref_m)
    assert sorted(batch.x_query[0][ref_m[0]].tolist() + batch.x_support[0].tolist()) == [[0.0], [1.0], [2.0], [3.0]]
    assert batch.x_query.shape == ref.shape and batch.x_query.dtype == torch.float32
