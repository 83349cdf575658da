"""Surrogates: from a fitted learner, or a task family's Bayes oracle, to a :class:`~.belief.Belief` about new tasks.

* :class:`LearnerSurrogate` wraps any fitted learner. A ``BayesLearner``'s posterior gives
  equally weighted, importance-resampled parameter draws (``Posterior.sample``) pushed through
  the model's own observation distribution (``posterior.program.observation_distribution``): its
  mean is the task's function, so a draw is one coherent function. The MAML family gives one
  point estimate per task (no Thompson sampling); an ``Ensemble`` is a mixture of its members.
* :class:`OracleSurrogate` is a family's true posterior under the true prior: ``Sinusoid`` (grid
  over amplitude and phase), ``HierarchicalLinear`` (exact conjugate draws),
  ``HierarchicalLogistic`` / ``HierarchicalPoisson`` with ``dim=1`` (grid over slope and
  intercept), and any family with an ``oracle_belief`` method (the bandit families).
"""

from __future__ import annotations

from typing import Any

import torch

from ..baselines import AdaptedTasks, GradientMetaLearner
from ..learners.posterior import Posterior
from ..predictive import heaviest, pad_components, systematic_resample
from ..tasks import HierarchicalLinear, HierarchicalLogistic, HierarchicalPoisson, Sinusoid, linear_features
from .belief import Belief, MixtureBelief, ParamBelief, PointBelief

__all__ = ["LearnerSurrogate", "OracleSurrogate", "Surrogate", "as_surrogate"]

MAX_ORACLE_COMPONENTS = 4096  # grid points kept per task (beyond: systematic resampling to this many)
_GRID_ELEMENTS = 2**22  # grid points x tasks x points of one group's likelihood


class Surrogate:
    """Turns observations of ``T`` tasks into a :class:`~.belief.Belief`. ``x_dim``: inputs (``None``: any);
    ``device`` and ``dtype``: where and in which precision the observations and candidates are put (``None``: as given)."""

    x_dim: int | None = None
    name: str = "surrogate"
    device: torch.device | None = None
    dtype: torch.dtype | None = None

    def belief(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, pool_size: int = 256,
               seed: int = 0) -> Belief:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- learners
def _output_mean(d, output: int) -> torch.Tensor:
    """The mean ``[k, T, N]`` of an observation distribution of batch ``[k, T, N]`` (event ``()`` or ``[E]``)."""
    mean = d.mean
    if mean.dim() == 4:
        return mean[..., output]
    if output != 0:
        raise ValueError(f"output={output}: the model has one output")
    return mean


def _output_dist(d, output: int):
    """The observation distribution of one output: a Normal of batch ``[k, T, N]``, or the model's own."""
    base = d
    while hasattr(base, "base_dist"):
        base = base.base_dist
    if type(base).__name__ == "Normal":
        loc, scale = base.loc, torch.as_tensor(base.scale).expand_as(base.loc)
        if loc.dim() == 4:
            loc, scale = loc[..., output], scale[..., output]
        return torch.distributions.Normal(loc, scale)
    if d.mean.dim() == 4:
        raise ValueError(f"a {type(base).__name__} observation with several outputs: use target='f' (the mean function)")
    return d


