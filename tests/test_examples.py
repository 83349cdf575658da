"""Every example runs with tiny arguments."""

import argparse
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("custom_model", {"steps": 30, "lr": 1e-2, "seed": 0, "device": "cpu", "no_progress": True}),
        ("sinusoid", {"steps": 5, "max_time": None, "num_tasks": 4, "seed": 0, "device": "cpu", "no_progress": True}),
    ],
)
def test_example_runs(name, args):
    out = _load(name).main(argparse.Namespace(**args))
    assert out


def test_grouped_regression_runs_the_command_line(tmp_path):
    out = _load("grouped_regression").main(argparse.Namespace(out=str(tmp_path), steps=10, seed=0, device="cpu",
                                                              no_progress=True))
    lines = out["predictions"].read_text().splitlines()
    assert len(lines) == 22 and lines[0].startswith("subject,time,response_mean")
    assert (out["run"] / "eval.json").exists() and (out["run"] / "report.html").exists()


def test_calibration_gallery_separates_the_four_cases(tmp_path):
    out = _load("calibration_gallery").main(argparse.Namespace(num_tasks=100, shots=3, seed=0, out=str(tmp_path), device="cpu"))
    assert out["calibrated"]["calibration_error"] < 0.02 and out["calibrated"]["gap"] == pytest.approx(0, abs=1e-9)
    assert out["overconfident"]["coverage_90"] < 0.7 and out["underconfident"]["coverage_90"] > 0.98
    assert out["biased"]["calibration_error"] > 0.08
    assert (tmp_path / "pit_gallery.png").exists() and (tmp_path / "calibration_gallery.png").exists()


def test_eight_schools_runs_and_plots(tmp_path, capsys):
    args = argparse.Namespace(num_samples=60, num_warmup=60, num_chains=2, steps=30, seed=0, out=str(tmp_path / "f.png"),
                              device="cpu", no_progress=True)
    out = _load("eight_schools").main(args)
    assert set(out["summary"]) == {"ArviZ reference", "NUTS", "SVI mean-field", "SVI full-rank"}
    assert out["summary"]["ArviZ reference"][0] == pytest.approx(4.37, abs=0.01)  # the bundled reference
    assert (tmp_path / "f.png").stat().st_size > 20_000
    assert "tau mean" in capsys.readouterr().out


@pytest.mark.slow
def test_eight_schools_nuts_matches_the_reference():
    """Default settings (4 chains x 1000 draws): NUTS agrees with ArviZ's reference posterior."""
    args = argparse.Namespace(num_samples=1000, num_warmup=1000, num_chains=4, steps=3000, seed=0, out="",
                              device="cpu", no_progress=True)
    out = _load("eight_schools").main(args)
    mu, mu_sd, tau, tau_sd = out["summary"]["NUTS"]
    # MC error of both runs: sd / sqrt(ESS ~ 1000) ~ 0.1 each; tau's heavy right tail adds more
    assert mu == pytest.approx(4.37, abs=0.4) and mu_sd == pytest.approx(3.29, abs=0.3)
    assert tau == pytest.approx(3.72, abs=0.5) and tau_sd == pytest.approx(3.10, abs=0.5)
    assert out["nuts_diagnostics"]["max_rhat"] < 1.01


def test_custom_model_learns_the_prior_means():
    """The multi-site custom model (auxiliary flow guide) meta-trains to the right prior."""
    mod = _load("custom_model")
    out = mod.main(argparse.Namespace(steps=800, lr=1e-2, seed=0, device="cpu", no_progress=True))
    # 800 steps x 32 tasks: the prior means are estimated to within ~0.1 of the truth
    assert out["prior_means"] == pytest.approx([1.0, -1.0, 0.5], abs=0.15)
    # measured: 0.952 after 800 steps, 0.938 after 1500 — the learned noise is still a little
    # high this early, so intervals over-cover slightly; 4000 correlated points, s.e. ~0.01
    assert 0.85 < out["coverage90"] < 0.97
