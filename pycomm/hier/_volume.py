"""Bytes one rank sends over each level's links in one hierarchical collective, exactly as
:class:`~pycomm.hier.comm.HierComm` sends them: the single definition that the plan's
:meth:`~pycomm.hier.plan.ZeroPlan.bytes_per_level` and the benchmark's predictions are computed from,
and whose layout rules (4-byte aligned scale records, qgZ's block choice and chunk padding) HierComm
itself uses, so that a counter and its formula cannot drift apart.

Every function takes ``fanouts``, the fan-outs of the levels a collective runs over, innermost first
(a level of fan-out 1 sends nothing), and returns one byte count per entry of ``fanouts``. ``count``
is the number of elements each rank passes in: its shard for an all-gather, its whole input for a
reduce-scatter or an all-reduce. With ``G = prod(fanouts)`` and ``c = ceil(count / G)``:

- **all_gather**, outermost level first: a level of fan-out ``f`` sends ``(f - 1) *`` what the rank
  holds then, i.e. the shard times the fan-outs of the levels above it;
- **reduce_scatter**, innermost level first, on the input padded with zeros to ``G * c`` elements:
  ``(f - 1) / f`` of what the rank holds then, the padded input divided by the fan-outs below it;
- **all_reduce**: a reduce-scatter, then an all-gather of its ``c``-element result;
- **quantized all_gather** (qwZ): an all-gather of one record a rank, the shard's quantized bytes
  padded to a multiple of 4, then one float32 scale per block;
- **quantized reduce_scatter** (qgZ), two all-to-all hops: hop 1 over all levels but the outermost
  together sends each inner peer one row of ``nodes`` chunks, each padded to whole blocks and
  quantized (counted at the outermost level in which that peer differs: at inner level ``i``,
  ``(f_i - 1) * f_0 * ... * f_(i-1)`` peers); hop 2 sends each other member of the outermost level one
  re-quantized chunk;
- **quantized all_reduce**: a qgZ reduce-scatter, then a quantized all-gather of its result with the
  same scheme (HierComm's two calls one after the other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pycomm.errors import InvalidArgumentError

__all__ = [
    "OPERATIONS",
    "SCALE_BYTES",
    "all_gather",
    "all_reduce",
    "gather_record_bytes",
    "qgz_block",
    "quantized_all_gather",
    "quantized_all_reduce",
    "quantized_bytes",
    "quantized_reduce_scatter",
    "reduce_scatter",
    "scales_offset",
    "sent_per_level",
    "whole_blocks",
]

OPERATIONS = ("all_gather", "reduce_scatter", "all_reduce")
SCALE_BYTES = 4
"""Bytes of one block's scale (float32)."""
_SCHEMES = ("int8", "int4")


# -- layout rules shared with HierComm -------------------------------------------------------------


def quantized_bytes(elements: int, scheme: str) -> int:
    """Bytes of the quantized values of ``elements`` elements (int4 packs two a byte)."""
    _check_scheme(scheme)
    return (elements + 1) // 2 if scheme == "int4" else elements


