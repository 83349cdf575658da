"""Binary and binomial outcomes on real data that ships with statsmodels (no downloads).

1. **Binary, few-shot** (``fair``: 6366 women, an affair or not): each group of occupation x
   religiousness (24 groups) is a task; ``y = 1`` if the woman reported an affair, ``x`` the
   standardised years married and marriage rating. A hierarchical logistic regression is
   meta-trained on 18 groups; for each of the 6 held-out groups it sees K rows and predicts the
   rest: NLL, accuracy and ECE, against a single logistic regression fitted on all training rows
   (no group effects, the same for every group).
2. **Binomial with trials** (``china_smoking``: 8 cities, a case-control table each): each city is a
   task with two rows, lung-cancer cases and controls; ``y`` the number of smokers out of ``trials``.
   The slope of a city is its log odds ratio of smoking for cases; the learned prior is the
   meta-analysis: the mean log odds ratio over cities and its spread.

Run:  python examples/glm_real_data.py --steps 3000
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

import bayesmeta as bm


def affairs_tasks():
    """Groups of the ``fair`` data as ragged arrays: ``x [n, 2]`` (standardised), ``y [n, 1]`` in {0, 1}."""
    from statsmodels.datasets import fair

    df = fair.load_pandas().data
    x = df[["yrs_married", "rate_marriage"]].to_numpy(dtype=np.float64)
    x = (x - x.mean(0)) / x.std(0)
    y = (df["affairs"].to_numpy() > 0).astype(np.float64)[:, None]
    keys = list(zip(df["occupation"], df["religious"], strict=True))
    groups = sorted(set(keys))
    index = {k: i for i, k in enumerate(groups)}
    ids = np.array([index[k] for k in keys])
    return [x[ids == i] for i in range(len(groups))], [y[ids == i] for i in range(len(groups))]


def _pooled_logistic(xs, ys, steps: int = 500):
    """One logistic regression on every training row (no group effects): the baseline."""
    x = torch.as_tensor(np.concatenate(xs), dtype=torch.float32)
    y = torch.as_tensor(np.concatenate(ys), dtype=torch.float32)[:, 0]
    w = torch.zeros(x.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y)
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach()


def affairs(args) -> dict:
    xs, ys = affairs_tasks()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(xs))
    test_ids, train_ids = order[:6], order[6:]
    pool = bm.TaskBatch.from_arrays(x_support=[xs[i] for i in train_ids], y_support=[ys[i] for i in train_ids])
    torch.manual_seed(args.seed)
    learner = bm.BayesLearner(bm.models.HierarchicalLogisticRegression(x_dim=2))
    learner.fit(pool, steps=args.steps, seed=args.seed, device=args.device, progress=not args.no_progress)
    w = _pooled_logistic([xs[i] for i in train_ids], [ys[i] for i in train_ids])
    out = {}
    for k in args.shots:
        sets = []
        for i in test_ids:  # K support rows, up to 200 query rows per held-out group
            perm = rng.permutation(len(xs[i]))
            if len(perm) <= k:
                continue
            s, q = perm[:k], perm[k : k + 200]
            sets.append((xs[i][s], ys[i][s], xs[i][q], ys[i][q]))
        test = bm.TaskBatch.from_arrays(x_support=[s[0] for s in sets], y_support=[s[1] for s in sets],
                                        x_query=[s[2] for s in sets], y_query=[s[3] for s in sets])
        row = bm.evaluate(learner, {k: test}, name="hierarchical").summary[0]
        logits = test.x_query @ w[:-1] + w[-1]  # [T, Q]
        p = torch.sigmoid(logits)
        yq, m = test.y_query[..., 0], test.mask_query
        nll = -(yq * torch.log(p) + (1 - yq) * torch.log1p(-p))[m].mean().item()
        acc = ((p > 0.5).float() == yq)[m].float().mean().item()
        out[k] = {"nll": row["nll"], "accuracy": row["accuracy"], "ece": row["ece"], "pooled_nll": nll,
                  "pooled_accuracy": acc, "tasks": len(sets)}
        print(f"affairs, K={k:3d}: hierarchical NLL {row['nll']:.3f} acc {row['accuracy']:.3f} ECE {row['ece']:.3f}"
              f" | pooled logistic NLL {nll:.3f} acc {acc:.3f} ({len(sets)} held-out groups)")
    return out


def smoking(args) -> dict:
    """Per city: cases and controls; y = smokers among them. Slope = the city's log odds ratio."""
    from statsmodels.datasets import china_smoking

    d = china_smoking.load_pandas().data
    cases = d["smoking_yes_cancer_yes"] + d["smoking_no_cancer_yes"]
    controls = d["smoking_yes_cancer_no"] + d["smoking_no_cancer_no"]
    smokers = np.stack([d["smoking_yes_cancer_yes"], d["smoking_yes_cancer_no"]], 1).astype(np.float64)  # [8, 2]
    trials = np.stack([cases, controls], 1).astype(np.float64)
    cancer = np.array([1.0, 0.0])
    x = np.stack([np.broadcast_to(cancer, trials.shape), trials], -1)  # [8, 2, 2]: (cancer, trials)
    pool = bm.TaskBatch(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(smokers[..., None], dtype=torch.float32),
                        torch.ones(8, 2, dtype=torch.bool))
    torch.manual_seed(args.seed)
    model = bm.models.HierarchicalLogisticRegression(x_dim=1, trials=True)
    learner = bm.BayesLearner(model)
    learner.fit(pool, steps=args.steps, seed=args.seed, device=args.device, progress=not args.no_progress,
                validation=False)  # 8 cities: too few to hold any out
    with torch.no_grad():
        loc, sd = model.prior.loc[0].item(), model.prior.scale_tril[0, 0].item()
    empirical = np.log(smokers[:, 0] * (trials[:, 1] - smokers[:, 1]) / (smokers[:, 1] * (trials[:, 0] - smokers[:, 0])))
    post = learner.adapt(pool).sample(2000, seed=0)["w"][..., 0]  # [n, 8]: each city's log odds ratio
    print(f"smoking: learned prior of the log odds ratio {loc:.3f} (sd {sd:.3f}); cities' own log ORs "
          f"{np.round(empirical, 2).tolist()}; posterior means {post.mean(0).round(decimals=2).tolist()}")
    print(f"         pooled odds ratio exp({loc:.3f}) = {math.exp(loc):.2f}")
    return {"prior_log_or": loc, "prior_sd": sd, "empirical_log_or": empirical.tolist(),
            "posterior_log_or": post.mean(0).tolist()}


def main(args) -> dict:
    return {"affairs": affairs(args), "smoking": smoking(args)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    main(parser.parse_args())
