"""Lazy imports of heavy optional packages (layer 0: imports nothing of ours).

``import bayesmeta`` stays light: ArviZ (and xarray, pandas, scipy behind it) is imported the
first time a function needs it, through :func:`arviz`.
"""

from __future__ import annotations

import warnings

__all__ = ["arviz"]

# ArviZ 0.23 warns once a day per user about its 1.x refactor. The message starts with a newline,
# hence the DOTALL flag. We pin arviz<1 on purpose, so the warning tells our users nothing.
_REFACTOR_WARNING = r"(?s)\s*.*ArviZ is undergoing a major refactor"


def arviz():
    """Import and return the ``arviz`` module, without its once-a-day refactor notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_REFACTOR_WARNING, category=FutureWarning)
        import arviz as az
    return az
