"""NUTS on a few tasks under the learned prior: the reference the amortized posterior is checked against."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import MCMC, NUTS

from .._checks import check_ints
from .freeze import frozen

__all__ = ["run_nuts"]


def run_nuts(model, x, y, mask=None, *, num_samples: int = 1000, num_warmup: int = 1000, num_chains: int = 4,
             seed: int = 0, target_accept_prob: float = 0.8, max_tree_depth: int = 10,
             progress: bool = False) -> list[MCMC]:
    """Run Pyro's NUTS on ``model(x, y, mask)`` with the model's learned parameters held fixed.

    Every latent site of the model is sampled: for a bayesmeta ``HierarchicalModel`` these are
    the task sites (the exact posterior under the learned prior); a model with global latent
    sites (e.g. eight schools) gets them too. Each chain is its own ``MCMC`` run from its own
    seed, one after the other: Pyro would otherwise start worker processes for several chains
    on a machine with spare cores, which is slow to start and fragile inside other programs.

    Args:
        x, y, mask: the observed points ``[T, N, D]``, ``[T, N, E]``, ``[T, N]``.
        num_samples, num_warmup: draws kept and adaptation steps, per chain.
        num_chains: independent chains (>= 2 for R-hat).

    Returns:
        One finished :class:`pyro.infer.MCMC` per chain (convert each with ``az.from_pyro`` and
        join them with ``az.concat(..., dim="chain")``).
    """
    check_ints(num_samples=(num_samples, 1), num_warmup=(num_warmup, 0), num_chains=(num_chains, 1))
    if not 0 < target_accept_prob < 1:
        raise ValueError(f"target_accept_prob must be in (0, 1); got {target_accept_prob}")
    runs = []
    with frozen(model), torch.random.fork_rng():
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            kernel = NUTS(model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                          jit_compile=False)
            mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                        disable_progbar=not progress)
            mcmc.run(x, y, mask)
            runs.append(mcmc)
    return runs
