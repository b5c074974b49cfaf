"""pycomm.hier.Topology: the mixed-radix rank map, groups and spans, the presets, and detection from
an MPI communicator."""

from __future__ import annotations

import itertools

import pytest

from pycomm.errors import InvalidArgumentError
from pycomm.hier import Level, Topology
from pycomm.hier.topology import check_node_layout, launcher_ranks_per_node
from pycomm.testing import run_mpi


def fake_2x2x2() -> Topology:
    return Topology.from_levels([("gcd", 2), ("gpu", 2), ("node", 2)])


def test_positions_are_mixed_radix_innermost_fastest() -> None:
    topo = fake_2x2x2()
    assert topo.size == 8
    assert [topo.position(r) for r in range(8)] == [
        (0, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (1, 1, 0),
        (0, 0, 1),
        (1, 0, 1),
        (0, 1, 1),
        (1, 1, 1),
    ]
    assert all(topo.rank(topo.position(r)) == r for r in range(8))


def test_groups_and_spans_of_2x2x2() -> None:
    topo = fake_2x2x2()
    assert topo.group(5, "gcd") == [4, 5]
    assert topo.group(5, "gpu") == [5, 7]
    assert topo.group(5, "node") == [1, 5]
    assert topo.group(5, 2) == topo.group(5, -1) == [1, 5]
    assert topo.span(5, "gcd") == [4, 5]
    assert topo.span(5, "gpu") == [4, 5, 6, 7]
    assert topo.span(5, "node") == list(range(8))
    assert [topo.span_size(level) for level in range(3)] == [2, 4, 8]


@pytest.mark.parametrize("fanouts", [(3, 1, 2), (1, 5), (2, 3, 4), (7,)])
def test_odd_shapes_partition_the_world(fanouts: tuple[int, ...]) -> None:
    topo = Topology.from_levels([(f"l{i}", f) for i, f in enumerate(fanouts)])
    assert topo.size == len(list(itertools.product(*(range(f) for f in fanouts))))
    for level in range(len(fanouts)):
        seen_groups = {tuple(topo.group(rank, level)) for rank in range(topo.size)}
        # Groups at a level partition the world, and each member differs only in that digit.
        assert sorted(r for g in seen_groups for r in g) == list(range(topo.size))
        for members in seen_groups:
            assert [topo.position(r)[level] for r in members] == list(range(fanouts[level]))
            rest = {topo.position(r)[:level] + topo.position(r)[level + 1 :] for r in members}
            assert len(rest) == 1
        spans = {tuple(topo.span(rank, level)) for rank in range(topo.size)}
        assert all(len(s) == topo.span_size(level) for s in spans)
        assert sorted(r for s in spans for r in s) == list(range(topo.size))


def test_3x1x2_by_hand() -> None:
    topo = Topology.from_levels([("a", 3), ("b", 1), ("c", 2)])
    assert topo.position(4) == (1, 0, 1)
    assert topo.group(4, "a") == [3, 4, 5]
    assert topo.group(4, "b") == [4]
    assert topo.group(4, "c") == [1, 4]
    assert topo.span(4, "b") == [3, 4, 5]


def test_bad_input_is_refused() -> None:
    topo = fake_2x2x2()
    with pytest.raises(InvalidArgumentError, match="rank must be"):
        topo.position(8)
    with pytest.raises(InvalidArgumentError, match="outside"):
        topo.rank((2, 0, 0))
    with pytest.raises(InvalidArgumentError, match="no level named"):
        topo.group(0, "rack")
    with pytest.raises(InvalidArgumentError, match="names must differ"):
        Topology([Level("a", 2, 1e9), Level("a", 2, 1e9)])
    with pytest.raises(InvalidArgumentError, match="fanout"):
        Level("a", 0, 1e9)
    with pytest.raises(InvalidArgumentError, match="2x2"):
        Level("a", 2, 1e9, links=((0, 1e9),))
    with pytest.raises(InvalidArgumentError, match="one value a level"):
        Topology.from_levels([("a", 2), ("b", 2)], bandwidths=[1e9])


def test_from_levels_defaults_and_overrides() -> None:
    topo = Topology.from_levels(
        [("gcd", 2), ("gpu", 2), ("node", 2)],
        bandwidths={"node": 10e9},
        latencies=[1e-6, 2e-6, 3e-6],
        sharing={"node": 2},
    )
    assert [level.bandwidth for level in topo.levels] == [200e9, 50e9, 10e9]
    assert [level.latency for level in topo.levels] == [1e-6, 2e-6, 3e-6]
    assert topo.levels[2].ring_bandwidth == 5e9
    assert topo.level_index("gpu") == 1


def test_frontier_preset() -> None:
    topo = Topology.frontier(48)
    assert topo.size == 384
    assert topo.names == ("gcd", "gpu", "node")
    gcd, gpu, node = topo.levels
    assert (gcd.fanout, gcd.bandwidth) == (2, 200e9)
    assert (gpu.fanout, gpu.bandwidth) == (4, 50e9)
    assert gpu.link_bandwidth(0, 1) == 100e9 and gpu.link_bandwidth(1, 2) == 50e9
    assert gpu.ring_bandwidth == 50e9  # a ring runs at its slowest hop
    assert (node.fanout, node.bandwidth, node.sharing) == (48, 25e9, 2)
    assert node.ring_bandwidth == 12.5e9  # 4 NICs a node, 2 GCDs each
    text = topo.describe()
    assert "gcd" in text and "12.5" in text and "50-100 GB/s" in text


def test_dgx_preset() -> None:
    topo = Topology.dgx(4)
    assert topo.size == 32
    assert [(level.name, level.fanout, level.bandwidth) for level in topo.levels] == [
        ("gpu", 8, 300e9),
        ("node", 4, 25e9),
    ]


def test_node_layout_check() -> None:
    good = [("h0", 0, 0), ("h0", 0, 1), ("h1", 2, 0), ("h1", 2, 1)]
    assert check_node_layout(good) == (2, 2)
    round_robin = [("h0", 0, 0), ("h1", 1, 0), ("h0", 0, 1), ("h1", 1, 1)]
    with pytest.raises(InvalidArgumentError, match=r"not laid out node by node.*-ppn"):
        check_node_layout(round_robin)
    uneven = [("h0", 0, 0), ("h0", 0, 1), ("h1", 2, 0)]
    with pytest.raises(InvalidArgumentError, match="different numbers of ranks"):
        check_node_layout(uneven)


def test_launcher_environment() -> None:
    assert launcher_ranks_per_node({"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}) == ("OMPI_COMM_WORLD_LOCAL_SIZE", 8)
    assert launcher_ranks_per_node({"SLURM_NTASKS_PER_NODE": "4"}) == ("SLURM_NTASKS_PER_NODE", 4)
    assert launcher_ranks_per_node({"SLURM_NTASKS_PER_NODE": "4,2"}) is None
    assert launcher_ranks_per_node({}) is None


def detect_on_this_machine() -> dict:
    from mpi4py import MPI

    from pycomm.hier import Topology

    topo = Topology.detect(MPI.COMM_WORLD)
    split = Topology.detect(MPI.COMM_WORLD, node_levels=[("gcd", 2), ("gpu", 2)])
    try:
        Topology.detect(MPI.COMM_WORLD, node_levels=[("gcd", 3)])
        wrong = None
    except ValueError as error:
        wrong = str(error)
    return {
        "names": topo.names,
        "fanouts": topo.fanouts,
        "split": split.fanouts,
        "group": split.group(MPI.COMM_WORLD.Get_rank(), "gpu"),
        "wrong": wrong,
    }


@pytest.mark.mpi
def test_detect_under_mpiexec_on_one_node() -> None:
    result = run_mpi(detect_on_this_machine, 4, timeout=120)
    for rank, value in enumerate(result.values):
        assert value["names"] == ("rank_in_node",)
        assert value["fanouts"] == (4,)
        assert value["split"] == (2, 2)
        assert value["group"] == [rank % 2, rank % 2 + 2]
        assert "hold 3 ranks" in value["wrong"]
