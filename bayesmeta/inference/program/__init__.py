"""A hierarchical model's Pyro program, traced: everything the library needs, derived from ``forward``.

A model is any :class:`~pyro.nn.PyroModule` whose ``forward(x, y=None, mask=None)`` is plain Pyro:

* ``x [T, N, D]``: the points of ``T`` tasks (padded), ``mask [T, N]`` which of them are real;
* task-level latent sites inside ``pyro.plate("tasks", T, dim=-2)`` (any continuous support, any
  prior; their value is ``[..., T, 1, *event]``);
* optionally, **global latent sites** outside every plate (hyperpriors: a population mean, a
  between-task scale, a shared noise; any continuous support, any prior, their own dimensions as
  event dims); task sites and the likelihood may depend on them. They get a posterior of their
  own (full Bayes over the prior);
* one observation site inside a points plate ``pyro.plate("points", N, dim=-1)`` nested in the
  tasks plate, masked with ``.mask(mask)``, observed at ``y`` (``[T, N]`` for a scalar
  distribution, ``[T, N, E]`` for one with event shape ``[E]``);
* learned prior parameters as module parameters (empirical Bayes); both may be mixed.

Shape rule: the library evaluates the program for many parameter draws at once, under an outer
``pyro.plate`` at dim -3, so a site's value may be ``[n, T, 1, *event]``: write arithmetic that
broadcasts over leading dims (``w * x[..., 0]`` rather than ``w.view(T, 1)``)::

    draws (dim -3)   tasks (dim -2)   points (dim -1)   event
    [ n,             T,               1,                *event ]   task site
    [ n,             T or 1,          1,                *event ]   global site
    [ n,             T,               N ]                          observation

A global site's value has a task dim of 1 in training (one draw shared by the tasks of a pool) and
of ``T`` when new tasks are predicted (each new task integrates over the hyperposterior on its own).

:class:`ModelProgram` traces the program once on a small probe input to find the task sites, the
global sites (names, shapes, supports), the observation site and its family, and checks the rules
above with errors that name the site. Then it evaluates, always by running the user's ``forward``
under ``pyro.poutine``: the per-task log joint of draws in flat unconstrained coordinates
(``biject_to(support)`` with its log-Jacobian), the globals' log prior, prior draws, and the
observation distribution at query points. Discrete latents are refused.
"""

from .core import ModelProgram, program_of
from .sites import (
    DRAWS_DIM,
    POINT_DIM,
    TASK_DIM,
    GlobalSite,
    ModelError,
    ObservationSite,
    TaskSite,
    is_real,
    unwrap,
)

__all__ = ["DRAWS_DIM", "TASK_DIM", "POINT_DIM", "ModelError", "ModelProgram", "ObservationSite", "TaskSite",
           "GlobalSite", "program_of", "unwrap", "is_real"]
