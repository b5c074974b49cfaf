"""Backend "pycomm"'s fault-tolerant engine: peer processes that rendezvous through a master
(``init_method="pycomm://..."``) run every operation against results computed from the known inputs;
a peer killed inside an all-reduce makes the survivors raise ``DistBackendError`` with their tensor
restored, and after ``pycomm.torch.reform()`` the next all-reduce runs among the survivors; a peer
killed between operations costs the survivors one error too, raised by the stale group; the
DiLoCo example finishes with a kill and a join, every peer on the same parameters, its loss close
to a run without churn, also when each outer all-reduce overlaps the next inner steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycomm.ft import Master
from pycomm.testing import LocalCluster

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diloco_ft.py"


def _group(address: str, world: int) -> None:
    """Joins the fault-tolerant group and re-forms the torch group once ``world`` peers are in."""
    import torch
    import torch.distributed as dist

    import pycomm.torch

    torch.set_num_threads(1)
    dist.init_process_group("pycomm", init_method=f"pycomm://{address}")
    comm = pycomm.torch.communicator()
    while comm.world_size < world:
        if comm.pending_peers():
            comm.update_topology()
        else:
            time.sleep(0.01)
    pycomm.torch.reform()


def every_op(address: str, world: int) -> None:
    import torch
    import torch.distributed as dist

    _group(address, world)
    rank, size = dist.get_rank(), dist.get_world_size()
    mismatches = []

    def data(r: int, count: int, dtype=torch.float32):
        return (torch.arange(count) * (r + 1) % 7 + 1).to(dtype)

    def expect(what: str, got, wanted) -> None:
        if not torch.equal(got, wanted):
            mismatches.append(f"{what}: {got} != {wanted}")

    everyone = lambda count, dtype=torch.float32: torch.stack([data(r, count, dtype) for r in range(size)])  # noqa: E731
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        for op, reference in (
            (dist.ReduceOp.SUM, lambda t: t.sum(0)),
            (dist.ReduceOp.PRODUCT, lambda t: t.prod(0)),
            (dist.ReduceOp.MIN, lambda t: t.min(0).values),
            (dist.ReduceOp.MAX, lambda t: t.max(0).values),
        ):
            x = data(rank, 21, dtype)
            dist.all_reduce(x, op=op)
            expect(f"all_reduce {dtype} {op}", x, reference(everyone(21, torch.float64)).to(dtype))
    x = data(rank, 21)
    dist.all_reduce(x, op=dist.ReduceOp.AVG)
    expect("all_reduce avg", x, (everyone(21, torch.float64).sum(0) / size).float())
    x = data(rank, 13)
    dist.broadcast(x, src=size - 1)
    expect("broadcast", x, data(size - 1, 13))
    parts = [torch.empty(5) for _ in range(size)]
    dist.all_gather(parts, data(rank, 5))
    expect("all_gather", torch.stack(parts), everyone(5))
    flat = torch.empty(5 * size)
    dist.all_gather_into_tensor(flat, data(rank, 5))
    expect("all_gather_into_tensor", flat, everyone(5).reshape(-1))
    out = torch.empty(4)
    dist.reduce_scatter_tensor(out, data(rank, 4 * size))
    expect("reduce_scatter_tensor", out, everyone(4 * size).sum(0)[4 * rank : 4 * rank + 4])
    x = data(rank, 9)
    dist.reduce(x, dst=1, op=dist.ReduceOp.MAX)
    expect("reduce", x, everyone(9).max(0).values if rank == 1 else data(rank, 9))
    gathered = [torch.empty(3) for _ in range(size)] if rank == 0 else None
    dist.gather(data(rank, 3), gathered, dst=0)
    if rank == 0:
        expect("gather", torch.stack(gathered), everyone(3))
    out = torch.empty(3)
    dist.scatter(out, [data(r, 3) for r in range(size)] if rank == 1 else None, src=1)
    expect("scatter", out, data(rank, 3))
    send_splits = [rank + k + 1 for k in range(size)]
    receive_splits = [k + rank + 1 for k in range(size)]
    send = torch.arange(sum(send_splits), dtype=torch.float32) + 100 * rank
    received = torch.empty(sum(receive_splits))
    dist.all_to_all_single(received, send, receive_splits, send_splits)
    wanted = torch.cat(
        [
            (torch.arange(sum(s + k + 1 for k in range(size)), dtype=torch.float32) + 100 * s)[
                sum(s + k + 1 for k in range(rank)) : sum(s + k + 1 for k in range(rank + 1))
            ]
            for s in range(size)
        ]
    )
    expect("all_to_all_single", received, wanted)
    dist.barrier()
    errors = []
    for call in (
        lambda: dist.send(torch.zeros(2), dst=(rank + 1) % size),
        lambda: dist.all_reduce(torch.zeros(2), op=dist.ReduceOp.BAND),
    ):
        try:
            call()
            errors.append("no error")
        except (NotImplementedError, RuntimeError) as error:
            errors.append(
                type(error).__name__ + ": " + str(error)
            )  # caught as NotImplementedError or RuntimeError
    print(f"rank={rank} size={size} mismatches={mismatches}", flush=True)
    print(f"errors={errors}", flush=True)
    dist.destroy_process_group()
    pycomm_torch_close()


def pycomm_torch_close() -> None:
    import pycomm.torch

    pycomm.torch.communicator().close()


def _reform_and_all_reduce() -> None:
    """After a failure: re-forms the group, runs one all-reduce of ones and leaves."""
    import torch
    import torch.distributed as dist

    import pycomm.torch

    pycomm.torch.reform()
    x = torch.ones(1000)
    dist.all_reduce(x)
    print(f"after reform size={dist.get_world_size()} sum={x[0].item()}", flush=True)
    dist.destroy_process_group()
    pycomm_torch_close()


def killed_during_all_reduce(address: str, world: int, victim: int) -> None:
    import torch
    import torch.distributed as dist

    _group(address, world)
    rank = dist.get_rank()
    print(f"ready rank={rank}", flush=True)
    x = torch.ones(1 << 20)
    work = dist.all_reduce(x, async_op=True)
    if rank == victim:
        print("stopping inside the all-reduce", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    try:
        work.wait()
        print(f"completed {x[0].item()}", flush=True)
    except dist.DistBackendError as error:
        restored = bool(torch.all(x == 1))
        print(f"failed restored={restored} cause={type(error.__cause__).__name__}", flush=True)
    _reform_and_all_reduce()


def idle_when_a_peer_dies(address: str, world: int, victim: int) -> None:
    import torch
    import torch.distributed as dist

    import pycomm.torch

    _group(address, world)
    comm = pycomm.torch.communicator()
    rank, epoch = dist.get_rank(), comm.epoch
    print(f"ready rank={rank}", flush=True)
    if rank == victim:
        time.sleep(120)
    while comm.epoch == epoch:  # the group's next operation finds it stale
        time.sleep(0.01)
    try:
        dist.all_reduce(torch.ones(4))
        print("stale group: no error", flush=True)
    except dist.DistBackendError as error:
        print(f"stale group: cause={type(error.__cause__).__name__}", flush=True)
    _reform_and_all_reduce()


@pytest.mark.slow
def test_every_op_over_the_fault_tolerant_engine():
    master = Master()
    try:
        with LocalCluster(timeout=120) as cluster:
            peers = cluster.spawn_many(3, every_op, args=(master.address, 3))
            cluster.wait_all()
            outputs = [peer.read_stdout() for peer in peers]
    finally:
        master.close()
    ranks = set()
    for output in outputs:
        assert "size=3 mismatches=[]" in output, output
        ranks.add(output.split("rank=")[1].split()[0])
        assert "NotSupportedError: the fault-tolerant engine of backend 'pycomm' has no send/recv" in output
        assert "ReduceOp.BAND is not supported by the fault-tolerant engine" in output
    assert ranks == {"0", "1", "2"}


def _kill_rank_two(function, before_kill: str | None = None) -> list[str]:
    """Runs ``function`` on 3 peers, SIGKILLs rank 2 (once it printed ``before_kill``, if given),
    and returns the two survivors' output."""
    master = Master()
    try:
        with LocalCluster(timeout=120) as cluster:
            peers = cluster.spawn_many(3, function, args=(master.address, 3, 2))
            for peer in peers:
                peer.wait_for_line(r"ready rank=\d", timeout=90)
            victim = next(peer for peer in peers if "ready rank=2" in peer.read_stdout())
            if before_kill is not None:
                victim.wait_for_line(before_kill, timeout=30)
            victim.kill()
            survivors = [peer for peer in peers if peer is not victim]
            for peer in survivors:
                peer.wait(timeout=90)
            return [peer.read_stdout() for peer in survivors]
    finally:
        master.close()


