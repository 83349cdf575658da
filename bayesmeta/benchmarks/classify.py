"""``bayesmeta bench classify``: few-shot classifiers at one wall-clock budget, against the Bayes oracle.

Families: ``clusters`` (:class:`~bayesmeta.tasks.GaussianClusters`, 5-way, exact oracle) and
``digits`` (scikit-learn's 8x8 digits with rotations: 40 classes; meta-train on the rotations
of 6 digits, validate on 2, test on the other 2 -- test digits are never seen). Every method
trains for ``budget`` seconds with its defaults on the meta-train classes and is scored on the
same ``episodes`` test episodes per shot count (15 query examples per class); on digits every
method but ``bayes-latent`` stops early on 200 validation episodes per shot count (the weights of
the best validation NLL are kept). Point-estimate
methods are reported twice: as trained, and temperature-scaled (``<method>+T``, one temperature
per shot count, fitted on 200 validation episodes of that shot count). Writes ``results.json`` (``summary`` rows: ``method``, ``family``,
``ways``, ``shots``, ``accuracy``, ``nll``, ``ece``, ``brier`` and, with an oracle,
``oracle_nll`` and ``gap``) and reliability diagrams as PNGs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..evaluation import Evaluation, evaluate
from ..fewshot import CLASSIFIERS, ClassifierEnsemble, ProtoNet, TemperatureScaled
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models.latent import LatentCodeModel
from ..tasks import Episodes, GaussianClusters, LabelledPool

__all__ = ["CLASSIFY_FAMILIES", "CLASSIFY_METHODS", "run_classify"]

CLASSIFY_FAMILIES = ("clusters", "digits")
CLASSIFY_METHODS = ("oracle", "bayes-proto", "bayes-latent", "protonet", "siamese", "maml", "fomaml", "metasgd", "reptile",
                    "ensemble")
_BAYESIAN = ("bayes-proto", "bayes-latent")
_QUERY = 15  # query examples per class
_VAL_EPISODES = 200


def _families(name: str, ways: int, seed: int):
    """``(train family, validation family, test family, oracle or None)``."""
    if name == "clusters":
        fam = GaussianClusters(ways=ways)
        return fam, fam, fam, fam
    if name == "digits":
        train, val, test = LabelledPool.digits(rotations=True).split((0.6, 0.2, 0.2), seed=seed)
        return Episodes(train, ways), Episodes(val, ways), Episodes(test, ways), None
    raise ValueError(f"unknown family {name!r}; choose from {list(CLASSIFY_FAMILIES)}")


def _make(method: str, x_dim: int, ways: int):
    if method == "bayes-latent":  # the general model path: a per-task code, learned prior, amortized guide
        return BayesLearner(LatentCodeModel(x_dim, latent_dim=16, likelihood="categorical", num_classes=ways))
    if method == "ensemble":
        return ClassifierEnsemble(lambda i: ProtoNet(x_dim), members=5)
    cls = CLASSIFIERS[method]
    return cls(x_dim) if method in ("bayes-proto", "protonet", "siamese") else cls(x_dim, ways)


def _sets(family, shots, episodes: int, seed: int) -> dict:
    return {k: family.sample(episodes, shots=k, num_query=_QUERY, generator=torch.Generator().manual_seed(seed + k))
            for k in shots}


def _check(families, methods) -> tuple[list, list]:
    families, methods = list(families), list(methods)
    for what, got, allowed in (("families", families, CLASSIFY_FAMILIES), ("methods", methods, CLASSIFY_METHODS)):
        bad = sorted(set(got) - set(allowed))
        if bad or not got:
            raise ValueError(f"unknown {what} {bad or got}; choose from {list(allowed)}")
    return families, methods


def _tag(ev: Evaluation, family: str, ways: int) -> list[dict]:
    rows = []
    for r in ev.summary:
        r = {**r, "family": family, "ways": ways}
        rows.append(r)
    return rows


def run_classify(*, families=CLASSIFY_FAMILIES, methods=CLASSIFY_METHODS, budget: float = 120.0, episodes: int = 1000,
                 ways: int = 5, shots=(1, 5), out_dir="bench_out/classify", seed: int = 0, device="cpu",
                 progress: bool = True) -> dict:
    """Train every method for ``budget`` seconds per family and score it; returns the summary and tables."""
    families, methods = _check(families, methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: list[dict] = []
    tables: list[str] = []
    meta: dict[str, dict] = {}
    for fam_name in families:
        train, val, test, oracle = _families(fam_name, ways, seed)
        test_sets = _sets(test, shots, episodes, 1000 * (seed + 1))
        val_sets = _sets(val, shots, _VAL_EPISODES, 2000 * (seed + 1))
        evals: list[Evaluation] = []
        for method in methods:
            if method == "oracle":
                if oracle is not None:
                    evals.append(evaluate(oracle.oracle_predict, test_sets, name="oracle", oracle=False, seed=seed))
                continue
            torch.manual_seed(seed)
            learner = _make(method, train.x_dim, ways)
            t0 = time.perf_counter()
            # finite classes can be memorised: early stopping on the validation classes (a fresh-task family: none)
            checks = {"validation": val} if oracle is None and method != "bayes-latent" else {}
            learner.fit(train, steps=10**9, max_time=budget, seed=seed, device=device, progress=progress, **checks)
            h = learner.history
            meta[f"{fam_name}/{method}"] = {"train_seconds": time.perf_counter() - t0,
                                            "steps": int(h.step[-1]) if h.step else 0, "best_step": h.best_step}
            evals.append(evaluate(learner, test_sets, name=method, oracle=oracle or False, seed=seed))
            if method not in _BAYESIAN:  # one temperature per shot count, fitted on validation episodes of that K
                temperatures: dict[int, float] = {}
                meta[f"{fam_name}/{method}"]["temperature"] = temperatures
                for k in shots:
                    ts = TemperatureScaled(learner).calibrate(val_sets[k])
                    temperatures[k] = ts.temperature
                    evals.append(evaluate(ts, {k: test_sets[k]}, name=f"{method}+T", oracle=oracle or False,
                                          seed=seed))
        ev = Evaluation.concat(evals)
        summary += _tag(ev, fam_name, ways)
        tables.append(f"### {fam_name} ({ways}-way)\n\n{ev.table()}")
        _figures(ev, out, fam_name)
        result = {"summary": [_row(r) for r in summary], "train": meta,
                  "options": {"budget": budget, "episodes": episodes, "ways": ways, "shots": list(shots),
                              "query_per_class": _QUERY, "seed": seed, "families": families, "methods": methods}}
        atomic_write_text(json.dumps(result, indent=1, default=str), out / "results.json")
    return {**result, "tables": tables}


def _row(r: dict) -> dict:
    keep = ("method", "family", "ways", "shots", "num_tasks", "accuracy", "accuracy_se", "nll", "nll_se", "ece",
            "ece_classwise", "brier", "oracle_nll", "gap", "gap_se", "adapt_us_per_task", "predict_us_per_task")
    out = {k: r[k] for k in keep if k in r}
    if "selective" in r:
        out["selective_area"] = r["selective"]["area"]
    if "reliability" in r:
        out["reliability"] = r["reliability"]
    return out


def _figures(ev: Evaluation, out: Path, family: str) -> None:
    from ..diagnostics import plot_reliability_diagram, plot_selective_prediction

    for name, fig in (("reliability", plot_reliability_diagram(ev)), ("selective", plot_selective_prediction(ev))):
        fig.savefig(out / f"{family}_{name}.png", dpi=90)
