import argparse
import base64
import csv
import json
import math
import os
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

import bayesmeta as bm
from bayesmeta.cli import _parser, main
from bayesmeta.runs.config import FitConfig

# pixel sizes of the report's plots: each plot function's figure size (inches) at the report's 100 dpi
DEMO_PIXELS = {"prediction_bands": (600, 1200),  # 6 tasks in 3 columns of 4 x 3 in
               "training": (360, 600), "calibration": (420, 450),
               "pit": (300, 1200),  # one method x shots 1, 5, 10: a row of 3 axes of 4 x 3 in
               "comparison": (360, 1200),
               "shrinkage": (560, 1360),  # the 8 latent coordinates in 4 columns of 3.4 x 2.8 in
               "sbc_ranks": (520, 1280)}  # the same 8 coordinates, 3.2 x 2.6 in each


def _embedded(page: str) -> dict:
    found = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", page)
    return {name: base64.b64decode(data) for name, data in found}


def _check_sbc(sbc: dict, num_simulations: int) -> None:
    """The SBC file's ranks, and its chi-square statistics recomputed from them (scipy's p-values)."""
    ranks, draws, bins = np.array(sbc["ranks"]), sbc["num_posterior_samples"], sbc["bins"]  # ranks [P, S]
    assert ranks.shape[1] == num_simulations and ranks.min() >= 0 and ranks.max() <= draws
    values = draws + 1  # possible ranks 0..draws, in `bins` equal-width bins over [0, values)
    per_bin, _ = np.histogram(np.arange(values), bins=bins, range=(0, values))
    expected = per_bin / values * num_simulations
    chi2 = [((np.histogram(r, bins=bins, range=(0, values))[0] - expected) ** 2 / expected).sum() for r in ranks]
    np.testing.assert_allclose(sbc["chi2"], chi2, rtol=1e-9)
    np.testing.assert_allclose(sbc["p_values"], stats.chi2.sf(chi2, bins - 1), rtol=1e-6)


def test_demo_writes_table_plots_report_and_diagnostics(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--max-time", "2", "--steps", "20", "--num-tasks", "8", "--no-progress",
               "--sbc-simulations", "20", "--reference-tasks", "1"])
    assert rc == 0
    ev = json.loads((out / "eval.json").read_text())
    assert [r["shots"] for r in ev["summary"]] == [1, 5, 10] and len(ev["rows"]) == 3 * 8
    # eval.json holds what the saved learner gives on the demo's test tasks (the family's fixed draws from seed 1)
    learner = bm.BayesLearner.load(out / "learner.pt")
    # (the 1-shot rows: re-scoring every shot count of an untrained model re-draws to thousands of proposals)
    again = bm.evaluate(learner, bm.tasks.Sinusoid(noise_std=0.1), shots=(1,), num_tasks=8, num_query=100,
                        seed=ev["info"]["seed"], name="default/importance",
                        predict_options={"method": "importance", "seed": 1})
    for saved, now in zip([r for r in ev["rows"] if r["shots"] == 1], again.rows, strict=True):
        for key in ("nll", "oracle_nll", "gap", "mse", "crps", "coverage_90", "ess", "pareto_k"):
            assert saved[key] == pytest.approx(now[key], rel=1e-6, abs=1e-9), key
        assert saved["gap"] == pytest.approx(saved["nll"] - saved["oracle_nll"], abs=1e-9)
    for s in ev["summary"]:
        assert s["nll"] == pytest.approx(np.mean([r["nll"] for r in ev["rows"] if r["shots"] == s["shots"]]), rel=1e-9)
        assert s["calibration_error"] == pytest.approx(
            np.mean(np.abs(np.array(s["calibration_curve"]) - np.array(s["calibration_levels"]))), rel=1e-9)
    images = _embedded((out / "report.html").read_text())
    assert sorted(images) == sorted(DEMO_PIXELS)
    for name, pixels in DEMO_PIXELS.items():
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert images[name] == png and matplotlib.image.imread(out / "plots" / f"{name}.png").shape[:2] == pixels, name
    assert "Reference posterior (NUTS)" in (out / "report.html").read_text()
    _check_sbc(json.loads((out / "sbc.json").read_text()), 20)
    ref = json.loads((out / "reference.json").read_text())
    assert len(ref["comparison"]) == 8  # one row per latent coordinate of the one reference task
    for row in ref["comparison"]:
        assert row["mean_error_sd"] == pytest.approx((row["mean"] - row["mean_ref"]) / row["sd_ref"], rel=1e-6)
        assert row["sd_ratio"] == pytest.approx(row["sd"] / row["sd_ref"], rel=1e-6)
        # 1-Wasserstein distance >= the distance between the means (up to the 200-quantile approximation)
        assert row["wasserstein_sd"] >= abs(row["mean_error_sd"]) - 0.05
    assert 0 <= ref["diagnostics"]["divergences"] <= 2 * 500 and ref["diagnostics"]["max_rhat"] > 0.99
    table = capsys.readouterr().out
    s1 = ev["summary"][0]
    assert f"| default/importance | 1 | 8 | {s1['nll']:.3f} ± {s1['nll_se']:.3f} |" in table