def posterior_belief(posterior, *, output: int = 0, pool_size: int = 256, seed: int = 0) -> ParamBelief:
    """A ``BayesLearner`` posterior as a belief: ``pool_size`` equally weighted posterior draws.

    The draws come from ``posterior.sample(pool_size, seed=seed)`` (importance-resampled for an
    approximate posterior, exact for a conjugate one) and are mapped back to the model's flat
    coordinates (``posterior.program.flatten``); functions and observations come from
    ``posterior.program.observation_distribution(x, u)``, i.e. the user's Pyro program itself.
    """
    program = posterior.program
    u = program.flatten(posterior.sample(pool_size, seed=seed))  # [n, T, P]

    def function(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _output_mean(program.observation_distribution(x, p), output)

    def observation(p: torch.Tensor, x: torch.Tensor):
        return _output_dist(program.observation_distribution(x, p), output)
    return ParamBelief(u, None, function, observation, pool_size=pool_size)


def _adapt_points(learner: GradientMetaLearner, x, y, mask) -> AdaptedTasks:
    """A gradient learner adapted to each task; a task without observations keeps the meta-learned initialisation."""
    has = mask.any(1)
    if bool(has.all()):
        return learner.adapt(x, y, mask)
    t = x.shape[0]
    params = {k: v.detach()[None].expand(t, *v.shape).clone() for k, v in learner.params().items()}
    if bool(has.any()):
        idx = has.nonzero()[:, 0]
        sub = learner.adapt(x[idx], y[idx], mask[idx])
        for k in params:
            params[k][idx] = sub.params[k]
    return AdaptedTasks(learner, params, t)


class LearnerSurrogate(Surrogate):
    """A fitted learner (``BayesLearner``, the MAML family, an ``Ensemble``) as a surrogate.

    Args:
        learner: fitted; ``learner.adapt(x, y, mask)`` is called on the observations.
        output: which output column is the objective (multi-output models).
    """

    def __init__(self, learner, *, output: int = 0) -> None:
        if not callable(getattr(learner, "adapt", None)):
            raise TypeError(f"learner must be a fitted learner with adapt(); got {type(learner).__name__}")
        self.learner, self.output = learner, output
        first = learner.members[0] if hasattr(learner, "members") else learner
        self.x_dim, self.name = getattr(first, "x_dim", None), type(learner).__name__
        param = next((p for attr in ("model", "net") if isinstance(getattr(first, attr, None), torch.nn.Module)
                      for p in getattr(first, attr).parameters()), None)
        self.device = getattr(first, "device", None) if param is None else param.device
        self.dtype = None if param is None else param.dtype

    def belief(self, x, y, mask, *, pool_size: int = 256, seed: int = 0) -> Belief:
        return self._belief(self.learner, x, y, mask, pool_size=pool_size, seed=seed)

    def _belief(self, learner, x, y, mask, *, pool_size: int, seed: int) -> Belief:
        if hasattr(learner, "members"):
            return MixtureBelief([self._belief(m, x, y, mask, pool_size=pool_size, seed=seed + i)
                                  for i, m in enumerate(learner.members)])
        device = getattr(learner, "device", x.device)
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        if x.shape[1] == 0:  # nothing observed: one masked-out point (a Pyro plate of size 0 is an error)
            x, y = x.new_zeros(x.shape[0], 1, x.shape[2]), y.new_zeros(y.shape[0], 1, y.shape[2])
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=device)
        name = type(learner).__name__
        if isinstance(learner, GradientMetaLearner):
            return PointBelief(_adapt_points(learner, x, y, mask), x.shape[0], output=self.output, name=name)
        post = learner.adapt(x, y, mask)
        if isinstance(post, Posterior):  # draws of the model's own parameters: functions from the program
            return posterior_belief(post, output=self.output, pool_size=pool_size, seed=seed)
        return PointBelief(post, x.shape[0], output=self.output, name=name)


# ---------------------------------------------------------------------------------------------- oracles
def _weighted_grid(log_w: torch.Tensor, grid_params: torch.Tensor, generator: torch.Generator) -> tuple:
    """Keep each task's heaviest grid points (``1 - 1e-6`` of the mass, at most MAX_ORACLE_COMPONENTS)."""
    idx = heaviest(log_w, 1 - 1e-6)  # [m, T]
    if idx.shape[0] > MAX_ORACLE_COMPONENTS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            idx = systematic_resample(log_w, MAX_ORACLE_COMPONENTS)
        return grid_params[idx], None
    return grid_params[idx], torch.gather(log_w, 0, idx)  # [m, T, P], [m, T]


