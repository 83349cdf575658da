"""``bm.evaluate``: the whole pipeline scored with the Bayes oracle as the learner."""

import json
import math

import pytest
import torch

import bayesmeta as bm


@pytest.fixture(scope="module")
def family():
    return bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5)


def _oracle(family):
    return family.oracle_predict


def test_oracle_as_learner_has_zero_gap_and_nominal_coverage(family):
    ev = bm.evaluate(_oracle(family), family, shots=(1, 5), num_tasks=400, num_query=50, name="oracle")
    assert ev.methods == ["oracle"] and ev.shots == [1, 5]
    for k in (1, 5):
        row = ev.get("oracle", k)
        assert row["num_tasks"] == 400 and row["gap"] == pytest.approx(0.0, abs=1e-9)
        m = 400 * 50
        for lv in (0.5, 0.8, 0.9, 0.95):
            assert abs(row[f"coverage_{100 * lv:g}"] - lv) < 4 * math.sqrt(lv * (1 - lv) / m)
        assert row["calibration_error"] < 0.01
        assert sum(row["pit_counts"]) == m
    assert len(ev.rows) == 800 and {"nll", "mse", "crps", "gap", "coverage_90"} <= set(ev.rows[0])


def test_per_task_rows_agree_with_summary(family):
    ev = bm.evaluate(_oracle(family), family, shots=(3,), num_tasks=50, num_query=20)
    nll = torch.tensor([r["nll"] for r in ev.rows], dtype=torch.float64)
    assert ev.summary[0]["nll"] == pytest.approx(float(nll.mean()), abs=1e-12)
    assert ev.summary[0]["nll_se"] == pytest.approx(float(nll.std() / math.sqrt(50)), abs=1e-12)


def test_evaluate_learner_is_reproducible(family):
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    learner.fit(family, steps=5, progress=False)
    a = bm.evaluate(learner, family, shots=(2,), num_tasks=30, num_query=10)
    b = bm.evaluate(learner, family, shots=(2,), num_tasks=30, num_query=10)
    assert a.summary[0]["crps"] == b.summary[0]["crps"]  # CRPS draws are seeded
    assert a.summary[0]["method"] == "BayesLearner"


def test_json_and_csv_round_trip(family, tmp_path):
    ev = bm.evaluate(_oracle(family), family, shots=(1, 2), num_tasks=10, num_query=5, name="oracle")
    ev.to_json(tmp_path / "eval.json")
    back = bm.Evaluation.from_json(tmp_path / "eval.json")
    assert back.summary == json.loads(json.dumps(ev.summary)) and back.rows == ev.rows
    ev.to_csv(tmp_path / "eval.csv")
    lines = (tmp_path / "eval.csv").read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith("method,shots,task,nll")
    ev.to_csv(tmp_path / "summary.csv", summary=True)
    assert "calibration_curve" not in (tmp_path / "summary.csv").read_text()
    assert "| oracle | 2 | 10 |" in ev.table()


def test_task_batch_input_reports_skipped_tasks(family):
    full = family.sample(6, shots=4, num_query=5, generator=torch.Generator().manual_seed(0))
    mask = full.mask_support.clone()
    mask[2, 1:] = False  # task 2 has 1 support point
    from dataclasses import replace
    batch = replace(full, mask_support=mask)
    with pytest.warns(UserWarning, match=r"1 task\(s\) skipped at shots=3.*\[2\]"):
        ev = bm.evaluate(_oracle(family), batch, shots=(1, 3))
    assert ev.get(ev.methods[0], 3)["skipped_tasks"] == [2]
    assert ev.get(ev.methods[0], 1)["num_tasks"] == 6
    assert [r["task"] for r in ev.rows if r["shots"] == 3] == [0, 1, 3, 4, 5]


