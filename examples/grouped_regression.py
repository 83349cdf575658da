"""Your own grouped data, end to end: CSV -> ``bayesmeta fit`` -> ``evaluate`` -> ``predict`` -> ``report``.

The script *generates* a small table of grouped nonlinear curves (each group a "subject" whose
response decays towards its own baseline at its own rate) and runs the command line on it, the
way you would on your own CSV:

    y = A_g * exp(-x / tau_g) + B_g + noise,   A_g ~ N(3, 1), log tau_g ~ N(log 3, 0.3), B_g ~ N(1, 0.5)

Run:  python examples/grouped_regression.py --out grouped_demo --steps 3000
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

from bayesmeta.cli import main as bayesmeta


def write_groups(path: Path, num_groups: int, *, seed: int, prefix: str) -> None:
    """One row per observation: subject, time, response (8 to 20 rows per subject)."""
    g = torch.Generator().manual_seed(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "time", "response"])
        for i in range(num_groups):
            a = 3 + torch.randn((), generator=g)
            tau = math.exp(math.log(3) + 0.3 * float(torch.randn((), generator=g)))
            b = 1 + 0.5 * torch.randn((), generator=g)
            n = int(torch.randint(8, 21, (), generator=g))
            x = 10 * torch.rand(n, generator=g)
            y = a * torch.exp(-x / tau) + b + 0.2 * torch.randn(n, generator=g)
            for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
                w.writerow([f"{prefix}{i:03d}", f"{xi:.4f}", f"{yi:.4f}"])


def main(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_groups(out / "train.csv", 80, seed=args.seed, prefix="s")
    write_groups(out / "test.csv", 30, seed=args.seed + 1, prefix="t")
    (out / "new_subject.csv").write_text("time,response\n0.5,4.1\n2.0,2.6\n")
    (out / "grid.csv").write_text("time\n" + "\n".join(f"{0.5 * i:.1f}" for i in range(21)) + "\n")
    run = out / "run"
    quiet = ["--no-progress"] if args.no_progress else []
    steps = ["--steps", str(args.steps)]
    fit = ["fit", "--data", str(out / "train.csv"), "--task", "subject", "--x", "time", "--y", "response",
           "--out", str(run), "--force", "--seed", str(args.seed), "--device", args.device, *steps, *quiet]
    codes = [bayesmeta(fit),
             bayesmeta(["evaluate", str(run), "--data", str(out / "test.csv"), "--shots", "1", "3", "5"]),
             bayesmeta(["predict", str(run), "--support", str(out / "new_subject.csv"), "--query",
                        str(out / "grid.csv"), "--out", str(out / "predictions.csv"), "--force"]),
             bayesmeta(["report", str(run)])]
    if any(codes):
        raise SystemExit(f"a bayesmeta command failed (exit codes {codes})")
    print(f"run directory: {run}; predictions: {out / 'predictions.csv'}; report: {run / 'report.html'}")
    return {"run": run, "predictions": out / "predictions.csv"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="grouped_demo")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    main(p.parse_args())