def test_report_command_rebuilds_a_run(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--max-time", "1", "--steps", "5", "--num-tasks", "4", "--no-progress",
          "--sbc-simulations", "0", "--reference-tasks", "0"])
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    info = json.loads((out / "run.json").read_text())
    assert f"<td>train_steps</td><td>{info['train_steps']}</td>" in page
    names = ["calibration", "comparison", "pit", "prediction_bands", "shrinkage", "training"]
    assert sorted(p.stem for p in (tmp_path / "rep" / "plots").glob("*.png")) == names
    images = _embedded(page)
    assert sorted(images) == names
    for name in names:
        # redrawn from learner.pt and eval.json (training, calibration, pit, comparison) or embedded as saved
        # (prediction_bands, shrinkage): the run's files hold every number, so the pictures are the same
        assert images[name] == (out / "plots" / f"{name}.png").read_bytes(), name
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_rejects_unknown_variant(tmp_path, capsys):
    rc = main(["bench", "sinusoid", "--variants", "nope", "--out", str(tmp_path), "--max-time", "1"])
    assert rc == 2
    assert "unknown sinusoid variant" in capsys.readouterr().err


def _parsers(parser=None, path=()):
    """``(command words, parser)`` of every sub-command, nested ones (``bench compare``) included."""
    for action in (parser or _parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _parsers(sub, (*path, name))


def test_help_examples_are_valid_commands(capsys):
    checked = 0
    for path, sub in _parsers():
        lines = [line.split("#")[0].split() for line in (sub.epilog or "").splitlines()
                 if line.strip().startswith("bayesmeta ")]
        if not lines:
            continue
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        assert "examples:" in capsys.readouterr().out, path
        for words in lines:
            if any(re.fullmatch(r"[A-Z_]+", w) for w in words) or "--help" in words:
                continue  # a placeholder (bench NAME) or a pointer to more help
            assert tuple(words[1 : 1 + len(path)]) == path, words
            _parser().parse_args(words[1:])  # an unknown option or a bad value raises SystemExit
            checked += 1
    assert checked >= 15


def _config_default(name: str):
    """The run config's default for a flag of ``fit`` (``--model`` sets ``model.kind``)."""
    cfg = FitConfig()
    for section in (cfg.data, cfg.model, cfg.train):
        if hasattr(section, "kind" if name == "model" else name):
            return getattr(section, "kind" if name == "model" else name)
    raise KeyError(name)


def test_help_states_the_real_defaults():
    checked = 0
    for path, sub in _parsers():
        for action in sub._actions:
            said = re.search(r"default: ([^;)]+)\)", (action.help or "").replace("\n", " "))
            if said is None:
                continue
            value, default = said.group(1), action.default
            if default is None and path == ("fit",):  # fit's flags override the config file: its defaults apply
                default = _config_default(action.dest)
                value = None if value == "no limit" else value
            if default is None or value is None or value == "all":
                continue  # "torch's choice", every choice: not a value to compare
            if isinstance(default, list):  # nargs="+": the words of the default
                expected = [type(default[0])(w) for w in value.split()]
            else:
                expected = type(default)(value) if isinstance(default, int | float) else value
            assert default == expected, (path, action.dest)
            checked += 1
    assert checked >= 25


def test_bench_compare_tiny_run(tmp_path, capsys):
    rc = main(["bench", "compare", "--families", "linear", "--methods", "bayes", "fomaml", "--budget", "1",
               "--sweep-seconds", "0.3", "--classic-budget", "0.5", "--num-tasks", "10", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    fam = res["families"]["linear"]
    with open(tmp_path / "eval_linear.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    oracle = {(r["shots"], r["task"]): float(r["nll"]) for r in rows if r["method"] == "oracle"}
    assert len(rows) == 3 * 3 * 10 and len(oracle) == 3 * 10  # methods x shots x tasks
    for r in rows:
        if r["method"] != "oracle":  # every method is scored against the oracle row of the same task
            assert float(r["oracle_nll"]) == oracle[(r["shots"], r["task"])]
            assert float(r["gap"]) == pytest.approx(float(r["nll"]) - float(r["oracle_nll"]), abs=1e-6)
    assert {s["method"] for s in fam["summary"]} == {"oracle", "bayes", "fomaml"}
    for s in fam["summary"]:
        mine = [float(r["nll"]) for r in rows if r["method"] == s["method"] and int(r["shots"]) == s["shots"]]
        assert s["num_tasks"] == len(mine) == 10 and s["nll"] == pytest.approx(np.mean(mine), rel=1e-6)
    sweep = fam["methods"]["fomaml"]["sweep"]
    best = min(sweep["trials"], key=lambda t: t["val_nll"])
    assert len(sweep["trials"]) == 3 and sweep["chosen"] == {k: best[k] for k in sweep["chosen"]}
    assert fam["methods"]["fomaml"]["settings"] == sweep["chosen"]  # trained with the best trial's settings
    assert {"mse_after_1_steps", "mse_after_10_steps"} <= set(res["maml_classic"])
    v = res["vectorisation"]
    assert v["speedup"] == pytest.approx(v["vectorised_tasks_per_second"] / v["loop_tasks_per_second"], rel=1e-12)
    assert matplotlib.image.imread(tmp_path / "comparison_linear.png").ndim == 3
    out = capsys.readouterr().out
    bayes = next(s for s in fam["summary"] if s["method"] == "bayes" and s["shots"] == 5)
    gap = bayes["nll"] - next(s for s in fam["summary"] if s["method"] == "oracle" and s["shots"] == 5)["nll"]
    assert f"| bayes | 5 | {bayes['nll']:.3f} ± {bayes['nll_se']:.3f} | {gap:.3f} ±" in out


def _fresh_import_peak_mib() -> float:
    """Peak resident memory of a fresh interpreter that only imports bayesmeta (torch included)."""
    code = "import resource, bayesmeta; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_bench_throughput_tiny_run(tmp_path, capsys):
    rc = main(["bench", "throughput", "--learners", "maml", "--batch-sizes", "8", "256", "--seconds", "0.5",
               "--processes", "1", "--predict-batches", "1", "2", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["tasks_per_step"] for r in res["batch"]] == [8, 256]
    # each setting trains in a fresh process: its peak is at least what importing the library takes there, and
    # (a unit check: ru_maxrss is in KiB) far below the machine's memory
    floor = 0.9 * _fresh_import_peak_mib()  # 10 % for the variation between interpreters
    ram_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    for r in res["batch"]:
        assert floor < r["peak_memory_mib"] < ram_mib
        # training ran for at least its 0.5 s budget: tasks/s <= steps x tasks per step / 0.5 s
        assert 0 < r["tasks_per_second"] <= r["steps"] * r["tasks_per_step"] / 0.5 * (1 + 1e-9)
    rates = {r["tasks_per_step"]: r["tasks_per_second"] for r in res["batch"]}
    assert res["maml_speedup_256_vs_8"] == pytest.approx(rates[256] / rates[8], rel=1e-12)
    assert [(p["tasks"], p["method"]) for p in res["prediction"]] == [(1, "guide"), (1, "importance"),
                                                                       (2, "guide"), (2, "importance")]
    assert all(math.isfinite(p["us_per_task"]) and p["us_per_task"] > 0 for p in res["prediction"])
    assert f"| maml | 256 | {rates[256]:.0f} |" in capsys.readouterr().out



def test_bench_compare_gives_every_method_the_same_tuning_budget(tmp_path):
    rc = main(["bench", "compare", "--families", "linear", "--methods", "bayes", "fomaml", "--budget", "0.5",
               "--sweep-seconds", "0.3", "--tune-seconds", "1.0", "--classic-budget", "0", "--num-tasks", "5",
               "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    methods = res["families"]["linear"]["methods"]
    assert res["tune_seconds"] == 1.0
    for name, keys in (("bayes", {"lr", "tasks_per_step"}), ("fomaml", {"lr", "tasks_per_step", "inner_lr"})):
        tune = methods[name]["tune"]
        assert "sweep" not in methods[name] and set(tune["chosen"]) == keys
        first = tune["trials"][0]  # the method's defaults come first
        assert first["train.lr"] == (3e-3 if name == "bayes" else 1e-3)  # each learner's lr=None default
        assert first["train.tasks_per_step"] == 32
        finished = [t for t in tune["trials"] if t["state"] == "COMPLETE"]
        best = min(finished, key=lambda t: t["val_nll"])
        assert tune["chosen"]["lr"] == best["train.lr"] and methods[name]["settings"] == tune["chosen"]
        assert methods[name]["tasks_per_step"] == tune["chosen"]["tasks_per_step"]  # trained with the tuned batch
    assert main(["bench", "compare", "--tune-seconds", "-1", "--out", str(tmp_path / "x")]) == 2
