"""Backend "pycomm" (MPI engine) against gloo, in the same mpiexec job: every rank initialises
"pycomm" as the default group and a gloo group beside it, runs each operation on both with the same
inputs, and returns what differed. Inputs are integer-valued, so every summation order gives the
same exact result and the comparison is bitwise. A second pycomm group over a faked 2 x 2 topology
runs the hierarchical path against the same gloo results.

DDP and FSDP2 train the same model from the same seed on a pycomm group and on a gloo group: at 2
ranks the parameters end bitwise equal (a sum of two floats has one order); at 4 ranks MPICH and gloo
add the four gradients in different orders, so the parameters agree to float32 rounding, and each
backend's parameters are identical on every rank.
"""

from __future__ import annotations

from functools import partial

import pytest

from pycomm.testing import run_mpi

pytest.importorskip("torch")

pytestmark = pytest.mark.mpi

DTYPES = ("float32", "float64", "bfloat16", "float16", "int32", "int64", "int8", "uint8")
HIERARCHY = [("gpu", 2), ("node", 2)]
LARGE_DTYPES = ("float32", "bfloat16", "int64", "float64")
LARGE_COUNT = 700_001


# -- run on every rank -----------------------------------------------------------------------------


def _setup():
    import torch
    import torch.distributed as dist

    import pycomm.torch  # noqa: F401

    torch.set_num_threads(1)
    dist.init_process_group("pycomm")
    return dist.new_group(backend="gloo")


def _inputs(dtype_name: str, rank: int, count: int, op: str = "sum"):
    """Integer-valued data, different on each rank; small where products must stay exact."""
    import torch

    dtype = getattr(torch, dtype_name)
    values = torch.arange(count) * (rank + 1) % (3 if op == "product" else 50)
    if op == "product":
        values = values + 1
    if dtype_name == "int8":
        values = values % 30
    return values.to(dtype)


def _reduce_ops(dtype_name: str) -> list[str]:
    ops = ["sum", "product", "min", "max"]
    if dtype_name.startswith(("int", "uint")):
        ops += ["band", "bor", "bxor"]
    return ops


