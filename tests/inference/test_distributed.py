"""Two gloo processes: K distributed steps equal K single-process steps on the union of their batches (exact
learner); an amortized learner's step is the sum of both shards' single-process steps."""

import contextlib
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bayesmeta as bm


def _pool():
    return bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5).sample(16, shots=6, generator=torch.Generator().manual_seed(0))


def _model():
    # neural features: the stochastic training loop (fixed features are fitted exactly by L-BFGS, in one process)
    return bm.models.BayesianHeadRegression(x_dim=1, num_features=4, hidden=(8,))


def _learner():
    torch.manual_seed(0)
    return bm.BayesLearner(_model(), conjugate=True)


def _flat(learner):
    return torch.cat([p.detach().reshape(-1) for p in learner.model.parameters()])


@contextlib.contextmanager
def _rank(rank, world, port):
    """This process as rank ``rank`` of ``world`` (torchrun's environment); leaves the group afterwards."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker(rank, world, port, out_dir):
    with _rank(rank, world, port):
        learner = _learner()
        torch.manual_seed(1234 + rank)  # different initial weights on purpose: rank 0's are broadcast
        for p in learner.model.parameters():
            p.data.add_(0 if rank == 0 else torch.randn_like(p))
        learner.fit(_pool(), steps=15, tasks_per_step=8, lr=0.05, progress=False, distributed=True,
                    checkpoint=os.path.join(out_dir, "ckpt.pt"), checkpoint_every=5)
        torch.save(_flat(learner), os.path.join(out_dir, f"rank{rank}.pt"))


def _mismatched_worker(rank, world, port):
    with _rank(rank, world, port):
        _learner().fit(_pool(), steps=2, lr=0.05 if rank == 0 else 0.01, progress=False, distributed=True)


def _maml_worker(rank, world, port, out_dir):
    with _rank(rank, world, port):
        torch.manual_seed(rank)  # different initialisations: rank 0's are broadcast
        maml = bm.baselines.MetaSGD(x_dim=1, y_dim=1, hidden=(8,))
        maml.fit(bm.tasks.Sinusoid(), steps=4, tasks_per_step=5, progress=False, distributed=True)
        torch.save(torch.cat([p.detach().reshape(-1) for p in maml.meta_parameters()]),
                   os.path.join(out_dir, f"maml{rank}.pt"))


# Amortized (non-conjugate) learner: the ELBO is stochastic, and rank r draws its particles and subsets from the
# streams seeded with seed + RANK_STRIDE * r (rank 0's are the single-process streams). One plain SGD step (no
# clipping, constant rate) moves the parameters by -lr * gradient, so the summed gradient of a 2-rank step is
# the sum of two single-process steps: on shard r (tasks r::2) with seed RANK_STRIDE * r.
RANK_STRIDE = 1_000_003
ONE_SGD_STEP = {"steps": 1, "tasks_per_step": 8, "lr": 0.05, "optimizer": "sgd", "clip_norm": None,
                "final_lr_fraction": 1.0, "progress": False, "validation": False, "polish": False}


def _amortized_learner():
    torch.manual_seed(0)
    return bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), num_particles=4)  # diagonal guide, ELBO


def _amortized_flat(learner):
    params = list(learner.model.parameters()) + list(learner.guide.parameters())
    return torch.cat([p.detach().reshape(-1) for p in params])


def _amortized_worker(rank, world, port, out_dir):
    with _rank(rank, world, port):
        learner = _amortized_learner().fit(_pool(), seed=0, distributed=True, **ONE_SGD_STEP)
        torch.save(_amortized_flat(learner), os.path.join(out_dir, f"sgd{rank}.pt"))
        torch.manual_seed(rank)  # different starting points for the Adam run: rank 0's are broadcast
        learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), num_particles=4)
        learner.fit(_pool(), steps=6, tasks_per_step=3, progress=False, distributed=True)
        torch.save(_amortized_flat(learner), os.path.join(out_dir, f"adam{rank}.pt"))


def _timed_worker(rank, world, port, out_dir):
    with _rank(rank, world, port):
        learner = _learner().fit(_pool(), steps=10**6, max_time=1.0, tasks_per_step=8, progress=False,
                                 distributed=True)
        torch.save(learner.history.step[-1], os.path.join(out_dir, f"steps{rank}.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process_on_the_union(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)  # parameters identical on every rank
    single = _learner().fit(_pool(), steps=15, tasks_per_step=16, lr=0.05, progress=False)
    assert torch.allclose(r0, _flat(single), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(r0, _flat(_learner()), atol=1e-3)  # training moved the parameters
    state = bm.inference.load_checkpoint(tmp_path / "ckpt.pt")  # rank 0's checkpoint loads in one process
    model = _model()
    model.load_state_dict(state["model"])
    assert torch.allclose(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), r0)


def test_amortized_step_sums_the_gradients_of_both_shards(tmp_path):
    mp.spawn(_amortized_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "sgd0.pt"), torch.load(tmp_path / "sgd1.pt")
    assert torch.equal(r0, r1)
    start = _amortized_flat(_amortized_learner())
    pool = _pool()
    solo = []
    for r in (0, 1):  # each rank normalised the encoder's inputs on the whole pool: so do the shards here
        learner = _amortized_learner()
        learner.guide.fit_input_scaling(*pool.all_points())
        solo.append(_amortized_flat(learner.fit(pool[r::2], seed=RANK_STRIDE * r, **ONE_SGD_STEP)))
    moved = [s - start for s in solo]  # -lr * (gradient of shard r)
    assert min(m.abs().max() for m in moved) > 1e-2  # both shards' gradients move the parameters
    # float32: the parameters are O(1), so the sums differ from the all-reduced step by rounding only (~1e-7)
    torch.testing.assert_close(r0, start + moved[0] + moved[1], atol=1e-6, rtol=1e-6)
    # several Adam steps (with subsampled shards, clipping and the schedule) keep every rank's parameters equal
    assert torch.equal(torch.load(tmp_path / "adam0.pt"), torch.load(tmp_path / "adam1.pt"))


def test_maml_family_trains_in_lockstep(tmp_path):
    mp.spawn(_maml_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert torch.equal(torch.load(tmp_path / "maml0.pt"), torch.load(tmp_path / "maml1.pt"))


def test_time_budget_stops_every_rank_after_the_same_step(tmp_path):
    # each rank reads its own clock; the stop flag rides in the gradient all-reduce
    mp.spawn(_timed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert torch.load(tmp_path / "steps0.pt") == torch.load(tmp_path / "steps1.pt") > 1


def test_mismatched_configs_fail_on_every_rank():
    with pytest.raises(mp.ProcessRaisedException, match=r"rank\(s\) \[1\] were started with a different configuration"):
        mp.spawn(_mismatched_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_no_process_group_environment_is_a_clear_error(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="launch with `torchrun"):
        _learner().fit(_pool(), steps=1, progress=False, distributed=True)


def test_world_size_one_trains_in_process_with_a_warning(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.warns(UserWarning, match="WORLD_SIZE=1"):
        learner = _learner().fit(_pool(), steps=3, progress=False, distributed=True)
    assert learner.history.step[-1] == 3
