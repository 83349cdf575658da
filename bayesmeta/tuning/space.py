"""The search space of a tuning study, declared in TOML next to the fit config.

A space file has up to three tables::

    [space.train]                       # fields of TrainConfig
    lr = { low = 3e-4, high = 3e-3, log = true }
    tasks_per_step = [16, 32, 64]       # a list: one of these values

    [space.model]                       # fields of ModelConfig, and four architecture keys
    latent_dim = { low = 2, high = 16 }
    width = { low = 32, high = 256, log = true }   # decoder: hidden = [width] * depth
    depth = { low = 1, high = 4 }
    encoder_width = [64, 128]                      # encoder: encoder_hidden = [width] * depth
    encoder_depth = { low = 1, high = 3 }

    [objective]
    shots = [5]                         # validation NLL at these shot counts (their mean)

    [study]
    sampler = "gp"                      # "gp" (Bayesian optimisation), "tpe" or "random"
    pruner = "median"                   # "median" or "none"
    trials = 40                         # finished trials in the whole study (0: no limit)
    timeout = 1200                      # seconds per worker (0: no limit)
    seed = 0
    enqueue_defaults = true             # trial 0 is the fit config as it is: the baseline

A range ``{low, high}`` is an integer range for an integer field and a float range otherwise
(``log = true``: sampled on the log scale; ``step``: a grid). Every value a trial can take is
checked against the config's own rules before the study starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..runs.config import FitConfig, ModelConfig, TrainConfig, config_from_dict, read_toml

__all__ = ["ARCHITECTURE_KEYS", "Param", "SearchSpace", "StudyOptions", "load_space"]

# architecture keys: a width and a depth become a list of widths
ARCHITECTURE_KEYS = {"width": ("hidden", "depth"), "depth": ("hidden", "width"),
                     "encoder_width": ("encoder_hidden", "encoder_depth"),
                     "encoder_depth": ("encoder_hidden", "encoder_width")}
_INT_FIELDS = {"train": {f.name for f in fields(TrainConfig) if str(f.type).startswith("int")},
               "model": {f.name for f in fields(ModelConfig) if str(f.type) == "int"} | set(ARCHITECTURE_KEYS)}
_NOT_TUNABLE = {"train": {"seed", "device", "progress", "steps", "max_time", "log_every", "checkpoint_every",
                          "val_shots", "val_fraction", "val_every"},
                "model": {"kind", "likelihood", "hidden", "encoder_hidden"}}
# model keys that exist only for some model kinds (the conjugate kinds have no guide, no code)
# ("glm": model.kind "linear" with a non-Gaussian likelihood, fitted with an amortized guide)
_AMORTIZED = ("latent", "glm", "your own model")  # the kinds with an amortized guide
_KIND_KEYS = {"latent_dim": ("latent",), "heteroscedastic": ("latent",), "guide": _AMORTIZED,
              "objective": _AMORTIZED, "num_particles": _AMORTIZED, "encoder_width": _AMORTIZED,
              "encoder_depth": _AMORTIZED, "width": ("latent", "bayes-head"), "depth": ("latent", "bayes-head")}
SAMPLERS = ("gp", "tpe", "random")
PRUNERS = ("median", "none")


def _fail(key: str, allowed: str, value) -> None:
    raise ValueError(f"search space: {key} must be {allowed}; got {value!r}")


@dataclass(frozen=True)
class Param:
    """One tuned setting: ``section.name`` over a range or a list of choices."""

    section: str
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    integer: bool = False

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def suggest(self, trial) -> Any:
        """The value of this parameter in an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def corners(self) -> list:
        """The values to check before a study starts: every choice, or both ends of the range."""
        if self.choices:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


@dataclass(frozen=True)
class StudyOptions:
    """``[objective]`` and ``[study]`` of a space file (command-line flags override them)."""

    shots: tuple[int, ...] = (5,)
    sampler: str = "gp"
    pruner: str = "median"
    trials: int = 0
    timeout: float = 0.0
    seed: int = 0
    enqueue_defaults: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(self.shots))
        if not self.shots or any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in self.shots) \
                or len(set(self.shots)) != len(self.shots):
            _fail("objective.shots", "a non-empty list of distinct ints >= 0", list(self.shots))
        if self.sampler not in SAMPLERS:
            _fail("study.sampler", f"one of {SAMPLERS}", self.sampler)
        if self.pruner not in PRUNERS:
            _fail("study.pruner", f"one of {PRUNERS}", self.pruner)
        if not isinstance(self.trials, int) or isinstance(self.trials, bool) or self.trials < 0:
            _fail("study.trials", "an int >= 0 (0: no limit)", self.trials)
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float) or not self.timeout >= 0:
            _fail("study.timeout", "seconds >= 0 (0: no limit)", self.timeout)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            _fail("study.seed", "an int >= 0", self.seed)
        if not isinstance(self.enqueue_defaults, bool):
            _fail("study.enqueue_defaults", "true or false", self.enqueue_defaults)


