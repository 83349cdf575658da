"""``bayesmeta suggest``: proposals for new groups from a fitted run directory (parser and command)."""

import argparse
import csv

import pytest
import torch

from bayesmeta.cli import main
from bayesmeta.cli.suggest import add_suggest_parser, cmd_suggest


def _parse(argv):
    p = argparse.ArgumentParser(prog="bayesmeta")
    add_suggest_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["suggest", *argv])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("suggest")
    g = torch.Generator().manual_seed(0)
    lines = ["subject,time,response"]
    for i in range(12):
        a = 2 + torch.randn((), generator=g)
        for x in (5 * torch.rand(6, generator=g)).tolist():
            lines.append(f"g{i},{x:.4f},{float(a * torch.sin(torch.tensor(x))):.4f}")
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    rc = main(["fit", "--data", str(d / "train.csv"), "--task", "subject", "--x", "time", "--y", "response",
               "--steps", "10", "--out", str(d / "run"), "--no-progress", "--set", "model.hidden=[16]",
               "--set", "model.latent_dim=2", "--set", "train.tasks_per_step=8"])
    assert rc == 0
    (d / "grid.csv").write_text("time\n" + "\n".join(f"{0.25 * i}" for i in range(21)) + "\n")
    (d / "obs.csv").write_text("subject,time,response\nnew,1.0,1.7\nnew,4.0,-1.5\nother,2.0,0.9\n")
    return d


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_suggest_writes_n_candidate_rows_per_task(run, tmp_path):
    out = tmp_path / "next.csv"
    cmd_suggest(_parse([str(run / "run"), "--observed", str(run / "obs.csv"), "--candidates", str(run / "grid.csv"),
                        "--n", "2", "--acquisition", "ucb", "--out", str(out)]))
    rows = _rows(out)
    assert list(rows[0]) == ["subject", "time", "score", "response_mean", "response_sd"]
    assert [r["subject"] for r in rows] == ["new", "new", "other", "other"]
    grid = {0.25 * i for i in range(21)}
    assert all(float(r["time"]) in grid and float(r["response_sd"]) > 0 for r in rows)
    assert rows[0]["time"] != rows[1]["time"]  # a batch over a finite set has distinct points


def test_suggest_from_the_prior_and_minimising(run, tmp_path):
    out = tmp_path / "new" / "folder" / "first.csv"  # missing folders are made, as for predict
    cmd_suggest(_parse([str(run / "run"), "--candidates", str(run / "grid.csv"), "--minimize", "--out", str(out)]))
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["subject"] == "new"


def test_suggest_refuses_bad_input(run, tmp_path):
    out = tmp_path / "x.csv"
    out.write_text("old\n")
    base = [str(run / "run"), "--candidates", str(run / "grid.csv")]
    with pytest.raises(FileExistsError, match="exists; use --force"):
        cmd_suggest(_parse([*base, "--out", str(out)]))
    with pytest.raises(ValueError, match="--objective 'dose': not a y column of the run"):
        cmd_suggest(_parse([*base, "--objective", "dose", "--out", str(out), "--force"]))
    with pytest.raises(ValueError, match="--n must be >= 1"):
        cmd_suggest(_parse([*base, "--n", "0", "--out", str(out), "--force"]))
    (tmp_path / "nan.csv").write_text("subject,time,response\nnew,1.0,nan\n")
    with pytest.raises(ValueError, match="response|non-finite"):
        cmd_suggest(_parse([*base, "--observed", str(tmp_path / "nan.csv"), "--out", str(out), "--force"]))
    with pytest.raises(SystemExit):
        _parse([*base, "--acquisition", "thompson", "--out", str(out)])
