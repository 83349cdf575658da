"""The flags every ``bayesmeta bench NAME`` shares."""

from __future__ import annotations

import argparse

__all__ = ["shared_flags", "sub_parser"]


def shared_flags(p: argparse.ArgumentParser, name: str, *, seed: bool = True, device: bool = True,
                  num_tasks: bool = False, progress: bool = False) -> None:
    """Add the flags benchmarks share to one benchmark's parser (only those it uses)."""
    p.add_argument("--out", default=f"bench_out/{name}", help=f"output directory (default: bench_out/{name})")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if device:
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    if num_tasks:
        p.add_argument("--num-tasks", type=int, default=1000, help="test tasks per shot count (default: 1000)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def sub_parser(bench, name: str, help_: str, run) -> argparse.ArgumentParser:
    """One benchmark's parser under ``bench``; ``run(args)`` runs it."""
    p = bench.add_parser(name, help=help_, description=help_)
    p.set_defaults(run_benchmark=run)
    return p
