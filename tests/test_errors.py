"""Bad inputs and faults: one clear line (exit code 2 on the command line), and nothing left on disk."""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import bayesmeta as bm
import bayesmeta.io as bio
from bayesmeta.cli import main
from bayesmeta.evaluation.runner import MAX_FAMILY_SHOTS
from bayesmeta.runs.directory import LOCK_NAME, RunInUseError, RunLock

SMALL = ["--set", "model.hidden=[8]", "--set", "model.latent_dim=2", "--set", "train.tasks_per_step=4",
         "--set", "train.checkpoint_every=1"]


def _csv(rows_per_task=5, tasks=8, special=None) -> str:
    """``subject,time,response`` rows; ``special = (task, point, text)`` replaces one response."""
    lines = ["subject,time,response"]
    for t in range(tasks):
        for i in range(rows_per_task):
            y = f"{(t + 1) * 0.3 + 0.1 * i:.3f}"
            if special is not None and special[:2] == (t, i):
                y = special[2]
            lines.append(f"g{t},{0.5 * i},{y}")
    return "\n".join(lines) + "\n"


def _fit(data, out, *extra):
    return main(["fit", "--data", str(data), "--task", "subject", "--x", "time", "--y", "response", "--steps", "3",
                 "--out", str(out), "--no-progress", *SMALL, *extra])


