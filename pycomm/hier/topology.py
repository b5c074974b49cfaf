"""The machine as an ordered list of levels, and the map from MPI rank to position in it.

A :class:`Topology` lists its levels innermost first (on Frontier: the two GCDs of one MI250X, the
four MI250X of a node, the nodes). A rank's position is the mixed-radix number whose digits are its
index at each level, innermost digit fastest: ``rank = d0 + f0 * (d1 + f1 * (d2 + ...))``. That is
the order in which launchers place ranks by default (node by node, and inside a node device by
device), and :meth:`Topology.detect` refuses a communicator laid out any other way.

Each level carries what the cost model of :mod:`pycomm.hier.plan` needs: a link bandwidth as the
level's ranks see it, a latency, how many ranks share one link (two GCDs behind one Slingshot NIC),
and optionally the full link matrix where links within a level differ.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from pycomm._deps import require_mpi4py
from pycomm.errors import InvalidArgumentError

GB = 1e9
US = 1e-6

LevelKey = Union[int, str]


@dataclass(frozen=True)
class Level:
    """One level of a topology.

    ``bandwidth`` is the bytes/s of one link of this level in one direction, as the level's ranks
    see it; ``sharing`` ranks share one such link (so each gets ``bandwidth / sharing`` when all
    send at once); ``latency`` is the seconds one message step at this level costs. ``links`` is an
    optional ``fanout x fanout`` matrix of bytes/s between the level's members where links differ
    (the diagonal is ignored); a ring over the level then runs at its slowest hop.
    """

    name: str
    fanout: int
    bandwidth: float
    latency: float = 0.0
    sharing: int = 1
    links: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"a level needs a non-empty name, got {self.name!r}")
        if isinstance(self.fanout, bool) or not isinstance(self.fanout, int) or self.fanout < 1:
            raise InvalidArgumentError(
                f"level {self.name!r}: fanout must be an int >= 1, got {self.fanout!r}"
            )
        if not self.bandwidth > 0 or math.isinf(self.bandwidth):
            raise InvalidArgumentError(
                f"level {self.name!r}: bandwidth must be a positive number of bytes/s, got {self.bandwidth!r}"
            )
        if not self.latency >= 0 or math.isinf(self.latency):
            raise InvalidArgumentError(f"level {self.name!r}: latency must be >= 0 s, got {self.latency!r}")
        if isinstance(self.sharing, bool) or not isinstance(self.sharing, int) or self.sharing < 1:
            raise InvalidArgumentError(
                f"level {self.name!r}: sharing must be an int >= 1, got {self.sharing!r}"
            )
        if self.links is not None:
            object.__setattr__(self, "links", self._checked_links(self.links))

    def _checked_links(self, links: Sequence[Sequence[float]]) -> tuple[tuple[float, ...], ...]:
        rows = tuple(tuple(float(value) for value in row) for row in links)
        if len(rows) != self.fanout or any(len(row) != self.fanout for row in rows):
            raise InvalidArgumentError(
                f"level {self.name!r}: links must be a {self.fanout}x{self.fanout} matrix (fanout x fanout)"
            )
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                if i != j and not value > 0:
                    raise InvalidArgumentError(
                        f"level {self.name!r}: links[{i}][{j}] must be a positive bytes/s, got {value!r}"
                    )
        return rows

    def link_bandwidth(self, a: int, b: int) -> float:
        """Bytes/s of the link between members ``a`` and ``b`` of this level."""
        if self.links is None:
            return self.bandwidth
        return self.links[a][b]

    @property
    def ring_bandwidth(self) -> float:
        """Bytes/s one rank gets in a ring over this level (members in digit order) with every member
        of every group sending at once: the slowest hop of the ring, divided among the ``sharing``
        ranks behind one link."""
        if self.fanout == 1:
            return self.bandwidth / self.sharing
        slowest = min(self.link_bandwidth(i, (i + 1) % self.fanout) for i in range(self.fanout))
        return slowest / self.sharing


class Topology:
    """Levels, innermost first, and the mixed-radix map between ranks and positions."""

    def __init__(self, levels: Sequence[Level]) -> None:
        levels = tuple(levels)
        if not levels:
            raise InvalidArgumentError("a topology needs at least one level")
        for level in levels:
            if not isinstance(level, Level):
                raise InvalidArgumentError(f"levels must be Level objects, got {type(level).__name__}")
        names = [level.name for level in levels]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"level names must differ, got {names}")
        self._levels = levels
        self._size = math.prod(level.fanout for level in levels)

    # -- the map ------------------------------------------------------------------------------------

    @property
    def levels(self) -> tuple[Level, ...]:
        return self._levels

    @property
    def size(self) -> int:
        """World size: the product of the fanouts."""
        return self._size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self._levels)

    @property
    def fanouts(self) -> tuple[int, ...]:
        return tuple(level.fanout for level in self._levels)

    def level_index(self, level: LevelKey) -> int:
        """Index of a level given by name or index (negative indices count from the outermost)."""
        count = len(self._levels)
        if isinstance(level, str):
            if level not in self.names:
                raise InvalidArgumentError(f"no level named {level!r}; levels are {list(self.names)}")
            return self.names.index(level)
        if isinstance(level, bool) or not isinstance(level, int) or not -count <= level < count:
            raise InvalidArgumentError(
                f"level must be a name in {list(self.names)} or an index in "
                f"[{-count}, {count}), got {level!r}"
            )
        return level % count

    def span_size(self, level: LevelKey) -> int:
        """Ranks in the subtree of levels ``0..level``: the size of one :meth:`span`."""
        return math.prod(self.fanouts[: self.level_index(level) + 1])

    def position(self, rank: int) -> tuple[int, ...]:
        """Digits of ``rank``, innermost level first."""
        self._check_rank(rank)
        digits = []
        for fanout in self.fanouts:
            rank, digit = divmod(rank, fanout)
            digits.append(digit)
        return tuple(digits)

    def rank(self, position: Sequence[int]) -> int:
        """The rank at a position (one digit a level, innermost first)."""
        digits = tuple(position)
        if len(digits) != len(self._levels):
            raise InvalidArgumentError(
                f"a position has one digit a level ({len(self._levels)}), got {len(digits)}: {digits}"
            )
        rank = 0
        for digit, level in zip(reversed(digits), reversed(self._levels)):
            if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit < level.fanout:
                raise InvalidArgumentError(
                    f"digit {digit!r} of level {level.name!r} is outside [0, {level.fanout})"
                )
            rank = rank * level.fanout + digit
        return rank

    def group(self, rank: int, level: LevelKey) -> list[int]:
        """The ranks that differ from ``rank`` only in the digit of ``level``, in digit order: the
        members of one collective at that level."""
        index = self.level_index(level)
        digits = list(self.position(rank))
        members = []
        for digit in range(self._levels[index].fanout):
            digits[index] = digit
            members.append(self.rank(digits))
        return members

    def span(self, rank: int, level: LevelKey) -> list[int]:
        """The ranks that share every digit above ``level`` with ``rank`` (the subtree of levels
        ``0..level`` holding it), ascending: the group of a collective "within" that level, such as
        the node-local secondary partition of hpZ."""
        size = self.span_size(level)
        self._check_rank(rank)
        first = rank - rank % size
        return list(range(first, first + size))

    def _check_rank(self, rank: int) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self._size:
            raise InvalidArgumentError(f"rank must be an int in [0, {self._size}), got {rank!r}")

    # -- presentation ---------------------------------------------------------------------------------

    def __repr__(self) -> str:
        inner = ", ".join(f"{level.name}={level.fanout}" for level in self._levels)
        return f"Topology({inner}; size={self._size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Topology) and self._levels == other._levels

    def __hash__(self) -> int:
        return hash(self._levels)

    def describe(self) -> str:
        """A table of the levels: fanout, ranks spanned, link bandwidth, sharing, per-rank ring
        bandwidth and latency."""
        rows = []
        for index, level in enumerate(self._levels):
            links = ""
            if level.links is not None:
                off_diagonal = [v for i, row in enumerate(level.links) for j, v in enumerate(row) if i != j]
                links = f"{min(off_diagonal) / GB:g}-{max(off_diagonal) / GB:g} GB/s"
            rows.append(
                [
                    index,
                    level.name,
                    level.fanout,
                    self.span_size(index),
                    f"{level.bandwidth / GB:g}",
                    level.sharing,
                    f"{level.ring_bandwidth / GB:g}",
                    f"{level.latency / US:g}",
                    links,
                ]
            )
        table = format_table(
            ["#", "level", "fanout", "span", "link GB/s", "sharing", "GB/s per rank", "latency us", "links"],
            rows,
        )
        return f"{self!r}\n{table}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self._size,
            "levels": [
                {
                    "name": level.name,
                    "fanout": level.fanout,
                    "bandwidth": level.bandwidth,
                    "latency": level.latency,
                    "sharing": level.sharing,
                    "links": [list(row) for row in level.links] if level.links is not None else None,
                }
                for level in self._levels
            ],
        }

    # -- constructors ---------------------------------------------------------------------------------

    @classmethod
    def from_levels(
        cls,
        levels: Sequence[tuple[str, int]],
        bandwidths: Sequence[float] | Mapping[str, float] | None = None,
        latencies: Sequence[float] | Mapping[str, float] | None = None,
        sharing: Sequence[int] | Mapping[str, int] | None = None,
    ) -> Topology:
        """A topology from ``(name, fanout)`` pairs, innermost first, e.g. a fake 2 nodes x 2 GPUs
        x 2 GCDs on 8 ranks of one machine: ``[("gcd", 2), ("gpu", 2), ("node", 2)]``.

        Bandwidths (bytes/s), latencies (s) and sharing factors are given per level, as a list or a
        mapping by name. Missing ones default to a machine where each level is 4x slower and has 4x
        the latency of the one inside it: 200 GB/s and 2 us innermost, then 50 GB/s and 8 us,
        12.5 GB/s and 32 us, ...; sharing defaults to 1.
        """
        pairs = [_level_pair(item) for item in levels]
        if not pairs:
            raise InvalidArgumentError("from_levels needs at least one (name, fanout) pair")
        names = [name for name, _ in pairs]
        bandwidth = _per_level(bandwidths, names, "bandwidths", lambda i: 200 * GB / 4**i)
        latency = _per_level(latencies, names, "latencies", lambda i: 2 * US * 4**i)
        shared = _per_level(sharing, names, "sharing", lambda i: 1)
        return cls(
            [
                Level(name, fanout, float(bandwidth[i]), float(latency[i]), int(shared[i]))
                for i, (name, fanout) in enumerate(pairs)
            ]
        )

    @classmethod
    def frontier(cls, nodes: int = 48) -> Topology:
        """OLCF Frontier: 2 GCDs per MI250X (4 Infinity Fabric links, 200 GB/s), 4 MI250X per node
        (one or two Infinity Fabric links of 50 GB/s between GPUs), 4 Slingshot-11 NICs of 25 GB/s
        per node, each shared by the 2 GCDs of one MI250X.

        The GPU level is 50 GB/s with a link matrix giving 100 GB/s between MI250X 0-1 and 2-3 (the
        pairs joined by two links in this model; the node diagram in the OLCF user guide has the exact
        wiring). A ring over the level runs at its slowest hop, so predictions use 50 GB/s either way.
        Latencies are per message step as a collective library sees them, software included: 2 us
        inside an MI250X, 5 us between MI250X, 10 us between nodes.
        """
        _check_nodes(nodes)
        double = 100 * GB
        single = 50 * GB
        gpu_links = tuple(
            tuple(0.0 if i == j else (double if i // 2 == j // 2 else single) for j in range(4))
            for i in range(4)
        )
        return cls(
            [
                Level("gcd", 2, 200 * GB, 2 * US),
                Level("gpu", 4, single, 5 * US, links=gpu_links),
                Level("node", nodes, 25 * GB, 10 * US, sharing=2),
            ]
        )

    @classmethod
    def dgx(cls, nodes: int = 2) -> Topology:
        """An 8-GPU NVLink node (~300 GB/s per GPU per direction through NVSwitch) with one 200 Gb/s
        InfiniBand NIC (25 GB/s) per GPU, as in a DGX A100."""
        _check_nodes(nodes)
        return cls([Level("gpu", 8, 300 * GB, 3 * US), Level("node", nodes, 25 * GB, 5 * US)])

    @classmethod
    def detect(
        cls,
        comm: Any,
        *,
        node_levels: Sequence[tuple[str, int]] | None = None,
        bandwidths: Sequence[float] | Mapping[str, float] | None = None,
        latencies: Sequence[float] | Mapping[str, float] | None = None,
        sharing: Sequence[int] | Mapping[str, int] | None = None,
    ) -> Topology:
        """The topology of an mpi4py communicator (collective: every rank of ``comm`` calls it).

        Nodes are the groups of ranks that share memory (``Split_type(COMM_TYPE_SHARED)``) and a
        hostname. The levels are ``("rank_in_node", ranks per node)`` and ``("node", nodes)``, the
        node level left out on one node. ``node_levels`` splits the ranks of a node further when the
        caller knows the devices, e.g. ``[("gcd", 2), ("gpu", 4)]`` on Frontier (their product must
        be the ranks per node). Bandwidths, latencies and sharing are as in :meth:`from_levels`.

        Raises :class:`~pycomm.errors.InvalidArgumentError` when nodes hold different numbers of
        ranks, when ranks are not numbered node by node (the mixed-radix map needs rank =
        rank_in_node + ranks_per_node * node), or when the launcher reports another number of ranks
        per node than MPI does.
        """
        require_mpi4py("Topology.detect")
        from mpi4py import MPI

        rank = comm.Get_rank()
        node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        try:
            leader = node_comm.allreduce(rank, op=MPI.MIN)
            local_rank = node_comm.Get_rank()
        finally:
            node_comm.Free()
        hostname = MPI.Get_processor_name()
        entries = comm.allgather((hostname, leader, local_rank))
        ranks_per_node, nodes = check_node_layout(entries)
        launcher = launcher_ranks_per_node(os.environ)
        if launcher is not None and launcher[1] != ranks_per_node and comm.Get_size() == _launcher_size():
            variable, value = launcher
            raise InvalidArgumentError(
                f"the launcher says {value} ranks per node ({variable}) but MPI's shared-memory split "
                f"finds {ranks_per_node}; nodes are not what MPI sees as shared memory, so give the "
                "topology explicitly with Topology.from_levels(...)"
            )
        inner: list[tuple[str, int]] = [("rank_in_node", ranks_per_node)]
        if node_levels is not None:
            inner = [_level_pair(item) for item in node_levels]
            if math.prod(fanout for _, fanout in inner) != ranks_per_node:
                raise InvalidArgumentError(
                    f"node_levels {inner} hold {math.prod(f for _, f in inner)} ranks, but each node "
                    f"has {ranks_per_node}"
                )
        pairs = inner + ([("node", nodes)] if nodes > 1 else [])
        return cls.from_levels(pairs, bandwidths=bandwidths, latencies=latencies, sharing=sharing)


def check_node_layout(entries: Sequence[tuple[str, int, int]]) -> tuple[int, int]:
    """Ranks per node and node count from every rank's ``(hostname, node leader, rank in node)``,
    listed in rank order; raises unless nodes are equal in size and numbered contiguously."""
    nodes: dict[tuple[str, int], list[int]] = {}
    for rank, (hostname, leader, _) in enumerate(entries):
        nodes.setdefault((hostname, leader), []).append(rank)
    sizes = {key: len(members) for key, members in nodes.items()}
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{host} (leader {leader}): {size}" for (host, leader), size in sizes.items())
        raise InvalidArgumentError(
            "nodes hold different numbers of ranks, which a mixed-radix topology cannot describe: "
            f"{listing}; launch the same number of ranks on every node (e.g. mpiexec -ppn N, "
            "srun --ntasks-per-node=N)"
        )
    per_node = next(iter(sizes.values()))
    for rank, (hostname, leader, local_rank) in enumerate(entries):
        expected_leader = rank - rank % per_node
        if leader != expected_leader or local_rank != rank % per_node:
            raise InvalidArgumentError(
                f"ranks are not laid out node by node: rank {rank} is rank {local_rank} on {hostname} "
                f"(with rank {leader}), but the topology needs rank = rank_in_node + {per_node} * node. "
                "Launch with block placement (MPICH: mpiexec -ppn N; Open MPI: --map-by ppr:N:node "
                "--rank-by slot; Slurm: srun --distribution=block), or renumber the ranks with "
                "comm.Split(0, key=node_index * ranks_per_node + rank_in_node)"
            )
    return per_node, len(nodes)


_LOCAL_SIZE_VARIABLES = (
    "OMPI_COMM_WORLD_LOCAL_SIZE",  # Open MPI's mpirun
    "MPI_LOCALNRANKS",  # MPICH's hydra
    "PALS_LOCAL_SIZE",  # Cray PALS (aprun/mpiexec on HPE systems)
    "PMI_LOCAL_SIZE",
    "SLURM_NTASKS_PER_NODE",
)
_WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PALS_SIZE", "SLURM_NTASKS")


def launcher_ranks_per_node(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """``(variable, ranks per node)`` as the launcher put it in the environment, or None."""
    for variable in _LOCAL_SIZE_VARIABLES:
        value = environ.get(variable, "")
        # Slurm writes e.g. "8" or "8(x4)" for a uniform layout; anything else says nothing uniform.
        head = value.split("(")[0]
        if head.isdigit() and ("," not in value):
            return variable, int(head)
    return None


def _launcher_size() -> int | None:
    for variable in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return None


def _level_pair(item: Any) -> tuple[str, int]:
    try:
        name, fanout = item
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"a level is a (name, fanout) pair, got {item!r}") from None
    if not isinstance(name, str) or isinstance(fanout, bool) or not isinstance(fanout, int):
        raise InvalidArgumentError(f"a level is a (str name, int fanout) pair, got {item!r}")
    return name, fanout


def _per_level(
    values: Sequence[Any] | Mapping[str, Any] | None, names: list[str], role: str, default: Any
) -> list[Any]:
    if values is None:
        return [default(i) for i in range(len(names))]
    if isinstance(values, Mapping):
        unknown = set(values) - set(names)
        if unknown:
            raise InvalidArgumentError(f"{role}: no level named {sorted(unknown)}; levels are {names}")
        return [values[name] if name in values else default(i) for i, name in enumerate(names)]
    values = list(values)
    if len(values) != len(names):
        raise InvalidArgumentError(f"{role}: one value a level ({len(names)}), got {len(values)}")
    return values


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; cells that are numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(_numeric(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def _check_nodes(nodes: int) -> None:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise InvalidArgumentError(f"nodes must be an int >= 1, got {nodes!r}")
