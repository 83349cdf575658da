"""Simulation-based calibration (Talts et al. 2018) of an amortized posterior.

theta ~ learned prior -> simulated support set -> L posterior draws -> rank of theta among them.
If the posterior is right, the rank of every parameter coordinate is uniform on {0, ..., L}.
Too narrow a posterior piles ranks at both ends; too wide, in the middle; a biased one on a side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..inference.program import program_of

__all__ = ["SBCResult", "simulation_based_calibration"]


@dataclass(frozen=True)
class SBCResult:
    """Ranks and a uniformity test per parameter coordinate.

    Attributes:
        ranks: ``[num_simulations, P]`` ranks in ``0..num_posterior_samples``.
        names: the ``P`` coordinates, e.g. ``"w[1]"``.
        chi2, p_values: ``[P]`` chi-square statistic of the rank histogram (``bins`` bins) and its
            p-value under uniformity.
    """

    ranks: torch.Tensor
    num_posterior_samples: int
    names: list[str]
    bins: int
    chi2: torch.Tensor
    p_values: torch.Tensor

    def passed(self, alpha: float = 0.01) -> bool:
        """No coordinate rejects uniformity at level ``alpha`` (Bonferroni over coordinates)."""
        return bool((self.p_values >= alpha / len(self.names)).all())

    @classmethod
    def from_dict(cls, data: dict) -> SBCResult:
        """Rebuild from :meth:`to_dict` (e.g. a run directory's ``sbc.json``)."""
        try:
            return cls(torch.tensor(data["ranks"]).T, data["num_posterior_samples"], list(data["names"]),
                       data["bins"], torch.tensor(data["chi2"], dtype=torch.float64),
                       torch.tensor(data["p_values"], dtype=torch.float64))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an SBC result: {err}") from err

    def to_dict(self) -> dict:
        return {"num_simulations": self.ranks.shape[0], "num_posterior_samples": self.num_posterior_samples,
                "bins": self.bins, "names": self.names, "chi2": self.chi2.tolist(),
                "p_values": self.p_values.tolist(), "passed": self.passed(),
                "ranks": self.ranks.T.tolist()}


def rank_uniformity(ranks: torch.Tensor, num_posterior_samples: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chi-square test of uniform ranks on ``0..L`` per column: statistic and p-value, each ``[P]``.

    Rank values are grouped into ``bins`` bins; each bin's expected count uses the exact number
    of rank values it holds, so ``L + 1`` need not be a multiple of ``bins``.
    """
    values = num_posterior_samples + 1
    bin_of = torch.arange(values) * bins // values  # [L+1]
    expected = torch.bincount(bin_of, minlength=bins).double() / values * ranks.shape[0]  # [B]
    observed = torch.stack([torch.bincount(bin_of[c], minlength=bins) for c in ranks.T.long()]).double()  # [P, B]
    chi2 = ((observed - expected) ** 2 / expected).sum(-1)
    p = torch.special.gammaincc(torch.tensor((bins - 1) / 2, dtype=torch.float64), chi2 / 2)
    return chi2, p


def _inputs(x, num_simulations: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor of support inputs (e.g. family.sample_inputs(...)); got {type(x).__name__}")
    if x.dim() == 2:
        x = x.expand(num_simulations, *x.shape)
    if x.dim() != 3 or x.shape[0] != num_simulations:
        raise ValueError(f"x must have shape [S, D] or [{num_simulations}, S, D]; got {tuple(x.shape)}")
    return x


def _posterior_draws(posterior, model, x, y, mask, n: int, method, seed: int) -> torch.Tensor:
    if hasattr(posterior, "adapt"):
        draws = posterior.adapt(x, y, mask).sample(n, method=method, seed=seed)
    elif callable(posterior):
        draws = posterior(x, y, mask, n)
    else:
        raise TypeError(f"posterior must be a learner (with .adapt) or a callable (x, y, mask, n) -> draws; "
                        f"got {type(posterior).__name__}")
    flat = model.flatten(draws) if isinstance(draws, dict) else draws
    if flat.shape != (n, x.shape[0], model.param_dim):
        raise ValueError(f"posterior draws must have shape {(n, x.shape[0], model.param_dim)}; got {tuple(flat.shape)}")
    if not torch.isfinite(flat).all():
        raise ValueError("posterior draws hold NaN or inf")
    return flat


@torch.no_grad()
def simulation_based_calibration(model, posterior, x, *, num_simulations: int = 200,
                                 num_posterior_samples: int = 100, method: str | None = "guide",
                                 bins: int | None = None, seed: int = 0) -> SBCResult:
    """SBC of a posterior for ``model``'s learned prior on support inputs ``x``.

    Args:
        model: the model whose prior and likelihood simulate the data (any model ``BayesLearner``
            takes); ranks are taken per flat unconstrained coordinate.
        posterior: a learner (``adapt(x, y, mask).sample(n, method=method)``) or a callable
            ``(x, y, mask, n) -> {site: [n, T, ...]}`` or flat ``[n, T, P]`` draws.
        x: support inputs ``[S, D]`` (the same for every simulation) or ``[num_simulations, S, D]``.
        num_simulations, num_posterior_samples: Talts et al. advise >= 100 of each.
        method: for learners: ``"guide"`` (default; SBC checks the amortized guide itself),
            ``"importance"`` or ``"exact"``.
        bins: histogram bins of the uniformity test (default ``min(20, num_simulations // 10)``).
    """
    for name, v, low in (("num_simulations", num_simulations, 20), ("num_posterior_samples", num_posterior_samples, 10)):
        if not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}; got {v!r}")
    bins = bins or max(2, min(20, num_simulations // 10))
    if not 2 <= bins <= num_posterior_samples + 1:
        raise ValueError(f"bins must be in [2, {num_posterior_samples + 1}]; got {bins}")
    x = _inputs(x, num_simulations)
    model = program_of(model)
    first = next(model.parameters())
    device = first.device
    x = x.to(device=device, dtype=first.dtype)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        theta = model.sample_prior(x, 1)[0]  # [T, P], flat unconstrained
        y = model.observation_distribution(x, theta[None]).sample()[0]  # [T, S] or [T, S, E]
    y = (y[..., None] if len(model.observation.event_shape) == 0 else y).to(x.dtype)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    draws = _posterior_draws(posterior, model, x, y, mask, num_posterior_samples, method, seed + 1)
    ranks = (draws < theta).sum(0).cpu()  # [T, P] in 0..L
    chi2, p = rank_uniformity(ranks, num_posterior_samples, bins)
    return SBCResult(ranks, num_posterior_samples, model.coordinate_names(), bins, chi2, p)


def expected_rank_band(num_simulations: int, num_posterior_samples: int, bins: int, level: float = 0.99):
    """Per-bin count range a uniform rank histogram stays inside with probability ``level`` (binomial)."""
    p = 1.0 / bins
    mean = num_simulations * p
    z = torch.special.ndtri(torch.tensor(0.5 + level / 2)).item()
    half = z * math.sqrt(num_simulations * p * (1 - p))
    return mean - half, mean + half