def _one_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def _files(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run (3 steps) and its training CSV; tests copy it before changing it."""
    d = tmp_path_factory.mktemp("errors")
    (d / "train.csv").write_text(_csv())
    assert _fit(d / "train.csv", d / "run") == 0
    return d / "run"


@pytest.fixture
def run_copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def train_csv(run):
    return run.parent / "train.csv"


# 1. huge values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("special", "extra", "needles"), [
    ((7, 1, "1e300"), [], ["row 38, column 'response': value '1e300' is out of range"]),
    ((2, 3, "1e25"), [],
     ["row 15, column 'response': value 1e+25 is beyond ±1.8e+19", "square overflows float32"]),
])
def test_huge_values_are_reported_by_row_and_column_before_training(tmp_path, capsys, special, extra, needles):
    data = tmp_path / "big.csv"
    data.write_text(_csv(special=special))
    assert _fit(data, tmp_path / "runs" / "a", *extra) == 2
    line = _one_error(capsys, f"{data}: ", *needles)
    assert "task" not in line and "fitting" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_evaluate_and_predict_check_values_on_the_runs_scale(run_copy, tmp_path, capsys):
    before = _files(run_copy)
    test = tmp_path / "test.csv"
    test.write_text(_csv(special=(1, 2, "3e20")))
    assert main(["evaluate", str(run_copy), "--data", str(test), "--shots", "1"]) == 2
    _one_error(capsys, f"{test}: row 9, column 'response': value 3e+20 is beyond", "square overflows float32")
    query = tmp_path / "q.csv"
    query.write_text("time\n1.0\n\n3e38\n")
    sup = tmp_path / "s.csv"
    sup.write_text("time,response\n0.5,1.0\n")
    assert main(["predict", str(run_copy), "--support", str(sup), "--query", str(query), "--out",
                 str(tmp_path / "p.csv")]) == 2
    _one_error(capsys, f"{query}: row 4, column 'time': value 3e+38 is")
    assert _files(run_copy) == before and not (tmp_path / "p.csv").exists()


# 2. failed fits leave nothing ------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_on_missing_cuda_creates_nothing_and_a_retry_works(run, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert _fit(run.parent / "train.csv", out, "--device", "cuda") == 2
    _one_error(capsys, "'cuda' requested but CUDA is not available")
    assert not (tmp_path / "new").exists()
    assert _fit(run.parent / "train.csv", out) == 0


@pytest.mark.parametrize(("extra", "needle"), [
    (["--device", "gpu"], "config: train.device must be None, 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'; got 'gpu'"),
    (["--set", "data.val_fraction=0.9"], "training task(s) after the validation split; need at least 2"),
    (["--config", "."], ".: is a directory, not a config file"),
])
def test_bad_options_are_refused_before_the_run_directory_exists(run, tmp_path, capsys, extra, needle):
    assert _fit(run.parent / "train.csv", tmp_path / "out", *extra) == 2
    _one_error(capsys, needle)
    assert list(tmp_path.iterdir()) == []


def test_fit_failing_after_the_directory_exists_removes_only_what_it_created(run, tmp_path, capsys, monkeypatch):
    def broken_fit(self, *args, **kwargs):
        kwargs["on_checkpoint"](0, bm.inference.History())  # writes metrics.jsonl, as a real fit does
        raise ValueError("simulated failure during training")

    monkeypatch.setattr(bm.BayesLearner, "fit", broken_fit)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "a" / "b" / "run", tmp_path / "empty"):
        assert _fit(run.parent / "train.csv", out) == 2
        _one_error(capsys, "simulated failure during training")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any((tmp_path / "empty").iterdir())
    monkeypatch.undo()
    assert _fit(run.parent / "train.csv", tmp_path / "empty") == 0  # the corrected retry is not refused


def test_failed_force_fit_restores_the_run_it_replaced(run_copy, tmp_path, capsys, monkeypatch):
    before = _files(run_copy)
    (run_copy / "notes.txt").write_text("mine")
    data = tmp_path / "other.csv"
    data.write_text(_csv(tasks=5))
    monkeypatch.setattr(bio, "_write_file", _full_disk_after(3))  # config, split, run.json; then full
    assert _fit(data, run_copy, "--force") == 2
    _one_error(capsys, f"{run_copy / 'checkpoints' / 'last.pt'}: cannot write (no space left on device)")
    assert _files(run_copy) == {**before, Path("notes.txt"): b"mine"}


# 3. damaged files, full disk, read-only directory ---------------------------------------------------------
def _full_disk_after(n_ok: int):
    calls = []
    real = bio._write_file

    def write(fd, data):
        calls.append(len(data))
        if len(calls) > n_ok:
            os.write(fd, data[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)
    return write


def test_atomic_write_on_a_full_disk_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "learner.pt"
    target.write_bytes(b"old")
    monkeypatch.setattr(bio, "_write_file", _full_disk_after(0))
    with pytest.raises(OSError, match=f"{target}: cannot write \\(no space left on device\\)") as err:
        bio.atomic_torch_save({"w": torch.zeros(1000)}, target)
    assert err.value.errno == errno.ENOSPC and "unexpected pos" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["learner.pt"] and target.read_bytes() == b"old"


@pytest.mark.parametrize("n_ok", [0, 4])  # config.toml, or the checkpoint written during training
def test_fit_on_a_full_disk_is_one_line_and_leaves_nothing(run, tmp_path, capsys, monkeypatch, n_ok):
    monkeypatch.setattr(bio, "_write_file", _full_disk_after(n_ok))
    assert _fit(run.parent / "train.csv", tmp_path / "out") == 2
    _one_error(capsys, f"{tmp_path / 'out'}/", "cannot write (no space left on device)")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_on_a_full_disk_writes_both_files_or_neither(run_copy, tmp_path, capsys, monkeypatch):
    (run_copy / "eval.json").write_text("earlier")
    before = _files(run_copy)
    monkeypatch.setattr(bio, "_write_file", _full_disk_after(1))  # eval.json written, eval.csv fails
    test = tmp_path / "test.csv"
    test.write_text(_csv(tasks=3))
    assert main(["evaluate", str(run_copy), "--data", str(test), "--shots", "1"]) == 2
    _one_error(capsys, f"{run_copy / 'eval.csv'}: cannot write (no space left on device)")
    assert _files(run_copy) == before


def test_read_only_run_directory_is_reported_before_evaluating(run_copy, tmp_path, capsys, monkeypatch):
    before = _files(run_copy)
    test = tmp_path / "test.csv"
    test.write_text(_csv(tasks=3))

    def refuse(*args, dir=None, **kwargs):  # what a read-only directory does (root ignores chmod)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, "tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["evaluate", str(run_copy), "--data", str(test), "--shots", "1"]) == 2
    _one_error(capsys, f"{run_copy}: cannot write into the directory (permission denied)")
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 2
    _one_error(capsys, "cannot write (permission denied)")
    assert _files(run_copy) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_really_read_only_run_directory(run_copy, capsys):
    before = _files(run_copy)
    os.chmod(run_copy, 0o555)
    try:
        assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 2
        _one_error(capsys, "permission denied")
    finally:
        os.chmod(run_copy, 0o755)
    assert _files(run_copy) == before


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_damaged_model_and_checkpoint_are_one_line(run_copy, tmp_path, capsys, damage):
    for name in ("learner.pt", "checkpoints/last.pt"):
        p = run_copy / name
        p.write_bytes(p.read_bytes()[:2000] if damage == "truncate" else os.urandom(3000))
    before = _files(run_copy)
    test = tmp_path / "test.csv"
    test.write_text(_csv(tasks=3))
    assert main(["evaluate", str(run_copy), "--data", str(test), "--shots", "1"]) == 2
    line = _one_error(capsys, f"{run_copy / 'learner.pt'}: not a saved BayesLearner, or a corrupt or truncated file")
    assert "weights_only" not in line
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 2
    _one_error(capsys, f"{run_copy / 'checkpoints' / 'last.pt'}: corrupt or truncated checkpoint")
    assert _files(run_copy) == before


def test_load_of_random_bytes_is_a_clear_value_error(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="not a saved BayesLearner, or a corrupt or truncated file") as err:
        bm.BayesLearner.load(p)
    assert str(p) in str(err.value) and "weights_only" not in str(err.value)
    assert err.value.__cause__ is not None  # the original error is chained
    with pytest.raises(IsADirectoryError, match="is a directory"):
        bm.BayesLearner.load(tmp_path)
    torch.save({"format": "bayesmeta.BayesLearner/1", "model_class": "bayesmeta.models:Nope"}, p)
    with pytest.raises(ValueError, match="the model class bayesmeta.models:Nope cannot be imported"):
        bm.BayesLearner.load(p)


# 4. paths: a directory, a byte-order mark, --resume from elsewhere, old relative configs ------------------
def test_data_directory_and_byte_order_mark(run, tmp_path, capsys):
    assert _fit(tmp_path, tmp_path / "out") == 2
    _one_error(capsys, f"{tmp_path}: is a directory, not a CSV file")
    assert not (tmp_path / "out").exists()
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (run.parent / "train.csv").read_bytes().replace(b"\n", b"\r\n"))
    assert _fit(bom, tmp_path / "out") == 0


def test_resume_from_another_directory_and_old_relative_configs(run_copy, train_csv, tmp_path, capsys, monkeypatch):
    cfg = bm.runs.load_config(run_copy / "config.toml")
    assert os.path.isabs(cfg.data.path) and cfg.data.path == str(train_csv.resolve())
    shutil.copy(cfg.data.path, tmp_path / "train.csv")  # next to the run directory: its parent
    monkeypatch.chdir(tmp_path / "run")
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "4", "--no-progress"]) == 0
    text = (run_copy / "config.toml").read_text()
    (run_copy / "config.toml").write_text(text.replace(f'path = "{cfg.data.path}"', 'path = "train.csv"'))
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 0  # old config
    assert f"from {tmp_path / 'train.csv'}" in capsys.readouterr().err
    (tmp_path / "train.csv").unlink()
    before = _files(run_copy)
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "6", "--no-progress"]) == 2
    _one_error(capsys, "data.path 'train.csv' is relative and found neither from the current directory nor from "
                       "the run directory's parent")
    assert _files(run_copy) == before


# 5. predict --out ------------------------------------------------------------------------------------------
def test_predict_refuses_to_replace_output_without_force(run, tmp_path, capsys):
    sup, query, out = tmp_path / "s.csv", tmp_path / "q.csv", tmp_path / "p.csv"
    sup.write_text("time,response\n0.5,1.0\n")
    query.write_text("time\n1.0\n2.0\n")
    out.write_text("precious\n")
    args = ["predict", str(run), "--support", str(sup), "--query", str(query), "--out"]
    assert main([*args, str(out)]) == 2
    _one_error(capsys, f"{out} exists; use --force to replace it")
    assert out.read_text() == "precious\n"
    assert main([*args, str(tmp_path)]) == 2
    _one_error(capsys, f"{tmp_path}: --out is a directory")
    assert main([*args, str(out), "--force"]) == 0
    assert out.read_text().startswith("subject,time,response_mean") and len(out.read_text().splitlines()) == 3


# 7. evaluate with a dict {shots: TaskBatch} ----------------------------------------------------------------
def _oracle_batches():
    family = bm.tasks.HierarchicalLinear(dim=1)
    b10 = family.sample(4, shots=10, num_query=5, generator=torch.Generator().manual_seed(0))
    b3 = family.sample(2, shots=3, num_query=5, generator=torch.Generator().manual_seed(1))
    learner = family.oracle_predict
    return family, learner, b10, b3


def test_evaluate_dict_checks_each_batch_against_its_shot_count():
    family, learner, b10, b3 = _oracle_batches()
    with pytest.raises(ValueError, match="no task has 10 support points"), pytest.warns(UserWarning):
        bm.evaluate(learner, {10: b3}, oracle=False)
    pad = lambda b, s: bm.TaskBatch(torch.nn.functional.pad(b.x_support, (0, 0, 0, s)),  # noqa: E731
                                    torch.nn.functional.pad(b.y_support, (0, 0, 0, s)),
                                    torch.nn.functional.pad(b.mask_support, (0, s)), *b.query)
    mixed = bm.TaskBatch(*(torch.cat([a, b]) for a, b in zip(b10.support + b10.query,
                                                               pad(b3, 7).support + b3.query, strict=True)))
    with pytest.warns(UserWarning, match=r"2 task\(s\) skipped at shots=10.*\[4, 5\]"):
        ev = bm.evaluate(learner, {10: mixed}, oracle=False)
    assert ev.summary[0]["num_tasks"] == 4 and [r["task"] for r in ev.rows] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"tasks\[3\]: task 0 has 10 observed support points, more than its key 3"):
        bm.evaluate(learner, {3: b10}, oracle=False)


# 8. baseline arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"x_dim": 0}, "x_dim must be an int >= 1; got 0"),
    ({"x_dim": 1, "y_dim": -2}, "y_dim must be an int >= 1; got -2"),
    ({"x_dim": 1.5}, "x_dim must be an int >= 1; got 1.5"),
    ({"x_dim": True}, "x_dim must be an int >= 1; got True"),
    ({"x_dim": 1, "hidden": (40, 0)}, r"hidden must be a sequence of ints >= 1 \(layer widths\); got \(40, 0\)"),
    ({"x_dim": 1, "hidden": (40.5,)}, r"hidden must be .*; got \(40.5,\)"),
    ({"x_dim": 1, "hidden": 40}, "hidden must be a sequence of ints >= 1 .*; got 40"),
    ({"x_dim": 1, "inner_lr": float("nan")}, "inner_lr must be > 0 .*; got nan"),
    ({"x_dim": 1, "inner_steps": True}, "inner_steps must be an int >= 1; got True"),
    ({"x_dim": 1, "adapt_steps": 0}, "adapt_steps must be None or an int >= 1; got 0"),
])
@pytest.mark.parametrize("cls", ["MAML", "FOMAML", "MetaSGD", "Reptile"])
def test_baseline_arguments_are_validated(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(bm.baselines, cls)(**kwargs)


# 9. the run lock -------------------------------------------------------------------------------------------
def test_a_run_held_by_a_live_process_is_refused(run_copy, train_csv, capsys):
    before = _files(run_copy)
    with RunLock(run_copy):
        assert (run_copy / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(RunInUseError, match=f"in use by process {os.getpid()}"):
            RunLock(run_copy).acquire()
        assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 2
        _one_error(capsys, f"{run_copy} is in use by process {os.getpid()} (lock file {run_copy / LOCK_NAME})")
        assert _fit(train_csv, run_copy, "--force") == 2
        _one_error(capsys, "is in use by process")
    assert not (run_copy / LOCK_NAME).exists() and _files(run_copy) == before


def test_a_stale_lock_of_a_killed_process_is_taken_over(run_copy, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / LOCK_NAME).write_text(f"{dead.pid}\n")
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 0
    assert f"taking over the lock of process {dead.pid}, which is not running" in capsys.readouterr().err
    assert not (run_copy / LOCK_NAME).exists()
    assert bm.inference.load_checkpoint(run_copy / "checkpoints" / "last.pt")["step"] == 5


def test_lock_is_released_when_the_fit_fails(run_copy, capsys, monkeypatch):
    monkeypatch.setattr(bio, "_write_file", _full_disk_after(0))
    assert main(["fit", "--out", str(run_copy), "--resume", "--steps", "5", "--no-progress"]) == 2
    _one_error(capsys, "no space left on device")
    assert not (run_copy / LOCK_NAME).exists()


# 10. shot counts -------------------------------------------------------------------------------------------
def test_shots_are_validated_before_any_work():
    family, learner, b10, _ = _oracle_batches()
    for shots, match in (((0, 2000), f"shots=2000: at most {MAX_FAMILY_SHOTS} shots per task of a family"),
                         ((-1,), r"shots must be ints >= 0; got \[-1\]"), ((1.5,), r"got \[1.5\]"),
                         ((True,), r"got \[True\]"), ((2, 2), "duplicates")):
        with pytest.raises(ValueError, match=match):
            bm.evaluate(learner, family, shots=shots, num_tasks=2)
    with pytest.raises(ValueError, match=r"shots=11: no task has that many support points \(the largest has 10\)"):
        bm.evaluate(learner, b10, shots=(1, 11))


def test_many_shot_tasks_are_scored_in_small_chunks_with_a_progress_bar(capsys):
    family = bm.tasks.HierarchicalLinear(dim=1)
    batch = family.sample(12, shots=200, num_query=3, generator=torch.Generator().manual_seed(0))
    calls = []

    def learner(xs, ys, xq, ms):
        calls.append(xs.shape[0])
        return family.oracle_predict(xs, ys, xq, ms)

    ev = bm.evaluate(learner, {200: batch}, oracle=False, progress=True, name="oracle")
    assert calls == [5, 5, 2] and ev.summary[0]["num_tasks"] == 12  # 1000 support points per chunk
    err = capsys.readouterr().err
    assert "oracle, 200-shot" in err and "0/12 [" in err and "task/s" in err  # a bar over tasks


def test_cli_evaluate_rejects_negative_shots(run, tmp_path, capsys):
    test = tmp_path / "test.csv"
    test.write_text(_csv(tasks=3))
    assert main(["evaluate", str(run), "--data", str(test), "--shots", "1", "-2"]) == 2
    _one_error(capsys, "--shots must be distinct ints >= 0; got [1, -2]")
