"""One learner interface: one options class, one adaptation-steps name, refusals that name the option."""

import warnings

import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference import TrainConfig
from bayesmeta.runs.config import config_from_dict, load_config, to_toml


def _pool(n=12, seed=0):
    return bm.tasks.HierarchicalLinear(dim=1).sample(n, shots=6, num_query=4, generator=torch.Generator().manual_seed(seed))


def _bayes():
    return bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=2, hidden=(8,)))


def _learners():
    return {"bayes": _bayes(), "maml": bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,)),
            "reptile": bm.baselines.Reptile(x_dim=1, y_dim=1, hidden=(8,))}


@pytest.mark.parametrize("name", ["bayes", "maml", "reptile"])
def test_every_learner_shares_the_defaults_and_the_options_class(name):
    learner = _learners()[name].fit(bm.tasks.Sinusoid(), 3, progress=False)
    # lr=None (the default) is the learner's own: 3e-3 for the Bayesian learner, 1e-3 for the gradient-based ones
    assert TrainConfig().lr is None and learner.default_lr == (3e-3 if name == "bayes" else 1e-3)
    assert learner.train_config == {**TrainConfig().__dict__, "steps": 3, "progress": False, "lr": learner.default_lr}
    assert learner.history.step == [3]
    cfg = TrainConfig(steps=4, tasks_per_step=5, lr=2e-3, progress=False)
    learner.fit(bm.tasks.Sinusoid(), config=cfg, seed=2)  # keywords override the config
    assert learner.train_config == {**cfg.__dict__, "seed": 2}
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tasks_per_stepp'\]"):
        learner.fit(bm.tasks.Sinusoid(), 2, tasks_per_stepp=3)
    with pytest.raises(ValueError, match="tasks_per_step must be an int >= 1; got 0"):
        learner.fit(bm.tasks.Sinusoid(), 2, tasks_per_step=0)
    with pytest.raises(TypeError, match="config must be a bayesmeta.inference.TrainConfig"):
        learner.fit(bm.tasks.Sinusoid(), config={"steps": 2})


def test_options_a_learner_does_not_use_are_refused_by_name():
    with pytest.raises(ValueError, match="MAML.fit: option encoder_subsets=False does not apply"):
        bm.baselines.MAML(x_dim=1, y_dim=1).fit(bm.tasks.Sinusoid(), 2, encoder_subsets=False)
    with pytest.raises(ValueError, match="BayesLearner.fit: option max_shots=3 does not apply"):
        _bayes().fit(bm.tasks.Sinusoid(), 2, max_shots=3)
    exact = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    with pytest.raises(ValueError, match="option lr=0.1 does not apply here .*full-batch L-BFGS"):
        exact.fit(_pool(), 50, lr=0.1)
    exact.fit(_pool(), 50, config=TrainConfig(lr=0.1))  # a shared config may hold fields a learner ignores


def test_predict_refuses_options_a_point_estimate_cannot_use():
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,))
    adapted = maml.adapt(_pool())
    xq = torch.zeros(4, 1)
    for kwargs, arg in (({"num_samples": 100}, "num_samples=100"), ({"method": "guide"}, "method='guide'")):
        with pytest.raises(ValueError, match=f"predict: {arg} does not apply to MAML"):
            adapted.predict(xq, **kwargs)
    a, b = adapted.predict(xq, seed=0), adapted.predict(xq, seed=1)  # deterministic: every seed agrees
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    ens = bm.baselines.Ensemble(lambda: bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,)), n=2)
    with pytest.raises(ValueError, match="num_samples=5 does not apply to MAML"):
        ens.adapt(_pool()).predict(xq, num_samples=5)


def test_adaptation_steps_have_one_name_on_every_learner():
    pool = _pool()
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,), inner_lr=0.05)
    base = maml.adapt(pool, steps=0).predict(pool.x_query).mean
    assert torch.allclose(base, maml.adapt(pool, steps=3, lr=1e-12).predict(pool.x_query).mean, atol=1e-8)
    one = maml.adapt(pool, steps=1).predict(pool.x_query).mean
    assert torch.allclose(one, maml.adapt(pool, steps=1, lr=0.05).predict(pool.x_query).mean)  # lr default: inner_lr
    assert not torch.allclose(one, base)
    bayes = _bayes()
    torch.manual_seed(0)
    post = bayes.adapt(pool, steps=2, lr=0.05)
    with pytest.warns(DeprecationWarning, match=r"refine_steps= -> steps=, refine_lr= -> lr="):
        torch.manual_seed(0)
        old = bayes.adapt(pool, refine_steps=2, refine_lr=0.05)
    assert torch.equal(post.local["a"], old.local["a"])
    with pytest.raises(ValueError, match="steps must be None or an int >= 0; got -1"):
        bayes.adapt(pool, steps=-1)
    with pytest.raises(ValueError, match="lr must be None or a finite number > 0"):
        maml.adapt(pool, lr=float("nan"))
    exact = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    with pytest.raises(ValueError, match="steps and lr do not apply to a conjugate learner"):
        exact.adapt(pool, steps=3)


