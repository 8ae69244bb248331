"""wrap_ddp in a real 2-process gloo group: after backward, each process holds the
mean of both processes' gradients, and they are views of DDP's buckets."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from q4asr.bin.train import free_port, wrap_ddp

WORLD = 2


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))


def _input(rank: int) -> torch.Tensor:
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(100 + rank))


def _local_grads(rank: int) -> list[torch.Tensor]:
    model = _model()
    model(_input(rank)).pow(2).sum().backward()
    return [p.grad for p in model.parameters()]


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = _model()
        ddp = wrap_ddp(model, torch.device("cpu"))
        grads = []
        for _ in range(2):  # the second step reuses the buckets
            model.zero_grad(set_to_none=True)
            ddp(_input(rank)).pow(2).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        storages = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
        torch.save({"grads": grads, "storages": len(storages)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_wrap_ddp_averages_gradients_over_processes(tmp_path):
    out = str(tmp_path / "grads")
    mp.start_processes(
        _rank, args=(free_port(), out), nprocs=WORLD, start_method="spawn"
    )
    got = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    want = [r0 / WORLD + r1 / WORLD for r0, r1 in zip(_local_grads(0), _local_grads(1))]
    for g in got:
        assert g["storages"] == 1  # every gradient is a view of the one bucket
        for step in g["grads"]:
            assert all(torch.equal(a, w) for a, w in zip(step, want))
