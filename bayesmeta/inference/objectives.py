"""Training objectives: the mean-field ELBO, per-task importance-weighted bounds (plain and DReG), and
reweighted wake-sleep (the model on importance-weighted gradients, the guide on forward KL: wake and sleep)."""

from __future__ import annotations

import math

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum

from .program import ModelError

__all__ = ["TaskImportanceELBO", "DReGImportanceELBO", "ReweightedWakeSleep", "check_sleep_objective", "make_objective",
           "sleep_log_q", "OBJECTIVES", "SLEEP_OBJECTIVES"]

OBJECTIVES = ("elbo", "iwae", "iwae-dreg", "rws", "rws-wake", "rws-sleep", "elbo+sleep")
SLEEP_OBJECTIVES = ("rws", "rws-sleep", "elbo+sleep")  # those that simulate tasks from the model


class TaskImportanceELBO(ELBO):
    """Importance-weighted bound with one set of weights *per task* (Burda et al. 2016).

    ``L = sum_i log (1/K) sum_k p(theta_ik, D_i) / q(theta_ik | D_i)``. This is Pyro's
    ``RenyiELBO(alpha=0)`` (whose weights are per element of the plates common to all sites,
    here the tasks plate), with a :meth:`differentiable_loss` so it can be used as an
    ``ELBOModule`` with a plain torch optimiser, and with the task-subsampling scale of the
    ``tasks`` plate applied.
    """

    def __init__(self, num_particles: int = 8, vectorize_particles: bool = True,
                 max_plate_nesting: int = 2) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting)

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        particles: list[torch.Tensor] = []
        scale = 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w: torch.Tensor | float = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        # weights use unscaled densities; the subsampling scale multiplies the
                        # per-task bounds outside the log-mean-exp (Pyro's RenyiELBO puts it inside)
                        lp = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])
                        log_w = log_w + sign * torch_sum(lp, sum_dims)
                        scale = site["scale"]
            assert isinstance(log_w, torch.Tensor), "a model and guide with sample sites"
            particles.append(log_w)
        if self.vectorize_particles and self.num_particles > 1:
            log_w = particles[0]  # [K, T, 1...]
        else:
            log_w = torch.stack(particles)
        log_w = log_w.reshape(self.num_particles, -1)  # [K, T]
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)  # [T]
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


