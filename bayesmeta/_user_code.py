"""Your own model classes, found by name: ``path/to/file.py:ClassName`` or ``package.module:ClassName``.

A Python file is imported under a name derived from its absolute path
(``bayesmeta_user.<stem>_<hash>``), the same name in every process, so a learner saved with a
model class from that file loads again anywhere the file is (``BayesLearner.load``, the command
line's ``predict`` / ``evaluate`` / ``report``). While the file runs, its own directory is on
``sys.path``: it may import modules beside it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["absolute_spec", "import_source", "is_class_spec", "load_class", "source_module_name"]

_PACKAGE = "bayesmeta_user"


def is_class_spec(text: str) -> bool:
    """``text`` names a class as ``file.py:Name`` or ``module:Name`` (not a built-in model kind)."""
    where, sep, name = text.rpartition(":")
    return bool(sep and where and name and name.replace(".", "").replace("_", "a").isalnum())


def _file_part(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def absolute_spec(spec: str) -> str:
    """``spec`` with its file (if it names one) as an absolute path, so it reads the same from any directory."""
    where, _, qualname = spec.rpartition(":")
    return f"{Path(where).resolve()}:{qualname}" if _file_part(where) else spec


def source_module_name(path) -> str:
    """The module name a source file is imported under (stable across processes and machines' sessions)."""
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"{_PACKAGE}.{stem}_{digest}"


def import_source(path) -> ModuleType:
    """Import the Python file ``path`` (once per process) under :func:`source_module_name`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file raised while it ran (the message names the file and the error).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    name = source_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    if _PACKAGE not in sys.modules:
        pkg = ModuleType(_PACKAGE)
        pkg.__path__ = []
        sys.modules[_PACKAGE] = pkg
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        del sys.modules[name]
        if isinstance(err, Exception):
            raise ValueError(f"{path}: the model file raised {type(err).__name__}: {err}") from err
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_class(spec: str, *, base=None):
    """The class ``spec`` names: ``path/to/file.py:ClassName`` (relative to ``base``, default the
    working directory) or ``package.module:ClassName``; nested names as ``Outer.Inner``.

    Raises:
        ValueError: ``spec`` is not of that form, names something that is not a class, or its module
            cannot be imported.
        FileNotFoundError: no such file.
    """
    where, _, qualname = spec.rpartition(":")
    if not is_class_spec(spec):
        raise ValueError(f"{spec!r}: expected path/to/file.py:ClassName or package.module:ClassName")
    if _file_part(where):
        path = Path(where)
        module = import_source(path if path.is_absolute() or base is None else Path(base) / path)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise ValueError(f"{spec!r}: no module named {where!r} (give a file as path/to/file.py:ClassName)") \
                from err
    obj = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{spec!r}: {where} has no {qualname!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{spec!r}: {qualname} is a {type(obj).__name__}, not a class")
    return obj