@dataclass(frozen=True)
class SearchSpace:
    """The tuned parameters and the study's options; :meth:`apply` turns a trial's values into a config."""

    params: tuple[Param, ...]
    options: StudyOptions = field(default_factory=StudyOptions)

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("search space: no parameters to tune (add [space.train] or [space.model] keys)")

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def apply(self, base: FitConfig, values: dict[str, Any]) -> FitConfig:
        """``base`` with a trial's values (``{"train.lr": 1e-3, "model.width": 64, ...}``) applied."""
        data: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
        for key, value in values.items():
            section, _, name = key.partition(".")
            if name in ARCHITECTURE_KEYS:
                continue
            data[section][name] = value
        for target, width, depth in (("hidden", "width", "depth"), ("encoder_hidden", "encoder_width", "encoder_depth")):
            w, d = values.get(f"model.{width}"), values.get(f"model.{depth}")
            if w is not None or d is not None:
                current = getattr(base.model, target)
                w = current[0] if w is None else w
                d = len(current) if d is None else d
                data["model"][target] = [int(w)] * int(d)
        cfg = config_from_dict(data, base)
        return replace(cfg, train=replace(cfg.train, val_shots=self.options.shots))

    def check(self, base: FitConfig) -> None:
        """Raise if a parameter does not apply to ``base``'s model or any value it can take is invalid."""
        kind = ("your own model" if base.model.custom else base.model.kind if base.model.likelihood == "gaussian"
                else "glm")
        for p in self.params:
            kinds = _KIND_KEYS.get(p.name) if p.section == "model" else None
            if kinds is not None and kind not in kinds:
                what = (f"model.likelihood={base.model.likelihood!r} (a hierarchical GLM)" if kind == "glm"
                        else f"model.kind={base.model.kind!r}" + (" (your own model)" if base.model.custom else ""))
                raise ValueError(f"search space: {p.key} is not a parameter of the model this config fits ({what}); "
                                 f"it applies to model.kind in {list(kinds)}")
            for value in p.corners():
                try:
                    self.apply(base, {p.key: value})
                except ValueError as err:
                    raise ValueError(f"search space: {p.key} = {value!r} is not a valid setting ({err})") from None


def _param(section: str, name: str, spec) -> Param:
    key = f"{section}.{name}"
    integer = name in _INT_FIELDS[section]
    if isinstance(spec, list):
        if not spec:
            _fail(key, "a non-empty list of choices", spec)
        if len({repr(v) for v in spec}) != len(spec):
            _fail(key, "a list of distinct choices", spec)
        if not all(isinstance(v, bool | int | float | str) for v in spec):
            _fail(key, "a list of numbers, strings or booleans", spec)
        return Param(section, name, choices=tuple(spec), integer=integer)
    if not isinstance(spec, dict):
        _fail(key, "a range { low = .., high = .. } or a list of choices", spec)
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown:
        raise ValueError(f"search space: unknown key(s) {unknown} in {key}; allowed: low, high, log, step")
    if "low" not in spec or "high" not in spec:
        _fail(key, "a range with both low and high", spec)
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    number = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if integer else \
        (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
    if not number(low) or not number(high):
        _fail(key, f"a range of {'integers' if integer else 'finite numbers'}", spec)
    if not low < high:
        raise ValueError(f"search space: {key} is an empty range (low={low!r} must be below high={high!r})")
    if not isinstance(log, bool):
        _fail(f"{key}.log", "true or false", log)
    if log and low <= 0:
        _fail(key, "a range with low > 0 when log = true", spec)
    if step is not None and (not number(step) or step <= 0 or log):
        _fail(f"{key}.step", "a positive number (and no log = true)", step)
    return Param(section, name, float(low), float(high), log, None if step is None else float(step), integer=integer)


def _section_params(section: str, table) -> list[Param]:
    if not isinstance(table, dict):
        raise ValueError(f"search space: [space.{section}] must be a table of keys")
    cls = TrainConfig if section == "train" else ModelConfig
    allowed = {f.name for f in fields(cls)} - _NOT_TUNABLE[section]
    if section == "model":
        allowed |= set(ARCHITECTURE_KEYS)
    params = []
    for name, spec in table.items():
        if name in _NOT_TUNABLE[section] and name not in allowed:
            hint = " (tune model.width and model.depth)" if name == "hidden" else \
                " (tune model.encoder_width and model.encoder_depth)" if name == "encoder_hidden" else ""
            raise ValueError(f"search space: {section}.{name} cannot be tuned{hint}")
        if name not in allowed:
            raise ValueError(f"search space: unknown key {section}.{name}; tunable keys in [space.{section}]: "
                             f"{sorted(allowed)}")
        params.append(_param(section, name, spec))
    return params


def space_from_dict(data: dict) -> SearchSpace:
    """A :class:`SearchSpace` from a parsed space file (errors name the key)."""
    unknown = sorted(set(data) - {"space", "objective", "study"})
    if unknown:
        raise ValueError(f"search space: unknown table(s) {unknown}; allowed: space, objective, study")
    space = data.get("space", {})
    if not isinstance(space, dict) or sorted(set(space) - {"train", "model"}):
        raise ValueError(f"search space: [space] holds the tables [space.train] and [space.model]; got "
                         f"{sorted(space) if isinstance(space, dict) else space!r}")
    params = [p for section in ("train", "model") for p in _section_params(section, space.get(section, {}))]
    options: dict[str, Any] = {}
    for table, keys in (("objective", {"shots"}), ("study", {f.name for f in fields(StudyOptions)} - {"shots"})):
        values = data.get(table, {})
        if not isinstance(values, dict):
            raise ValueError(f"search space: [{table}] must be a table of keys")
        bad = sorted(set(values) - keys)
        if bad:
            raise ValueError(f"search space: unknown key(s) {[f'{table}.{k}' for k in bad]}; allowed in [{table}]: "
                             f"{sorted(keys)}")
        options.update(values)
    return SearchSpace(tuple(params), StudyOptions(**options))


def load_space(path) -> SearchSpace:
    """Read a space file (errors name the file)."""
    path = Path(path)
    data = read_toml(path, "search-space file")
    try:
        return space_from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
