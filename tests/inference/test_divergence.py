"""Divergence to huge but finite losses: the detector's rule, and the loop stopping with a FloatingPointError."""

import math
import re

import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference.context import FitContext
from bayesmeta.inference.divergence import DIVERGENCE_FACTOR, DIVERGENCE_STEPS, DivergenceDetector
from bayesmeta.inference.loop import train_loop
from bayesmeta.inference.options import TrainConfig


def _feed(losses):
    d = DivergenceDetector()
    for step, loss in enumerate(losses, start=1):
        d.update(loss, step)
    return d


# the detector on its own ------------------------------------------------------------------------


def test_healthy_sequences_never_diverge():
    g = torch.Generator().manual_seed(0)
    noise = lambda n, sd: (sd * torch.randn(n, generator=g)).tolist()  # noqa: E731
    falling = [1e4 * 10 ** (-4 * i / 299) * math.exp(e) for i, e in enumerate(noise(300, 0.3))]  # 1e4 -> 1
    around_minus_50 = [-50 + e for e in noise(300, 10.0)]  # a log density: negative, noisy
    around_zero = noise(300, 1e-3)  # crosses zero all the time
    starts_huge = [1e12 * 10 ** (-12 * i / 99) for i in range(100)] + [1.0] * 50  # a badly scaled start, then fine
    stays_huge = [1e13 * (1 + 0.1 * e) for e in noise(200, 1.0)]  # unscaled data: large, but at its own scale
    rare_spikes = [1e15 if i % 7 == 3 else 1.0 for i in range(300)]  # one wild batch now and then
    for losses in (falling, around_minus_50, around_zero, starts_huge, stays_huge, rare_spikes):
        d = _feed(losses)
        assert d.diverged_at is None


def test_a_loss_exploding_to_1e15_diverges_at_its_first_step_over():
    healthy = [1e4 * 10 ** (-4 * i / 99) for i in range(100)] + [-50.0, -48.0, -52.0] * 20  # falls, then noisy
    d = _feed(healthy + [1e15] * (DIVERGENCE_STEPS - 1))
    assert d.over and d.diverged_at is None  # not yet sustained
    d.update(1e15, len(healthy) + DIVERGENCE_STEPS)
    assert d.diverged_at == len(healthy) + 1
    assert re.fullmatch(r"more than 1e\+06 times its lowest running scale \(about \d+(\.\d+)?; latest 1e\+15\)", d.describe())
    d.update(1.0, len(healthy) + DIVERGENCE_STEPS + 1)  # the first divergence is kept
    assert not d.over and d.diverged_at == len(healthy) + 1


def test_the_threshold_is_the_factor_over_the_lowest_running_scale_plus_one():
    # at a steady loss L the running scale is L: 1e6 * (L + 1) is the line, whatever the sign of L
    for level in (0.0, 1.0, -50.0, 1e3):
        below = (abs(level) + 1) * DIVERGENCE_FACTOR * 0.9
        above = (abs(level) + 1) * DIVERGENCE_FACTOR * 1.1
        assert _feed([level] * 20 + [below] * 30).diverged_at is None
        assert _feed([level] * 20 + [above] * DIVERGENCE_STEPS).diverged_at == 21
    # a run that climbs gradually is judged against the lowest scale it reached, not the latest one
    climbing = [10.0 ** (i / 5) for i in range(50)]  # 1 -> 1e10 (a decade every 5 steps)
    assert _feed(climbing).diverged_at is not None


def test_short_excursions_pass_and_non_finite_losses_are_left_to_the_non_finite_check():
    assert _feed([1.0] * 20 + [1e15] * (DIVERGENCE_STEPS - 1) + [1.0] * 20).diverged_at is None
    d = _feed([1.0] * 20 + [math.nan, math.inf, -math.inf] * 10)
    assert d.diverged_at is None and not d.over
    assert _feed([1.0] * 5 + [1e300] * DIVERGENCE_STEPS).diverged_at == 6
    assert DivergenceDetector().diverged_at is None and not DivergenceDetector().over


# the loop with a scripted loss ------------------------------------------------------------------


def _scripted_fit(losses, tmp_path=None, saved=None, fail_at=None, dtype=torch.float32, **cfg):
    """train_loop on a Linear net whose step returns ``losses[step - 1]`` (and raises at ``fail_at``)."""
    net = torch.nn.Linear(1, 1)
    calls = []

    def make_step(stream):
        def step(batch):
            calls.append(1)
            if len(calls) == fail_at:
                raise RuntimeError("linalg.cholesky: The factorization could not be completed")
            (net.weight.sum() + net.bias.sum()).backward()
            return torch.tensor(losses[len(calls) - 1], dtype=dtype)
        return step

    ckpt = None if tmp_path is None else tmp_path / "ckpt.pt"
    on_ckpt = None if saved is None else (lambda step, history: saved.append(step))
    return train_loop(make_step, {"net": net}, list(net.parameters()), bm.tasks.Sinusoid(),
                      TrainConfig(progress=False, **cfg), device=torch.device("cpu"), x_dim=1, y_dim=1,
                      context=FitContext(checkpoint=ckpt, on_checkpoint=on_ckpt))


