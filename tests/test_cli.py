import json

import pytest

from bayesmeta.cli import main


def test_demo_writes_table_plot_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--max-time", "2", "--steps", "20", "--num-tasks", "8", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["shots"] for r in metrics["rows"]] == [1, 5, 10]
    assert {"nll", "oracle_nll", "gap", "mse", "coverage90"} <= set(metrics["rows"][0])
    assert (out / "prediction_bands.png").stat().st_size > 10_000
    assert "| K |" in capsys.readouterr().out


def test_bench_rejects_unknown_variant(tmp_path, capsys):
    rc = main(["bench", "sinusoid", "--variants", "nope", "--out", str(tmp_path), "--max-time", "1"])
    assert rc == 2
    assert "unknown sinusoid variant" in capsys.readouterr().err


def test_help_lists_examples(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "examples:" in capsys.readouterr().out
