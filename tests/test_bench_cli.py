"""``bayesmeta bench NAME``: each benchmark a sub-command with only its own flags (parsing only)."""

import pytest

from bayesmeta.cli import _parser, main


def _parse(*argv):
    return _parser().parse_args(["bench", *argv])


def _flags(name):
    sub = next(a for a in _parser()._subparsers._group_actions[0].choices["bench"]._actions
               if a.dest == "benchmark").choices[name]
    return {s for a in sub._actions for s in a.option_strings} - {"-h", "--help"}


SHARED = {"--out", "--threads"}


def test_each_benchmark_has_only_its_own_flags():
    assert _flags("sinusoid") == SHARED | {"--variants", "--max-time", "--seed", "--device", "--num-tasks",
                                           "--no-progress"}
    assert _flags("compare") == SHARED | {"--families", "--methods", "--budget", "--sweep-seconds", "--classic-budget",
                                          "--seed", "--device", "--num-tasks", "--tune-seconds"}
    assert _flags("throughput") == SHARED | {"--batch-sizes", "--learners", "--seconds", "--processes",
                                             "--predict-batches", "--device"}
    assert _flags("exact-fit") == SHARED | {"--repeats", "--seed"}
    assert _flags("glmm") == SHARED | {"--seeds", "--groups", "--steps", "--no-progress"}
    assert _flags("pools") == SHARED | {"--cases", "--steps", "--last-tasks", "--seed", "--device", "--num-tasks",
                                        "--no-progress", "--hidden", "--latent-dim", "--weight-decay"}
    assert _flags("continual") == SHARED | {"--methods", "--steps-per-phase", "--phases", "--capacity", "--fraction",
                                            "--num-tasks", "--seed", "--device", "--no-progress"}
    assert _flags("tune") == SHARED | {"--minutes", "--workers", "--trial-seconds", "--kill-at", "--num-tasks",
                                       "--no-confirm", "--seed"}


def test_defaults_and_values_reach_the_namespace():
    a = _parse("sinusoid", "--variants", "default", "iwae-flow", "--max-time", "60", "--threads", "1")
    assert (a.benchmark, a.variants, a.max_time, a.threads, a.out, a.num_tasks) == (
        "sinusoid", ["default", "iwae-flow"], 60.0, 1, "bench_out/sinusoid", 1000)
    c = _parse("compare", "--budget", "5", "--families", "linear")
    assert c.budget == 5.0 and c.families == ["linear"] and c.methods[0] == "bayes" and c.out == "bench_out/compare"
    t = _parse("throughput", "--batch-sizes", "8", "256")
    assert t.batch_sizes == [8, 256] and t.learners == ["amortized", "maml"] and t.processes == [1, 2]
    e = _parse("exact-fit", "--repeats", "2", "--out", "x")
    assert (e.repeats, e.seed, e.out) == (2, 0, "x")


@pytest.mark.parametrize("argv", [
    ["compare", "--variants", "default"],       # sinusoid's flag
    ["sinusoid", "--budget", "5"],              # compare's flag
    ["sinusoid", "--batch-sizes", "8"],         # throughput's flag
    ["throughput", "--seed", "1"],              # throughput has no seed
    ["exact-fit", "--device", "cuda"],          # exact-fit runs on the CPU
    ["nope"],
    [],
])
def test_a_flag_of_another_benchmark_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as err:
        _parse(*argv)
    assert err.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_lists_every_benchmark_and_each_its_flags(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("sinusoid", "compare", "throughput", "exact-fit")) and "examples:" in out
    with pytest.raises(SystemExit):
        main(["bench", "compare", "--help"])
    out = capsys.readouterr().out
    assert "--budget" in out and "--variants" not in out and "--batch-sizes" not in out


def test_errors_name_the_benchmark(tmp_path, capsys):
    assert main(["bench", "compare", "--families", "nope", "--out", str(tmp_path)]) == 2
    assert "bayesmeta bench compare: error: unknown family or method ['nope']" in capsys.readouterr().err


def test_exact_fit_tiny_run(tmp_path, capsys):
    import json

    assert main(["bench", "exact-fit", "--repeats", "1", "--out", str(tmp_path), "--threads", "1"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["benchmark"] == "exact-fit" and max(res["relative_error"].values()) < 1e-3
    assert "| ours |" in capsys.readouterr().out


def test_pools_benchmark_runs_with_tiny_arguments(tmp_path, capsys):
    import json

    main(["bench", "pools", "--cases", "linear-100", "--steps", "60", "--num-tasks", "4", "--last-tasks", "2",
          "--out", str(tmp_path), "--no-progress", "--hidden", "16", "--latent-dim", "2", "--weight-decay", "0.01"])
    result = json.loads((tmp_path / "results.json").read_text())
    case = result["cases"]["linear-100"]
    assert case["pool_tasks"] == 100 and case["validations"] >= 1 and case["best_step"] is not None
    assert result["options"] == {"steps": 60, "seed": 0, "model": {"hidden": [16], "latent_dim": 2}, "weight_decay": 0.01}
    rows = {(r["method"], r["shots"]) for r in result["summary"]}
    assert {("linear-100/best-validation", k) for k in (1, 5, 10)} <= rows
    assert "linear-100" in capsys.readouterr().out


def test_continual_bench_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    import json

    out = tmp_path / "continual"
    assert main(["bench", "continual", "--methods", "maml", "--steps-per-phase", "3", "--phases", "2",
                 "--capacity", "64", "--num-tasks", "4", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    arms = result["results"]["maml"]
    assert [a["name"] for a in arms] == ["no replay", "replay", "joint"]
    assert all(len(a["nll"]) == 2 and len(a["nll"][0]) == 2 for a in arms)  # [after phase, on phase]
    assert set(result["summary"]["maml"]) >= {"forgetting_no_replay", "forgetting_replay", "final_difference"}
    assert (out / "plots" / "forgetting_maml.png").is_file() and (out / "report.html").is_file()
    assert "forgetting (phase 1)" in capsys.readouterr().out


def test_bench_refuses_bad_continual_settings(tmp_path, capsys):
    assert main(["bench", "continual", "--fraction", "1.5", "--out", str(tmp_path / "c")]) == 2
    assert "fraction must be a number in [0, 1)" in capsys.readouterr().err


def test_glmm_tiny_run(tmp_path, capsys):
    import json

    assert main(["bench", "glmm", "--seeds", "1", "--groups", "6", "--steps", "20", "--out", str(tmp_path),
                 "--threads", "1", "--no-progress"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    polished, plain = res["rows"]
    assert res["benchmark"] == "glmm" and polished["steps"] == 20 and "fixed_effect_error" in polished
    assert polished["polish_kept"] and not plain["polish_kept"]
    assert polished["fixed_effect_error"] < 1e-3  # the polish reaches the maximum whatever the budget
    out = capsys.readouterr().out
    assert "| 20 |" in out and "| 20, polish=False |" in out
