"""Plots draw the numbers they are meant to show; the report embeds exactly the plots it writes and never clobbers."""

import base64
import io
import json
import math
import re

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import bayesmeta as bm
from bayesmeta import diagnostics as dg

matplotlib.use("Agg")

Z99 = 2.5758293035489  # standard normal quantile at 0.995: the half-width of the 99 % binomial band, in sds


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


def _visible(fig):
    return [ax for ax in fig.axes if ax.axison]


def _errorbars(container):
    """``(x, y, yerr)`` of an errorbar series as drawn."""
    line, _, (bars,) = container
    seg = np.array(bars.get_segments())  # [n, 2, 2]: (x, y - err), (x, y + err)
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float), (seg[:, 1, 1] - seg[:, 0, 1]) / 2


def _span(patch):
    """The y-range of an ``axhspan`` rectangle."""
    return float(patch.get_y()), float(patch.get_y() + patch.get_height())


def test_calibration_curve_draws_the_coverage_of_each_method_and_shots(run):
    _, _, ev, _, _ = run
    fig = dg.plot_calibration_curve(ev)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    diagonal, *curves = fig.axes[0].get_lines()
    np.testing.assert_array_equal(diagonal.get_xydata(), [[0, 0], [1, 1]])
    assert len(curves) == len(ev.summary) == 4
    for line, r in zip(curves, ev.summary, strict=True):
        levels = np.asarray(line.get_xdata(), float)
        np.testing.assert_allclose(levels, np.arange(1, 20) / 20, atol=1e-12)  # 0.05, 0.10, ..., 0.95
        np.testing.assert_array_equal(line.get_ydata(), r["calibration_curve"])
        assert line.get_ydata()[levels.round(2).tolist().index(0.9)] == r["coverage_90"]
        # the same coverage from its definition: the share of PIT values inside the central interval
        u = ev.pit[(r["method"], r["shots"])].double().numpy()
        inside = [np.mean(np.abs(u - 0.5) <= lv / 2) for lv in levels]
        np.testing.assert_allclose(line.get_ydata(), inside, atol=2 / u.size)  # a point on an interval's edge
        assert f"{r['method']}, K={r['shots']}" in line.get_label()
    only = dg.plot_calibration_curve(ev, methods=["oracle"], shots=[4]).axes[0].get_lines()
    assert len(only) == 2 and list(only[1].get_ydata()) == ev.get("oracle", 4)["calibration_curve"]


def test_pit_histogram_bars_are_the_histogram_of_the_pit_values(run):
    _, _, ev, _, _ = run
    fig = dg.plot_pit_histogram(ev)
    axes = _visible(fig)
    assert len(axes) == 4
    for ax, r in zip(axes, ev.summary, strict=True):
        band, *bars = ax.patches
        counts, _ = np.histogram(ev.pit[(r["method"], r["shots"])].numpy(), bins=20, range=(0, 1))
        np.testing.assert_array_equal([b.get_height() for b in bars], counts)
        np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in bars], (np.arange(20) + 0.5) / 20)
        n = counts.sum()
        assert n == 40 * 20  # every query point of every task
        half = Z99 * math.sqrt(n * 0.05 * 0.95)  # binomial 99 % band of one bin's count under uniform PIT
        np.testing.assert_allclose(_span(band), (n * 0.05 - half, n * 0.05 + half), rtol=1e-9)
        assert ax.get_title() == f"{r['method']}, K={r['shots']}"
    with pytest.raises(ValueError, match="no results for methods"):
        dg.plot_pit_histogram(ev, methods=["maml"])


