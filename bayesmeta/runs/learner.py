"""The learner a run's config describes (a built-in model or a class of your own), and a fitted run's learner."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from .._user_code import load_class
from ..io import read_json
from ..learners import BayesLearner
from ..legacy import absorb_standardization
from ..models import (
    BayesianHeadRegression,
    HierarchicalLinearRegression,
    HierarchicalRegression,
    LatentCodeRegression,
)
from ..tasks import Standardization
from .layout import LEARNER_FILE, LEGACY_LEARNER_FILE, LEGACY_STANDARDISATION, load_run_config

__all__ = ["build_learner", "load_fitted", "predictor"]


def build_learner(model_cfg, x_dim: int, y_dim: int, data_cfg=None) -> BayesLearner:
    """The learner a config describes (linear-Gaussian kinds are fitted exactly; another likelihood
    is a hierarchical GLM with an amortized guide; ``kind = "file.py:ClassName"`` is your own model)."""
    if model_cfg.custom:
        return BayesLearner(user_model(model_cfg, x_dim, y_dim), guide=model_cfg.guide, objective=model_cfg.objective,
                            num_particles=model_cfg.num_particles, guide_options={"hidden": model_cfg.encoder_hidden},
                            x_dim=x_dim, y_dim=y_dim)
    extra = int(bool(data_cfg is not None and (data_cfg.trials or data_cfg.offset)))
    if model_cfg.likelihood != "gaussian":
        if y_dim != 1:
            raise ValueError(f"config: model.likelihood={model_cfg.likelihood!r} takes one y column; got {y_dim}")
        glm = HierarchicalRegression(x_dim=x_dim - extra, likelihood=model_cfg.likelihood,
                                     offset=bool(data_cfg is not None and data_cfg.offset))
        return BayesLearner(glm, guide=model_cfg.guide, objective=model_cfg.objective,
                            num_particles=model_cfg.num_particles, guide_options={"hidden": model_cfg.encoder_hidden})
    if model_cfg.kind == "latent":
        model = LatentCodeRegression(x_dim=x_dim, y_dim=y_dim, latent_dim=model_cfg.latent_dim,
                                     hidden=model_cfg.hidden, heteroscedastic=model_cfg.heteroscedastic)
        return BayesLearner(model, guide=model_cfg.guide, objective=model_cfg.objective,
                            num_particles=model_cfg.num_particles, guide_options={"hidden": model_cfg.encoder_hidden})
    if y_dim != 1:
        raise ValueError(f"config: model.kind={model_cfg.kind!r} supports one y column; got {y_dim}")
    if model_cfg.kind == "linear":
        return BayesLearner(HierarchicalLinearRegression(x_dim=x_dim), conjugate=True)
    return BayesLearner(BayesianHeadRegression(x_dim=x_dim, hidden=model_cfg.hidden), conjugate=True)


def user_model(model_cfg, x_dim: int, y_dim: int) -> torch.nn.Module:
    """An instance of the model class ``model_cfg.kind`` names, built with ``model_cfg.options``.

    ``x_dim`` (the number of x columns, trials and offset columns included) and ``y_dim`` are passed
    when the constructor takes them and the options do not set them.
    """
    cls = load_class(model_cfg.kind)
    if not issubclass(cls, torch.nn.Module):
        raise ValueError(f"model.kind: {model_cfg.kind} is not a model (a PyroModule or torch Module); write the model "
                         "as a PyroModule with forward(x, y=None, mask=None), see docs/custom-model.md")
    kwargs = dict(model_cfg.options)
    params = inspect.signature(cls).parameters
    for name, value in (("x_dim", x_dim), ("y_dim", y_dim)):
        if name in params and name not in kwargs:
            kwargs[name] = value
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"model.options: {model_cfg.kind}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                         f"does not match its constructor ({err})") from None
    try:
        model = cls(**kwargs)
    except Exception as err:  # the user's constructor: any failure is an input error naming the class
        raise ValueError(f"model.kind: {model_cfg.kind}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(getattr(model, "config", None), dict):  # what BayesLearner.save needs to rebuild it
        model.config = kwargs
    return model


def legacy_standardisation(run: Path) -> Standardization | None:
    """The ``standardisation.json`` of a run fitted by an earlier version (which standardised the data
    itself), or ``None``: runs now hold none (the model owns its scaling)."""
    path = run / LEGACY_STANDARDISATION
    if not path.is_file():
        return None
    try:
        std = Standardization.from_dict(read_json(path, "run's standardisation"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None
    return None if std.is_identity() else std


def load_fitted(run: Path):
    """``(config, learner)`` of a fitted run directory (an older version's run is converted; a model class
    of your own is imported from the file the run's config names)."""
    cfg = load_run_config(run)
    if cfg.model.custom:
        load_class(cfg.model.kind)  # a clear error if the file is gone; BayesLearner.load finds the class
    path = run / LEARNER_FILE
    if not path.is_file() and (run / LEGACY_LEARNER_FILE).is_file():
        path = run / LEGACY_LEARNER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no {LEARNER_FILE} (did `bayesmeta fit` finish? `--resume` continues it)")
    learner = BayesLearner.load(path)
    std = legacy_standardisation(run)
    if std is not None:  # an earlier version's run: the model takes the maps into its own scaling
        absorb_standardization(learner, std, str(run))
    return cfg, learner


def predictor(learner, **predict_options):
    """``(x_support, y_support, x_query, mask_support) -> predictive`` of a fitted learner, in the data's units.

    Works for every learner with ``adapt(x, y, mask).predict(x, **options)`` (Bayesian or baseline).
    """
    def predict(xs, ys, xq, ms):
        return learner.adapt(xs, ys, ms).predict(xq, **predict_options)
    return predict
