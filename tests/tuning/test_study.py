"""Tuning studies: trials are run directories, the best config fits as it is, studies survive a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bayesmeta as bm
from bayesmeta.cli import main
from bayesmeta.runs.config import load_config

optuna = pytest.importorskip("optuna")

FIT = """[data]
path = "{path}"
task = "subject"
x = ["time"]
y = ["response"]

[model]
latent_dim = 2
hidden = [16]
encoder_hidden = [16]
num_particles = 2

[train]
steps = {steps}
tasks_per_step = 8
val_every = {val_every}
checkpoint_every = {val_every}
val_shots = [1]
"""
SPACE = """[space.train]
lr = {{ low = 3e-4, high = 3e-3, log = true }}

[space.model]
width = [8, 16]

[study]
sampler = "random"
trials = {trials}

[objective]
shots = [2]
"""


def _csv(path: Path, groups: int = 20) -> Path:
    import torch

    g = torch.Generator().manual_seed(0)
    lines = ["subject,time,response"]
    for i in range(groups):
        a = 2 + torch.randn((), generator=g)
        for x in (5 * torch.rand(8, generator=g)).tolist():
            lines.append(f"g{i},{x:.4f},{float(a * torch.exp(torch.tensor(-x / 2))):.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def study_files(tmp_path):
    data = _csv(tmp_path / "train.csv")

    def write(steps=20, trials=3):
        (tmp_path / "fit.toml").write_text(FIT.format(path=data, steps=steps, val_every=min(10, steps)))
        (tmp_path / "space.toml").write_text(SPACE.format(trials=trials))
        return tmp_path / "fit.toml", tmp_path / "space.toml"
    return write


def test_study_runs_trials_as_run_directories_and_writes_a_usable_best_config(study_files, tmp_path, capsys):
    fit, space = study_files()
    out = tmp_path / "study"
    result = bm.tune(fit, space, out, progress=False)
    rows = result.rows
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert rows[0]["defaults"] and rows[0]["params"] == {"train.lr": 3e-3, "model.width": 16}  # the baseline
    for r in rows:
        run = out / r["run"]
        cfg = load_config(run / "config.toml")
        assert cfg.train.lr == pytest.approx(r["params"]["train.lr"]) and cfg.model.hidden == (r["params"]["model.width"],)
        assert cfg.train.val_shots == (2,)  # validated at the objective's shot count
        trial = json.loads((run / "trial.json").read_text())
        assert trial["value"] == pytest.approx(r["value"])
        # the objective is the validation NLL at the step the fit kept, as recorded in its metrics
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        kept = [line for line in lines if line.get("val_nll") is not None and line["step"] == trial["best_step"]]
        assert kept and kept[0]["val_nll_K2"] == pytest.approx(r["value"])
        # every validation was reported to Optuna (what a pruner reads)
        frozen = result.study.trials[r["number"]]
        assert sorted(frozen.intermediate_values) == [10, 20]
    best = result.best
    assert best["value"] == min(r["value"] for r in rows)
    for name in ("best.toml", "trials.csv", "summary.md", "report.html", "results.json", "plots/optimization_history.png"):
        assert (out / name).is_file(), name
    assert load_config(out / "best.toml") == load_config(out / best["run"] / "config.toml")
    # best.toml is accepted by `bayesmeta fit --config` as it is
    assert main(["fit", "--config", str(out / "best.toml"), "--out", str(tmp_path / "refit"), "--no-progress"]) == 0
    assert load_config(tmp_path / "refit" / "config.toml").model == load_config(out / "best.toml").model
    # a second call continues the study (more trials, none lost); the report command rewrites the report
    more = bm.tune(None, None, out, trials=4, progress=False)
    assert [r["number"] for r in more.rows] == [0, 1, 2, 3]
    assert [r["value"] for r in more.rows[:3]] == [r["value"] for r in rows]
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


def test_a_worker_killed_mid_trial_loses_no_finished_trial(study_files, tmp_path):
    fit, space = study_files(steps=400, trials=3)
    out = tmp_path / "study"
    bm.tuning.open_study(out, config=fit, space=space)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bayesmeta", "tune", "--out", str(out), "--no-progress", "--threads", "1"]
    worker = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 240
    try:
        while not (out / "trials" / "0001" / "checkpoints" / "last.pt").exists():  # trial 0 done, trial 1 training
            assert worker.poll() is None and time.time() < deadline, "the worker ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    before = bm.tuning.TuneResult.load(out).rows
    assert [r["state"] for r in before[:2]] == ["COMPLETE", "RUNNING"]
    done_value = before[0]["value"]
    assert main(["tune", "--out", str(out), "--no-progress", "--threads", "1"]) == 0  # start it again
    after = bm.tuning.TuneResult.load(out).rows
    assert after[0]["state"] == "COMPLETE" and after[0]["value"] == done_value  # kept as it was
    assert after[1]["state"] == "FAIL"  # the killed trial
    retry = next(r for r in after if r["retry_of"] == 1)
    assert retry["state"] == "COMPLETE" and retry["params"] == before[1]["params"]  # run again, same settings
    assert sum(r["state"] == "COMPLETE" for r in after) == 3


def test_tune_refuses_bad_input_and_keeps_the_study(study_files, tmp_path, capsys):
    fit, space = study_files()
    out = tmp_path / "study"
    assert main(["tune", "--config", str(fit), "--out", str(out)]) == 2
    assert "a new study needs both --config and --space" in capsys.readouterr().err
    bad = tmp_path / "bad_space.toml"
    bad.write_text("[space.model]\nlatent_dim = { low = 4, high = 2 }\n")
    assert main(["tune", "--config", str(fit), "--space", str(bad), "--out", str(out)]) == 2
    assert "model.latent_dim is an empty range" in capsys.readouterr().err
    assert main(["tune", "--config", str(fit), "--space", str(space), "--out", str(out), "--storage",
                 "notadb://nowhere"]) == 2
    assert "storage 'notadb://nowhere' cannot be opened" in capsys.readouterr().err
    assert not out.exists()  # nothing created by the refused commands
    bm.tune(fit, space, out, trials=1, progress=False)
    journal = (out / "study.journal").read_bytes()
    other = tmp_path / "other.toml"
    other.write_text(SPACE.format(trials=3).replace("width = [8, 16]", "width = [8, 32]"))
    with pytest.raises(ValueError, match="started with another search space"):
        bm.tune(fit, other, out, trials=2, progress=False)
    assert (out / "study.journal").read_bytes() == journal  # nothing of the running study touched
    with pytest.raises(ValueError, match="give a number of trials or a timeout"):
        bm.tuning.run_worker(tmp_path / "study", trials=0, timeout=0)


def test_report_leaves_the_matplotlib_style_as_it_was(study_files, tmp_path):
    import matplotlib

    fit, space = study_files(steps=10, trials=2)
    before = dict(matplotlib.rcParams)
    bm.tune(fit, space, tmp_path / "study", progress=False)
    assert (tmp_path / "study" / "plots" / "param_importances.png").is_file()
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


def test_a_trial_the_pruner_stops_finishes_with_the_value_it_reached(study_files, tmp_path):
    """Stopped trials are finished ones for the sampler (a GP learns nothing from pruned trials) and leave no run."""
    from bayesmeta.tuning.objective import trial_objective

    fit, space = study_files(steps=30)
    base, space_obj = load_config(fit), bm.tuning.load_space(space)
    out = tmp_path / "study"
    (out / "trials").mkdir(parents=True)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=-100.0))  # any NLL above -100: stop
    study.optimize(trial_objective(base, space_obj, out), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["stopped_at"] == 10
    assert t.value == t.intermediate_values[10]  # the best (only) validation NLL it reached
    assert not (out / "trials" / "0000").exists()  # a stopped run is not a trained run: removed


def test_a_worker_stops_after_three_failed_trials_in_a_row():
    from bayesmeta.tuning.study import _StopAfterFailures

    calls = []

    def objective(trial):
        calls.append(trial.number)
        raise ValueError("this setting cannot train")

    study = optuna.create_study()
    with pytest.warns(UserWarning, match=r"3 trials in a row failed .*this worker stops"):
        study.optimize(objective, n_trials=10, catch=(ValueError,), callbacks=[_StopAfterFailures(3)])
    assert calls == [0, 1, 2]


@pytest.mark.parametrize("edit, match", [
    ("val_fraction = 0.0", "data.val_fraction is 0"),
    ("kind = \"linear\"", "is fitted exactly"),
])
def test_a_study_that_could_not_score_a_trial_is_refused_before_it_starts(study_files, tmp_path, edit, match):
    fit, space = study_files()
    text = fit.read_text()
    text = text.replace('y = ["response"]\n', f'y = ["response"]\n{edit}\n') if "val_fraction" in edit else \
        text.replace("[model]\n", f"[model]\n{edit}\n").replace("latent_dim = 2\n", "").replace(
            "encoder_hidden = [16]\n", "").replace("num_particles = 2\n", "")
    fit.write_text(text)
    (tmp_path / "space.toml").write_text("[space.train]\nlr = { low = 3e-4, high = 3e-3, log = true }\n"
                                         "[study]\ntrials = 2\n")
    with pytest.raises(ValueError, match=match):
        bm.tune(fit, space, tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists()


def test_a_diverging_trial_is_a_bad_value_for_the_sampler_not_a_failure(study_files, tmp_path):
    fit, _ = study_files(steps=20, trials=2)
    space = tmp_path / "space_lr.toml"
    space.write_text("[space.train]\nlr = [3e-3, 1e6]\n[study]\nsampler = \"random\"\ntrials = 2\n"
                     "[objective]\nshots = [2]\n")
    out = tmp_path / "study"
    study, _, _ = bm.tuning.open_study(out, config=fit, space=space)
    study.enqueue_trial({"train.lr": 1e6})  # after trial 0 (the defaults): diverges at once
    rows = bm.tune(None, None, out, progress=False).rows
    assert [r["state"] for r in rows] == ["COMPLETE", "DIVERGED"]
    # it never validated: it reports the worst finished value, so the sampler learns the region is bad
    assert rows[1]["value"] == rows[0]["value"] and rows[1]["run"] is None
    assert bm.tuning.TuneResult.load(out).best["number"] == 0  # never chosen as the best


def test_objective_shots_no_validation_group_can_serve_are_refused_up_front(study_files, tmp_path, capsys):
    fit, space = study_files()
    space.write_text(space.read_text().replace("shots = [2]", "shots = [2, 8]"))  # validation groups have 8 rows
    out = tmp_path / "study"
    assert main(["tune", "--config", str(fit), "--space", str(space), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "search space: objective.shots: shots=8 needs a validation group with more than 8 rows" in err
    assert "has 8 rows; use shots below 8" in err
    assert not out.exists()


def test_a_study_whose_data_changed_is_not_continued(study_files, tmp_path, capsys):
    from bayesmeta.tuning.storage import check_data_unchanged

    fit, space = study_files(steps=10, trials=1)
    out = tmp_path / "study"
    bm.tune(fit, space, out, progress=False, report=False)
    recorded = json.loads((out / "study.json").read_text())["data_sha256"]
    data = tmp_path / "train.csv"
    original = data.read_text()
    data.write_text(original.replace("g1,", "g1,1"))  # same groups, other values
    journal = (out / "study.journal").read_bytes()
    capsys.readouterr()
    assert main(["tune", "--out", str(out), "--trials", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{data}: the data file changed since this study started (sha256 {recorded[:12]}..." in err
    assert "start a new study directory (another --out)" in err
    with pytest.raises(ValueError, match="the data file changed since this study started"):
        bm.tuning.run_worker(out, trials=2)
    assert (out / "study.journal").read_bytes() == journal  # no trial run on the new data
    assert bm.tuning.TuneResult.load(out).rows  # its report still reads
    data.write_text(original)
    check_data_unchanged(out)  # the data as the study started: it continues
