"""Experience replay for meta-training on a changing task stream.

A :class:`ReplayBuffer` keeps a bounded sample of the tasks a learner has trained on; each step
of :func:`~bayesmeta.inference.loop.train_loop` draws ``fraction`` of its mini-batch from the
buffer and the rest fresh from the stream, then offers the fresh tasks to the buffer. With
``strategy="reservoir"`` (Vitter's algorithm R) the buffer is a uniform sample of every task seen
so far, whatever the stream did; ``"fifo"`` keeps the most recent ones. The buffer is an object
the user holds: it carries over from one ``fit`` call to the next, and it is saved in (and
restored from) training checkpoints.
"""

from __future__ import annotations

import torch

from ..tasks.family import TaskFamily

__all__ = ["REPLAY_STRATEGIES", "ReplayBuffer", "check_replay", "outcome_kind", "refuse_shared_replay"]

REPLAY_STRATEGIES = ("reservoir", "fifo")


class ReplayBuffer:
    """A bounded store of past training tasks, mixed into every mini-batch.

    Args:
        capacity: tasks kept at most (at least the ``tasks_per_step`` of the fit it is used in).
        fraction: share of each mini-batch drawn from the buffer, in ``[0, 1)`` (the rest is
            fresh; ``round(fraction * tasks_per_step)`` tasks, fewer while the buffer holds fewer).
        strategy: ``"reservoir"`` (a uniform sample of all tasks seen) or ``"fifo"`` (the latest).

    Example:
        >>> import bayesmeta as bm
        >>> stream = bm.tasks.drifting_sinusoid(num_phases=2, steps_per_phase=2)
        >>> learner = bm.baselines.MAML(x_dim=1, y_dim=1)
        >>> buffer = bm.ReplayBuffer(capacity=64, fraction=0.5)
        >>> _ = learner.fit(stream, steps=4, tasks_per_step=8, replay=buffer, progress=False)
        >>> len(buffer), buffer.seen
        (20, 20)
    """

    def __init__(self, capacity: int, fraction: float = 0.5, strategy: str = "reservoir") -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"ReplayBuffer: capacity must be an int >= 1; got {capacity!r}")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
            raise ValueError(f"ReplayBuffer: fraction must be a number in [0, 1) (the share of each mini-batch "
                             f"replayed; 1 would never train on a new task); got {fraction!r}")
        if strategy not in REPLAY_STRATEGIES:
            raise ValueError(f"ReplayBuffer: strategy must be one of {REPLAY_STRATEGIES}; got {strategy!r}")
        self.capacity, self.fraction, self.strategy = capacity, float(fraction), strategy
        self.x: torch.Tensor | None = None  # [C, N, D] once the first tasks arrive
        self.y: torch.Tensor | None = None  # [C, N, E]
        self.size = 0
        self.seen = 0
        self.outcome: str | None = None  # the kind of outcome of the stream that filled it (see check_replay)

    def __repr__(self) -> str:
        return (f"ReplayBuffer(capacity={self.capacity}, fraction={self.fraction}, strategy={self.strategy!r}; "
                f"holds {self.size}, seen {self.seen})")

    def __len__(self) -> int:
        return self.size

    def check(self, tasks_per_step: int) -> None:
        """Refuse a buffer too small for the mini-batches it is to feed."""
        if self.capacity < tasks_per_step:
            raise ValueError(f"replay: ReplayBuffer capacity={self.capacity} is below tasks_per_step={tasks_per_step}; "
                             "the buffer must hold at least one mini-batch")

    def num_replayed(self, tasks_per_step: int) -> int:
        """Tasks of a ``tasks_per_step`` mini-batch that come from the buffer now (at least one is fresh)."""
        return min(round(self.fraction * tasks_per_step), tasks_per_step - 1, self.size)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` distinct stored tasks at random: ``x [n, N, D]``, ``y [n, N, E]``."""
        if n > self.size or self.x is None or self.y is None:
            raise ValueError(f"replay: cannot draw {n} tasks from a buffer holding {self.size}")
        idx = torch.randperm(self.size, generator=generator)[:n].to(self.x.device)
        return self.x[idx], self.y[idx]

    def add(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Offer new tasks ``x [k, N, D]``, ``y [k, N, E]`` (in stream order) to the buffer."""
        k = x.shape[0]
        if self.x is None or self.y is None:
            self.x = x.new_zeros((self.capacity, *x.shape[1:]))
            self.y = y.new_zeros((self.capacity, *y.shape[1:]))
        elif x.shape[1:] != self.x.shape[1:] or y.shape[1:] != self.y.shape[1:]:
            raise ValueError(f"replay: new tasks have points {tuple(x.shape[1:])} / {tuple(y.shape[1:])}; the buffer "
                             f"holds {tuple(self.x.shape[1:])} / {tuple(self.y.shape[1:])} (use one max_points per buffer)")
        count = self.seen + torch.arange(1, k + 1)  # each new task's position in the stream (from 1)
        if self.strategy == "fifo":
            slot = (count - 1) % self.capacity
        else:  # algorithm R: the i-th task replaces a random slot with probability capacity / i
            j = (torch.rand(k, generator=generator, dtype=torch.float64) * count).floor().long()
            slot = torch.where(count <= self.capacity, count - 1, j)
        keep = slot < self.capacity
        # sequential semantics: of several new tasks aimed at one slot, the last one stays
        winner = torch.full((self.capacity,), -1, dtype=torch.long)
        winner.scatter_reduce_(0, slot[keep], torch.arange(k)[keep], reduce="amax")
        slots = (winner >= 0).nonzero().squeeze(-1)
        src = winner[slots].to(x.device)
        slots = slots.to(self.x.device)
        self.x[slots] = x[src].to(self.x)
        self.y[slots] = y[src].to(self.y)
        self.seen += k
        self.size = min(self.capacity, self.seen)

    def state_dict(self) -> dict:
        """What a checkpoint holds (tensors trimmed to the stored tasks)."""
        return {"capacity": self.capacity, "fraction": self.fraction, "strategy": self.strategy, "seen": self.seen,
                "size": self.size, "outcome": self.outcome, "x": None if self.x is None else self.x[: self.size].clone(),
                "y": None if self.y is None else self.y[: self.size].clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a buffer saved by :meth:`state_dict` (its settings must match this buffer's)."""
        saved = (state["capacity"], state["fraction"], state["strategy"])
        if saved != (self.capacity, self.fraction, self.strategy):
            raise ValueError(f"resume: the checkpoint's replay buffer has capacity, fraction, strategy = {saved}; "
                             f"this one has {(self.capacity, self.fraction, self.strategy)}")
        self.seen, self.size = int(state["seen"]), int(state["size"])
        self.outcome = state.get("outcome")  # absent from checkpoints of earlier versions
        self.x = self.y = None
        if state["x"] is not None:
            x, y = state["x"], state["y"]
            self.x = torch.cat([x, x.new_zeros((self.capacity - self.size, *x.shape[1:]))])
            self.y = torch.cat([y, y.new_zeros((self.capacity - self.size, *y.shape[1:]))])

    def to(self, device) -> ReplayBuffer:
        """Move the stored tasks to ``device``; returns ``self``."""
        if self.x is not None and self.y is not None:
            self.x, self.y = self.x.to(device), self.y.to(device)
        return self


def check_replay(replay, source, tasks_per_step: int) -> ReplayBuffer | None:
    """``replay`` if it can feed a fit on ``source`` with mini-batches of ``tasks_per_step`` tasks, else an error."""
    if replay is None:
        return None
    if not isinstance(replay, ReplayBuffer):
        raise TypeError(f"replay must be a bayesmeta.ReplayBuffer or None; got {type(replay).__name__}")
    if not isinstance(source, TaskFamily):
        raise ValueError("replay applies to a task family stream (e.g. bm.tasks.Phases); a TaskBatch pool is "
                         "trained on in full at every step, so there is nothing to replay")
    replay.check(tasks_per_step)
    _check_same_kind(replay, source)
    return replay


def outcome_kind(source) -> str:
    """What a stream's outcomes are: ``"class labels"`` (episodes), a discrete likelihood's name
    (``"bernoulli"``, ``"poisson"``, ...: a family's ``likelihood``), ``"real"``, or ``"mixed"``."""
    families = getattr(source, "families", None)
    if families:  # Phases, TaskMixture
        kinds = {outcome_kind(f) for f in families}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    if getattr(source, "episodic", False):
        return "class labels"
    return getattr(source, "likelihood", "") or "real"


_whole = lambda y: (y >= 0) & (y == y.round())  # noqa: E731
# the values each discrete kind of outcome can take, and how to say so
_SUPPORT = {"bernoulli": (lambda y: (y == 0) | (y == 1), "0 or 1"), "poisson": (_whole, "a whole number >= 0"),
            "negative-binomial": (_whole, "a whole number >= 0"), "binomial": (_whole, "a whole number >= 0"),
            "class labels": (_whole, "a whole-number class label")}


def _check_same_kind(replay: ReplayBuffer, source) -> None:
    """A buffer filled from one kind of stream (say regression) cannot feed a fit on another (say Bernoulli)."""
    kind = outcome_kind(source)
    if replay.size and replay.x is not None and replay.y is not None:
        held = (replay.x.shape[-1], replay.y.shape[-1])
        what = f"this fit's stream ({type(source).__name__})"
        fix = "give this fit a new ReplayBuffer (a buffer replays the tasks of one kind of stream)"
        if held != (source.x_dim, source.y_dim):
            raise ValueError(f"replay: the ReplayBuffer holds {replay.size} tasks with x_dim={held[0]}, y_dim={held[1]} "
                             f"but {what} has x_dim={source.x_dim}, y_dim={source.y_dim}; {fix}")
        if replay.outcome not in (None, kind):
            raise ValueError(f"replay: the ReplayBuffer holds {replay.size} tasks of a stream with {replay.outcome} "
                             f"outcomes but {what} has {kind} outcomes; {fix}")
        test, allowed = _SUPPORT.get(kind, (None, ""))
        y = replay.y[: replay.size]  # [size, N, E]
        bad = None if test is None else (~test(y)).nonzero()
        if bad is not None and len(bad):
            value = float(y[tuple(bad[0])])
            raise ValueError(f"replay: the ReplayBuffer holds a task with outcome y={value:.4g}, which is not {allowed} "
                             f"as the {kind} outcomes of {what} are; it was filled from another kind of stream: {fix}")
    replay.outcome = kind


def refuse_shared_replay(name: str, options: dict) -> None:
    """An ensemble's members would all feed one buffer (each replaying the others' tasks): refuse."""
    if options.get("replay") is not None:
        raise ValueError(f"{name}.fit: replay is not supported for ensembles (each member would need its own "
                         "buffer); fit the members one by one, each with its own ReplayBuffer")
