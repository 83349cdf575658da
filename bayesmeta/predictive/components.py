"""Weighted mixture components: the heaviest of them, systematic resampling, padding to a common count.

Posterior draws, importance draws and grid points are the components of every predictive
mixture; these helpers pick, resample and pad them, whatever family the components are.
Layer 0: imports nothing of ours.
"""

from __future__ import annotations

import math

import torch

__all__ = ["heaviest", "pad_components", "pad_rows", "systematic_resample"]


def heaviest(log_weights: torch.Tensor, mass: float) -> torch.Tensor:
    """Indices ``[m, T]`` of each task's heaviest components holding ``mass`` of its weight.

    ``log_weights`` is ``[n, T]`` (unnormalised); ``m`` is the most any task needs, so the
    result is rectangular.
    """
    srt, order = torch.sort(log_weights, dim=0, descending=True)
    cum = torch.softmax(srt, 0).cumsum(0)
    keep = min(int((cum < mass).sum(0).max()) + 1, log_weights.shape[0])
    return order[:keep]


def systematic_resample(log_w: torch.Tensor, n: int) -> torch.Tensor:
    """Indices ``[n, T]`` of ``n`` equally weighted draws per task (systematic resampling).

    ``log_w`` is ``[m, T]`` (unnormalised). Unbiased, with lower variance than multinomial.
    """
    cw = torch.softmax(log_w, 0).T.cumsum(-1).contiguous()  # [T, m]
    u = (torch.arange(n, device=log_w.device, dtype=cw.dtype) + torch.rand(
        log_w.shape[1], 1, device=log_w.device, dtype=cw.dtype)) / n  # [T, n]
    return torch.searchsorted(cw, u * cw[:, -1:]).clamp_max(log_w.shape[0] - 1).T  # [n, T]


def pad_components(params: torch.Tensor, log_w: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``params [k, T, ...]`` and ``log_w [k, T]`` to ``m`` components with zero-weight
    copies of the first (log weight ``-inf``), so groups of tasks with different counts stack."""
    extra = m - params.shape[0]
    if extra <= 0:
        return params, log_w
    return pad_rows(params, m), torch.cat([log_w, log_w.new_full((extra, log_w.shape[1]), -math.inf)], 0)


def pad_rows(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t [k, ...]`` with copies of its first row appended up to ``m`` rows (unchanged if ``k >= m``).

    With :func:`pad_components` for the log weights, pads a mixture's components (``loc``,
    ``scale``, parameters) so that mixtures with different component counts stack.
    """
    extra = m - t.shape[0]
    return torch.cat([t, t[:1].expand(extra, *t.shape[1:])], 0) if extra > 0 else t
