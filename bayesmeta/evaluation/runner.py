"""``evaluate``: score any learner on test tasks, per task and shot count, with one set of metrics."""

from __future__ import annotations

import time
import warnings

import torch
from tqdm.auto import tqdm

from .._checks import check_ints
from ..inference.program import ModelProgram
from ..inference.program.data import check_batch
from ..tasks.batch import TaskBatch
from .metrics import (
    CALIBRATION_LEVELS,
    check_levels,
    check_observations,
    class_probabilities,
    confidence_and_correct,
    pit,
    task_accuracy,
    task_brier,
    task_coverages,
    task_crps,
    task_mse,
    task_nll,
)
from .results import PIT_BINS, Evaluation, summarise

__all__ = ["evaluate", "make_test_sets", "METRICS", "COVERAGE_LEVELS", "MAX_FAMILY_SHOTS"]

METRICS = ("nll", "mse", "crps", "coverage")
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
MAX_FAMILY_SHOTS = 100
"""The most shots per task :func:`evaluate` draws from a task family.

Importance-sampled predictions (the default of approximate posteriors) evaluate the likelihood of
every support point under 1000 draws per task, and up to 16000 when the effective sample size is
low, which it becomes as the posterior narrows: on CPU, 4 sinusoid tasks took about 4 s at 50
shots and about 25 s at 200. Few-shot evaluation needs far fewer; pass a TaskBatch for more.
"""
_POINTS_PER_CHUNK = 1000  # support points adapted at once: many-shot tasks go in smaller chunks


def _check_shots(shots) -> tuple[int, ...]:
    """Shot counts: a non-empty collection of ints >= 0 (no bools, no duplicates)."""
    if isinstance(shots, int) and not isinstance(shots, bool):
        shots = (shots,)
    try:
        shots = tuple(shots)
    except TypeError:
        raise TypeError(f"shots must be a sequence of ints; got {type(shots).__name__}") from None
    if not shots:
        raise ValueError("shots must name at least one shot count")
    bad = [k for k in shots if not isinstance(k, int) or isinstance(k, bool) or k < 0]
    if bad:
        raise ValueError(f"shots must be ints >= 0; got {bad}")
    if len(set(shots)) != len(shots):
        raise ValueError(f"shots has duplicates: {list(shots)}")
    return shots


def make_test_sets(family, shots=(1, 5, 10), *, num_tasks: int = 1000, num_query: int = 100,
                   seed: int = 1) -> dict[int, TaskBatch]:
    """Fixed test tasks of a family per shot count, ``{k: TaskBatch}``: what :func:`evaluate` scores.

    The ``k``-shot set is drawn from its own generator seeded ``1000 * seed + k``, so it is the same
    whatever other shot counts are asked for, and ``evaluate(learner, family, seed=s)`` scores
    exactly ``make_test_sets(family, seed=s)``. Build the sets once to score several methods on
    the same tasks.

    Example:
        >>> import bayesmeta as bm
        >>> sets = make_test_sets(bm.tasks.HierarchicalLinear(dim=1), (1, 5), num_tasks=3, num_query=4)
        >>> {k: tuple(b.x_support.shape) for k, b in sets.items()}
        {1: (3, 1, 1), 5: (3, 5, 1)}
    """
    return {k: family.sample(num_tasks, shots=k, num_query=num_query,
                             generator=torch.Generator().manual_seed(seed * 1000 + k)) for k in _check_shots(shots)}