def _compare_group(group, gloo, name: str) -> tuple[int, list[str]]:
    import torch
    import torch.distributed as dist

    rank, size = dist.get_rank(), dist.get_world_size()
    compared, mismatches = 0, []

    def check(what: str, ours, theirs) -> None:
        nonlocal compared
        compared += 1
        ours = ours if isinstance(ours, (list, tuple)) else [ours]
        theirs = theirs if isinstance(theirs, (list, tuple)) else [theirs]
        if not all(torch.equal(a, b) for a, b in zip(ours, theirs)):
            mismatches.append(f"{name}: {what}: {ours} != {theirs}")

    def both(dtype: str, count: int, op: str, run):
        """Runs ``run(tensor, group)`` on the same fresh inputs for pycomm and for gloo."""
        ours, theirs = _inputs(dtype, rank, count, op), _inputs(dtype, rank, count, op)
        run(ours, group=group)
        run(theirs, group=gloo)
        return ours, theirs

    def reduce_scatter_tensor(tensor, group) -> None:
        out = torch.empty(8, dtype=tensor.dtype)
        dist.reduce_scatter_tensor(out, tensor, group=group)
        tensor[:8] = out

    for dtype in DTYPES:
        for op in _reduce_ops(dtype):
            reduce_op = getattr(dist.ReduceOp, op.upper())
            ours, theirs = both(dtype, 37, op, partial(dist.all_reduce, op=reduce_op))
            check(f"all_reduce {dtype} {op}", ours, theirs)
            ours, theirs = both(dtype, 11, op, partial(dist.reduce, dst=size - 1, op=reduce_op))
            if rank == size - 1:
                check(f"reduce {dtype} {op}", ours, theirs)
        if dtype in LARGE_DTYPES:
            # Large enough for the shared-memory all-reduce of ranks on one machine (several chunks
            # and a short last one).
            for op in ("sum", "max", "min"):
                reduce_op = getattr(dist.ReduceOp, op.upper())
                ours, theirs = both(dtype, LARGE_COUNT, op, partial(dist.all_reduce, op=reduce_op))
                check(f"all_reduce {dtype} {op} of {LARGE_COUNT} elements", ours, theirs)
        ours, theirs = both(dtype, 8 * size, "sum", reduce_scatter_tensor)
        check(f"reduce_scatter_tensor {dtype}", ours, theirs)
        source = _inputs(dtype, rank, 9)
        gathered = [[torch.empty_like(source) for _ in range(size)] for _ in range(2)]
        for outputs, g in zip(gathered, (group, gloo)):
            dist.all_gather(outputs, source, group=g)
        check(f"all_gather {dtype}", gathered[0], gathered[1])
        flat = [torch.empty(9 * size, dtype=source.dtype) for _ in range(2)]
        for out, g in zip(flat, (group, gloo)):
            dist.all_gather_into_tensor(out, source, group=g)
        check(f"all_gather_into_tensor {dtype}", flat[0], flat[1])
        ours, theirs = both(dtype, 13, "sum", partial(dist.broadcast, src=size - 1))
        check(f"broadcast {dtype}", ours, theirs)
        chunks = [[torch.empty(5, dtype=source.dtype) for _ in range(2)] for _ in range(2)]
        parts = [_inputs(dtype, rank + k, 5) for k in range(size)]
        for (out, _), g in zip(chunks, (group, gloo)):
            dist.reduce_scatter(out, parts, group=g)
        check(f"reduce_scatter {dtype}", chunks[0][0], chunks[1][0])
    # Gather, scatter and all-to-all move bytes: one dtype is enough.
    source = _inputs("float32", rank, 6)
    results = []
    for g in (group, gloo):
        lists = [torch.empty_like(source) for _ in range(size)] if rank == 0 else None
        dist.gather(source, lists, dst=0, group=g)
        results.append(lists)
    if rank == 0:
        check("gather", results[0], results[1])
    results = []
    for g in (group, gloo):
        out = torch.empty(6)
        parts = [_inputs("float32", k, 6) for k in range(size)] if rank == 1 else None
        dist.scatter(out, parts, src=1, group=g)
        results.append(out)
    check("scatter", results[0], results[1])
    send = _inputs("float32", rank, 4 * size)
    ours, theirs = torch.empty(4 * size), torch.empty(4 * size)
    dist.all_to_all_single(ours, send, group=group)
    dist.all_to_all_single(theirs, send, group=gloo)
    check("all_to_all_single", ours, theirs)
    # Uneven splits: rank r sends r + k + 1 rows to rank k.
    send_splits = [rank + k + 1 for k in range(size)]
    receive_splits = [k + rank + 1 for k in range(size)]
    send = _inputs("float32", rank, 2 * sum(send_splits)).reshape(-1, 2)
    ours, theirs = torch.empty(sum(receive_splits), 2), torch.empty(sum(receive_splits), 2)
    dist.all_to_all_single(ours, send, receive_splits, send_splits, group=group)
    dist.all_to_all_single(theirs, send, receive_splits, send_splits, group=gloo)
    check("all_to_all_single uneven", ours, theirs)
    outputs = [torch.empty(rank + k + 1, 2) for k in range(size)]
    dist.all_to_all(outputs, list(send.split(send_splits)), group=group)
    check("all_to_all", torch.cat(outputs), theirs)
    dist.barrier(group=group)
    return compared, mismatches


