"""Tracing a model's program once on a probe input: its latent sites, its observation site, the rules.

:func:`probe` runs ``forward(x, y=None, mask)`` on a small input (2 tasks x 3 points, distinct
sizes so that a plate of the wrong size shows) and sorts the sample sites it finds:

* inside the tasks plate (dim -2) and not the points plate: a **task site**;
* outside every plate: a **global site** (a hyperprior's draw: a population mean, a between-task
  scale, a shared noise), continuous, with no batch shape;
* inside the points plate (dim -1), nested in the tasks plate: the **observation** (one, masked).

Every break of the rules is a :class:`~bayesmeta.inference.program.sites.ModelError` naming the site.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ..._support import short_error
from .sites import (
    POINT_DIM,
    TASK_DIM,
    GlobalSite,
    ModelError,
    ObservationSite,
    TaskSite,
    masked,
    plates,
    unwrap,
)

__all__ = ["PROBE_T", "PROBE_N", "probe", "check_draws", "check_globals_used"]

PROBE_T, PROBE_N = 2, 3  # probe sizes: distinct, so a plate of the wrong size shows


def probe(program):
    """``(task sites, global sites, observation, fill value, tasks plate name, probe trace)`` of ``program``."""
    name = type(program.model).__name__
    x = program.probe_inputs()
    mask = torch.ones(PROBE_T, PROBE_N, dtype=torch.bool, device=x.device)
    mask[0, -1] = False
    devices = [x.device] if x.device.type == "cuda" else []
    try:  # the probe's draws leave the caller's random streams as they were
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            trace = program._run(x, None, mask)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{name}: running forward(x, y=None, mask) on a probe of {PROBE_T} tasks x {PROBE_N} "
                         f"points (x all ones, shape {tuple(x.shape)}) failed: {short_error(err)}") from err
    sites, globals_, obs = [], [], []
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic"):
            continue  # pyro.deterministic records a value; it is no random variable
        where = plates(site)
        if POINT_DIM in where and TASK_DIM not in where and not site["is_observed"]:
            raise ModelError(f"{name}: site '{site['name']}' is inside the points plate but not the tasks plate; a "
                             "global site is sampled outside every plate, a task site inside pyro.plate('tasks', "
                             "x.shape[0], dim=-2) only")
        if POINT_DIM in where:
            obs.append(site)
        elif TASK_DIM in where:
            sites.append(_task_site(program, site, where[TASK_DIM]))
        else:
            globals_.append(_global_site(program, site, where))
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
    observation = _observation_site(program, site, plates(site))
    lp = masked(site["fn"].log_prob(site["value"]), site)
    if bool(lp[0, -1] != 0):
        raise ModelError(f"{name}: the observation site '{site['name']}' ignores mask: observe with "
                         "dist.<Family>(...).mask(mask) so that padded points do not count")
    fill = site["value"][1, 0].detach()  # a value in the support, for padded points
    return tuple(sites), tuple(globals_), observation, fill, plates(site)[TASK_DIM].name, trace


def check_draws(program, observation: str) -> None:
    """Rule 4: the program runs for several parameter draws at once (inside an outer plate at dim -3, as the
    library evaluates it), and its observation keeps that draws dim."""
    name = type(program.model).__name__
    x = program.probe_inputs()
    mask = torch.ones(PROBE_T, PROBE_N, dtype=torch.bool, device=x.device)
    how = ("write arithmetic that broadcasts over leading dims (w[..., 0] * x[..., 0], not w.view(T, 1); "
           "torch.stack/cat of a term without the draws dim needs torch.broadcast_tensors first)")
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            trace = program._run(x, None, mask, draws=2)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{name}: forward fails when run for 2 parameter draws at once (inside a plate at dim -3, "
                         f"as the library evaluates it): {short_error(err)}; {how}") from err
    shape = tuple(trace.nodes[observation]["fn"].batch_shape)
    if shape != (2, PROBE_T, PROBE_N):
        raise ModelError(f"{name}: the observation site '{observation}' has batch shape {shape} when run for 2 "
                         f"parameter draws at once (expected (2, {PROBE_T}, {PROBE_N}): draws x tasks x points); {how}")


def _task_site(program, site, plate) -> TaskSite:
    name, fn = site["name"], site["fn"]
    where = f"{type(program.model).__name__}: task site '{name}'"
    if plate.size != PROBE_T:
        raise ModelError(f"{where}: the tasks plate has size {plate.size} for {PROBE_T} tasks; use "
                         "pyro.plate('tasks', x.shape[0], dim=-2)")
    if site["is_observed"]:
        raise ModelError(f"{where} is observed; task-level sites must be latent")
    _refuse_point_mass(where, fn)
    if fn.support.is_discrete or getattr(fn, "has_enumerate_support", False):
        raise ModelError(f"{where} is discrete ({type(unwrap(fn)[0]).__name__}); discrete task latents are not "
                         "supported yet: marginalise them out in the model (e.g. a mixture likelihood)")
    if tuple(fn.batch_shape) != (PROBE_T, 1):
        raise ModelError(f"{where} has batch shape {tuple(fn.batch_shape)} in the tasks plate (expected "
                         f"({PROBE_T}, 1)); declare its own dimensions as event dims with .to_event(...)")
    unconstrained = biject_to(fn.support).inverse_shape(fn.event_shape)
    return TaskSite(name, torch.Size(fn.event_shape), fn.support, torch.Size(unconstrained),
                    type(unwrap(fn)[0]).__name__)


def _refuse_point_mass(where: str, fn) -> None:
    """A Delta prior (a point mass) has no density over its value: it is a fixed value, not a latent site."""
    base, _ = unwrap(fn)
    if isinstance(base, dist.Delta):
        raise ModelError(f"{where} has a Delta (point-mass) prior: a point mass is a fixed value, not a latent site "
                         "with a posterior; make it a module parameter (nn.Parameter) or record it with "
                         "pyro.deterministic")


def _global_site(program, site, where) -> GlobalSite:
    name, fn = site["name"], site["fn"]
    model = type(program.model).__name__
    if site["is_observed"]:
        raise ModelError(f"{model}: site '{name}' is observed outside the tasks plate; observe y inside "
                         "pyro.plate('points', x.shape[1], dim=-1) nested in pyro.plate('tasks', x.shape[0], dim=-2)")
    _refuse_point_mass(f"{model}: global site '{name}'", fn)
    if where:
        raise ModelError(f"{model}: site '{name}' is in a plate at dim {sorted(where)} that is neither the tasks "
                         "plate (dim -2) nor the points plate (dim -1)")
    if fn.support.is_discrete or getattr(fn, "has_enumerate_support", False):
        raise ModelError(f"{model}: global site '{name}' is discrete ({type(unwrap(fn)[0]).__name__}); global "
                         "latent sites must be continuous (marginalise a discrete one out in the model)")
    if len(fn.batch_shape) != 0:
        raise ModelError(f"{model}: global site '{name}' has batch shape {tuple(fn.batch_shape)} outside the tasks "
                         "plate: a global's prior must not depend on a task site or the data, and its own "
                         "dimensions are event dims (.to_event(...))")
    unconstrained = biject_to(fn.support).inverse_shape(fn.event_shape)
    return GlobalSite(name, torch.Size(fn.event_shape), fn.support, torch.Size(unconstrained),
                      type(unwrap(fn)[0]).__name__)


def _observation_site(program, site, where) -> ObservationSite:
    name, fn = site["name"], site["fn"]
    here = f"{type(program.model).__name__}: observation site '{name}'"
    if where[POINT_DIM].size != PROBE_N:
        raise ModelError(f"{here}: the points plate has size {where[POINT_DIM].size} for {PROBE_N} points; use "
                         "pyro.plate('points', x.shape[1], dim=-1)")
    if tuple(fn.batch_shape) != (PROBE_T, PROBE_N):
        raise ModelError(f"{here} has batch shape {tuple(fn.batch_shape)} (expected ({PROBE_T}, {PROBE_N}): "
                         "tasks x points); an output dimension must be an event dim (.to_event(1))")
    if len(fn.event_shape) > 1:
        raise ModelError(f"{here} has event shape {tuple(fn.event_shape)}; at most one event dim (outputs)")
    base, _ = unwrap(fn)
    return ObservationSite(name, torch.Size(fn.event_shape), fn.support, type(base).__name__,
                           bool(fn.support.is_discrete))


def check_globals_used(program, trace) -> None:
    """Refuse a global site that influences nothing: the log joint of the task sites and the observation does
    not change with it (its gradient is zero at two prior draws)."""
    if not program.global_sites:
        return
    x = program.probe_inputs()
    mask = torch.ones(PROBE_T, PROBE_N, dtype=torch.bool, device=x.device)
    y = trace.nodes[program.observation.name]["value"].detach()
    y = y.unsqueeze(-1) if len(program.observation.event_shape) == 0 else y
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():  # also when built under no_grad
        torch.manual_seed(0)
        g = program.sample_globals(2).detach()[:, None, :]  # [2, 1, G]
        u = program.sample_prior(x, 2, g=g).detach()  # [2, T, P]
        g.requires_grad_(True)
        lj = program.log_joint(x, y.to(x.dtype), mask, u, g=g)
        (grad,) = torch.autograd.grad(lj.sum(), g, allow_unused=True)
    start = 0
    for s in program.global_sites:
        part = None if grad is None else grad[..., start : start + s.size]
        start += s.size
        if part is None or not bool((part != 0).any()):
            raise ModelError(f"{type(program.model).__name__}: global site '{s.name}' influences nothing: no task "
                             "site's prior and not the likelihood depend on it (use it, or remove it)")
