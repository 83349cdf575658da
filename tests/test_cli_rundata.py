"""A run's data (bayesmeta.cli.rundata): role columns, log exposures, the data file's fingerprint, validation shots."""

import json
import math
from pathlib import Path

import torch

from bayesmeta.cli import main

SMALL = ["--set", "model.hidden=[16]", "--set", "model.latent_dim=2", "--set", "train.tasks_per_step=8"]


def _grouped(path: Path, groups: int = 12, rows: int = 6, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    lines = ["subject,time,response"]
    for i in range(groups):
        a = 2 + torch.randn((), generator=g)
        for x in (5 * torch.rand(rows, generator=g)).tolist():
            lines.append(f"g{i},{x:.4f},{float(a * math.exp(-x / 2)):.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _counts(path: Path, groups: int = 12) -> Path:
    """Counts with both a raw exposure (50..1000) and its log."""
    g = torch.Generator().manual_seed(1)
    lines = ["site,dose,exposure,log_exposure,n,count"]
    for i in range(groups):
        for _ in range(5):
            x, e = float(torch.rand((), generator=g)), float(50 + 950 * torch.rand((), generator=g))
            count = int(torch.poisson(torch.tensor(e * 0.01 * math.exp(x)), generator=g))
            lines.append(f"s{i},{x:.3f},{e:.1f},{math.log(e):.4f},{count + 3},{count}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _fit(data, out, *extra):
    return main(["fit", "--data", str(data), "--task", "subject", "--x", "time", "--y", "response", "--steps", "20",
                 "--out", str(out), "--no-progress", *SMALL, *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_raw_exposure_as_offset_is_refused_saying_to_pass_its_log(tmp_path, capsys):
    data, run = _counts(tmp_path / "counts.csv"), tmp_path / "run"
    argv = ["fit", "--data", str(data), "--task", "site", "--x", "dose", "--y", "count", "--model", "linear",
            "--likelihood", "poisson", "--steps", "5", "--out", str(run), "--no-progress"]
    assert main([*argv, "--offset", "exposure"]) == 2
    err = _one_line(capsys)
    assert f"{data}: row 2, column 'exposure' (--offset / data.offset): " in err
    assert "is not a log exposure" in err and "pass its log instead, e.g. a column log_exposure = log(exposure)" in err
    assert not run.exists()
    assert main([*argv, "--offset", "log_exposure"]) == 0  # the log exposure itself is taken


def test_a_missing_trials_or_offset_column_is_named_by_its_role(tmp_path, capsys):
    data = _counts(tmp_path / "counts.csv")
    base = ["fit", "--data", str(data), "--task", "site", "--x", "dose", "--y", "count", "--model", "linear",
            "--steps", "2", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*base, "--likelihood", "binomial", "--trials", "nope"]) == 2
    err = _one_line(capsys)
    assert "missing number-of-trials column 'nope' (--trials / data.trials)" in err and "x column" not in err
    assert main([*base, "--likelihood", "poisson", "--offset", "nope"]) == 2
    assert "missing log-exposure column 'nope' (--offset / data.offset)" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_resume_after_the_data_changed_is_refused_naming_the_file(tmp_path, capsys):
    data, run = _grouped(tmp_path / "train.csv"), tmp_path / "run"
    assert _fit(data, run) == 0
    capsys.readouterr()
    recorded = json.loads((run / "run.json").read_text())["data_sha256"]
    assert len(recorded) == 64
    original = data.read_text()
    data.write_text(original.replace("g3,", "g3,1").replace(",1.", ",2.", 3))  # the same groups, other values
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["fit", "--out", str(run), "--resume", "--steps", "30", "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"{data}: the data file changed since this run started (sha256 {recorded[:12]}..." in err
    assert "restore the file, or start a new run (another --out, or --force" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    data.write_text(original)
    assert main(["fit", "--out", str(run), "--resume", "--steps", "30", "--no-progress"]) == 0


def test_a_truncated_run_json_is_one_line_naming_it(tmp_path, capsys):
    data, run = _grouped(tmp_path / "train.csv"), tmp_path / "run"
    assert _fit(data, run) == 0
    capsys.readouterr()
    (run / "run.json").write_text('{"data": "x", "data_sh')
    assert main(["fit", "--out", str(run), "--resume", "--steps", "30", "--no-progress"]) == 2
    assert f"{run / 'run.json'}: not valid JSON" in _one_line(capsys)
    assert main(["report", str(run)]) == 2
    assert f"{run / 'run.json'}: not valid JSON" in _one_line(capsys)


def test_validation_shots_no_held_out_group_can_serve_are_refused_before_the_run(tmp_path, capsys):
    data, run = _grouped(tmp_path / "train.csv", rows=6), tmp_path / "run"
    assert _fit(data, run, "--set", "train.val_shots=[2, 6]") == 2
    err = _one_line(capsys)
    assert "train.val_shots: shots=6 needs a validation group with more than 6 rows" in err
    assert "has 6 rows; use shots below 6" in err
    assert not run.exists()
