"""Backend "pycomm" with CUDA tensors (staged through host memory): every collective on CUDA tensors
against gloo on CPU copies of the same inputs, on a side stream too, and DDP of a CUDA model against
the same training on the CPU with gloo. Both ranks share the machine's GPUs round robin (one GPU
serves both). Skips, saying why, where torch has no usable GPU.
"""

from __future__ import annotations

import pytest

from pycomm.testing import run_mpi

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]


def _inputs(dtype, rank: int, count: int):
    import torch

    return (torch.arange(count) * (rank + 1) % 50).to(dtype)


def collectives_on_cuda() -> dict:
    import torch
    import torch.distributed as dist

    import pycomm.torch  # noqa: F401

    torch.set_num_threads(1)
    dist.init_process_group("pycomm")
    gloo = dist.new_group(backend="gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    compared, mismatches = 0, []

    def check(what: str, ours, theirs) -> None:
        nonlocal compared
        compared += 1
        ours = ours if isinstance(ours, (list, tuple)) else [ours]
        theirs = theirs if isinstance(theirs, (list, tuple)) else [theirs]
        if any(a.device.type != "cuda" for a in ours):
            mismatches.append(f"{what}: the result left the GPU")
        elif not all(torch.equal(a.cpu(), b) for a, b in zip(ours, theirs)):
            mismatches.append(f"{what}: {ours} != {theirs}")

    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
            host = _inputs(dtype, rank, 37)
            ours = host.to(device)
            dist.all_reduce(ours, op=op)
            dist.all_reduce(host, op=op, group=gloo)
            check(f"all_reduce {dtype} {op}", ours, host)
        host = _inputs(dtype, rank, 13)
        ours = host.to(device)
        dist.broadcast(ours, src=size - 1)
        dist.broadcast(host, src=size - 1, group=gloo)
        check(f"broadcast {dtype}", ours, host)
        source = _inputs(dtype, rank, 9)
        ours, theirs = torch.empty(9 * size, dtype=dtype, device=device), torch.empty(9 * size, dtype=dtype)
        dist.all_gather_into_tensor(ours, source.to(device))
        dist.all_gather_into_tensor(theirs, source, group=gloo)
        check(f"all_gather_into_tensor {dtype}", ours, theirs)
        listed = [torch.empty(9, dtype=dtype, device=device) for _ in range(size)]
        dist.all_gather(listed, source.to(device))
        check(f"all_gather {dtype}", listed, list(theirs.split(9)))
        whole = _inputs(dtype, rank, 8 * size)
        ours, theirs = torch.empty(8, dtype=dtype, device=device), torch.empty(8, dtype=dtype)
        dist.reduce_scatter_tensor(ours, whole.to(device))
        dist.reduce_scatter_tensor(theirs, whole, group=gloo)
        check(f"reduce_scatter_tensor {dtype}", ours, theirs)

    send = _inputs(torch.float32, rank, 4 * size)
    ours, theirs = torch.empty(4 * size, device=device), torch.empty(4 * size)
    dist.all_to_all_single(ours, send.to(device))
    dist.all_to_all_single(theirs, send, group=gloo)
    check("all_to_all_single", ours, theirs)
    host = _inputs(torch.float32, rank, 11)
    ours = host.to(device)
    dist.reduce(ours, dst=0)
    dist.reduce(host, dst=0, group=gloo)
    if rank == 0:
        check("reduce", ours, host)
    received = torch.empty(5, device=device)
    if rank == 0:
        dist.send(torch.full((5,), 7.0, device=device), dst=1)
    elif rank == 1:
        dist.recv(received, src=0)
        check("send/recv", received, torch.full((5,), 7.0))
    # A non-contiguous CUDA view, and async operations waited out of order.
    matrix = torch.zeros(4, 6, device=device)
    matrix[:, ::2] = float(rank + 1)
    dist.all_reduce(matrix[:, ::2])
    expected = torch.zeros(4, 6)
    expected[:, ::2] = size * (size + 1) / 2
    check("all_reduce of a strided CUDA view", matrix, expected)
    tensors = [torch.full((1000,), float(rank + k), device=device) for k in range(6)]
    works = [dist.all_reduce(t, async_op=True) for t in tensors]
    for work in reversed(works):
        work.wait()
    base = sum(range(size))
    for k, tensor in enumerate(tensors):
        check(f"async all_reduce {k}", tensor, torch.full((1000,), float(base + k * size)))
    # Inputs written and results read on a side stream: the operation sees the stream's writes and the
    # stream sees its results.
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        big = torch.empty(1 << 20, device=device)
        big.fill_(float(rank + 1))
        dist.all_reduce(big)
        doubled = big * 2
    stream.synchronize()
    check("all_reduce on a side stream", doubled, torch.full((1 << 20,), float(size * (size + 1))))
    dist.barrier()
    dist.destroy_process_group()
    return {"compared": compared, "mismatches": mismatches}


def _train(model, device, rank: int, steps: int, group=None):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model.to(device), process_group=group)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        inputs, targets = torch.randn(16, 8, generator=generator), torch.randn(16, 4, generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(inputs.to(device)), targets.to(device))
        loss.backward()
        optimizer.step()
    return [p.detach().cpu() for p in ddp.parameters()]


def ddp_on_cuda(steps: int) -> dict:
    import torch
    import torch.distributed as dist

    import pycomm.torch  # noqa: F401

    torch.set_num_threads(1)
    # Matrix products in float32 on the GPU, so that they round as closely to the CPU as they can.
    torch.backends.cuda.matmul.allow_tf32 = False
    dist.init_process_group("pycomm")
    gloo = dist.new_group(backend="gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    on_gpu = _train(model(), device, rank, steps)
    on_cpu = _train(model(), torch.device("cpu"), rank, steps, group=gloo)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, on_gpu, group=gloo)
    dist.destroy_process_group()
    return {
        "largest_difference": max(float((a - b).abs().max()) for a, b in zip(on_gpu, on_cpu)),
        "same_on_every_rank": all(
            all(torch.equal(a, b) for a, b in zip(other, on_gpu)) for other in gathered
        ),
    }


def test_collectives_on_cuda_tensors_equal_gloo_on_cpu():
    result = run_mpi(collectives_on_cuda, 2, timeout=240)
    for value in result.values:
        assert value["mismatches"] == []
        assert value["compared"] >= 28


def test_ddp_on_cuda_matches_ddp_on_cpu():
    result = run_mpi(ddp_on_cuda, 2, args=(5,), timeout=240)
    for value in result.values:
        assert value["same_on_every_rank"]
        # Kernels on the GPU and the CPU round differently; the gradients' sum of two has one order.
        assert value["largest_difference"] < 1e-5
