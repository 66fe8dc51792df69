"""DDP on CPU (gloo, 2 processes): gathered PICA loss and gradients equal one process on the whole batch."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from usclf.losses.pica import pica_loss
from usclf.train.distributed import cleanup_distributed, gather_with_grad, get_dist_info, init_distributed
from usclf.train.loop import OptimConfig, TrainConfig, Trainer

N, D, K = 8, 6, 4
SIZES = (5, 3)  # ranks hold different numbers of rows, as exam-level batches do
STEPS = 3


def _model() -> nn.Module:
    torch.manual_seed(0)  # no BatchNorm: its statistics would be per rank
    return nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, K), nn.Softmax(dim=1))


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"a": torch.randn(N, D, generator=g), "b": torch.randn(N, D, generator=g)} for _ in range(STEPS)]


def _rows(rank: int | None) -> slice:
    if rank is None:
        return slice(0, N)
    start = sum(SIZES[:rank])
    return slice(start, start + SIZES[rank])


def _pica_step(model, batch, ctx):
    n = batch["a"].shape[0]
    p = model(torch.cat([batch["a"], batch["b"]]))  # one forward over both views
    x, y = gather_with_grad(p[:n]), gather_with_grad(p[n:])
    loss, parts = pica_loss(x, y)
    return loss, parts


def _run(rank: int | None, out: Path) -> None:
    """One-step gradients and a 3-step Trainer run on this rank's rows (all rows when rank is None)."""
    rows = _rows(rank)
    model = _model()
    net = model
    if rank is not None:
        net = nn.parallel.DistributedDataParallel(model)
    batch = {k: v[rows] for k, v in _batches()[0].items()}
    loss, _ = _pica_step(net, batch, None)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    model2 = _model()
    cfg = TrainConfig(epochs=1, ckpt_every=1, progress=False, device="cpu",
                      optim=OptimConfig(name="sgd", lr=0.5, momentum=0.0))
    loader = [{k: v[rows] for k, v in b.items()} for b in _batches()]
    tag = "single" if rank is None else f"rank{rank}"
    res = Trainer(model2, cfg, _pica_step, out / tag).fit(loader)
    torch.save({"loss": loss.detach(), "grads": grads, "weights": model2.state_dict(),
                "history": res.history, "world": get_dist_info().world_size}, out / f"{tag}.pt")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    info = init_distributed()
    assert info.world_size == world and info.backend == "gloo"
    try:
        _run(rank, Path(out))
    finally:
        cleanup_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    start = time.time()
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    try:
        while not ctx.join(timeout=60):
            if time.time() - start > 600:  # 2 spawned ranks on a busy 2-core CI machine
                pytest.fail("DDP workers did not finish in 600 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    _run(None, tmp_path)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    assert single["world"] == 1
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["world"] == 2
        assert torch.allclose(got["loss"], single["loss"], atol=1e-6)
        for k, g in single["grads"].items():
            assert torch.allclose(got["grads"][k], g, atol=1e-5), (r, k)
            assert g.abs().max() > 1e-3  # the comparison is not between zeros
        for k, w in single["weights"].items():
            assert torch.allclose(got["weights"][k], w, atol=1e-5), (r, k)
        assert got["history"][0]["train/loss"] == pytest.approx(single["history"][0]["train/loss"], abs=1e-6)
    # only rank 0 writes checkpoints
    assert (tmp_path / "rank0" / "last.pt").is_file() and not (tmp_path / "rank1" / "last.pt").exists()


def test_gather_is_identity_without_a_process_group():
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t
    assert init_distributed().world_size == 1


# ---------------------------------------------------------------- semisup methods' running state under DDP
METHOD_NAMES = ("flexmatch-twohead", "freematch-twohead", "fixmatch-da-twohead")
POOL = np.array([3, 8, 1, 12, 5, 9, 0, 7, 11, 2])  # manifest rows of the unlabelled pool (unsorted)


def _method_batches() -> list[torch.Tensor]:
    """Per step: the global batch's pool rows (uneven split below) and its weak combo logits (K = 3)."""
    g = torch.Generator().manual_seed(2)
    return [(torch.tensor(POOL[torch.randperm(len(POOL), generator=g)[:7].numpy()]),
             3 * torch.randn(7, 3, generator=g)) for _ in range(4)]


def _method_states(rank: int | None) -> dict[str, dict]:
    """Each method's state after 4 steps on this rank's rows (4 and 3 of 7; all rows when rank is None)."""
    from usclf.methods import method_class
    from usclf.methods.semisup_base import MethodSetup

    y_lab = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]])
    rows = slice(0, 7) if rank is None else (slice(0, 4) if rank == 0 else slice(4, 7))
    states = {}
    for name in METHOD_NAMES:
        m = method_class("semisup", name)(MethodSetup(classes=["a", "b"], y_labeled=y_lab, tau=0.6,
                                                      unlabeled_rows=POOL), None)
        for r, logits in _method_batches():
            weak = (logits[rows], None)
            m.unlabeled_loss(weak, (logits[rows].clone(), None), m.pool_index(r[rows]))
        states[name] = m.state_dict()["state"]
    return states