def make_objective(name: str, num_particles: int, *, analytic_kl: bool = True) -> ELBO:
    """``"elbo"`` -> ``TraceMeanField_ELBO`` (``Trace_ELBO`` with ``analytic_kl=False``); ``"iwae"`` ->
    :class:`TaskImportanceELBO`; ``"iwae-dreg"`` -> :class:`DReGImportanceELBO`.

    ``analytic_kl=False`` is needed when the guide gives a constrained site its value through a
    ``Delta`` with a log-Jacobian (``log_density``): Pyro's analytic KL of a ``Delta``
    (``-log p(v)``) ignores ``log_density``, so the mean-field ELBO would drop the Jacobian and
    reward ever wider guides (measured: a Beta-Bernoulli model's loss went below zero and the
    encoder diverged).
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int; got {num_particles!r}")
    if name in ("elbo", "elbo+sleep"):  # elbo+sleep: the trainer adds the sleep phase for the guide
        cls = TraceMeanField_ELBO if analytic_kl else Trace_ELBO
        return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=2)
    if name == "iwae":
        return TaskImportanceELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    if name == "iwae-dreg":
        return DReGImportanceELBO(num_particles=num_particles)
    if name in ("rws", "rws-wake", "rws-sleep"):
        return ReweightedWakeSleep(num_particles, wake=name != "rws-sleep", sleep=name != "rws-wake")
    raise ValueError(f"objective must be one of {OBJECTIVES}; got {name!r}")


class _LogWeight(torch.nn.Module):
    """``log p(theta, D) - log q(theta | D)`` as a module, so its parameters can be swapped out."""

    def __init__(self, model, guide) -> None:
        super().__init__()
        self.model, self.guide = model, guide

    def forward(self, x, y, mask, theta):
        q = self.guide.distribution(x, y, mask)
        return self.model.log_joint(x, y, mask, theta) - q.log_prob(theta)


class DReGImportanceELBO(ELBO):
    """Per-task importance-weighted bound with doubly reparameterized gradients (Tucker et al. 2019).

    The value is the bound of :class:`TaskImportanceELBO`. The plain IWAE gradient of the
    guide's parameters loses signal as the bound tightens (Rainforth et al. 2018): the guide
    drifts wide and, for tasks with many points, the model then inflates its noise to explain
    data with poor particles. DReG replaces the score-function part by its reparameterized
    equivalent, ``sum_k w_k^2 d log w_k / d theta_k  d theta_k / d params`` (all parameters, the
    prior's included, since ``q`` is built in the prior's whitened coordinates), plus the direct
    model gradient ``sum_k w_k d log p(theta_k, D) / d params``: the same expectation, far less
    variance. Needs a :class:`~bayesmeta.models.HierarchicalModel` and an
    :class:`~bayesmeta.inference.AmortizedGuide` (it uses their ``log_joint`` and
    ``distribution``, which tests tie to the Pyro program).
    """

    def __init__(self, num_particles: int = 8) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=2)

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - traces are not used
        raise NotImplementedError("DReGImportanceELBO evaluates log_joint directly, without traces")

    def differentiable_loss(self, model, guide, x, y, mask=None, *, num_tasks=None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        log_weight = _LogWeight(model, guide)
        frozen = {n: p.detach() for n, p in log_weight.named_parameters()}
        theta = guide.distribution(x, y, mask).rsample((self.num_particles,))  # [K, T, P]
        log_w_path = torch.func.functional_call(log_weight, frozen, (x, y, mask, theta))  # [K, T]
        w = torch.softmax(log_w_path.detach(), 0)
        direct = model.log_joint(x, y, mask, theta.detach())  # [K, T]
        surrogate = (w**2 * log_w_path + w * direct).sum(0)  # [T]
        bound = torch.logsumexp(log_w_path.detach(), 0) - math.log(self.num_particles)
        scale = (num_tasks or x.shape[0]) / x.shape[0]
        return -scale * (bound + (surrogate - surrogate.detach())).sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


def check_sleep_objective(program, objective: str) -> None:
    """Refuse a sleep-phase ``objective`` for a model program that cannot simulate tasks (names both)."""
    if objective not in SLEEP_OBJECTIVES:
        return
    x = program.probe_inputs()
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            g = program.sample_globals(1)[:, None] if program.has_globals else None
            program.sample_joint(x, g=g)
    except ModelError as err:
        raise ValueError(f"objective={objective!r} trains the guide on tasks simulated from the model, but "
                         f"{type(program.model).__name__} cannot simulate them: {err}. Use objective='iwae' or "
                         "'rws-wake' (no sleep phase), or give the observation distribution a sample()") from err


def sleep_log_q(model, guide, x: torch.Tensor, mask: torch.Tensor, *, g: torch.Tensor | None = None) -> torch.Tensor:
    """The sleep phase: ``log q(theta_i | D_i)`` of simulated tasks, ``[T]``; gradients reach the guide only.

    For every task of ``x [T, N, D]``, ``theta_i`` is drawn from the learned prior and all of its
    points' outcomes from the learned likelihood; the guide then reads a uniformly random number
    ``U{0..n_i}`` of the ``n_i`` points ``mask`` observes (every set size the guide will meet).
    Maximising the mean of this over simulated tasks is maximum likelihood of ``theta`` under
    ``q``: it minimises the forward KL ``E_D KL(p(theta | D) || q(theta | D))`` under the model,
    which is mass-covering and, at its optimum, calibrated by construction (simulation-based
    calibration then passes). No gradient reaches the model (its draws are constants and ``q``
    is built without the prior's gradients). A model with global sites simulates given their draw
    ``g [1, 1, G]`` (a constant), and ``q(theta | D, g)`` is scored at it.
    """
    u, y = model.sample_joint(x, mask, g=g)  # [T, P], [T, N, E]
    finite = torch.isfinite(y).all(-1) & torch.isfinite(u).all(-1)[:, None]  # [T, N]: an overflowing simulation
    y = torch.where(finite[..., None], y, torch.zeros_like(y))
    mask = mask & finite.all(-1, keepdim=True)  # such a task is shown no points and scores nothing
    rank = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0).argsort(-1).argsort(-1)
    n = mask.sum(-1, keepdim=True)  # [T, 1]
    keep = (torch.rand(n.shape, device=mask.device) * (n + 1)).floor()  # U{0..n_i}
    observed = mask & (rank < keep)  # [T, N]
    y = torch.where(observed[..., None], y, torch.zeros_like(y))  # a huge unshown value must not reach the encoder
    q = guide.distribution(x, y, observed, detach_prior=True, g=g)
    lq = q.log_prob(u)
    lq = lq.reshape(-1, x.shape[0])[0] if g is not None else lq  # [1, T] given a global draw
    return torch.where(finite.all(-1) & torch.isfinite(lq), lq, torch.zeros_like(lq))


class ReweightedWakeSleep(ELBO):
    """Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019), one set of weights per task.

    With ``K`` draws ``theta_k ~ q(theta | D_i)`` and self-normalised weights
    ``w_k ∝ p(theta_k, D_i) / q(theta_k | D_i)`` (constants for the gradient):

    * the model (prior and likelihood) ascends ``sum_k w_k log p(theta_k, D_i)``, the
      importance-sampling estimate of the gradient of ``log p(D_i)``: no reparameterisation
      through ``q``, so a wide or imperfect guide does not bias the model towards explaining the
      data with a larger noise (the mean-field ELBO's failure mode);
    * the guide, with ``wake``, ascends ``sum_k w_k log q(theta_k | D_i)`` (forward KL on the real
      tasks), and with ``sleep``, :func:`sleep_log_q` (forward KL on tasks simulated from the
      model). Both pull ``q`` to cover the posterior's mass rather than to sit in one mode.

    The reported loss is the negative importance-weighted bound ``-log (1/K) sum_k w_k`` (what
    :class:`TaskImportanceELBO` reports). Needs a model program and an
    :class:`~bayesmeta.inference.AmortizedGuide` (their ``log_joint`` and ``distribution``).
    """

    def __init__(self, num_particles: int = 8, *, wake: bool = True, sleep: bool = True) -> None:
        if not (wake or sleep):
            raise ValueError("ReweightedWakeSleep needs wake=True, sleep=True or both (else the guide never learns)")
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=2)
        self.wake, self.sleep = wake, sleep

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - traces are not used
        raise NotImplementedError("ReweightedWakeSleep evaluates log_joint directly, without traces")

    def differentiable_loss(self, model, guide, x, y, mask=None, *, num_tasks=None,
                            sleep: bool | None = None) -> torch.Tensor:
        """``sleep=False`` leaves the sleep phase out of this call (e.g. a guide-only term on subsets
        of the same tasks, which must not simulate and weigh the sleep phase twice)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        q = guide.distribution(x, y, mask, detach_prior=True)
        # constants; a clone, so that a flow's log_prob recomputes the inverse (with gradients) rather than
        # reading what sample() cached without them
        theta = q.sample((self.num_particles,)).clone()  # [K, T, P]
        log_p = model.log_joint(x, y, mask, theta)  # [K, T]; gradients: the model
        log_q = q.log_prob(theta)  # [K, T]; gradients: the guide
        log_w = (log_p - log_q).detach()
        w = torch.softmax(log_w, 0)
        carries = w > 0  # a particle with no weight (log p = -inf: an underflowed rate) must not give 0 * inf
        surrogate = torch.where(carries, w * log_p, torch.zeros_like(w)).sum(0)  # [T]
        if self.wake:
            surrogate = surrogate + torch.where(carries, w * log_q, torch.zeros_like(w)).sum(0)
        if self.sleep if sleep is None else sleep:
            surrogate = surrogate + sleep_log_q(model, guide, x, mask)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)  # [T]
        scale = (num_tasks or x.shape[0]) / x.shape[0]
        return -scale * (bound + (surrogate - surrogate.detach())).sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))
