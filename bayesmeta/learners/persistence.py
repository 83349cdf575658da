"""Saving and loading a fitted ``BayesLearner``: one file, written atomically, rebuilt on any device."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from .._user_code import import_source
from ..inference.guides import AmortizedGuide
from ..inference.options import History
from ..inference.program import program_of
from ..io import atomic_torch_save, read_torch_file
from ..legacy import absorb_standardization, with_new_buffers
from ..tasks.dataset import Standardization

__all__ = ["save_learner", "load_learner", "FORMAT"]

FORMAT = "bayesmeta.BayesLearner/2"
FORMAT_V1 = "bayesmeta.BayesLearner/1"  # learner-level standardisation: converted on load (legacy.py)


def rebuild_problem(model: torch.nn.Module) -> str | None:
    """Why ``load`` could not rebuild ``model`` from a file (its class cannot be imported by name, or it has
    no ``config`` of constructor arguments), or ``None``."""
    cls = type(model)
    where = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__:
        return f"the model class {where} is defined inside a function, so it cannot be imported by name; define it " \
               "at the top level of a module"
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        return f"the model {where} has no `config` dict (its constructor arguments), so it cannot be rebuilt; " \
               "give the model a `config` attribute, e.g. self.config = {'x_dim': x_dim}"
    return None


def save_learner(learner, path) -> Path:
    """Write ``learner``'s model, guide and settings to ``path`` atomically (see ``BayesLearner.save``).

    Raises:
        ValueError: the model could not be rebuilt by :func:`load_learner` (nothing is written).
    """
    problem = rebuild_problem(learner.model)
    if problem:
        raise ValueError(f"save: {problem}")
    cls = type(learner.model)
    guide = learner.guide
    draws = getattr(learner, "global_draws", None)
    state = {
        "format": FORMAT,
        "model_class": f"{cls.__module__}:{cls.__qualname__}",
        "model_source": _source_file(cls),
        "model_config": learner.model.config,
        "model_state": {k: v.detach().cpu() for k, v in learner.model.state_dict().items()},
        "conjugate": learner.conjugate,
        "objective": learner.objective,
        "num_particles": learner.num_particles,
        "dims": [learner.program.x_dim, learner.program.y_dim],  # a model without x_dim / y_dim attributes of its own
        "guide_config": None if guide is None else guide.config,
        "guide_state": None if guide is None else {k: v.detach().cpu() for k, v in guide.state_dict().items()},
        "global_draws": None if draws is None else {k: v.detach().cpu() for k, v in draws.items()},
        "history": learner.history.as_dict(),
    }
    return atomic_torch_save(state, path)


def load_learner(cls, path, *, device="cpu"):
    """Rebuild a learner of class ``cls`` saved with :func:`save_learner` on ``device``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a saved BayesLearner")
    state = read_torch_file(path, damaged=lambda err: _damaged(path, err))
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{path}: not a saved BayesLearner (format {FORMAT})")
    try:
        learner = _rebuild(cls, state, path)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ImportError) as err:
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise _damaged(path, err) from err
    return learner.to(device)


def _damaged(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: not a saved BayesLearner, or a corrupt or truncated file ({type(err).__name__} "
                      "while loading it)")


def _source_file(cls: type) -> str | None:
    """The absolute path of the file that defines ``cls`` (``None`` if it has none, e.g. a notebook cell)."""
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:
        return None
    return None if source is None or not Path(source).is_file() else str(Path(source).resolve())


def _model_class(state: dict, path: Path) -> Any:
    """The saved model's class: by module and name, or else from the file that defined it (a script run as
    ``__main__``, a file given as ``file.py:Class``); an error naming both if neither works."""
    module, _, qualname = state["model_class"].partition(":")
    source = state.get("model_source")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as err:
        if not source:
            raise ValueError(f"{path}: the model class {state['model_class']} cannot be imported ({err}); import "
                             "the module that defines it first") from None
    if not Path(source).is_file():
        raise ValueError(f"{path}: the model class {qualname} was defined in {source}, which no longer exists; "
                         "put the file back (or import its module before loading)")
    try:
        obj = import_source(source)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: cannot rebuild the model class {qualname} from {source}: {err}") from None
    return obj


def _rebuild(cls, state: dict, path: Path):
    model_cls = _model_class(state, path)
    if not (isinstance(model_cls, type) and issubclass(model_cls, torch.nn.Module)):
        raise ValueError(f"{path}: {state['model_class']} is not a model (a torch Module)")
    if state["model_config"] is None:
        raise ValueError(f"{path}: the model {state['model_class']} has no `config` (its constructor "
                         "arguments), so it cannot be rebuilt; give the model a `config` dict")
    model = model_cls(**state["model_config"])
    model.load_state_dict(with_new_buffers(model, state["model_state"]))
    x_dim, y_dim = state.get("dims") or (None, None)  # files before the dims were saved: the model's own
    guide: str | AmortizedGuide = "diagonal"
    if state["guide_config"] is not None:
        cfg = dict(state["guide_config"])
        amortized = AmortizedGuide(program_of(model, x_dim=x_dim, y_dim=y_dim), cfg.pop("family"), **cfg)
        amortized.load_state_dict(with_new_buffers(amortized, state["guide_state"]))
        guide = amortized
    learner = cls(model, guide=guide, conjugate=state["conjugate"], objective=state["objective"],
                  num_particles=state["num_particles"], x_dim=x_dim, y_dim=y_dim)
    learner.history = History(**state["history"])
    if state.get("global_draws") is not None:
        learner.global_draws = dict(state["global_draws"])
    if state.get("standardization") is not None:  # format 1: the model was trained on standardised data
        absorb_standardization(learner, Standardization.from_dict(state["standardization"]), str(path))
    return learner