def _save_worker(rank: int, world: int, port: int, out: str, fn, stem: str) -> None:
    """Rank `rank` of a gloo group: saves fn(rank) to OUT/STEM<rank>.pt."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    init_distributed()
    try:
        torch.save(fn(rank), Path(out) / f"{stem}{rank}.pt")
    finally:
        cleanup_distributed()


def test_method_state_is_updated_from_every_ranks_rows(tmp_path):
    """FlexMatch's per-image state (and FreeMatch's / DA's running statistics) on each of 2 ranks, each with
    part of every batch, equal the state of one process on the whole batches."""
    mp.start_processes(_save_worker, args=(2, _free_port(), str(tmp_path), _method_states, "methods"), nprocs=2,
                       start_method="spawn")
    single = _method_states(None)
    assert (single["flexmatch-twohead"]["selected"] >= 0).sum() >= 3  # confident images were recorded
    for r in range(2):
        got = torch.load(tmp_path / f"methods{r}.pt", weights_only=False)
        for name, state in single.items():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    assert torch.allclose(got[name][k], v, atol=1e-6), (r, name, k)
                else:
                    assert torch.equal(torch.as_tensor(got[name][k]), torch.as_tensor(v)), (r, name, k)


# ---------------------------------------------------------------- semisup loss weights under DDP
Y_SHARE = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 1]], dtype=torch.float32)
SHARE_ROWS = {0: slice(0, 2), 1: slice(2, 7)}  # 2 and 5 labelled rows; rank 0: 1 of 2 outside the vocabulary


def _share_losses(rank: int | None) -> list[float]:
    """[supervised, unlabelled] as DDP averages them: each rank's `rank_share`-weighted loss (the plain loss
    for one process); label sets [0, 0] and [1, 1] are seen once, so min_count 2 leaves them out of the CE."""
    from usclf.methods import method_class
    from usclf.methods.semisup_base import MethodSetup

    m = method_class("semisup", "fixmatch-twohead")(MethodSetup(classes=["a", "b"], y_labeled=Y_SHARE.numpy(),
                                                                min_count=2), None)
    g = torch.Generator().manual_seed(3)
    combo, ml = torch.randn(7, len(m.vocab), generator=g), torch.randn(7, 2, generator=g)
    rows = slice(0, 7) if rank is None else SHARE_ROWS[rank]
    y = Y_SHARE[rows]
    l_sup, parts = m.labeled_loss((combo[rows], ml[rows]), y)
    l_u = torch.tensor(0.5 if rank in (None, 0) else 0.25)  # a mean over nu = 3 (rank 0) and 1 (rank 1) rows
    if rank is None:
        return [float(l_sup), (0.5 * 3 + 0.25 * 1) / 4]
    s, u = m.rank_share(l_sup, parts, l_u, y, 3 if rank == 0 else 1)
    return [float(s), float(u)]


def test_rank_weighted_semisup_losses_average_to_the_global_batch_loss(tmp_path):
    """The label-set CE averages over the rows inside the vocabulary, a count that differs per rank: weighting
    it by the labelled rows instead (as the BCE) would not give the one-process loss."""
    mp.start_processes(_save_worker, args=(2, _free_port(), str(tmp_path), _share_losses, "share"), nprocs=2,
                       start_method="spawn")
    single = _share_losses(None)
    ranks = [torch.load(tmp_path / f"share{r}.pt") for r in range(2)]
    for i in range(2):
        assert (ranks[0][i] + ranks[1][i]) / 2 == pytest.approx(single[i], abs=1e-6)
