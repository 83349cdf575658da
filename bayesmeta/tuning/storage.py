"""Tuning studies on Optuna: each trial is an ordinary run directory, the study survives kills.

A study directory holds::

    base.toml            the fit config every trial starts from (read back by workers and restarts)
    space.toml           the search space as given
    study.json           where the study is stored (the journal file, or a storage URL), its name and the
                         SHA-256 of its data file (a study whose data changed is not continued)
    study.journal        Optuna's journal (embedded storage: a file; several processes share it)
    trials/NNNN/         one run directory per trial (``bayesmeta fit`` layout: evaluate / report work)
    best.toml            the best trial's resolved config (``bayesmeta fit --config best.toml``)
    trials.csv, summary.md, plots/, report.html     written when a study ends (``bayesmeta report``)
    worker-N.log         what helper workers printed

Workers share the study through its storage; a worker killed mid-trial leaves that trial
``RUNNING`` in the journal: the next worker to start marks it failed and queues its parameters
again, so no finished trial is lost and no unfinished one is forgotten.
"""

from __future__ import annotations

import contextlib
import json
import uuid
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, read_json
from ..runs.config import FitConfig, load_config, to_toml
from .space import SearchSpace, load_space, space_from_dict

__all__ = ["BASE_FILE", "BEST_FILE", "SPACE_FILE", "check_data_unchanged", "default_values", "open_study"]

BASE_FILE, SPACE_FILE, JOURNAL_FILE, BEST_FILE = "base.toml", "space.toml", "study.journal", "best.toml"
META_FILE = "study.json"  # the storage (None: the journal file), the study's name in it, its data's SHA-256


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency; a broken install is possible
        raise ImportError("tuning needs Optuna: pip install 'optuna>=4'") from None
    return optuna


def default_values(base: FitConfig, space: SearchSpace) -> dict[str, Any] | None:
    """The base config's own value of every tuned parameter, or ``None`` if one lies outside the space."""
    out: dict[str, Any] = {}
    for p in space.params:
        if p.name in ("width", "depth", "encoder_width", "encoder_depth"):
            widths = base.model.hidden if p.name in ("width", "depth") else base.model.encoder_hidden
            if len(set(widths)) != 1:
                return None
            value: Any = widths[0] if p.name.endswith("width") else len(widths)
        else:
            value = getattr(getattr(base, p.section), p.name)
            if p.key == "train.lr" and value is None:  # the learner's own default (fit configs train a BayesLearner)
                from ..learners import BayesLearner

                value = BayesLearner.default_lr
        inside = value in p.choices if p.choices else (value is not None and p.low <= value <= p.high)
        if not inside:
            return None
        out[p.key] = value
    return out


def _storage(out: Path, storage: str | None, *, new: bool):
    optuna = _optuna()
    if storage:
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as err:  # SQLAlchemy raises many kinds: say which storage could not be opened
            raise ValueError(f"storage {storage!r} cannot be opened ({type(err).__name__}: {err})") from None
    from optuna.storages.journal import JournalFileBackend

    path = out / JOURNAL_FILE
    if not new and not path.is_file():
        raise FileNotFoundError(f"{path}: the study's journal is missing (was the study directory copied in part?)")
    try:
        backend = JournalFileBackend(str(path))
    except OSError as err:
        raise OSError(f"{path}: cannot open the study journal ({err.strerror or err})") from None
    return optuna.storages.JournalStorage(backend)


def _sampler(space: SearchSpace, seed: int):
    optuna = _optuna()
    name = space.options.sampler
    if name == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature and "no greenlet" notices
            return optuna.samplers.GPSampler(seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(space: SearchSpace):
    optuna = _optuna()
    if space.options.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


def open_study(out, *, config=None, space=None, storage: str | None = None, seed_offset: int = 0):
    """Create the study in directory ``out`` (with ``config`` and ``space``) or open the existing one.

    Returns ``(study, base config, space)``. For an existing study ``config``, ``space`` and
    ``storage`` may be omitted (the study directory remembers them); given, they must be the ones
    it was started with.
    """
    from ..runs.data import data_fingerprint

    optuna = _optuna()
    out = Path(out)
    new = not (out / BASE_FILE).is_file()
    if new:
        if config is None or space is None:
            raise ValueError(f"{out}: not a tuning study (no {BASE_FILE}); start one with a fit config and a space")
        base, space_obj, space_text = _read_inputs(config, space)
        _check_new(out, base, space_obj)
        base = replace(base, data=replace(base.data, path=str(Path(base.data.path).resolve())))
        meta = {"storage": storage, "study_name": f"bayesmeta-{uuid.uuid4().hex[:12]}",
                "data_sha256": data_fingerprint(base.data.path)}  # a continued study refuses changed data
    else:
        base, space_obj = load_config(out / BASE_FILE), load_space(out / SPACE_FILE)
        meta = read_json(out / META_FILE, "study's storage record")
        _check_same(out, base, space_obj, config, space)
        if storage is not None and storage != meta["storage"]:
            raise ValueError(f"{out}: this study lives in {meta['storage'] or 'its journal file'}; got storage "
                             f"{storage!r}")
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study ..." from every worker
    try:
        if new:
            written.append(out / JOURNAL_FILE)
        study = optuna.create_study(study_name=meta["study_name"], storage=_storage(out, meta["storage"], new=new),
                                    direction="minimize", load_if_exists=not new, pruner=_pruner(space_obj),
                                    sampler=_sampler(space_obj, (space_obj.options.seed + 7919 * seed_offset) % 2**32))
        if new:
            for path, text in ((out / META_FILE, json.dumps(meta, indent=1)), (out / SPACE_FILE, space_text),
                               (out / BASE_FILE, to_toml(base))):  # base.toml last: it marks a complete study
                written.append(path)
                atomic_write_text(text, path)
            _enqueue_defaults(study, base, space_obj)
    except BaseException:
        for path in written:  # a study that could not be created leaves nothing behind
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()  # only if it is empty now
        raise
    finally:
        optuna.logging.set_verbosity(level)
    return study, base, space_obj


def _check_new(out: Path, base: FitConfig, space: SearchSpace) -> None:
    """Refuse a study that could not run a single trial, before anything is written."""
    space.check(base)
    base.data.check_complete()
    base.check_consistent()
    if not Path(base.data.path).is_file():
        raise FileNotFoundError(f"config: data.path {base.data.path!r}: no such file")
    if not base.data.val_fraction:
        raise ValueError("config: data.val_fraction is 0: a study scores every trial on held-out groups; set it "
                         "above 0 (e.g. 0.2)")
    if base.model.likelihood == "gaussian" and base.model.kind != "latent":
        raise ValueError(f"config: model.kind={base.model.kind!r} is fitted exactly (type-II maximum likelihood): "
                         "there is no training run to tune; tune model.kind = 'latent' or a GLM")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is a non-empty directory and not a tuning study (no {BASE_FILE}); choose a new "
                         "study directory")
    from ..runs.data import check_val_shots, read_tasks, split_groups

    _, val = split_groups(read_tasks(base.data, base.data.path), base.data)  # the groups every trial validates on
    check_val_shots(val, space.options.shots, "search space: objective.shots")