def _sinusoid_belief(family: Sinusoid, x, y, mask, *, grid: int, pool_size: int, generator) -> ParamBelief:
    log_w, amp, phase = family.oracle_log_weights(x, y, mask, grid=grid)  # [G, T]
    params, kept = _weighted_grid(log_w, torch.stack([amp, phase], -1), generator)
    noise = family.noise_std

    def function(p: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        return (p[..., 0, None] * torch.sin(xq[..., 0].to(p) - p[..., 1, None])).to(xq.dtype)  # [k, T, N]

    def observation(p, xq):
        f = function(p, xq)
        return torch.distributions.Normal(f, torch.full_like(f, noise))
    return ParamBelief(params, kept, function, observation, pool_size=pool_size, generator=generator)


def _linear_belief(family: HierarchicalLinear, x, y, mask, *, pool_size: int, generator) -> ParamBelief:
    mean, cov = family.posterior(x, y, mask)  # [T, F], [T, F, F] float64
    tril = torch.linalg.cholesky(cov)
    n = max(pool_size, 1000)
    eps = torch.randn(n, *mean.shape, generator=generator, dtype=mean.dtype)
    w = mean + (tril @ eps[..., None])[..., 0]  # [n, T, F]: exact posterior draws
    noise, bias = family.noise_std, family.bias

    def function(p: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        phi = linear_features(xq.to(p), bias)  # [T, N, F]
        return (phi * p[..., None, :]).sum(-1).to(xq.dtype)

    def observation(p, xq):
        f = function(p, xq)
        return torch.distributions.Normal(f, torch.full_like(f, noise))
    return ParamBelief(w, None, function, observation, pool_size=pool_size, generator=generator)


def _glm_belief(family, x, y, mask, *, grid: int, pool_size: int, generator) -> ParamBelief:
    """Grid posterior over (slope, intercept) of a 1-d hierarchical logistic or Poisson family."""
    if family.x_dim != 1:
        raise ValueError(f"the {type(family).__name__} oracle integrates over a 2-d grid: dim=1 only; got dim={family.x_dim}")
    x64, y64, m64 = x[..., 0].double(), y[..., 0].double(), mask.double()  # [T, S]

    def axis(mean, sd):
        return mean - 6 * sd + 12 * sd / grid * (torch.arange(grid, dtype=torch.float64) + 0.5)
    w, b = (v.reshape(-1) for v in torch.meshgrid(axis(*family.slope), axis(*family.intercept), indexing="ij"))
    log_prior = -0.5 * (((w - family.slope[0]) / family.slope[1]) ** 2 + ((b - family.intercept[0]) / family.intercept[1]) ** 2)
    per_group = max(1, _GRID_ELEMENTS // (w.numel() * max(1, x64.shape[1])))
    parts, weights = [], []
    for start in range(0, x64.shape[0], per_group):
        sl = slice(start, start + per_group)
        eta = w[:, None, None] * x64[None, sl] + b[:, None, None]  # [G, T_g, S]
        lp = (family.distribution(eta).log_prob(y64[None, sl]) * m64[None, sl]).sum(-1)  # [G, T_g]
        params, kept = _weighted_grid(log_prior[:, None] + lp, torch.stack([w, b], -1), generator)
        parts.append(params)
        weights.append(kept if kept is not None else params.new_zeros(params.shape[:2]))
    m = max(p.shape[0] for p in parts)
    padded = [pad_components(p, lw, m) for p, lw in zip(parts, weights, strict=True)]
    params, log_w = torch.cat([p for p, _ in padded], 1), torch.cat([lw for _, lw in padded], 1)

    def observation(p: torch.Tensor, xq: torch.Tensor):
        return family.distribution(p[..., 0, None] * xq[..., 0].to(p) + p[..., 1, None])  # batch [k, T, N]

    def function(p, xq):
        return observation(p, xq).mean.to(xq.dtype)
    return ParamBelief(params, log_w, function, observation, pool_size=pool_size, generator=generator)


class OracleSurrogate(Surrogate):
    """A task family's Bayes oracle (its true prior and likelihood) as a surrogate: the reference policy.

    Args:
        family: ``Sinusoid``, ``HierarchicalLinear``, ``HierarchicalLogistic`` or
            ``HierarchicalPoisson`` (``dim=1``), or any family with
            ``oracle_belief(x, y, mask, *, pool_size, generator) -> Belief``.
        grid: points per axis of a grid oracle (default 100: 10,000 grid points).

    Raises:
        TypeError: a family without an oracle.
    """

    def __init__(self, family, *, grid: int = 100) -> None:
        known = (Sinusoid, HierarchicalLinear, HierarchicalLogistic, HierarchicalPoisson)
        if not (isinstance(family, known) or callable(getattr(family, "oracle_belief", None))):
            raise TypeError(f"{type(family).__name__} has no Bayes oracle for decisions; oracles: "
                            f"{', '.join(k.__name__ for k in known)} and families with oracle_belief()")
        self.family, self.grid = family, grid
        self.x_dim, self.name = family.x_dim, f"oracle {type(family).__name__}"

    def belief(self, x, y, mask, *, pool_size: int = 256, seed: int = 0) -> Belief:
        g = torch.Generator().manual_seed(seed)
        x, y, mask = x.cpu(), y.cpu(), mask.cpu()
        fam: Any = self.family
        if callable(getattr(fam, "oracle_belief", None)):
            return fam.oracle_belief(x, y, mask, pool_size=pool_size, generator=g)
        if isinstance(fam, Sinusoid):
            return _sinusoid_belief(fam, x, y, mask, grid=self.grid, pool_size=pool_size, generator=g)
        if isinstance(fam, HierarchicalLinear):
            return _linear_belief(fam, x, y, mask, pool_size=pool_size, generator=g)
        return _glm_belief(fam, x, y, mask, grid=self.grid, pool_size=pool_size, generator=g)


def as_surrogate(model, *, output: int = 0) -> Surrogate:
    """A :class:`Surrogate` as it is; a task family with an oracle -> :class:`OracleSurrogate`; a learner -> :class:`LearnerSurrogate`."""
    if isinstance(model, Surrogate):
        return model
    if callable(getattr(model, "adapt", None)):
        return LearnerSurrogate(model, output=output)
    if callable(getattr(model, "sample", None)):
        return OracleSurrogate(model)
    raise TypeError(f"model must be a fitted learner, a task family with an oracle or a Surrogate; got "
                    f"{type(model).__name__}")