def _dict_sets(tasks: dict, shots) -> dict:
    """``{k: TaskBatch}``: tasks need exactly ``k`` observed support points (fewer: skipped; more: an error)."""
    keys = _check_shots(list(tasks))
    if shots is not None and sorted(_check_shots(shots)) != sorted(keys):
        raise ValueError(f"shots {list(shots)} do not match the keys of the tasks dict {list(tasks)}")
    out = {}
    for k in keys:
        b = tasks[k]
        if not isinstance(b, TaskBatch):
            raise TypeError(f"tasks[{k!r}] must be a TaskBatch; got {type(b).__name__}")
        counts = b.mask_support.sum(-1).cpu()  # [T] observed support points
        if "ways" in b.params:  # classification episodes: k shots per class
            ways = b.params["ways"].cpu()
            uneven = (counts % ways != 0).nonzero()[:, 0].tolist()
            if uneven:
                raise ValueError(f"tasks[{k}]: episode {uneven[0]} has {int(counts[uneven[0]])} support examples for "
                                 f"{int(ways[uneven[0]])} classes; give every class k={k} examples")
            counts = torch.div(counts, ways, rounding_mode="floor")
        over = (counts > k).nonzero()[:, 0].tolist()
        if over:
            raise ValueError(f"tasks[{k}]: task {over[0]} has {int(counts[over[0]])} observed support points, more "
                             f"than its key {k} ({len(over)} such task(s)); give each task exactly {k}, or pass one "
                             f"TaskBatch (evaluate then takes each task's first k points)")
        keep = counts == k
        out[k] = (b[keep.nonzero()[:, 0]] if not keep.all() else b, keep.nonzero()[:, 0],
                  (~keep).nonzero()[:, 0].tolist())
    return out


def _test_sets(tasks, shots, *, num_tasks: int, num_query: int, seed: int):
    """``{k: (TaskBatch, task ids [T'], skipped ids)}`` from a family, a batch or a dict of batches."""
    if isinstance(tasks, dict | list | tuple) and len(tasks) == 0 or isinstance(tasks, TaskBatch) and len(tasks) == 0:
        raise ValueError("tasks: no tasks to evaluate (empty)")
    if isinstance(tasks, dict):
        return _dict_sets(tasks, shots)
    shots = (1, 5, 10) if shots is None else _check_shots(shots)
    if isinstance(tasks, TaskBatch):
        if "ways" in tasks.params:
            raise ValueError("tasks: a batch of classification episodes is scored as a dict {shots per class: "
                             "TaskBatch}, e.g. {k: episodes.sample(n, shots=k, num_query=15) for k in (1, 5)}")
        largest = int(tasks.mask_support.sum(-1).max())
        if max(shots) > largest:
            raise ValueError(f"shots={max(shots)}: no task has that many support points (the largest has "
                             f"{largest})")
        out = {}
        for k in shots:
            b, kept = tasks.first_shots(k)
            skipped = sorted(set(range(len(tasks))) - set(kept.tolist()))
            out[k] = (b, kept, skipped)
        return out
    if hasattr(tasks, "sample"):
        if max(shots) > MAX_FAMILY_SHOTS:
            raise ValueError(f"shots={max(shots)}: at most {MAX_FAMILY_SHOTS} shots per task of a family (the "
                             f"cost of importance-sampled predictions grows with the shots); to score more, pass "
                             f"a TaskBatch, e.g. family.sample(num_tasks, shots=k, num_query=q)")
        sets = make_test_sets(tasks, shots, num_tasks=num_tasks, num_query=num_query, seed=seed)
        return {k: (b, torch.arange(num_tasks), []) for k, b in sets.items()}
    raise TypeError(f"tasks must be a TaskFamily, a TaskBatch or a dict {{shots: TaskBatch}}; got {type(tasks).__name__}")


def _check_values(learner, tasks, device: torch.device) -> None:
    """The test tasks' support and query values, checked against a Bayesian learner's model before any scoring: a
    value outside the observation's support is named by its task and point (in the batch as given)."""
    program = getattr(learner, "program", None)
    if not isinstance(program, ModelProgram):
        return
    batches = tasks.items() if isinstance(tasks, dict) else [(None, tasks)] if isinstance(tasks, TaskBatch) else []
    for k, b in batches:
        what = "evaluate: tasks" if k is None else f"evaluate: tasks[{k!r}]"
        check_batch(program, b.to(device), what=what, dtype=program.dtype)


def _drop_empty_queries(batch: TaskBatch, ids: torch.Tensor, skipped: list, k) -> tuple:
    if not batch.has_query:
        raise ValueError(f"tasks: the {k}-shot test tasks have no query set to score")
    has_q = batch.query[2].any(-1)  # [T]
    if not has_q.all():
        skipped = sorted(skipped + ids[~has_q].tolist())
        batch, ids = batch[has_q], ids[has_q]
    if skipped:
        warnings.warn(f"evaluate: {len(skipped)} task(s) skipped at shots={k} (fewer than {k} support "
                      f"points or no query points): {skipped[:20]}{' ...' if len(skipped) > 20 else ''}",
                      stacklevel=3)
    if len(batch) == 0:
        raise ValueError(f"tasks: no task has {k} support points and a query point to score")
    return batch, ids, skipped