def test_first_shots_takes_the_first_observed_points():
    b = bm.TaskBatch.from_arrays(x_support=[[0.0, 1.0, 2.0], [5.0]], y_support=[[1.0, 2.0, 3.0], [4.0]])
    k2, kept = b.first_shots(2)
    assert kept.tolist() == [0] and k2.x_support[0, :, 0].tolist() == [0.0, 1.0]
    k1, kept = b.first_shots(1)
    assert kept.tolist() == [0, 1] and k1.x_support[:, 0, 0].tolist() == [0.0, 5.0]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"metrics": ("nll", "accuracy")}, r"unknown metric\(s\) \['accuracy'\]"),
    ({"levels": (0.5, 1.0)}, "levels: every level must be in"),
    ({"num_tasks": 0}, "num_tasks must be an int >= 1"),
    ({"shots": ()}, "shots must name at least one"),
])
def test_bad_arguments_raise(family, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bm.evaluate(_oracle(family), family, **{"shots": (1,), **kwargs})


def test_empty_tasks_raise(family):
    with pytest.raises(ValueError, match="no tasks"):
        bm.evaluate(_oracle(family), {})
    with pytest.raises(ValueError, match="no tasks"):
        bm.evaluate(_oracle(family), family.sample(3, shots=1, num_query=1)[[]])
    with pytest.raises(TypeError, match="tasks must be"):
        bm.evaluate(_oracle(family), [1, 2])


def test_predictive_with_nans_is_reported(family):
    def broken(xs, ys, xq, ms):
        pred = family.oracle_predict(xs, ys, xq, ms)
        pred.loc[0, 1] = float("nan")
        return pred
    with pytest.raises(ValueError, match="samples of task 1"):
        bm.evaluate(broken, family, shots=(1,), num_tasks=3)


def test_make_test_sets_is_seeded_and_is_what_evaluate_scores(family):
    sets = bm.evaluation.make_test_sets(family, (1, 5), num_tasks=30, num_query=10, seed=3)
    for k in (1, 5):  # the draws evaluate made before the builder existed: one generator per shot count
        ref = family.sample(30, shots=k, num_query=10, generator=torch.Generator().manual_seed(3 * 1000 + k))
        assert torch.equal(sets[k].x_support, ref.x_support) and torch.equal(sets[k].y_query, ref.y_query)
    alone = bm.evaluation.make_test_sets(family, (5,), num_tasks=30, num_query=10, seed=3)
    assert torch.equal(alone[5].y_support, sets[5].y_support)  # a set does not depend on the other shot counts
    from_family = bm.evaluate(_oracle(family), family, shots=(1, 5), num_tasks=30, num_query=10, seed=3)
    from_sets = bm.evaluate(_oracle(family), sets, oracle=family, seed=3)
    assert [r["nll"] for r in from_family.rows] == [r["nll"] for r in from_sets.rows]
    with pytest.raises(ValueError, match="shots has duplicates"):
        bm.evaluation.make_test_sets(family, (1, 1))


def test_markdown_table_and_plus_minus():
    from bayesmeta.evaluation.results import markdown_table, plus_minus

    assert markdown_table(["a", "b"], [[1, "x"], [2.5, ""]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |"
    assert plus_minus({"nll": 1.0, "nll_se": 0.25}, "nll") == "1.000 ± 0.250"
    assert plus_minus({"nll": 1.0, "nll_se": float("nan")}, "nll") == "1.000" and plus_minus({}, "gap") == "-"


def test_query_values_outside_the_models_support_are_named_before_any_scoring(monkeypatch):
    learner = bm.BayesLearner(bm.models.HierarchicalPoissonRegression(x_dim=1))
    x, y = torch.zeros(4, 6, 1), torch.ones(4, 6, 1)
    y[3, 4, 0] = 2.5  # a query point: the support is each task's first 2 points
    tasks = bm.TaskBatch(x[:, :2], y[:, :2], torch.ones(4, 2, dtype=torch.bool), x[:, 2:], y[:, 2:],
                         torch.ones(4, 4, dtype=torch.bool))
    monkeypatch.setattr(learner, "adapt", lambda *a, **k: pytest.fail("adapted before the values were checked"))
    with pytest.raises(ValueError, match=r"^evaluate: tasks y_query: task 3, point 2: value 2.5 is outside the support "
                                         r"of the observation site 'y' \(Poisson: an integer >= 0\)$"):
        bm.evaluate(learner, tasks, shots=(1, 2))
