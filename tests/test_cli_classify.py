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


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small classification run (and its data), fitted once for the damaged-file tests."""
    d = tmp_path_factory.mktemp("cls")
    _table(d / "pool.csv")
    run = d / "run"
    assert main(["fit", "--task-kind", "classification", "--data", str(d / "pool.csv"), "--label", "kind", "--ways",
                 "2", "--steps", "5", "--out", str(run), "--no-progress"]) == 0
    return run


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "edited", "other-weights"])
def test_a_damaged_classifier_file_is_one_line_naming_it(fitted, tmp_path, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted, run)
    weights = run / "classifier.pt"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00garbage" * 50)
    elif damage == "edited":
        torch.save({"history": {}}, weights)
    else:
        state = torch.load(weights, weights_only=True)
        state["state"] = {k: v[..., :1] for k, v in state["state"].items()}
        torch.save(state, weights)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--shots", "1", "--episodes", "5", "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"{weights}: not this run's saved classifier, or a corrupt or truncated file" in err


def test_a_truncated_run_json_and_bad_counts_are_one_line(fitted, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted, run)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--shots", "1", "--episodes", "0", "--no-progress"]) == 2
    assert "--episodes must be an int >= 1" in _one_line(capsys)
    (run / "run.json").write_text((run / "run.json").read_text()[:40])
    assert main(["evaluate", str(run), "--shots", "1", "--episodes", "5", "--no-progress"]) == 2
    assert f"{run / 'run.json'}: not valid JSON" in _one_line(capsys)


def test_image_size_zero_is_our_message(tmp_path, capsys):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    assert main(["fit", "--task-kind", "classification", "--images", str(tmp_path / "imgs"), "--image-size", "0",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "--image-size must be an int >= 1 (pixels per side); got 0" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_leaves_no_run_directory_behind(tmp_path, capsys, monkeypatch):
    import errno

    import bayesmeta.io

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    _table(tmp_path / "pool.csv")
    monkeypatch.setattr(bayesmeta.io, "_write_file", full)
    run = tmp_path / "runs" / "new"
    assert main(["fit", "--task-kind", "classification", "--data", str(tmp_path / "pool.csv"), "--label", "kind",
                 "--ways", "2", "--steps", "3", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'classifier.pt'}: cannot write (no space left on device)" in err and "Traceback" not in err
    assert not run.exists() and not (tmp_path / "runs").exists()
