"""Run configuration: frozen dataclasses validated on construction, read from and written to TOML.

A fit is described by three sections::

    [data]   path, task, x, y, trials, offset, val_fraction, split_seed
    [model]  kind ("latent" | "linear" | "bayes-head" | "path/to/file.py:ClassName"), options (your
             class's constructor arguments), likelihood, latent_dim, hidden, heteroscedastic, guide,
             objective, num_particles, encoder_hidden
    [train]  the fields of :class:`~bayesmeta.inference.TrainConfig` (the options of every
             learner's ``fit``): steps, max_time (0: none), tasks_per_step, lr, seed, device, ...

An unknown section or key, or a bad value, is an error that names the key and what is allowed.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .._user_code import is_class_spec
from ..inference.objectives import OBJECTIVES
from ..inference.options import TrainConfig
from ..io import file_error
from ..models.glm import LIKELIHOODS

__all__ = ["DataConfig", "FitConfig", "ModelConfig", "TrainConfig", "MODEL_KINDS", "apply_overrides",
           "config_from_dict", "load_config", "read_toml", "to_toml"]

MODEL_KINDS = ("latent", "linear", "bayes-head")


def _fail(key: str, allowed: str, value) -> None:
    raise ValueError(f"config: {key} must be {allowed}; got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    task: str = ""
    x: tuple[str, ...] = ()
    y: tuple[str, ...] = ()
    trials: str = ""
    offset: str = ""
    val_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", tuple(self.x))
        object.__setattr__(self, "y", tuple(self.y))
        if not 0 <= self.val_fraction < 1:
            _fail("data.val_fraction", "in [0, 1)", self.val_fraction)
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            _fail("data.split_seed", "an int >= 0 (as train.seed)", self.split_seed)

    def check_complete(self) -> None:
        for key in ("path", "task", "x", "y"):
            if not getattr(self, key):
                raise ValueError(f"config: data.{key} is required (give --{'data' if key == 'path' else key} "
                                 f"or set it in the config file)")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "latent"
    likelihood: str = "gaussian"
    latent_dim: int = 8
    hidden: tuple[int, ...] = (64, 64, 64)
    heteroscedastic: bool = True
    guide: str = "diagonal"
    objective: str = "rws"
    num_particles: int = 8
    encoder_hidden: tuple[int, ...] = (128, 128)
    options: dict = field(default_factory=dict)

    @property
    def custom(self) -> bool:
        """``kind`` names a model class of your own (``path/to/file.py:ClassName``)."""
        return self.kind not in MODEL_KINDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "encoder_hidden", tuple(self.encoder_hidden))
        object.__setattr__(self, "options", dict(self.options))
        if self.kind not in MODEL_KINDS and not is_class_spec(self.kind):
            _fail("model.kind", f"one of {MODEL_KINDS} or a model class of your own as 'path/to/file.py:ClassName'",
                  self.kind)
        if self.options and not self.custom:
            _fail("model.options", f"empty for a built-in model (kind={self.kind!r}); options are the constructor "
                  "arguments of a model class of your own", self.options)
        if self.likelihood not in LIKELIHOODS:
            _fail("model.likelihood", f"one of {LIKELIHOODS}", self.likelihood)
        if self.custom and self.likelihood != "gaussian":
            _fail("model.likelihood", f"left out with a model of your own ({self.kind}): its observation site is its "
                  "likelihood", self.likelihood)
        if self.likelihood != "gaussian" and self.kind != "linear":
            _fail("model.kind", f"'linear' (a hierarchical GLM) with model.likelihood={self.likelihood!r} (the latent "
                  "and bayes-head models have a Gaussian likelihood)", self.kind)
        if self.objective not in OBJECTIVES:
            _fail("model.objective", f"one of {OBJECTIVES}", self.objective)
        if self.num_particles < 1:
            _fail("model.num_particles", ">= 1", self.num_particles)
        if self.guide not in ("diagonal", "flow"):
            _fail("model.guide", "'diagonal' or 'flow'", self.guide)
        if self.latent_dim < 1:
            _fail("model.latent_dim", ">= 1", self.latent_dim)
        if not self.hidden or any(h < 1 for h in self.hidden):
            _fail("model.hidden", "a non-empty list of positive widths", list(self.hidden))
        if not self.encoder_hidden or any(h < 1 for h in self.encoder_hidden):
            _fail("model.encoder_hidden", "a non-empty list of positive widths", list(self.encoder_hidden))


@dataclass(frozen=True)
class FitConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check_consistent(self) -> None:
        """Raise if data and model sections do not fit together (trials, offset and the likelihood)."""
        lik, d = self.model.likelihood, self.data
        if self.model.custom:  # trials / offset columns come after the x columns; the model reads them there
            return
        if (lik == "binomial") != bool(d.trials):
            _fail("data.trials", "the column with each row's number of trials, exactly when model.likelihood is "
                  f"'binomial' (model.likelihood={lik!r})", d.trials)
        if d.offset and lik not in ("poisson", "negative-binomial"):
            _fail("data.offset", f"empty unless model.likelihood is 'poisson' or 'negative-binomial' (it is {lik!r})",
                  d.offset)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_NONE_IS_ZERO = {"max_time", "clip_norm", "val_every", "patience"}  # TOML has no null: 0 means none for these
# the command line holds out whole groups itself (split.json), so [train] val_fraction has no say there
_ELSEWHERE = {"train.val_fraction": "data.val_fraction (the share of groups held out for validation)"}


def _coerce(section: str, f, value):
    """A TOML value for field ``f`` as the field's type (from its annotation), or an error naming the key."""
    key, kind = f"{section}.{f.name}", str(f.type)
    if kind.endswith("| None"):
        if f.name in _NONE_IS_ZERO and value == 0 and not isinstance(value, bool):
            return None
        kind = kind.removesuffix("| None").strip()
    if kind.startswith("tuple"):  # lists of column names or of widths
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list | tuple):
            _fail(key, "a list", value)
        item = int if "int" in kind else str
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            _fail(key, f"a list of {item.__name__}s", value)
        return tuple(value)
    if kind == "dict":  # a table of constructor arguments: TOML values as they are
        if not isinstance(value, dict):
            _fail(key, "a table, e.g. {x_dim = 2, prior_scale = 1.0}", value)
        return dict(value)
    checks = {"bool": (lambda v: isinstance(v, bool), "true or false"),
              "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
              "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
              "str": (lambda v: isinstance(v, str), "a string")}
    if kind not in checks:
        raise TypeError(f"config: unsupported field {key} ({kind})")
    ok, allowed = checks[kind]
    if not ok(value):
        _fail(key, allowed, value)
    return float(value) if kind == "float" else value


