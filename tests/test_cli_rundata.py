"""A run's data (bayesmeta.runs.data): role columns, log exposures, the data file's fingerprint, validation shots."""

import json
import math
from pathlib import Path

import pytest
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


def _binomial(path: Path, special=None) -> Path:
    """``group,dose,n,k`` rows (8 groups x 5); ``special = (row number, column, text)`` replaces one field."""
    g = torch.Generator().manual_seed(2)
    lines = ["group,dose,n,k"]
    for i in range(8):
        for _ in range(5):
            x, n = float(torch.rand((), generator=g)), int(torch.randint(4, 12, (), generator=g))
            lines.append(f"g{i},{x:.3f},{n},{int(torch.binomial(torch.tensor(float(n)), torch.tensor(0.4)))}")
    if special is not None:
        row, col, text = special
        fields = lines[row - 1].split(",")
        fields[lines[0].split(",").index(col)] = text
        lines[row - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return path


def _binomial_fit(data, out):
    return main(["fit", "--data", str(data), "--task", "group", "--x", "dose", "--y", "k", "--model", "linear",
                 "--likelihood", "binomial", "--trials", "n", "--steps", "3", "--out", str(out), "--no-progress"])


@pytest.mark.parametrize(("text", "shown"), [("7.5", "7.5"), ("-3", "-3")])
def test_trials_that_are_no_whole_number_are_named_by_row_group_and_column(tmp_path, capsys, text, shown):
    data = _binomial(tmp_path / "b.csv", special=(29, "n", text))  # row 29: group g5 (rows 27-31)
    assert _binomial_fit(data, tmp_path / "run") == 2
    err = _one_line(capsys)
    assert f"{data}: row 29 (group 'g5'), column 'n' (--trials / data.trials): {shown} is not a number of trials" in err
    assert not (tmp_path / "run").exists()


def test_support_errors_name_the_csv_row_and_group_for_every_group_before_training(tmp_path, capsys):
    # every group is checked before the split and before training: whichever group this row falls in
    for row in (2, 41):
        data = _binomial(tmp_path / f"b{row}.csv", special=(row, "k", "99"))
        assert _binomial_fit(data, tmp_path / "run") == 2
        err = _one_line(capsys)
        group = "g0" if row == 2 else "g7"
        assert f"{data}: row {row} (group '{group}'): k = 99 is outside the support of the observation site 'y' " \
               "(Binomial: an integer in [0, " in err and "tensor" not in err
        assert not (tmp_path / "run").exists()


def test_evaluate_and_predict_check_every_row_against_the_model_by_row_and_group(tmp_path, capsys):
    run = tmp_path / "run"
    assert _binomial_fit(_binomial(tmp_path / "b.csv"), run) == 0
    capsys.readouterr()
    test = _binomial(tmp_path / "test.csv", special=(12, "k", "-1"))
    assert main(["evaluate", str(run), "--data", str(test), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"{test}: row 12 (group 'g2'): k = -1 is outside the support of the observation site 'y' (Binomial: " \
           "an integer in [0, " in err
    assert not (run / "eval.json").exists()
    assert main(["predict", str(run), "--support", str(test), "--query", str(test), "--out",
                 str(tmp_path / "p.csv")]) == 2
    assert f"{test}: row 12 (group 'g2'): k = -1 is outside" in _one_line(capsys)


def test_a_trials_column_also_listed_in_x_is_refused_before_the_run(tmp_path, capsys):
    data = _binomial(tmp_path / "b.csv")
    argv = ["fit", "--data", str(data), "--task", "group", "--x", "dose", "n", "--y", "k", "--model", "linear",
            "--likelihood", "binomial", "--trials", "n", "--steps", "3", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert "--trials / data.trials: column 'n' is also an x column (['dose', 'n']); it is read as the trials column " \
           "on its own: drop it from --x / data.x" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_report_out_that_is_a_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert _binomial_fit(_binomial(tmp_path / "b.csv"), run) == 0
    capsys.readouterr()
    (tmp_path / "taken").write_text("x")
    assert main(["report", str(run), "--out", str(tmp_path / "taken")]) == 2
    assert f"--out: {tmp_path / 'taken'} is a file; the report is a directory" in _one_line(capsys)