def _reference_checks(group, gloo) -> tuple[int, list[str]]:
    """Ops gloo lacks (AVG, PREMUL_SUM) against a reference from the gathered inputs, identical
    bytes on every rank for non-integer data, and async operations waited in reverse order."""
    import torch
    import torch.distributed as dist

    from pycomm.errors import NotSupportedError

    rank, size = dist.get_rank(), dist.get_world_size()
    compared, mismatches = 0, []
    for dtype in ("float32", "bfloat16", "float64"):
        source = _inputs(dtype, rank, 16)
        everyone = [torch.empty_like(source) for _ in range(size)]
        dist.all_gather(everyone, source, group=gloo)
        total = torch.stack([t.double() for t in everyone]).sum(0)
        for op, expected in (
            (dist.ReduceOp.AVG, total / size),
            (dist._make_nccl_premul_sum(0.5), total * 0.5),
        ):
            result = source.clone()
            if op != dist.ReduceOp.AVG and not hasattr(op, "factor"):
                # torch before 2.13 hides PREMUL_SUM's factor from Python backends
                compared += 1
                try:
                    dist.all_reduce(result, op=op, group=group)
                    mismatches.append(f"{op} on torch {torch.__version__}: no NotSupportedError")
                except NotSupportedError:
                    pass
                continue
            dist.all_reduce(result, op=op, group=group)
            compared += 1
            if not torch.equal(result, expected.to(source.dtype)):
                mismatches.append(f"{op} {dtype}: {result} != {expected}")
    noise = torch.randn(1000, generator=torch.Generator().manual_seed(rank))
    dist.all_reduce(noise, group=group)
    copies = [torch.empty_like(noise) for _ in range(size)]
    dist.all_gather(copies, noise, group=gloo)
    compared += 1
    if not all(torch.equal(copy, copies[0]) for copy in copies):
        mismatches.append("all_reduce of random float32 data differs between ranks")
    tensors = [torch.full((1000,), float(rank + k)) for k in range(8)]
    works = [dist.all_reduce(t, group=group, async_op=True) for t in tensors]
    for work in reversed(works):
        work.wait()
    base = sum(range(size))
    for k, tensor in enumerate(tensors):
        compared += 1
        if not torch.equal(tensor, torch.full((1000,), float(base + k * size))):
            mismatches.append(f"async all_reduce {k}: {tensor[:4]}")
    # A non-contiguous tensor goes through a contiguous host copy and back (as CUDA tensors do).
    matrix = torch.zeros(4, 6)
    matrix[:, ::2] = float(rank + 1)
    dist.all_reduce(matrix[:, ::2], group=group)
    compared += 1
    if not (torch.all(matrix[:, ::2] == size * (size + 1) / 2) and torch.all(matrix[:, 1::2] == 0)):
        mismatches.append(f"all_reduce of a strided view: {matrix}")
    # Point to point: a ring of batched isend/irecv, then the coalescing manager and object collectives.
    received = torch.empty(5)
    ring = [
        dist.P2POp(dist.isend, torch.full((5,), float(rank)), (rank + 1) % size, group=group),
        dist.P2POp(dist.irecv, received, (rank - 1) % size, group=group),
    ]
    for work in dist.batch_isend_irecv(ring):
        work.wait()
    compared += 1
    if not torch.equal(received, torch.full((5,), float((rank - 1) % size))):
        mismatches.append(f"batch_isend_irecv: {received}")
    pieces = [torch.full((3,), float(rank)), torch.full((2,), float(rank))]
    with dist._coalescing_manager(group=group):
        for piece in pieces:
            dist.all_reduce(piece, group=group)
    compared += 1
    if not all(torch.equal(piece, torch.full_like(piece, float(base))) for piece in pieces):
        mismatches.append(f"coalesced all_reduce: {pieces}")
    objects = [None] * size
    dist.all_gather_object(objects, {"rank": rank}, group=group)
    compared += 1
    if objects != [{"rank": r} for r in range(size)]:
        mismatches.append(f"all_gather_object: {objects}")
    return compared, mismatches


