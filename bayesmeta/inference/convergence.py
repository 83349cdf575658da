"""Did a stochastic fit converge? The trend of the logged loss over the last windows of training.

A fit that ends on its step (or time) budget while the training loss is still falling by more
than its own noise has not reached the optimum: the learned prior and likelihood parameters are
still moving. :func:`convergence_problem` fits a line to the last half of the logged losses and
says what to change when it still falls beyond its noise.
"""

from __future__ import annotations

import math

from .options import History

__all__ = ["MIN_POINTS", "convergence_problem"]

MIN_POINTS = 6
"""Logged losses the trend is fitted to (the last half of the trace, at least this many): a fit with
fewer logged losses is not judged."""
_T = 4.0  # the fall must be this many standard errors of the fitted slope
_RELATIVE = 1e-3  # ... and, over the window, this fraction of the loss's scale (per task): float noise never counts


def convergence_problem(history: History) -> str | None:
    """Why the fit recorded in ``history`` looks unconverged, or ``None`` (converged, or too short to judge).

    A least-squares line through the last half of the logged losses (at least :data:`MIN_POINTS`):
    unconverged when its slope is negative by more than ``_T`` standard errors and the fall it
    predicts over the window is more than ``_RELATIVE`` of the loss's scale. Logged losses are
    ``log_every`` steps apart, so their noise is close to independent.
    """
    loss = [v for v in history.loss if math.isfinite(v)]
    n = max(MIN_POINTS, len(loss) // 2)
    if len(loss) < n:
        return None
    v = loss[-n:]
    i_mean, v_mean = (n - 1) / 2, sum(v) / n
    sxx = sum((i - i_mean) ** 2 for i in range(n))
    slope = sum((i - i_mean) * (x - v_mean) for i, x in enumerate(v)) / sxx
    resid = sum((x - v_mean - slope * (i - i_mean)) ** 2 for i, x in enumerate(v)) / (n - 2)
    se = math.sqrt(resid / sxx)
    fall = -slope * (n - 1)
    if slope < -_T * se and fall > _RELATIVE * (abs(v_mean) + 1.0):
        steps = history.step[-1] if history.step else len(loss)
        return (f"the training loss was still falling at the end (by {fall:.3g} per task over the last {n} logged "
                f"values, a trend of {-slope / max(se, 1e-300):.1f} standard errors) after {steps} steps: the learned "
                "parameters had not converged; train longer (steps=, max_time=) or with a larger lr")
    return None
