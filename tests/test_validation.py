"""Validation during meta-training: held-out tasks, support/query splits, scores, early stopping, warnings."""

import warnings

import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference.early_stopping import EarlyStopping, MetaOverfittingWarning
from bayesmeta.inference.loop import _optimizer
from bayesmeta.inference.options import History
from bayesmeta.validation import MAX_VALIDATION_TASKS, ValidationSet, auto_val_shots, hold_out

CPU = torch.device("cpu")


def _pool(num_tasks=20, points=15, seed=0):
    return bm.tasks.HierarchicalLinear(dim=1).sample(num_tasks, shots=points, num_query=0,
                                                     generator=torch.Generator().manual_seed(seed))


def _linear_learner():
    return bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)


# ---------------------------------------------------------------------------------------------- hold-out


def test_hold_out_is_a_seeded_partition_of_the_pool():
    pool = _pool(20)
    train, val = hold_out(pool, 0.2, seed=3)
    assert (len(train), len(val)) == (16, 4)
    both = torch.cat([train.x_support, val.x_support])  # every task once: the multiset of tasks is unchanged
    assert torch.equal(both.sum((1, 2)).sort().values, pool.x_support.sum((1, 2)).sort().values)
    again = hold_out(pool, 0.2, seed=3)[1]
    assert torch.equal(again.x_support, val.x_support)  # the same seed holds out the same tasks (resume)
    assert not torch.equal(hold_out(pool, 0.2, seed=4)[1].x_support, val.x_support)


def test_hold_out_takes_at_most_max_validation_tasks_and_warns_on_tiny_pools():
    big = _pool(400, points=3)
    assert len(hold_out(big, 0.2, seed=0)[1]) == MAX_VALIDATION_TASKS
    with pytest.warns(UserWarning, match="too small to hold out"):
        train, val = hold_out(_pool(5), 0.2, seed=0)
    assert val is None and len(train) == 5
    assert hold_out(_pool(5), 0.0, seed=0)[1] is None  # 0: silently none


# ---------------------------------------------------------------------------------------------- splits


def test_auto_shots_are_one_a_third_and_two_thirds_of_the_median_task():
    assert auto_val_shots(torch.tensor([15, 15, 14])) == (1, 5, 10)
    assert auto_val_shots(torch.tensor([3, 3])) == (1, 2)
    with pytest.raises(ValueError, match="at least 2"):
        auto_val_shots(torch.tensor([1, 1, 2]))


def test_validation_set_splits_each_task_into_k_support_and_the_rest_as_query():
    pool = _pool(4, points=6)
    vs = ValidationSet(pool, (1, 4), x_dim=1, y_dim=1, device=CPU)
    for k, (keep, b) in vs.sets.items():
        assert keep.tolist() == [0, 1, 2, 3]
        assert b.mask_support.sum(-1).tolist() == [k] * 4 and b.mask_query.sum(-1).tolist() == [6 - k] * 4
        for t in range(4):  # support and query are disjoint and together the task's points
            xs = torch.cat([b.x_support[t, :, 0], b.x_query[t][b.mask_query[t], 0]]).sort().values
            assert torch.equal(xs, pool.x_support[t, :, 0].sort().values)
    (_, b1), (_, b4) = vs.sets[1], vs.sets[4]
    assert torch.equal(b1.x_support[:, 0], b4.x_support[:, 0])  # one fixed order: nested supports


def test_tasks_too_small_for_a_shot_count_are_skipped_and_listed_and_none_left_is_an_error():
    x = [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0], [1.0, 2.0, 3.0]]
    pool = bm.TaskBatch.from_arrays(x_support=x, y_support=[[v + 1 for v in t] for t in x])
    with pytest.warns(UserWarning, match=r"K=3: tasks \[1, 2\]"):
        vs = ValidationSet(pool, (1, 3), x_dim=1, y_dim=1, device=CPU)
    assert vs.sets[1][0].tolist() == [0, 1, 2] and vs.sets[3][0].tolist() == [0]
    with pytest.raises(ValueError, match="no validation task has more than 6 points"):
        ValidationSet(pool, (1, 6), x_dim=1, y_dim=1, device=CPU)
    with pytest.raises(ValueError, match="x_dim=1, y_dim=1; the learner expects x_dim=2"):
        ValidationSet(pool, (1,), x_dim=2, y_dim=1, device=CPU)


