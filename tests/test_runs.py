"""Grouped CSV -> run directory: fit / evaluate / predict / report, resume after SIGKILL, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bayesmeta as bm
from bayesmeta.cli import main

SMALL = ["--set", "model.hidden=[16]", "--set", "model.latent_dim=2", "--set", "train.tasks_per_step=8"]


def _write_csv(path: Path, groups: int, seed: int, prefix: str = "g", min_rows: int = 4) -> Path:
    g = torch.Generator().manual_seed(seed)
    lines = ["subject,time,response"]
    for i in range(groups):
        a, b = 2 + torch.randn((), generator=g), torch.randn((), generator=g)
        n = int(torch.randint(min_rows, min_rows + 6, (), generator=g))
        for x in (5 * torch.rand(n, generator=g)).tolist():
            lines.append(f"{prefix}{i},{x:.4f},{float(a * torch.exp(torch.tensor(-x / 2)) + b):.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train": _write_csv(d / "train.csv", 20, 0), "test": _write_csv(d / "test.csv", 8, 1, "t"), "dir": d}


def _fit(data, out, *extra):
    return main(["fit", "--data", str(data["train"]), "--task", "subject", "--x", "time", "--y", "response",
                 "--steps", "20", "--out", str(out), "--no-progress", *SMALL, *extra])


def test_fit_evaluate_predict_report_end_to_end(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(data, run) == 0
    for name in ("config.toml", "learner.pt", "checkpoints/last.pt", "metrics.jsonl", "split.json", "run.json"):
        assert (run / name).is_file(), name
    assert not (run / "standardisation.json").exists()  # the model owns its scaling; the run rescales nothing
    cfg = bm.runs.load_config(run / "config.toml")
    assert cfg.data.x == ("time",) and cfg.model.hidden == (16,) and cfg.train.steps == 20
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 16 and len(split["validation"]) == 4  # tasks, not rows, are split
    # the held-out groups are validated on as the run trains: scores on their steps' metrics lines
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [line for line in lines if "val_nll" in line]
    assert [line["step"] for line in scored] == [20] and {"val_coverage_90", "val_nll_K1"} <= set(scored[0])
    info = json.loads((run / "run.json").read_text())
    assert info["best_validation_step"] == 20 and info["validation_groups"] == 4
    assert main(["evaluate", str(run), "--data", str(data["test"]), "--shots", "1", "3", "--baseline", "fomaml",
                 "--baseline-steps", "3"]) == 0
    ev = bm.Evaluation.from_json(run / "eval.json")
    assert {(r["method"], r["shots"]) for r in ev.summary} == {("bayes", 1), ("bayes", 3), ("fomaml", 1), ("fomaml", 3)}
    assert {r["task"] for r in ev.rows} == {f"t{i}" for i in range(8)}  # the data's own task ids
    (data["dir"] / "support.csv").write_text("time,response\n0.5,3.0\n1.0,2.5\n")
    (data["dir"] / "query.csv").write_text("time\n0.0\n2.0\n4.0\n")
    assert main(["predict", str(run), "--support", str(data["dir"] / "support.csv"), "--query",
                 str(data["dir"] / "query.csv"), "--out", str(tmp_path / "preds.csv")]) == 0
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0] == ("subject,time,response_mean,response_sd,response_lower50,response_upper50,"
                        "response_lower90,response_upper90") and len(lines) == 4
    mean, sd, lo90, hi90 = (float(lines[1].split(",")[i]) for i in (2, 3, 6, 7))
    assert lo90 < mean < hi90 and sd > 0
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_text().count("data:image/png;base64,") >= 4
    assert "| bayes | 3 |" in capsys.readouterr().out


def test_the_run_fits_the_model_to_the_data_as_given_and_predicts_in_its_units(data, tmp_path):
    run = tmp_path / "run"
    assert _fit(data, run) == 0
    learner = bm.BayesLearner.load(run / "learner.pt")
    scaling = learner.model.scaling  # the shipped neural model's own scaling, fitted to the training groups
    ds = bm.tasks.TaskDataset.from_csv(data["train"], task="subject", x=["time"], y=["response"])
    train_ids = set(json.loads((run / "split.json").read_text())["train"])
    ys = np.concatenate([y for t, y in zip(ds.task_ids, ds.y, strict=True) if t in train_ids])
    assert scaling.fitted and abs(float(scaling.y_shift[0]) - float(ys.mean())) < 1e-4
    xs, ys_ = torch.tensor([[[0.5], [1.0]]]), torch.tensor([[[3.0], [2.5]]])
    from bayesmeta.runs import predictor
    pred = predictor(learner, seed=0)(xs, ys_, torch.tensor([[[2.0]]]), torch.ones(1, 2, dtype=torch.bool))
    direct = learner.adapt(xs, ys_).predict(torch.tensor([[[2.0]]]), seed=0)
    assert torch.equal(pred.mean, direct.mean)


def test_a_run_of_an_earlier_version_predicts_but_is_not_resumed(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(data, run) == 0
    std = {"x_mean": [1.0], "x_std": [2.0], "y_mean": [3.0], "y_std": [4.0]}  # an earlier version's own file
    (run / "standardisation.json").write_text(json.dumps(std))
    assert main(["fit", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "older bayesmeta on standardised data" in capsys.readouterr().err
    from bayesmeta.runs import load_fitted as _load_fitted
    _, learner = _load_fitted(run)  # the maps move into the model's scaling
    assert float(learner.model.scaling.y_scale[0]) == 4.0 and float(learner.guide.input_scaling.x_shift[0]) == 1.0


def test_standardisation_round_trip():
    ds = bm.tasks.TaskDataset.from_arrays(["a"] * 3 + ["b"] * 3, [[1.0, 5], [2, 5], [3, 5], [4, 5], [5, 5], [6, 5]],
                                          [1.0, 2, 3, 4, 5, 7])
    std = ds.fit_standardization()
    assert std.x_std[1] == 1.0  # a constant column is centred, not divided by zero
    back = bm.tasks.Standardization.from_dict(json.loads(json.dumps(std.to_dict())))
    assert back == std
    y = torch.tensor([[[0.5], [7.0]]], dtype=torch.float64)
    assert torch.allclose(std.y_inverse(std.y(y)), y)
    b = std.batch(ds.to_batch(dtype=torch.float64))
    assert abs(float(b.y_support[b.mask_support].mean())) < 1e-12


def _run_fit_subprocess(data, out, *extra, env=None):
    cmd = [sys.executable, "-m", "bayesmeta", "fit", "--data", str(data["train"]), "--task", "subject", "--x", "time",
           "--y", "response", "--steps", "150", "--out", str(out), "--no-progress", *SMALL,
           "--set", "train.checkpoint_every=10", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    full = _run_fit_subprocess(data, tmp_path / "full", env=env)
    killed = _run_fit_subprocess(data, tmp_path / "killed", env=env)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere between two checkpoints, or during a write
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    _, err = full.communicate()
    assert full.returncode == 0, err.decode()
    state = bm.inference.load_checkpoint(ckpt)  # never corrupt
    assert 10 <= state["step"] < 150, "the kill should land mid-run"
    resumed = subprocess.run([sys.executable, "-m", "bayesmeta", "fit", "--out", str(tmp_path / "killed"), "--resume",
                              "--no-progress"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full" / "learner.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "learner.pt", weights_only=True)
    for key in ("model_state", "guide_state"):
        for name, v in a[key].items():
            assert torch.equal(v, b[key][name]), (key, name)


@pytest.mark.parametrize(("content", "match"), [
    ("subject,time\ng0,1.0\n", "missing y column\\(s\\) \\['response'\\]"),
    ("subject,time,response\ng0,1.0,2.0\ng0,abc,3.0\n", r"row 3, column 'time': not a number: 'abc'"),
    ("subject,time,response\ng0,1.0,nan\n", r"row 2, column 'response': non-finite value"),
    ("subject,time,response\ng0,1.0,inf\n", r"row 2, column 'response': non-finite value"),
    ("subject,time,time,response\ng0,1,1,2\n", r"duplicate column name\(s\) \['time'\]"),
    ("", "empty file"),
    ("subject,time,response\ng0,1.0,2.0\ng0,2.0,3.0\n", r"only 1 task \(subject=\['g0'\]\)"),
])
def test_bad_training_files(tmp_path, capsys, content, match):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    rc = main(["fit", "--data", str(bad), "--task", "subject", "--x", "time", "--y", "response", "--steps", "2",
               "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err
    import re
    assert re.search(match, err), err


def test_bad_config_resume_and_existing_out(data, tmp_path, capsys):
    cfg = tmp_path / "fit.toml"
    cfg.write_text("[train]\nstepz = 3\n")
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "a")]) == 2
    assert "unknown key(s) ['train.stepz']" in capsys.readouterr().err
    assert main(["fit", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no config.toml" in capsys.readouterr().err
    run = tmp_path / "run"
    assert _fit(data, run) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert _fit(data, run) == 2
    assert "is an existing run; use --resume to continue it or --force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    (run / "checkpoints" / "last.pt").unlink()
    assert main(["fit", "--out", str(run), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_evaluate_reports_small_tasks_and_refuses_when_none_fit(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(data, run) == 0
    small = _write_csv(tmp_path / "small.csv", 3, 5, "s", min_rows=2)
    sizes = bm.tasks.TaskDataset.from_csv(small, task="subject", x="time", y="response").sizes
    k = min(sizes)
    assert main(["evaluate", str(run), "--data", str(small), "--shots", str(k)]) == 0
    err = capsys.readouterr().err
    assert f"shots={k}: " in err and "skipped" in err
    assert main(["evaluate", str(run), "--data", str(small), "--shots", "50"]) == 2
    assert "no task has more than 50 rows" in capsys.readouterr().err


def test_predict_bad_files_name_file_and_row(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(data, run) == 0
    sup, query = tmp_path / "s.csv", tmp_path / "q.csv"
    sup.write_text("time,response\n0.5,3.0\n")
    query.write_text("time\n1.0\n\nfoo\n")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "--support", str(sup), "--query", str(query), "--out", str(out)]) == 2
    assert f"{query}: row 4, column 'time': not a number" in capsys.readouterr().err
    query.write_text("days\n1.0\n")
    assert main(["predict", str(run), "--support", str(sup), "--query", str(query), "--out", str(out)]) == 2
    assert "missing x column(s) ['time']" in capsys.readouterr().err
    sup.write_text("time\n0.5\n")
    assert main(["predict", str(run), "--support", str(sup), "--query", str(query), "--out", str(out)]) == 2
    assert "missing y column(s) ['response']" in capsys.readouterr().err
    assert not out.exists()


def _write_counts_csv(path: Path, groups: int, seed: int) -> Path:
    """Counts with a log exposure per row: y ~ Poisson(exposure * exp(b_i + w_i x))."""
    g = torch.Generator().manual_seed(seed)
    lines = ["site,dose,log_exposure,count"]
    for i in range(groups):
        b, w = 1.0 + 0.3 * torch.randn((), generator=g), 0.5 * torch.randn((), generator=g)
        for _ in range(int(torch.randint(5, 10, (), generator=g))):
            x, le = float(torch.rand((), generator=g) * 2 - 1), float(torch.rand((), generator=g))
            count = int(torch.poisson(torch.exp(b + w * x + le), generator=g))
            lines.append(f"s{i},{x:.3f},{le:.3f},{count}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_evaluate_predict_counts_with_an_offset(tmp_path, capsys):
    train, test = _write_counts_csv(tmp_path / "train.csv", 30, 0), _write_counts_csv(tmp_path / "test.csv", 6, 1)
    run = tmp_path / "run"
    assert main(["fit", "--data", str(train), "--task", "site", "--x", "dose", "--y", "count", "--model", "linear",
                 "--likelihood", "poisson", "--offset", "log_exposure", "--steps", "40", "--out", str(run),
                 "--no-progress"]) == 0
    scaling = bm.BayesLearner.load(run / "learner.pt").model.scaling  # the GLM's own preconditioning
    assert not scaling.outputs and float(scaling.y_shift[0]) == 0.0 and float(scaling.y_scale[0]) == 1.0  # counts
    assert float(scaling.x_shift[1]) == 0.0 and float(scaling.x_scale[1]) == 1.0  # the log exposure as it is
    assert float(scaling.x_scale[0]) != 1.0  # the dose column preconditions the coefficients
    assert main(["evaluate", str(run), "--data", str(test), "--shots", "1", "3"]) == 0
    ev = bm.Evaluation.from_json(run / "eval.json")
    assert all(0.0 <= r["coverage_90"] <= 1.0 and math.isfinite(r["nll"]) for r in ev.summary)
    (tmp_path / "support.csv").write_text("dose,log_exposure,count\n0.5,0.2,4\n-0.5,0.9,3\n")
    (tmp_path / "query.csv").write_text("dose,log_exposure\n0.0,0.0\n0.9,1.0\n")
    assert main(["predict", str(run), "--support", str(tmp_path / "support.csv"), "--query",
                 str(tmp_path / "query.csv"), "--out", str(tmp_path / "preds.csv")]) == 0
    rows = [line.split(",") for line in (tmp_path / "preds.csv").read_text().splitlines()]
    header = rows[0]
    lo, hi = header.index("count_lower90"), header.index("count_upper90")
    for r in rows[1:]:  # expected counts; integer interval ends
        assert float(r[header.index("count_mean")]) > 0
        assert float(r[lo]) == round(float(r[lo])) and float(r[hi]) == round(float(r[hi])) and float(r[lo]) <= float(r[hi])
    assert "unreliable" not in capsys.readouterr().err
    # a count the fitted model cannot explain (1e6 where it expects a few): the weights collapse, and predict says so
    (tmp_path / "support.csv").write_text("site,dose,log_exposure,count\nodd,0.5,0.2,1000000\nodd,-0.5,0.9,3\n"
                                          "fine,0.5,0.2,4\n")
    (tmp_path / "query.csv").write_text("site,dose,log_exposure\nodd,0.0,0.0\nfine,0.0,0.0\n")
    assert main(["predict", str(tmp_path / "run"), "--support", str(tmp_path / "support.csv"), "--query",
                 str(tmp_path / "query.csv"), "--out", str(tmp_path / "preds.csv"), "--force"]) == 0
    err = capsys.readouterr().err
    assert "unreliable (Pareto k > 0.7): 'odd'" in err and "'fine'" not in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--likelihood", "poisson"], "model.kind must be 'linear'"),
    (["--model", "linear", "--likelihood", "binomial"], "data.trials"),
    (["--model", "linear", "--likelihood", "bernoulli", "--offset", "time"], "data.offset"),
])
def test_likelihood_flags_that_do_not_fit_together_are_refused(data, tmp_path, capsys, flags, message):
    rc = main(["fit", "--data", str(data["train"]), "--task", "subject", "--x", "time", "--y", "response", "--steps", "2",
               "--out", str(tmp_path / "r"), *flags])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
