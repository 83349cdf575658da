"""Bandits: a finite set of arms with task-specific reward distributions, as a special case of :mod:`.propose`.

An arm is a one-hot input ``x`` (``K`` arms: ``x_dim = K``), the search space is
``Candidates(eye(K))`` and a pull is one evaluation. Task families (each task a bandit):

* :class:`BernoulliBandit`: arm ``k`` pays 1 with probability ``sigmoid(theta_k)``,
  ``theta_k ~ N(loc_k, scale_k^2)`` independently (a task's arms share a prior that earlier tasks
  reveal: some arms are usually good);
* :class:`GaussianBandit`: arm ``k`` pays ``N(theta_k, noise_std^2)``, ``theta_k ~ N(loc_k, scale_k^2)``.

Both have a Bayes oracle (``oracle_belief``: per-arm grid or conjugate posterior under the true
prior). **Meta Thompson sampling** is Thompson sampling with a learner fitted on earlier bandits
(e.g. ``BayesLearner(HierarchicalLogisticRegression(x_dim=K, bias=False))``: a learned
correlated Gaussian prior over the arms' logits); :class:`IndependentArms` is the non-meta
reference (a flat prior per arm: Beta(1, 1), or a very wide Gaussian). :func:`run_bandits` plays
``T`` bandits side by side and returns the cumulative regret.
"""

from __future__ import annotations

import torch

from ..tasks import TaskFamily
from .belief import Belief, ParamBelief
from .loop import as_policy, optimize_tasks
from .space import Candidates
from .surrogates import Surrogate

__all__ = ["BernoulliBandit", "GaussianBandit", "IndependentArms", "run_bandits"]


