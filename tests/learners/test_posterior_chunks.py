"""A new task's posterior under a model with global sites is drawn in task groups whose memory counts the guide's
head (it runs per draw and task there); drawing task by task gives the same predictive up to Monte-Carlo error."""

from __future__ import annotations

import torch

import bayesmeta as bm
from bayesmeta.learners import posterior as post_mod


def _posterior(num_tasks: int = 12):
    torch.manual_seed(0)
    learner = bm.BayesLearner(bm.models.VaryingIntercepts(x_dim=1, slopes=False))
    pool = bm.tasks.HierarchicalLinear(dim=1).sample(num_tasks, shots=3, num_query=2,
                                                     generator=torch.Generator().manual_seed(1))
    return learner.adapt(pool.x_support, pool.y_support), pool


def test_the_head_counts_in_the_task_groups():
    post, _ = _posterior()
    head = sum(m.in_features + m.out_features for m in post.guide.head.modules() if isinstance(m, torch.nn.Linear))
    per_draw = post.program.param_dim + post.x_support.shape[1] + 1 + head
    size = post_mod._DRAW_ELEMENTS // (1000 * per_draw)  # tasks per group at 1000 draws each
    assert head > 10 * (post.program.param_dim + post.x_support.shape[1] + 1)  # ignoring the head undercounted >10x
    big, _ = _posterior(num_tasks=3 * size)
    assert [len(g) for g in big._task_chunks(1000)] == [size] * 3


def test_task_groups_change_nothing_but_the_random_draws(monkeypatch):
    post, pool = _posterior()
    whole = post.predict(pool.x_query, 4000, seed=3)
    monkeypatch.setattr(post_mod, "_DRAW_ELEMENTS", 1)  # one task per group
    assert len(post._task_chunks(4000)) == 12
    grouped = post.predict(pool.x_query, 4000, seed=3)
    # independent Monte-Carlo estimates of one predictive mean: within 5 standard errors (sd / sqrt(ESS), both runs)
    se = (whole.std[..., 0] ** 2 / whole.ess[:, None] + grouped.std[..., 0] ** 2 / grouped.ess[:, None]).sqrt()
    assert ((whole.mean - grouped.mean)[..., 0].abs() < 5 * se).all()
