"""pycomm.ft collectives inside one epoch: results equal numpy's on every dtype and op for world sizes
1-6, every peer ends with identical bytes, concurrent tagged operations, wrong use gets clear errors.

Peers are communicators in this process, one thread each (pycomm.testing.ft); the fault tests
with real processes are in test_ft_faults.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pycomm import kernels
from pycomm.errors import Aborted, InvalidArgumentError, NotSupportedError
from pycomm.testing.ft import local_group, on_all

DTYPES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)
OPS = ("sum", "prod", "min", "max", "avg")


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounded to nearest even (inputs here are finite)."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def peer_input(dtype: str, op: str, rank: int, size: int) -> np.ndarray:
    """Integer-valued inputs whose reduction is exact in every dtype for up to 6 peers."""
    rng = np.random.default_rng(1000 * rank + DTYPES.index(dtype) * 10 + OPS.index(op))
    if op == "prod":
        values = rng.integers(1, 3, size)  # products up to 2**6
    elif op in ("min", "max"):
        values = (
            rng.integers(-60, 60, size)
            if dtype[0] in "if" or dtype == "bfloat16"
            else rng.integers(0, 120, size)
        )
    else:
        values = rng.integers(0, 20, size)
    if dtype == "bfloat16":
        return to_bfloat16_bits(values)
    return values.astype(dtype)


def reference(inputs: list[np.ndarray], dtype: str, op: str) -> np.ndarray:
    values = [to_float(x, dtype) if dtype == "bfloat16" else x.astype(np.float64) for x in inputs]
    stacked = np.stack(values)
    if op == "sum":
        exact = stacked.sum(axis=0)
    elif op == "prod":
        exact = stacked.prod(axis=0)
    elif op == "min":
        exact = stacked.min(axis=0)
    elif op == "max":
        exact = stacked.max(axis=0)
    elif dtype in ("float16", "bfloat16"):
        # The documented rule for 16-bit floats: computed in float32, rounded once when stored.
        exact = stacked.astype(np.float32).sum(axis=0) / np.float32(len(inputs))
    else:
        exact = stacked.sum(axis=0) / len(inputs)
        if dtype[0] in "iu":
            exact = np.trunc(exact)
    if dtype == "bfloat16":
        return to_bfloat16_bits(exact.astype(np.float32))
    return exact.astype(dtype)


def to_float(bits: np.ndarray, dtype: str) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("transport", ["shared memory", "tcp"])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 6])
def test_all_reduce_equals_numpy_on_every_dtype_and_op(world: int, transport: str) -> None:
    size = 1000 + world  # not a multiple of the world size: uneven chunks
    shared = transport == "shared memory"
    with local_group(world, segment_bytes=1024, shared_memory=shared) as (_, comms):

        def run(comm) -> dict:
            results = {}
            for tag, (dtype, op) in enumerate((d, o) for d in DTYPES for o in OPS):
                x = peer_input(dtype, op, comm.rank, size)
                comm.all_reduce(x, op=op, tag=tag, dtype=dtype)
                results[(dtype, op)] = x
            return results

        per_peer = on_all(comms, run)
        for dtype in DTYPES:
            for op in OPS:
                inputs = [peer_input(dtype, op, rank, size) for rank in range(world)]
                expected = reference(inputs, dtype, op)
                for rank in range(world):
                    got = per_peer[rank][(dtype, op)]
                    assert got.tobytes() == expected.tobytes(), (dtype, op, rank)


@pytest.mark.parametrize("size", [1_003, 100_003], ids=["reduced whole by every peer", "in chunks"])
def test_float_sums_are_bit_identical_on_every_peer(size: int) -> None:
    # Random floats: the ring's sum order differs from numpy's, but every peer holds the same bytes.
    with local_group(4) as (_, comms):

        def run(comm) -> np.ndarray:
            x = np.random.default_rng(comm.rank).standard_normal(size).astype(np.float32)
            comm.all_reduce(x)
            return x

        results = on_all(comms, run)
        inputs = [np.random.default_rng(r).standard_normal(size).astype(np.float32) for r in range(4)]
        np.testing.assert_allclose(results[0], np.sum(inputs, axis=0), rtol=1e-5, atol=1e-5)
        assert all(r.tobytes() == results[0].tobytes() for r in results)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_broadcast_all_gather_and_reduce_scatter(world: int) -> None:
    with local_group(world, segment_bytes=256) as (_, comms):

        def run(comm):
            r = comm.rank
            b = np.full(777, -1, np.int32) if r != world - 1 else np.arange(777, dtype=np.int32)
            comm.broadcast(b, root=world - 1)
            gathered = comm.all_gather(np.full((3, 2), r, np.float64) + np.arange(6).reshape(3, 2))
            scattered = comm.reduce_scatter(np.arange(1001, dtype=np.int64) * (r + 1))
            return r, b, gathered, scattered

        results = on_all(comms, run)
        total = np.arange(1001, dtype=np.int64) * sum(range(1, world + 1))
        chunks = np.array_split(total, world)
        for rank, b, gathered, scattered in results:
            assert np.array_equal(b, np.arange(777))
            assert gathered.shape == (world, 3, 2)
            for source in range(world):
                assert np.array_equal(gathered[source], source + np.arange(6).reshape(3, 2))
            assert np.array_equal(scattered, chunks[rank])


@pytest.mark.parametrize("world", [2, 3])
def test_operations_striped_over_a_pool_of_connections(world: int) -> None:
    # Four connections to the next peer, small segments: every operation's frames spread over the
    # pool and arrive in any order across it; results are exact and identical on every peer.
    with local_group(world, connections=4, segment_bytes=4096, shared_memory=False) as (_, comms):

        def run(comm):
            r = comm.rank
            x = np.random.default_rng(r).standard_normal(300_001).astype(np.float32)
            comm.all_reduce(x)
            exact = peer_input("int64", "sum", r, 100_003)
            comm.all_reduce(exact, dtype="int64")
            b = np.arange(50_000, dtype=np.float64) if r == 0 else np.zeros(50_000)
            comm.broadcast(b, root=0)
            gathered = comm.all_gather(np.full(20_000, r, np.int32))
            scattered = comm.reduce_scatter(np.arange(90_001, dtype=np.int64) * (r + 1))
            return (
                r,
                x,
                exact,
                b,
                gathered,
                scattered,
                comm._engine.connections,
                comm._engine.bytes_sent_per_connection,
            )

        results = on_all(comms, run)
        expected = reference([peer_input("int64", "sum", r, 100_003) for r in range(world)], "int64", "sum")
        chunks = np.array_split(np.arange(90_001, dtype=np.int64) * sum(range(1, world + 1)), world)
        for rank, x, exact, b, gathered, scattered, connections, sent in results:
            assert x.tobytes() == results[0][1].tobytes()
            assert exact.tobytes() == expected.tobytes()
            assert np.array_equal(b, np.arange(50_000))
            assert np.array_equal(
                gathered, np.repeat(np.arange(world, dtype=np.int32), 20_000).reshape(world, -1)
            )
            assert np.array_equal(scattered, chunks[rank])
            assert connections == 4
            # Every connection of the pool carried frames; how many each took depends on when each
            # had room (on loopback, mostly on how the threads were scheduled).
            assert min(sent) > 0, sent


def test_the_pool_is_sized_from_the_round_trip_and_the_socket_buffers() -> None:
    from pycomm.ft import Communicator
    from pycomm.ft.communicator import AUTO_CONNECTIONS_MAX, _window_per_connection

    comm = Communicator("127.0.0.1:1", link_bandwidth=1e9 / 8)
    window = _window_per_connection()
    assert comm._pool_size(50e-6) == 1  # loopback
    assert comm._pool_size(0.05) == min(AUTO_CONNECTIONS_MAX, -(-int(1e9 / 8 * 0.05) // window))
    assert comm._pool_size(10.0) == AUTO_CONNECTIONS_MAX


def _half_step(values: np.ndarray, quantization: str) -> float:
    """The largest rounding error of one quantized value of ``values`` (over its whole range, which
    bounds every block's)."""
    values = np.asarray(values, np.float64)
    absmax = float(np.abs(values).max())
    return {
        "int8": absmax / 254,
        "uint8": float(values.max() - values.min()) / 510,
        "fp16": absmax * 2.0**-11,
        "bf16": absmax * 2.0**-8,
    }[quantization]


_OUTPUT_ROUNDING = {"float32": 2.0**-24, "float64": 2.0**-53, "bfloat16": 2.0**-8, "float16": 2.0**-11}


@pytest.mark.parametrize("quantization", ["int8", "uint8", "fp16", "bf16"])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_quantized_all_reduce_is_identical_everywhere_and_within_its_bound(
    world: int, quantization: str
) -> None:
    # Every value is quantized once (each input, and each chunk's sum by its owner), so the error is
    # at most half a step of every input plus half a step of the sum, however many hops there are.
    size = 20_011
    cases = [
        ("float32", "sum"),
        ("float32", "avg"),
        ("float64", "sum"),
        ("bfloat16", "sum"),
        ("float16", "avg"),
    ]
    with local_group(world, segment_bytes=8192, shared_memory=False) as (_, comms):

        def values(rank: int, dtype: str) -> np.ndarray:
            x = np.random.default_rng(rank).standard_normal(size) * (1 + rank)
            return to_bfloat16_bits(x) if dtype == "bfloat16" else x.astype(dtype)

        def run(comm) -> list:
            results = []
            for tag, (dtype, op) in enumerate(cases):
                x = values(comm.rank, dtype)
                comm.all_reduce(x, op=op, quantization=quantization, tag=tag, dtype=dtype)
                results.append(x)
            return results

        per_peer = on_all(comms, run)
    for index, (dtype, op) in enumerate(cases):
        got = per_peer[0][index]
        assert all(peer[index].tobytes() == got.tobytes() for peer in per_peer), (dtype, op)
        inputs = [values(rank, dtype) for rank in range(world)]
        if dtype == "bfloat16":
            inputs, got = [to_float(x, dtype) for x in inputs], to_float(got, dtype)
        exact = np.sum(np.array(inputs, np.float64), axis=0)
        bound = sum(_half_step(x, quantization) for x in inputs) + _half_step(exact, quantization)
        bound += world * 2.0**-24 * np.abs(inputs).sum(axis=0).max()  # float32 sums
        bound += np.abs(exact).max() * _OUTPUT_ROUNDING[dtype]
        divisor = world if op == "avg" else 1
        error = np.abs(np.asarray(got, np.float64) - exact / divisor).max()
        assert error <= bound / divisor * (1 + 1e-6), (dtype, op, error, bound / divisor)
        assert error > 0  # the values did go through the quantizer


def test_int8_on_the_wire_sends_about_a_quarter_of_the_bytes() -> None:
    size = 1 << 20
    sent = {}
    for quantization in (None, "int8"):
        with local_group(2, shared_memory=False) as (_, comms):

            def run(comm, quantization=quantization) -> int:
                x = np.random.default_rng(comm.rank).standard_normal(size).astype(np.float32)
                before = comm.bytes_sent
                comm.all_reduce(x, quantization=quantization)
                return comm.bytes_sent - before

            sent[quantization] = max(on_all(comms, run))
    # float32: half the values each way twice (reduce-scatter, all-gather), 4 bytes each, + headers.
    assert 4 * size <= sent[None] < 1.01 * 4 * size, sent
    # int8 records: 1 byte and a float32 scale per 256 values (+ headers).
    assert sent["int8"] < 0.27 * sent[None], sent


@pytest.mark.parametrize("shared_memory", [False, True])
def test_op_info_says_when_the_result_was_held_and_committed(shared_memory: bool) -> None:
    with local_group(3, shared_memory=shared_memory) as (_, comms):

        def run(comm):
            x = np.full(300_000, comm.rank, np.float32)
            infos = [comm.all_reduce(x), comm.all_reduce(x, quantization=None if shared_memory else "int8")]
            return infos, x

        for infos, x in on_all(comms, run):
            assert np.all(x == 9)
            for info in infos:
                # The order of three events (no duration is asserted): this peer held the result,
                # then knew every peer held it, then copied it out and returned.
                assert 0 < info.held_seconds <= info.committed_seconds <= info.seconds, info


def test_concurrent_tagged_operations_in_different_orders_on_each_peer() -> None:
    with local_group(3, segment_bytes=4096) as (_, comms):

        def run(comm):
            arrays = {tag: np.full(50_000, tag + comm.rank, np.float64) for tag in range(8)}
            order = list(range(8))
            if comm.rank % 2:
                order.reverse()
            works = {tag: comm.all_reduce_async(arrays[tag], tag=tag) for tag in order}
            for tag in reversed(order):
                works[tag].wait()
            return arrays

        for arrays in on_all(comms, run):
            for tag, array in arrays.items():
                assert np.all(array == 3 * tag + 3)


def test_torch_cpu_tensors_in_place_and_as_results() -> None:
    torch = pytest.importorskip("torch")
    with local_group(2) as (_, comms):

        def run(comm):
            x = torch.arange(10, dtype=torch.bfloat16) * (comm.rank + 1)
            comm.all_reduce(x)
            y = torch.ones(4, dtype=torch.float32) * comm.rank
            gathered = comm.all_gather(y)
            return x, gathered

        for x, gathered in on_all(comms, run):
            assert x.dtype == torch.bfloat16
            assert torch.equal(x, torch.arange(10, dtype=torch.bfloat16) * 3)
            assert isinstance(gathered, torch.Tensor) and gathered.shape == (2, 4)
            assert torch.equal(gathered[1], torch.ones(4))


def test_wrong_use_gets_clear_errors() -> None:
    with local_group(1) as (_, (comm,)):
        x = np.zeros(8, np.float32)
        with pytest.raises(InvalidArgumentError, match="one of int8, uint8, fp16, bf16"):
            comm.all_reduce(x, quantization="int4")
        with pytest.raises(InvalidArgumentError, match="sum or avg of a float dtype"):
            comm.all_reduce(x, op="max", quantization="int8")
        with pytest.raises(InvalidArgumentError, match="sum or avg of a float dtype"):
            comm.all_reduce(np.zeros(8, np.int32), quantization="int8")
        with pytest.raises(InvalidArgumentError, match="reduce op"):
            comm.all_reduce(x, op="mean")
        with pytest.raises(InvalidArgumentError, match="tag"):
            comm.all_reduce(x, tag=-1)
        with pytest.raises(InvalidArgumentError, match="tag"):
            comm.all_reduce(x, tag=1 << 63)
        with pytest.raises(InvalidArgumentError, match="contiguous"):
            comm.all_reduce(np.zeros((4, 4), np.float32)[:, 1])
        read_only = np.zeros(4, np.float32)
        read_only.flags.writeable = False
        with pytest.raises(InvalidArgumentError, match="read-only"):
            comm.all_reduce(read_only)
        with pytest.raises(InvalidArgumentError, match="dtype"):
            comm.all_reduce(np.zeros(4, np.complex64))
        with pytest.raises(InvalidArgumentError, match="root"):
            comm.broadcast(x, root=3)
        with pytest.raises(InvalidArgumentError, match="probe_bytes"):
            comm.optimize_topology(probe_bytes=0)
        with pytest.raises(InvalidArgumentError, match="1 x 1 matrix"):
            comm.optimize_topology(bandwidths=np.ones((2, 2)))
    from pycomm.ft import Communicator

    for connections in (0, 65, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="connections"):
            Communicator("127.0.0.1:1", connections=connections)
    with pytest.raises(InvalidArgumentError, match="link_bandwidth"):
        Communicator("127.0.0.1:1", link_bandwidth=0)
    with pytest.raises(ValueError, match="host:port"):
        Communicator("localhost")
    with pytest.raises(InvalidArgumentError, match="segment_bytes"):
        Communicator("127.0.0.1:1", segment_bytes=8)
    with pytest.raises(InvalidArgumentError, match="spin_microseconds"):
        Communicator("127.0.0.1:1", spin_microseconds=-1)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        Communicator("127.0.0.1:1", timeout=0)


def test_a_tag_in_flight_twice_is_refused() -> None:
    with local_group(2) as (_, comms):

        def run(comm):
            x = np.ones(1 << 20, np.float32)
            work = comm.all_reduce_async(x, tag=5)
            with pytest.raises(InvalidArgumentError, match="already in flight"):
                comm.all_reduce_async(np.ones(4, np.float32), tag=5)
            work.wait()
            return x

        for x in on_all(comms, run):
            assert np.all(x == 2)


def test_peers_that_disagree_about_an_operation_abort_it_with_a_reason() -> None:
    with local_group(2) as (master, comms):

        def run(comm):
            x = np.ones(100 + comm.rank, np.float32)  # different sizes: a bug in the caller
            original = x.copy()
            with pytest.raises(Aborted) as raised:
                comm.all_reduce(x)
            assert np.array_equal(x, original)
            y = np.ones(10, np.float32)
            comm.all_reduce(y)  # the group goes on in the next epoch
            return str(raised.value), y

        results = on_all(comms, run)
        assert all(np.all(y == 2) for _, y in results)
        # The peer that saw the other's frame names the disagreement (the other may see only a
        # closed connection first).
        texts = [message for message, _ in results] + [text for _, text in master.events]
        assert any("disagree" in text for text in texts), texts


def test_content_hash_of_results_agrees_across_peers_for_large_buffers() -> None:
    with local_group(3) as (_, comms):

        def run(comm):
            x = np.random.default_rng(comm.rank).integers(0, 100, 3_000_000).astype(np.float32)
            comm.all_reduce(x, op="max")
            return kernels.hash64(x)

        hashes = on_all(comms, run)
        assert len(set(hashes)) == 1


def test_the_readme_example_runs() -> None:
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    code = re.search(r"## Fault-tolerant collectives.*?```python\n(.*?)```", readme.read_text(), re.S).group(
        1
    )
    namespace: dict = {}
    exec(code.replace("while True:", "for _ in range(4):"), namespace)
    try:
        assert namespace["state"].revision == 4
        assert np.all(namespace["state"].arrays["w"] == -0.4)
    finally:
        namespace["comm"].close()
        namespace["master"].close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shared_memory_segments_are_removed_and_large_operations_span_rounds() -> None:
    def segments() -> set:
        return {name for name in os.listdir("/dev/shm") if name.startswith("pycomm-")}

    before = segments()
    with local_group(3) as (_, comms):
        ids = {c.peer_id for c in comms}

        def ours(names: set) -> set:
            return {name for name in names if name.split("-")[2] in ids}

        def run(comm):
            x = np.arange(3_000_001, dtype=np.float64) * (comm.rank + 1)  # 24 MB: many rounds
            comm.all_reduce(x)
            return x

        for x in on_all(comms, run):
            assert np.array_equal(x, np.arange(3_000_001, dtype=np.float64) * 6)
        assert len(ours(segments() - before)) == 3
    # Only this group's: other processes on the machine may hold segments of their own meanwhile.
    assert ours(segments() - before) == set()


@pytest.mark.parametrize("dtype", ["int8", "bfloat16", "float64"])
def test_shared_memory_rounds_split_anywhere_give_numpys_result(dtype: str) -> None:
    # A round holds 256 KiB; the last round here is 1 element or 1 more than the peers, so some
    # peers have no element of it to reduce, and the rounds alternate between the slot's halves.
    per_round = (256 << 10) // np.dtype(np.uint16 if dtype == "bfloat16" else dtype).itemsize
    with local_group(3) as (_, comms):
        for size in (per_round * 2 + 1, per_round * 3 + 4, per_round - 1):

            def run(comm, size=size):
                results = {}
                for tag, op in enumerate(("sum", "max", "avg")):
                    x = peer_input(dtype, op, comm.rank, size)
                    comm.all_reduce(x, op=op, tag=tag, dtype=dtype)
                    results[op] = x
                return results

            per_peer = on_all(comms, run)
            for op in ("sum", "max", "avg"):
                expected = reference([peer_input(dtype, op, rank, size) for rank in range(3)], dtype, op)
                for rank in range(3):
                    assert per_peer[rank][op].tobytes() == expected.tobytes(), (size, op, rank)


def test_more_shared_memory_operations_in_flight_than_slots_is_a_clear_error() -> None:
    import threading

    first_checked = threading.Event()
    with local_group(2) as (_, comms):

        def run(comm):
            if comm.rank == 1:
                first_checked.wait(10)  # rank 0's operations cannot finish before this
            arrays = [np.ones(100) for _ in range(9)]
            works = [comm.all_reduce_async(arrays[tag], tag=tag) for tag in range(8)]
            if comm.rank == 0:
                with pytest.raises(NotSupportedError, match="at most 8 shared-memory all-reduces"):
                    comm.all_reduce_async(arrays[8], tag=8)
                first_checked.set()
            for work in works:
                work.wait()
            comm.all_reduce(arrays[8], tag=8)  # fine once the others are done
            return arrays

        for arrays in on_all(comms, run):
            assert all(np.all(a == 2) for a in arrays)
