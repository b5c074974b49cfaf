"""The cases of ``pycomm bench pack``: datatype pack and unpack against MPICH's MPI_Pack, numpy and memcpy.

The shapes are those the TEMPI paper measures (Pearson et al., 2021), on the CPU:

- 2-D vectors of bytes: blocks of 1 to 512 bytes at a 512-byte stride, packing 1 KiB, 1 MiB and 4 MiB;
- 64-byte blocks at a 128-byte stride, packing 1 KiB to 64 MiB;
- the three faces through the middle of a 512 x 512 x 512 float32 cube (``subarray`` with one subsize
  of 1): rows of 2 KiB a plane apart, single 4-byte elements 2 KiB apart, and one contiguous plane.

For each shape and direction (pack: strided -> packed, unpack: packed -> strided) four callables are
timed in interleaved rounds (:func:`pycomm.benchmarks.harness.measure_interleaved`): ``dt.pack`` /
``dt.unpack`` into preallocated buffers; ``MPI_Pack`` / ``MPI_Unpack`` of the MPI library mpi4py loads,
on the same type built with mpi4py's constructors; numpy copying the same strided view
(``np.copyto`` of a strided view, widest element dividing blocks and strides); and memcpy of
the packed bytes (``np.copyto`` of contiguous arrays), the bound. GB/s counts packed bytes.

Before a shape is timed its bytes are checked: pycomm's packed bytes must equal MPI_Pack's and numpy's,
and each engine's unpack must put every byte where the other's pack reads it and touch nothing else.
A shape that fails is not timed; the run reports it loudly and exits with status 1.

Also here: the time to commit a fresh type (pycomm ``Type.commit()`` against ``MPI_Type_commit``),
and, on request, the GPU benchmark of :mod:`.pack_gpu` and the halo exchange of :mod:`.halo` under
``mpiexec -n 2`` with and without pycomm's MPI interposer. MPI is initialised in this process only when
the MPI anchor runs (``mpi4py.MPI`` is imported lazily).
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pycomm import datatype as dt
from pycomm import kernels
from pycomm.cli.output import format_table
from pycomm.errors import InvalidArgumentError, PycommError

from .harness import Measurement, Settings, Timed, measure_interleaved, throughput_ratio
from .units import format_size

__all__ = [
    "DEFINITIONS",
    "GROUPS",
    "BytesCheckFailed",
    "PackShape",
    "format_report",
    "load_mpi",
    "measure_commits",
    "measure_shape",
    "pack_shapes",
    "run_gpu",
    "run_halo_comparison",
    "run_pack",
]

KIB, MIB = 1 << 10, 1 << 20

GROUPS = ("vector", "blocks64", "cube")
VECTOR_STRIDE = 512
VECTOR_BLOCKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
VECTOR_PACKED = (1 * KIB, 1 * MIB, 4 * MIB)
BLOCKS64_PACKED = (1 * KIB, 64 * KIB, 1 * MIB, 16 * MIB, 64 * MIB)
CUBE_EDGE = 512
# --quick keeps each group but only at sizes that fit in cache, so a test run takes seconds.
QUICK_VECTOR_BLOCKS = (1, 64, 512)
QUICK_VECTOR_PACKED = (1 * KIB, 16 * KIB)
QUICK_BLOCKS64_PACKED = (1 * KIB, 64 * KIB)
QUICK_CUBE_EDGE = 32

# The targets printed beside each row: reported, never asserted.
TARGET_MPI = 1.0  # pycomm at least as fast as MPI_Pack / MPI_Unpack, every shape
TARGET_MPI_ROWS = 3.0  # 3x MPI on the cube face of 2 KiB rows
TARGET_MEMCPY = 0.7  # 70% of memcpy for blocks of 256 B and more
TARGET_MEMCPY_MIN_BLOCK = 256

DEFINITIONS = {
    "packed_bytes": "bytes of packed data one call writes (pack) or reads (unpack)",
    "gbps": "packed_bytes / median seconds per call / 1e9, for every system (the bound too)",
    "pycomm": "dt.pack(buf, t, 1, out) / dt.unpack(packed, buf, t) on a committed type, preallocated out",
    "mpi": "MPI_Pack / MPI_Unpack through mpi4py (Datatype.Pack/Unpack) of the same type built with "
    "mpi4py's constructors and committed, one object, buffer sized to its extent",
    "numpy": "np.copyto between a strided view of the buffer (elements of the widest size dividing "
    "block, strides and offset, at most 8 B) and the packed array",
    "memcpy": "np.copyto of a contiguous array of packed_bytes (the bound), timed in the same rounds",
    "pycomm_over_mpi": "pycomm gbps / MPI gbps (medians of the same interleaved rounds; >1: pycomm faster)",
    "pycomm_over_numpy": "pycomm gbps / numpy gbps",
    "of_memcpy": "pycomm gbps / memcpy gbps",
    "targets": f">= {TARGET_MPI:g}x MPI on every row; >= {TARGET_MPI_ROWS:g}x MPI on the cube face of rows; "
    f">= {TARGET_MEMCPY:g} of memcpy for blocks >= {TARGET_MEMCPY_MIN_BLOCK} B (reported, not asserted)",
    "bytes_check": "before timing: pycomm's packed bytes equal MPI_Pack's and numpy's; each engine's "
    "unpack writes exactly where the other's pack reads (the buffer's hash64 is unchanged afterwards)",
    "commit": "median seconds of committing one freshly built type, and of building it (the constructor "
    "calls, timed apart); ratios MPI time / pycomm time (>1: pycomm faster) of commit and of build + commit",
}


@dataclass(frozen=True)
class PackShape:
    """One layout: ``block`` bytes at ``offset + sum(i_k * strides[k])`` for ``i_k < counts[k]``, inside
    a buffer of ``buffer_bytes`` (one object's extent), built with ``constructor(*arguments)``."""

    group: str
    title: str
    label: str
    offset: int
    block: int
    counts: tuple[int, ...]
    strides: tuple[int, ...]
    buffer_bytes: int
    constructor: str  # "vector" (of BYTE) or "subarray" (of FLOAT, C order)
    arguments: tuple[Any, ...]
    row_face: bool = False

    @property
    def packed_bytes(self) -> int:
        return self.block * math.prod(self.counts)


def _vector_shape(group: str, title: str, label: str, block: int, stride: int, packed: int) -> PackShape:
    count = packed // block
    return PackShape(
        group,
        title,
        label,
        0,
        block,
        (count,),
        (stride,),
        (count - 1) * stride + block,
        "vector",
        (count, block, stride),
    )


def _cube_faces(edge: int) -> list[PackShape]:
    title = f"{edge}^3 float cube face"
    row, plane, middle = edge * 4, edge * edge * 4, edge // 2
    sizes = (edge, edge, edge)
    buffer = edge * plane
    return [
        PackShape(
            "cube",
            title,
            f"y = {middle}: {format_size(row)} rows",
            middle * row,
            row,
            (edge,),
            (plane,),
            buffer,
            "subarray",
            (sizes, (edge, 1, edge), (0, middle, 0)),
            row_face=True,
        ),
        PackShape(
            "cube",
            title,
            f"x = {middle}: 4 B elements, stride {format_size(row)}",
            middle * 4,
            4,
            (edge, edge),
            (plane, row),
            buffer,
            "subarray",
            (sizes, (edge, edge, 1), (0, 0, middle)),
        ),
        PackShape(
            "cube",
            title,
            f"z = {middle}: one {format_size(plane)} plane",
            middle * plane,
            plane,
            (1,),
            (plane,),
            buffer,
            "subarray",
            (sizes, (1, edge, edge), (middle, 0, 0)),
        ),
    ]


def pack_shapes(quick: bool = False, groups: Sequence[str] = GROUPS) -> list[PackShape]:
    """Every shape of the run, group by group; ``quick`` keeps each group at in-cache sizes."""
    unknown = [group for group in groups if group not in GROUPS]
    if unknown or not groups:
        raise InvalidArgumentError(
            f"unsupported shape group {', '.join(unknown) or '(none given)'}; choose from {', '.join(GROUPS)}"
        )
    shapes: list[PackShape] = []
    if "vector" in groups:
        for packed in QUICK_VECTOR_PACKED if quick else VECTOR_PACKED:
            for block in QUICK_VECTOR_BLOCKS if quick else VECTOR_BLOCKS:
                label = f"{format_size(packed)} in {block} B blocks"
                title = f"2-D vector, stride {VECTOR_STRIDE} B"
                shapes.append(_vector_shape("vector", title, label, block, VECTOR_STRIDE, packed))
    if "blocks64" in groups:
        for packed in QUICK_BLOCKS64_PACKED if quick else BLOCKS64_PACKED:
            title = "64 B blocks, stride 128 B"
            shapes.append(_vector_shape("blocks64", title, format_size(packed), 64, 128, packed))
    if "cube" in groups:
        shapes += _cube_faces(QUICK_CUBE_EDGE if quick else CUBE_EDGE)
    return shapes


# --- the types, built by each engine ------------------------------------------------------------------
def pycomm_type(shape: PackShape) -> Any:
    if shape.constructor == "vector":
        return dt.vector(*shape.arguments, dt.BYTE)
    sizes, subsizes, starts = shape.arguments
    return dt.subarray(sizes, subsizes, starts, dt.FLOAT)


def mpi_type(shape: PackShape, mpi: Any) -> Any:
    if shape.constructor == "vector":
        return mpi.BYTE.Create_vector(*shape.arguments)
    sizes, subsizes, starts = shape.arguments
    return mpi.FLOAT.Create_subarray(sizes, subsizes, starts, order=mpi.ORDER_C)


def load_mpi() -> tuple[Any | None, str | None]:
    """(mpi4py's ``MPI`` module, None), initialising MPI in this process, or (None, why it cannot run)."""
    from pycomm._deps import require_mpi4py

    try:
        require_mpi4py("the MPI_Pack anchor of pycomm bench pack")
        from mpi4py import MPI
    except PycommError as error:
        return None, str(error)
    except Exception as error:  # mpi4py is there but its MPI library failed to load or initialise
        return None, f"mpi4py could not initialise MPI: {error}"
    return MPI, None


def mpi_description(mpi: Any) -> dict[str, Any]:
    import mpi4py

    return {"library": mpi.Get_library_version().splitlines()[0].strip(), "mpi4py": mpi4py.__version__}


# --- buffers and the bytes check ----------------------------------------------------------------------
class BytesCheckFailed(RuntimeError):
    """Two engines disagree on a shape's bytes: its timings would compare different work."""


def _pattern(nbytes: int) -> np.ndarray:
    """``nbytes`` bytes that vary from place to place, so a byte copied from the wrong place shows."""
    words = np.arange(-(-nbytes // 4), dtype=np.uint32)
    words *= np.uint32(2654435761)  # Knuth's multiplicative hash: a bijection on 32-bit words
    return words.view(np.uint8)[:nbytes]


def _element_bytes(shape: PackShape) -> int:
    """The widest element (1 to 8 bytes) dividing the block, the strides and the offset."""
    common = math.gcd(shape.block, shape.offset, *shape.strides)
    return max(w for w in (1, 2, 4, 8) if common % w == 0)


def _strided_view(buffer: np.ndarray, shape: PackShape) -> np.ndarray:
    word = _element_bytes(shape)
    # numpy checks that every element of the view lies inside the buffer.
    return np.ndarray(
        (*shape.counts, shape.block // word),
        np.dtype(f"u{word}"),
        buffer=buffer,
        offset=shape.offset,
        strides=(*shape.strides, word),
    )


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.size != b.size:
        return f"{a.size} bytes against {b.size}"
    index = int(np.flatnonzero(a != b)[0])
    return f"first difference at packed byte {index}: {int(a[index])} against {int(b[index])}"


def _expect_equal(what: str, shape: PackShape, got: np.ndarray, expected: np.ndarray) -> None:
    if got.size != expected.size or not np.array_equal(got, expected):
        raise BytesCheckFailed(f"{shape.title}, {shape.label}: {what} ({_first_difference(got, expected)})")


class _Engine:
    """One way to pack and unpack the shape's type between ``buffer`` and packed arrays."""

    def __init__(self, name: str, pack: Callable[[np.ndarray], Any], unpack: Callable[[np.ndarray], Any]):
        self.name = name
        self.pack = pack
        self.unpack = unpack


def _check_bytes(shape: PackShape, buffer: np.ndarray, pycomm: _Engine, others: Sequence[_Engine]) -> None:
    """Raises :class:`BytesCheckFailed` unless every engine packs the same bytes as pycomm and the unpacks
    of pycomm and of ``others[0]`` (MPI where it runs) each write exactly where the other packs from."""
    packed_bytes = shape.packed_bytes
    reference = np.empty(packed_bytes, np.uint8)
    pycomm.pack(reference)
    for engine in others:
        got = np.zeros(packed_bytes, np.uint8)
        engine.pack(got)
        _expect_equal(f"{engine.name} packs other bytes than pycomm", shape, got, reference)
    partner = others[0]
    before = kernels.hash64(buffer)
    flipped = reference ^ np.uint8(0xA5)  # differs from the buffer's bytes everywhere the type reads
    for writer, reader in ((pycomm, partner), (partner, pycomm)):
        writer.unpack(flipped)
        got = np.empty(packed_bytes, np.uint8)
        reader.pack(got)
        _expect_equal(f"{reader.name} does not read back what {writer.name} unpacked", shape, got, flipped)
        reader.unpack(reference)  # restores the buffer only if both engines address the same bytes
        if kernels.hash64(buffer) != before:
            raise BytesCheckFailed(
                f"{shape.title}, {shape.label}: {writer.name}'s unpack changed bytes that {reader.name}'s "
                "unpack does not write (bytes outside the type, or a different place)"
            )


# --- timing one shape -----------------------------------------------------------------------------------
def _mpi_engine(shape: PackShape, buffer: np.ndarray, mpi: Any) -> tuple[_Engine, Any]:
    datatype = mpi_type(shape, mpi).Commit()
    lb, extent = datatype.Get_extent()
    if lb != 0 or extent != shape.buffer_bytes:
        datatype.Free()
        raise BytesCheckFailed(
            f"{shape.title}, {shape.label}: MPI reports lb {lb} and extent {extent}, expected 0 and "
            f"{shape.buffer_bytes}"
        )
    comm = mpi.COMM_SELF
    # mpi4py takes the count from len(buffer) // extent: the buffer is exactly one extent long.
    return (
        _Engine(
            "MPI_Pack",
            lambda out: _mpi_pack(datatype, buffer, out, comm, shape.packed_bytes),
            lambda packed: datatype.Unpack(packed, 0, buffer, comm),
        ),
        datatype,
    )


def _mpi_pack(datatype: Any, buffer: np.ndarray, out: np.ndarray, comm: Any, expected: int) -> None:
    position = datatype.Pack(buffer, out, 0, comm)
    if position != expected:
        raise BytesCheckFailed(f"MPI_Pack wrote {position} bytes, expected {expected}")


def _targets(shape: PackShape, over_mpi: float | None, of_memcpy: float) -> list[dict[str, Any]]:
    wanted: list[tuple[str, float, float | None]] = [(f">={TARGET_MPI:g}x MPI", TARGET_MPI, over_mpi)]
    if shape.row_face:
        wanted.append((f">={TARGET_MPI_ROWS:g}x MPI", TARGET_MPI_ROWS, over_mpi))
    if shape.block >= TARGET_MEMCPY_MIN_BLOCK:
        wanted.append((f">={TARGET_MEMCPY:g} memcpy", TARGET_MEMCPY, of_memcpy))
    return [
        {
            "target": name,
            "threshold": threshold,
            "value": value,
            "met": None if value is None else value >= threshold,
        }
        for name, threshold, value in wanted
    ]


def _row(
    shape: PackShape, layout: str, direction: str, measured: Sequence[Measurement], has_mpi: bool
) -> dict[str, Any]:
    pycomm, *anchors, memcpy = measured
    mpi = anchors[0] if has_mpi else None
    numpy = anchors[-1]
    over_mpi = None if mpi is None else throughput_ratio(pycomm, mpi)
    of_memcpy = throughput_ratio(pycomm, memcpy)
    return {
        **_shape_fields(shape, layout, direction),
        "bytes_check": {"passed": True, "compared_with": ["MPI_Pack/MPI_Unpack"] * has_mpi + ["numpy"]},
        "pycomm": pycomm.to_json(),
        "mpi": None if mpi is None else mpi.to_json(),
        "numpy": numpy.to_json(),
        "memcpy": memcpy.to_json(),
        "pycomm_over_mpi": over_mpi,
        "pycomm_over_numpy": throughput_ratio(pycomm, numpy),
        "of_memcpy": of_memcpy,
        "targets": _targets(shape, over_mpi, of_memcpy),
    }


def _shape_fields(shape: PackShape, layout: str, direction: str) -> dict[str, Any]:
    return {
        "group": shape.group,
        "title": shape.title,
        "shape": shape.label,
        "direction": direction,
        "layout": layout,
        "block": shape.block,
        "packed_bytes": shape.packed_bytes,
        "buffer_bytes": shape.buffer_bytes,
        "numpy_element_bytes": _element_bytes(shape),
    }


def failed_rows(shape: PackShape, error: str) -> list[dict[str, Any]]:
    """The rows of a shape whose bytes check failed: no timings, the reason instead."""
    empty = dict.fromkeys(("pycomm", "mpi", "numpy", "memcpy", "pycomm_over_mpi", "pycomm_over_numpy"))
    return [
        {
            **_shape_fields(shape, "", direction),
            "bytes_check": {"passed": False, "error": error},
            **empty,
            "of_memcpy": None,
            "targets": [],
        }
        for direction in ("pack", "unpack")
    ]


def measure_shape(shape: PackShape, mpi: Any | None, settings: Settings) -> list[dict[str, Any]]:
    """Checks the shape's bytes, then times pack and unpack of every system; the pack row and the unpack
    row. Raises :class:`BytesCheckFailed` where the engines disagree (nothing is timed then)."""
    packed_bytes = shape.packed_bytes
    buffer = _pattern(shape.buffer_bytes)
    datatype = pycomm_type(shape).commit()
    if datatype.size != packed_bytes or datatype.extent != shape.buffer_bytes:
        raise BytesCheckFailed(
            f"{shape.title}, {shape.label}: pycomm's type has size {datatype.size} and extent "
            f"{datatype.extent}, expected {packed_bytes} and {shape.buffer_bytes}"
        )
    packed = np.empty(packed_bytes, np.uint8)
    view = _strided_view(buffer, shape)
    pycomm = _Engine(
        "pycomm",
        lambda out: dt.pack(buffer, datatype, 1, out),
        lambda source: dt.unpack(source, buffer, datatype),
    )
    numpy = _Engine(
        "numpy",
        lambda out: np.copyto(out.view(view.dtype).reshape(view.shape), view),
        lambda source: np.copyto(view, source.view(view.dtype).reshape(view.shape)),
    )
    mpi_datatype = None
    engines = [numpy]
    try:
        if mpi is not None:
            mpi_engine, mpi_datatype = _mpi_engine(shape, buffer, mpi)
            engines.insert(0, mpi_engine)
        _check_bytes(shape, buffer, pycomm, engines)
        pycomm.pack(packed)  # the bytes every unpack below writes back: the buffer stays as it is
        target = np.empty_like(packed)
        memcpy = Timed("memcpy (np.copyto)", partial(np.copyto, target, packed), packed_bytes)
        rows = []
        for direction in ("pack", "unpack"):
            timed = [Timed(f"pycomm dt.{direction}", _caller(pycomm, direction, packed), packed_bytes)]
            for engine in engines:
                name = engine.name.replace("Pack", "Unpack") if direction == "unpack" else engine.name
                timed.append(Timed(name, _caller(engine, direction, packed), packed_bytes))
            measured = measure_interleaved([*timed, memcpy], settings)
            rows.append(_row(shape, datatype.describe_layout(), direction, measured, mpi is not None))
        return rows
    finally:
        if mpi_datatype is not None:
            mpi_datatype.Free()


def _caller(engine: _Engine, direction: str, packed: np.ndarray) -> Callable[[], Any]:
    return partial(engine.pack if direction == "pack" else engine.unpack, packed)


# --- commit time ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CommitType:
    name: str
    build_pycomm: Callable[[], Any]
    build_mpi: Callable[[Any], tuple[Any, list[Any]]]  # (the type, inner types to free once it exists)


def _nested_struct_layout() -> tuple[list[int], list[int]]:
    # 1000 blocks of 1 to 3 two-float vectors at irregular, non-overlapping displacements: no single
    # strided block describes them, so commit has to merge and keep an index of segments.
    lengths = [1 + i % 3 for i in range(1000)]
    displacements = [48 * i + 4 * (i % 3) for i in range(1000)]
    return lengths, displacements


def _pycomm_nested_struct() -> Any:
    lengths, displacements = _nested_struct_layout()
    pair = dt.vector(2, 1, 2, dt.FLOAT)
    blocks = dt.hindexed(lengths, displacements, pair)
    return dt.struct([1, 1, 4], [0, 48_008, 48_016], [blocks, dt.INT, dt.DOUBLE])


def _mpi_nested_struct(mpi: Any) -> tuple[Any, list[Any]]:
    lengths, displacements = _nested_struct_layout()
    pair = mpi.FLOAT.Create_vector(2, 1, 2)
    blocks = pair.Create_hindexed(lengths, displacements)
    struct = mpi.Datatype.Create_struct([1, 1, 4], [0, 48_008, 48_016], [blocks, mpi.INT, mpi.DOUBLE])
    return struct, [pair, blocks]


def commit_types() -> list[_CommitType]:
    n = CUBE_EDGE
    return [
        _CommitType(
            "vector: 65536 x 64 B, stride 128 B",
            lambda: dt.vector(65536, 64, 128, dt.BYTE),
            lambda mpi: (mpi.BYTE.Create_vector(65536, 64, 128), []),
        ),
        _CommitType(
            f"subarray 3-D: {n}^3 float, face x = {n // 2}",
            lambda: dt.subarray([n] * 3, [n, n, 1], [0, 0, n // 2], dt.FLOAT),
            lambda mpi: (mpi.FLOAT.Create_subarray([n] * 3, [n, n, 1], [0, 0, n // 2]), []),
        ),
        _CommitType(
            "struct of hindexed (1000 blocks) of vector",
            _pycomm_nested_struct,
            _mpi_nested_struct,
        ),
    ]


def _time_commits(
    build: Callable[[], Any], commit: Callable[[Any], Any], release: Callable[[Any], None], calls: int
) -> tuple[float, float]:
    """(seconds per build, seconds per commit) over ``calls`` fresh types."""
    started = time.perf_counter()
    fresh = [build() for _ in range(calls)]
    built = time.perf_counter()
    for item in fresh:
        commit(item)
    committed = time.perf_counter()
    for item in fresh:
        release(item)
    return (built - started) / calls, (committed - built) / calls


def _commit_systems(kind: _CommitType, mpi: Any | None) -> dict[str, tuple[Callable, Callable, Callable]]:
    systems: dict[str, tuple[Callable, Callable, Callable]] = {
        "pycomm": (kind.build_pycomm, lambda t: t.commit(), lambda t: None)
    }
    if mpi is not None:

        def build_mpi() -> Any:
            outer, inner = kind.build_mpi(mpi)
            for datatype in inner:
                datatype.Free()  # MPI keeps what the outer type needs alive
            return outer

        systems["mpi"] = (build_mpi, lambda t: t.Commit(), lambda t: t.Free())
    return systems


def _check_commit_bytes(kind: _CommitType, mpi: Any) -> None:
    mine = kind.build_pycomm().commit()
    theirs = _commit_systems(kind, mpi)["mpi"][0]().Commit()
    try:
        buffer = _pattern(mine.extent)
        ours, other = np.empty(mine.size, np.uint8), np.zeros(mine.size, np.uint8)
        dt.pack(buffer, mine, 1, ours)
        theirs.Pack(buffer, other, 0, mpi.COMM_SELF)
        if not np.array_equal(ours, other):
            raise BytesCheckFailed(f"commit type {kind.name}: MPI_Pack packs other bytes than pycomm")
    finally:
        theirs.Free()


def measure_commits(mpi: Any | None, settings: Settings) -> list[dict[str, Any]]:
    """Median seconds to build and to commit a fresh type, pycomm and MPI, interleaved in rounds."""
    results = []
    for kind in commit_types():
        if mpi is not None:
            _check_commit_bytes(kind, mpi)
        systems = _commit_systems(kind, mpi)
        calls = {}
        for name, (build, commit, release) in systems.items():
            per_build, per_commit = _time_commits(build, commit, release, 1)
            calls[name] = max(
                3, min(2000, math.ceil(settings.min_time_s / max(per_build + per_commit, 1e-7)))
            )
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in systems}
        names = list(systems)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for round_index in range(settings.warmup + settings.repeat):
                for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                    sample = _time_commits(*systems[name], calls[name])
                    if round_index >= settings.warmup:
                        samples[name].append(sample)
        finally:
            if gc_was_enabled:
                gc.enable()
        entry: dict[str, Any] = {"type": kind.name, "layout": kind.build_pycomm().commit().describe_layout()}
        for name in ("pycomm", "mpi"):
            if name not in samples:
                entry[name] = None
                continue
            entry[name] = {
                "types_per_repeat": calls[name],
                "build_s": [build for build, _ in samples[name]],
                "commit_s": [commit for _, commit in samples[name]],
                "build_median_s": statistics.median(build for build, _ in samples[name]),
                "commit_median_s": statistics.median(commit for _, commit in samples[name]),
                "total_median_s": statistics.median(build + commit for build, commit in samples[name]),
            }
        # MPICH does most of its work in the constructors, so commit alone flatters it: both ratios.
        ours, theirs = entry["pycomm"], entry["mpi"]
        entry["mpi_over_pycomm"] = (
            None if theirs is None else theirs["commit_median_s"] / ours["commit_median_s"]
        )
        entry["mpi_over_pycomm_total"] = (
            None if theirs is None else theirs["total_median_s"] / ours["total_median_s"]
        )
        results.append(entry)
    return results


# --- the GPU benchmark and the halo exchange ----------------------------------------------------------
def run_gpu(quick: bool, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """:mod:`.pack_gpu`'s benchmark: ``{"results": ...}``, ``{"skipped": why}`` where this machine or
    build has no GPU, or ``{"failed": error}``."""
    try:
        from . import pack_gpu
    except ImportError as error:
        return {"skipped": f"the GPU benchmark (benchmarks/pack_gpu.py) could not be imported: {error}"}
    try:
        kwargs: dict[str, Any] = {"repeat": 3} if quick else {}
        results = pack_gpu.run_gpu_pack_benchmark(quick=quick, progress=progress, **kwargs)
    except PycommError as error:  # no CUDA build, no device, no cupy: the message says which
        return {"skipped": str(error)}
    except Exception as error:  # a wrong byte or a CUDA failure: report it, the CPU figures still stand
        return {"failed": f"{type(error).__name__}: {error}"}
    return {"results": results, "table": pack_gpu.format_results(results)}


HALO_METHODS = ("isend", "neighbor")


def run_halo_comparison(
    size: int,
    iterations: int,
    runs: int,
    interposer: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """:mod:`.halo` (``python -m pycomm.benchmarks.halo``) on 2 ranks, each method ``runs`` times with MPI
    alone and as often with the interposer preloaded, alternating; medians of the slowest rank's time.
    Only halo.py's command line and JSON output are relied on, so the program can change underneath."""
    from pycomm.errors import MissingDependencyError

    report: dict[str, Any] = {"ranks": 2, "interior": [size] * 3, "iterations": iterations, "runs": runs}
    if interposer is None:
        from pycomm.info import interposer_path

        try:
            interposer = interposer_path()
        except PycommError as error:
            report["interposer_missing"] = str(error)
    report["interposer"] = interposer
    systems = {"mpi": {}} if interposer is None else {"mpi": {}, "interposer": {"LD_PRELOAD": interposer}}
    report["methods"] = {}
    for method in HALO_METHODS:
        arguments = ("--size", size, "--iterations", iterations, "--method", method, "--json")
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        try:
            for run in range(runs):
                names = list(systems)[run % len(systems) :] + list(systems)[: run % len(systems)]
                for name in names:
                    samples[name].append(_run_halo_once(arguments, systems[name]))
            report["methods"][method] = _halo_summary(samples)
        except MissingDependencyError as error:
            report["skipped"] = str(error)
            break
        except (PycommError, ValueError, KeyError, TypeError) as error:
            report["methods"][method] = {"failed": f"{type(error).__name__}: {error}"[:2000]}
            continue
        if progress is not None:
            entry = report["methods"][method]
            progress(
                f"halo {method}: " + ", ".join(f"{n} {entry[n]['median_s'] * 1e6:.0f} us" for n in systems)
            )
    return report


def _run_halo_once(arguments: Sequence[Any], env: dict[str, str]) -> dict[str, Any]:
    """One ``mpiexec -n 2`` run of halo.py: rank 0's JSON summary (a failed or wrong run raises)."""
    from pycomm.testing import Module, run_mpi

    job = run_mpi(Module("pycomm.benchmarks.halo", *arguments), 2, env=env, timeout=300)
    text = job.ranks[0].stdout
    summary = json.loads(text[text.index("{") :])
    float(summary["seconds_per_exchange"])
    return summary


def _halo_summary(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, runs in samples.items():
        times = [run["seconds_per_exchange"] for run in runs]
        summary[name] = {
            "seconds_per_exchange": times,
            "median_s": statistics.median(times),
            "correct": all(run.get("correct") is True for run in runs),
        }
    if "interposer" in summary:
        hashes = {
            name: [r.get("sha256") for r in runs[0].get("ranks_results", [])]
            for name, runs in samples.items()
        }
        summary["same_bytes"] = hashes["mpi"] == hashes["interposer"] and None not in hashes["mpi"]
        summary["mpi_over_interposer"] = summary["mpi"]["median_s"] / summary["interposer"]["median_s"]
    return summary


# --- the report ---------------------------------------------------------------------------------------------
TABLE_HEADERS = (
    "shape",
    "case",
    "dir",
    "pycomm us",
    "pycomm GB/s",
    "MPI GB/s",
    "numpy GB/s",
    "memcpy GB/s",
    "x MPI",
    "x numpy",
    "of memcpy",
    "IQR %",
    "targets",
)


def _target_cell(row: dict[str, Any]) -> str:
    cells = []
    for target in row["targets"]:
        verdict = "n/a" if target["met"] is None else "PASS" if target["met"] else "MISS"
        cells.append(f"{target['target']} {verdict}")
    return "; ".join(cells)


def _gbps(entry: dict[str, Any] | None) -> Any:
    return "-" if entry is None else entry["gbps"]


def _main_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    table = []
    for row in rows:
        if not row["bytes_check"]["passed"]:
            table.append([row["title"], row["shape"], row["direction"], *["-"] * 9, "BYTES CHECK FAILED"])
            continue
        pycomm = row["pycomm"]
        spread = 100 * (pycomm["q3_s"] - pycomm["q1_s"]) / pycomm["median_s"]
        table.append(
            [
                row["title"],
                row["shape"],
                row["direction"],
                pycomm["median_s"] * 1e6,
                pycomm["gbps"],
                _gbps(row["mpi"]),
                row["numpy"]["gbps"],
                row["memcpy"]["gbps"],
                "-" if row["pycomm_over_mpi"] is None else row["pycomm_over_mpi"],
                row["pycomm_over_numpy"],
                row["of_memcpy"],
                round(spread, 1),
                _target_cell(row),
            ]
        )
    return table


def _target_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    tally: dict[str, list[int]] = {}
    for row in rows:
        for target in row["targets"]:
            if target["met"] is not None:
                tally.setdefault(target["target"], [0, 0])[0 if target["met"] else 1] += 1
    lines = [f"target {name}: {passed} PASS, {missed} MISS" for name, (passed, missed) in tally.items()]
    slower = [r for r in rows if r["pycomm_over_mpi"] is not None and r["pycomm_over_mpi"] < 1]
    for row in slower:
        lines.append(
            f"pycomm slower than MPI: {row['title']}, {row['shape']}, {row['direction']}: "
            f"{row['pycomm_over_mpi']:.2f}x ({row['pycomm']['median_s'] * 1e6:.3g} us against "
            f"{row['mpi']['median_s'] * 1e6:.3g} us)"
        )
    return lines


def _commit_table(commits: Sequence[dict[str, Any]]) -> str:
    rows = []
    for entry in commits:
        pycomm, mpi = entry["pycomm"], entry["mpi"]
        rows.append(
            [
                entry["type"],
                entry["layout"] if len(entry["layout"]) <= 40 else entry["layout"][:37] + "...",
                pycomm["build_median_s"] * 1e6,
                pycomm["commit_median_s"] * 1e6,
                "-" if mpi is None else mpi["build_median_s"] * 1e6,
                "-" if mpi is None else mpi["commit_median_s"] * 1e6,
                "-" if mpi is None else entry["mpi_over_pycomm"],
                "-" if mpi is None else entry["mpi_over_pycomm_total"],
            ]
        )
    headers = (
        "type",
        "pycomm layout",
        "pycomm build us",
        "commit us",
        "MPI build us",
        "Commit us",
        "commit MPI/pycomm",
        "build+commit MPI/pycomm",
    )
    return format_table(headers, rows)


def _halo_lines(halo: dict[str, Any]) -> list[str]:
    lines = [
        f"halo exchange, {halo['ranks']} ranks, interior {halo['interior']} float64 per rank, "
        f"{halo['iterations']} exchanges a run, {halo['runs']} run(s) each; medians of the slowest rank"
    ]
    if "skipped" in halo:
        lines.append(f"  not run: {halo['skipped']}")
    if "interposer_missing" in halo:
        lines.append(f"  with the interposer: not run: {halo['interposer_missing']}")
    for method, entry in halo["methods"].items():
        if "failed" in entry:
            lines.append(f"  {method}: failed: {entry['failed']}")
            continue
        text = f"  {method}: MPI alone {entry['mpi']['median_s'] * 1e6:.1f} us"
        if "interposer" in entry:
            text += (
                f", interposer {entry['interposer']['median_s'] * 1e6:.1f} us "
                f"({entry['mpi_over_interposer']:.2f}x), same bytes: {entry['same_bytes']}"
            )
        correct = all(v["correct"] for k, v in entry.items() if k in ("mpi", "interposer"))
        lines.append(text + ("" if correct else "; RESULT WRONG"))
    return lines


def format_report(document: dict[str, Any]) -> str:
    """The tables of a run: pack/unpack per shape with targets, commit times, then GPU and halo if run."""
    machine, settings = document["machine"], document["settings"]
    mpi = document["mpi"]
    lines = [
        f"pycomm {machine['pycomm']} bench pack: {machine['cpu_model']}, {machine['usable_cores']} usable "
        f"core(s), numpy {machine['numpy']}, {machine['date']}",
        f"{settings['repeat']} repetitions of >= {settings['min_time_s'] * 1000:g} ms each, interleaved; "
        "medians. "
        + (
            f"MPI: {mpi['library']} (mpi4py {mpi['mpi4py']})"
            if mpi["available"]
            else f"MPI: not run: {mpi['reason']}"
        ),
        "GB/s = packed bytes / median time; x MPI = pycomm/MPI_Pack (pack) or pycomm/MPI_Unpack (unpack); "
        "x numpy = pycomm/np.copyto of the strided view; of memcpy = pycomm/np.copyto of the packed bytes",
        "",
        format_table(TABLE_HEADERS, _main_rows(document["rows"])),
        "",
        *_target_summary(document["rows"]),
        "",
        "type commit (a fresh type each time; build = the constructor calls):",
        _commit_table(document["commit"]),
    ]
    gpu = document.get("gpu")
    if gpu is not None:
        lines.append("")
        if "results" in gpu:
            lines.append(gpu["table"])
        else:
            verdict, why = ("skipped", gpu["skipped"]) if "skipped" in gpu else ("FAILED", gpu["failed"])
            lines.append(f"GPU pack: {verdict}: {why}")
    halo = document.get("halo")
    if halo is not None:
        lines += ["", *_halo_lines(halo)]
    for failure in document["failures"]:
        lines.append(f"FAILED: {failure}")
    return "\n".join(lines)


# --- the whole run ------------------------------------------------------------------------------------------
HALO_SIZE, QUICK_HALO_SIZE = 64, 8
HALO_ITERATIONS, QUICK_HALO_ITERATIONS = 50, 2
HALO_RUNS, QUICK_HALO_RUNS = 3, 1


def run_pack(
    options: dict[str, Any],
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every shape, the commit times, then the GPU benchmark and the halo exchange where ``options``
    asks for them (``quick``, ``groups``, ``gpu``, ``halo``, ``interposer``). A shape whose bytes check
    fails is reported in ``failures`` and its rows carry the reason instead of timings."""
    from .machine import machine_info

    started = time.perf_counter()
    shapes = pack_shapes(options["quick"], options["groups"])
    mpi, reason = load_mpi()
    document: dict[str, Any] = {
        "benchmark": "pack",
        "machine": machine_info(),
        "mpi": {"available": True, **mpi_description(mpi)} if mpi else {"available": False, "reason": reason},
        "settings": settings.to_json(),
        "options": dict(options),
        "definitions": DEFINITIONS,
        "rows": [],
        "commit": [],
        "gpu": None,
        "halo": None,
        "failures": [],
    }
    for index, shape in enumerate(shapes):
        if progress is not None:
            progress(f"[{index + 1}/{len(shapes)}] {shape.title}: {shape.label}")
        try:
            document["rows"] += measure_shape(shape, mpi, settings)
        except BytesCheckFailed as error:
            message = f"bytes check failed, not timed: {error}"
            if progress is not None:
                progress(f"!!! {message}")
            document["failures"].append(message)
            document["rows"] += failed_rows(shape, str(error))
        gc.collect()  # give the large buffers back before the next shape allocates its own
    if progress is not None:
        progress("type commit times")
    try:
        document["commit"] = measure_commits(mpi, settings)
    except BytesCheckFailed as error:
        document["failures"].append(f"bytes check failed, commit times not measured: {error}")
    if options["gpu"]:
        document["gpu"] = run_gpu(options["quick"], progress)
        if "failed" in document["gpu"]:
            document["failures"].append(f"GPU benchmark: {document['gpu']['failed']}")
    if options["halo"]:
        quick = options["quick"]
        document["halo"] = run_halo_comparison(
            QUICK_HALO_SIZE if quick else HALO_SIZE,
            QUICK_HALO_ITERATIONS if quick else HALO_ITERATIONS,
            QUICK_HALO_RUNS if quick else HALO_RUNS,
            options.get("interposer"),
            progress,
        )
        for method, entry in document["halo"]["methods"].items():
            if "failed" in entry:
                document["failures"].append(f"halo exchange ({method}): {entry['failed']}")
            elif entry.get("same_bytes") is False or not all(
                entry[n]["correct"] for n in ("mpi", "interposer") if n in entry
            ):
                document["failures"].append(f"halo exchange ({method}): a wrong result, or different bytes")
    document["seconds"] = time.perf_counter() - started
    return document