def test_method_comparison_draws_gap_coverage_and_calibration_error_by_shots(run):
    _, _, ev, _, _ = run
    fig = dg.plot_method_comparison(ev)
    gap_ax, cov_ax, cal_ax = fig.axes
    assert gap_ax.get_ylabel() == "NLL gap to the oracle"
    for i, method in enumerate(["conjugate", "oracle"]):
        rows = [ev.get(method, k) for k in (1, 4)]
        x, y, err = _errorbars(gap_ax.containers[i])
        np.testing.assert_array_equal(x, [1, 4])
        np.testing.assert_allclose(y, [r["gap"] for r in rows], rtol=1e-12)
        np.testing.assert_allclose(err, [r["gap_se"] for r in rows], rtol=1e-9, atol=1e-15)
        x, y, err = _errorbars(cov_ax.containers[i])
        np.testing.assert_allclose(y, [r["coverage_90"] for r in rows], rtol=1e-12)
        # s.e. of the pooled coverage from the spread of the per-task coverages
        np.testing.assert_allclose(err, [r["coverage_90_task_sd"] / math.sqrt(40) for r in rows], rtol=1e-9)
        np.testing.assert_allclose(cal_ax.get_lines()[i].get_ydata(), [r["calibration_error"] for r in rows])
    assert ev.get("oracle", 1)["gap"] == 0  # the oracle against itself
    assert cov_ax.get_lines()[-1].get_ydata()[0] == 0.9  # the nominal level


def _moving_average(v, width):
    """Trailing mean over ``width`` points (over the points so far at the start)."""
    return np.array([np.mean(v[max(0, i - width + 1) : i + 1]) for i in range(len(v))])


def test_elbo_trace_draws_the_loss_and_its_moving_average(run):
    _, learner, _, _, _ = run
    h = learner.history
    raw, avg = dg.plot_elbo_trace(h, smooth=3).axes[0].get_lines()
    np.testing.assert_array_equal(raw.get_xdata(), h.step)
    np.testing.assert_allclose(raw.get_ydata(), h.loss, rtol=1e-12)
    np.testing.assert_array_equal(avg.get_xdata(), h.step)
    np.testing.assert_allclose(avg.get_ydata(), _moving_average(np.array(h.loss), 3), rtol=1e-9)
    rng = np.random.default_rng(0)
    long = {"step": list(range(10, 610, 10)), "loss": list(5 / np.arange(1, 61) + rng.normal(0, 0.1, 60)),
            "time": list(range(60)), "lr": [1e-3] * 60}
    lines = dg.plot_elbo_trace({"a": h, "b": long}).axes[0].get_lines()  # default width: 20 logged points
    assert [ln.get_label() for ln in lines[1::2]] == ["a (moving average)", "b (moving average)"]
    np.testing.assert_allclose(lines[2].get_ydata(), long["loss"], rtol=1e-12)
    np.testing.assert_allclose(lines[3].get_ydata(), _moving_average(np.array(long["loss"]), 20), rtol=1e-9)
    with pytest.raises(ValueError, match="empty"):
        dg.plot_elbo_trace({"step": [], "loss": [], "time": [], "lr": []})


def test_shrinkage_draws_prior_bands_and_each_tasks_posterior(run):
    _, learner, _, test, _ = run
    post = learner.adapt(test)
    exact = post.distribution()  # the exact Gaussian posterior of every task
    prior = learner.model.prior_distribution()
    pm, psd = prior.mean.detach(), prior.variance.detach().sqrt()
    axes = _visible(dg.plot_shrinkage(post, num_samples=500))
    assert len(axes) == 2  # one per coordinate of w
    for c, ax in enumerate(axes):
        m, s = float(pm[c]), float(psd[c])
        two, one = ax.patches
        np.testing.assert_allclose(_span(two), (m - 2 * s, m + 2 * s), rtol=1e-6)
        np.testing.assert_allclose(_span(one), (m - s, m + s), rtol=1e-6)
        _, y, err = _errorbars(ax.containers[0])
        sd = exact.variance[:, c].sqrt().numpy()  # tasks all have 3 points: the order is the tasks' own
        # means and sds of 500 posterior draws: Monte-Carlo s.e. sd / sqrt(500) and sd / sqrt(2 * 500); 4 s.e.
        np.testing.assert_array_less(np.abs(y - exact.mean[:, c].numpy()), 4 * sd / math.sqrt(500))
        np.testing.assert_array_less(np.abs(err - sd), 4 * sd / math.sqrt(1000))
        assert (sd < s).all()  # three points shrink every posterior inside the prior