def check_data_unchanged(out) -> None:
    """Refuse to run more trials of a study whose data file changed since it started (their scores would
    rank results on two data sets together); nothing to check for a study not created yet."""
    from ..runs.data import check_unchanged

    out = Path(out)
    if not (out / BASE_FILE).is_file():
        return
    path = Path(load_config(out / BASE_FILE).data.path)
    if not path.is_file():
        raise FileNotFoundError(f"{out / BASE_FILE}: data.path {str(path)!r}: no such file (the study's data)")
    meta = read_json(out / META_FILE, "study's storage record")
    check_unchanged(path, meta.get("data_sha256") if isinstance(meta, dict) else None, what="this study",
                    record=out / META_FILE, anew="start a new study directory (another --out) to tune on the new data")


def _enqueue_defaults(study, base: FitConfig, space: SearchSpace) -> None:
    if not space.options.enqueue_defaults:
        return
    values = default_values(base, space)
    if values is None:
        warnings.warn("tune: the fit config's own settings lie outside the search space, so no trial runs them "
                      "as the baseline", stacklevel=3)
    else:
        study.enqueue_trial(values, user_attrs={"defaults": True})


def _read_inputs(config, space) -> tuple[FitConfig, SearchSpace, str]:
    import tomllib

    base = config if isinstance(config, FitConfig) else load_config(config)
    if isinstance(space, SearchSpace):
        raise TypeError("tune: give the search space as a path or a dict (as in a space file), so the study "
                        "directory can keep it")
    if isinstance(space, dict):
        space_obj = space_from_dict(space)
        text = _dict_to_toml(space)
        if space_from_dict(tomllib.loads(text)) != space_obj:  # pragma: no cover - a writer bug
            raise AssertionError("search space did not survive its TOML round trip")
        return base, space_obj, text
    path = Path(space)
    space_obj = load_space(path)
    return base, space_obj, path.read_text(encoding="utf-8-sig")


def _dict_to_toml(data: dict) -> str:
    """A space dict (already checked by :func:`space_from_dict`) as the TOML of a space file."""
    from ..runs.config import _toml_value

    def value(v) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return _toml_value(v)

    tables = [(t, data[t]) for t in ("objective", "study") if data.get(t)]
    tables += [(f"space.{section}", keys) for section, keys in data.get("space", {}).items()]
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) for name, keys in tables)


def _check_same(out: Path, base: FitConfig, space: SearchSpace, config, given_space) -> None:
    if config is not None:
        other = config if isinstance(config, FitConfig) else load_config(config)
        other = replace(other, data=replace(other.data, path=str(Path(other.data.path).resolve())))
        if asdict(other) != asdict(base):
            raise ValueError(f"{out}: this study was started with another fit config ({out / BASE_FILE}); give no "
                             "--config to continue it, or start a new study directory")
    if given_space is not None:
        other_space = given_space if isinstance(given_space, SearchSpace) else (
            space_from_dict(given_space) if isinstance(given_space, dict) else load_space(given_space))
        # how long to run may change from one start to the next; what is searched may not
        budget = ("trials", "timeout")
        if other_space.params != space.params or {k: v for k, v in asdict(other_space.options).items() if k not in budget} \
                != {k: v for k, v in asdict(space.options).items() if k not in budget}:
            raise ValueError(f"{out}: this study was started with another search space ({out / SPACE_FILE}); give "
                             "no --space to continue it, or start a new study directory")
