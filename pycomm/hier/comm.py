"""Hierarchical collectives over a :class:`~pycomm.hier.topology.Topology`: all-gather, reduce-scatter
and all-reduce that move data level by level over one MPI sub-communicator per level, plus ZeRO++'s
quantized variants (qwZ: an int8 block-quantized all-gather; qgZ: an int4 reduce-scatter in two
all-to-all hops, inside the node and then across nodes), with the bytes each rank sends counted per
level.

Every collective is called by every rank of the communicator with the same arguments (levels,
quantization, element count and dtype), like an MPI collective. ``levels`` picks the levels a
collective runs over (default: all of them); its group is then the ranks that differ from this one
only in those levels' digits, ordered by rank, and "flat" below means MPI's collective over that group.

Layout and numeric rules:

- **all_gather** returns the shards of the group concatenated in rank order, as ``MPI_Allgather``
  does. It gathers the outermost level first, so the slow outer links carry one shard per peer and
  the fast inner links carry the large gathered blocks; the blocks arrive ordered by (inner digit,
  ..., outer digit) and one transposing copy puts them in rank order.
- **reduce_scatter** of ``n`` elements over a group of ``G`` ranks: ``c = ceil(n / G)`` (see
  :meth:`HierComm.shard_size`); the input is padded with zeros to ``G * c`` elements and the rank at
  position ``p`` of the group gets elements ``[p * c, (p + 1) * c)`` of the padded sum, as
  ``MPI_Reduce_scatter_block`` would. The result always has ``c`` elements; those past ``n`` in the
  padded array are zeros. It reduces the innermost level first (each hop an all-to-all of the
  pieces, then a reduction in the kernels, in member order), so the data shrinks before it reaches
  the slow links. 16-bit floats are summed in float32 and rounded once per level. ``avg`` is the
  sum divided by ``G`` (the ranks in the group, whatever the levels), rounded once; for integers it
  truncates toward zero, as in :mod:`pycomm.kernels`.
- **all_reduce** is reduce_scatter followed by all_gather; the result has the input's shape (the
  padding is dropped).
- **quantization** (float dtypes only): the data are block-quantized by :func:`pycomm.kernels.quantize`
  (symmetric, one float32 scale per block, rounding to nearest), which errs by at most ``scale / 2 =
  absmax(block) / (2 * qmax)`` an element, ``qmax`` being 127 for int8 and 7 for int4.

  *all_gather* quantizes each shard once in blocks of ``block_size`` from the shard's start; each
  element of the result is within ``absmax(its block) / (2 * qmax)`` of the shard's value (plus the
  rounding of the output dtype).

  *reduce_scatter* (qgZ) splits the group into an inner part (all selected levels but the outermost)
  and an outer part (the outermost selected level). Hop 1: each rank quantizes its input once and
  sends every inner peer the chunks that end on that peer's column; the receiver dequantizes and sums
  them in float32, in member order. Hop 2: that float32 partial sum is quantized once more and sent
  across the outer level, and the receiver dequantizes and sums in float32. Blocks never cross a
  chunk: a chunk of ``c`` elements is quantized in blocks of ``b = min(block_size, c rounded up to
  even)`` starting at the chunk's first element. A hop whose group has one member moves and
  quantizes nothing. For one element, with ``A_ij`` the absmax of its block in the input of the rank
  at inner position ``i`` of node ``j`` and ``B_j`` that of its block in node ``j``'s partial sum,
  the error against the exact sum is at most::

      sum_j ( sum_i A_ij / (2 qmax) + B_j / (2 qmax) ),  with  B_j <= sum_i A_ij (1 + 1 / (2 qmax))

  plus float32 rounding of the sums (at most ``G * 2**-24 * sum |x|``); ``avg`` divides it by ``G``.

Byte counters: ``stats[level]["sent_bytes"]`` adds the bytes this rank sends to peers whose outermost
digit that differs from its own is that level (the link the message crosses), as the logical volume
of each step: ``(fanout - 1) * block`` for an all-gather step whose block is what this rank holds,
``(fanout - 1) / fanout`` of the buffer for a reduce-scatter step. ``calls`` counts the steps that
sent bytes across the level. :mod:`pycomm.hier._volume` gives the same bytes per level as formulas
(and owns the record and block layout used here), which is what a plan's bytes per level add up.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from pycomm import datatype, kernels
from pycomm._arrays import FLOAT_DTYPES, as_array, as_output, check_integer, empty
from pycomm.errors import InvalidArgumentError, PycommError
from pycomm.hier import _volume

if TYPE_CHECKING:
    from mpi4py import MPI

    from pycomm.hier.topology import Topology

__all__ = ["HierComm"]

LevelRef = Union[int, str]

REDUCE_SCATTER_OPS = ("sum", "avg", "prod", "min", "max")
QUANTIZATIONS = ("int8", "int4")
_QUANTIZED_OPS = ("sum", "avg")


@dataclass
class _SubComm:
    """One MPI sub-communicator: the ranks that differ from this one only in ``levels``' digits."""

    comm: Any
    levels: tuple[int, ...]
    members: list[int]
    # For each member, the outermost level whose digit differs from this rank's (-1 for this rank):
    # the link a message to that member crosses, which is where its bytes are counted.
    crossing: list[int]