def scales_offset(data_bytes: int) -> int:
    """Where a gathered record's scales start: after the data, 4-byte aligned so that they can be
    viewed as float32 in place."""
    return -(-data_bytes // SCALE_BYTES) * SCALE_BYTES


def gather_record_bytes(shard_count: int, scheme: str, block_size: int) -> int:
    """Bytes of the record one rank contributes to a quantized all-gather of ``shard_count`` elements."""
    blocks = -(-shard_count // block_size)
    return scales_offset(quantized_bytes(shard_count, scheme)) + SCALE_BYTES * blocks


def qgz_block(chunk: int, block_size: int) -> int:
    """qgZ's elements per scale: blocks never cross a chunk, so a chunk shorter than ``block_size`` is
    one block (rounded up to even, to keep int4 chunks on whole bytes)."""
    return min(block_size, chunk + chunk % 2)


def whole_blocks(elements: int, block: int) -> int:
    """``elements`` rounded up to whole blocks."""
    return -(-elements // block) * block


# -- bytes per level ---------------------------------------------------------------------------------


def all_gather(fanouts: Sequence[int], shard_count: int, element_bytes: float) -> list[float]:
    """Bytes per level of an all-gather of ``shard_count`` elements of ``element_bytes`` a rank."""
    return _gather(fanouts, shard_count * element_bytes if shard_count else 0)


def reduce_scatter(fanouts: Sequence[int], count: int, element_bytes: float) -> list[float]:
    """Bytes per level of a reduce-scatter of ``count`` elements of ``element_bytes`` a rank."""
    _check_fanouts(fanouts)
    sent: list[float] = [0] * len(fanouts)
    held = math.prod(fanouts) * _chunk(fanouts, count)  # the zero-padded input, in elements
    for index, fanout in enumerate(fanouts):
        if fanout > 1:
            held //= fanout
            sent[index] = (fanout - 1) * held * element_bytes
    return sent


def all_reduce(fanouts: Sequence[int], count: int, element_bytes: float) -> list[float]:
    """Bytes per level of an all-reduce: a reduce-scatter, then an all-gather of its chunk."""
    scatter = reduce_scatter(fanouts, count, element_bytes)
    gather = all_gather(fanouts, _chunk(fanouts, count), element_bytes)
    return [a + b for a, b in zip(scatter, gather)]


def quantized_all_gather(
    fanouts: Sequence[int], shard_count: int, scheme: str, block_size: int
) -> list[float]:
    """Bytes per level of a quantized all-gather (qwZ) of ``shard_count`` elements a rank."""
    _check_scheme(scheme)
    return _gather(fanouts, gather_record_bytes(shard_count, scheme, block_size) if shard_count else 0)


def quantized_reduce_scatter(fanouts: Sequence[int], count: int, scheme: str, block_size: int) -> list[float]:
    """Bytes per level of the two-hop quantized reduce-scatter (qgZ) of ``count`` elements a rank."""
    _check_fanouts(fanouts)
    _check_scheme(scheme)
    sent: list[float] = [0] * len(fanouts)
    chunk = _chunk(fanouts, count)
    if not fanouts or not chunk:
        return sent
    block = qgz_block(chunk, block_size)
    padded_chunk = whole_blocks(chunk, block)
    nodes = fanouts[-1]
    # Hop 1: one row of `nodes` padded chunks to every inner peer, quantized as one array.
    row = nodes * padded_chunk
    row_bytes = quantized_bytes(row, scheme) + SCALE_BYTES * (row // block)
    for index, fanout in enumerate(fanouts[:-1]):
        sent[index] = (fanout - 1) * math.prod(fanouts[:index]) * row_bytes
    # Hop 2: one re-quantized chunk to every other member of the outermost level.
    chunk_bytes = quantized_bytes(padded_chunk, scheme) + SCALE_BYTES * (padded_chunk // block)
    sent[-1] = (nodes - 1) * chunk_bytes
    return sent


def quantized_all_reduce(fanouts: Sequence[int], count: int, scheme: str, block_size: int) -> list[float]:
    """Bytes per level of a qgZ reduce-scatter followed by a quantized all-gather of its chunk."""
    scatter = quantized_reduce_scatter(fanouts, count, scheme, block_size)
    gather = quantized_all_gather(fanouts, _chunk(fanouts, count), scheme, block_size)
    return [a + b for a, b in zip(scatter, gather)]


def sent_per_level(
    operation: str,
    fanouts: Sequence[int],
    count: int,
    element_bytes: float,
    quantizer: str | None = None,
    block_size: int = 256,
) -> list[float]:
    """Bytes per level of ``operation`` (one of :data:`OPERATIONS`), quantized with ``quantizer``
    (None, "int8" or "int4"; ``element_bytes`` then does not matter) in blocks of ``block_size``."""
    if operation not in OPERATIONS:
        raise InvalidArgumentError(f"unknown operation {operation!r}; one of {list(OPERATIONS)}")
    if quantizer is None:
        plain = {"all_gather": all_gather, "reduce_scatter": reduce_scatter, "all_reduce": all_reduce}
        return plain[operation](fanouts, count, element_bytes)
    quantized = {
        "all_gather": quantized_all_gather,
        "reduce_scatter": quantized_reduce_scatter,
        "all_reduce": quantized_all_reduce,
    }
    return quantized[operation](fanouts, count, quantizer, block_size)


# -- helpers -----------------------------------------------------------------------------------------


def _gather(fanouts: Sequence[int], record_bytes: float) -> list[float]:
    _check_fanouts(fanouts)
    sent: list[float] = [0] * len(fanouts)
    held = record_bytes
    for index in reversed(range(len(fanouts))):
        fanout = fanouts[index]
        if fanout > 1:
            sent[index] = (fanout - 1) * held
            held *= fanout
    return sent


def _chunk(fanouts: Sequence[int], count: int) -> int:
    return -(-count // math.prod(fanouts))


def _check_fanouts(fanouts: Sequence[int]) -> None:
    if any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in fanouts):
        raise InvalidArgumentError(f"fanouts must be ints >= 1, got {list(fanouts)!r}")


def _check_scheme(scheme: str) -> None:
    if scheme not in _SCHEMES:
        raise InvalidArgumentError(f"unknown quantization {scheme!r}; one of {list(_SCHEMES)}")
