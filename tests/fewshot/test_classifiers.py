"""Few-shot classifiers: exact numbers of each rule, the Bayesian one against the oracle, calibration fixes."""

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.fewshot import (
    BayesProto,
    ClassifierEnsemble,
    FOMAMLClassifier,
    MAMLClassifier,
    MetaSGDClassifier,
    ProtoNet,
    ReptileClassifier,
    SiameseNet,
    TemperatureScaled,
    fit_temperature,
)
from bayesmeta.tasks import GaussianClusters


def _identity_bayes_proto(fam: GaussianClusters) -> BayesProto:
    clf = BayesProto(x_dim=fam.dim, hidden=(), embed_dim=fam.dim)
    with torch.no_grad():
        clf.net.embed.skip.weight.copy_(torch.eye(fam.dim))
        clf.net.embed.skip.bias.zero_()
        clf.net.log_prior_var.fill_(2 * math.log(fam.prior_std))
        clf.net.log_noise_var.fill_(2 * math.log(fam.noise_std))
    return clf


def test_bayes_proto_with_the_true_prior_and_identity_embedding_is_the_oracle():
    fam = GaussianClusters(ways=4, dim=3, prior_std=1.3, noise_std=0.8)
    b = fam.sample(5, shots=2, num_query=3)
    mask = torch.ones_like(b.mask_support)
    mask[0, :2] = False  # class 0 of task 0 has no support: its predictive is the prior's
    clf = _identity_bayes_proto(fam)
    got = clf.adapt(b.x_support, b.y_support, mask, ways=4).predict(b.x_query)
    want = fam.oracle_predict(b.x_support, b.y_support, b.x_query, mask)
    assert torch.allclose(got.probs, want.probs, atol=1e-5)


def test_bayes_proto_learns_the_oracle_on_gaussian_clusters():
    fam = GaussianClusters(ways=3, dim=4)
    clf = BayesProto(x_dim=4, hidden=(32,), embed_dim=4).fit(fam, steps=400, lr=3e-3, progress=False, seed=0)
    sets = {k: fam.sample(400, shots=k, num_query=10, generator=torch.Generator().manual_seed(7 + k)) for k in (1, 5)}
    ev = bm.evaluate(clf, sets, oracle=fam)
    for s in ev.summary:  # 400 steps of 32 episodes; measured gaps 0.01 (K=1) and 0.005 (K=5)
        assert s["gap"] < 0.05, s
    noise = float(clf.prior()["noise_std"].mean() / clf.prior()["std"].mean())
    assert 1.0 < noise < 2.5  # the learned noise-to-prior ratio near the true 1.5 (in a learned embedding scale)


