"""MPI derived datatypes: build or decode a type, see its canonical form, pack and unpack it.

A :class:`Type` is built with the MPI constructors (:func:`vector`, :func:`subarray`, :func:`struct`,
...) from the named types (:data:`FLOAT`, :data:`INT`, ...), or decoded from any mpi4py datatype with
:func:`from_mpi`. Like an MPI type it must be committed (:meth:`Type.commit`) before it packs; commit
computes its canonical layout once and keeps it. :func:`pack` writes exactly the bytes ``MPI_Pack``
writes, in the same order; :func:`unpack` is its inverse. Both take numpy arrays (or any buffer) on
the CPU and, where the CUDA part is built and a GPU is present, cupy arrays or other CUDA arrays.

    from pycomm import datatype as dt
    column = dt.vector(512, 1, 512, dt.FLOAT).commit()
    packed = dt.pack(matrix, column)        # 2 KiB: one column of a 512 x 512 float32 matrix
    dt.unpack(packed, other, column)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pycomm._native import core
from pycomm.datatype._named import NAMED
from pycomm.errors import InvalidArgumentError

_datatype = core.datatype

__all__ = [
    "StridedBlock",
    "Type",
    "contiguous",
    "darray",
    "dup",
    "from_mpi",
    "hindexed",
    "hindexed_block",
    "hvector",
    "indexed",
    "indexed_block",
    "pack",
    "pack_size",
    "recv",
    "resized",
    "send",
    "struct",
    "subarray",
    "unpack",
    "vector",
    *NAMED,
]


@dataclass(frozen=True)
class StridedBlock:
    """The canonical N-D strided form of a type: ``block`` contiguous bytes at
    ``offset + sum(i_k * strides[k])`` for every index ``i_k < counts[k]``, packed with the first
    dimension slowest. ``counts`` is empty for a single contiguous block."""

    offset: int
    block: int
    counts: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.counts)


class Type:
    """An MPI datatype: immutable, usable once committed."""

    __slots__ = ("_committed", "_fast", "_freed", "_native")

    def __init__(self, native: Any, *, committed: bool = False) -> None:
        self._native = native
        self._committed = committed
        self._freed = False
        # The native type's address while committed and live (None otherwise): what the C fast
        # path of pack/unpack reads. Valid because this object keeps `_native` alive.
        self._fast = _datatype.address(native) if committed else None

    # --- what MPI reports -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes of data in one object (what ``MPI_Type_size`` reports and ``pack`` writes)."""
        return self._native.size

    @property
    def extent(self) -> int:
        """Distance between consecutive objects (``MPI_Type_get_extent``)."""
        return self._native.extent

    @property
    def lb(self) -> int:
        return self._native.lb

    @property
    def ub(self) -> int:
        return self._native.ub

    @property
    def true_lb(self) -> int:
        """Offset of the first data byte (``MPI_Type_get_true_extent``)."""
        return self._native.true_lb

    @property
    def true_extent(self) -> int:
        return self._native.true_extent

    @property
    def combiner(self) -> str:
        """The constructor that made this type ("vector", "struct", ... or "named")."""
        return self._native.combiner

    @property
    def committed(self) -> bool:
        return self._committed and not self._freed

    # --- canonical form ---------------------------------------------------------------------------
    @property
    def strided(self) -> StridedBlock | None:
        """The canonical N-D strided block, or None where the layout has pieces no single block
        describes (an indexed or struct type whose blocks do not line up)."""
        form = self._live().strided()
        if form is None:
            return None
        return StridedBlock(form["offset"], form["block"], tuple(form["counts"]), tuple(form["strides"]))

    def describe_layout(self) -> str:
        """The canonical layout, e.g. ``[@0 512x2048 4B]``: offset, loops (count x stride) and block."""
        return self._live().describe_layout()

    def layout_stats(self) -> dict[str, int | bool]:
        """segments, blocks, smallest_block and whether the layout is one strided block."""
        return dict(self._live().layout_stats())

    # --- lifecycle --------------------------------------------------------------------------------
    def commit(self) -> Type:
        """Computes and caches the canonical layout; returns the type, so ``t = dt.vector(...).commit()``."""
        self._live().commit()
        self._committed = True
        self._fast = _datatype.address(self._native)
        return self

    def free(self) -> None:
        """Marks the type freed: using it afterwards raises. Types built from it stay valid."""
        self._freed = True
        self._fast = None

    def dup(self) -> Type:
        return dup(self)

    def _live(self) -> Any:
        if self._freed:
            raise InvalidArgumentError("the datatype was freed")
        return self._native

    def _committed_native(self) -> Any:
        native = self._live()
        if not self._committed:
            raise InvalidArgumentError(
                f"the {self.combiner} datatype is not committed: call .commit() before packing with it"
            )
        return native

    def __repr__(self) -> str:
        state = "freed" if self._freed else "committed" if self._committed else "uncommitted"
        return f"<pycomm.datatype.Type {self.combiner} size={self.size} extent={self.extent} {state}>"