def test_sbc_rank_histograms_count_the_ranks(run):
    _, _, _, _, sbc = run
    fig = dg.plot_sbc_ranks(sbc)
    axes = _visible(fig)
    assert len(axes) == 2 == sbc.ranks.shape[1]
    for c, ax in enumerate(axes):
        band, *bars = ax.patches
        # ranks 0..20 (21 values) in sbc.bins equal-width bins over [0, 21)
        counts, _ = np.histogram(sbc.ranks[:, c].numpy(), bins=sbc.bins, range=(0, sbc.num_posterior_samples + 1))
        np.testing.assert_array_equal([b.get_height() for b in bars], counts)
        assert counts.sum() == 40
        half = Z99 * math.sqrt(40 / sbc.bins * (1 - 1 / sbc.bins))
        np.testing.assert_allclose(_span(band), (40 / sbc.bins - half, 40 / sbc.bins + half), rtol=1e-9)
        assert ax.get_title().startswith(f"{sbc.names[c]}  (p={float(sbc.p_values[c]):.2g})")


def test_prediction_bands_draw_the_predictive_and_the_support(run):
    _, learner, _, test, _ = run
    post = learner.adapt(test)
    grid = torch.linspace(-2, 2, 30)
    pred = post.predict(grid[:, None])
    fig = dg.plot_prediction_bands(pred, grid, test.x_support, test.y_support, tasks=[0, 2, 4], levels=(0.9,))
    axes = _visible(fig)
    assert len(axes) == 3
    for ax, t in zip(axes, [0, 2, 4], strict=True):
        (mean,) = ax.get_lines()
        np.testing.assert_allclose(mean.get_xdata(), grid.numpy())
        np.testing.assert_allclose(mean.get_ydata(), pred.mean[t, :, 0].numpy(), rtol=1e-6)
        lo, hi = (b[t, :, 0].numpy() for b in pred.interval(0.9))
        # the filled polygon runs along the lower bound and back along the upper one: its corners are those points
        corners = {(round(float(x), 5), round(float(y), 5)) for x, y in ax.collections[0].get_paths()[0].vertices}
        x = grid.numpy()
        assert corners == {(round(float(a), 5), round(float(b), 5)) for a, b in zip(np.r_[x, x], np.r_[lo, hi], strict=True)}
        np.testing.assert_allclose(ax.collections[1].get_offsets(), np.c_[test.x_support[t, :, 0], test.y_support[t, :, 0]])
        assert ax.get_title() == f"task {t}  (K=3)"


def _embedded(page: str) -> dict:
    """``{alt: PNG bytes}`` of the images embedded in a report page."""
    found = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", page)
    return {name: base64.b64decode(data) for name, data in found}


# figure sizes in inches (set by each plot function) at the report's 100 dpi: the pixel size of each PNG
REPORT_PIXELS = {"training": (360, 600), "calibration": (420, 450), "pit": (600, 1200), "comparison": (360, 1200),
                 "shrinkage": (280, 680), "sbc_ranks": (260, 640)}


