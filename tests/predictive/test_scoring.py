"""One scoring: validation, episode validation and ``bm.evaluate`` give the same NLL and coverage on one predictive."""

import math

import pytest
import torch
import torch.distributions as D

import bayesmeta as bm
import bayesmeta.evaluation.metrics as metrics
import bayesmeta.predictive.scoring as scoring
from bayesmeta.fewshot.base import EpisodeValidation
from bayesmeta.predictive import FamilyMixture
from bayesmeta.validation import _SEED, ValidationSet, score_query

CPU = torch.device("cpu")
KINDS = ("gaussian", "poisson", "bernoulli", "categorical", "classes")
CLASSES = 3


class _Fixed:
    """A stub learner whose ``adapt(b).predict(x_query)`` is one fixed predictive (checked against the batch)."""

    device = CPU

    def __init__(self, pred) -> None:
        self.pred = pred

    def _modules(self) -> dict:
        return {}

    def adapt(self, b):
        assert tuple(b.x_query.shape[:2]) == tuple(self.pred.shape[:2])
        return self

    def predict(self, x, **options):
        return self.pred


def _outcomes(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` observations of a kind's outcome type."""
    if kind == "gaussian":
        return 2 * torch.randn(n, generator=g)
    if kind == "poisson":
        return torch.poisson(torch.full((n,), 3.0), generator=g)
    if kind == "bernoulli":
        return torch.bernoulli(torch.full((n,), 0.4), generator=g)
    return torch.randint(0, CLASSES, (n,), generator=g).float()


def _pool(kind: str, num_tasks: int = 40, seed: int = 0) -> bm.TaskBatch:
    """Tasks of 8..12 points each (ragged, so the query masks have padding)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(8, 13, (num_tasks,), generator=g).tolist()
    return bm.TaskBatch.from_arrays(x_support=[torch.randn(n, generator=g) for n in sizes],
                                    y_support=[_outcomes(kind, n, g) for n in sizes])


def _predictive(kind: str, t: int, q: int, seed: int = 1):
    """A predictive of each kind over ``[T, Q, 1]``, with per-task, per-point parameters (3 components)."""
    g = torch.Generator().manual_seed(seed)
    s = 3
    log_w = torch.randn(s, t, generator=g)  # [S, T]
    if kind == "gaussian":
        return bm.GaussianMixture(2 * torch.randn(s, t, q, 1, generator=g), torch.rand(s, t, q, 1, generator=g) + 0.5,
                                  log_w)
    if kind == "poisson":
        rates = 4 * torch.rand(s, t, q, generator=g) + 0.5  # [S, T, Q]
        return FamilyMixture(rates, log_w, lambda p, sl: D.Poisson(p), shape=(t, q, 1))
    if kind == "bernoulli":
        probs = torch.rand(s, t, q, generator=g)  # [S, T, Q]
        return FamilyMixture(probs, log_w, lambda p, sl: D.Bernoulli(probs=p), shape=(t, q, 1))
    logits = torch.randn(s, t, q * CLASSES, generator=g)  # [S, T, Q C]
    if kind == "categorical":
        return FamilyMixture(logits, log_w, lambda p, sl: D.Categorical(logits=p.unflatten(-1, (q, CLASSES))),
                             shape=(t, q, 1))
    return bm.ClassPredictive(logits[0].unflatten(-1, (q, CLASSES)))


def _validation_case(kind: str, k: int = 3):
    vs = ValidationSet(_pool(kind), (k,), x_dim=1, y_dim=1, device=CPU)
    batch = vs.sets[k][1]
    t, q = batch.mask_query.shape
    return vs, batch, _predictive(kind, t, q)


def test_evaluation_metrics_is_a_re_export_of_scoring():
    assert sorted(metrics.__all__) == sorted(scoring.__all__)
    assert all(getattr(metrics, name) is getattr(scoring, name) for name in scoring.__all__)


@pytest.mark.parametrize("kind", KINDS)
def test_validation_scoring_is_evaluates_scoring(kind):
    """The helper validation scores with against the scoring functions ``evaluate`` uses, one seed for the PIT."""
    _, batch, pred = _validation_case(kind)
    _, y, mask = batch.query
    torch.manual_seed(5)
    nll, (inside, pairs) = score_query(pred, y, mask)
    torch.manual_seed(5)
    assert torch.equal(nll, scoring.task_nll(pred, y, mask).double())
    assert torch.equal(pairs, mask.sum(-1).double())
    if kind in ("categorical", "classes"):  # labels have no order: no intervals, as evaluate says
        assert bool(inside.isnan().all())
        return
    cov = scoring.task_coverages(pred, y, mask, levels=(0.9,))[:, 0]  # [T]
    assert torch.allclose(inside / pairs, cov, rtol=0, atol=1e-12)
    torch.manual_seed(5)
    pooled = scoring.coverage(pred, y, mask, level=0.9)
    assert float(inside.sum() / pairs.sum()) == pytest.approx(pooled, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_validation_set_score_equals_evaluate_on_the_same_predictive(kind):
    """The real path: ValidationSet.score and bm.evaluate on the same query sets, seeded alike."""
    vs, batch, pred = _validation_case(kind)
    learner = _Fixed(pred)
    scores = vs.score(learner)
    ev = bm.evaluate(learner, {3: batch}, metrics=("nll", "coverage"), oracle=False, seed=_SEED)
    row = ev.summary[0]
    assert scores["per_shot"][0]["nll"] == pytest.approx(row["nll"], rel=1e-12)
    assert scores["nll"] == pytest.approx(row["nll"], rel=1e-12)
    per_task = torch.tensor([r["nll"] for r in ev.rows], dtype=torch.float64)
    assert torch.allclose(scores["task_nll"], per_task, rtol=1e-12, atol=0)
    if kind in ("categorical", "classes"):
        assert math.isnan(scores["coverage_90"]) and "coverage_90" not in row
    else:
        assert scores["coverage_90"] == pytest.approx(row["coverage_90"], abs=1e-12)
        assert scores["per_shot"][0]["coverage_90"] == pytest.approx(row["coverage_90"], abs=1e-12)


def test_validation_coverage_of_a_calibrated_bernoulli_is_its_level():
    """Bernoulli(0.3) outcomes under a Bernoulli(0.3) predictive: 90 % coverage (the plain CDF said 0.70)."""
    g = torch.Generator().manual_seed(0)
    t, n = 64, 200
    pool = bm.TaskBatch.from_arrays(x_support=torch.randn(t, n, generator=g).unbind(),
                                    y_support=torch.bernoulli(torch.full((t, n), 0.3), generator=g).unbind())
    vs = ValidationSet(pool, (1,), x_dim=1, y_dim=1, device=CPU)
    batch = vs.sets[1][1]
    q = batch.mask_query.shape[1]
    pred = FamilyMixture(torch.full((1, t, q), 0.3), None, lambda p, sl: D.Bernoulli(probs=p), shape=(t, q, 1))
    scores = vs.score(_Fixed(pred))
    assert scores["coverage_90"] == pytest.approx(0.9, abs=0.02)  # sd about 0.003 over 12 736 points
    plain = ((2 * pred.cdf(batch.y_query) - 1).abs() <= 0.9).double().mean()  # the old definition
    assert float(plain) == pytest.approx(0.7, abs=0.02)


def test_validation_maps_a_non_finite_predictive_to_inf_where_evaluate_refuses_it():
    vs, batch, pred = _validation_case("gaussian")
    t, q = batch.mask_query.shape
    loc = torch.zeros(1, t, q, 1)
    loc[0, 2] = math.nan
    bad = bm.GaussianMixture(loc, 1.0)
    scores = vs.score(_Fixed(bad))
    assert math.isinf(float(scores["task_nll"][2])) and bool(torch.isfinite(scores["task_nll"][3:]).all())
    with pytest.raises(ValueError, match="task 2"):
        bm.evaluate(_Fixed(bad), {3: batch}, metrics=("nll",), oracle=False)


def test_episode_validation_scores_as_evaluate_does():
    pool = _pool("classes", num_tasks=20)
    batch = pool.first_shots(4)[0]
    g = torch.Generator().manual_seed(0)
    rest = [torch.randint(0, CLASSES, (6,), generator=g).float() for _ in range(20)]
    batch = bm.TaskBatch(batch.x_support, batch.y_support, batch.mask_support, torch.randn(20, 6, 1, generator=g),
                         torch.stack(rest)[..., None], torch.ones(20, 6, dtype=torch.bool))
    learner = _Fixed(_predictive("classes", 20, 6))
    scores = EpisodeValidation({4: batch}).score(learner)
    ev = bm.evaluate(learner, {4: batch}, metrics=("nll",), oracle=False)
    assert scores["nll"] == pytest.approx(ev.summary[0]["nll"], rel=1e-12)
    assert scores["per_shot"][0]["accuracy"] == pytest.approx(ev.summary[0]["accuracy"], abs=1e-6)  # float32 per task
