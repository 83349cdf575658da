"""Metric-based few-shot classifiers: the Bayesian prototype classifier, prototypical and Siamese networks.

* **Bayesian prototype classifier** (:class:`BayesProto`): an embedding ``z = f(x)``; each class
  mean in embedding space has a learned Gaussian prior ``N(m, diag(tau^2))`` and examples are
  ``N(mu_c, diag(sigma^2))`` around it. The class means' posteriors given the support set are
  conjugate, and the posterior-predictive class probabilities are closed-form
  (:func:`~bayesmeta.tasks.clusters.gaussian_class_logits`): no sampling. Meta-trained end to
  end (embedding, prior, noise) on the exact query log-likelihood. With ``f`` the identity and
  the true ``m, tau, sigma`` it *is* the Bayes oracle of :class:`~bayesmeta.tasks.GaussianClusters`.
* **Prototypical networks** (Snell et al. 2017, :class:`ProtoNet`): softmax of minus the squared
  distance to each class's mean support embedding.
* **Siamese networks** (Koch et al. 2015, :class:`SiameseNet`): a same/different score
  ``sigma(w . |f(a) - f(b)| + b)`` trained on pairs; a query's class probabilities are the
  normalised mean same-class probability against each class's support examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..tasks.clusters import gaussian_class_logits
from .base import EpisodicClassifier

__all__ = ["BayesProto", "Embedding", "ProtoNet", "SiameseNet"]


class Embedding(nn.Module):
    """``x -> z``: a ReLU MLP plus a linear skip connection (so a linear embedding is easy to learn).

    ``hidden=()`` gives a linear embedding.
    """

    def __init__(self, x_dim: int, hidden: Sequence[int] = (128, 128), out_dim: int = 64) -> None:
        super().__init__()
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a sequence of ints >= 1 (layer widths); got {hidden!r}")
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"embed_dim must be an int >= 1; got {out_dim!r}")
        layers: list[nn.Module] = []
        d = x_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers, nn.Linear(d, out_dim)) if hidden else None
        self.skip = nn.Linear(x_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.skip(x)
        return z if self.body is None else z + self.body(x)


def _class_sums(z: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, ways: int):
    """Per class: support count ``[T, W, 1]`` and sum of embeddings ``[T, W, d]``."""
    onehot = nn.functional.one_hot(labels.clamp(0, ways - 1), ways).to(z.dtype) * mask[..., None].to(z.dtype)
    return onehot.sum(1)[..., None], torch.einsum("tsw,tsd->twd", onehot, z)


class _ProtoPrior(nn.Module):
    """The embedding and the learned Gaussian prior of class means (``mean``, log variances) in its space."""

    def __init__(self, embed: Embedding) -> None:
        super().__init__()
        self.embed = embed
        self.prior_mean = nn.Parameter(torch.zeros(embed.out_dim))
        self.log_prior_var = nn.Parameter(torch.zeros(embed.out_dim))
        self.log_noise_var = nn.Parameter(torch.zeros(embed.out_dim))


class BayesProto(EpisodicClassifier):
    """Bayesian prototype classifier: conjugate Gaussian class means in a learned embedding space.

    Args:
        x_dim: input features.
        hidden: the embedding MLP's widths.
        embed_dim: embedding size.

    Example:
        >>> import bayesmeta as bm
        >>> fam = bm.tasks.GaussianClusters(ways=3, dim=4)
        >>> clf = bm.fewshot.BayesProto(x_dim=4, hidden=(16,), embed_dim=4)
        >>> _ = clf.fit(fam, steps=2, progress=False)
        >>> b = fam.sample(2, shots=1, num_query=2)
        >>> clf.adapt(b).predict(b.x_query).probs.shape
        torch.Size([2, 6, 3])
    """

    def __init__(self, x_dim: int, *, hidden: Sequence[int] = (128, 128), embed_dim: int = 64) -> None:
        super().__init__(x_dim)
        self.net: _ProtoPrior = _ProtoPrior(Embedding(x_dim, tuple(hidden), embed_dim))

    def prior(self) -> dict[str, torch.Tensor]:
        """The learned prior of class means (``mean``, ``std`` ``[d]``) and the within-class ``noise_std``."""
        n = self.net
        return {"mean": n.prior_mean.detach(), "std": (0.5 * n.log_prior_var).exp().detach(),
                "noise_std": (0.5 * n.log_noise_var).exp().detach()}

    def class_logits(self, x_support, labels, mask, x_query, ways: int) -> torch.Tensor:
        n = self.net
        zs, zq = n.embed(x_support), n.embed(x_query)  # [T, S, d], [T, N, d]
        return gaussian_class_logits(zs, labels, mask, zq, ways, prior_mean=n.prior_mean,
                                     prior_var=n.log_prior_var.exp(), noise_var=n.log_noise_var.exp())


class ProtoNet(EpisodicClassifier):
    """Prototypical networks: ``p(y = c | x) ∝ exp(-||f(x) - mean_c||^2)``, the mean of class ``c``'s support embeddings.

    A class without support examples gets probability zero.
    """

    def __init__(self, x_dim: int, *, hidden: Sequence[int] = (128, 128), embed_dim: int = 64) -> None:
        super().__init__(x_dim)
        self.net = Embedding(x_dim, tuple(hidden), embed_dim)

    def class_logits(self, x_support, labels, mask, x_query, ways: int) -> torch.Tensor:
        zs, zq = self.net(x_support), self.net(x_query)
        count, total = _class_sums(zs, labels, mask, ways)
        protos = total / count.clamp_min(1)  # [T, W, d]
        dist = ((zq[:, :, None] - protos[:, None]) ** 2).sum(-1)  # [T, N, W]
        return (-dist).masked_fill(count[:, None, :, 0] == 0, -math.inf)


class SiameseNet(EpisodicClassifier):
    """Siamese networks: a learned same/different probability for pairs, classification against the support set.

    ``s(a, b) = sigmoid(w . |f(a) - f(b)| + b0)``; trained with the binary cross-entropy of
    every (query, support) pair of an episode, same-class pairs weighted ``ways - 1`` so both
    kinds count equally. ``p(y = c | x)`` is proportional to the mean ``s(x, x')`` over class
    ``c``'s support examples.
    """

    def __init__(self, x_dim: int, *, hidden: Sequence[int] = (128, 128), embed_dim: int = 64) -> None:
        super().__init__(x_dim)
        self.net: nn.ModuleDict = nn.ModuleDict({"embed": Embedding(x_dim, tuple(hidden), embed_dim),
                                  "score": nn.Linear(embed_dim, 1)})

    def pair_logits(self, x_a, x_b) -> torch.Tensor:
        """Same-class logits of every pair ``[T, N_a, N_b]`` from ``x_a [T, N_a, D]``, ``x_b [T, N_b, D]``."""
        za, zb = self.net["embed"](x_a), self.net["embed"](x_b)
        return self.net["score"]((za[:, :, None] - zb[:, None]).abs())[..., 0]

    def class_logits(self, x_support, labels, mask, x_query, ways: int) -> torch.Tensor:
        logp = nn.functional.logsigmoid(self.pair_logits(x_query, x_support))  # [T, N, S]
        onehot = nn.functional.one_hot(labels.clamp(0, ways - 1), ways).bool() & mask[..., None]  # [T, S, W]
        scores = logp[..., None].masked_fill(~onehot[:, None], -math.inf)  # [T, N, S, W]
        count = onehot.sum(1)[:, None]  # [T, 1, W]
        return torch.logsumexp(scores, 2) - count.clamp_min(1).log()  # log mean_s s(x, x_s) per class

    def episode_loss(self, x, labels, support, query, ways: int) -> torch.Tensor:
        logits = self.pair_logits(x, x)  # [T, N, N]
        same = (labels[:, :, None] == labels[:, None, :]).to(logits.dtype)
        pairs = (query[:, :, None] & support[:, None, :]).to(logits.dtype)
        weight = pairs * (1 + (ways - 2) * same)  # same-class pairs count ways - 1 times
        bce = nn.functional.binary_cross_entropy_with_logits(logits, same, reduction="none")
        return (bce * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1)
