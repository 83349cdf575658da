"""``_checks.check_ints``: the one integer-argument check (evaluate, NUTS, K-shot splits, benchmarks)."""

import pytest
import torch

import bayesmeta as bm
from bayesmeta._checks import check_ints


@pytest.mark.parametrize(("value", "ok"), [(0, True), (3, True), (-1, False), (1.0, False), (True, False), ("2", False)])
def test_check_ints(value, ok):
    if ok:
        check_ints(shots=(value, 0))
    else:
        with pytest.raises(ValueError, match=rf"shots must be an int >= 0; got {value!r}"):
            check_ints(shots=(value, 0))


def test_callers_name_their_argument():
    batch = bm.tasks.Sinusoid().sample(2, shots=3, num_query=1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"shots must be an int >= 0; got -1"):
        batch.first_shots(-1)
    with pytest.raises(ValueError, match=r"chunk must be an int >= 1; got 0"):
        bm.evaluate(bm.tasks.Sinusoid().oracle_predict, batch, shots=(1,), chunk=0)
    with pytest.raises(ValueError, match=r"num_chains must be an int >= 1; got 0"):
        bm.inference.nuts.run_nuts(lambda *a: None, *batch.support, num_chains=0)
