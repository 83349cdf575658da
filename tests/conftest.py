import os

import numpy as np
import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_and_clean():
    """Fixed seeds and an empty Pyro parameter store for every test."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # python, numpy and torch
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()