def test_validation_scores_agree_with_evaluate_on_the_same_splits():
    """The scorer's NLL and 90 % coverage against bm.evaluate, an independent implementation."""
    learner = _linear_learner().fit(_pool(30), progress=False)
    vs = ValidationSet(_pool(12, points=9, seed=1), (), x_dim=1, y_dim=1, device=CPU)
    scores = vs.score(learner)
    ev = bm.evaluate(learner, {k: b for k, (_, b) in vs.sets.items()}, metrics=("nll", "coverage"), oracle=False)
    assert [s["shots"] for s in scores["per_shot"]] == [1, 3, 6]
    for s, row in zip(scores["per_shot"], ev.summary, strict=True):
        assert s["nll"] == pytest.approx(row["nll"], abs=1e-5)
        assert s["coverage_90"] == pytest.approx(row["coverage_90"], abs=1e-9)
    assert scores["nll"] == pytest.approx(sum(r["nll"] for r in ev.summary) / 3, abs=1e-5)
    assert scores["task_nll"].shape == (12,)
    assert float(scores["task_nll"].mean()) == pytest.approx(scores["nll"], abs=1e-5)  # every task at every K


# ---------------------------------------------------------------------------------------------- early stopping


def _scores(nll, task_nll, coverage=0.9):
    return {"nll": nll, "coverage_90": coverage, "task_nll": torch.as_tensor(task_nll, dtype=torch.float64),
            "per_shot": [{"shots": 1, "nll": nll, "coverage_90": coverage, "tasks": len(task_nll)}]}


def _history(losses_by_step):
    h = History()
    for step, loss in losses_by_step:
        h.append(step, loss, 0.0, 1e-3)
    return h


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    module = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=2, window=10)
    h = _history([(10, 5.0), (20, 4.0), (30, 3.0), (40, 2.0)])
    with torch.no_grad():
        module.weight.fill_(1.0)
    assert stopper.update(10, _scores(1.0, [1.0, 1.0]), {"m": module}, h) == (False, None)
    with torch.no_grad():
        module.weight.fill_(2.0)
    assert stopper.update(20, _scores(0.5, [0.5, 0.5]), {"m": module}, h)[0] is False  # better: kept
    with torch.no_grad():
        module.weight.fill_(3.0)
    assert stopper.update(30, _scores(0.52, [0.5, 0.54]), {"m": module}, h)[0] is False  # within noise
    stop, message = stopper.update(40, _scores(0.51, [0.51, 0.51]), {"m": module}, h)
    assert stop and message is None  # two validations without improvement
    assert h.best_step == 20 and [v["step"] for v in h.validation] == [10, 20, 30, 40]
    assert stopper.restore({"m": module}) == 20 and float(module.weight.detach()) == 2.0


def test_a_clear_rise_of_validation_nll_while_training_loss_falls_is_meta_overfitting():
    stopper = EarlyStopping(patience=None, window=10)
    h = _history([(10, 5.0), (20, 3.0)])
    stopper.update(10, _scores(0.5, [0.4, 0.5, 0.6]), {}, h)
    _, message = stopper.update(20, _scores(0.9, [0.8, 0.9, 1.0]), {}, h)
    assert message is not None and "meta-overfitting" in message and "0.500 (step 10)" in message
    assert "training loss fell from 5.000 to 3.000" in message and h.notes == [message]
    h.append(30, 2.0, 0.0, 1e-3)
    assert stopper.update(30, _scores(2.0, [2.0, 2.0, 2.0]), {}, h)[1] is None  # said once


def test_no_warning_when_training_loss_rises_too_or_the_rise_is_noise():
    stopper = EarlyStopping(patience=None, window=10)
    h = _history([(10, 3.0), (20, 4.0)])
    stopper.update(10, _scores(0.5, [0.4, 0.5, 0.6]), {}, h)
    assert stopper.update(20, _scores(0.9, [0.8, 0.9, 1.0]), {}, h)[1] is None  # training got worse too
    stopper = EarlyStopping(patience=None, window=10)
    h = _history([(10, 5.0), (20, 3.0)])
    stopper.update(10, _scores(0.5, [0.5, 0.5, 0.5]), {}, h)
    assert stopper.update(20, _scores(0.6, [0.1, 0.1, 1.6]), {}, h)[1] is None  # +0.1 ± 0.5: not clear


def test_coverage_falling_well_below_its_level_is_reported():
    stopper = EarlyStopping(patience=None, window=10)
    h = _history([(10, 5.0), (20, 3.0)])
    stopper.update(10, _scores(0.5, [0.5, 0.5], coverage=0.88), {}, h)
    _, message = stopper.update(20, _scores(0.4, [0.4, 0.4], coverage=0.7), {}, h)
    assert message is not None and "cover only K=1: 0.70" in message


# ---------------------------------------------------------------------------------------------- fit


def _latent_learner():
    return bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=2, hidden=(16,)))


