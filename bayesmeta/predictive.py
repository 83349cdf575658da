"""``Posterior`` over task parameters and the ``Predictive`` it makes on query points."""

from __future__ import annotations

import contextlib

import torch

from .inference.importance import defensive_importance, effective_sample_size, pareto_k
from .mixture import GaussianMixture, heaviest

__all__ = ["Posterior", "Predictive", "PREDICT_METHODS"]

PREDICT_METHODS = ("importance", "guide", "exact")
DEFAULT_SAMPLES = {"importance": 1000, "guide": 200}
_CHUNK_ELEMENTS = 2**25  # decoder rows per chunk when evaluating many samples


class Predictive(GaussianMixture):
    """Posterior predictive on query points: a mixture over posterior samples.

    ``mean``, ``std``, ``interval(level)``, ``log_prob(y)`` (log of the Monte-Carlo mixture
    density per point, ``[T, N]``), ``cdf(y)`` and ``sample()`` come from
    :class:`~bayesmeta.mixture.GaussianMixture`. With ``method="importance"`` the components are
    weighted and ``ess`` / ``pareto_k`` (per task ``[T]``) say how far to trust the weights.
    """

    def __init__(self, loc, scale, log_weights=None, *, method: str = "guide") -> None:
        super().__init__(loc, scale, log_weights)
        self.method = method
        self._raw_log_weights = log_weights
        self._pareto_k = None

    def _replace(self, loc, scale, log_weights) -> Predictive:
        out = Predictive(loc, scale, log_weights, method=self.method)
        out._raw_log_weights, out._pareto_k = self._raw_log_weights, self._pareto_k
        return out

    @property
    def ess(self) -> torch.Tensor | None:
        """Kish effective sample size per task ``[T]`` (importance method only)."""
        if self._raw_log_weights is None:
            return None
        return effective_sample_size(self._raw_log_weights)

    @property
    def pareto_k(self) -> torch.Tensor | None:
        """PSIS Pareto ``k`` per task ``[T]``: above 0.7 the importance estimate is unreliable."""
        if self._raw_log_weights is None:
            return None
        if self._pareto_k is None:
            self._pareto_k = pareto_k(self._raw_log_weights)
        return self._pareto_k


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Posterior:
    """Posterior over the task parameters of ``T`` tasks given their support sets.

    Built by :meth:`bayesmeta.BayesLearner.adapt`. Holds either the amortized guide's local
    parameters (approximate posterior, optionally refined) or an exact Gaussian posterior.
    """

    def __init__(self, model, x, y, mask, *, guide=None, local=None, exact=None) -> None:
        if (exact is None) == (guide is None or local is None):
            raise ValueError("Posterior needs either guide and local parameters, or an exact posterior")
        self.model, self.guide, self.local, self.exact = model, guide, local, exact
        self.x_support, self.y_support, self.mask_support = x, y, mask

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x_support.device

    def distribution(self, widen: float = 1.0):
        """The (approximate) posterior over flat task parameters: batch ``[T]``, event ``[P]``."""
        if self.exact is not None:
            if widen == 1.0:
                return self.exact
            return type(self.exact)(self.exact.loc, scale_tril=self.exact.scale_tril * widen)
        return self.guide.build(self.local, widen=widen)

    @torch.no_grad()
    def sample(self, num_samples: int = 1000, *, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` parameter sets per task: ``{site: [n, T, *event]}``."""
        with _seeded(seed, self.device):
            theta = self.distribution().sample((num_samples,))  # [n, T, P]
        return self.model.split(theta)

    def _query(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=self.x_support.dtype, device=self.device)
        if x.dim() == 2:
            x = x.expand(self.num_tasks, *x.shape)  # same points for every task
        if x.dim() != 3 or x.shape[0] != self.num_tasks or x.shape[-1] != self.model.x_dim:
            raise ValueError(
                f"x must have shape [{self.num_tasks}, N, {self.model.x_dim}] or [N, {self.model.x_dim}]; "
                f"got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("x has non-finite values")
        return x

    @torch.no_grad()
    def predict(self, x, num_samples: int | None = None, *, method: str | None = None,
                seed: int | None = None) -> Predictive:
        """Posterior predictive at query inputs ``x`` ``[T, N, D]`` (or ``[N, D]`` for all tasks).

        Args:
            method: ``"importance"`` (default for approximate posteriors): self-normalised
                importance sampling of the model's exact task posterior with a defensive
                proposal (guide, widened guide, prior); ``"guide"``: plain samples from the
                guide; ``"exact"`` (default for conjugate posteriors): closed form.
            num_samples: posterior samples (default 1000 for importance, 200 for guide).
            seed: makes the Monte-Carlo draws reproducible.
        """
        if method is None:
            method = "exact" if self.exact is not None else "importance"
        if method not in PREDICT_METHODS:
            raise ValueError(f"method must be one of {PREDICT_METHODS}; got {method!r}")
        x = self._query(x)
        if method == "exact":
            return self._predict_exact(x)
        n = DEFAULT_SAMPLES[method] if num_samples is None else num_samples
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
        with _seeded(seed, self.device):
            if method == "guide":
                theta, log_w = self.distribution().sample((n,)), None
            else:
                theta, log_w = self.importance_samples(n)
        if log_w is None:
            loc, scale = self._components(x, theta)
            return Predictive(loc, scale, None, method=method)
        # Only the draws carrying the weight are pushed through the likelihood on x: the
        # mixture loses at most 1e-3 of its mass, the cost drops by n / kept.
        keep = heaviest(log_w, 1 - 1e-3)  # [m, T]
        theta_kept = torch.gather(theta, 0, keep[..., None].expand(-1, -1, theta.shape[-1]))
        loc, scale = self._components(x, theta_kept)
        pred = Predictive(loc, scale, torch.gather(log_w, 0, keep), method=method)
        pred._raw_log_weights = log_w  # ESS and Pareto-k describe all n draws
        return pred

    def importance_samples(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta [n, T, P]`` and log weights ``[n, T]`` targeting the model's exact posterior."""
        x, y, m = self.x_support, self.y_support, self.mask_support
        chunk = max(1, _CHUNK_ELEMENTS // max(1, self.num_tasks * x.shape[1] * 64))
        return defensive_importance(
            lambda th: self.model.log_joint(x, y, m, th),
            self.distribution(),
            self.distribution(widen=2.0),
            self.model.prior_distribution(),
            num_samples,
            chunk=chunk,
        )

    def _components(self, x, theta):
        chunk = max(1, _CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[1] * 64))
        locs, scales = [], []
        for i in range(0, theta.shape[0], chunk):
            lik = self.model.likelihood(x, self.model.split(theta[i : i + chunk]))
            locs.append(lik.loc)
            scales.append(lik.scale.expand_as(lik.loc))
        return torch.cat(locs), torch.cat(scales)

    def _predict_exact(self, x) -> Predictive:
        if self.exact is None or not hasattr(self.model, "exact_predict"):
            raise ValueError("method='exact' needs an exact posterior (BayesLearner(..., conjugate=True))")
        mu, sd = self.model.exact_predict(self.exact, x)  # [T, N, 1]
        return Predictive(mu[None], sd[None], None, method="exact")