def every_op_against_gloo(hierarchy) -> dict:
    import torch.distributed as dist

    import pycomm.torch
    from pycomm.hier import Topology

    gloo = _setup()
    compared, mismatches = _compare_group(None, gloo, "flat")
    extra = _reference_checks(None, gloo)
    compared += extra[0]
    mismatches += extra[1]
    engines = {"flat": dist.distributed_c10d._get_default_group().engine.hier is None}
    if hierarchy:
        options = pycomm.torch.Options(topology=Topology.from_levels(hierarchy))
        hier = dist.new_group(backend="pycomm", pg_options=options)
        engines["hierarchical"] = hier.engine.hier is not None
        count, found = _compare_group(hier, gloo, "hierarchical")
        compared += count
        mismatches += found
    dist.destroy_process_group()
    return {"compared": compared, "mismatches": mismatches, "engines": engines}


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 4])
def test_every_op_equals_gloo(ranks):
    hierarchy = HIERARCHY if ranks == 4 else None
    result = run_mpi(every_op_against_gloo, ranks, args=(hierarchy,), timeout=240)
    for value in result.values:
        assert value["mismatches"] == []
        assert value["compared"] >= 100
        assert value["engines"]["flat"]
        if hierarchy:
            assert value["engines"]["hierarchical"]


