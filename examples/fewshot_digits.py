"""Few-shot classification of handwritten digits: a Bayesian prototype classifier against prototypical networks.

scikit-learn's bundled 8x8 digits, each rotated by 0/90/180/270 degrees into its own class (40
classes, no download). The rotations of six digits are the meta-training classes, two digits
validate, and the two left are the test classes, never seen in training. Both methods train for
the same number of steps; the prototypical network is also temperature-scaled on validation
episodes. Prints accuracy, NLL, ECE and selective-prediction area at 5-way 1-shot and 5-shot,
and saves reliability diagrams.

Run:  python examples/fewshot_digits.py --steps 3000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import bayesmeta as bm


def main(args) -> dict:
    torch.manual_seed(args.seed)
    pool = bm.tasks.LabelledPool.digits(rotations=True)
    train, val, test = pool.split((0.6, 0.2, 0.2), seed=args.seed)
    episodes = {name: bm.tasks.Episodes(part, ways=5) for name, part in (("train", train), ("val", val),
                                                                           ("test", test))}
    sets = {k: episodes["test"].sample(args.episodes, shots=k, num_query=15,
                                       generator=torch.Generator().manual_seed(100 + k)) for k in args.shots}
    val_sets = {k: episodes["val"].sample(200, shots=k, num_query=15, generator=torch.Generator().manual_seed(200 + k))
                for k in args.shots}
    fit = {"steps": args.steps, "seed": args.seed, "device": args.device, "progress": not args.no_progress}
    bayes = bm.fewshot.BayesProto(x_dim=pool.x_dim).fit(episodes["train"], **fit)
    proto = bm.fewshot.ProtoNet(x_dim=pool.x_dim).fit(episodes["train"], **fit)
    scaled = bm.fewshot.TemperatureScaled(proto).calibrate(val_sets)
    ev = bm.Evaluation.concat([bm.evaluate(m, sets, name=name, oracle=False) for name, m in
                               (("bayes-proto", bayes), ("protonet", proto), ("protonet+T", scaled))])
    print(ev.table())
    print(f"temperature fitted for protonet: {scaled.temperature:.2f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        bm.diagnostics.plot_reliability_diagram(ev).savefig(Path(args.out) / "reliability.png", dpi=90)
        bm.diagnostics.plot_selective_prediction(ev).savefig(Path(args.out) / "selective.png", dpi=90)
    return {(r["method"], r["shots"]): {k: r[k] for k in ("accuracy", "nll", "ece")} for r in ev.summary}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="training steps per method (default: 3000)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=1000, help="test episodes per shot count")
    p.add_argument("--out", default="fewshot_out", help="where the plots go ('' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
