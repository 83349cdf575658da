"""Files written before models owned their scaling: learner-level standardisation, converted or refused.

Up to format 1 of a saved ``BayesLearner`` (and run directories with a ``standardisation.json``)
the learner standardised a pool's columns behind the model's back and kept the affine maps beside
it. A model that now owns a :class:`~bayesmeta.models.DataScaling` (the shipped neural models and
GLMs) computes exactly what it computed then when that scaling is set to the old maps, and the
guide's encoder reads what it read then when its input normalisation is set to them too: such
files are converted on load, with the same numbers. A model that sees the data as given (a user's
Pyro program) cannot take the maps into its own units: its learned parameters are in
standardised units, and loading is refused with what to do.
"""

from __future__ import annotations

import torch

from .models.scaling import model_scaling
from .tasks.dataset import Standardization

__all__ = ["absorb_standardization", "legacy_checkpoint_problem", "with_new_buffers"]


def with_new_buffers(module: torch.nn.Module, state: dict) -> dict:
    """``state`` completed with ``module``'s scaling buffers that it lacks (files written before they existed)."""
    fresh = module.state_dict()
    missing = {k: v for k, v in fresh.items() if k not in state and _is_scaling_key(k)}
    return {**missing, **state}


def _is_scaling_key(key: str) -> bool:
    return key.split(".")[-2:-1] in (["scaling"], ["input_scaling"])


def absorb_standardization(learner, std: Standardization, where: str) -> None:
    """Move a learner-level standardisation into the model's own scaling and the guide's input normalisation.

    Raises:
        ValueError: the model has no scaling of its own (its parameters are in standardised units),
            or its scaling cannot express the maps (a shift of a column it keeps as it is, of
            outputs it does not rescale, or of inputs without an intercept to absorb it).
    """
    if std.is_identity():
        return
    model, name = learner.model, type(learner.model).__name__
    scaling = model_scaling(model)
    if scaling is None:
        raise ValueError(
            f"{where}: written by an older bayesmeta that trained {name} on standardised data (learner-level "
            f"standardisation); {name} has no scaling of its own, so its learned parameters are in standardised "
            "units, not yours. Refit it (the model now sees your data as given), or give the model a "
            "bayesmeta.models.DataScaling as `scaling` (docs/custom-model.md)")
    x_shift, x_scale = list(std.x_mean), list(std.x_std)
    y_shift, y_scale = list(std.y_mean), list(std.y_std)
    problem = _inexpressible(scaling, x_shift, x_scale, y_shift, y_scale)
    if problem:
        raise ValueError(f"{where}: written by an older bayesmeta that trained {name} on standardised data; its "
                         f"scaling cannot take the old maps ({problem}): refit the model")
    if scaling.outputs:
        scaling.set_(x_shift, x_scale, y_shift, y_scale)
    else:
        scaling.set_(x_shift, x_scale)
    guide = learner.guide
    if guide is not None:  # the old encoder read standardised values (then its fixed transforms, identity there)
        ins = guide.input_scaling
        if ins.outputs:
            ins.set_(x_shift, x_scale, y_shift, y_scale)
        else:
            ins.set_(x_shift, x_scale)


def _inexpressible(scaling, x_shift, x_scale, y_shift, y_scale) -> str | None:
    if not scaling.outputs and (any(v != 0 for v in y_shift) or any(v != 1 for v in y_scale)):
        return "the outputs were standardised but the model's scaling keeps them as they are"
    kept = [c for c in scaling.keep_x if x_shift[c] != 0 or x_scale[c] != 1]
    if kept:
        return f"input columns {kept} were standardised but the model uses them as they are"
    if not scaling.center and any(v != 0 for v in x_shift + y_shift):
        return "columns were centred but the model has no intercept to absorb the shift"
    return None


def legacy_checkpoint_problem(state: dict, modules: dict) -> str | None:
    """Why a training checkpoint written before models owned their scaling cannot be resumed, or ``None``."""
    saved = state.get("standardization")
    if saved is not None and not Standardization.from_dict(saved).is_identity():
        return ("it was written by an older bayesmeta that trained on standardised data (learner-level "
                "standardisation); the model now sees your data as given, so the run cannot continue: start it over")
    for name, module in modules.items():
        held = state.get(name)
        if module is None or held is None:
            continue
        lacking = [k for k in module.state_dict() if k not in held and _is_scaling_key(k)]
        if lacking:
            return (f"it was written by an older bayesmeta (its {name} lacks {lacking[0]!r}); resuming would "
                    "continue without the model's own scaling: start the run over")
    return None
