"""`import bayesmeta` is light and quiet on a machine that never imported ArviZ."""

import os
import subprocess
import sys


def _run(code: str, cache_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_dir), PYTHONWARNINGS="error")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_does_not_load_heavy_optional_packages(tmp_path):
    out = _run("import sys, bayesmeta; print(sorted(m for m in ('arviz', 'xarray', 'pandas', 'matplotlib', 'optuna', "
               "'sqlalchemy', 'sklearn') if m in sys.modules))", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_first_arviz_use_of_the_day_raises_no_warning(tmp_path):
    # An empty cache directory is a user who has not imported ArviZ today: ArviZ 0.23 then warns.
    code = ("import torch, bayesmeta as bm\n"
            "k = bm.inference.importance.pareto_k(torch.randn(200, 3))\n"
            "assert k.shape == (3,)\n")
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr


def test_old_predictive_name_is_a_deprecated_alias():
    import pytest

    import bayesmeta as bm
    from bayesmeta import predictive

    with pytest.warns(DeprecationWarning, match="PosteriorPredictive"):
        assert bm.Predictive is bm.PosteriorPredictive
    with pytest.warns(DeprecationWarning, match="pyro.infer.Predictive"):
        assert predictive.deprecated_alias("bayesmeta", "Predictive") is bm.PosteriorPredictive
    # the package's own name is the protocol every predictive implements
    assert issubclass(bm.PosteriorPredictive, predictive.Predictive)
    with pytest.raises(AttributeError, match="no attribute 'Predictve'"):
        _ = bm.Predictve
