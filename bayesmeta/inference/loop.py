"""The one meta-training loop every learner uses (options: :class:`~bayesmeta.inference.TrainConfig`).

A learner supplies a *step function*: given a mini-batch of tasks it puts the gradients of its
meta-objective on its parameters and returns the loss per task. Everything else is here, once:
seeds, the task stream, the learning-rate schedule, the optimiser, gradient clipping, progress,
the history, the time budget, non-finite and divergence checks, validation with early stopping
and the best weights, atomic checkpoints and resume, and the distributed all-reduce (gradients,
loss and every rank's "time is up" vote in one message).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from .._checks import user_stacklevel
from .checkpoints import save_checkpoint
from .context import FitContext
from .distributed import DistributedContext, all_reduce_, broadcast_parameters, check_same_config
from .divergence import DivergenceDetector, failed_step_error
from .early_stopping import EarlyStopping, MetaOverfittingWarning, Validator
from .options import DEFAULT_LR, OPTIMIZERS, History, TrainConfig
from .stream import Batch, TaskStream, open_stream

__all__ = ["set_lr", "train_loop"]

logger = logging.getLogger(__name__)


def set_lr(optim, cfg, step: int, elapsed: float) -> None:
    """Cosine decay from ``cfg.lr`` to ``cfg.lr * cfg.final_lr_fraction`` over ``steps`` or ``max_time``.

    Progress is the larger of the step fraction and (with ``max_time``) the time fraction.
    """
    frac = step / cfg.steps if cfg.max_time is None else max(step / cfg.steps, elapsed / cfg.max_time)
    final = cfg.final_lr_fraction
    factor = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    for group in optim.param_groups:
        group["lr"] = cfg.lr * factor * group.get("lr_scale", 1.0)


_LOSS_BUFFER = 256  # losses held on the device between host reads (a read at least this often)


StepFunction = Callable[[Batch], torch.Tensor]
"""Puts the gradients of the meta-objective on the parameters; returns the loss per task (a 0-d tensor)."""


@dataclass
class _Run:
    """What one call of :func:`train_loop` holds while it runs."""

    cfg: TrainConfig
    params: list[torch.Tensor]
    optim: torch.optim.Optimizer
    stream: TaskStream
    distributed: DistributedContext | None
    grad_mean: bool
    start: float
    history: History
    bad_steps: torch.Tensor
    modules: dict
    validate: Validator | None = None
    stopper: EarlyStopping | None = None
    divergence: DivergenceDetector = field(default_factory=DivergenceDetector)
    recent: torch.Tensor | None = None  # the losses since the last host read, on the device
    held: int = 0  # how many of them
    save_due: bool = False  # a checkpoint put off while the loss was over the divergence threshold
    on_validation: Callable[[int, dict], bool | None] | None = None  # the fit's callback: True ends the fit

    @property
    def world(self) -> int:
        return 1 if self.distributed is None else self.distributed.world_size


def train_loop(make_step: Callable[[TaskStream], StepFunction], modules: dict[str, torch.nn.Module | None],
               params: list[torch.Tensor], source, cfg: TrainConfig, *, device: torch.device, x_dim: int, y_dim: int,
               context: FitContext | None = None, min_points: int | None = None, grad_mean: bool = False,
               desc: str = "meta-training", whole_episodes: bool = False) -> History:
    """Run meta-training; returns the :class:`History`.

    Args:
        make_step: ``make_step(stream) -> step``, the learner's step function:
            ``step(batch) -> loss per task`` puts the gradients of the meta-objective on
            ``params`` (the loop zeroes them before, then all-reduces, clips and steps); the
            stream is there for the step's own randomness (``stream.gen``, random subsets).
        modules: what a checkpoint holds, by name (``None`` entries are skipped).
        params: the parameters the optimiser updates.
        source: a ``TaskFamily`` or a ``TaskBatch`` pool.
        cfg: :class:`TrainConfig`.
        device: where the batches go.
        x_dim, y_dim: the learner's input and output sizes (the source is checked against them).
        min_points: the fewest observed points per family task the learner can use.
        grad_mean: distributed runs average gradients over ranks (a loss that is a mean over the
            batch's tasks) instead of summing them (a loss that is a sum over tasks).
        context: the fit's :class:`~bayesmeta.inference.context.FitContext`: its ``checkpoint`` (every
            ``checkpoint_every`` steps and at the end, the modules, optimiser, history and every
            random-number state, written atomically; ``on_checkpoint(step, history)`` after each),
            the checkpoint it ``resume`` s from (with a step budget on CPU the resumed run ends
            bit-for-bit where an uninterrupted one would; with ``max_time`` the schedule follows
            the recorded time; a distributed resume restores the weights and optimiser on every
            rank and starts fresh per-rank random streams: statistically equivalent, not
            bit-exact), its process group (``distributed``: this rank trains on its own tasks;
            only rank 0 checkpoints and shows progress), ``extra_state`` stored in every
            checkpoint as well, ``validate() -> scores`` of held-out tasks
            (:mod:`bayesmeta.inference.early_stopping`: called every ``cfg.validation_interval``
            steps and at the last step; the loop keeps the best weights, restored at the end with
            ``cfg.restore_best``, stops after ``cfg.patience`` validations without improvement
            or when ``on_validation(step, scores)`` returns true, and warns once,
            :class:`MetaOverfittingWarning`, when the learner starts to memorise its training
            tasks) and a ``replay`` buffer (task families only: each batch mixes stored past
            tasks with fresh ones; its content is checkpointed and resumed).
        desc: the progress bar's label.
        whole_episodes: from an episodic family (classification), every batch holds whole
            episodes (``max_points`` examples per class, all observed) for a learner that splits
            them itself; otherwise each task keeps a random ``U{..max_points}`` examples per class.

    Raises:
        FloatingPointError: the loss became non-finite, or diverged: stayed more than
            :data:`DIVERGENCE_FACTOR` times above its running scale for :data:`DIVERGENCE_STEPS`
            steps (:class:`DivergenceDetector`; the message names the step and the learning rate).
            Both are tracked on the device and checked without a per-step host sync, at every
            log and checkpoint step (and at least every 256 steps), so a checkpoint never holds
            parameters updated after a non-finite loss; one due while the loss is over the
            divergence threshold is put off to the next step where it is not (or the end).
    """
    if cfg.lr is None:  # a learner resolves its own default before this; direct callers get the library's
        cfg = replace(cfg, lr=DEFAULT_LR)
    context = context or FitContext()
    distributed, replay, validate = context.join(device), context.replay, context.validate
    checkpoint, resume = context.checkpoint, context.resume
    rank = 0 if distributed is None else distributed.rank
    torch.manual_seed(cfg.seed + 1_000_003 * rank)
    stream = open_stream(source, cfg, device, x_dim, y_dim, rank=rank, min_points=min_points,
                         world_size=1 if distributed is None else distributed.world_size, whole_episodes=whole_episodes,
                         replay=replay)
    if distributed is not None:
        check_same_config(distributed, {k: v for k, v in asdict(cfg).items() if k != "progress"}, device)
        broadcast_parameters(params)
    step_fn = make_step(stream)
    run = _Run(cfg, params, _optimizer(params, cfg), stream, distributed, grad_mean, time.perf_counter(), History(),
               torch.zeros((), dtype=torch.int64, device=device), modules, validate,
               None if validate is None else EarlyStopping(cfg.patience, cfg.validation_interval),
               on_validation=context.on_validation)
    first = 1
    if resume is not None:
        first = _restore(resume, modules, run) + 1
    save = lambda step: save_checkpoint(  # noqa: E731
        checkpoint, step, modules, run.optim, run.history, cfg, elapsed=time.perf_counter() - run.start,
        stream=stream, on_checkpoint=context.on_checkpoint,
        extra={**(context.extra_state or {}), "early_stopping": None if run.stopper is None else run.stopper.state_dict(),
               "replay": None if replay is None else replay.state_dict()})
    step, loss = _steps(step_fn, run, first, save if checkpoint is not None and rank == 0 else None, desc)
    if step >= first:
        _check(run, step)
        if not run.history.step or run.history.step[-1] != step:
            run.history.append(step, float(loss), time.perf_counter() - run.start, run.optim.param_groups[0]["lr"])
    if checkpoint is not None and rank == 0 and (step % cfg.checkpoint_every != 0 or run.save_due):
        save(step)
    if run.stopper is not None and cfg.restore_best:
        run.stopper.restore(modules)  # the training checkpoint keeps the last weights (and the best ones)
    return run.history


def _optimizer(params: list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser; with ``weight_decay``, on the weight matrices (ndim >= 2) only. A parameter with an
    ``lr_scale`` attribute (a global guide's, in its prior's units) steps at ``lr * lr_scale``."""
    if any(getattr(p, "lr_scale", 1.0) != 1.0 for p in params):
        scales = sorted({float(getattr(p, "lr_scale", 1.0)) for p in params})
        scaled = []
        for sc in scales:
            own = [p for p in params if float(getattr(p, "lr_scale", 1.0)) == sc]
            scaled += [{"params": [p for p in own if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                       {"params": [p for p in own if p.dim() < 2], "weight_decay": 0.0}]
            for group in scaled[-2:]:
                group.update(lr=float(cfg.lr or 0.0) * sc, lr_scale=sc)
        return OPTIMIZERS[cfg.optimizer]([g for g in scaled if g["params"]], lr=cfg.lr)
    if not cfg.weight_decay:
        return OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, **({"weight_decay": 0.0} if cfg.optimizer == "adamw" else {}))
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return OPTIMIZERS[cfg.optimizer]([g for g in groups if g["params"]], lr=cfg.lr)


def _validate(run: _Run, step: int, bar, main: bool) -> bool:
    """Score the held-out tasks, keep the best weights; returns True to stop (patience exhausted, or the fit's
    ``on_validation`` asked)."""
    assert run.validate is not None and run.stopper is not None
    scores = run.validate()
    stop, message = run.stopper.update(step, scores, run.modules, run.history)
    if message is not None and main:
        warnings.warn(message, MetaOverfittingWarning, stacklevel=user_stacklevel())
    flag = {"warning": "meta-overfitting"} if run.stopper.warned else {}
    bar.set_postfix(loss=f"{run.history.loss[-1]:.3f}" if run.history.loss else "-", val_nll=f"{scores['nll']:.3f}",
                    best=run.stopper.best_step, **flag)
    asked = run.on_validation is not None and bool(run.on_validation(step, scores))  # told every validation
    if stop:
        note = (f"stopped early at step {step}: no better validation NLL in {run.cfg.patience} validations "
                f"(best {run.stopper.best_nll:.3f} at step {run.stopper.best_step})")
    elif asked:
        stop, note = True, f"stopped at step {step} by on_validation (validation NLL {scores['nll']:.3f})"
    if stop:
        run.history.notes.append(note)
        if main:
            logger.info(note)
    return stop


def _steps(step_fn: StepFunction, run: _Run, first: int, save, desc: str) -> tuple[int, torch.Tensor]:
    """The loop proper: returns the last step and its loss per task."""
    cfg = run.cfg
    main = run.distributed is None or run.distributed.rank == 0
    bar = tqdm(total=cfg.steps, initial=first - 1, disable=not (cfg.progress and main), desc=desc, leave=False)
    interval = cfg.validation_interval
    step, loss = first - 1, torch.zeros(())
    try:
        for step in range(first, cfg.steps + 1):
            set_lr(run.optim, cfg, step, time.perf_counter() - run.start)
            loss, time_up = _one_step(step_fn, run, step)
            bar.update(1)
            logging = step % cfg.log_every == 0 or step == cfg.steps
            saving = save is not None and (step % cfg.checkpoint_every == 0 or run.save_due)
            if logging or saving:  # the only host syncs
                _check(run, step)
            if run.distributed is not None:  # the same answer on every rank, read at log steps only
                time_up = (logging or saving) and bool(time_up > 0)
            if logging:
                run.history.append(step, float(loss), time.perf_counter() - run.start,
                                   run.optim.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{float(loss):.3f}")
            stop = run.validate is not None and (step % interval == 0 or step == cfg.steps or bool(time_up)) \
                and _validate(run, step, bar, main)
            if saving:
                run.save_due = run.divergence.over  # never checkpoint parameters a diverging loss moved
                if not run.save_due:
                    save(step)
            if time_up or stop:
                break
    finally:
        bar.close()
    return step, loss


def _one_step(step_fn: StepFunction, run: _Run, step: int) -> tuple[torch.Tensor, bool | torch.Tensor]:
    """Gradients, all-reduce, clipping, update; returns the loss per task and "time is up" (distributed: the votes)."""
    batch = run.stream.next()
    run.optim.zero_grad(set_to_none=True)
    try:
        loss = step_fn(batch)
    except (RuntimeError, ValueError) as err:  # e.g. a Cholesky of parameters a non-finite step spoiled
        _raise_if_bad(run, step - 1)
        _read_losses(run, step - 1)
        _raise_if_diverged(err, step, run)
        raise
    loss = loss.detach()
    time_up = run.cfg.max_time is not None and time.perf_counter() - run.start >= run.cfg.max_time
    if run.distributed is not None:  # one message: gradients, loss and every rank's "time is up"
        reduced = all_reduce_(run.params, loss, float(time_up))
        if run.grad_mean:
            for p in run.params:
                assert p.grad is not None  # all_reduce_ set every grad
                p.grad.div_(run.world)
        loss, votes = reduced[0] / run.world, reduced[1]
        _track(run, loss, step)
        _clip_and_step(run)
        return loss, votes
    _track(run, loss, step)
    _clip_and_step(run)
    return loss, time_up


def _track(run: _Run, loss: torch.Tensor, step: int) -> None:
    """Count a non-finite loss and keep the loss for the divergence check, on the device: no host sync here
    (unless :data:`_LOSS_BUFFER` steps passed without a log or checkpoint step)."""
    run.bad_steps += ~torch.isfinite(loss)
    if run.recent is None:
        run.recent = torch.empty(_LOSS_BUFFER, dtype=loss.dtype, device=loss.device)
    run.recent[run.held] = loss
    run.held += 1
    if run.held == _LOSS_BUFFER:  # no log or checkpoint step for that long: a check of its own
        _check(run, step)


def _read_losses(run: _Run, step: int) -> None:
    """Feed the losses held on the device (those of the steps up to ``step``) to the divergence detector."""
    if run.held:
        assert run.recent is not None
        first = step - run.held + 1
        for i, value in enumerate(run.recent[: run.held].tolist()):  # one host sync
            run.divergence.update(value, first + i)
        run.held = 0


def _clip_and_step(run: _Run) -> None:
    if run.cfg.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.clip_norm)
    run.optim.step()


def _raise_if_diverged(err: Exception, step: int, run: _Run) -> None:
    """A failed step: a divergence, or an argument out of range with finite parameters, says so
    (:func:`~bayesmeta.inference.divergence.failed_step_error`); any other error passes through unchanged."""
    problem = failed_step_error(err, step, run.divergence, run.params, _advice(run))
    if problem is not None:
        raise problem from err


def _raise_if_bad(run: _Run, step: int) -> None:
    """Raise ``FloatingPointError`` if a loss up to ``step`` was non-finite (a host sync)."""
    n = int(run.bad_steps)
    if n:
        raise FloatingPointError(f"meta-training: the loss was non-finite in {n} step(s) up to step {step}; "
                                 "the last checkpoint (if any) holds finite parameters")


def _check(run: _Run, step: int) -> None:
    """At a log or checkpoint step: raise ``FloatingPointError`` if a loss up to ``step`` was non-finite or diverged."""
    _raise_if_bad(run, step)
    _read_losses(run, step)
    onset = run.divergence.diverged_at
    if onset is not None:
        raise FloatingPointError(f"meta-training diverged at step {onset} (seen at step {step}): the loss per task "
                                 f"stayed {run.divergence.describe()} for {run.divergence.steps} steps. {_advice(run)}")


def _advice(run: _Run) -> str:
    return (f"The learning rate (lr={run.cfg.lr}) is likely too large for this model: try a smaller lr or a tighter "
            "clip_norm; the last checkpoint (if any) holds earlier parameters")


def _restore(state: dict, modules: dict, run: _Run) -> int:
    """Load a checkpoint into the modules, optimiser, history and random streams; returns its step."""
    _restore_replay(state, run.stream)  # first: a refused replay setting must leave the learner as it was
    for name, m in modules.items():
        if m is not None:
            if state.get(name) is None:
                raise ValueError(f"resume: the checkpoint holds no {name!r} (it was written by another learner)")
            m.load_state_dict(state[name])
    run.optim.load_state_dict(state["optimizer"])
    if run.stopper is not None and state.get("early_stopping") is not None:
        run.stopper.load_state_dict(state["early_stopping"])
    step = int(state["step"])
    run.stream.drawn = step
    run.start -= state["elapsed"]
    run.history = History(**state["history"])
    seed = run.cfg.seed
    if run.distributed is None:
        states = state["rng"]
        torch.set_rng_state(states["torch"])
        run.stream.gen.set_state(states["stream"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
    else:  # the checkpoint holds rank 0's random streams only: fresh ones per rank
        rank = run.distributed.rank
        torch.manual_seed(seed + 1_000_003 * rank + 7919 * (step + 1))
        run.stream.gen.manual_seed(seed + 1_000_003 * rank + 7919 * (step + 1))
    return step


def _restore_replay(state: dict, stream: TaskStream) -> None:
    saved = state.get("replay")
    if (saved is None) != (stream.replay is None):
        have = "has a replay buffer" if saved is not None else "has none"
        raise ValueError(f"resume: the checkpoint {have} and this fit's replay= is {stream.replay!r}; resume with "
                         "the same replay setting")
    if stream.replay is not None and saved is not None:
        stream.replay.load_state_dict(saved)
        stream.replay.to(stream.device)