def test_protonet_and_siamese_rules_by_hand():
    x_s = torch.tensor([[[0.0], [2.0], [10.0]]])  # class 0: 0 and 2 (prototype 1); class 1: 10
    labels = torch.tensor([[0, 0, 1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    x_q = torch.tensor([[[3.0]]])
    proto = ProtoNet(x_dim=1, hidden=(), embed_dim=1)
    with torch.no_grad():
        proto.net.skip.weight.fill_(1.0)
        proto.net.skip.bias.zero_()
    logits = proto.class_logits(x_s, labels, mask, x_q, 2)
    assert torch.allclose(logits, torch.tensor([[[-4.0, -49.0]]]))
    siam = SiameseNet(x_dim=1, hidden=(), embed_dim=1)
    with torch.no_grad():
        siam.net["embed"].skip.weight.fill_(1.0)
        siam.net["embed"].skip.bias.zero_()
        siam.net["score"].weight.fill_(-1.0)
        siam.net["score"].bias.fill_(2.0)
    got = siam.class_logits(x_s, labels, mask, x_q, 2)
    sig = torch.sigmoid
    want = torch.log(torch.tensor([(sig(torch.tensor(-1.0)) + sig(torch.tensor(1.0))) / 2, sig(torch.tensor(-5.0))]))
    assert torch.allclose(got[0, 0], want, atol=1e-6)


def test_gradient_classifiers_train_adapt_and_predict_probabilities():
    fam = GaussianClusters(ways=3, dim=4)
    b = fam.sample(6, shots=2, num_query=4)
    for cls in (MAMLClassifier, MetaSGDClassifier, ReptileClassifier):
        clf = cls(x_dim=4, ways=3, hidden=(16,)).fit(fam, steps=3, progress=False, max_points=4)
        pred = clf.adapt(b).predict(b.x_query)
        assert pred.probs.shape == (6, 12, 3) and torch.allclose(pred.probs.sum(-1), torch.ones(6, 12))
    with pytest.raises(ValueError, match="3-way but the classifier was built for ways=5"):
        MAMLClassifier(x_dim=4, ways=5).fit(fam, steps=1, progress=False)
    with pytest.raises(ValueError, match="label 3.0 at task 0, point 1 is not a whole number in 0..2"):
        clf.adapt(b.x_support, torch.tensor([[0.0, 3.0, 1, 1, 2, 2]] * 6))
    with pytest.raises(TypeError, match="episodic task family"):
        ProtoNet(x_dim=1).fit(bm.tasks.Sinusoid(), steps=1, progress=False)
    with pytest.raises(TypeError, match="validates on an episodic family of validation classes"):
        ProtoNet(x_dim=4).fit(fam, steps=1, progress=False, validation=b)
    with pytest.raises(ValueError, match="max_points .* must be >= 2"):
        ProtoNet(x_dim=4).fit(fam, steps=1, progress=False, max_points=1)


def test_siamese_and_fomaml_learn_on_easy_clusters():
    fam = GaussianClusters(ways=3, dim=4, noise_std=0.5)  # well-separated classes: easy even at one shot
    test = {1: fam.sample(200, shots=1, num_query=5, generator=torch.Generator().manual_seed(3))}
    for clf in (SiameseNet(x_dim=4, hidden=(32,), embed_dim=8), FOMAMLClassifier(x_dim=4, ways=3, hidden=(32,))):
        before = bm.evaluate(clf, test, oracle=False).summary[0]["accuracy"]
        clf.fit(fam, steps=150, lr=3e-3, progress=False, max_points=6)
        after = bm.evaluate(clf, test, oracle=False).summary[0]["accuracy"]
        assert after > max(0.6, before + 0.1), (type(clf).__name__, before, after)


def test_maml_classifier_inner_loss_is_the_cross_entropy():
    clf = MAMLClassifier(x_dim=2, ways=3, hidden=(5,))
    x, y = torch.randn(4, 2), torch.tensor([[0.0], [2.0], [1.0], [2.0]])
    mask = torch.ones(4, dtype=torch.bool)
    loss = clf.task_loss(clf.params(), x, y, mask)
    want = torch.nn.functional.cross_entropy(clf.net(x)[0], y[:, 0].long())
    assert torch.allclose(loss, want)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20_000, 5, generator=g)
    labels = torch.distributions.Categorical(logits=logits / 2.5).sample()
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_temperature_scaling_keeps_the_classes_and_fixes_an_overconfident_classifier():
    fam = GaussianClusters(ways=3, dim=4)
    clf = _identity_bayes_proto(fam)
    with torch.no_grad():
        clf.net.log_noise_var.fill_(2 * math.log(fam.noise_std / 3))  # 3x too sure of the class means
    val, test = (fam.sample(500, shots=1, num_query=5, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    ts = TemperatureScaled(clf).calibrate(val)
    assert ts.temperature > 2
    raw, fixed = (bm.evaluate(m, {1: test}, oracle=fam).summary[0] for m in (clf, ts))
    assert fixed["accuracy"] == raw["accuracy"] and fixed["nll"] < raw["nll"] - 0.1 and fixed["ece"] < raw["ece"]


def test_ensemble_averages_member_probabilities():
    fam = GaussianClusters(ways=3, dim=4)
    ens = ClassifierEnsemble(lambda i: ProtoNet(x_dim=4, hidden=(8,), embed_dim=4), members=2)
    ens.fit(fam, steps=4, progress=False, max_points=4)
    b = fam.sample(2, shots=1, num_query=2)
    probs = [m.adapt(b).predict(b.x_query).probs for m in ens.members]
    assert torch.allclose(ens.adapt(b).predict(b.x_query).probs, (probs[0] + probs[1]) / 2, atol=1e-6)


def test_class_predictive_checks_labels():
    pred = bm.ClassPredictive(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="label 3 at task 0, point 1 is outside 0..2"):
        pred.log_prob(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="whole numbers"):
        pred.log_prob(torch.tensor([[0.0, 0.5]]))
    assert pred.sample(4).shape == (4, 1, 2, 1) and pred.tempered(2.0).probs.shape == (1, 2, 3)


def test_validation_episodes_keep_the_best_weights():
    fam = GaussianClusters(ways=3, dim=4)
    clf = BayesProto(x_dim=4, hidden=(16,), embed_dim=4)
    clf.fit(fam, steps=60, progress=False, validation=fam, val_every=20, max_points=4)
    val = clf.history.validation
    assert [v["step"] for v in val] == [20, 40, 60] and [s["shots"] for s in val[0]["per_shot"]] == [1, 5]
    best = min(val, key=lambda v: v["nll"])
    assert clf.history.best_step == best["step"]
    # the weights kept are those of the best validation: scoring the same episodes again gives its NLL
    held = bm.fewshot.base.EpisodeValidation(fam, shots=(1, 5), seed=0)
    assert held.score(clf)["nll"] == pytest.approx(best["nll"], abs=1e-5)


def test_a_label_beyond_the_support_classes_is_refused_not_a_wider_head():
    x = torch.randn(1, 3, 4)
    clf = BayesProto(x_dim=4, hidden=(8,), embed_dim=4)
    with pytest.raises(ValueError, match=r"label 7 at task 0, point 2 is not in 0\.\.2"):
        clf.adapt(x, torch.tensor([[0.0, 1.0, 7.0]]))
    assert clf.adapt(x, torch.tensor([[0.0, 1.0, 2.0]])).predict(x).probs.shape == (1, 3, 3)
    assert clf.adapt(x, torch.tensor([[0.0, 1.0, 7.0]]), ways=8).predict(x).probs.shape == (1, 3, 8)  # asked for
    with pytest.raises(ValueError, match=r"label 7\.0 at task 0, point 2 is not a whole number in 0\.\.2"):
        MAMLClassifier(4, 3, hidden=(8,)).adapt(x, torch.tensor([[0.0, 1.0, 7.0]]))


def test_a_pool_smaller_than_max_points_names_max_points():
    pool = bm.tasks.LabelledPool.from_arrays(torch.randn(60, 4), [i % 6 for i in range(60)])  # 10 per class
    for clf in (BayesProto(x_dim=4, hidden=(8,), embed_dim=4), FOMAMLClassifier(4, 3, hidden=(8,))):
        with pytest.raises(ValueError, match=r"max_points=20 .* has only 10 examples; pass max_points=10 or fewer"):
            clf.fit(bm.tasks.Episodes(pool, 3), steps=2, progress=False)
    clf = BayesProto(x_dim=4, hidden=(8,), embed_dim=4)
    clf.fit(bm.tasks.Episodes(pool, 3), steps=2, max_points=10, progress=False)  # as the message says


@pytest.mark.parametrize("make", [lambda: BayesProto(x_dim=4, hidden=(8,), embed_dim=4),
                                  lambda: ProtoNet(4, hidden=(8,)), lambda: SiameseNet(4, hidden=(8,)),
                                  lambda: MAMLClassifier(4, 3, hidden=(8,)), lambda: MetaSGDClassifier(4, 3, hidden=(8,))])
def test_float64_inputs_are_cast_to_the_model_dtype(make):
    clf = make()
    x, y = torch.randn(2, 3, 4, dtype=torch.float64), torch.tensor([[0.0, 1.0, 2.0]] * 2, dtype=torch.float64)
    probs = clf.adapt(x, y).predict(torch.randn(5, 4, dtype=torch.float64)).probs
    assert probs.dtype == torch.float32 and probs.shape == (2, 5, 3)
    same = clf.adapt(x.float(), y.float()).predict(x.float()).probs
    assert torch.allclose(clf.adapt(x, y).predict(x).probs, same)