def _mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _train(model, rank: int, steps: int):
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        inputs, targets = torch.randn(8, 16, generator=generator), torch.randn(8, 4, generator=generator)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def ddp_and_fsdp_on_both(steps: int) -> dict:
    """The parameters after ``steps`` steps of DDP and of FSDP2, on "pycomm" and on gloo."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    gloo = _setup()
    rank, size = dist.get_rank(), dist.get_world_size()
    result = {}
    for name, group in (("pycomm", None), ("gloo", gloo)):
        model = _mlp()
        _train(DistributedDataParallel(model, process_group=group), rank, steps)
        result[f"ddp {name}"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    meshes = {"pycomm": init_device_mesh("cpu", (size,)), "gloo": DeviceMesh.from_group(gloo, "cpu")}
    for name, mesh in meshes.items():
        model = _mlp()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        _train(model, rank, steps)
        full = [p.full_tensor().detach().reshape(-1) for p in model.parameters()]
        result[f"fsdp {name}"] = torch.cat(full).numpy()
    dist.destroy_process_group()
    return result


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 4])
def test_ddp_and_fsdp2_match_gloo(ranks):
    import numpy as np

    values = run_mpi(ddp_and_fsdp_on_both, ranks, args=(6,), timeout=240).values
    for key in values[0]:
        for other in values[1:]:
            np.testing.assert_array_equal(other[key], values[0][key], err_msg=f"{key} differs between ranks")
    for kind in ("ddp", "fsdp"):
        ours, theirs = values[0][f"{kind} pycomm"], values[0][f"{kind} gloo"]
        assert not np.array_equal(ours, _mlp_parameters()), "training changed nothing"
        if ranks == 2:
            np.testing.assert_array_equal(ours, theirs)
        else:
            # Four float32 gradients summed in MPICH's order and in gloo's differ in the last bit.
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _mlp_parameters():
    import torch

    return torch.cat([p.detach().reshape(-1) for p in _mlp().parameters()]).numpy()


def wrong_use() -> dict:
    """The errors a torch user meets: each entry is (exception type names, message)."""
    import datetime
    import time

    import torch
    import torch.distributed as dist

    import pycomm.torch

    _setup()
    rank = dist.get_rank()
    seen = {}

    def attempt(name: str, call) -> None:
        try:
            call()
        except Exception as error:
            seen[name] = ([kind.__name__ for kind in type(error).__mro__], str(error))
        else:
            seen[name] = (None, "no error")

    attempt("dtype", lambda: dist.all_reduce(torch.zeros(4, dtype=torch.float8_e4m3fn)))
    attempt("avg of ints", lambda: dist.all_reduce(torch.zeros(4, dtype=torch.int32), op=dist.ReduceOp.AVG))
    attempt("band of floats", lambda: dist.all_reduce(torch.zeros(4), op=dist.ReduceOp.BAND))
    attempt("gather size", lambda: dist.all_gather_into_tensor(torch.zeros(7), torch.zeros(4)))
    attempt("scatter size", lambda: dist.reduce_scatter_tensor(torch.zeros(3), torch.zeros(8)))
    attempt("list length", lambda: dist.all_gather([torch.zeros(4)] * 3, torch.zeros(4)))
    attempt("options", lambda: dist.new_group(backend="pycomm", pg_options=pycomm.torch.Options(engine="x")))
    slow = dist.new_group(backend="pycomm", timeout=datetime.timedelta(seconds=1.5))
    if rank == 0:
        attempt("timeout", lambda: dist.all_reduce(torch.ones(4), group=slow))
        attempt("after timeout", lambda: dist.all_reduce(torch.ones(4), group=slow))
    else:
        time.sleep(4)
        late = torch.ones(4)
        dist.all_reduce(late, group=slow)  # completes rank 0's timed-out operation
        seen["late result"] = (None, str(late.tolist()))
    dist.barrier()
    dist.destroy_process_group()
    return seen


@pytest.mark.slow
def test_wrong_use_gives_torch_errors():
    values = run_mpi(wrong_use, 2, timeout=120).values
    for seen in values:
        for name in ("dtype", "avg of ints", "band of floats", "gather size", "scatter size", "list length"):
            kinds, message = seen[name]
            assert kinds is not None and "RuntimeError" in kinds and "ValueError" in kinds, (name, seen[name])
        assert "float8_e4m3fn is not supported" in seen["dtype"][1]
        assert "AVG is not defined for int32" in seen["avg of ints"][1]
        wanted = "has 7 elements; all_gather_into_tensor (input elements x group size) needs 8"
        assert wanted in seen["gather size"][1]
        assert seen["options"][0] is not None and "engine must be one of" in seen["options"][1]
    kinds, message = values[0]["timeout"]
    assert "DistBackendError" in kinds and "did not complete within 0:00:01.500000" in message
    kinds, message = values[0]["after timeout"]
    assert "DistBackendError" in kinds and "failed earlier" in message
    assert values[1]["late result"][1] == str([2.0] * 4)


def ddp_comm_hooks_and_deadlines() -> dict:
    """DDP with torch's PowerSGD hook (its callback all-reduces and waits, inside the completion of
    another all-reduce), then a DDP step that one rank joins late, under a group timeout."""
    import datetime
    import time

    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel

    _setup()
    rank = dist.get_rank()
    model = _mlp()
    ddp = DistributedDataParallel(model)
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=1, start_powerSGD_iter=2
    )
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    _train(ddp, rank, 4)
    parameters = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    short = dist.new_group(backend="pycomm", timeout=datetime.timedelta(seconds=2))
    slow = DistributedDataParallel(_mlp(), process_group=short)
    outcome = "completed"
    if rank == 1:
        time.sleep(5)  # rank 0's gradient all-reduce waits for this rank past its deadline
    try:
        slow(torch.ones(2, 16)).sum().backward()
    except RuntimeError as error:
        outcome = f"{type(error).__name__}: {error}"
    dist.destroy_process_group()
    return {"parameters": parameters, "late step": outcome}


@pytest.mark.slow
def test_ddp_comm_hooks_complete_and_the_group_timeout_reaches_ddp():
    import numpy as np

    # torch's PowerSGD hook synchronizes "the tensor's CUDA device" whenever torch sees a GPU, which
    # fails for CPU tensors (with any backend): the job runs as on a machine without one.
    values = run_mpi(ddp_comm_hooks_and_deadlines, 2, timeout=120, env={"CUDA_VISIBLE_DEVICES": ""}).values
    np.testing.assert_array_equal(values[0]["parameters"], values[1]["parameters"])
    assert "did not complete within 0:00:02" in values[0]["late step"], values[0]["late step"]
