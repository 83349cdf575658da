"""A hierarchical model's Pyro program, traced: everything the library needs, derived from ``forward``.

A model is any :class:`~pyro.nn.PyroModule` whose ``forward(x, y=None, mask=None)`` is plain Pyro:

* ``x [T, N, D]``: the points of ``T`` tasks (padded), ``mask [T, N]`` which of them are real;
* task-level latent sites inside ``pyro.plate("tasks", T, dim=-2)`` (any continuous support, any
  prior; their value is ``[..., T, 1, *event]``);
* one observation site inside a points plate ``pyro.plate("points", N, dim=-1)`` nested in the
  tasks plate, masked with ``.mask(mask)``, observed at ``y`` (``[T, N]`` for a scalar
  distribution, ``[T, N, E]`` for one with event shape ``[E]``);
* learned prior parameters as module parameters (empirical Bayes).

Shape rule: the library evaluates the program for many parameter draws at once, under an outer
``pyro.plate`` at dim -3, so a site's value may be ``[n, T, 1, *event]``: write arithmetic that
broadcasts over leading dims (``w * x[..., 0]`` rather than ``w.view(T, 1)``)::

    draws (dim -3)   tasks (dim -2)   points (dim -1)   event
    [ n,             T,               1,                *event ]   task site
    [ n,             T,               N ]                          observation

:class:`ModelProgram` traces the program once on a small probe input to find the task sites
(names, shapes, supports), the observation site and its family, and checks the rules above with
errors that name the site. Then it evaluates, always by running the user's ``forward`` under
``pyro.poutine``: the per-task log joint of draws in flat unconstrained coordinates
(``biject_to(support)`` with its log-Jacobian), prior draws, and the observation distribution at
query points. Discrete task latents and global latent sites are refused.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to, constraints

from ..models.base import HierarchicalModel

__all__ = ["DRAWS_DIM", "ModelError", "ModelProgram", "ObservationSite", "TaskSite", "program_of", "unwrap"]

DRAWS_DIM, TASK_DIM, POINT_DIM = -3, -2, -1
_PROBE_T, _PROBE_N = 2, 3  # probe sizes: distinct, so a plate of the wrong size shows


class ModelError(ValueError):
    """A model's Pyro program breaks one of the rules of :mod:`bayesmeta.inference.program`."""


@dataclass(frozen=True)
class TaskSite:
    """A task-level latent site: constrained event ``shape``, ``support``, flat unconstrained ``size``."""

    name: str
    shape: torch.Size
    support: constraints.Constraint
    unconstrained_shape: torch.Size
    prior_family: str

    @property
    def size(self) -> int:
        return math.prod(self.unconstrained_shape)

    @property
    def transform(self):
        return biject_to(self.support)


@dataclass(frozen=True)
class ObservationSite:
    """The observation site: its name, event shape (``()`` or ``(E,)``), support and family."""

    name: str
    event_shape: torch.Size
    support: constraints.Constraint
    family: str
    discrete: bool

    @property
    def real(self) -> bool:
        """Outcomes on the whole real line (what standardising may shift and scale)."""
        return is_real(self.support)

    @property
    def num_classes(self) -> int | None:
        """Classes of a categorical outcome (labels ``0..C-1``), else ``None``."""
        if self.family != "Categorical":
            return None
        return int(getattr(self.support, "upper_bound", 0)) + 1