def test_the_loop_names_the_step_and_the_lr_and_keeps_the_checkpoint_before_the_divergence(tmp_path):
    saved = []
    losses = [3.0, 2.0, 1.5] + [1e15] * 40
    with pytest.raises(FloatingPointError, match=r"diverged at step 4 \(seen at step 13\): .*lr=0.5\) is likely too "
                                                 r"large.*smaller lr or a tighter clip_norm"):
        _scripted_fit(losses, tmp_path, saved, steps=30, lr=0.5, checkpoint_every=1)
    assert saved == [1, 2, 3]  # the parameters the first loss over the threshold moved were never saved
    assert bm.inference.load_checkpoint(tmp_path / "ckpt.pt")["step"] == 3


def test_losses_are_read_from_the_device_at_least_every_256_steps_and_keep_their_precision():
    # log_every=1000: no log step before the end, yet the divergence is seen when the held losses are read
    with pytest.raises(FloatingPointError, match=r"diverged at step 5 \(seen at step 256\).*latest 1e\+300"):
        _scripted_fit([1.0] * 4 + [1e300] * 400, steps=400, lr=0.1, log_every=1000, dtype=torch.float64)


def test_a_checkpoint_due_during_an_excursion_waits_for_the_next_step_below_it(tmp_path):
    saved = []
    losses = [1.0] * 4 + [1e15, 1e15] + [1.0] * 10
    history = _scripted_fit(losses, tmp_path, saved, steps=12, lr=0.1, checkpoint_every=5)
    assert saved == [7, 10, 12] and history.step[-1] == 12
    # due at the very end: written there all the same
    saved.clear()
    _scripted_fit([1.0] * 9 + [1e15], tmp_path, saved, steps=10, lr=0.1, checkpoint_every=5)
    assert saved == [5, 10]


def test_an_error_of_a_step_after_a_loss_over_the_threshold_is_a_divergence():
    with pytest.raises(FloatingPointError, match=r"diverged at step 4: parameters became too large .*linalg.cholesky"
                                                 r".*lr=0.5\)") as info:
        _scripted_fit([1.0, 1.0, 1e15, 1.0], fail_at=4, steps=10, lr=0.5)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="cholesky"):  # after a loss below it: passed through unchanged
        _scripted_fit([1.0, 1.0, 1.0, 1.0], fail_at=4, steps=10, lr=0.5)


def test_a_refused_argument_with_finite_parameters_and_a_steady_loss_is_no_learning_rate_problem():
    class DataScaledTrials(torch.nn.Module):  # a user's Binomial whose own scaling standardised the trials
        x_dim = 2

        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(2))
            self.scaling = bm.models.DataScaling(2, 1, outputs=False)  # keep_x=(1,) forgotten

        def forward(self, x, y=None, mask=None):
            import pyro
            import pyro.distributions as dist

            xs = self.scaling.x(x)
            with pyro.plate("tasks", x.shape[0], dim=-2):
                w = pyro.sample("w", dist.Normal(self.loc, 1.0).to_event(1))
                with pyro.plate("points", x.shape[1], dim=-1):
                    d = dist.Binomial(xs[..., 1], logits=w[..., 0] * xs[..., 0] + w[..., 1])
                    return pyro.sample("y", d.mask(mask), obs=y)

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(6, 5, 1, generator=g), torch.randint(3, 9, (6, 5, 1), generator=g).float()], -1)
    pool = bm.TaskBatch.from_arrays(list(x), list(torch.ones(6, 5, 1)))
    with pytest.raises(ValueError, match=r"^meta-training step 1: the model's program refused a distribution argument "
                                         r"\(Expected parameter total_count \(Tensor of shape \(\d+, \d+\)\) of "
                                         r"distribution Binomial to satisfy .*so no learning rate fixes it") as info:
        bm.BayesLearner(DataScaledTrials()).fit(pool, steps=3, val_fraction=0, progress=False)
    assert "tensor(" not in str(info.value)


# real learners ----------------------------------------------------------------------------------


def _pool():
    return bm.tasks.HierarchicalLinear(dim=1).sample(32, shots=10, generator=torch.Generator().manual_seed(0))


_BAYES = lambda: bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1))  # noqa: E731
_STAYED = r"\(seen at step \d+\): the loss per task stayed more than 1e\+06 times its lowest running scale"


@pytest.mark.parametrize(("make", "lr", "how"), [
    (_BAYES, 0.1, _STAYED),  # 18 -> ~1e12 per task at step 3, and it stays there (hundreds of steps)
    (lambda: bm.baselines.MAML(x_dim=1), 100.0, _STAYED),  # 1.4 -> 1e15 at step 2, ~1e27 by step 20
    # 18 -> ~1e25: the detector's word, unless the parameters overflow first (then that error, with the lr)
    (_BAYES, 1e4, rf"({_STAYED}|: parameters became too large or non-finite)"),
], ids=["bayes-lr0.1", "maml-lr100", "bayes-lr1e4"])
def test_a_huge_learning_rate_raises_naming_the_step_and_the_lr(make, lr, how):
    with pytest.raises(FloatingPointError, match=rf"diverged at step \d+ ?{how}.*lr={lr}\) is likely too large"):
        make().fit(_pool(), steps=30, lr=lr, validation=False, progress=False, log_every=5)


def test_a_healthy_fit_at_the_default_lr_does_not_raise():
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1))
    learner.fit(bm.tasks.HierarchicalLinear(dim=1), steps=60, progress=False, log_every=1)  # checked at every step
    assert len(learner.history.loss) == 60 and max(learner.history.loss) < 100
    maml = bm.baselines.MAML(x_dim=1).fit(bm.tasks.Sinusoid(), steps=60, progress=False, log_every=1)
    assert len(maml.history.loss) == 60 and max(maml.history.loss) < 100