def _native(old: Any, role: str = "oldtype") -> Any:
    if not isinstance(old, Type):
        raise InvalidArgumentError(f"{role} must be a pycomm.datatype.Type, got {type(old).__name__}")
    return old._live()


def _integers(values: Sequence[int], role: str) -> list[int]:
    """A flat list of ints; floats and other kinds are refused, not truncated."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{role} must be a sequence of integers: {error}") from error
    if array.size and (array.dtype.kind not in "iu" or array.dtype == np.bool_):
        raise InvalidArgumentError(f"{role} must be a sequence of integers, got {array.dtype} values")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise InvalidArgumentError(f"{role}: a value does not fit in 64 bits")
    return array.astype(np.int64).reshape(-1).tolist()


def _integer(value: int, role: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{role} must be an int, got {value!r}")
    return int(value)


# --- constructors (MPI_Type_create_* ; counts in the units MPI uses) -------------------------------
def contiguous(count: int, oldtype: Type) -> Type:
    return Type(_datatype.contiguous(_integer(count, "count"), _native(oldtype)))


def vector(count: int, blocklength: int, stride: int, oldtype: Type) -> Type:
    """``count`` blocks of ``blocklength`` elements, ``stride`` elements apart."""
    return Type(
        _datatype.vector(
            _integer(count, "count"),
            _integer(blocklength, "blocklength"),
            _integer(stride, "stride"),
            _native(oldtype),
        )
    )


def hvector(count: int, blocklength: int, stride: int, oldtype: Type) -> Type:
    """Like :func:`vector` with ``stride`` in bytes."""
    return Type(
        _datatype.hvector(
            _integer(count, "count"),
            _integer(blocklength, "blocklength"),
            _integer(stride, "stride"),
            _native(oldtype),
        )
    )


def indexed(blocklengths: Sequence[int], displacements: Sequence[int], oldtype: Type) -> Type:
    return Type(
        _datatype.indexed(
            _integers(blocklengths, "blocklengths"),
            _integers(displacements, "displacements"),
            _native(oldtype),
        )
    )


def hindexed(blocklengths: Sequence[int], displacements: Sequence[int], oldtype: Type) -> Type:
    """Like :func:`indexed` with ``displacements`` in bytes."""
    return Type(
        _datatype.hindexed(
            _integers(blocklengths, "blocklengths"),
            _integers(displacements, "displacements"),
            _native(oldtype),
        )
    )


def indexed_block(blocklength: int, displacements: Sequence[int], oldtype: Type) -> Type:
    return Type(
        _datatype.indexed_block(
            _integer(blocklength, "blocklength"), _integers(displacements, "displacements"), _native(oldtype)
        )
    )


def hindexed_block(blocklength: int, displacements: Sequence[int], oldtype: Type) -> Type:
    return Type(
        _datatype.hindexed_block(
            _integer(blocklength, "blocklength"), _integers(displacements, "displacements"), _native(oldtype)
        )
    )


def struct(blocklengths: Sequence[int], displacements: Sequence[int], types: Sequence[Type]) -> Type:
    """MPI_Type_create_struct: ``displacements`` in bytes, one type per block."""
    natives = [_native(t, f"types[{i}]") for i, t in enumerate(types)]
    return Type(
        _datatype.struct(
            _integers(blocklengths, "blocklengths"), _integers(displacements, "displacements"), natives
        )
    )


def subarray(
    sizes: Sequence[int], subsizes: Sequence[int], starts: Sequence[int], oldtype: Type, order: str = "C"
) -> Type:
    """The block ``starts[k] : starts[k] + subsizes[k]`` of an array of shape ``sizes``; ``order``
    "C" (last index fastest) or "F"."""
    return Type(
        _datatype.subarray(
            _integers(sizes, "sizes"),
            _integers(subsizes, "subsizes"),
            _integers(starts, "starts"),
            str(order),
            _native(oldtype),
        )
    )


DISTRIBUTE_DFLT_DARG: int = _datatype.DEFAULT_DISTRIBUTION_ARGUMENT


def darray(
    size: int,
    rank: int,
    gsizes: Sequence[int],
    distribs: Sequence[str],
    dargs: Sequence[int],
    psizes: Sequence[int],
    oldtype: Type,
    order: str = "C",
) -> Type:
    """MPI_Type_create_darray: process ``rank``'s part of a ``gsizes`` array distributed over a
    ``psizes`` process grid; ``distribs`` "block", "cyclic" or "none"; ``dargs`` the block sizes
    (:data:`DISTRIBUTE_DFLT_DARG` for MPI's default)."""
    return Type(
        _datatype.darray(
            _integer(size, "size"),
            _integer(rank, "rank"),
            _integers(gsizes, "gsizes"),
            [str(d) for d in distribs],
            _integers(dargs, "dargs"),
            _integers(psizes, "psizes"),
            str(order),
            _native(oldtype),
        )
    )


def resized(oldtype: Type, lb: int, extent: int) -> Type:
    """MPI_Type_create_resized: the same data with lower bound ``lb`` and extent ``extent``."""
    return Type(_datatype.resized(_integer(lb, "lb"), _integer(extent, "extent"), _native(oldtype)))


def dup(oldtype: Type) -> Type:
    return Type(_datatype.dup(_native(oldtype)))


def _named_type(name: str) -> Type:
    return Type(NAMED[name], committed=True)


globals().update({name: _named_type(name) for name in NAMED})


# --- pack / unpack ---------------------------------------------------------------------------------
def _is_gpu_array(array: Any) -> bool:
    if hasattr(array, "__cuda_array_interface__"):
        return True
    device = getattr(array, "__dlpack_device__", None)
    if device is None or isinstance(array, np.ndarray):
        return False
    try:
        kind, _ = device()
    except Exception:  # an object whose DLPack hook fails is not a GPU array we can use
        return False
    return int(kind) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def _usable(t: Any) -> Any:
    """The native type of a committed, live pycomm Type; raises saying what is wrong otherwise."""
    if not isinstance(t, Type):
        raise InvalidArgumentError(f"t must be a pycomm.datatype.Type, got {type(t).__name__}")
    return t._native if t._committed and not t._freed else t._committed_native()


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise InvalidArgumentError(f"count must be an int, got {count!r}")
    if count < 0:
        raise InvalidArgumentError(f"count must be >= 0, got {count}")
    return int(count)


def _as_bytes(array: Any, role: str, writable: bool) -> Any:
    if isinstance(array, np.ndarray):
        if not array.flags.c_contiguous:
            raise InvalidArgumentError(
                f"{role} must be C-contiguous (the type describes the layout inside it)"
            )
        if writable and not array.flags.writeable:
            raise InvalidArgumentError(f"{role} is read-only")
        return array
    try:
        view = memoryview(array)
    except TypeError as error:
        raise InvalidArgumentError(
            f"{role} must be a numpy array, a buffer or a CUDA array, got {type(array).__name__}"
        ) from error
    if writable and view.readonly:
        raise InvalidArgumentError(f"{role} is read-only")
    return view


def pack_size(t: Type, count: int = 1) -> int:
    """Bytes :func:`pack` writes for ``count`` objects (exact, unlike ``MPI_Pack_size``'s bound)."""
    return _check_count(count) * t._live().size


def _pack(
    buf: Any,
    t: Type,
    count: int = 1,
    out: Any = None,
    *,
    offset: int = 0,
    first: int = 0,
    max_bytes: int | None = None,
) -> Any:
    """Packs ``count`` objects of ``t`` from ``buf`` in ``MPI_Pack``'s byte order.

    The type's origin (displacement 0) is ``offset`` bytes into ``buf``; every byte the type touches
    must lie inside ``buf``. Returns the packed bytes: ``out`` (trimmed to what was written) when
    given, else a new uint8 array. ``first`` and ``max_bytes`` select a piece of the packed stream
    (packed bytes ``[first, first + max_bytes)``), for pipelining a large object.
    """
    native = t._native if type(t) is Type and t._committed and not t._freed else _usable(t)
    if type(count) is not int or count < 0:
        count = _check_count(count)
    # numpy arrays first: the common case pays for no GPU probing.
    if type(buf) is not np.ndarray:
        if _is_gpu_array(buf):
            if first or max_bytes is not None:
                raise InvalidArgumentError("first and max_bytes are supported for CPU buffers only")
            from pycomm.datatype import _gpu

            return _gpu.pack_gpu(buf, t, count, out, offset=offset)
        buf = _as_bytes(buf, "buf", writable=False)
    if max_bytes is None:
        limit = -1  # everything from `first` on
    elif max_bytes < 0:
        raise InvalidArgumentError(f"max_bytes must be >= 0, got {max_bytes}")
    else:
        limit = int(max_bytes)
    if out is None:
        # A pack of nothing checks buf, count and offset before the output is allocated.
        _datatype.pack(native, buf, count, _NO_BYTES, offset, first, 0)
        total = count * native.size
        wanted = max(0, total - first if limit < 0 else min(total - first, limit))
        out = np.empty(wanted, dtype=np.uint8)
        written = _datatype.pack(native, buf, count, out, offset, first, limit)
        return out if written == wanted else out[:written]
    if type(out) is np.ndarray:
        written = _datatype.pack(native, buf, count, out, offset, first, limit)
        # An output of exactly the packed size comes back as it is, whatever its dtype and shape.
        return out if out.nbytes == written else _trimmed(out, written)
    written = _datatype.pack(native, buf, count, _as_bytes(out, "out", writable=True), offset, first, limit)
    return _trimmed(out, written)


_NO_BYTES = np.empty(0, dtype=np.uint8)


def _trimmed(out: Any, nbytes: int) -> Any:
    if isinstance(out, np.ndarray):
        flat = out.reshape(-1).view(np.uint8)
        return flat[:nbytes]
    return memoryview(out).cast("B")[:nbytes]


def _unpack(
    packed: Any,
    buf: Any,
    t: Type,
    count: int = 1,
    *,
    offset: int = 0,
    first: int = 0,
    max_bytes: int | None = None,
) -> int:
    """Scatters packed bytes into ``count`` objects of ``t`` in ``buf`` (the inverse of :func:`pack`);
    returns the bytes consumed. ``first``/``max_bytes`` place a piece of the packed stream."""
    native = t._native if type(t) is Type and t._committed and not t._freed else _usable(t)
    if type(count) is not int or count < 0:
        count = _check_count(count)
    if type(buf) is not np.ndarray and _is_gpu_array(buf):
        if first or max_bytes is not None:
            raise InvalidArgumentError("first and max_bytes are supported for CPU buffers only")
        from pycomm.datatype import _gpu

        return _gpu.unpack_gpu(packed, buf, t, count, offset=offset)
    if max_bytes is None:
        max_bytes = -1  # everything from `first` on
    elif max_bytes < 0:
        raise InvalidArgumentError(f"max_bytes must be >= 0, got {max_bytes}")
    source = packed if type(packed) is np.ndarray else _as_bytes(packed, "packed", writable=False)
    target = buf if type(buf) is np.ndarray else _as_bytes(buf, "buf", writable=True)
    return _datatype.unpack(native, source, target, count, offset, first, max_bytes)


_PACK_SIGNATURE = "pack(buf, t, count=1, out=None, *, offset=0, first=0, max_bytes=None)\n--\n\n"
_UNPACK_SIGNATURE = "unpack(packed, buf, t, count=1, *, offset=0, first=0, max_bytes=None)\n--\n\n"

if TYPE_CHECKING:
    pack = _pack
    unpack = _unpack
else:
    # The common case (numpy arrays, a committed type, a given output, whole objects) runs in C
    # without pybind11's dispatch; everything else, errors included, in _pack/_unpack above.
    pack, unpack = _datatype.install_fast_path(
        _pack,
        _unpack,
        "_fast",
        _PACK_SIGNATURE + (_pack.__doc__ or ""),
        _UNPACK_SIGNATURE + (_unpack.__doc__ or ""),
    )


def from_mpi(datatype: Any) -> Type:
    """Decodes an mpi4py datatype (any constructor, any nesting) into a committed :class:`Type`."""
    from pycomm.datatype._mpi import decode

    return Type(decode(datatype), committed=True)


def send(
    comm: Any, buf: Any, t: Type, dest: int, tag: int = 0, count: int = 1, *, method: str | None = None
) -> str:
    """Sends ``count`` objects of ``t`` from ``buf`` (host or GPU) to rank ``dest`` of an mpi4py
    communicator as packed bytes, GPU data by the send method the model picks (or ``method``); returns
    the method used. See :mod:`pycomm.datatype.mpi_send`."""
    from pycomm.datatype import mpi_send

    return mpi_send.send(comm, buf, t, dest, tag, count, method=method)


def recv(
    comm: Any, buf: Any, t: Type, source: int, tag: int = 0, count: int = 1, *, method: str | None = None
) -> str:
    """Receives what :func:`send` sent (or any ``MPI.BYTE``/``MPI.PACKED`` message of the packed size)
    into ``count`` objects of ``t`` in ``buf``; returns the method used."""
    from pycomm.datatype import mpi_send

    return mpi_send.recv(comm, buf, t, source, tag, count, method=method)
