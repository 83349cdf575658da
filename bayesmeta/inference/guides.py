"""Amortized guides ``q(theta_i | D_i)`` built from a model's ``task_sites``.

Every family works in the prior's *whitened* coordinates ``theta = mu + L u``, where ``mu`` and
``L`` are the learned prior's mean and Cholesky factor: the encoder outputs a distribution over
``u`` whose value on the empty set is ``N(0, I)``, so a task with no points gets exactly the
prior, and the guide follows the prior as it is learned.

Families:

* ``"diagonal"``: ``u ~ N(a, diag s^2)``. With a diagonal prior this is a diagonal Normal in
  ``theta``; with a correlated prior it inherits the prior's correlations.
* ``"flow"``: a conditional normalizing flow on top of that Normal (affine coupling layers from
  :mod:`pyro.distributions.transforms`, conditioned on the set embedding), which can bend
  around curved posteriors and split into several modes. Each coupling's shift and log-scale
  are multiplied by "the task has at least one point" (0 or 1), so on the empty set every
  coupling is the identity and ``q`` is exactly the prior, as for ``"diagonal"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ..models.base import TASK_DIM, HierarchicalModel
from ..models.nn import MLP
from .encoder import SetEncoder

__all__ = ["AmortizedGuide", "GUIDE_FAMILIES", "prior_loc_tril"]

GUIDE_FAMILIES = ("diagonal", "flow")


def prior_loc_tril(prior: dist.TorchDistribution) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(loc, scale, tril)`` of a flat Gaussian prior: ``scale`` for diagonal, ``tril`` for full."""
    if isinstance(prior, dist.MultivariateNormal):
        return prior.loc, None, prior.scale_tril
    base = prior.base_dist if isinstance(prior, dist.Independent) else prior
    if isinstance(base, dist.Normal) and prior.event_shape.numel() == base.loc.numel():
        return base.loc.reshape(-1), base.scale.expand_as(base.loc).reshape(-1), None
    raise TypeError(
        f"amortized guides need a Gaussian prior over the flat task parameters; got {type(prior).__name__}"
    )