def test_report_embeds_every_plot_it_writes(run, tmp_path):
    _, learner, ev, test, sbc = run
    path = bm.report(tmp_path, evaluation=ev, learner=learner, posterior=learner.adapt(test), sbc=sbc,
                     info={"data": "test"})
    page = path.read_text()
    images = _embedded(page)
    assert sorted(images) == sorted(REPORT_PIXELS) and page.count("data:image/png;base64,") == 6
    for name, data in images.items():
        assert (tmp_path / "plots" / f"{name}.png").read_bytes() == data, name  # the file is what the page shows
        assert matplotlib.image.imread(io.BytesIO(data)).shape[:2] == REPORT_PIXELS[name], name
    assert "<h2>Predictive metrics</h2>" in page and "Simulation-based calibration" in page
    assert f"<td>{ev.get('conjugate', 4)['nll']:.3f}</td>" in page  # the metrics table holds the evaluation's numbers
    manifest = json.loads((tmp_path / ".bayesmeta-report.json").read_text())["files"]
    assert sorted(manifest) == sorted([f"plots/{n}.png" for n in REPORT_PIXELS] + ["report.html"])
    # a second report may replace its own files: only the evaluation's plots now, redrawn
    (tmp_path / "plots" / "pit.png").write_bytes(b"stale")
    page = bm.report(tmp_path, evaluation=ev).read_text()
    images = _embedded(page)
    assert sorted(images) == ["calibration", "comparison", "pit"] and "Simulation-based calibration" not in page
    assert (tmp_path / "plots" / "pit.png").read_bytes() == images["pit"]
    assert json.loads((tmp_path / ".bayesmeta-report.json").read_text())["files"] == manifest  # still its own


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
    assert found["history"]["loss"] == learner.history.loss and found["evaluation"].summary == ev.summary
    assert torch.equal(found["sbc"].ranks, sbc.ranks) and list(found["figures"]) == ["bands"]
    with pytest.raises(ValueError, match="training.png exists and was not written"):
        dg.plot_elbo_trace(learner.history).savefig(tmp_path / "plots" / "training.png")
        bm.report(tmp_path, **dg.load_run(tmp_path))
    (tmp_path / "plots" / "training.png").unlink()
    page = bm.report(tmp_path, **found).read_text()
    images = _embedded(page)  # redrawn: training, calibration, pit, comparison, sbc; embedded as saved: bands
    assert sorted(images) == ["bands", "calibration", "comparison", "pit", "sbc_ranks", "training"]
    assert images["bands"] == (tmp_path / "plots" / "bands.png").read_bytes()
    with pytest.raises(FileNotFoundError, match="nothing to report"):
        dg.load_run(tmp_path / "plots")


def test_report_of_an_ensemble_draws_every_member_trace(tmp_path):
    ens = bm.baselines.Ensemble(lambda: bm.baselines.FOMAML(x_dim=1, hidden=(4,)), n=2)
    ens.fit(bm.tasks.Sinusoid(), steps=3, progress=False)
    bm.report(tmp_path, learner=ens)
    assert matplotlib.image.imread(tmp_path / "plots" / "training.png").shape[:2] == REPORT_PIXELS["training"]
    lines = dg.plot_elbo_trace(ens.history).axes[0].get_lines()
    members = list(ens.history.values())
    assert len(lines) == 2 * len(members) == 4
    for raw, member in zip(lines[::2], members, strict=True):
        h = member if isinstance(member, dict) else member.as_dict()
        np.testing.assert_array_equal(raw.get_xdata(), h["step"])
        np.testing.assert_allclose(raw.get_ydata(), h["loss"], rtol=1e-12)


def _validated_history():
    val = [{"step": s, "nll": v, "coverage_90": c, "train_loss": lo, "per_shot": [{"shots": 1, "nll": v, "coverage_90": c,
                                                                                   "tasks": 4}]}
           for s, v, c, lo in ((20, 1.5, 0.9, 5.0), (40, 0.9, 0.88, 3.0), (60, 2.5, 0.7, 1.0))]
    note = "meta-overfitting: validation NLL rose from 0.900 (step 40) to 2.500 (step 60)"
    return {"step": [10, 20, 30, 40, 50, 60], "loss": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], "time": list(range(6)),
            "lr": [1e-3] * 6, "validation": val, "best_step": 40, "notes": [note]}


def test_training_plot_shows_validation_nll_and_the_step_kept():
    h = _validated_history()
    fig = dg.plot_elbo_trace(h)
    twin = fig.axes[1]
    val_line, best = twin.get_lines()
    np.testing.assert_array_equal(val_line.get_xdata(), [20, 40, 60])
    np.testing.assert_allclose(val_line.get_ydata(), [1.5, 0.9, 2.5])
    assert list(best.get_xdata()) == [40, 40]  # the vertical line at the best validation step
    assert twin.get_ylabel() == "validation NLL per point"


def test_report_shows_validation_and_the_meta_overfitting_warning(tmp_path):
    page = bm.report(tmp_path, history=_validated_history()).read_text()
    assert "<h2>Training and validation</h2>" in page
    assert "class='warn'><b>Warning:</b> meta-overfitting: validation NLL rose from 0.900" in page
    assert "best validation NLL at step 40" in page and "<td>2.500</td>" in page
