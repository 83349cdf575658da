"""Experience replay: reservoir sampling, mixing into batches, checkpoints and resume."""

import shutil

import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference.replay import ReplayBuffer
from bayesmeta.tasks import Phases, Sinusoid


def _tasks(start, k, n=3):
    ids = torch.arange(start, start + k, dtype=torch.float32)
    return ids[:, None, None].expand(k, n, 1).clone(), ids[:, None, None].expand(k, n, 1).clone()


def test_reservoir_is_a_uniform_sample_of_the_stream():
    """Each of 200 streamed tasks ends in a 20-slot reservoir with probability 20/200 (Vitter's algorithm R)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(200)
    runs = 2000
    for _ in range(runs):
        buf = ReplayBuffer(20, 0.5)
        for start in range(0, 200, 8):  # batches of 8, in stream order
            buf.add(*_tasks(start, 8), g)
        ids = buf.x[: buf.size, 0, 0].long()
        assert len(set(ids.tolist())) == 20  # distinct tasks
        counts[ids] += 1
    freq = counts / runs  # each ~Binomial(2000, 0.1)/2000: sd 0.0067
    assert float((freq - 0.1).abs().max()) < 0.03  # 4.5 sd over 200 tasks
    # the first and last quarters of the stream are kept equally often (no recency bias)
    assert abs(float(freq[:50].mean() - freq[150:].mean())) < 0.01


def test_fifo_keeps_the_latest_tasks():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(10, 0.5, strategy="fifo")
    for start in range(0, 37, 6):
        buf.add(*_tasks(start, 6), g)
    assert sorted(buf.x[:, 0, 0].long().tolist()) == list(range(32, 42))
    assert buf.seen == 42 and len(buf) == 10


def test_batches_mix_replayed_and_fresh_tasks_and_the_buffer_spans_phases():
    stream = Phases([Sinusoid(amplitude=(0.1, 0.2)), Sinusoid(amplitude=(4.9, 5.0))], steps_per_phase=10)
    buf = ReplayBuffer(1000, fraction=0.25)
    learner = bm.baselines.MAML(x_dim=1, y_dim=1)
    learner.fit(stream, steps=20, tasks_per_step=8, replay=buf, progress=False)
    assert buf.seen == 8 + 19 * 6  # first step all fresh, then 2 of 8 replayed
    big = (buf.y[: buf.size].abs().amax((1, 2)) > 1.0)  # phase-2 tasks (amplitude ~5) vs phase 1 (<= 0.2 + noise)
    assert int(big.sum()) == 10 * 6  # phase 2 added 6 fresh tasks per step for 10 steps
    assert len(buf) == buf.seen


def test_replay_state_is_checkpointed_and_resumed_bit_for_bit(tmp_path):
    stream = Phases([Sinusoid(amplitude=(0.1, 1)), Sinusoid(amplitude=(3, 5))], steps_per_phase=6)
    opts = dict(tasks_per_step=8, progress=False, checkpoint_every=4, seed=3)

    def fresh():
        torch.manual_seed(0)
        return bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(16,))

    def keep_step_4(step, history):
        if step == 4:
            shutil.copy(tmp_path / "a.pt", tmp_path / "b.pt")

    full_buf = ReplayBuffer(40, 0.5)
    full = fresh().fit(stream, 12, replay=full_buf, checkpoint=tmp_path / "a.pt", on_checkpoint=keep_step_4, **opts)
    # continue the run from its step-4 checkpoint (steps 5..12, across the phase change) with a new buffer object
    resumed_buf = ReplayBuffer(40, 0.5)
    resumed = fresh()
    resumed.fit(stream, 12, replay=resumed_buf, checkpoint=tmp_path / "b.pt", resume=True, **opts)
    assert resumed_buf.seen == full_buf.seen and torch.equal(resumed_buf.x, full_buf.x)
    for a, b in zip(full.meta_parameters(), resumed.meta_parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(capacity=0), "capacity must be an int >= 1"),
    (dict(capacity=10, fraction=1.0), r"fraction must be a number in \[0, 1\)"),
    (dict(capacity=10, fraction=-0.1), "fraction"),
    (dict(capacity=10, strategy="lru"), "strategy must be one of"),
])
def test_buffer_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReplayBuffer(**kwargs)


def test_fit_refuses_replay_that_cannot_apply():
    learner = bm.baselines.MAML(x_dim=1, y_dim=1)
    with pytest.raises(ValueError, match="capacity=4 is below tasks_per_step=8"):
        learner.fit(Sinusoid(), 2, tasks_per_step=8, replay=ReplayBuffer(4), progress=False)
    pool = Sinusoid().sample(10, shots=5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="TaskBatch pool is trained on in full"):
        learner.fit(pool, 2, tasks_per_step=4, replay=ReplayBuffer(8), progress=False, validation=False)
    exact = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)  # type-II ML on a pool
    with pytest.raises(ValueError, match="TaskBatch pool is trained on in full"):
        exact.fit(pool, 2, replay=ReplayBuffer(64), progress=False, validation=False)
    with pytest.raises(TypeError, match="replay must be a bayesmeta.ReplayBuffer"):
        learner.fit(Sinusoid(), 2, replay=100, progress=False)
    ensemble = bm.baselines.Ensemble(lambda: bm.baselines.MAML(x_dim=1, y_dim=1), n=2)
    with pytest.raises(ValueError, match="not supported for ensembles"):
        ensemble.fit(Sinusoid(), 2, replay=ReplayBuffer(64), progress=False)


def test_resume_refuses_another_replay_setting(tmp_path):
    stream = Phases([Sinusoid(), Sinusoid(amplitude=(3, 5))], steps_per_phase=1)
    learner = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,))
    learner.fit(stream, 2, tasks_per_step=4, replay=ReplayBuffer(16), checkpoint=tmp_path / "c.pt", progress=False)
    with pytest.raises(ValueError, match="checkpoint has a replay buffer"):
        learner.fit(stream, 4, tasks_per_step=4, checkpoint=tmp_path / "c.pt", resume=True, progress=False)
    before = [p.detach().clone() for p in learner.meta_parameters()]
    learner.fit(stream, 2, tasks_per_step=4, progress=False, seed=5)  # other weights than the checkpoint's
    changed = [p.detach().clone() for p in learner.meta_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, changed, strict=True))
    with pytest.raises(ValueError, match="capacity, fraction, strategy"):
        learner.fit(stream, 4, tasks_per_step=4, replay=ReplayBuffer(16, 0.25), checkpoint=tmp_path / "c.pt",
                    resume=True, progress=False)
    # the refused resume left the learner as it was (not half-loaded from the checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(changed, learner.meta_parameters(), strict=True))


def test_a_phases_stream_cut_short_warns():
    stream = Phases([Sinusoid(), Sinusoid(amplitude=(3, 5))], steps_per_phase=3)
    with pytest.warns(UserWarning, match=r"steps=2 ends in phase 1 of the 2 phases"):
        bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,)).fit(stream, 2, tasks_per_step=4, progress=False)


def test_a_buffer_of_another_kind_of_stream_is_refused_naming_the_buffer():
    """A buffer filled from regression tasks is not replayed into a Bernoulli fit (nor blamed on the lr)."""
    buf = ReplayBuffer(capacity=32, fraction=0.5)
    bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,)).fit(Sinusoid(), steps=2, tasks_per_step=8, replay=buf,
                                                         max_points=10, progress=False)
    assert buf.outcome == "real" and len(buf) == 12  # 8 fresh, then 4 fresh + 4 replayed
    logistic = bm.tasks.HierarchicalLogistic(dim=1)
    learner = bm.BayesLearner(bm.models.HierarchicalLogisticRegression(x_dim=1))
    with pytest.raises(ValueError, match=r"replay: the ReplayBuffer holds 12 tasks of a stream with real outcomes "
                                         r"but this fit's stream \(HierarchicalLogistic\) has bernoulli outcomes"):
        learner.fit(logistic, steps=2, tasks_per_step=8, replay=buf, max_points=10, progress=False)
    buf.outcome = None  # a buffer restored from an older checkpoint: its values still tell
    with pytest.raises(ValueError, match=r"outcome y=.* is not 0 or 1 .*give this fit a new ReplayBuffer"):
        learner.fit(logistic, steps=2, tasks_per_step=8, replay=buf, max_points=10, progress=False)
    with pytest.raises(ValueError, match=r"x_dim=1, y_dim=1 but this fit's stream .* has x_dim=2"):
        bm.baselines.MAML(x_dim=2, y_dim=1, hidden=(8,)).fit(bm.tasks.HierarchicalLinear(dim=2), steps=2,
                                                             tasks_per_step=8, replay=buf, progress=False)
    state = buf.state_dict()
    again = ReplayBuffer(capacity=32, fraction=0.5)
    again.load_state_dict(state)
    assert again.outcome == buf.outcome
