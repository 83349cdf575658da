"""The example runs with tiny arguments (as tests/test_examples.py runs the others) and the benchmark writes its files."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "optimize_new_task.py"


def test_optimize_new_task_example_runs_and_the_oracle_finds_the_maximum():
    spec = importlib.util.spec_from_file_location("optimize_new_task", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(argparse.Namespace(steps=10, budget=4, num_tasks=2, seed=0, device="cpu", no_progress=True))
    assert {"meta-ts", "meta-ei", "oracle-ts", "random"} <= set(out)
    for name, curve in out.items():  # simple regret: finite, >= 0, never rising
        assert len(curve) == 4 and all(math.isfinite(v) and v >= 0 for v in curve), name
        assert all(b <= a + 1e-6 for a, b in zip(curve, curve[1:], strict=False)), name
    # the Bayes oracle's Thompson sampling is within 0.2 of both maxima after 4 evaluations (measured 0.000)
    assert out["oracle-ts"][-1] < 0.2


def test_the_optimize_benchmark_writes_json_a_table_and_a_plot(tmp_path):
    from bayesmeta.benchmarks.optimize import run_optimize

    out = run_optimize(cases=["logistic", "bandit"], size="quick", max_time=0.5, num_tasks=3, budget=3, horizon=4,
                       methods=["oracle-ts", "random", "flat-ts"], out_dir=tmp_path, progress=False)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(doc["cases"]) == {"logistic", "bandit"} and doc["options"]["num_tasks"] == 3
    assert set(doc["cases"]["logistic"]["methods"]) == {"oracle-ts", "random"}
    assert set(doc["cases"]["bandit"]["methods"]) == {"oracle-ts", "random", "flat-ts"}
    curve = doc["cases"]["bandit"]["methods"]["random"]["cumulative_regret"]
    assert len(curve["mean"]) == 4 and all(b >= a for a, b in zip(curve["mean"], curve["mean"][1:], strict=False))
    regret = doc["cases"]["logistic"]["methods"]["oracle-ts"]["simple_regret"]["mean"]
    assert len(regret) == 3 and all(0 <= v <= 1 for v in regret)  # a success probability's regret
    assert "logistic: simple regret" in out["table"] and "oracle-ts" in out["table"]
    assert (tmp_path / "regret.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown optimize case"):
        run_optimize(cases=["nope"], out_dir=tmp_path)
