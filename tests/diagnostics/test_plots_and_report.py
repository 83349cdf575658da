"""Plots return Figures with the expected axes and lines; the report embeds them and never clobbers."""

import json

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

import bayesmeta as bm
from bayesmeta import diagnostics as dg

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    family = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5)
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    learner.fit(family, steps=200, progress=False, lr=0.05)
    oracle = family.oracle_predict
    ev = bm.evaluate(learner, family, shots=(1, 4), num_tasks=40, num_query=20, name="conjugate")
    ev = ev + bm.evaluate(oracle, family, shots=(1, 4), num_tasks=40, num_query=20, name="oracle")
    test = family.sample(5, shots=3, num_query=4, generator=torch.Generator().manual_seed(1))
    sbc = bm.simulation_based_calibration(learner.model, learner, torch.linspace(-2, 2, 4)[:, None],
                                          num_simulations=40, num_posterior_samples=20, method="exact")
    return family, learner, ev, test, sbc


def _lines(ax):
    return len(ax.get_lines())


def test_calibration_curve_has_one_line_per_method_and_shots(run):
    _, _, ev, _, _ = run
    fig = dg.plot_calibration_curve(ev)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert _lines(fig.axes[0]) == 4 + 1  # 2 methods x 2 shot counts + the diagonal
    assert _lines(dg.plot_calibration_curve(ev, methods=["oracle"], shots=[4]).axes[0]) == 2


def test_pit_histogram_one_axes_per_method_and_shots(run):
    _, _, ev, _, _ = run
    fig = dg.plot_pit_histogram(ev)
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 4 and len(visible[0].patches) == 20 + 1  # bars + the uniform band
    with pytest.raises(ValueError, match="no results for methods"):
        dg.plot_pit_histogram(ev, methods=["maml"])


def test_method_comparison_and_elbo_trace(run):
    _, learner, ev, _, _ = run
    fig = dg.plot_method_comparison(ev)
    assert len(fig.axes) == 3
    assert len(fig.axes[0].containers) == 2  # one error-bar series per method
    assert fig.axes[0].get_ylabel() == "NLL gap to the oracle"
    fig = dg.plot_elbo_trace(learner.history)
    assert len(fig.axes) == 1 and _lines(fig.axes[0]) == 2  # raw + moving average
    fig = dg.plot_elbo_trace({"a": learner.history, "b": learner.history.as_dict()})
    assert _lines(fig.axes[0]) == 4
    with pytest.raises(ValueError, match="empty"):
        dg.plot_elbo_trace({"step": [], "loss": [], "time": [], "lr": []})


def test_shrinkage_sbc_and_bands(run):
    family, learner, _, test, sbc = run
    post = learner.adapt(test)
    fig = dg.plot_shrinkage(post)
    assert len([ax for ax in fig.axes if ax.axison]) == 2  # one per coordinate of w
    fig = dg.plot_sbc_ranks(sbc)
    assert len([ax for ax in fig.axes if ax.axison]) == 2 and len(fig.axes[0].patches) == sbc.bins + 1
    grid = torch.linspace(-2, 2, 30)
    pred = post.predict(grid[:, None])
    fig = dg.plot_prediction_bands(pred, grid, test.x_support, test.y_support, tasks=[0, 1, 2])
    assert len([ax for ax in fig.axes if ax.axison]) == 3


def test_report_embeds_every_plot(run, tmp_path):
    _, learner, ev, test, sbc = run
    path = bm.report(tmp_path, evaluation=ev, learner=learner, posterior=learner.adapt(test), sbc=sbc,
                     info={"data": "test"})
    page = path.read_text()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["calibration.png", "comparison.png", "pit.png", "sbc_ranks.png", "shrinkage.png", "training.png"]
    assert page.count("data:image/png;base64,") == 6
    assert "<h2>Predictive metrics</h2>" in page and "Simulation-based calibration" in page
    manifest = json.loads((tmp_path / ".bayesmeta-report.json").read_text())["files"]
    assert "report.html" in manifest and "plots/pit.png" in manifest
    bm.report(tmp_path, evaluation=ev)  # a second report may replace its own files


def test_report_never_overwrites_foreign_files(run, tmp_path):
    _, _, ev, _, _ = run
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "pit.png").write_bytes(b"mine")
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="pit.png exists and was not written by a bayesmeta report"):
        bm.report(tmp_path, evaluation=ev)
    assert (tmp_path / "plots" / "pit.png").read_bytes() == b"mine"
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "plots" / "calibration.png").exists()
    (tmp_path / "plots" / "pit.png").unlink()
    bm.report(tmp_path, evaluation=ev)
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_load_run_collects_what_a_run_holds(run, tmp_path):
    _, learner, ev, _, sbc = run
    learner.save(tmp_path / "learner.pt")
    ev.to_json(tmp_path / "eval.json")
    (tmp_path / "sbc.json").write_text(json.dumps(sbc.to_dict()))
    (tmp_path / "plots").mkdir()
    dg.plot_elbo_trace(learner.history).savefig(tmp_path / "plots" / "bands.png")
    found = dg.load_run(tmp_path)
    assert set(found) == {"history", "evaluation", "sbc", "figures"}
    assert torch.equal(found["sbc"].ranks, sbc.ranks) and list(found["figures"]) == ["bands"]
    with pytest.raises(ValueError, match="training.png exists and was not written"):
        dg.plot_elbo_trace(learner.history).savefig(tmp_path / "plots" / "training.png")
        bm.report(tmp_path, **dg.load_run(tmp_path))
    (tmp_path / "plots" / "training.png").unlink()
    page = bm.report(tmp_path, **found).read_text()
    assert page.count("data:image/png;base64,") == 6  # training, calibration, pit, comparison, sbc + bands
    with pytest.raises(FileNotFoundError, match="nothing to report"):
        dg.load_run(tmp_path / "plots")


def test_report_of_an_ensemble_draws_every_member_trace(tmp_path):
    ens = bm.baselines.Ensemble(lambda: bm.baselines.FOMAML(x_dim=1, hidden=(4,)), n=2)
    ens.fit(bm.tasks.Sinusoid(), steps=3, progress=False)
    bm.report(tmp_path, learner=ens)
    assert (tmp_path / "plots" / "training.png").exists()
    assert _lines(dg.plot_elbo_trace(ens.history).axes[0]) == 4