def test_baselines_checkpoint_and_resume_bit_for_bit(tmp_path):
    def maml():
        torch.manual_seed(0)
        return bm.baselines.MetaSGD(x_dim=1, y_dim=1, hidden=(8,))

    opts = {"tasks_per_step": 4, "final_lr_fraction": 1.0, "progress": False}  # constant lr: 3 steps = a prefix of 6
    full = maml().fit(bm.tasks.Sinusoid(), 6, **opts)
    part = maml().fit(bm.tasks.Sinusoid(), 3, checkpoint=tmp_path / "c.pt", **opts)
    resumed = maml().fit(bm.tasks.Sinusoid(), 6, checkpoint=tmp_path / "c.pt", resume=True, **opts)
    for a, b in zip(full.meta_parameters(), resumed.meta_parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(full.meta_parameters(), part.meta_parameters(), strict=True))
    with pytest.raises(ValueError, match=r"other settings \(inner_lr: 0.01 -> 0.02\)"):
        bm.baselines.MetaSGD(x_dim=1, y_dim=1, hidden=(8,), inner_lr=0.02).fit(
            bm.tasks.Sinusoid(), 6, checkpoint=tmp_path / "c.pt", resume=True, **opts)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 -> 0.003, learner: 'MetaSGD' -> 'BayesLearner'"):
        _bayes().fit(bm.tasks.Sinusoid(), 6, checkpoint=tmp_path / "c.pt", resume=True, **opts)


def test_the_config_file_train_section_is_the_train_config(tmp_path):
    cfg = config_from_dict({"train": {"steps": 30, "max_time": 0, "clip_norm": 0, "min_shots": 2,
                                      "final_lr_fraction": 1, "device": "cpu"}})
    assert isinstance(cfg.train, TrainConfig)
    assert (cfg.train.max_time, cfg.train.clip_norm, cfg.train.final_lr_fraction) == (None, None, 1.0)  # 0: none
    path = tmp_path / "fit.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    with pytest.raises(ValueError, match=r"config: train.steps must be an int >= 1; got 0"):
        config_from_dict({"train": {"steps": 0}})
    with pytest.raises(ValueError, match=r"config: train.max_shots must be an integer; got 2.5"):
        config_from_dict({"train": {"max_shots": 2.5}})


def test_run_directories_written_before_the_rename_still_load(tmp_path):
    from bayesmeta.runs import LEARNER_FILE
    from bayesmeta.runs import load_fitted as _load_fitted

    assert LEARNER_FILE == "learner.pt"
    with pytest.raises(FileNotFoundError, match="no learner.pt"):
        _load_fitted_dir = tmp_path / "empty"
        _load_fitted_dir.mkdir()
        (_load_fitted_dir / "config.toml").write_text(to_toml(config_from_dict({})))
        _load_fitted(_load_fitted_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bm.PosteriorPredictive.__name__ == "PosteriorPredictive"


def test_an_ensemble_of_mixtures_with_different_sizes_is_their_equal_weight_mixture():
    from bayesmeta.baselines.ensemble import _AdaptedEnsemble

    g = torch.Generator().manual_seed(0)
    mixtures = [bm.PosteriorPredictive(torch.randn(k, 3, 4, 1, generator=g), torch.rand(k, 3, 4, 1, generator=g) + 0.5,
                                       torch.randn(k, 3, generator=g)) for k in (1, 5, 2)]

    class Member:
        def __init__(self, pred):
            self.pred = pred

        def predict(self, x):
            return self.pred

    ens = _AdaptedEnsemble([Member(p) for p in mixtures]).predict(torch.zeros(4, 1))
    y = torch.randn(3, 4, 1, generator=g)
    expected = torch.stack([p.log_prob(y) for p in mixtures]).logsumexp(0) - torch.log(torch.tensor(3.0))
    assert ens.num_components == 15 and torch.allclose(ens.log_prob(y), expected, atol=1e-5)
    assert torch.allclose(ens.mean, torch.stack([p.mean for p in mixtures]).mean(0), atol=1e-5)


def test_a_diverging_run_says_so_and_what_to_try():
    pool = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5).sample(16, shots=6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # lr 1e6: the prior's parameters overflow within ~10 steps
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), num_particles=4)
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+: .*lr=1000000.0\) is likely too large") as info:
        learner.fit(pool, steps=30, tasks_per_step=3, lr=1e6, progress=False)
    assert "of distribution MultivariateNormal to satisfy" in str(info.value)  # torch's line, without its tensors
    assert "tensor(" not in str(info.value) and isinstance(info.value.__cause__, ValueError)


def test_other_errors_of_a_step_pass_through_unchanged():
    from bayesmeta.inference.loop import train_loop

    net = torch.nn.Linear(1, 1)

    def make_step(stream):
        def step(batch):
            raise ValueError("pyro.infer: information about nan handling")  # words, not a divergence
        return step

    with pytest.raises(ValueError, match="pyro.infer: information"):
        train_loop(make_step, {"net": net}, list(net.parameters()), bm.tasks.Sinusoid(), TrainConfig(steps=2, progress=False),
                   device=torch.device("cpu"), x_dim=1, y_dim=1)
