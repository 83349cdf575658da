"""The ``Predictive`` protocol: every family implements it, diagnostics are typed, consumers need nothing else."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.distributions as D

import bayesmeta as bm
from bayesmeta._checks import check_query
from bayesmeta.predictive import (
    ClassPredictive,
    FamilyMixture,
    GaussianMixture,
    PosteriorPredictive,
    Predictive,
    PredictiveDiagnostics,
)
from bayesmeta.predictive.blocks import bisect
from bayesmeta.predictive.scoring import check_observations, class_probabilities

T, N = 3, 4


def _family(kind: str, block_elements: int = 2**20) -> FamilyMixture:
    g = torch.Generator().manual_seed(0)
    if kind == "poisson":
        p, fn = torch.rand(5, T, 1, generator=g) * 4, lambda q, sl: D.Poisson(q[..., 0, None].expand(-1, -1, N))
    elif kind == "bernoulli":
        p, fn = torch.rand(5, T, 1, generator=g), lambda q, sl: D.Bernoulli(probs=q[..., 0, None].expand(-1, -1, N))
    else:
        p, fn = torch.randn(5, T, N * 3, generator=g), lambda q, sl: D.Categorical(logits=q.unflatten(-1, (N, 3)))
    return FamilyMixture(p, torch.randn(5, T, generator=g), fn, shape=(T, N, 1), block_elements=block_elements)


def _all():
    g = torch.Generator().manual_seed(1)
    return {
        "gaussian": GaussianMixture(torch.randn(2, T, N, 1, generator=g), 1.0),
        "posterior": PosteriorPredictive(torch.randn(2, T, N, 1, generator=g), 0.5, method="importance",
                                         ess=torch.ones(T), pareto_k=torch.zeros(T), num_draws=torch.full((T,), 8.0)),
        "poisson": _family("poisson"),
        "bernoulli": _family("bernoulli"),
        "categorical": _family("categorical"),
        "classes": ClassPredictive(torch.randn(T, N, 3, generator=g), method="ProtoNet"),
    }


FLAGS = {  # discrete, classes_only, num_classes
    "gaussian": (False, False, None), "posterior": (False, False, None), "poisson": (True, False, None),
    "bernoulli": (True, False, 2), "categorical": (True, True, 3), "classes": (True, True, 3),
}


@pytest.mark.parametrize("kind", list(FLAGS))
def test_every_family_is_a_predictive_with_its_flags(kind):
    pred = _all()[kind]
    assert isinstance(pred, Predictive) and pred.shape == (T, N, 1) and pred.device == torch.device("cpu")
    assert (pred.discrete, pred.classes_only, pred.num_classes) == FLAGS[kind]
    y = pred.sample(2, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, T, N, 1) and pred.log_prob(y[0]).shape == (T, N) and pred.mean.shape == (T, N, 1)
    assert pred.nonfinite_tasks().tolist() == [False] * T
    assert (class_probabilities(pred) is None) == (pred.num_classes is None)
    if pred.num_classes is not None:
        assert pred.probs.shape == (T, N, pred.num_classes)
        assert torch.allclose(pred.probs.sum(-1), torch.ones(T, N))
    else:
        with pytest.raises(AttributeError, match="no class probabilities"):
            _ = pred.probs
    if pred.classes_only:
        return
    lo, hi = pred.interval(0.8)
    assert (lo <= hi).all() and pred.pit(y[0]).shape == (T, N, 1) and pred.variance.shape == (T, N, 1)


def test_a_class_predictive_refuses_what_labels_without_order_do_not_have():
    pred = _all()["classes"]
    for call in (lambda: pred.cdf(torch.zeros(T, N)), lambda: pred.interval(0.9), lambda: pred.variance):
        with pytest.raises(NotImplementedError, match="class labels have no order"):
            call()
    logits = torch.zeros(T, N, 3)
    logits[1, 2, 0] = math.nan
    assert ClassPredictive(logits).nonfinite_tasks().tolist() == [False, True, False]
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(pred.sample(5, generator=g()), pred.sample(5, generator=g()))


def test_diagnostics_are_typed_and_read_only_under_their_old_names():
    pred = _all()["posterior"]
    d = pred.diagnostics
    assert isinstance(d, PredictiveDiagnostics) and d.method == "importance" and pred.method == "importance"
    assert pred.ess is d.ess and pred.pareto_k is d.pareto_k and pred.num_draws is d.num_draws
    with pytest.raises(AttributeError):
        pred.ess = torch.zeros(T)  # type: ignore[misc]
    relabelled = pred.with_diagnostics(method="ensemble")
    assert relabelled.method == "ensemble" and relabelled.ess is d.ess and pred.method == "importance"
    assert torch.equal(relabelled.mean, pred.mean) and type(relabelled) is PosteriorPredictive
    # defaults: nothing known about a plain mixture; "guide" for a posterior predictive, as before
    plain = _all()["gaussian"].diagnostics
    assert (plain.method, plain.ess, plain.pareto_k, plain.num_draws) == (None, None, None, None)
    assert PosteriorPredictive(torch.zeros(1, 1, 1, 1), 1.0).method == "guide"
    assert _all()["classes"].method == "ProtoNet" and _all()["classes"].tempered(2.0).method == "ProtoNet"


def test_bad_diagnostics_are_refused_by_name():
    with pytest.raises(ValueError, match=r"ess must be a tensor \[T\]"):
        PredictiveDiagnostics(ess=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="method must be a string"):
        PredictiveDiagnostics(method=3)  # type: ignore[arg-type]


def test_scoring_names_an_object_that_is_not_a_predictive():
    with pytest.raises(TypeError, match="expected a bayesmeta.predictive.Predictive .* got Normal"):
        check_observations(D.Normal(torch.zeros(T, N, 1), 1.0), torch.zeros(T, N, 1))


@pytest.mark.parametrize("kind", ["poisson", "categorical"])
def test_the_block_engine_gives_the_same_numbers_for_any_block_size(kind):
    one, many = _family(kind), _family(kind, block_elements=1)  # one block; one task per block
    assert len(one._blocks) == 1 and len(many._blocks) == T
    y = one.sample(1, generator=torch.Generator().manual_seed(0))[0]
    same = lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731  (vectorised over other shapes)
    assert same(one.log_prob(y), many.log_prob(y)) and same(one.mean, many.mean)
    if not one.classes_only:
        assert torch.equal(one.quantile(0.3), many.quantile(0.3)) and same(one.cdf(y), many.cdf(y))


def test_bisection_finds_continuous_and_integer_quantiles():
    cdf = torch.special.ndtr
    q = bisect(cdf, torch.tensor([-5.0]), torch.tensor([5.0]), 0.975, 60)
    assert float(q) == pytest.approx(1.959964, abs=1e-5)
    poisson = lambda k: torch.special.gammaincc(k.clamp_min(0) + 1, torch.tensor(3.0)) * (k >= 0)  # noqa: E731
    q = bisect(poisson, torch.tensor([-1.0]), torch.tensor([20.0]), 0.5, 60, discrete=True)
    assert float(q) == 3.0  # the median of Poisson(3)


def test_one_query_check_for_every_adapted_type():
    assert check_query(torch.zeros(5, 2), 3, 2, dtype=torch.float64, device="cpu").shape == (3, 5, 2)
    with pytest.raises(ValueError, match=r"^x must have shape \[3, N, 2\] or \[N, 2\]; got \(3, 5, 1\)$"):
        check_query(torch.zeros(3, 5, 1), 3, 2, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"^x: no query points"):
        check_query(torch.zeros(3, 0, 2), 3, 2, dtype=torch.float32, device="cpu")
    x = torch.zeros(2, 4, 1)
    x[1, 2, 0] = math.inf
    with pytest.raises(ValueError, match=r"^x: non-finite value at task 1, point 2$"):
        check_query(x, 2, 1, dtype=torch.float32, device="cpu")
    b = bm.tasks.Sinusoid().sample(2, shots=3, num_query=4, generator=torch.Generator().manual_seed(0))
    maml = bm.baselines.MAML(x_dim=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"^x: non-finite value at task 1, point 2$"):  # the baselines check it too
        maml.adapt(b).predict(x)
    clusters = bm.tasks.GaussianClusters(ways=2, dim=1).sample(2, shots=1, num_query=4)
    with pytest.raises(ValueError, match=r"^x: non-finite value at task 1, point 2$"):
        bm.fewshot.ProtoNet(x_dim=1, hidden=(4,), embed_dim=2).adapt(clusters).predict(x)


def test_the_predictive_package_imports_nothing_of_ours_above_layer_zero():
    """Imports inside functions included: only bayesmeta._checks, _compat, _support, io and the package itself."""
    allowed = {"bayesmeta._checks", "bayesmeta._compat", "bayesmeta._support", "bayesmeta.io"}
    root = Path(bm.__file__).parent / "predictive"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                target = "bayesmeta.predictive" if node.level == 1 else "bayesmeta." + (node.module or "")
                assert node.level <= 2 and (target == "bayesmeta.predictive" or target in allowed), (path, target)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert not name.startswith("bayesmeta") or name.startswith("bayesmeta.predictive") or name in allowed, \
                    (path, name)
