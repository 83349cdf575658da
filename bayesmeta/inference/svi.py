"""SVI on a hierarchical model and its amortized guide over many tasks: the step function of the one loop.

Two sources of tasks (see :class:`~bayesmeta.inference.stream.TaskStream`):

* a :class:`~bayesmeta.tasks.TaskFamily` (an endless stream): each step draws fresh tasks with
  ``max_points`` points and observes a random number ``n_i ~ U{min_points..max_points}`` of them,
  so the encoder learns every set size; the model sees exactly what the guide sees;
* a :class:`~bayesmeta.tasks.TaskBatch` pool of ``M`` tasks: each step subsamples
  ``tasks_per_step`` tasks and observes *all* their points (support and query); the tasks plate
  rescales by ``M / tasks_per_step`` so the loss is an unbiased estimate of the full objective.
  With ``encoder_subsets`` the encoder also learns random subsets of the pool tasks through an
  extra guide-only term (the model's parameters get no gradient from it).

Seeds, schedule, clipping, checkpoints, progress and the distributed all-reduce live in
:func:`~bayesmeta.inference.loop.train_loop`, which every learner shares.
"""

from __future__ import annotations

import torch

from .context import FitContext
from .global_objective import GlobalObjective
from .loop import train_loop
from .objectives import ReweightedWakeSleep, make_objective, sleep_log_q
from .options import History, TrainConfig
from .program import is_real as _real
from .stream import Batch, TaskStream

__all__ = ["meta_train"]


def meta_train(program, guide, source, config: TrainConfig, *, device: torch.device, objective: str = "rws",
               num_particles: int = 8, conjugate: bool = False, context: FitContext | None = None) -> History:
    """Maximise the meta-training objective of ``model`` and ``guide``; returns the :class:`History`.

    Args:
        program: the model's :class:`~bayesmeta.inference.program.ModelProgram` (on ``device``).
        guide: an :class:`~bayesmeta.inference.AmortizedGuide` (on ``device``), or ``None``
            with ``conjugate=True``.
        source: a ``TaskFamily`` or a ``TaskBatch`` pool.
        config: :class:`TrainConfig`.
        objective, num_particles: the training bound (:data:`~bayesmeta.inference.OBJECTIVES`).
        conjugate: maximise the exact log marginal likelihood (type-II ML) instead of a bound.
        context: the fit's :class:`~bayesmeta.inference.context.FitContext` (checkpoint, resume, process
            group, validation, replay, callbacks), as in :func:`~bayesmeta.inference.loop.train_loop`.
    """
    # a site on a constrained support reaches the model through a Delta with a log-Jacobian: no analytic KL
    analytic = all(_real(s.support) for s in program.sites)
    if conjugate:
        loss_fn = _conjugate_loss(program.model)
    elif program.has_globals:  # the globals' terms once per pool: the library's own objectives
        loss_fn = GlobalObjective(objective, num_particles)(program, guide)
    else:
        loss_fn = make_objective(objective, num_particles, analytic_kl=analytic)(program, guide)
    guide_params = [] if guide is None else list(guide.parameters())
    # the subset term trains the local guide only: q(g) is the posterior given the whole pool, once
    global_params = set() if guide is None or guide.globals is None else set(guide.globals.parameters())
    local_params = [p for p in guide_params if p not in global_params]
    # the ELBO, and a sleep phase for the guide (a program with globals: in its objective)
    sleep_term = objective == "elbo+sleep" and guide is not None and not program.has_globals

    def make_step(stream: TaskStream):
        subsets = guide is not None and stream.pool is not None and config.encoder_subsets
        # the subset term is guide-only: for wake-sleep, its wake part (the sleep phase already ran on this batch)
        no_sleep = {"sleep": False} if isinstance(getattr(loss_fn, "elbo", None), ReweightedWakeSleep | GlobalObjective) else {}

        def step(b: Batch) -> torch.Tensor:
            loss = loss_fn(b.x, b.y, b.mask, num_tasks=b.num_tasks)
            loss.backward()
            if subsets:
                _add_guide_grads(loss_fn(b.x, b.y, stream.random_subset(b.mask), num_tasks=b.num_tasks, **no_sleep),
                                 local_params)
            if sleep_term:
                (-(b.num_tasks or b.x.shape[0]) / b.x.shape[0] * sleep_log_q(program, guide, b.x, b.mask).sum()).backward()
            matching = None if guide is None else guide.prior_matching_loss(b.x)
            if matching is not None:  # the empty set's Gaussian follows a non-Gaussian prior
                matching.backward()
            return loss.detach() / (b.num_tasks or b.x.shape[0])

        return step

    modules = {"model": program.model, "guide": guide}  # checkpoints hold the user's model as it is
    params = list(program.parameters()) + guide_params
    return train_loop(make_step, modules, params, source, config, device=device, x_dim=program.x_dim, y_dim=program.y_dim,
                      context=context)


def _add_guide_grads(loss: torch.Tensor, guide_params: list[torch.Tensor]) -> None:
    grads = torch.autograd.grad(loss, guide_params, allow_unused=True)
    for p, g in zip(guide_params, grads, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def _conjugate_loss(model):
    if not getattr(model, "has_exact_posterior", False):
        raise ValueError(
            f"conjugate=True needs a model with an exact posterior; {type(model).__name__} has none"
        )

    def loss(x, y, mask, *, num_tasks=None):
        lml = model.log_marginal_likelihood(x, y, mask, validate=False)  # [T]; the stream validated
        return -(num_tasks or x.shape[0]) / x.shape[0] * lml.sum()

    return loss
