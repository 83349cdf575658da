"""MAML, first-order MAML, Meta-SGD and Reptile, vectorised over the tasks of a batch.

* **MAML** (Finn et al. 2017): ``phi_i = theta - alpha grad L_support(theta)`` (``inner_steps``
  times), outer loss ``mean_i L_query(phi_i)`` differentiated through the inner steps.
* **FOMAML**: the same with the inner gradients treated as constants (``d phi_i / d theta = I``).
* **Meta-SGD** (Li et al. 2017): MAML with a learned inner learning rate per parameter entry.
* **Reptile** (Nichol et al. 2018): ``inner_steps`` SGD steps on all of a task's points, then the
  outer "gradient" ``theta - mean_i phi_i`` goes to the outer optimiser (SGD with lr ``eps`` gives
  ``theta + eps (mean_i phi_i - theta)``).

For a proper predictive density the network has a Gaussian head trained with the Gaussian NLL
(``noise="global"``, the default, or ``"heteroscedastic"``); ``noise="mse"`` is the classic
squared-error net.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from .base import GradientMetaLearner

__all__ = ["FOMAML", "MAML", "MetaSGD", "Reptile"]


class MAML(GradientMetaLearner):
    """Model-agnostic meta-learning with second-order meta-gradients.

    Args:
        x_dim, y_dim: input and output sizes.
        hidden: hidden widths of the ReLU network (the MAML paper's sinusoid net: ``(40, 40)``).
        inner_steps: gradient steps on the support set during meta-training.
        inner_lr: the inner step size ``alpha``.
        noise: ``"global"`` (default: one learned scale per output), ``"heteroscedastic"`` or ``"mse"``
            (see :class:`GaussianMLP`). The heteroscedastic head makes the inner loop stiff: steps
            beyond those it was meta-trained with can diverge.
        adapt_steps: steps at test time (default: ``inner_steps``).

    Raises:
        ValueError: an argument of the wrong type or range (e.g. ``x_dim=0``, ``hidden=(40, 0)``,
            ``inner_lr=nan``); the message names the argument and its value.

    Example:
        >>> import bayesmeta as bm
        >>> maml = bm.baselines.MAML(x_dim=1, y_dim=1)
        >>> _ = maml.fit(bm.tasks.Sinusoid(), steps=2, progress=False)
    """

    first_order = False

    def meta_loss(self, x, y, support, query) -> torch.Tensor:
        """Mean query loss over tasks after adapting to each support set: ``x [T, N, D]``, masks ``[T, N]``."""
        rates = self.inner_rates()
        params = self.params()

        def one(xi, yi, si, qi):
            adapted = self.adapt_one(params, rates, xi, yi, si, self.inner_steps, self.first_order)
            return self.task_loss(adapted, xi, yi, qi), adapted

        losses, adapted = vmap(one)(x, y, support, query)
        self._update_residual_scale(x, y, query, {k: v.detach() for k, v in adapted.items()})
        return losses.mean()

    def meta_loss_loop(self, x, y, support, query) -> torch.Tensor:
        """The same loss with a Python loop over tasks and ``torch.autograd.grad`` (reference and benchmark)."""
        rates, names = self.inner_rates(), list(self.params())
        losses = []
        for i in range(x.shape[0]):
            params = self.params()
            for _ in range(self.inner_steps):
                loss = self.task_loss(params, x[i], y[i], support[i])
                g = torch.autograd.grad(loss, [params[k] for k in names], create_graph=not self.first_order)
                params = {k: params[k] - rates[k] * gk for k, gk in zip(names, g, strict=True)}
            losses.append(self.task_loss(params, x[i], y[i], query[i]))
        return torch.stack(losses).mean()


class FOMAML(MAML):
    """First-order MAML: inner gradients are constants in the meta-gradient."""

    first_order = True


class MetaSGD(MAML):
    """Meta-SGD: MAML whose inner step size is a learned tensor per parameter (initialised to ``inner_lr``)."""

    def __init__(self, x_dim: int, y_dim: int = 1, **kwargs) -> None:
        super().__init__(x_dim, y_dim, **kwargs)
        self.rates = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.full_like(p, self.inner_lr))
                                       for k, p in self.net.named_parameters()})

    def inner_rates(self):
        return {k: self.rates[k.replace(".", "__")] for k in self.params()}

    def meta_parameters(self):
        return list(self.net.parameters()) + list(self.rates.parameters())

    def _modules(self):
        return {"net": self.net, "rates": self.rates}


class Reptile(GradientMetaLearner):
    """Reptile: move the initialisation towards each task's adapted weights.

    Trains with ``inner_steps`` (default 5) SGD steps on all of a task's points; adapts at test
    time with ``adapt_steps`` (default: ``inner_steps``) steps on the support set. Use the
    outer optimiser's learning rate as Reptile's ``epsilon``.
    """

    def __init__(self, x_dim: int, y_dim: int = 1, *, inner_steps: int = 5, inner_lr: float = 0.02, **kwargs) -> None:
        super().__init__(x_dim, y_dim, inner_steps=inner_steps, inner_lr=inner_lr, **kwargs)

    def reptile_direction(self, x, y, mask) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``theta - mean_i phi_i`` per parameter (the outer "gradient"), and the mean post-adaptation loss."""
        adapted = self.adapt_batch(x, y, mask, steps=self.inner_steps, first_order=True)
        adapted = {k: v.detach() for k, v in adapted.items()}
        with torch.no_grad():
            losses = vmap(lambda p, xi, yi, mi: self.task_loss(p, xi, yi, mi))(adapted, x, y, mask)
        return {k: p.detach() - adapted[k].mean(0) for k, p in self.params().items()}, losses.mean()

    def compute_gradients(self, x, y, support, query) -> torch.Tensor:
        """Reptile's outer "gradient" ``theta - mean_i phi_i`` on the parameters; returns the mean loss."""
        direction, loss = self.reptile_direction(x, y, support | query)
        for k, p in self.params().items():
            p.grad = direction[k].clone()
        if self.net.noise == "mse":
            adapted = self.adapt_batch(x, y, support, steps=self.inner_steps, first_order=True)
            self._update_residual_scale(x, y, query, {k: v.detach() for k, v in adapted.items()})
        return loss