@pytest.mark.slow
def test_killed_peer_surfaces_as_dist_backend_error_and_reform_recovers():
    for output in _kill_rank_two(killed_during_all_reduce, "stopping inside the all-reduce"):
        assert "failed restored=True cause=Aborted" in output, output
        assert "after reform size=2 sum=2.0" in output, output


@pytest.mark.slow
def test_a_failure_between_operations_raises_once_with_the_stale_group():
    """A peer dies while the others run no operation: the epoch changes under the torch group, its
    next operation raises DistBackendError (the failure's Aborted as cause), and that error is the
    only one the failure costs: the first operation after reform() succeeds."""
    for output in _kill_rank_two(idle_when_a_peer_dies):
        assert "stale group: cause=Aborted" in output, output
        assert "after reform size=2 sum=2.0" in output, output


def _run_example(*options: str) -> tuple[str, float]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--peers", "3", "--outer-steps", "30", *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = [line for line in result.stdout.splitlines() if line.startswith("[driver] peers finished")][-1]
    return summary, float(summary.split("final eval_loss ")[1])


@pytest.mark.slow
def test_diloco_example_survives_a_kill_and_a_join_with_and_without_overlap():
    import torch

    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import diloco_ft
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    torch.set_num_threads(1)
    initial = diloco_ft._evaluation_loss(diloco_ft._model())
    churn, churn_loss = _run_example()
    assert "peers finished 3, kills 1, joins 1" in churn
    steady, steady_loss = _run_example("--no-churn")
    assert "kills 0, joins 0" in steady
    overlapped, overlapped_loss = _run_example("--overlap")
    assert "peers finished 3, kills 1, joins 1" in overlapped
    # "Close": the run with churn keeps at least half of the loss reduction the run without churn
    # reached. Measured on 2 cores (3-6 runs each), untrained 0.67: without churn 0.22-0.28, with
    # it 0.25-0.33; overlapped (outer updates a round late, momentum 0.5) with churn 0.28-0.33.
    losses = {"untrained": initial, "steady": steady_loss, "churn": churn_loss, "overlap": overlapped_loss}
    assert steady_loss < 0.6 * initial, losses
    allowed = steady_loss + 0.5 * (initial - steady_loss)
    assert churn_loss < allowed and overlapped_loss < allowed, losses
