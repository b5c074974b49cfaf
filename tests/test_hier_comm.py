"""pycomm.hier.HierComm on fake topologies (2 x 2 x 2 on 8 ranks, 3 x 1 x 2 on 6, one rank): its
sub-communicators hold the topology's groups; all_gather, reduce_scatter and all_reduce give the bytes
of MPI's flat collectives (integer-valued data, shard layout and padding included); the quantized
all-gather (qwZ) and the two-hop quantized reduce-scatter (qgZ) stay inside their analytic bounds
against a float64 reference; the byte counters equal the per-level formulas.

Each job runs many cases in one mpiexec launch (8 ranks on 2 cores start slowly); the ranks return
what they saw and the assertions run here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pycomm.errors import InvalidArgumentError
from pycomm.testing import run_mpi

TWO_BY_TWO_BY_TWO = [("gcd", 2), ("gpu", 2), ("node", 2)]
THREE_BY_ONE_BY_TWO = [("gcd", 3), ("gpu", 1), ("node", 2)]
SINGLE = [("node", 1)]

DTYPES = ("float32", "float64", "int32", "float16", "bfloat16")


# -- run on every rank -----------------------------------------------------------------------------


def _integers(count: int, rank: int, salt: int, dtype: str) -> np.ndarray:
    """Small integers (sums of a few hundred stay exact in every dtype, bfloat16 included)."""
    values = np.random.default_rng(1000 * salt + rank).integers(-8, 9, count).astype(np.float32)
    if dtype == "bfloat16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(dtype)


def _as_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(dtype)


def _flat_reduce_scatter(comm, x: np.ndarray, dtype: str, chunk: int):
    """MPI_Reduce_scatter_block of ``x`` padded with zeros to size * chunk elements. MPI has no 16-bit
    floats: those go through float32, exact for these integers."""
    wire = dtype if dtype in ("float32", "float64", "int32") else "float32"
    padded = np.zeros(comm.size * chunk, wire)
    padded[: x.size] = x if wire == dtype else _as_float32(x, dtype)
    mine = np.empty(chunk, wire)
    comm.Reduce_scatter_block(padded, mine)
    return mine if wire == dtype else _from_float32(mine, dtype)


def _flat_all_reduce(comm, x: np.ndarray, dtype: str):
    wire = dtype if dtype in ("float32", "float64", "int32") else "float32"
    mine = x if wire == dtype else _as_float32(x, dtype)
    total = np.empty(x.size, wire)
    comm.Allreduce(mine, total)
    return total if wire == dtype else _from_float32(total, dtype)


def flat_equality(levels: list, reference_groups: bool) -> dict:
    """Hierarchical vs flat collectives on integer-valued data; returns the failing cases."""
    from mpi4py import MPI

    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    world = MPI.COMM_WORLD
    topology = Topology.from_levels(levels)
    failed, checked = [], 0

    def check(case, got, expected):
        nonlocal checked
        checked += 1
        if got.dtype != expected.dtype or got.tobytes() != expected.tobytes():
            failed.append((case, got.tolist(), expected.tolist()))

    with HierComm(world, topology) as hc:
        # (levels argument, the flat communicator it must match)
        groups = [(None, world)]
        if reference_groups:
            position = topology.position(world.rank)
            node = topology.level_index("node")
            groups.append((["gcd", "gpu"], world.Split(position[node], world.rank)))
            groups.append((["node"], world.Split(world.rank % topology.span_size("gpu"), world.rank)))
        for selected, flat in groups:
            size = flat.size
            for count in (0, 1, 2 * size, 2 * size + 5):
                chunk = -(-count // size)
                for salt, dtype in enumerate(DTYPES):
                    options = {"levels": selected, "dtype": "bfloat16" if dtype == "bfloat16" else None}
                    case = (str(selected), count, dtype)
                    shard = _integers(count, world.rank, salt, dtype)
                    gathered = np.empty(size * count, shard.dtype)
                    flat.Allgather(shard.view(np.uint8), gathered.view(np.uint8))
                    check(("all_gather", *case), hc.all_gather(shard, **options), gathered)

                    check(
                        ("reduce_scatter", *case),
                        hc.reduce_scatter(shard, **options),
                        _flat_reduce_scatter(flat, shard, dtype, chunk),
                    )
                    check(
                        ("all_reduce", *case),
                        hc.all_reduce(shard, **options),
                        _flat_all_reduce(flat, shard, dtype),
                    )

                # avg: the sum divided by the group size and rounded once; integers truncate.
                shard = _integers(count, world.rank, 7, "float32")
                summed = _flat_reduce_scatter(flat, shard, "float32", chunk)
                check(
                    ("avg float32", str(selected), count),
                    hc.reduce_scatter(shard, op="avg", levels=selected),
                    summed / np.float32(size),
                )
                shard = _integers(count, world.rank, 8, "int32")
                summed = _flat_reduce_scatter(flat, shard, "int32", chunk).astype(np.int64)
                truncated = (np.sign(summed) * (np.abs(summed) // size)).astype(np.int32)
                check(
                    ("avg int32", str(selected), count),
                    hc.reduce_scatter(shard, op="avg", levels=selected),
                    truncated,
                )

                padded = np.zeros(size * chunk, np.float64)
                padded[:count] = _integers(count, world.rank, 9, "float64")
                expected = np.empty(chunk, np.float64)
                flat.Reduce_scatter_block(padded, expected, op=MPI.MAX)
                check(
                    ("max float64", str(selected), count),
                    hc.reduce_scatter(padded[:count], op="max", levels=selected),
                    expected,
                )
            if flat is not world:
                flat.Free()

        # An output of another shape, filled in place.
        shard = _integers(6, world.rank, 10, "float32").reshape(2, 3)
        out = np.empty((world.size, 2, 3), np.float32)
        gathered = np.empty(world.size * 6, np.float32)
        world.Allgather(shard, gathered)
        hc.all_gather(shard, out=out)
        check(("all_gather into out",), out.reshape(-1), gathered)
    return {"failed": failed, "checked": checked}


def members(levels: list) -> dict:
    """The ranks of every level's and every span's sub-communicator, as MPI sees them."""
    from mpi4py import MPI

    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    topology = Topology.from_levels(levels)
    with HierComm(MPI.COMM_WORLD, topology) as hc:
        return {
            "group": {name: hc.level_comm(name).allgather(MPI.COMM_WORLD.rank) for name, _ in levels},
            "span": {name: hc.span_comm(name).allgather(MPI.COMM_WORLD.rank) for name, _ in levels},
        }


def _block_absmax(values: np.ndarray, block: int) -> np.ndarray:
    """Each element's block absmax, blocks of ``block`` from index 0."""
    padded = np.zeros(-(-values.size // block) * block)
    padded[: values.size] = np.abs(values)
    return np.repeat(padded.reshape(-1, block).max(axis=1), block)[: values.size]


def quantized_errors(levels: list, count: int, shard_count: int, block_size: int) -> dict:
    """Error / bound of the quantized collectives against float64 references, and their byte counts."""
    from mpi4py import MPI

    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    world = MPI.COMM_WORLD
    rank, size = world.rank, world.size
    topology = Topology.from_levels(levels)
    columns = size // topology.levels[-1].fanout
    results = {}

    def data(source, length):
        return np.random.default_rng(500 + source).standard_normal(length).astype(np.float32)

    with HierComm(world, topology, block_size=block_size) as hc:
        # qwZ: each element within absmax(its block of its shard) / (2 * 127).
        got = hc.all_gather(data(rank, shard_count), quantization="int8")
        errors, bounds = [], []
        for source in range(size):
            shard = data(source, shard_count).astype(np.float64)
            piece = got[source * shard_count : (source + 1) * shard_count]
            errors.append(np.abs(piece - shard))
            bounds.append(_block_absmax(shard, block_size) / 254 + 2.0**-22 * np.abs(shard))
        results["int8 all_gather"] = _ratio(np.concatenate(errors), np.concatenate(bounds))

        for scheme, qmax in (("int4", 7), ("int8", 127)):
            for op in ("sum", "avg"):
                hc.reset_stats()
                got = hc.reduce_scatter(data(rank, count), op=op, quantization=scheme)
                chunk = hc.shard_size(count)
                block = min(block_size, chunk + chunk % 2)
                mine = slice(rank * chunk, (rank + 1) * chunk)
                exact = np.zeros(chunk)
                bound = np.zeros(chunk)
                for j in range(size // columns):
                    absmax_sum = np.zeros(chunk)
                    for i in range(columns):
                        padded = np.zeros(size * chunk)
                        padded[:count] = data(i + columns * j, count)
                        exact += padded[mine]
                        absmax = _block_absmax(padded[mine], block)
                        bound += absmax / (2 * qmax) + 2.0**-22 * size * absmax
                        absmax_sum += absmax
                    # The node's partial sum is quantized once more when it crosses nodes.
                    if size // columns > 1:
                        bound += absmax_sum * (1 + 1 / (2 * qmax)) / (2 * qmax)
                divisor = size if op == "avg" else 1
                results[f"{scheme} {op} reduce_scatter"] = _ratio(
                    np.abs(got - exact / divisor), bound / divisor
                )
                results[f"{scheme} {op} stats"] = hc.stats
        results["chunk"] = hc.shard_size(count)
    return results


def _ratio(errors: np.ndarray, bounds: np.ndarray) -> tuple[float, float]:
    """(largest error / bound, largest error): the first must stay below 1, the second above 0."""
    if errors.size == 0:
        return 0.0, 0.0
    return float(np.max(errors / bounds)), float(np.max(errors))


def byte_counts(levels: list, shard_count: int, count: int) -> dict:
    """The counters after one all-gather and one reduce-scatter of float32 data."""
    from mpi4py import MPI

    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    with HierComm(MPI.COMM_WORLD, Topology.from_levels(levels)) as hc:
        hc.all_gather(np.ones(shard_count, np.float32))
        gathered = hc.stats
        hc.reset_stats()
        hc.reduce_scatter(np.ones(count, np.float32))
        return {"all_gather": gathered, "reduce_scatter": hc.stats}


def subset_levels() -> dict:
    """Collectives over levels a, c and d of a 2 x 1 x 2 x 2 topology: the quantized reduce-scatter's
    first hop then runs over levels a and c, which are neither one level's group nor one span."""
    from mpi4py import MPI

    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    world = MPI.COMM_WORLD
    topology = Topology.from_levels([("a", 2), ("b", 1), ("c", 2), ("d", 2)])
    with HierComm(world, topology) as hc:
        x = _integers(200, world.rank, 3, "float32")
        expected = _flat_reduce_scatter(world, x, "float32", 25)
        plain = hc.reduce_scatter(x, levels=["a", "c", "d"])
        quantized = hc.reduce_scatter(x * 7, levels=["a", "c", "d"], quantization="int8")
        return {
            "plain": plain.tobytes() == expected.tobytes(),
            "quantized error": float(np.max(np.abs(quantized / 7 - expected))),
            "stats": hc.stats,
        }


# -- the tests -------------------------------------------------------------------------------------


def _gather_bytes_per_level(levels: list, shard_bytes: int) -> dict[str, int]:
    """Outermost level first: a level of fanout f sends (f - 1) times what this rank holds then."""
    sent, held = {}, shard_bytes
    for name, fanout in reversed(levels):
        sent[name] = (fanout - 1) * held
        held *= fanout
    return sent


def _reduce_scatter_bytes_per_level(levels: list, total_bytes: int) -> dict[str, int]:
    """Innermost level first: a level of fanout f sends (f - 1) / f of what this rank holds then."""
    sent, held = {}, total_bytes
    for name, fanout in levels:
        held //= fanout
        sent[name] = (fanout - 1) * held
    return sent


@pytest.mark.mpi
@pytest.mark.slow
def test_sub_communicators_hold_the_topology_groups():
    from pycomm.hier.topology import Topology

    topology = Topology.from_levels(TWO_BY_TWO_BY_TWO)
    result = run_mpi(members, 8, args=(TWO_BY_TWO_BY_TWO,), timeout=120)
    for rank, seen in enumerate(result.values):
        for name, _ in TWO_BY_TWO_BY_TWO:
            assert seen["group"][name] == topology.group(rank, name), (rank, name)
            assert seen["span"][name] == topology.span(rank, name), (rank, name)
    # Spot values: rank 5 is (gcd 1, gpu 0, node 1).
    assert result.values[5]["group"] == {"gcd": [4, 5], "gpu": [5, 7], "node": [1, 5]}
    assert result.values[5]["span"] == {"gcd": [4, 5], "gpu": [4, 5, 6, 7], "node": list(range(8))}


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize(
    ("levels", "ranks", "reference_groups"),
    [(TWO_BY_TWO_BY_TWO, 8, True), (THREE_BY_ONE_BY_TWO, 6, False), (SINGLE, 1, False)],
    ids=["2x2x2", "3x1x2", "1"],
)
def test_collectives_equal_mpi_flat_collectives(levels, ranks, reference_groups):
    result = run_mpi(flat_equality, ranks, args=(levels, reference_groups), timeout=180)
    for rank, value in enumerate(result.values):
        assert value["failed"] == [], rank
        assert value["checked"] > 50


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize(
    ("levels", "ranks"), [(TWO_BY_TWO_BY_TWO, 8), (THREE_BY_ONE_BY_TWO, 6)], ids=["2x2x2", "3x1x2"]
)
def test_quantized_collectives_stay_within_their_bounds(levels, ranks):
    # 1000 elements: chunks of 125 (8 ranks) or 167 (6 ranks, padded), blocks of 64 then a partial one.
    result = run_mpi(quantized_errors, ranks, args=(levels, 1000, 150, 64), timeout=120)
    for rank, value in enumerate(result.values):
        for name, outcome in value.items():
            if isinstance(outcome, tuple):
                ratio, error = outcome
                assert ratio <= 1.0, (rank, name, ratio)
                assert error > 0, (rank, name)  # the data really went through the quantizer

    # Bytes of the two hops: hop 1 sends every inner peer one row of `nodes` chunks, hop 2 sends
    # every other node one chunk; each chunk is quantized data plus a float32 scale per block.
    value = result.values[0]
    chunk = value["chunk"]
    block = min(64, chunk + chunk % 2)
    padded_chunk = -(-chunk // block) * block
    nodes = dict(levels)["node"]
    for scheme, data_bytes in (("int4", padded_chunk // 2), ("int8", padded_chunk)):
        chunk_bytes = data_bytes + 4 * padded_chunk // block
        stats = value[f"{scheme} sum stats"]
        assert stats["node"] == {"sent_bytes": (nodes - 1) * chunk_bytes, "calls": 1}
        if levels == TWO_BY_TWO_BY_TWO:
            # Of rank 0's three node-local peers, one is across the gcd link, two across the gpu link.
            assert stats["gcd"] == {"sent_bytes": nodes * chunk_bytes, "calls": 1}
            assert stats["gpu"] == {"sent_bytes": 2 * nodes * chunk_bytes, "calls": 1}
        else:
            assert stats["gcd"] == {"sent_bytes": 2 * nodes * chunk_bytes, "calls": 1}
            assert stats["gpu"] == {"sent_bytes": 0, "calls": 0}


@pytest.mark.mpi
@pytest.mark.slow
def test_byte_counters_follow_the_per_level_formulas():
    shard, count = 10, 8 * 5 + 3  # reduce-scatter input padded to 8 * 6
    result = run_mpi(byte_counts, 8, args=(TWO_BY_TWO_BY_TWO, shard, count), timeout=120)
    gather = _gather_bytes_per_level(TWO_BY_TWO_BY_TWO, 4 * shard)
    scatter = _reduce_scatter_bytes_per_level(TWO_BY_TWO_BY_TWO, 4 * 8 * 6)
    # The slow outer link carries one shard per peer; the inner ones carry the gathered blocks.
    assert gather == {"node": 40, "gpu": 80, "gcd": 160}
    assert scatter == {"gcd": 96, "gpu": 48, "node": 24}
    for value in result.values:
        assert value["all_gather"] == {name: {"sent_bytes": gather[name], "calls": 1} for name in gather}
        assert value["reduce_scatter"] == {
            name: {"sent_bytes": scatter[name], "calls": 1} for name in scatter
        }


@pytest.mark.mpi
@pytest.mark.slow
def test_a_subset_of_levels_reduces_over_its_own_group():
    result = run_mpi(subset_levels, 8, timeout=120)
    for value in result.values:
        assert value["plain"]
        # int8, |inputs| <= 56 on 8 ranks: at most 8 * 56 / 254 per hop (the second a little more),
        # then divided by the 7 the inputs were scaled by.
        assert 0 < value["quantized error"] <= 2 * 8 * 56 / 254 / 7 * 1.01
        assert value["stats"]["b"] == {"sent_bytes": 0, "calls": 0}


# -- argument checks (no MPI: a one-rank stand-in communicator) ------------------------------------


class _OneRank:
    """Enough of an mpi4py communicator for a one-rank HierComm, whose collectives send nothing."""

    def Get_size(self) -> int:
        return 1

    def Get_rank(self) -> int:
        return 0

    def Split(self, color: int, key: int) -> _OneRank:
        return _OneRank()

    def Free(self) -> None:
        pass


def _one_rank():
    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    return HierComm(_OneRank(), Topology.from_levels([("gpu", 1), ("node", 1)]))


def test_bad_arguments_are_refused_with_a_reason():
    from pycomm.hier.comm import HierComm
    from pycomm.hier.topology import Topology

    with pytest.raises(InvalidArgumentError, match="describes 8"):
        HierComm(_OneRank(), Topology.from_levels(TWO_BY_TWO_BY_TWO))
    with pytest.raises(InvalidArgumentError, match="even"):
        HierComm(_OneRank(), Topology.from_levels(SINGLE), block_size=63)
    hc = _one_rank()
    x = np.arange(4, dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="no level named 'rack'"):
        hc.all_gather(x, levels=["rack"])
    with pytest.raises(InvalidArgumentError, match="twice"):
        hc.all_gather(x, levels=["gpu", 0])
    with pytest.raises(InvalidArgumentError, match="float data"):
        hc.all_gather(np.arange(4, dtype=np.int32), quantization="int8")
    with pytest.raises(InvalidArgumentError, match="supported: int8, int4"):
        hc.reduce_scatter(x, quantization="fp8")
    with pytest.raises(InvalidArgumentError, match="sum or avg"):
        hc.reduce_scatter(x, op="max", quantization="int4")
    with pytest.raises(InvalidArgumentError, match="unsupported reduce op"):
        hc.reduce_scatter(x, op="mean")
    with pytest.raises(InvalidArgumentError, match="out has 3 elements"):
        hc.all_gather(x, out=np.empty(3, np.float32))
    hc.free()
    with pytest.raises(Exception, match="freed"):
        hc.all_gather(x)


def test_one_rank_collectives_copy_and_count_nothing():
    with _one_rank() as hc:
        x = np.arange(-3, 4, dtype=np.float32)
        assert hc.all_gather(x).tolist() == x.tolist()
        assert hc.reduce_scatter(x, op="avg").tolist() == x.tolist()
        assert hc.all_reduce(x).tolist() == x.tolist()
        assert hc.reduce_scatter(x, quantization="int4").tolist() == x.tolist()  # nothing is sent
        assert hc.all_gather(np.empty(0, np.float32), quantization="int8").size == 0
        assert hc.shard_size(7) == 7
        assert hc.stats == {name: {"sent_bytes": 0, "calls": 0} for name in ("gpu", "node")}
        assert math.prod(level.fanout for level in hc.topology.levels) == 1