def _pulls(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per task and arm: number of pulls ``[T, K]`` and sum of rewards ``[T, K]`` (one-hot ``x``)."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1), (x * m * y[..., :1]).sum(1)


def _arm_function(kind: str):
    """Maps arm parameters ``[k, T, K]`` and one-hot ``x [T, N, K]`` to the mean reward ``[k, T, N]`` and its distribution."""
    def pick(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (p[..., None, :] * x.to(p)).sum(-1)  # the pulled arm's parameter

    def function(p, x):
        v = pick(p, x)
        return (torch.sigmoid(v) if kind == "logit" else v).to(x.dtype)
    return pick, function


class _Bandit(TaskFamily):
    y_dim = 1

    def __init__(self, num_arms: int, loc, scale) -> None:
        if isinstance(num_arms, bool) or not isinstance(num_arms, int) or num_arms < 2:
            raise ValueError(f"num_arms must be an int >= 2; got {num_arms!r}")
        self.num_arms = self.x_dim = num_arms
        self.loc = torch.as_tensor(loc, dtype=torch.float64).expand(num_arms).clone()
        self.scale = torch.as_tensor(scale, dtype=torch.float64).expand(num_arms).clone()
        if not (self.scale > 0).all():
            raise ValueError(f"scale must be > 0; got {self.scale.tolist()}")

    @property
    def arms(self) -> Candidates:
        """The search space: the ``K`` one-hot arms."""
        return Candidates(torch.eye(self.num_arms))

    def sample_params(self, num_tasks, generator):
        eps = torch.randn(num_tasks, self.num_arms, generator=generator, dtype=torch.float64)
        return {"theta": (self.loc + self.scale * eps).float()}

    def sample_inputs(self, num_tasks, num_points, generator):
        arms = torch.randint(self.num_arms, (num_tasks, num_points), generator=generator)
        return torch.nn.functional.one_hot(arms, self.num_arms).float()  # [T, N, K]

    def arm_means(self, params) -> torch.Tensor:
        """Expected reward of every arm ``[T, K]``."""
        raise NotImplementedError

    def mean_function(self, params, x):
        return (x * self.arm_means(params).to(x)[:, None]).sum(-1, keepdim=True)  # [T, N, 1]


class BernoulliBandit(_Bandit):
    """``K`` arms paying 1 with probability ``sigmoid(theta_k)``, ``theta_k ~ N(loc_k, scale_k^2)``.

    Args:
        num_arms: ``K >= 2``.
        loc: prior mean of the logits, a number or ``[K]`` (default: ``linspace(-2, 1, K)``).
        scale: prior sd of the logits, a number or ``[K]``.
        grid: oracle grid points per arm.

    Example:
        >>> fam = BernoulliBandit(4)
        >>> b = fam.sample(2, shots=5)
        >>> b.x_support.shape, sorted(set(b.y_support.flatten().tolist())) <= [0.0, 1.0]
        (torch.Size([2, 5, 4]), True)
    """

    def __init__(self, num_arms: int = 10, loc=None, scale=1.0, *, grid: int = 400) -> None:
        super().__init__(num_arms, torch.linspace(-2.0, 1.0, num_arms) if loc is None else loc, scale)
        self.grid = grid

    def __repr__(self) -> str:
        return f"BernoulliBandit(num_arms={self.num_arms}, loc={self.loc.tolist()}, scale={self.scale.tolist()})"

    def arm_means(self, params) -> torch.Tensor:
        return torch.sigmoid(params["theta"])

    def simulate(self, params, x, generator):
        p = self.mean_function(params, x)
        return (torch.rand(p.shape, generator=generator) < p).to(p.dtype)

    def oracle_belief(self, x, y, mask, *, pool_size: int = 256, generator=None) -> Belief:
        """Independent per-arm grid posteriors of the logits under the true prior; ``pool_size`` joint draws."""
        n, s = _pulls(x.double(), y.double(), mask)  # [T, K]
        lo, hi = self.loc - 6 * self.scale, self.loc + 6 * self.scale
        grid = lo + (hi - lo) * (torch.arange(self.grid, dtype=torch.float64)[:, None] + 0.5) / self.grid  # [G, K]
        log_prior = -0.5 * ((grid - self.loc) / self.scale) ** 2
        logp, log1mp = torch.nn.functional.logsigmoid(grid), torch.nn.functional.logsigmoid(-grid)
        log_w = log_prior[:, None] + s[None] * logp[:, None] + (n - s)[None] * log1mp[:, None]  # [G, T, K]
        probs = torch.softmax(log_w, 0).permute(1, 2, 0).reshape(-1, self.grid)  # [T K, G]
        idx = torch.multinomial(probs, pool_size, replacement=True, generator=generator).T  # [M, T K]
        idx = idx.reshape(pool_size, x.shape[0], self.num_arms)  # [M, T, K]: a grid point per draw, task and arm
        draws = grid[idx, torch.arange(self.num_arms)]  # [M, T, K] logits
        pick, function = _arm_function("logit")
        return ParamBelief(draws, None, function, lambda p, xq: torch.distributions.Bernoulli(logits=pick(p, xq)),
                           pool_size=pool_size)


class GaussianBandit(_Bandit):
    """``K`` arms paying ``N(theta_k, noise_std^2)``, ``theta_k ~ N(loc_k, scale_k^2)`` (conjugate oracle).

    Args:
        num_arms: ``K >= 2``.
        loc, scale: prior mean and sd of the arms' means (default loc ``linspace(-1, 1, K)``).
        noise_std: reward noise.
    """

    def __init__(self, num_arms: int = 10, loc=None, scale=0.5, *, noise_std: float = 1.0) -> None:
        super().__init__(num_arms, torch.linspace(-1.0, 1.0, num_arms) if loc is None else loc, scale)
        if not noise_std > 0:
            raise ValueError(f"noise_std must be > 0; got {noise_std!r}")
        self.noise_std = float(noise_std)

    def __repr__(self) -> str:
        return (f"GaussianBandit(num_arms={self.num_arms}, loc={self.loc.tolist()}, scale={self.scale.tolist()}, "
                f"noise_std={self.noise_std})")

    def arm_means(self, params) -> torch.Tensor:
        return params["theta"]

    def simulate(self, params, x, generator):
        f = self.mean_function(params, x)
        return f + self.noise_std * torch.randn(f.shape, generator=generator)

    def oracle_belief(self, x, y, mask, *, pool_size: int = 256, generator=None) -> Belief:
        """Conjugate per-arm posteriors under the true prior; ``pool_size`` exact joint draws."""
        return _gaussian_arms(x, y, mask, self.loc, self.scale, self.noise_std, pool_size, generator)


def _gaussian_arms(x, y, mask, loc, scale, noise_std, pool_size, generator) -> ParamBelief:
    n, s = _pulls(x.double(), y.double(), mask)
    prec = 1 / scale**2 + n / noise_std**2  # [T, K]
    mean = (loc / scale**2 + s / noise_std**2) / prec
    eps = torch.randn(pool_size, *mean.shape, generator=generator, dtype=torch.float64)
    draws = mean + eps / prec.sqrt()  # [M, T, K]
    pick, function = _arm_function("identity")
    return ParamBelief(draws, None, function,
                       lambda p, xq: torch.distributions.Normal(pick(p, xq), torch.full_like(pick(p, xq), noise_std)),
                       pool_size=pool_size)


class IndependentArms(Surrogate):
    """Non-meta Thompson sampling: every arm on its own with a flat prior.

    Args:
        num_arms: ``K``.
        kind: ``"bernoulli"`` (Beta(1, 1) on each arm's probability) or ``"gaussian"`` (``N(0,
            prior_sd^2)`` on each arm's mean, known ``noise_std``).
    """

    def __init__(self, num_arms: int, kind: str = "bernoulli", *, noise_std: float = 1.0,
                 prior_sd: float = 100.0) -> None:
        if kind not in ("bernoulli", "gaussian"):
            raise ValueError(f"kind must be 'bernoulli' or 'gaussian'; got {kind!r}")
        self.x_dim = self.num_arms = num_arms
        self.kind, self.noise_std, self.prior_sd = kind, float(noise_std), float(prior_sd)
        self.name = f"independent {kind} arms"

    def belief(self, x, y, mask, *, pool_size: int = 256, seed: int = 0) -> Belief:
        g = torch.Generator().manual_seed(seed)
        x, y, mask = x.cpu(), y.cpu(), mask.cpu()
        if self.kind == "gaussian":
            zero = torch.zeros(self.num_arms, dtype=torch.float64)
            return _gaussian_arms(x, y, mask, zero, zero + self.prior_sd, self.noise_std, pool_size, g)
        n, s = _pulls(x.double(), y.double(), mask)
        a, b = 1 + s, 1 + n - s  # [T, K]
        # Beta draws as a ratio of Gamma draws from the generator's stream (torch's Beta takes no generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            draws = torch.distributions.Beta(a, b).sample((pool_size,))  # [M, T, K]
        logits = torch.logit(draws.clamp(1e-12, 1 - 1e-12))
        pick, function = _arm_function("logit")
        return ParamBelief(logits, None, function,
                           lambda p, xq: torch.distributions.Bernoulli(logits=pick(p, xq)), pool_size=pool_size)


def run_bandits(model, family: _Bandit, *, num_tasks: int, horizon: int, acquisition: str = "ts", seed: int = 0,
                progress: bool = False, **options) -> dict:
    """Play ``num_tasks`` new bandits of ``family`` for ``horizon`` pulls each with one policy.

    Args:
        model: a fitted learner, a surrogate (:class:`IndependentArms`), the family itself (the
            oracle-prior policy) or a policy (:class:`~.baselines.RandomSearch`).
        acquisition: ``"ts"`` (default), or any of :data:`~.acquisition.ACQUISITIONS`.

    Returns:
        ``{"arms": [T, H], "rewards": [T, H], "regret": [T, H] (mu* - mu of the pulled arm),
        "cumulative_regret": [T, H], "seconds": [...]}``; the bandits are the same for every
        policy with the same ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    params = family.sample_params(num_tasks, g)
    means = family.arm_means(params)  # [T, K]
    sim = torch.Generator().manual_seed(seed + 1)
    policy = as_policy(model, acquisition, **options)
    run = optimize_tasks(policy, lambda xq: family.simulate(params, xq, sim), family.arms, num_tasks=num_tasks,
                         budget=horizon, seed=seed, progress=progress)
    arms = run["x"].argmax(-1)  # [T, H]
    regret = means.max(-1, keepdim=True).values - torch.gather(means, 1, arms)
    return {"arms": arms, "rewards": run["y"][..., 0], "regret": regret, "cumulative_regret": regret.cumsum(-1),
            "seconds": run["seconds"]}
