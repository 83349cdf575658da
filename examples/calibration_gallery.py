"""What good and bad calibration look like: the Bayes-optimal predictive and three ways to miss it.

On ``HierarchicalLinear`` tasks the exact posterior predictive is known. This script scores it and
three distortions of it with ``bm.evaluate`` and draws the calibration curves and PIT histograms
used in ``docs/diagnostics.md``:

* ``calibrated``: the exact predictive;
* ``overconfident``: the same predictive with half its spread (a mean-field guide's typical error);
* ``underconfident``: twice the spread;
* ``biased``: shifted up by one predictive sd.

Run:  python examples/calibration_gallery.py --out docs/figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

import bayesmeta as bm

matplotlib.use("Agg")


def distorted(family, *, scale: float = 1.0, shift: float = 0.0):
    """A predictor: the family's exact predictive with its spread scaled and its centre shifted."""
    def predict(xs, ys, xq, ms):
        exact = family.oracle_predict(xs, ys, xq, ms)  # one Gaussian component per point
        return bm.GaussianMixture(exact.loc + shift * exact.scale, exact.scale * scale)
    return predict


def main(args):
    family = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5)
    cases = {"calibrated": {}, "overconfident": {"scale": 0.5}, "underconfident": {"scale": 2.0},
             "biased": {"shift": 1.0}}
    ev = bm.Evaluation.concat([
        bm.evaluate(distorted(family, **kw), family, shots=(args.shots,), num_tasks=args.num_tasks, name=name,
                    seed=args.seed)
        for name, kw in cases.items()
    ])
    print(ev.table())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        bm.diagnostics.plot_calibration_curve(ev, title="calibration curves").savefig(out / "calibration_gallery.png", dpi=100)
        bm.diagnostics.plot_pit_histogram(ev).savefig(out / "pit_gallery.png", dpi=100)
        print(f"wrote {out}/calibration_gallery.png, {out}/pit_gallery.png")
    return {name: ev.get(name, args.shots) for name in cases}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-tasks", type=int, default=1000)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="calibration_gallery", help="directory for the figures ('' to skip)")
    p.add_argument("--device", default="cpu")
    main(p.parse_args())