REMOVED_KEYS = {
    "data.standardize": "the model is fitted to your data as given (the shipped models rescale themselves "
                        "inside the model; a model of your own sees your units): remove the key",
}
"""Keys of earlier versions: an error in a config you write, dropped from a run's own ``config.toml``."""


def config_from_dict(data: dict, base: FitConfig | None = None, *, run_file: bool = False) -> FitConfig:
    """Apply a nested dict (as read from TOML) to ``base`` (default: the defaults).

    ``run_file``: the dict is a run directory's own ``config.toml`` (written by an earlier version,
    perhaps): keys of :data:`REMOVED_KEYS` are dropped instead of refused.
    """
    cfg = base or FitConfig()
    data = _without_removed(data, run_file)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"config: unknown section(s) {unknown}; allowed: {sorted(_SECTIONS)}")
    for section, cls in _SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"config: [{section}] must be a table of keys")
        known = {f.name: f for f in fields(cls) if f"{section}.{f.name}" not in _ELSEWHERE}
        for k in values:
            if f"{section}.{k}" in _ELSEWHERE:
                raise ValueError(f"config: {section}.{k} is not a command-line setting; use {_ELSEWHERE[f'{section}.{k}']}")
        bad = sorted(set(values) - set(known))
        if bad:
            raise ValueError(f"config: unknown key(s) {[f'{section}.{k}' for k in bad]}; allowed in [{section}]: "
                             f"{sorted(known)}")
        updates = {k: _coerce(section, known[k], v) for k, v in values.items()}
        try:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **updates)})
        except ValueError as err:  # TrainConfig's own checks name the field: say which section it is in
            msg = str(err)
            raise ValueError(msg if msg.startswith("config:") else f"config: {section}.{msg}") from None
    return cfg


def read_toml(path, what: str = "config file") -> dict:
    """A TOML file as a dict; a missing, unreadable, non-UTF-8 or malformed file is an error naming it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a {what}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise file_error(err, path, "read") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None


def _without_removed(data: dict, run_file: bool) -> dict:
    out = {}
    for section, values in data.items():
        if isinstance(values, dict):
            for k in values:
                why = REMOVED_KEYS.get(f"{section}.{k}")
                if why and not run_file:
                    raise ValueError(f"config: {section}.{k} was removed: {why}")
            values = {k: v for k, v in values.items() if f"{section}.{k}" not in REMOVED_KEYS}
        out[section] = values
    return out


def load_config(path, base: FitConfig | None = None, *, run_file: bool = False) -> FitConfig:
    """Read a TOML config file (errors name the file); ``run_file`` as in :func:`config_from_dict`."""
    path = Path(path)
    data = read_toml(path)
    try:
        return config_from_dict(data, base, run_file=run_file)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def apply_overrides(cfg: FitConfig, assignments) -> FitConfig:
    """Apply ``section.key=value`` strings (values in TOML syntax; bare words are strings)."""
    for text in assignments or ():
        key, sep, raw = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {text!r}: expected section.key=value, e.g. train.steps=2000")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        name, dot, sub = name.partition(".")
        if dot and (section, name) == ("model", "options"):  # model.options.KEY=VALUE: one constructor argument
            value = {**cfg.model.options, sub: value}
        elif dot:
            raise ValueError(f"--set {text!r}: {section}.{name} has no keys of its own (only model.options.KEY)")
        cfg = config_from_dict({section: {name: value}}, cfg)
    return cfg


def _toml_value(v) -> str:
    """A value as TOML: strings as basic strings, escaped per the TOML spec (read back unchanged)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
        return '"' + "".join(short.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in v) + '"'
    if isinstance(v, dict):  # an inline table; keys quoted, so any key reads back
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def to_toml(cfg: FitConfig) -> str:
    """The resolved config as TOML (read back by :func:`load_config`)."""
    lines = []
    for section, values in asdict(cfg).items():
        lines.append(f"[{section}]")
        values = {k: 0 if v is None and k in _NONE_IS_ZERO else v for k, v in values.items()}
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()  # absent: None
                  if v is not None and f"{section}.{k}" not in _ELSEWHERE]
        lines.append("")
    return "\n".join(lines)
