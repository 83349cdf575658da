"""A fit's attachments travel as one FitContext; on_validation sees every validation and may end the fit."""

from __future__ import annotations

import torch

import bayesmeta as bm


def _pool(seed: int = 0):
    return bm.tasks.HierarchicalLinear(dim=1).sample(30, shots=4, num_query=4,
                                                     generator=torch.Generator().manual_seed(seed))


def test_on_validation_sees_every_validation_and_a_true_answer_ends_the_fit():
    seen = []

    def on_validation(step, scores):
        seen.append((step, scores["nll"]))
        return len(seen) == 2  # stop at the second validation

    torch.manual_seed(0)
    maml = bm.baselines.MAML(x_dim=1, y_dim=1)
    maml.fit(_pool(), 100, val_every=10, patience=50, progress=False, on_validation=on_validation)
    h = maml.history
    assert [s for s, _ in seen] == [10, 20] == [v["step"] for v in h.validation]
    assert [n for _, n in seen] == [v["nll"] for v in h.validation]  # the scores the history keeps
    assert h.step[-1] == 20 and any("stopped at step 20 by on_validation" in n for n in h.notes)


def test_a_false_answer_changes_nothing():
    torch.manual_seed(0)
    a = bm.baselines.MAML(x_dim=1, y_dim=1).fit(_pool(), 30, val_every=10, progress=False)
    torch.manual_seed(0)
    b = bm.baselines.MAML(x_dim=1, y_dim=1).fit(_pool(), 30, val_every=10, progress=False,
                                                on_validation=lambda step, scores: False)
    assert a.history.loss == b.history.loss and a.history.validation == b.history.validation
    for p, q in zip(a.meta_parameters(), b.meta_parameters(), strict=True):
        assert torch.equal(p, q)