class HierComm:
    """Collectives over an MPI communicator laid out as ``topology`` (see the module's docstring).

    ``block_size`` (even) is the number of elements per float32 scale in the quantized paths. The
    sub-communicators are created here, collectively; :meth:`free` (or leaving a ``with`` block)
    frees them. Like the MPI communicator under it, one HierComm serves one thread at a time.
    """

    def __init__(self, mpi_comm: MPI.Intracomm, topology: Topology, *, block_size: int = 256) -> None:
        size = mpi_comm.Get_size()
        if size != topology.size:
            raise InvalidArgumentError(
                f"the communicator has {size} ranks but the topology describes {topology.size}; "
                "launch as many ranks as the product of the levels' fan-outs"
            )
        block_size = check_integer(block_size, "block_size", 2, 2**30)
        if block_size % 2:
            # int4 packs two values a byte; an even block keeps every chunk starting on a byte.
            raise InvalidArgumentError(f"block_size must be even, got {block_size}")
        self._comm = mpi_comm
        self._topology = topology
        self._rank = mpi_comm.Get_rank()
        self._block_size = block_size
        self._names = [level.name for level in topology.levels]
        self._fanouts = [int(level.fanout) for level in topology.levels]
        self._strides = [math.prod(self._fanouts[:level]) for level in range(len(self._fanouts))]
        self._position = tuple(int(digit) for digit in topology.position(self._rank))
        self._subcomms: dict[tuple[int, ...], _SubComm] = {}
        self._stats = {name: {"sent_bytes": 0, "calls": 0} for name in self._names}
        # Split is collective over the parent: every rank creates the same sub-communicators in the
        # same order (groups, then spans), here and in any later call that needs another one.
        for level in range(len(self._fanouts)):
            self._create((level,), list(topology.group(self._rank, level)))
        for level in range(1, len(self._fanouts)):
            self._create(tuple(range(level + 1)), list(topology.span(self._rank, level)))

    # -- communicators -------------------------------------------------------------------------------

    @property
    def comm(self) -> MPI.Intracomm:
        """The parent communicator."""
        return self._comm

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._topology.size

    def level_comm(self, level: LevelRef) -> MPI.Intracomm:
        """The sub-communicator of ``level`` (name or index): the ranks that differ from this one only
        in that level's digit, ordered by that digit."""
        return self._existing((self._level_index(level),)).comm

    def span_comm(self, level: LevelRef) -> MPI.Intracomm:
        """The sub-communicator of the ranks sharing every digit above ``level`` (the subtree of levels
        ``0..level``), ordered by rank."""
        return self._existing(tuple(range(self._level_index(level) + 1))).comm

    def free(self) -> None:
        """Frees the sub-communicators (collective). The object is unusable afterwards."""
        subcomms, self._subcomms = self._subcomms, {}
        for subcomm in subcomms.values():
            subcomm.comm.Free()
        self._comm = None

    def __enter__(self) -> HierComm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._comm is not None:
            self.free()

    # -- byte counters -------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """``{level name: {"sent_bytes": ..., "calls": ...}}`` since creation or :meth:`reset_stats`."""
        return {name: dict(counters) for name, counters in self._stats.items()}

    def reset_stats(self) -> None:
        for counters in self._stats.values():
            counters["sent_bytes"] = 0
            counters["calls"] = 0

    # -- collectives ---------------------------------------------------------------------------------

    def group_size(self, levels: Iterable[LevelRef] | None = None) -> int:
        """The number of ranks a collective over ``levels`` (default: all) spans."""
        return math.prod(self._fanouts[level] for level in self._select(levels))

    def shard_size(self, count: int, levels: Iterable[LevelRef] | None = None) -> int:
        """The elements each rank gets from a reduce-scatter of ``count`` elements: ``ceil(count / G)``."""
        count = check_integer(count, "count", 0, 2**62)
        return -(-count // self.group_size(levels))

    def all_gather(
        self,
        shard: Any,
        out: Any = None,
        *,
        levels: Iterable[LevelRef] | None = None,
        quantization: str | None = None,
        dtype: str | None = None,
    ) -> np.ndarray:
        """The group's shards concatenated in rank order (1-D, ``G * shard.size`` elements), like
        ``MPI_Allgather``; ``out`` may be any C-contiguous array of that many elements. With
        ``quantization`` ("int8" is ZeRO++'s qwZ) the shard is quantized once and dequantized after
        the gather. ``dtype="bfloat16"`` declares uint16 data as bfloat16."""
        selected = self._select(levels)
        local, name = as_array(shard, "shard", dtype)
        flat = _flat(local, "shard")
        group = math.prod(self._fanouts[level] for level in selected)
        result = self._output(out, group * flat.size, name, like=local)
        result_flat = _flat(result, "out")
        if flat.size == 0:
            if quantization is not None:
                self._check_quantization(quantization, name)
            return result
        if quantization is None:
            self._gather_bytes(_bytes(flat), _bytes(result_flat).reshape(group, -1), selected)
            return result
        scheme = self._check_quantization(quantization, name)
        quantized = kernels.quantize(flat, scheme, self._block_size, dtype=name)
        data_bytes = quantized.data.nbytes
        # Data and scales travel as one record a rank; the scales start 4-byte aligned so that each
        # gathered record's scales can be viewed as float32 in place (the layout _volume counts).
        scales_at = _volume.scales_offset(data_bytes)
        record = np.zeros(scales_at + quantized.scales.nbytes, np.uint8)
        record[:data_bytes] = _bytes(quantized.data)
        record[scales_at:] = _bytes(quantized.scales)
        gathered = np.empty((group, record.size), np.uint8)
        self._gather_bytes(record, gathered, selected)
        count = flat.size
        for position in range(group):
            piece = kernels.Quantized(
                scheme,
                self._block_size,
                count,
                (count,),
                gathered[position, :data_bytes].view(quantized.data.dtype),
                gathered[position, scales_at:].view(np.float32),
                None,
            )
            kernels.dequantize(piece, out=result_flat[position * count : (position + 1) * count], dtype=name)
        return result

    def reduce_scatter(
        self,
        x: Any,
        out: Any = None,
        *,
        op: str = "sum",
        levels: Iterable[LevelRef] | None = None,
        quantization: str | None = None,
        dtype: str | None = None,
    ) -> np.ndarray:
        """This rank's chunk of the element-wise reduction of ``x`` over the group (1-D, ``shard_size``
        elements; layout, padding and ``avg`` in the module's docstring), like
        ``MPI_Reduce_scatter_block``. ``op``: sum, avg, prod, min, max. ``quantization="int4"`` is
        ZeRO++'s qgZ two-hop all-to-all ("int8" works the same way); it takes sum or avg."""
        selected = self._select(levels)
        source, name = as_array(x, "x", dtype)
        flat = _flat(source, "x")
        if op not in REDUCE_SCATTER_OPS:
            raise InvalidArgumentError(
                f"unsupported reduce op '{op}'; supported: {', '.join(REDUCE_SCATTER_OPS)}"
            )
        group = math.prod(self._fanouts[level] for level in selected)
        chunk = -(-flat.size // group)
        result = self._output(out, chunk, name, like=source)
        result_flat = _flat(result, "out")
        if quantization is not None:
            scheme = self._check_quantization(quantization, name)
            if op not in _QUANTIZED_OPS:
                raise InvalidArgumentError(
                    f"op '{op}' with quantization: a quantized reduce-scatter takes sum or avg"
                )
            if chunk:
                self._two_hop_reduce_scatter(flat, name, result_flat, selected, chunk, op, scheme)
            return result
        if chunk:
            self._level_reduce_scatter(flat, name, result_flat, selected, chunk, op, group)
        return result

    def all_reduce(
        self,
        x: Any,
        out: Any = None,
        *,
        op: str = "sum",
        levels: Iterable[LevelRef] | None = None,
        dtype: str | None = None,
    ) -> np.ndarray:
        """The element-wise reduction of ``x`` over the group, in ``x``'s shape (``out`` may be ``x``):
        a hierarchical reduce-scatter, then a hierarchical all-gather of the chunks."""
        source, name = as_array(x, "x", dtype)
        result = self._output(out, source.size, name, like=source, shape=source.shape)
        chunk = self.reduce_scatter(source, op=op, levels=levels, dtype=name)
        gathered = self.all_gather(chunk, levels=levels, dtype=name)
        _flat(result, "out")[...] = gathered[: source.size]
        return result

    # -- algorithms ----------------------------------------------------------------------------------

    def _gather_bytes(self, send: np.ndarray, receive: np.ndarray, levels: Sequence[int]) -> None:
        """All-gather of byte records, outermost level first; ``receive`` is (G, record bytes) and ends
        in rank order."""
        active = [level for level in levels if self._fanouts[level] > 1]
        if send.size == 0:
            return
        if not active:
            receive[0] = send
            return
        held = send
        for step, level in enumerate(reversed(active)):
            fanout = self._fanouts[level]
            last = step == len(active) - 1
            # With one active level the blocks arrive in rank order already: receive in place.
            target = receive.reshape((fanout, *held.shape)) if last and len(active) == 1 else None
            if target is None:
                target = np.empty((fanout, *held.shape), np.uint8)
            self._existing((level,)).comm.Allgather(held, target)
            self._count(level, (fanout - 1) * held.nbytes)
            held = target
        if len(active) > 1:
            # `held` is indexed (innermost digit, ..., outermost digit, byte); rank order wants the
            # outermost digit first.
            _reverse_leading_axes(held.reshape(-1), held.shape[:-1], held.shape[-1], receive.reshape(-1))

    def _level_reduce_scatter(
        self,
        flat: np.ndarray,
        name: str,
        result: np.ndarray,
        levels: Sequence[int],
        chunk: int,
        op: str,
        group: int,
    ) -> None:
        active = [level for level in levels if self._fanouts[level] > 1]
        padded = _padded(flat, group * chunk)
        fanouts = [self._fanouts[level] for level in active]
        if len(active) > 1:
            # Chunk p (p = d0 + f0 * (d1 + ...) over the active digits) is indexed (..., d1, d0) in
            # `padded`; each step sends along the leading axis, so the innermost digit goes first.
            held = np.empty(padded.size, padded.dtype)
            _reverse_leading_axes(_bytes(padded), fanouts[::-1], chunk * padded.itemsize, _bytes(held))
        else:
            held = padded
        step_op = "sum" if op == "avg" else op
        for level, fanout in zip(active, fanouts):
            pieces = np.empty((fanout, held.size // fanout), held.dtype)
            self._existing((level,)).comm.Alltoall(held, pieces)
            self._count(level, (fanout - 1) * pieces[0].nbytes)
            kernels.reduce(list(pieces), step_op, out=pieces[0], dtype=name)
            held = pieces[0]
        if op == "avg":
            total = kernels.widen(held, "avg", dtype=name)
            kernels.finalize(total, name, "avg", group, out=result)
        else:
            result[...] = held

    def _two_hop_reduce_scatter(
        self,
        flat: np.ndarray,
        name: str,
        result: np.ndarray,
        levels: Sequence[int],
        chunk: int,
        op: str,
        scheme: str,
    ) -> None:
        if levels:
            inner, outer = tuple(levels[:-1]), levels[-1]
            nodes = self._fanouts[outer]
        else:
            inner, outer, nodes = (), -1, 1
        columns = math.prod(self._fanouts[level] for level in inner)
        block = _volume.qgz_block(chunk, self._block_size)
        padded_chunk = _volume.whole_blocks(chunk, block)
        # work[i, j] is the chunk of the rank at inner position i on node j (rank order p = i + columns
        # * j), zero-padded to whole blocks: hop 1 sends row i to inner peer i, hop 2 sends the summed
        # chunk j to node j, after which every rank holds its own chunk of the flat layout.
        padded = _padded(flat, columns * nodes * chunk)
        work = np.zeros((columns, nodes, padded_chunk), padded.dtype)
        item = padded.itemsize
        _reverse_leading_axes(
            _bytes(padded), (nodes, columns), chunk * item, _bytes(work.reshape(-1)), padded_chunk * item
        )
        if columns > 1:
            partial = self._quantized_all_to_all(
                work.reshape(columns, -1), name, self._subcomm(inner), scheme, block
            )
        else:
            partial = kernels.cast(work.reshape(-1), "float32", src_dtype=name)
        if nodes > 1:
            total = self._quantized_all_to_all(
                partial.reshape(nodes, padded_chunk), "float32", self._existing((outer,)), scheme, block
            )
        else:
            total = partial
        total = total[:chunk]
        if op == "avg":
            kernels.finalize(total, "float32", "avg", columns * nodes, out=total)
        kernels.cast(total, name, out=result, src_dtype="float32")

    def _quantized_all_to_all(
        self, rows: np.ndarray, name: str, subcomm: _SubComm, scheme: str, block: int
    ) -> np.ndarray:
        """Quantizes ``rows`` (one a member, each a whole number of blocks) once, sends row m to member
        m and returns the float32 sum of the dequantized rows received, added in member order."""
        members, length = rows.shape
        quantized = kernels.quantize(rows.reshape(-1), scheme, block, dtype=name)
        data = quantized.data.reshape(members, -1)
        scales = quantized.scales.reshape(members, -1)
        received_data = np.empty_like(data)
        received_scales = np.empty_like(scales)
        subcomm.comm.Alltoall(data, received_data)
        subcomm.comm.Alltoall(scales, received_scales)
        row_bytes = data[0].nbytes + scales[0].nbytes
        for level in set(subcomm.crossing) - {-1}:
            self._count(level, row_bytes * subcomm.crossing.count(level))
        total = np.zeros(length, np.float32)
        for member in range(members):
            piece = kernels.Quantized(
                scheme, block, length, (length,), received_data[member], received_scales[member], None
            )
            kernels.dequantize(piece, out=total, accumulate=True)
        return total

    # -- helpers -------------------------------------------------------------------------------------

    def _count(self, level: int, sent_bytes: int) -> None:
        counters = self._stats[self._names[level]]
        counters["sent_bytes"] += int(sent_bytes)
        counters["calls"] += 1

    def _level_index(self, level: LevelRef) -> int:
        # The topology owns the naming rules (names, indices, negative indices from the outermost).
        return self._topology.level_index(level)

    def _select(self, levels: Iterable[LevelRef] | None) -> tuple[int, ...]:
        self._check_open()
        if levels is None:
            return tuple(range(len(self._names)))
        if isinstance(levels, (str, int)):
            raise InvalidArgumentError(f"levels is a list of level names or indices, got {levels!r}")
        indices = [self._level_index(level) for level in levels]
        if len(set(indices)) != len(indices):
            raise InvalidArgumentError(f"levels names a level twice: {list(levels)!r}")
        return tuple(sorted(indices))

    def _check_open(self) -> None:
        if self._comm is None:
            raise PycommError("this HierComm was freed")

    @staticmethod
    def _check_quantization(quantization: str, name: str) -> str:
        if quantization not in QUANTIZATIONS:
            raise InvalidArgumentError(
                f"unsupported quantization '{quantization}'; supported: {', '.join(QUANTIZATIONS)} or None"
            )
        if name not in FLOAT_DTYPES:
            raise InvalidArgumentError(
                f"quantization needs float data ({', '.join(FLOAT_DTYPES)}), got {name}"
            )
        return quantization

    @staticmethod
    def _output(
        out: Any, count: int, name: str, like: np.ndarray, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        if out is None:
            return empty((count,) if shape is None else shape, name, like=like)
        result, _ = as_output(out, "out", name)
        if result.size != count:
            raise InvalidArgumentError(f"out has {result.size} elements; this call produces {count}")
        return result

    def _existing(self, levels: tuple[int, ...]) -> _SubComm:
        self._check_open()
        return self._subcomms[levels]

    def _subcomm(self, levels: tuple[int, ...]) -> _SubComm:
        """The sub-communicator over ``levels``, created (collectively) on first use."""
        self._check_open()
        found = self._subcomms.get(levels)
        return found if found is not None else self._create(levels, self._members(levels))

    def _members(self, levels: tuple[int, ...]) -> list[int]:
        base = self._rank - sum(self._position[level] * self._strides[level] for level in levels)
        ranges = [range(self._fanouts[level]) for level in levels]
        return sorted(
            base + sum(digit * self._strides[level] for digit, level in zip(digits, levels))
            for digits in itertools.product(*ranges)
        )

    def _create(self, levels: tuple[int, ...], members: list[int]) -> _SubComm:
        if self._rank not in members:
            raise InvalidArgumentError(
                f"the topology's group for levels {levels} leaves out rank {self._rank}"
            )
        # The smallest member names the group; ordering by the parent rank gives ascending members.
        comm = self._comm.Split(members[0], self._rank)
        crossing = []
        for member in members:
            digits = [member // self._strides[level] % self._fanouts[level] for level in levels]
            differing = [level for level, digit in zip(levels, digits) if digit != self._position[level]]
            crossing.append(max(differing) if differing else -1)
        subcomm = _SubComm(comm, levels, members, crossing)
        self._subcomms[levels] = subcomm
        return subcomm


def _flat(array: np.ndarray, role: str) -> np.ndarray:
    """A 1-D view; reshape() would silently copy a non-contiguous array, and a copy of an output is
    written and then lost."""
    if not array.flags.c_contiguous:
        raise InvalidArgumentError(f"{role}: array must be C-contiguous")
    return array.reshape(-1)


def _bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of a 1-D contiguous array, for MPI (which then needs no datatype for bfloat16)."""
    return array.view(np.uint8)


def _reverse_leading_axes(
    source: np.ndarray,
    sizes: Sequence[int],
    block_bytes: int,
    target: np.ndarray,
    target_block_bytes: int | None = None,
) -> None:
    """Copies the blocks of ``source`` (bytes laid out as ``(*sizes, block_bytes)``) into ``target``
    laid out as ``(*reversed(sizes), target_block_bytes)``: the chunk reorders of the hierarchical
    collectives. A nested hvector type describes where each block lands and the C++ pack engine
    (:mod:`pycomm.datatype`) scatters the blocks there in one pass; target bytes past a block's
    ``block_bytes`` (padding) are left as they are."""
    target_block_bytes = block_bytes if target_block_bytes is None else target_block_bytes
    if source.size == 0 or block_bytes == 0:
        return
    placement = datatype.contiguous(block_bytes, datatype.BYTE)
    # Source axis a (outermost first) becomes target axis len(sizes) - 1 - a, whose stride is the
    # product of the sizes of the source axes before it.
    strides = [target_block_bytes * math.prod(sizes[:axis]) for axis in range(len(sizes))]
    for size, stride in zip(reversed(sizes), reversed(strides)):
        placement = datatype.hvector(size, 1, stride, placement)
    placement.commit()
    try:
        datatype.unpack(source, target, placement)
    finally:
        placement.free()


def _padded(flat: np.ndarray, length: int) -> np.ndarray:
    if flat.size == length:
        return flat
    padded = np.zeros(length, flat.dtype)
    padded[: flat.size] = flat
    return padded