def unwrap(fn) -> tuple[Any, int]:
    """The innermost distribution of ``fn`` (through masks, ``to_event`` and expansions) and how many
    batch dims ``to_event`` made event dims."""
    reinterpreted = 0
    while True:
        if isinstance(fn, dist.MaskedDistribution | dist.torch_distribution.ExpandedDistribution):
            fn = fn.base_dist
        elif isinstance(fn, torch.distributions.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        else:
            return fn, reinterpreted


def _plates(site) -> dict[int, Any]:
    return {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}


class ModelProgram(nn.Module):
    """The library's view of a model's Pyro program (see the module docstring).

    Args:
        model: a ``PyroModule`` with ``forward(x, y=None, mask=None)``.
        x_dim: input size ``D`` (default: ``model.x_dim``).
        y_dim: output size ``E`` (default: ``model.y_dim``, else from the observation site's event).

    Raises:
        ModelError: the program breaks a rule (no tasks plate, a site outside it, no observation
            site, a discrete task latent, ...); the message names the site.

    Example:
        >>> from bayesmeta.models import LatentCodeRegression
        >>> prog = ModelProgram(LatentCodeRegression(x_dim=1, latent_dim=3))
        >>> [s.name for s in prog.sites], prog.param_dim, prog.observation.family
        (['z'], 3, 'Normal')
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
        self.sites, self.observation, self._fill, self.task_plate = self._probe()
        event = self.observation.event_shape
        y_dim = y_dim if y_dim is not None else getattr(model, "y_dim", None)
        natural = 1 if len(event) == 0 else int(event[0])
        if y_dim is not None and y_dim != natural:
            raise ModelError(f"{type(model).__name__}: y_dim={y_dim} but the observation site "
                             f"'{self.observation.name}' has event shape {tuple(event)} (y_dim {natural})")
        self.y_dim = natural
        self.param_dim = sum(s.size for s in self.sites)
        # A shipped model built from site_priors/likelihood (forward not overridden) has a direct
        # log joint that equals the traced one (tests check it) and is ~30 % faster.
        direct = isinstance(model, HierarchicalModel) and type(model).forward is HierarchicalModel.forward
        self._direct: Any = model if direct else None

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
        return torch.ones(_PROBE_T, _PROBE_N, self.x_dim, dtype=_dtype(self.model), device=_device(self.model))

    def _probe(self):
        name = type(self.model).__name__
        x = self.probe_inputs()
        mask = torch.ones(_PROBE_T, _PROBE_N, dtype=torch.bool, device=x.device)
        mask[0, -1] = False
        devices = [x.device] if x.device.type == "cuda" else []
        try:  # the probe's draws leave the caller's random streams as they were
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                trace = self._run(x, None, mask)
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(f"{name}: running forward(x, y=None, mask) on a probe of {_PROBE_T} tasks x {_PROBE_N} "
                             f"points (x all ones, shape {tuple(x.shape)}) failed: {type(err).__name__}: {err}") from err
        sites, obs = [], []
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            plates = _plates(site)
            if POINT_DIM in plates:
                obs.append(site)
            elif TASK_DIM in plates:
                sites.append(self._task_site(site, plates[TASK_DIM]))
            else:
                raise ModelError(f"{name}: site '{site['name']}' is outside the tasks plate. Global latent sites are "
                                 "not supported: make it a module parameter (learned by empirical Bayes) or sample "
                                 "it inside pyro.plate('tasks', x.shape[0], dim=-2)")
        if not obs:
            raise ModelError(f"{name}: no observation site: sample y inside pyro.plate('points', x.shape[1], dim=-1) "
                             "nested in the tasks plate, with obs=y")
        if len(obs) > 1:
            raise ModelError(f"{name}: sites {[s['name'] for s in obs]} are inside the points plate; only the "
                             "observation may be (per-point latent sites are not supported)")
        if not sites:
            raise ModelError(f"{name}: no task-level latent site: sample the task parameters inside "
                             "pyro.plate('tasks', x.shape[0], dim=-2)")
        site = obs[0]
        observation = self._observation_site(site, _plates(site))
        lp = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:
            lp = scale_and_mask(lp, 1.0, site["mask"])
        if bool(lp[0, -1] != 0):
            raise ModelError(f"{name}: the observation site '{site['name']}' ignores mask: observe with "
                             "dist.<Family>(...).mask(mask) so that padded points do not count")
        fill = site["value"][1, 0].detach()  # a value in the support, for padded points
        return tuple(sites), observation, fill, _plates(site)[TASK_DIM].name

    def _task_site(self, site, plate) -> TaskSite:
        name, fn = site["name"], site["fn"]
        where = f"{type(self.model).__name__}: task site '{name}'"
        if plate.size != _PROBE_T:
            raise ModelError(f"{where}: the tasks plate has size {plate.size} for {_PROBE_T} tasks; use "
                             "pyro.plate('tasks', x.shape[0], dim=-2)")
        if site["is_observed"]:
            raise ModelError(f"{where} is observed; task-level sites must be latent")
        if fn.support.is_discrete or getattr(fn, "has_enumerate_support", False):
            raise ModelError(f"{where} is discrete ({type(unwrap(fn)[0]).__name__}); discrete task latents are not "
                             "supported yet: marginalise them out in the model (e.g. a mixture likelihood)")
        if tuple(fn.batch_shape) != (_PROBE_T, 1):
            raise ModelError(f"{where} has batch shape {tuple(fn.batch_shape)} in the tasks plate (expected "
                             f"({_PROBE_T}, 1)); declare its own dimensions as event dims with .to_event(...)")
        shape = fn.event_shape
        unconstrained = biject_to(fn.support).inverse_shape(shape)
        return TaskSite(name, torch.Size(shape), fn.support, torch.Size(unconstrained), type(unwrap(fn)[0]).__name__)

    def _observation_site(self, site, plates) -> ObservationSite:
        name, fn = site["name"], site["fn"]
        where = f"{type(self.model).__name__}: observation site '{name}'"
        if TASK_DIM not in plates:
            raise ModelError(f"{where}: the points plate must be nested in the tasks plate (dim -2)")
        if plates[POINT_DIM].size != _PROBE_N:
            raise ModelError(f"{where}: the points plate has size {plates[POINT_DIM].size} for {_PROBE_N} points; use "
                             "pyro.plate('points', x.shape[1], dim=-1)")
        if tuple(fn.batch_shape) != (_PROBE_T, _PROBE_N):
            raise ModelError(f"{where} has batch shape {tuple(fn.batch_shape)} (expected ({_PROBE_T}, {_PROBE_N}): "
                             "tasks x points); an output dimension must be an event dim (.to_event(1))")
        if len(fn.event_shape) > 1:
            raise ModelError(f"{where} has event shape {tuple(fn.event_shape)}; at most one event dim (outputs)")
        base, _ = unwrap(fn)
        return ObservationSite(name, torch.Size(fn.event_shape), fn.support, type(base).__name__,
                               bool(fn.support.is_discrete))

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
        program is scaled by ``num_tasks / T`` (a mini-batch of a pool of ``num_tasks`` tasks)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        scale = 1.0 if num_tasks is None else num_tasks / x.shape[0]
        with poutine.scale(scale=scale):
            return self.model(x, self.model_y(y, mask), mask)

    # ------------------------------------------------------------------ flat coordinates
    def split(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat unconstrained ``u [..., P]`` -> constrained values ``{site: [..., *shape]}``."""
        return self.constrain(u)[0]

    def constrain(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({site: [..., *shape]}, {site: log|det J| [...]})`` of the map from ``u [..., P]`` to the supports."""
        values, ldjs, start = {}, {}, 0
        for s in self.sites:
            part = u[..., start : start + s.size].reshape(*u.shape[:-1], *s.unconstrained_shape)
            start += s.size
            t = s.transform
            if not is_real(s.support):  # exp/sigmoid of a wild draw must not reach a support's edge (0, 1)
                bound = math.log(torch.finfo(u.dtype).max) - 2.0
                part = part.clamp(-bound, bound)
            values[s.name] = t(part)
            if is_real(s.support):
                ldjs[s.name] = u.new_zeros(u.shape[:-1])
            else:
                ldjs[s.name] = _sum_to(t.log_abs_det_jacobian(part, values[s.name]), u.dim() - 1)
        return values, ldjs

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained ``{site: [..., *shape]}`` -> flat unconstrained ``[..., P]``."""
        parts = []
        for s in self.sites:
            v = values[s.name]
            u = s.transform.inv(v)
            parts.append(u.reshape(*u.shape[: u.dim() - len(s.unconstrained_shape)], -1))
        return torch.cat(parts, -1)

    def coordinate_names(self) -> list[str]:
        """Names of the ``P`` flat coordinates, e.g. ``["w[0]", "w[1]", "log_sigma"]``: ``site[i]``
        for real sites; an unconstrained coordinate of another support is named after the map
        (``log_`` for positive sites, ``logit_`` for unit-interval sites, ``u_`` otherwise)."""
        names = []
        for s in self.sites:
            prefix = _prefix(s.support)
            shape = s.unconstrained_shape
            if len(shape) == 0:
                names.append(f"{prefix}{s.name}")
                continue
            idx = torch.cartesian_prod(*[torch.arange(k) for k in shape]).reshape(-1, len(shape))
            names += [f"{prefix}{s.name}[{', '.join(str(int(v)) for v in i)}]" for i in idx]
        return names

    # ------------------------------------------------------------------ densities
    def _values(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """``u [n, T, P]`` -> site values ``[n, T, 1, *shape]`` (the points dim inserted) and ``log|J| [n, T]``."""
        values, ldjs = self.constrain(u)
        ldj = sum(ldjs.values(), u.new_zeros(u.shape[:-1]))
        return {s.name: values[s.name].unsqueeze(-1 - len(s.shape)) for s in self.sites}, ldj, u.shape[0]

    def _traced_terms(self, x, y, mask, u: torch.Tensor, *, observe: bool):
        """``(log prior [n, T], log likelihood [n, T] or None)`` of draws ``u [n, T, P]``."""
        values, ldj, n = self._values(u)
        model_y = self.model_y(y, mask) if observe else None
        trace = self._run(x, model_y, mask, values=values, draws=n)
        prior = ldj
        for s in self.sites:
            site = trace.nodes[s.name]
            lp = site["fn"].log_prob(site["value"])  # [n, T, 1]
            prior = prior + _masked(lp, site).reshape(n, -1)
        if not observe:
            return prior, None
        site = trace.nodes[self.observation.name]
        lp = _masked(site["fn"].log_prob(site["value"]), site)  # [n, T, N]
        lp = lp * mask.to(lp.dtype)  # padding never counts, whatever the model did with the mask
        return prior, lp.sum(-1)

    def log_joint(self, x, y, mask, u: torch.Tensor) -> torch.Tensor:
        """``log p(theta) + log p(y | x, theta)`` per task, ``[..., T]``, for flat unconstrained draws
        ``u [..., T, P]`` (the prior's density in ``u``: log-Jacobians included)."""
        if self._direct:
            return self._direct.log_joint(x, y, mask, u)
        lead = u.shape[:-2]
        prior, lik = self._traced_terms(x, y, mask, u.reshape(-1, *u.shape[-2:]), observe=True)
        return (prior + lik).reshape(*lead, u.shape[-2])

    def log_likelihood(self, x, y, mask, u: torch.Tensor) -> torch.Tensor:
        """``sum_j mask_ij log p(y_ij | x_ij, theta_i)`` per task ``[..., T]`` for draws ``u [..., T, P]``."""
        lead = u.shape[:-2]
        _, lik = self._traced_terms(x, y, mask, u.reshape(-1, *u.shape[-2:]), observe=True)
        return lik.reshape(*lead, u.shape[-2])

    def log_prior(self, x, u: torch.Tensor) -> torch.Tensor:
        """Log prior density of flat unconstrained draws ``u [..., T, P]`` per task ``[..., T]``."""
        lead = u.shape[:-2]
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        prior, _ = self._traced_terms(x, None, mask, u.reshape(-1, *u.shape[-2:]), observe=False)
        return prior.reshape(*lead, u.shape[-2])

    def sample_prior(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``num_samples`` prior draws per task of ``x [T, N, D]``, flat unconstrained ``[n, T, P]``."""
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        trace = self._run(x, None, mask, draws=num_samples)
        values = {s.name: trace.nodes[s.name]["value"].squeeze(-1 - len(s.shape)) for s in self.sites}
        u = self.flatten(values)  # [n, T, P]
        # a float draw on the edge of its support (a Gamma's 0, a Beta's 1) maps to -inf / inf: keep it finite.
        # Finite values stay as they are: a real-valued site in the data's units (an intercept of 300) is no edge
        bound = math.log(torch.finfo(u.dtype).max) - 1.0
        u = torch.nan_to_num(u, nan=0.0, posinf=bound, neginf=-bound)
        return u.expand(num_samples, x.shape[0], self.param_dim)

    def sample_joint(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One simulated task per task of ``x [T, N, D]``: parameters from the prior and outcomes from the
        likelihood, ``(u [T, P], y [T, N, E])`` (flat unconstrained parameters; ``y`` in the library's
        format, every point simulated whatever ``mask`` says). No gradients.

        Raises:
            ModelError: the observation site's distribution cannot be sampled (names it).
        """
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        try:
            with torch.no_grad():
                trace = self._run(x, None, mask)
        except NotImplementedError as err:
            raise ModelError(f"{type(self.model).__name__}: the observation site '{self.observation.name}' "
                             f"({self.observation.family}) cannot be sampled ({err or 'no sample()'}); simulated "
                             "tasks (a sleep phase, simulation-based calibration) need a likelihood with sample()") from err
        values = {s.name: trace.nodes[s.name]["value"].squeeze(-1 - len(s.shape)) for s in self.sites}
        u = self.flatten(values)  # [T, P]
        bound = math.log(torch.finfo(u.dtype).max) - 1.0  # support edges only: finite values are the model's own
        u = torch.nan_to_num(u, nan=0.0, posinf=bound, neginf=-bound)
        y = trace.nodes[self.observation.name]["value"].detach()
        y = y.unsqueeze(-1) if len(self.observation.event_shape) == 0 else y  # [T, N, E]
        return u, y.to(x.dtype)

    def observation_distribution(self, x: torch.Tensor, u: torch.Tensor) -> Any:
        """The observation site's distribution at ``x [T, N, D]`` for draws ``u [n, T, P]``: batch
        ``[n, T, N]`` and the site's event shape (masks removed)."""
        if self._direct:  # the model's own likelihood (the same distribution, without a trace)
            return self._direct.likelihood(x, self.split(u)).to_event(1)
        values, _, n = self._values(u)
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
        MultivariateNormal on the real line (no transform), else ``None``."""
        if not all(s.prior_family in ("Normal", "MultivariateNormal") and is_real(s.support) for s in self.sites):
            return None
        base = getattr(self.model, "prior_distribution", None)
        if callable(base):
            return base()
        x = torch.zeros(1, 1, self.x_dim, dtype=_dtype(self.model), device=_device(self.model))
        if like is not None:
            x = x.to(like)
        trace = self._run(x, None, torch.ones(1, 1, dtype=torch.bool, device=x.device))
        return _flat_gaussian([trace.nodes[s.name]["fn"] for s in self.sites])

    def check_y(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, what: str = "y") -> None:
        """Raise when an observed ``y [T, N, E]`` is outside the observation site's support (labels
        outside a Categorical's classes, negative or non-integer counts, successes above trials)."""
        support = self.observation.support
        if self.observation.real or y.numel() == 0:
            return
        try:
            with torch.no_grad():
                u = torch.zeros(1, x.shape[0], self.param_dim, dtype=x.dtype, device=x.device)
                support = self.observation_distribution(x, u).support
        except Exception:  # noqa: BLE001 - fall back to the probe's support
            pass
        v = self.model_y(y, mask)
        assert v is not None, "y is a tensor"
        ok = support.check(v)
        if len(self.observation.event_shape) and ok.dim() == v.dim():
            ok = ok.all(-1)
        ok = ok.expand(*ok.shape[:-2], *mask.shape).reshape(-1, *mask.shape)[0]
        bad = mask & ~ok
        if bad.any():
            t, j = (int(i) for i in bad.nonzero()[0])
            value = v[t, j].tolist()
            raise ValueError(f"{what}: value {value} at task {t}, point {j} is outside the support of the observation "
                             f"site '{self.observation.name}' ({self.observation.family}: {support})")


def program_of(model, *, x_dim: int | None = None, y_dim: int | None = None) -> ModelProgram:
    """The :class:`ModelProgram` of ``model`` (a ``ModelProgram`` is returned as it is)."""
    if isinstance(model, ModelProgram):
        return model
    return ModelProgram(model, x_dim=x_dim, y_dim=y_dim)


# ---------------------------------------------------------------------- helpers
def _dtype(model: nn.Module) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def is_real(support) -> bool:
    """Whether ``support`` is the real line (or independent copies of it)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return type(support) is type(constraints.real)  # not identity: a deep copy of a model copies its constraints


def _prefix(support) -> str:
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base is constraints.real:
        return ""
    if base is constraints.positive or base is constraints.nonnegative:
        return "log_"
    if base is constraints.unit_interval:
        return "logit_"
    return "u_"


def _sum_to(ldj: torch.Tensor, target_dims: int) -> torch.Tensor:
    """A log-Jacobian summed down to ``target_dims`` batch dims."""
    while ldj.dim() > target_dims:
        ldj = ldj.sum(-1)
    return ldj


def _masked(lp: torch.Tensor, site) -> torch.Tensor:
    return scale_and_mask(lp, 1.0, site["mask"]) if site["mask"] is not None else lp


def _flat_gaussian(fns) -> dist.TorchDistribution:
    """One flat Gaussian from Gaussian site priors of batch ``[1, 1]`` (one task, one point dim)."""
    locs, trils, diag = [], [], True
    for fn in fns:
        base, _ = unwrap(fn)
        if isinstance(base, dist.MultivariateNormal):
            diag = False
            locs.append(base.loc.expand(*base.batch_shape, -1).reshape(-1, base.loc.shape[-1])[0])
            tril = base.scale_tril.expand(*base.batch_shape, *base.scale_tril.shape[-2:])
            trils.append(tril.reshape(-1, *tril.shape[-2:])[0])
        else:
            shape = fn.batch_shape + fn.event_shape
            loc = base.loc.expand(shape).reshape(fn.batch_shape.numel(), -1)[0]
            locs.append(loc)
            trils.append(torch.diag(base.scale.expand(shape).reshape(fn.batch_shape.numel(), -1)[0]))
    loc = torch.cat(locs)
    if diag:
        return dist.Normal(loc, torch.cat([t.diagonal() for t in trils])).to_event(1)
    return dist.MultivariateNormal(loc, scale_tril=torch.block_diag(*trils))
