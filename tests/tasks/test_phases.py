"""Task streams that change in phases, and their joint mixture."""

import pytest
import torch

import bayesmeta as bm
from bayesmeta.tasks import Phases, Sinusoid, TaskMixture, drifting_sinusoid


def test_phase_schedule_and_last_phase_holds():
    stream = Phases([Sinusoid(amplitude=(0.1, 1)), Sinusoid(amplitude=(2, 3)), Sinusoid(amplitude=(4, 5))], 10)
    assert [stream.phase_at(s) for s in (1, 10, 11, 20, 21, 30, 31, 500)] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert stream.total_steps == 30 and len(stream) == 3
    assert stream.family_at(15) is stream.families[1]


def test_mixture_draws_each_family_in_proportion():
    mix = TaskMixture([Sinusoid(amplitude=(0.1, 1.0)), Sinusoid(amplitude=(4.0, 5.0))], weights=[1, 3])
    b = mix.sample(4000, shots=2, num_query=3, generator=torch.Generator().manual_seed(0))
    fam, amp = b.params["family"], b.params["amplitude"]
    assert b.x_support.shape == (4000, 2, 1) and b.y_query.shape == (4000, 3, 1)
    # binomial(4000, 0.75): sd 0.0068
    assert abs(float((fam == 1).float().mean()) - 0.75) < 0.03
    assert bool((amp[fam == 0] <= 1.0).all()) and bool((amp[fam == 1] >= 4.0).all())
    # y follows each task's own amplitude: |y| <= A + 5 sd of the noise
    bound = amp[:, None, None] + 0.5
    assert bool((b.y_support.abs() <= bound).all())


def test_drifting_sinusoid_moves_amplitude_and_inputs():
    stream = drifting_sinusoid(num_phases=3, steps_per_phase=5)
    amps = [f.amplitude for f in stream.families]
    xs = [f.x_range for f in stream.families]
    assert amps[0][0] == pytest.approx(0.1) and amps[-1][1] == pytest.approx(5.0)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(amps, amps[1:], strict=False))
    assert xs == [(-5.0, -1.0), (-2.0, 2.0), (1.0, 5.0)]


@pytest.mark.parametrize("bad, match", [
    (dict(families=[], steps_per_phase=3), "at least one"),
    (dict(families=[Sinusoid()], steps_per_phase=0), "steps_per_phase"),
    (dict(families=[Sinusoid(), "sinusoid"], steps_per_phase=3), r"families\[1\] must be a TaskFamily"),
    (dict(families=[Sinusoid(), bm.tasks.HierarchicalLinear(dim=2)], steps_per_phase=3), r"families\[1\] has x_dim=2"),
])
def test_phases_refuse_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Phases(**bad)


def test_mixture_refuses_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        TaskMixture([Sinusoid(), Sinusoid()], weights=[1, -1])


def test_phases_of_episodes_train_a_few_shot_classifier_with_replay():
    """Classification streams: every phase's episodes have the same ways; classifiers read them from the stream."""
    a, b = bm.tasks.GaussianClusters(ways=3, dim=4), bm.tasks.GaussianClusters(ways=3, dim=4, prior_std=3.0)
    stream = Phases([a, b], steps_per_phase=3)
    assert stream.episodic and stream.ways == 3
    buffer = bm.ReplayBuffer(capacity=16, fraction=0.5)
    clf = bm.fewshot.ProtoNet(x_dim=4).fit(stream, 6, tasks_per_step=4, max_points=3, replay=buffer, progress=False)
    assert clf.history.step[-1] == 6 and buffer.seen == 4 + 5 * 2
    batch = stream.sample(5, shots=2, num_query=1, generator=torch.Generator().manual_seed(0))
    assert batch.params["ways"].tolist() == [3] * 5 and batch.x_support.shape == (5, 6, 4)
    with pytest.raises(ValueError, match=r"families\[1\] has ways=5; families\[0\] has ways=3"):
        Phases([a, bm.tasks.GaussianClusters(ways=5, dim=4)], 3)
