"""Semi-amortized refinement: a few gradient steps on one task's local variational parameters."""

from __future__ import annotations

import math

import torch

from .freeze import frozen

__all__ = ["refine_local"]


def refine_local(guide, model, x, y, mask, local: dict[str, torch.Tensor], *, steps: int,
                 lr: float = 1e-2, num_particles: int = 8, objective: str = "iwae") -> dict[str, torch.Tensor]:
    """Start from the encoder's output and maximise each task's bound over ``a, log_s``.

    The model and the encoder stay fixed; tasks are independent, so one optimiser over the
    ``[T, P]`` local parameters refines every task at once. Returns new (detached) locals.
    """
    if steps < 0:
        raise ValueError(f"refine_steps must be >= 0; got {steps}")
    local = {k: v.detach().clone() for k, v in local.items()}
    if steps == 0:
        return local
    free = [local["a"].requires_grad_(), local["log_s"].requires_grad_()]
    optim = torch.optim.Adam(free, lr=lr)
    with frozen(model, guide), torch.enable_grad():
        for _ in range(steps):
            q = guide.build(local)
            theta = q.rsample((num_particles,))  # [K, T, P]
            log_w = model.log_joint(x, y, mask, theta) - q.log_prob(theta)  # [K, T]
            if objective.startswith(("iwae", "rws")):
                bound = torch.logsumexp(log_w, 0) - math.log(num_particles)
            else:
                bound = log_w.mean(0)
            optim.zero_grad()
            (-bound.sum()).backward()
            optim.step()
    return {k: v.detach() for k, v in local.items()}
