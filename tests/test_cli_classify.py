"""``bayesmeta fit --task-kind classification``, ``evaluate`` and ``predict`` on a classification run."""

import csv
import json

import pytest
import torch

from bayesmeta.cli import main


def _table(path, classes=12, per_class=8, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(classes, dim, generator=g)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", *(f"f{i}" for i in range(dim))])
        for c in range(classes):
            for _ in range(per_class):
                w.writerow([f"k{c}", *(means[c] + torch.randn(dim, generator=g)).tolist()])
    return means


def test_fit_evaluate_predict_a_classification_run(tmp_path, capsys):
    data = tmp_path / "pool.csv"
    _table(data)
    run = tmp_path / "run"
    assert main(["fit", "--task-kind", "classification", "--data", str(data), "--label", "kind", "--ways", "2",
                 "--steps", "30", "--out", str(run), "--no-progress"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "bayes-proto" and len(info["classes"]["test"]) >= 2
    assert not set(info["classes"]["train"]) & set(info["classes"]["test"])
    assert main(["evaluate", str(run), "--shots", "1", "3", "--episodes", "20", "--no-progress"]) == 0
    summary = json.loads((run / "eval.json").read_text())["summary"]
    assert [s["shots"] for s in summary] == [1, 3] and all(0 <= s["ece"] <= 1 for s in summary)
    assert main(["report", str(run)]) == 0  # training trace (with validation), reliability, selective prediction
    page = (run / "report.html").read_text()
    assert "Reliability diagrams" in page and "Selective prediction" in page
    # predict: two new classes far apart; the query points sit on them
    sup, qry, out = tmp_path / "s.csv", tmp_path / "q.csv", tmp_path / "p.csv"
    sup.write_text("task,kind,f0,f1,f2\nt,a,10,0,0\nt,a,11,0,0\nt,b,-10,0,0\nt,b,-11,0,0\n")
    qry.write_text("task,f0,f1,f2\nt,10.5,0,0\nt,-10.5,0,0\n")
    assert main(["predict", str(run), "--support", str(sup), "--query", str(qry), "--out", str(out)]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["predicted"] for r in rows] == ["a", "b"]
    assert all(abs(float(r["p_a"]) + float(r["p_b"]) - 1) < 1e-5 for r in rows)
    assert main(["predict", str(run), "--support", str(sup), "--query", str(qry), "--out", str(out)]) == 2
    assert "exists; use --force" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--label", "kind"], "--label: only with --task-kind classification"),
    (["--task-kind", "classification"], "exactly one of --data CSV"),
    (["--task-kind", "classification", "--label", "nope"], "no column 'nope'"),
    (["--task-kind", "classification", "--label", "kind", "--ways", "9"], "fewer than ways=9"),
    (["--task-kind", "classification", "--label", "kind", "--x", "f0"], "--x: not used by --task-kind classification"),
])
def test_bad_classification_fits_are_one_line_errors(tmp_path, capsys, args, message):
    data = tmp_path / "pool.csv"
    _table(data)
    argv = ["fit", *(["--data", str(data)] if "exactly" not in message else []), *args, "--out", str(tmp_path / "r"),
            "--no-progress", "--steps", "1"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
