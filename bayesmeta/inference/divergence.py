"""Telling a diverging training loss (finite, but orders of magnitude above where it has been) from a healthy one.

The loop feeds :class:`DivergenceDetector` the losses it holds on the device at its host reads and
stops with a ``FloatingPointError`` (naming the step and the learning rate) on a divergence.
"""

from __future__ import annotations

import math

import torch

from .._support import short_error

__all__ = ["DIVERGENCE_FACTOR", "DIVERGENCE_STEPS", "DivergenceDetector", "failed_step_error"]

DIVERGENCE_FACTOR = 1e6
"""A loss per task more than this many times (6 orders of magnitude) above the lowest running scale of
``|loss| + 1`` the run has reached is *over*; see :class:`DivergenceDetector`."""
DIVERGENCE_STEPS = 10
"""Consecutive steps *over* that make a divergence (shorter excursions, e.g. one wild batch, pass)."""


class DivergenceDetector:
    """Tells a diverging loss (finite, but orders of magnitude above where it has been) from a healthy one.

    Each step's ``z = log(|loss| + 1)`` (defined for losses near 0 or negative, as a negative log
    density may be) moves an exponential moving average, the running scale in log units; the
    *floor* is the lowest that average has been. A step is *over* when ``|loss| + 1`` is more than
    ``factor`` times ``exp(floor)`` (``z > floor + log(factor)``); ``steps`` consecutive steps over
    are a divergence. A falling loss only lowers the floor and noise around any level stays
    within a few units of ``z`` of it, so a healthy run is never over for long; a run that has
    blown up stays over however long it sits at its new level (the floor does not follow it up).
    The loop feeds it the losses it holds on the device, in order, at its host reads.

    Example:
        >>> d = DivergenceDetector()
        >>> for step, loss in enumerate([1e4, 1e2, 1.0] + [1e15] * 12, start=1):
        ...     d.update(loss, step)
        >>> d.diverged_at
        4
    """

    def __init__(self, factor: float = DIVERGENCE_FACTOR, steps: int = DIVERGENCE_STEPS, smoothing: float = 0.1) -> None:
        self.factor, self.steps, self.smoothing = factor, steps, smoothing
        self.scale: float | None = None  # the running scale, log(|loss| + 1) units
        self.floor = math.inf  # the lowest running scale so far
        self.run = 0  # consecutive steps over
        self.diverged_at: int | None = None  # the first step of the first divergence
        self.last = 0.0  # the latest finite loss

    def update(self, loss: float, step: int) -> None:
        """Take one step's loss per task; non-finite losses are skipped (the loop reports those itself)."""
        if not math.isfinite(loss):
            return
        z = math.log1p(abs(loss))
        self.scale = z if self.scale is None else self.scale + self.smoothing * (z - self.scale)
        self.floor = min(self.floor, self.scale)
        self.run = self.run + 1 if z > self.floor + math.log(self.factor) else 0
        if self.diverged_at is None and self.run >= self.steps:
            self.diverged_at = step - self.steps + 1
        self.last = loss

    @property
    def over(self) -> bool:
        """The latest loss is over the threshold (a divergence may be starting)."""
        return self.run > 0

    def describe(self) -> str:
        """The threshold, the running scale and the latest loss, in words."""
        return (f"more than {self.factor:.0e} times its lowest running scale (about {math.expm1(self.floor):.3g}; "
                f"latest {self.last:.3g})")


def failed_step_error(err: Exception, step: int, detector: DivergenceDetector, params, advice: str) -> Exception | None:
    """What a training step that raised ``err`` means, as the exception to raise (``None``: pass ``err`` through).

    A distribution refusing its arguments (torch's "found invalid values") after the loss rose or with
    non-finite parameters is a divergence (``FloatingPointError`` with ``advice``); with finite parameters
    and a loss that never rose, an argument computed from the data is out of range (a ``ValueError``: no
    learning rate fixes it). Messages keep torch's first line without its tensors.
    """
    text = str(err)
    refused = "found invalid values" in text  # torch.distributions' argument validation
    onset = detector.diverged_at
    finite = all(bool(torch.isfinite(p).all()) for p in params)  # error path only: syncs are fine
    if not refused and onset is None and not detector.over and finite:
        return None
    first = short_error(err).split(": ", 1)[-1]
    if refused and onset is None and not detector.over and finite:
        return ValueError(f"meta-training step {step}: the model's program refused a distribution argument ({first}) "
                          "while its parameters are finite and the loss had not risen, so no learning rate fixes it: "
                          "an argument computed from the data is out of its range; check the inputs it comes from (a "
                          "number of trials must stay raw: a model's DataScaling must keep that column, keep_x=...)")
    since = "" if onset is None else f", after the loss per task rose to {detector.describe()} at step {onset}"
    return FloatingPointError(f"meta-training diverged at step {step}: parameters became too large or non-finite "
                              f"({first}){since}. {advice}")