class AmortizedGuide(nn.Module):
    """Encoder-based guide for every task site of ``model``.

    Args:
        model: a model following the protocol (``task_sites``, ``prior_distribution``).
        family: ``"diagonal"`` or ``"flow"`` (see the module docstring).
        hidden: hidden widths of the set encoder and heads.
        embed_dim: size of the set embedding.
        flow_layers: number of coupling layers for ``family="flow"``.

    Example:
        >>> from bayesmeta.models import LatentCodeRegression
        >>> guide = AmortizedGuide(LatentCodeRegression(1, 1, latent_dim=4))
        >>> q = guide.distribution(torch.zeros(3, 0, 1), torch.zeros(3, 0, 1), torch.zeros(3, 0, dtype=torch.bool))
        >>> q.batch_shape, q.event_shape
        (torch.Size([3]), torch.Size([4]))
    """

    def __init__(self, model: HierarchicalModel, family: str = "diagonal", *,
                 hidden: Sequence[int] = (128, 128), embed_dim: int = 128, flow_layers: int = 4) -> None:
        super().__init__()
        if family not in GUIDE_FAMILIES:
            raise ValueError(f"family must be one of {GUIDE_FAMILIES}; got {family!r}")
        p = model.param_dim
        if family == "flow" and p < 2:
            raise ValueError(f"family='flow' needs at least 2 task parameters; the model has {p}")
        self.model = [model]  # a list: the model's parameters are not the guide's
        self.family, self.param_dim = family, p
        self.config = {"family": family, "hidden": list(hidden), "embed_dim": embed_dim,
                       "flow_layers": flow_layers}
        self.encoder = SetEncoder(model.x_dim, model.y_dim, hidden, embed_dim)
        self.head = MLP(embed_dim, hidden[-1:], 2 * p, zero_last=True)
        self.flows = nn.ModuleList()
        if family == "flow":
            for _ in range(flow_layers):
                self.flows.append(T.conditional_affine_coupling(p, embed_dim, hidden_dims=[64, 64]))

    # ------------------------------------------------------------------ building q
    def encode(self, x, y, mask) -> dict[str, torch.Tensor]:
        """Local variational parameters of every task: ``a, log_s [T, P]`` and context ``[T, R]``."""
        r = self.encoder(x, y, mask)  # [T, R]
        raw = self.head(r) - self.head(self.encoder.empty(r))  # [T, 2P]; zero for empty sets
        a, log_s = raw.split(self.param_dim, -1)
        observed = mask.any(-1, keepdim=True).to(r.dtype)  # [T, 1]: 0 for an empty set (flows: identity)
        return {"a": a, "log_s": log_s, "context": r, "observed": observed}

    def build(self, local: dict[str, torch.Tensor], *, widen: float = 1.0,
              plate_dim: bool = False) -> dist.TorchDistribution:
        """``q`` from local parameters; batch ``[T]`` (``[T, 1]`` with ``plate_dim``)."""
        loc, scale, tril = prior_loc_tril(self.model[0].prior_distribution())
        a, s, ctx = local["a"], local["log_s"].exp() * widen, local["context"]
        gate = local.get("observed")  # [T, 1]; absent: every task has points
        if plate_dim:
            a, s, ctx = a.unsqueeze(TASK_DIM), s.unsqueeze(TASK_DIM), ctx.unsqueeze(TASK_DIM)
            gate = None if gate is None else gate.unsqueeze(TASK_DIM)
        if self.family == "diagonal":
            if tril is None:
                assert scale is not None, "prior_loc_tril returns a scale or a tril"
                return dist.Normal(loc + scale * a, scale * s).to_event(1)
            return dist.MultivariateNormal(loc + (tril @ a[..., None]).squeeze(-1), scale_tril=tril * s[..., None, :])
        base = dist.Normal(a, s).to_event(1)
        transforms = []
        for i, flow in enumerate(self.flows):
            transforms.append(_gated_coupling(flow, ctx, gate))
            if i < len(self.flows) - 1:
                transforms.append(T.Permute(torch.arange(self.param_dim - 1, -1, -1, device=a.device)))
        if tril is None:
            assert scale is not None, "prior_loc_tril returns a scale or a tril"
            transforms.append(T.AffineTransform(loc, scale, event_dim=1))
        else:
            transforms.append(T.LowerCholeskyAffine(loc, tril))
        return dist.TransformedDistribution(base, transforms)

    def distribution(self, x, y, mask, *, widen: float = 1.0) -> dist.TorchDistribution:
        """``q(theta_i | D_i)`` over flat task parameters: batch ``[T]``, event ``[P]``."""
        return self.build(self.encode(x, y, mask), widen=widen)

    # ------------------------------------------------------------------ the Pyro guide
    def forward(self, x, y=None, mask=None, *, num_tasks: int | None = None):
        """Pyro guide matching :meth:`HierarchicalModel.forward` (same plates and sites)."""
        if y is None:
            raise ValueError("the amortized guide needs observed y to condition on")
        t = x.shape[0]
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        model = self.model[0]
        q = self.build(self.encode(x, y, mask), plate_dim=True)  # batch [T, 1]
        with pyro.plate("tasks", num_tasks or t, subsample=torch.arange(t, device=x.device), dim=TASK_DIM):
            sites = model.task_sites
            if len(sites) == 1 and len(next(iter(sites.values()))) == 1:
                return {next(iter(sites)): pyro.sample(next(iter(sites)), q)}
            theta = pyro.sample("_theta", q, infer={"is_auxiliary": True})
            return {
                name: pyro.sample(name, dist.Delta(v, event_dim=len(sites[name])))
                for name, v in model.split(theta).items()
            }


def _gated_coupling(flow: nn.Module, context: torch.Tensor, gate: torch.Tensor | None):
    """``flow`` (a ``ConditionalAffineCoupling``) conditioned on ``context`` with its shift and log-scale
    times ``gate`` (0: the identity)."""
    assert isinstance(flow, T.ConditionalAffineCoupling), "the guide's flows are affine couplings"
    if gate is None:
        return flow.condition(context)

    def hypernet(x1):
        shift, log_scale = flow.nn(x1, context=context)
        return shift * gate, log_scale * gate

    return T.AffineCoupling(flow.split_dim, hypernet, **flow.kwargs)
