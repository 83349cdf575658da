import json

import pytest

from bayesmeta.cli import main


def test_demo_writes_table_plots_report_and_diagnostics(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--max-time", "2", "--steps", "20", "--num-tasks", "8", "--no-progress",
               "--sbc-simulations", "20", "--reference-tasks", "1"])
    assert rc == 0
    ev = json.loads((out / "eval.json").read_text())
    assert [r["shots"] for r in ev["summary"]] == [1, 5, 10]
    assert {"nll", "oracle_nll", "gap", "mse", "crps", "coverage_90", "calibration_error"} <= set(ev["summary"][0])
    assert len(ev["rows"]) == 3 * 8
    for name in ("prediction_bands", "training", "calibration", "pit", "comparison", "shrinkage", "sbc_ranks"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5_000, name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 7 and "Reference posterior (NUTS)" in page
    assert {"diagnostics", "comparison"} <= set(json.loads((out / "reference.json").read_text()))
    assert "| K |" in capsys.readouterr().out


def test_report_command_rebuilds_a_run(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--max-time", "1", "--steps", "5", "--num-tasks", "4", "--no-progress",
          "--sbc-simulations", "0", "--reference-tasks", "0"])
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    # redrawn from data: training, calibration, pit, comparison; embedded as saved: prediction_bands, shrinkage
    assert "train_steps" in page and page.count("data:image/png;base64,") == 6
    assert sorted(p.name for p in (tmp_path / "rep" / "plots").glob("*.png")) == [
        "calibration.png", "comparison.png", "pit.png", "prediction_bands.png", "shrinkage.png", "training.png"]
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_rejects_unknown_variant(tmp_path, capsys):
    rc = main(["bench", "sinusoid", "--variants", "nope", "--out", str(tmp_path), "--max-time", "1"])
    assert rc == 2
    assert "unknown sinusoid variant" in capsys.readouterr().err


def test_help_lists_examples(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "examples:" in capsys.readouterr().out


def test_bench_compare_tiny_run(tmp_path, capsys):
    rc = main(["bench", "compare", "--families", "linear", "--methods", "bayes", "fomaml", "--budget", "1",
               "--sweep-seconds", "0.3", "--classic-budget", "0.5", "--num-tasks", "10", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    fam = res["families"]["linear"]
    assert {r["method"] for r in fam["summary"]} == {"oracle", "bayes", "fomaml"}
    assert len(fam["methods"]["fomaml"]["sweep"]["trials"]) == 3 and fam["methods"]["bayes"]["tasks_per_second"] > 0
    assert {"mse_after_1_steps", "mse_after_10_steps"} <= set(res["maml_classic"])
    assert res["vectorisation"]["speedup"] > 0
    assert (tmp_path / "comparison_linear.png").exists() and (tmp_path / "eval_linear.csv").exists()
    out = capsys.readouterr().out
    assert "| bayes | 5 |" in out and "gap to oracle" in out


def test_bench_throughput_tiny_run(tmp_path, capsys):
    rc = main(["bench", "throughput", "--learners", "maml", "--batch-sizes", "8", "256", "--seconds", "0.5",
               "--processes", "1", "--predict-batches", "1", "2", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["tasks_per_step"] for r in res["batch"]] == [8, 256]
    assert all(r["tasks_per_second"] > 0 and r["peak_memory_mib"] > 10 for r in res["batch"])
    assert res["maml_speedup_256_vs_8"] > 0 and len(res["prediction"]) == 4
    assert "| maml | 256 |" in capsys.readouterr().out