def test_fit_on_a_pool_validates_and_ends_with_the_best_validation_weights(tmp_path):
    pool = bm.tasks.Sinusoid(noise_std=0.1).sample(20, shots=12, num_query=0, generator=torch.Generator().manual_seed(0))
    learner = _latent_learner()
    learner.fit(pool, 60, val_every=20, progress=False, checkpoint=tmp_path / "ck.pt")
    val = learner.history.validation
    assert [v["step"] for v in val] == [20, 40, 60]
    best = min(val, key=lambda v: v["nll"])
    assert learner.history.best_step == best["step"]
    # the learner holds the best step's weights: scoring it again on the same held-out tasks gives that score
    held = hold_out(pool, 0.2, seed=0)[1]
    again = ValidationSet(held, (), x_dim=1, y_dim=1, device=CPU, predict_options={"num_samples": 250}).score(learner)
    assert again["nll"] == pytest.approx(best["nll"], abs=1e-4)
    state = bm.inference.load_checkpoint(tmp_path / "ck.pt")
    assert state["early_stopping"]["best_step"] == best["step"]


def test_resumed_fit_with_validation_ends_where_an_uninterrupted_one_does(tmp_path):
    pool = bm.tasks.Sinusoid(noise_std=0.1).sample(20, shots=12, num_query=0, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    full = _latent_learner().fit(pool, 60, val_every=20, progress=False)
    torch.manual_seed(0)

    def interrupt(step, history):
        if step == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _latent_learner().fit(pool, 60, val_every=20, progress=False, checkpoint=tmp_path / "ck.pt",
                              checkpoint_every=20, on_checkpoint=interrupt)
    torch.manual_seed(0)
    resumed = _latent_learner().fit(pool, 60, val_every=20, progress=False, checkpoint=tmp_path / "ck.pt",
                                    checkpoint_every=20, resume=True)
    assert [v["nll"] for v in resumed.history.validation] == [v["nll"] for v in full.history.validation]
    assert resumed.history.best_step == full.history.best_step
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_validation_false_and_families_do_not_hold_out():
    pool = _pool(20)
    learner = _latent_learner().fit(pool, 5, progress=False, validation=False)
    assert learner.history.validation == [] and learner.history.best_step is None
    learner = _latent_learner().fit(bm.tasks.HierarchicalLinear(dim=1), 5, progress=False)
    assert learner.history.validation == []


def test_bad_validation_options_are_errors_naming_them():
    pool = _pool(20)
    with pytest.raises(ValueError, match="patience must be None"):
        _latent_learner().fit(pool, 5, patience=0)
    with pytest.raises(ValueError, match="val_every must be None or an int from 1 to steps=5"):
        _latent_learner().fit(pool, 5, val_every=10)
    with pytest.raises(ValueError, match="no validation task has more than 15 points"):
        _latent_learner().fit(pool, 5, val_shots=(1, 15), progress=False)
    with pytest.raises(TypeError, match="validation must be a TaskBatch"):
        _latent_learner().fit(pool, 5, validation="yes", progress=False)
    with pytest.raises(ValueError, match="validation does not apply"):
        _linear_learner().fit(pool, validation=_pool(4))
    with pytest.raises(ValueError, match="val_shots must be a tuple of distinct ints"):
        bm.TrainConfig(val_shots=(1, 1))


def test_exact_fit_does_not_hold_out_tasks():
    pool = _pool(20)
    learner = _linear_learner().fit(pool, progress=False)
    assert learner.history.validation == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "too small to hold out" warning either
        _linear_learner().fit(_pool(4), progress=False)


def test_weight_decay_is_a_gaussian_prior_on_weight_matrices_only():
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    params = list(net.parameters())
    opt = _optimizer(params, bm.TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.5))
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    # SGD on L = 0 + wd/2 |W|^2: W <- W - lr * wd * W; the bias is not decayed
    assert torch.allclose(net.weight, torch.full_like(net.weight, 1 - 0.1 * 0.5))
    assert torch.equal(net.bias, torch.ones(2))


def test_warnings_from_deep_inside_fit_name_the_users_line():
    with pytest.warns(UserWarning, match="too small to hold out") as record:
        _latent_learner().fit(_pool(5), 2, progress=False)
    assert record[0].filename == __file__


def test_meta_overfitting_warning_is_exported():
    assert bm.MetaOverfittingWarning is MetaOverfittingWarning and issubclass(MetaOverfittingWarning, UserWarning)


def test_baselines_validate_on_pools_the_same_way():
    pool = _pool(20)
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(16,)).fit(pool, 40, val_every=20, progress=False)
    val = maml.history.validation
    assert [v["step"] for v in val] == [20, 40] and [s["shots"] for s in val[0]["per_shot"]] == [1, 5, 10]
    assert maml.history.best_step == min(val, key=lambda v: v["nll"])["step"]
    held = hold_out(pool, 0.2, seed=0)[1]
    again = ValidationSet(held, (), x_dim=1, y_dim=1, device=CPU).score(maml)  # the kept weights score as recorded
    assert again["nll"] == pytest.approx(min(v["nll"] for v in val), abs=1e-5)
