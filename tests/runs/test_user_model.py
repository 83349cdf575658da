"""A model class of your own from the command line: ``--model file.py:Class`` (and ``[model] kind``)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bayesmeta as bm
from bayesmeta.cli import main
from bayesmeta.runs.config import ModelConfig, config_from_dict, load_config, to_toml

MODEL_SOURCE = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    from pyro.nn import PyroModule


    class HerdModel(PyroModule):
        """Varying intercepts with hyperpriors: mu, tau and sigma are global latent sites."""

        def __init__(self, mu_scale=10.0, tau_scale=5.0):
            super().__init__()
            self.mu_scale, self.tau_scale = mu_scale, tau_scale

        def forward(self, x, y=None, mask=None):
            mu = pyro.sample("mu", dist.Normal(0.0, self.mu_scale))
            tau = pyro.sample("tau", dist.HalfNormal(self.tau_scale))
            sigma = pyro.sample("sigma", dist.HalfNormal(5.0))
            with pyro.plate("tasks", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                with pyro.plate("points", x.shape[1], dim=-1):
                    return pyro.sample("y", dist.Normal(mu + tau * z, sigma).mask(mask), obs=y)


    NOT_A_MODEL = 3


    class Broken(PyroModule):
        def __init__(self):
            super().__init__()
            raise RuntimeError("no such assay")


    class Plain:
        pass
''')


def _csv(path: Path, groups: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["herd,period,cases"]
    for g in range(groups):
        a = 3.0 + 1.5 * rng.standard_normal()
        for t in range(6):
            lines.append(f"h{g},{t},{a + 0.5 * rng.standard_normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def user_files(tmp_path):
    model = tmp_path / "models" / "herd_model.py"
    model.parent.mkdir()
    model.write_text(MODEL_SOURCE)
    return model, _csv(tmp_path / "train.csv", 12, 0), _csv(tmp_path / "test.csv", 6, 1)


def _fit(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["fit", "--data", str(data), "--task", "herd", "--x", "period", "--y", "cases", "--model",
                 f"{model}:HerdModel", "--steps", "40", "--no-progress", "--out", str(out), *extra])


def test_fit_evaluate_predict_report_with_a_model_file(user_files, tmp_path, monkeypatch):
    model, train, test = user_files
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    assert _fit(Path("models/herd_model.py"), train, run, "--set", "model.options.tau_scale=2.0") == 0
    cfg = load_config(run / "config.toml")
    assert cfg.model.kind == f"{model.resolve()}:HerdModel"  # absolute in the run: works from any directory
    assert cfg.model.options == {"tau_scale": 2.0}
    monkeypatch.chdir(tmp_path / "models")
    learner = bm.runs.load_fitted(run)[1]
    assert [s.name for s in learner.program.global_sites] == ["mu", "tau", "sigma"]
    assert learner.model.tau_scale == 2.0  # rebuilt with the run's options
    assert main(["evaluate", str(run), "--data", str(test), "--shots", "1", "3", "--no-progress"]) == 0
    rows = json.loads((run / "eval.json").read_text())["summary"]
    assert {r["shots"] for r in rows} == {1, 3} and all(np.isfinite(r["nll"]) for r in rows)
    support = tmp_path / "support.csv"
    support.write_text("herd,period,cases\nnew,0,2.5\nnew,1,3.1\n")
    query = tmp_path / "query.csv"
    query.write_text("herd,period\nnew,2\nnew,3\n")
    assert main(["predict", str(run), "--support", str(support), "--query", str(query),
                 "--out", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].startswith("herd,period,cases_mean,cases_sd") and len(lines) == 3
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()


def test_a_saved_learner_of_a_model_file_loads_in_a_fresh_interpreter(user_files, tmp_path):
    model, train, _ = user_files
    run = tmp_path / "run"
    assert _fit(model, train, run) == 0
    import subprocess
    import sys

    path = str(run / "learner.pt")
    code = (f"import bayesmeta as bm; l = bm.BayesLearner.load({path!r}); "
            "print(type(l.model).__name__, [s.name for s in l.program.global_sites])")
    env = {**os.environ, "PYTHONPATH": str(Path(bm.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "HerdModel"
    model.unlink()  # the file is gone: a clear error naming it, not "corrupt"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode != 0 and "which no longer exists" in done.stderr and str(model) in done.stderr


def test_the_toml_key_and_its_options_round_trip(tmp_path):
    cfg = config_from_dict({"model": {"kind": "models/m.py:Mine", "options": {"k": 3, "names": ["a", "b"],
                                                                           "scale": 0.5, "flag": True}}})
    path = tmp_path / "fit.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path).model == cfg.model
    assert cfg.model.custom and not ModelConfig().custom


@pytest.mark.parametrize("model_cfg, message", [
    ({"kind": "latent", "options": {"a": 1}}, "model.options must be empty for a built-in model"),
    ({"kind": "nonsense"}, "model.kind must be one of"),
    ({"kind": "m.py:Mine", "likelihood": "poisson"}, "model.likelihood must be left out with a model of your own"),
    ({"kind": "m.py:Mine", "options": 3}, "model.options must be a table"),
])
def test_bad_model_configs_name_the_key(model_cfg, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict({"model": model_cfg})


@pytest.mark.parametrize("spec, message", [
    ("{dir}/missing.py:HerdModel", "no such model file"),
    ("{model}:Nope", "has no 'Nope'"),
    ("{model}:NOT_A_MODEL", "is a int, not a class"),
    ("{model}:Plain", "is not a model"),
    ("{model}:Broken", "Broken() raised RuntimeError: no such assay"),
    ("no_such_module_xyz:Thing", "no module named 'no_such_module_xyz'"),
])
def test_a_bad_model_spec_is_one_line_naming_it(user_files, tmp_path, capsys, spec, message):
    model, train, _ = user_files
    spec = spec.format(dir=tmp_path, model=model)
    code = main(["fit", "--data", str(train), "--task", "herd", "--x", "period", "--y", "cases", "--model", spec,
                 "--steps", "5", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()  # nothing written


def test_options_that_do_not_fit_the_constructor_are_refused(user_files, tmp_path, capsys):
    model, train, _ = user_files
    code = _fit(model, train, tmp_path / "bad", "--set", "model.options.tau=1.0")
    err = capsys.readouterr().err
    assert code == 2 and "does not match its constructor" in err and "tau=1.0" in err
