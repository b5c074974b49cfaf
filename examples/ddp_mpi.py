"""Data-parallel training with torch's DistributedDataParallel on backend "pycomm", launched by MPI.

    mpiexec -n 4 python examples/ddp_mpi.py [--steps 200] [--backend pycomm|gloo]

The script is what one writes for gloo; ``import pycomm.torch`` and the backend's name are the only
changes. Under mpiexec, importing pycomm.torch sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
from MPI, so gloo runs under mpiexec too (``--backend gloo``) for comparison. Each rank trains on
its own shard of a synthetic regression task; rank 0 prints the loss, and every rank checks at the
end that its parameters are identical to rank 0's.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import pycomm.torch  # noqa: F401  (registers backend "pycomm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backend", default="pycomm", help="pycomm (default) or gloo")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP")
    args = parser.parse_args()

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, args.width),
        torch.nn.ReLU(),
        torch.nn.Linear(args.width, args.width),
        torch.nn.ReLU(),
        torch.nn.Linear(args.width, 1),
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1000 + rank)
    teacher = torch.randn(32, 1, generator=torch.Generator().manual_seed(7))
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs = torch.randn(64, 32, generator=generator)
        targets = torch.tanh(inputs @ teacher)
        loss = torch.nn.functional.mse_loss(ddp(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 50 == 0 or step == 1):
            print(f"step {step:4d}  loss {loss.item():.5f}", flush=True)
    elapsed = time.perf_counter() - started
    parameters = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = parameters.clone()
    dist.broadcast(reference, src=0)
    same = torch.equal(parameters, reference)
    agreed = torch.tensor([int(same)])
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    if rank == 0:
        verdict = "identical on every rank" if agreed.item() else "DIFFERENT between ranks"
        print(
            f"{args.backend}: {world} ranks, {args.steps} steps in {elapsed:.2f} s "
            f"({1e3 * elapsed / args.steps:.2f} ms/step); parameters {verdict}",
            flush=True,
        )
    dist.destroy_process_group()
    return 0 if agreed.item() else 1


if __name__ == "__main__":
    raise SystemExit(main())