def _predictor(learner, predict_options: dict):
    if hasattr(learner, "adapt"):
        def run(b):
            post = learner.adapt(b)
            return post, lambda: post.predict(b.x_query, **predict_options)
        return run
    if callable(learner):
        return lambda b: (None, lambda: learner(*b.support[:2], b.x_query, b.mask_support, **predict_options))
    raise TypeError(f"learner must have .adapt() or be a callable (x_support, y_support, x_query, mask_support) -> predictive, the argument order of a family's oracle_predict; "
                    f"got {type(learner).__name__}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _score_chunk(pred, b: TaskBatch, metrics, curve_levels, crps_samples) -> dict:
    y, mask = check_observations(pred, b.y_query, b.mask_query)
    if pred.classes_only:  # class probabilities: no mean, CDF or intervals to score
        metrics = [m for m in metrics if m == "nll"]
    res = {}
    if "nll" in metrics:
        res["nll"] = task_nll(pred, y, mask)
    if "mse" in metrics:
        res["mse"] = task_mse(pred, y, mask)
    if "crps" in metrics:
        res["crps"] = task_crps(pred, y, mask, num_samples=crps_samples)
    if "coverage" in metrics:
        m = mask.sum(-1).double() * y.shape[-1]  # [T]: (point, output) pairs
        res["inside"] = task_coverages(pred, y, mask, curve_levels) * m[:, None]  # [T, L] counts
        res["pairs"] = m
        res["pit"] = pit(pred, y, mask)
    probs = class_probabilities(pred)
    if probs is not None:  # binary and categorical outcomes
        res["accuracy"], res["brier"] = task_accuracy(probs, y, mask), task_brier(probs, y, mask)
        res["confidence"], res["correct"] = confidence_and_correct(probs, y, mask)
        res["class_probs"], res["labels"] = probs[mask], y[..., 0][mask].round()  # [M, C], [M] pooled points
    diag = pred.diagnostics
    if diag.ess is not None and diag.pareto_k is not None:
        res["ess"], res["pareto_k"] = diag.ess, diag.pareto_k
    return {key: v.detach().double().cpu() for key, v in res.items()}


def _run_shots(predict, batch, oracle, *, metrics, curve_levels, crps_samples, chunk, device, progress, desc):
    parts, t_adapt, t_pred = [], 0.0, 0.0
    chunk = max(1, min(chunk, _POINTS_PER_CHUNK // max(1, batch.x_support.shape[1])))  # the bar moves
    with tqdm(total=len(batch), desc=desc, unit="task", disable=not progress, leave=False) as bar:
        for i in range(0, len(batch), chunk):
            b = batch[i : i + chunk].to(device)
            _sync(device)
            t0 = time.perf_counter()
            _, make = predict(b)
            _sync(device)
            t1 = time.perf_counter()
            pred = make()
            _sync(device)
            t_adapt, t_pred = t_adapt + t1 - t0, t_pred + time.perf_counter() - t1
            part = _score_chunk(pred, b, metrics, curve_levels, crps_samples)
            if oracle is not None and "nll" in metrics:
                o = oracle.oracle_predict(*b.support[:2], b.x_query, b.mask_support)
                part["oracle_nll"] = task_nll(o, b.y_query, b.mask_query).double().cpu()
            parts.append(part)
            bar.update(len(b))
    res = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return res, t_adapt, t_pred


def evaluate(learner, tasks, shots=None, *, name: str | None = None, metrics=None, levels=COVERAGE_LEVELS,
             oracle=None, num_tasks: int = 1000, num_query: int = 100, seed: int = 1,
             predict_options: dict | None = None, crps_samples: int = 200, chunk: int = 100, device=None,
             progress: bool = False) -> Evaluation:
    """Score a learner on test tasks: one row per task x shot count, and a summary per shot count.

    Args:
        learner: anything with ``adapt(TaskBatch) -> posterior`` whose ``predict(x_query)``
            returns a predictive (every bayesmeta learner), or a callable
            ``(x_support, y_support, x_query, mask_support) -> predictive`` (the order of a
            family's ``oracle_predict``, so ``evaluate(family.oracle_predict, ...)`` scores the oracle).
        tasks: a task family (``num_tasks`` fixed test tasks with ``num_query`` query points are
            drawn per shot count from ``seed``), a :class:`TaskBatch` (each task keeps its first
            ``k`` observed support points; tasks with fewer are skipped and reported), or a dict
            ``{shots: TaskBatch}`` (a task with fewer observed support points than its key is
            skipped and reported; one with more is an error).
        shots: shot counts, ints >= 0 (default ``(1, 5, 10)``; the dict's keys for a dict). At
            most :data:`MAX_FAMILY_SHOTS` for a family; at most the largest support set for a
            batch.
        name: the method's name in the tables (default: the learner's class name).
        metrics: subset of ``("nll", "mse", "crps", "coverage")`` (default: all). ``coverage``
            includes PIT values and the calibration error over 19 levels.
        levels: central-interval levels reported per task (all in (0, 1)).
        oracle: an object with ``oracle_predict`` (a synthetic family) to report the Bayes
            oracle's NLL and the gap; default: ``tasks`` itself when it has one; ``False``: none.
        predict_options: keyword arguments of ``posterior.predict`` (e.g. ``method="guide"``).
        crps_samples: predictive draws per point for the CRPS.
        chunk: at most this many tasks adapted and scored at once (fewer for many-shot tasks, at
            most 1000 support points per chunk, so that the progress bar moves).
        device: where to adapt and predict (default: the learner's ``device`` or CPU).
        progress: a progress bar per shot count (in tasks).

    Returns:
        An :class:`Evaluation` (``rows``, ``summary``, ``table()``, ``to_json``, ``to_csv``).

    Example:
        >>> import bayesmeta as bm
        >>> family = bm.tasks.HierarchicalLinear(dim=1)
        >>> learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
        >>> ev = bm.evaluate(learner, family, shots=(2,), num_tasks=20)
        >>> ev.summary[0]["shots"], ev.summary[0]["num_tasks"]
        (2, 20)
    """
    metrics = METRICS if metrics is None else tuple(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"metrics: unknown metric(s) {unknown}; choose from {METRICS}")
    levels = check_levels(levels)
    check_ints(num_tasks=(num_tasks, 1), num_query=(num_query, 1), chunk=(chunk, 1), crps_samples=(crps_samples, 2))
    if oracle is None:
        oracle = tasks if hasattr(tasks, "oracle_predict") else None
    elif oracle is False:
        oracle = None
    elif not hasattr(oracle, "oracle_predict"):
        raise TypeError(f"oracle must have an oracle_predict method; got {type(oracle).__name__}")
    name = name or type(learner).__name__
    device = torch.device(device if device is not None else getattr(learner, "device", "cpu"))
    predict = _predictor(learner, dict(predict_options or {}))
    curve_levels = tuple(sorted(set(CALIBRATION_LEVELS) | set(levels)))
    sets = _test_sets(tasks, shots, num_tasks=num_tasks, num_query=num_query, seed=seed)
    _check_values(learner, tasks, device)
    rows, summary, pits = [], [], {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for k, (batch, ids, skipped) in sets.items():
            batch, ids, skipped = _drop_empty_queries(batch, ids, list(skipped), k)
            res, t_adapt, t_pred = _run_shots(predict, batch, oracle, metrics=metrics, curve_levels=curve_levels,
                                              crps_samples=crps_samples, chunk=chunk, device=device,
                                              progress=progress, desc=f"{name}, {k}-shot")
            task_rows, row = summarise(name, k, ids, skipped, res, levels=levels, curve_levels=curve_levels,
                                       timing=(t_adapt, t_pred))
            rows += task_rows
            summary.append(row)
            if "pit" in res:
                pits[(name, k)] = res["pit"].float()
    info = {"metrics": list(metrics), "levels": list(levels), "seed": seed, "crps_samples": crps_samples,
            "pit_bins": PIT_BINS, "predict_options": {k: repr(v) for k, v in (predict_options or {}).items()}}
    return Evaluation(rows, summary, info=info, pit=pits)
