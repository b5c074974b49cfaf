"""pycomm.datatype without MPI: canonical forms, pack/unpack against numpy's strided views, partial
packs, and the errors for bad input. (tests/test_datatype_mpi.py compares with MPICH itself.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

from pycomm import InvalidArgumentError
from pycomm import datatype as dt


def test_vector_is_one_strided_block() -> None:
    t = dt.vector(3, 2, 4, dt.FLOAT).commit()
    assert (t.size, t.extent) == (24, 40)
    assert t.strided == dt.StridedBlock(offset=0, block=8, counts=(3,), strides=(16,))


def test_dense_loops_fold_into_one_block() -> None:
    assert dt.vector(5, 3, 3, dt.INT).commit().strided == dt.StridedBlock(0, 60, (), ())
    assert dt.contiguous(4, dt.contiguous(2, dt.DOUBLE)).commit().strided == dt.StridedBlock(0, 64, (), ())
    adjacent = dt.struct([1, 1], [0, 4], [dt.INT, dt.FLOAT]).commit()
    assert adjacent.strided == dt.StridedBlock(0, 8, (), ())


def test_regular_indexed_blocks_become_a_loop() -> None:
    t = dt.indexed([2, 2, 2, 2], [0, 5, 10, 15], dt.SHORT).commit()
    assert t.strided == dt.StridedBlock(0, 4, (4,), (10,))


def test_irregular_pieces_stay_a_list() -> None:
    t = dt.hindexed([1, 2], [0, 7], dt.INT).commit()
    assert t.strided is None
    assert t.layout_stats()["segments"] == 2


def test_cube_faces_of_a_subarray_are_strided_blocks() -> None:
    n = 8
    cube = np.arange(n**3, dtype=np.float32).reshape(n, n, n)
    faces = {
        "yz": ([1, n, n], [3, 0, 0], cube[3, :, :]),
        "xz": ([n, 1, n], [0, 3, 0], cube[:, 3, :]),
        "xy": ([n, n, 1], [0, 0, 3], cube[:, :, 3]),
    }
    for name, (subsizes, starts, expected) in faces.items():
        t = dt.subarray([n, n, n], subsizes, starts, dt.FLOAT).commit()
        assert t.strided is not None, name
        assert dt.pack(cube, t).view(np.float32).tolist() == expected.reshape(-1).tolist(), name
    row_face = dt.subarray([n, n, n], [n, 1, n], [0, 3, 0], dt.FLOAT).commit()
    assert row_face.strided == dt.StridedBlock(3 * n * 4, n * 4, (n,), (n * n * 4,))


def test_loops_keep_their_order_even_when_a_stride_sort_would_merge_them() -> None:
    # The transpose of a 4 x 3 int matrix: columns outside, rows inside. Sorting the strides would
    # turn this into a plain copy and write the bytes in the wrong order.
    column = dt.vector(4, 1, 3, dt.INT)
    transpose = dt.hvector(3, 1, 4, column).commit()
    assert transpose.strided == dt.StridedBlock(0, 4, (3, 4), (4, 12))
    matrix = np.arange(12, dtype=np.int32).reshape(4, 3)
    assert dt.pack(matrix, transpose).view(np.int32).tolist() == matrix.T.reshape(-1).tolist()


@settings(max_examples=300, deadline=None)
@given(
    block=st.integers(1, 40),
    loops=st.lists(st.tuples(st.integers(1, 5), st.integers(-96, 96)), min_size=1, max_size=4),
    count=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_nested_hvectors_pack_like_numpy_strided_views(block, loops, count, seed) -> None:
    t = dt.contiguous(block, dt.BYTE)
    for loop_count, stride in reversed(loops):
        t = dt.hvector(loop_count, 1, stride, t)
    t = dt.resized(t, 0, 1000).commit()  # objects 1000 bytes apart
    begin, end = t._native.span(count)
    rng = np.random.default_rng(seed)
    buffer = rng.integers(0, 256, end - min(begin, 0) + 1, dtype=np.uint8)
    origin = -min(begin, 0)
    packed = dt.pack(buffer, t, count, offset=origin)
    counts = [c for c, _ in loops]
    strides = [s for _, s in loops]
    expected = b"".join(
        as_strided(buffer[origin + 1000 * i :], shape=[*counts, block], strides=[*strides, 1]).tobytes()
        if min(strides) >= 0
        else _gather(buffer, origin + 1000 * i, block, counts, strides)
        for i in range(count)
    )
    assert packed.tobytes() == expected
    # Unpacking scatters the same bytes back: into a zeroed copy, it restores every packed byte.
    target = np.zeros_like(buffer)
    assert dt.unpack(packed, target, t, count, offset=origin) == packed.size
    assert dt.pack(target, t, count, offset=origin).tobytes() == expected


def _gather(buffer: np.ndarray, origin: int, block: int, counts: list[int], strides: list[int]) -> bytes:
    pieces = []
    for index in np.ndindex(*counts):
        at = origin + sum(i * s for i, s in zip(index, strides))
        pieces.append(buffer[at : at + block].tobytes())
    return b"".join(pieces)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=5))
def test_partial_packs_concatenate_to_the_whole(cuts) -> None:
    t = dt.struct([3, 1], [0, 40], [dt.vector(4, 3, 5, dt.SHORT), dt.DOUBLE]).commit()
    buffer = np.random.default_rng(1).integers(0, 256, t.extent * 10, dtype=np.uint8)
    whole = dt.pack(buffer, t, 10).tobytes()
    edges = sorted({0, len(whole), *(c % (len(whole) + 1) for c in cuts)})
    pieces = [dt.pack(buffer, t, 10, first=a, max_bytes=b - a).tobytes() for a, b in zip(edges, edges[1:])]
    assert b"".join(pieces) == whole
    target = np.zeros_like(buffer)
    for a, b in zip(edges, edges[1:]):
        piece = np.frombuffer(whole[a:b], np.uint8)
        assert dt.unpack(piece, target, t, 10, first=a, max_bytes=b - a) == b - a
    assert dt.pack(target, t, 10).tobytes() == whole


def test_pack_into_a_given_output() -> None:
    t = dt.vector(2, 1, 2, dt.INT).commit()
    out = np.full(16, 255, np.uint8)
    packed = dt.pack(np.arange(4, dtype=np.int32), t, out=out)
    assert packed.view(np.int32).tolist() == [0, 2]
    assert out[8:].tolist() == [255] * 8


def test_errors_name_what_is_wrong() -> None:
    t = dt.vector(4, 1, 4, dt.INT)
    with pytest.raises(InvalidArgumentError, match="not committed"):
        dt.pack(np.zeros(64, np.int32), t)
    t.commit()
    with pytest.raises(InvalidArgumentError, match="too small"):
        dt.pack(np.zeros(12, np.int32), t)
    with pytest.raises(InvalidArgumentError, match="count must be >= 0"):
        dt.pack(np.zeros(64, np.int32), t, count=-1)
    with pytest.raises(InvalidArgumentError, match="too small"):
        dt.pack(np.zeros(64, np.int32), t, out=np.zeros(8, np.uint8))
    with pytest.raises(InvalidArgumentError, match="read-only"):
        frozen = np.zeros(16, np.uint8)
        frozen.flags.writeable = False
        dt.pack(np.zeros(64, np.int32), t, out=frozen)
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        dt.pack(np.zeros((64, 2), np.int32)[:, 0], t)
    with pytest.raises(InvalidArgumentError, match="are needed"):
        dt.unpack(np.zeros(8, np.uint8), np.zeros(64, np.int32), t)
    with pytest.raises(InvalidArgumentError, match=r"pycomm\.datatype\.Type"):
        dt.pack(np.zeros(64, np.int32), "vector")
    t.free()
    with pytest.raises(InvalidArgumentError, match="freed"):
        dt.pack(np.zeros(64, np.int32), t)
    # A type built from a freed type stays valid; the freed one cannot build new ones.
    with pytest.raises(InvalidArgumentError, match="freed"):
        dt.contiguous(2, t)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: dt.vector(-1, 1, 1, dt.INT), "count must be >= 0"),
        (lambda: dt.indexed([1, 2], [0], dt.INT), "2 blocklengths but 1 displacements"),
        (lambda: dt.subarray([4, 4], [2, 5], [0, 0], dt.INT), r"subsizes\[1\] must be in \[1, 4\]"),
        (lambda: dt.subarray([4], [2], [3], dt.INT), r"starts\[0\] must be in \[0, 2\]"),
        (lambda: dt.subarray([4], [2], [0], dt.INT, order="X"), "order must be 'C' or 'F'"),
        (lambda: dt.darray(4, 0, [8, 8], ["block", "block"], [-1, -1], [2, 3], dt.INT), "grid has 6"),
        (lambda: dt.darray(2, 0, [8], ["block"], [2], [2], dt.INT), "does not cover"),
        (lambda: dt.darray(2, 5, [8], ["block"], [-1], [2], dt.INT), "rank must be in"),
        (lambda: dt.hvector(1 << 40, 1 << 30, 1 << 30, dt.DOUBLE), "overflows"),
        # Nothing is truncated to fit: a float count or displacement is refused.
        (lambda: dt.vector(2.5, 1, 1, dt.INT), "count must be an int"),
        (lambda: dt.indexed([1.5], [0], dt.INT), "sequence of integers, got float64"),
        (lambda: dt.resized(dt.INT, 0, "4"), "extent must be an int"),
    ],
)
def test_constructors_reject_what_mpi_rejects(build, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        build()


def test_named_pairs_have_their_holes() -> None:
    assert (dt.SHORT_INT.size, dt.SHORT_INT.extent) == (6, 8)
    assert dt.SHORT_INT.strided is None or dt.SHORT_INT.strided.block == 6
    data = np.arange(16, dtype=np.uint8)
    assert dt.pack(data, dt.DOUBLE_INT, 1).tolist() == list(range(12))


@settings(max_examples=100, deadline=None)
@given(
    blocklength=st.integers(1, 6),
    stride=st.integers(6, 40),
    count=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_fast_path_writes_what_the_general_path_writes(blocklength, stride, count, seed) -> None:
    # pack(buf, t, count, out) and unpack(packed, buf, t, count) run in C without Python checks;
    # with a keyword they take the general path. Both must move the same bytes.
    t = dt.struct([blocklength, 1], [0, 8 * stride], [dt.SHORT, dt.vector(3, 1, stride, dt.INT)]).commit()
    rng = np.random.default_rng(seed)
    buffer = rng.integers(0, 256, max(1, t.extent * count + t.true_extent), dtype=np.uint8)
    out = np.empty(t.size * count, np.uint8)
    fast = dt.pack(buffer, t, count, out)
    assert fast is out
    assert fast.tobytes() == dt.pack(buffer, t, count, offset=0).tobytes()
    target_fast = rng.integers(0, 256, buffer.size, dtype=np.uint8)
    target_general = target_fast.copy()
    assert dt.unpack(fast, target_fast, t, count) == fast.size
    assert dt.unpack(fast, target_general, t, count, offset=0) == fast.size
    assert target_fast.tobytes() == target_general.tobytes()


def test_the_fast_path_hands_every_doubtful_call_to_the_checks() -> None:
    t = dt.vector(4, 1, 4, dt.INT).commit()
    data = np.arange(16, dtype=np.int32)
    # An output larger than the packed bytes: packed into its start, returned trimmed.
    assert dt.pack(data, t, 1, np.zeros(100, np.uint8)).view(np.int32).tolist() == [0, 4, 8, 12]
    assert dt.pack(data, t, np.int64(1), np.zeros(16, np.uint8)).view(np.int32).tolist() == [0, 4, 8, 12]
    frozen = np.zeros(16, np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(InvalidArgumentError, match="read-only"):
        dt.pack(data, t, 1, frozen)
    with pytest.raises(InvalidArgumentError, match="too small"):
        dt.pack(data[:10], t, 1, np.zeros(16, np.uint8))
    with pytest.raises(InvalidArgumentError, match="count must be >= 0"):
        dt.pack(data, t, -1, np.zeros(16, np.uint8))
    # Counts whose bytes overflow 64 bits are refused, not wrapped (2^61 x 8 bytes would be 0 bytes).
    for count in (2**61, 2**62):
        with pytest.raises(InvalidArgumentError, match="do not fit 64-bit"):
            dt.pack(data, t, count, np.zeros(16, np.uint8))
        with pytest.raises(InvalidArgumentError, match="do not fit 64-bit"):
            dt.pack(data, t, count)
        with pytest.raises(InvalidArgumentError, match="do not fit 64-bit"):
            dt.unpack(np.zeros(16, np.uint8), data.copy(), t, count)
    with pytest.raises(InvalidArgumentError, match="too small"):
        dt.pack(data, t, 2**40)  # refused before an output of 8 TiB is allocated
    with pytest.raises(InvalidArgumentError, match="are needed"):
        dt.unpack(np.zeros(8, np.uint8), data.copy(), t, 1)
    t.free()
    with pytest.raises(InvalidArgumentError, match="freed"):
        dt.pack(data, t, 1, np.zeros(16, np.uint8))
    with pytest.raises(InvalidArgumentError, match="freed"):
        dt.unpack(np.zeros(16, np.uint8), data.copy(), t, 1)
    uncommitted = dt.vector(4, 1, 4, dt.INT)
    with pytest.raises(InvalidArgumentError, match="not committed"):
        dt.pack(data, uncommitted, 1, np.zeros(16, np.uint8))


@pytest.mark.parametrize("block", [1, 2, 4, 8, 12, 64, 100])
@pytest.mark.parametrize("rows", [33, 38, 101])
def test_rows_far_apart_take_the_prefetching_loop_and_stay_exact(block, rows) -> None:
    # Rows 64 KiB apart span more than the caches: the copy prefetches ahead and moves four rows a
    # step, with a tail that is not a multiple of four.
    stride = 64 * 1024
    t = dt.hvector(rows, 1, stride, dt.contiguous(block, dt.BYTE)).commit()
    data = np.random.default_rng(rows * block).integers(0, 256, (rows - 1) * stride + block, dtype=np.uint8)
    expected = np.lib.stride_tricks.as_strided(data, shape=(rows, block), strides=(stride, 1)).tobytes()
    packed = dt.pack(data, t)
    assert packed.tobytes() == expected
    target = np.zeros_like(data)
    dt.unpack(packed, target, t)
    assert (
        np.lib.stride_tricks.as_strided(target, shape=(rows, block), strides=(stride, 1)).tobytes()
        == expected
    )
    assert int(target.sum()) == int(np.frombuffer(expected, np.uint8).sum())  # nothing else written
