""":class:`ModelProgram`: a model's Pyro program, traced, and everything the library evaluates with it."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import biject_to

from ...models.base import HierarchicalModel
from .data import check_observed
from .probe import PROBE_N, PROBE_T, check_draws, check_globals_used, probe
from .sites import (
    DRAWS_DIM,
    ModelError,
    constrain,
    coordinate_names,
    flat_gaussian,
    flatten,
    is_real,
    masked,
    unwrap,
)

__all__ = ["ModelProgram", "program_of", "TaskScale"]


class TaskScale(Messenger):
    """Scale the log density of every sample site inside the plate named ``plate`` by ``scale`` (the others:
    a model's global sites, are left as they are)."""

    def __init__(self, scale: float, plate: str) -> None:
        super().__init__()
        self.scale, self.plate = scale, plate

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and any(f.name == self.plate for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.scale


class ModelProgram(nn.Module):
    """The library's view of a model's Pyro program (see :mod:`bayesmeta.inference.program`).

    Task-level draws are flat unconstrained ``u [..., T, P]``; the draws of a model's global sites
    (hyperpriors) are flat unconstrained ``g [..., G]`` with the same leading dims as ``u`` and a
    task dim of 1 (shared by the tasks: training) or ``T`` (one per task: predicting new tasks).
    Every density below is conditional on ``g`` where the model has global sites.

    Args:
        model: a ``PyroModule`` with ``forward(x, y=None, mask=None)``.
        x_dim: input size ``D`` (default: ``model.x_dim``).
        y_dim: output size ``E`` (default: ``model.y_dim``, else from the observation site's event).

    Raises:
        ModelError: the program breaks a rule (no tasks plate, a site in a plate of the wrong size,
            no observation site, a discrete latent, ...); the message names the site.

    Example:
        >>> from bayesmeta.models import LatentCodeRegression
        >>> prog = ModelProgram(LatentCodeRegression(x_dim=1, latent_dim=3))
        >>> [s.name for s in prog.sites], prog.param_dim, prog.observation.family, prog.global_dim
        (['z'], 3, 'Normal', 0)
    """

    def __init__(self, model: nn.Module, *, x_dim: int | None = None, y_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not callable(getattr(model, "forward", None)):
            raise TypeError(f"model must be a PyroModule with forward(x, y=None, mask=None); got {type(model).__name__}")
        self.model = model
        x_dim = x_dim if x_dim is not None else getattr(model, "x_dim", None)
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ModelError(f"{type(model).__name__}: the input size is unknown; set model.x_dim or pass x_dim= "
                             f"(a positive int); got {x_dim!r}")
        self.x_dim = x_dim
        self.sites, self.global_sites, self.observation, self._fill, self.task_plate, trace = probe(self)
        event = self.observation.event_shape
        y_dim = y_dim if y_dim is not None else getattr(model, "y_dim", None)
        natural = 1 if len(event) == 0 else int(event[0])
        if y_dim is not None and y_dim != natural:
            raise ModelError(f"{type(model).__name__}: y_dim={y_dim} but the observation site "
                             f"'{self.observation.name}' has event shape {tuple(event)} (y_dim {natural})")
        self.y_dim = natural
        self.param_dim = sum(s.size for s in self.sites)
        self.global_dim = sum(s.size for s in self.global_sites)
        # A shipped model built from site_priors/likelihood (forward not overridden) has a direct
        # log joint that equals the traced one (tests check it) and is ~30 % faster.
        direct = (isinstance(model, HierarchicalModel) and type(model).forward is HierarchicalModel.forward
                  and not self.global_sites)
        self._direct: Any = model if direct else None
        check_draws(self, self.observation.name)
        self._check_observed(trace)
        check_globals_used(self, trace)

    @property
    def has_globals(self) -> bool:
        """Whether the model has global latent sites (hyperpriors with a posterior of their own)."""
        return bool(self.global_sites)

    # ------------------------------------------------------------------ tracing
    def _run(self, x, y, mask, *, values: dict | None = None, draws: int | None = None):
        """Trace ``forward`` on ``x [T, N, D]`` (``y`` in the model's format) conditioned on ``values``."""
        fn = poutine.condition(self.model, data=values) if values else self.model
        # block: these traces are the library's own, never part of a trace around them (an ELBO's)
        with poutine.block(), poutine.trace() as tracer:
            plate = pyro.plate("_draws", draws, dim=DRAWS_DIM) if draws else contextlib.nullcontext()
            with plate:
                fn(x, y, mask)
        return tracer.trace

    def probe_inputs(self) -> torch.Tensor:
        """The small input ``x`` (all ones, ``[2, 3, D]``, the model's dtype and device) the program is traced on."""
        return torch.ones(PROBE_T, PROBE_N, self.x_dim, dtype=_dtype(self.model), device=_device(self.model))

    def _check_observed(self, trace) -> None:
        """The observation site must take ``y``: traced again with the probe's simulated ``y``, it is observed."""
        x = self.probe_inputs()
        mask = torch.ones(PROBE_T, PROBE_N, dtype=torch.bool, device=x.device)
        y = trace.nodes[self.observation.name]["value"].detach()
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            again = self._run(x, y, mask)
        if not again.nodes[self.observation.name]["is_observed"]:
            raise ModelError(f"{type(self.model).__name__}: the observation site '{self.observation.name}' is not "
                             "observed when forward is given y: sample it with obs=y, else the data are ignored")

    # ------------------------------------------------------------------ data formats
    def model_y(self, y: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The library's ``y [T, N, E]`` in the observation site's format; padded points filled with a
        value in the support (they are masked out; the fill keeps validation and gradients finite)."""
        if y is None:
            return None
        if mask is not None:
            fill = self._fill.to(dtype=y.dtype, device=y.device)
            y = torch.where(mask[..., None], y, fill.reshape(-1) if fill.dim() else fill)
        return y[..., 0] if len(self.observation.event_shape) == 0 else y

    def forward(self, x, y=None, mask=None, *, num_tasks: int | None = None):
        """The model as training sees it: ``y [T, N, E]`` (or ``None``); with ``num_tasks``, the whole
        program is scaled by ``num_tasks / T`` (a mini-batch of a pool of ``num_tasks`` tasks).

        A model with global sites has only the sites in its tasks plate scaled: the globals' prior counts
        once per pool (Pyro's ``Trace_ELBO`` with :class:`~bayesmeta.inference.AmortizedGuide` as the guide
        is then an unbiased estimate of the pool's ELBO)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        scale = 1.0 if num_tasks is None else num_tasks / x.shape[0]
        if self.has_globals:  # the globals once per pool, the tasks' sites num_tasks / T times
            with TaskScale(scale, self.task_plate):
                return self.model(x, self.model_y(y, mask), mask)
        with poutine.scale(scale=scale):
            return self.model(x, self.model_y(y, mask), mask)

    # ------------------------------------------------------------------ flat coordinates
    def split(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat unconstrained ``u [..., P]`` -> constrained values ``{site: [..., *shape]}``."""
        return constrain(self.sites, u)[0]

    def constrain(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({site: [..., *shape]}, {site: log|det J| [...]})`` of the map from ``u [..., P]`` to the supports."""
        return constrain(self.sites, u)

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained ``{site: [..., *shape]}`` -> flat unconstrained ``[..., P]``."""
        return flatten(self.sites, values)

    def coordinate_names(self) -> list[str]:
        """Names of the ``P`` flat coordinates (see :func:`~bayesmeta.inference.program.sites.coordinate_names`)."""
        return coordinate_names(self.sites)

    def split_globals(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat unconstrained global draws ``g [..., G]`` -> constrained ``{global site: [..., *shape]}``."""
        return constrain(self.global_sites, g)[0]

    def flatten_globals(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained ``{global site: [..., *shape]}`` -> flat unconstrained ``[..., G]``."""
        return flatten(self.global_sites, values)

    def global_coordinate_names(self) -> list[str]:
        """Names of the ``G`` flat global coordinates (``log_tau`` for a positive ``tau``)."""
        return coordinate_names(self.global_sites)

    # ------------------------------------------------------------------ densities
    def _values(self, u: torch.Tensor, g: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """``u [n, T, P]`` (and ``g [n, T or 1, G]``) -> site values ``[n, T, 1, *shape]`` (the points dim
        inserted) and the task sites' ``log|J| [n, T]``."""
        values, ldjs = constrain(self.sites, u)
        ldj = sum(ldjs.values(), u.new_zeros(u.shape[:-1]))
        out = {s.name: values[s.name].unsqueeze(-1 - len(s.shape)) for s in self.sites}
        out.update(self._global_values(g, u.shape[0]))
        return out, ldj, u.shape[0]

    def _global_values(self, g: torch.Tensor | None, n: int | None) -> dict[str, torch.Tensor]:
        """``g [n, T or 1, G]`` -> ``{global site: [n, T or 1, 1, *shape]}`` (``{}`` without globals)."""
        if not self.has_globals:
            return {}
        if g is None:
            raise ModelError(f"{type(self.model).__name__} has global sites {[s.name for s in self.global_sites]}: "
                             "its densities need a draw of them (g=)")
        if g.shape[-1] != self.global_dim or (n is not None and g.dim() != 3):
            raise ValueError(f"g must have shape [n, T or 1, {self.global_dim}]; got {tuple(g.shape)}")
        values = constrain(self.global_sites, g)[0]
        return {s.name: values[s.name].unsqueeze(-1 - len(s.shape)) for s in self.global_sites}

    def _traced_terms(self, x, y, mask, u: torch.Tensor, g: torch.Tensor | None = None, *, observe: bool):
        """``(log prior [n, T], log likelihood [n, T] or None)`` of draws ``u [n, T, P]`` given ``g``.

        Padded points get the probe's input (ones; a model's density is valid there, whereas zeros may not be:
        a noise sd read from x) and count for nothing; a set of no points at all gets one padded point."""
        if x.shape[1] == 0:
            x = x.new_ones(x.shape[0], 1, x.shape[2])
            y = None if y is None else y.new_zeros(y.shape[0], 1, y.shape[2])
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        x = torch.where(mask[..., None], x, torch.ones_like(x))
        values, ldj, n = self._values(u, g)
        model_y = self.model_y(y, mask) if observe else None
        trace = self._run(x, model_y, mask, values=values, draws=n)
        prior = ldj
        for s in self.sites:
            site = trace.nodes[s.name]
            lp = site["fn"].log_prob(site["value"])  # [n, T, 1]
            prior = prior + masked(lp, site).reshape(n, -1)
        if not observe:
            return prior, None
        site = trace.nodes[self.observation.name]
        lp = masked(site["fn"].log_prob(site["value"]), site)  # [n, T, N]
        lp = lp * mask.to(lp.dtype)  # padding never counts, whatever the model did with the mask
        return prior, lp.sum(-1)

    @staticmethod
    def _flat_draws(u: torch.Tensor, g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Leading dims of ``u [..., T, P]`` (and ``g [..., T or 1, G]``) flattened to one draws dim."""
        uf = u.reshape(-1, *u.shape[-2:])
        if g is None:
            return uf, None
        g = g.expand(*u.shape[:-2], g.shape[-2], g.shape[-1]) if g.dim() < u.dim() else g
        return uf, g.reshape(-1, *g.shape[-2:])

    def log_joint(self, x, y, mask, u: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(theta | g) + log p(y | x, theta, g)`` per task, ``[..., T]``, for flat unconstrained draws
        ``u [..., T, P]`` (the prior's density in ``u``: log-Jacobians included) and, for a model with
        global sites, their draws ``g [..., T or 1, G]``."""
        if self._direct:
            return self._direct.log_joint(x, y, mask, u)
        uf, gf = self._flat_draws(u, g)
        prior, lik = self._traced_terms(x, y, mask, uf, gf, observe=True)
        return (prior + lik).reshape(*u.shape[:-2], u.shape[-2])

    def log_likelihood(self, x, y, mask, u: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_j mask_ij log p(y_ij | x_ij, theta_i, g)`` per task ``[..., T]`` for draws ``u [..., T, P]``."""
        uf, gf = self._flat_draws(u, g)
        _, lik = self._traced_terms(x, y, mask, uf, gf, observe=True)
        return lik.reshape(*u.shape[:-2], u.shape[-2])

    def log_prior(self, x, u: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Log prior density ``log p(theta | g)`` of flat unconstrained draws ``u [..., T, P]`` per task ``[..., T]``."""
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        uf, gf = self._flat_draws(u, g)
        prior, _ = self._traced_terms(x, None, mask, uf, gf, observe=False)
        return prior.reshape(*u.shape[:-2], u.shape[-2])

    def sample_prior(self, x: torch.Tensor, num_samples: int, *, g: torch.Tensor | None = None) -> torch.Tensor:
        """``num_samples`` prior draws per task of ``x [T, N, D]``, flat unconstrained ``[n, T, P]``
        (given global draws ``g [n, T or 1, G]`` for a model with global sites)."""
        if x.shape[1] == 0:  # a task with no points: its prior all the same
            x = x.new_ones(x.shape[0], 1, x.shape[2])
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        trace = self._run(x, None, mask, values=self._global_values(g, num_samples) or None, draws=num_samples)
        values = {s.name: trace.nodes[s.name]["value"].squeeze(-1 - len(s.shape)) for s in self.sites}
        u = _finite(self.flatten(values))  # [n, T, P]
        return u.expand(num_samples, x.shape[0], self.param_dim)

    def sample_globals(self, num_samples: int) -> torch.Tensor:
        """``num_samples`` draws of the global sites from their prior, flat unconstrained ``[n, G]``."""
        x = self.probe_inputs()[:1, :1]
        mask = torch.ones(1, 1, dtype=torch.bool, device=x.device)
        trace = self._run(x, None, mask, draws=num_samples)
        values = {s.name: trace.nodes[s.name]["value"].reshape(num_samples, *s.shape) for s in self.global_sites}
        return _finite(self.flatten_globals(values))

    def log_global_prior(self, g: torch.Tensor) -> torch.Tensor:
        """``log p(g)`` of flat unconstrained global draws ``g [..., G]`` (log-Jacobians included), ``[...]``."""
        lead = g.shape[:-1]
        gf = g.reshape(-1, 1, g.shape[-1])  # [n, 1, G]
        n = gf.shape[0]
        x = self.probe_inputs()[:1, :1].to(g.device)
        values = self._global_values(gf, n)
        trace = self._run(x, None, torch.ones(1, 1, dtype=torch.bool, device=g.device), values=values, draws=n)
        _, ldjs = constrain(self.global_sites, gf[:, 0])
        total = sum(ldjs.values(), g.new_zeros(n))
        for s in self.global_sites:
            site = trace.nodes[s.name]
            total = total + masked(site["fn"].log_prob(site["value"]), site).reshape(n)
        return total.reshape(lead)

    def sample_joint(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                     g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One simulated task per task of ``x [T, N, D]``: parameters from the prior and outcomes from the
        likelihood, ``(u [T, P], y [T, N, E])`` (flat unconstrained parameters; ``y`` in the library's
        format, every point simulated whatever ``mask`` says). A model with global sites simulates
        given their draws ``g [1, T or 1, G]``. No gradients.

        Raises:
            ModelError: the observation site's distribution cannot be sampled (names it).
        """
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        draws = 1 if self.has_globals else None  # a global draw g [1, T or 1, G] lives in a draws dim
        try:
            with torch.no_grad():
                trace = self._run(x, None, mask, values=self._global_values(g, 1) or None, draws=draws)
        except NotImplementedError as err:
            raise ModelError(f"{type(self.model).__name__}: the observation site '{self.observation.name}' "
                             f"({self.observation.family}) cannot be sampled ({err or 'no sample()'}); simulated "
                             "tasks (a sleep phase, simulation-based calibration) need a likelihood with sample()") from err
        values = {s.name: trace.nodes[s.name]["value"].squeeze(-1 - len(s.shape)) for s in self.sites}
        values = {k: v[0] for k, v in values.items()} if draws else values
        u = _finite(self.flatten(values))  # [T, P]
        y = trace.nodes[self.observation.name]["value"].detach()
        y = y[0] if draws else y
        y = y.unsqueeze(-1) if len(self.observation.event_shape) == 0 else y  # [T, N, E]
        return u, y.to(x.dtype)

    def observation_distribution(self, x: torch.Tensor, u: torch.Tensor, g: torch.Tensor | None = None) -> Any:
        """The observation site's distribution at ``x [T, N, D]`` for draws ``u [n, T, P]`` (and ``g [n, T or 1,
        G]``): batch ``[n, T, N]`` and the site's event shape (masks removed)."""
        if self._direct:  # the model's own likelihood (the same distribution, without a trace)
            return self._direct.likelihood(x, self.split(u)).to_event(1)
        values, _, n = self._values(u, g)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        # observed at a broadcast fill value: nothing is sampled and nothing of [n, T, N] size is stored
        fill = self._fill.to(device=x.device)
        y = fill.expand(*x.shape[:2], *self.observation.event_shape)
        trace = self._run(x, y, mask, values=values, draws=n)
        fn = trace.nodes[self.observation.name]["fn"]
        while isinstance(fn, dist.MaskedDistribution):
            fn = fn.base_dist
        return fn

    # ------------------------------------------------------------------ priors
    def gaussian_prior(self, like: torch.Tensor | None = None) -> dist.TorchDistribution | None:
        """The prior over flat ``u`` as one Gaussian when every site's prior is Normal or
        MultivariateNormal on the real line (no transform) and fixed (no global sites), else ``None``."""
        if self.has_globals or not self._gaussian_sites():
            return None
        base = getattr(self.model, "prior_distribution", None)
        if callable(base):
            return base()
        x = torch.zeros(1, 1, self.x_dim, dtype=_dtype(self.model), device=_device(self.model))
        if like is not None:
            x = x.to(like)
        trace = self._run(x, None, torch.ones(1, 1, dtype=torch.bool, device=x.device))
        return flat_gaussian([trace.nodes[s.name]["fn"] for s in self.sites])

    def _gaussian_sites(self, *, diagonal: bool = False) -> bool:
        families = ("Normal",) if diagonal else ("Normal", "MultivariateNormal")
        return all(s.prior_family in families and is_real(s.support) for s in self.sites)

    def _conditionally_gaussian(self) -> bool:
        """Every task prior is a Normal in the site's unconstrained coordinate: a Normal on the real line, or
        a LogNormal on the positive reals (its unconstrained coordinate is the log)."""
        return all((s.prior_family == "Normal" and is_real(s.support))
                   or (s.prior_family == "LogNormal" and _log_coordinate(s.support)) for s in self.sites)

    def conditional_gaussian(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(loc, scale)`` ``[n, T or 1, P]`` of the task prior ``p(theta | g)`` in the unconstrained coordinates,
        given global draws ``g [n, T or 1, G]``, when it is a diagonal Normal there (every task site a Normal on
        the real line or a LogNormal on the positive reals, the same for every task), else ``None``."""
        if not self._conditionally_gaussian():
            return None
        n, t = g.shape[0], g.shape[1]
        x = self.probe_inputs()[:1, :1].to(g)  # the probe's input: a task prior does not read the data
        values = self._global_values(g.reshape(n * t, 1, -1), n * t)
        # no draws plate: the values carry their leading dim, and this may run inside a Pyro guide under a
        # particles plate that holds dim -3 already (the trace is the library's own: blocked)
        trace = self._run(x, None, torch.ones(1, 1, dtype=torch.bool, device=g.device), values=values)
        locs, scales = [], []
        for s in self.sites:
            base, _ = unwrap(trace.nodes[s.name]["fn"])
            shape = (n * t, 1, 1, *s.shape)
            locs.append(base.loc.expand(shape).reshape(n, t, -1))
            scales.append(base.scale.expand(shape).reshape(n, t, -1))
        return torch.cat(locs, -1), torch.cat(scales, -1)

    def check_y(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, what: str = "y",
                where=None, y_name: str = "value") -> None:
        """Raise when an observed ``y [T, N, E]`` is outside the observation's support at its own point
        (labels outside a Categorical's classes, negative or non-integer counts, successes above that
        row's trials), when the observation's parameters at ``x [T, N, D]`` are invalid (fractional or
        negative trials), or when a count is beyond what the model's dtype holds exactly; the message
        names the value and ``where(task, point)`` (default ``"task 3, point 0"``), never a whole tensor.
        See :func:`~bayesmeta.inference.program.data.check_observed`."""
        check_observed(self, x, y, mask, what=what, where=where, y_name=y_name)

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype (of its first parameter; the default dtype without one)."""
        return _dtype(self.model)


def program_of(model, *, x_dim: int | None = None, y_dim: int | None = None) -> ModelProgram:
    """The :class:`ModelProgram` of ``model`` (a ``ModelProgram`` is returned as it is)."""
    if isinstance(model, ModelProgram):
        return model
    return ModelProgram(model, x_dim=x_dim, y_dim=y_dim)


def _log_coordinate(support) -> bool:
    """The unconstrained coordinate of ``support`` is the log (``biject_to`` is ``exp``, perhaps per event dim)."""
    transform = biject_to(support)
    while isinstance(transform, torch.distributions.transforms.IndependentTransform):
        transform = transform.base_transform
    z = torch.tensor([-2.0, 0.0, 1.5])  # positive reals: exp, perhaps composed with the identity affine map
    try:
        return bool(torch.allclose(transform(z), z.exp()))
    except (RuntimeError, ValueError):
        return False


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _finite(u: torch.Tensor) -> torch.Tensor:
    """A float draw on the edge of its support (a Gamma's 0, a Beta's 1) maps to -inf / inf: keep it finite.
    Finite values stay as they are: a real-valued site in the data's units (an intercept of 300) is no edge."""
    bound = math.log(torch.finfo(u.dtype).max) - 1.0
    return torch.nan_to_num(u, nan=0.0, posinf=bound, neginf=-bound)
