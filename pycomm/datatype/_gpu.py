"""GPU buffers in pycomm.datatype: pack and unpack of data that lives on a CUDA device.

A GPU buffer is anything exposing ``__cuda_array_interface__`` (cupy arrays, torch CUDA tensors, numba
device arrays) or a DLPack CUDA tensor (``__dlpack__`` with a CUDA ``__dlpack_device__``). Like a host
buffer it is raw memory: the type says which bytes of it are data, the buffer itself must be
contiguous. The type's origin (displacement 0) lies ``offset`` bytes into the buffer (default 0), and
every byte the objects touch must lie inside the buffer, exactly as for host buffers.

The work runs on a stream: the one given, else the stream the buffer's producer names in its
interface, else cupy's current stream, else the legacy default stream. Calls return once the kernel
is enqueued; read the result on that stream (or after synchronising it), as with any cupy operation.
When pycomm allocates the output, cupy's current stream is made to wait for the kernel, so the returned
array is safe to use there.

The flat table of each (type, count) is prepared once (:class:`pycomm._cuda.PackPlan`, which also
keeps its device copy) and kept in a small cache.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pycomm._deps import require_cupy
from pycomm._native import core
from pycomm.errors import InvalidArgumentError, NotSupportedError

__all__ = ["is_gpu_buffer", "pack_gpu", "unpack_gpu"]

# DLPack device types (dlpack.h): memory a CUDA kernel can address.
_DLPACK_CUDA = 2
_DLPACK_CUDA_HOST = 3
_DLPACK_CUDA_MANAGED = 13
_DLPACK_GPU_DEVICES = (_DLPACK_CUDA, _DLPACK_CUDA_HOST, _DLPACK_CUDA_MANAGED)

_PLAN_CACHE_SIZE = 64  # (type, count) pairs whose prepared tables are kept


@dataclass(frozen=True)
class GpuBuffer:
    """The memory behind a GPU buffer: first byte, size, and the stream its producer named (None
    when it named none). ``owner`` keeps alive whatever the pointer was borrowed from."""

    pointer: int
    nbytes: int
    readonly: bool
    stream: int | None
    owner: Any = None


def _cuda(feature: str) -> ModuleType:
    """pycomm._cuda, or NotSupportedError saying why GPU buffers cannot be used here."""
    if not core.build_info()["cuda"]:
        raise NotSupportedError(
            f"{feature} needs the CUDA part of pycomm, which this build does not have "
            "(no CUDA compiler was found when it was built)"
        )
    from pycomm import _cuda

    status = _cuda.runtime_status()
    if status["devices"] == 0:
        raise NotSupportedError(f"{feature} needs a CUDA device: {status.get('reason', 'none found')}")
    return _cuda


def is_gpu_buffer(obj: Any) -> bool:
    """Whether ``obj`` is memory on a CUDA device (``__cuda_array_interface__`` or a DLPack CUDA
    tensor); such buffers go to :func:`pack_gpu` / :func:`unpack_gpu`."""
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    device = getattr(obj, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        return int(device()[0]) in _DLPACK_GPU_DEVICES
    except Exception:  # a producer that cannot say where it lives is not a GPU buffer we can use
        return False


def _contiguous_bytes(
    shape: tuple[int, ...], strides: tuple[int, ...] | None, itemsize: int, role: str
) -> int:
    """Bytes of a contiguous (C or Fortran order) array; InvalidArgumentError for any other layout,
    whose memory has holes that the type's offsets would not account for."""
    count = math.prod(shape)
    if strides is None or count == 0:
        return count * itemsize
    for order in (reversed(range(len(shape))), range(len(shape))):
        expected, contiguous = itemsize, True
        for axis in order:
            contiguous &= shape[axis] <= 1 or strides[axis] == expected
            expected *= shape[axis]
        if contiguous:
            return count * itemsize
    raise InvalidArgumentError(
        f"{role}: a GPU buffer must be contiguous (the datatype describes where its data is); "
        f"got shape {shape} with byte strides {strides}"
    )


def _from_cuda_array_interface(interface: dict[str, Any], owner: Any, role: str) -> GpuBuffer:
    shape = tuple(int(n) for n in interface["shape"])
    itemsize = np.dtype(interface["typestr"]).itemsize
    strides = interface.get("strides")
    nbytes = _contiguous_bytes(shape, None if strides is None else tuple(strides), itemsize, role)
    pointer, readonly = interface["data"]
    stream = interface.get("stream")
    return GpuBuffer(
        int(pointer or 0), nbytes, bool(readonly), None if stream is None else int(stream), owner
    )


# DLPack's C structures (dlpack.h, the unversioned "dltensor" capsule every producer supports).
class _DLDevice(ctypes.Structure):
    _fields_ = (("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32))


class _DLDataType(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16))


class _DLTensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    )


class _DLManagedTensor(ctypes.Structure):
    _fields_ = (("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p))


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)


def _from_dlpack(obj: Any, stream: int | None, role: str, allowed_devices: tuple[int, ...]) -> GpuBuffer:
    """Reads a DLPack tensor's memory without taking ownership: the capsule is never renamed, so its
    destructor releases the producer's reference, and ``obj`` keeps the memory alive meanwhile."""
    device_type = int(obj.__dlpack_device__()[0])
    if device_type not in allowed_devices:
        raise InvalidArgumentError(f"{role}: a DLPack tensor on device type {device_type} is not GPU memory")
    # The producer orders its pending work before `stream` (the consumer's), per the DLPack protocol.
    if stream is None or device_type not in _DLPACK_GPU_DEVICES:
        capsule = obj.__dlpack__()
    else:
        capsule = obj.__dlpack__(stream=stream)
    managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    tensor = managed.dl_tensor
    shape = tuple(tensor.shape[k] for k in range(tensor.ndim))
    itemsize = (tensor.dtype.bits * tensor.dtype.lanes + 7) // 8
    strides = None if not tensor.strides else tuple(tensor.strides[k] * itemsize for k in range(tensor.ndim))
    nbytes = _contiguous_bytes(shape, strides, itemsize, role)
    pointer = (tensor.data or 0) + tensor.byte_offset
    return GpuBuffer(pointer, nbytes, False, stream, (obj, capsule))


def _current_cupy_stream() -> int | None:
    """cupy's current stream when cupy is already in use (importing it only to ask would be slow)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return None
    pointer = cupy.cuda.get_current_stream().ptr
    return 1 if pointer == 0 else int(pointer)


def _gpu_buffer(obj: Any, role: str, stream: int | None) -> GpuBuffer:
    interface = getattr(obj, "__cuda_array_interface__", None)
    if interface is not None:
        return _from_cuda_array_interface(interface, obj, role)
    if hasattr(obj, "__dlpack_device__"):
        return _from_dlpack(obj, stream, role, _DLPACK_GPU_DEVICES)
    raise InvalidArgumentError(
        f"{role}: expected a GPU buffer (an object with __cuda_array_interface__, such as a cupy array or "
        f"a torch CUDA tensor, or a DLPack CUDA tensor), got {type(obj).__name__}"
    )


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise InvalidArgumentError(f"count must be an integer, got {type(count).__name__}")
    if count < 0:
        raise InvalidArgumentError(f"count must be >= 0, got {count}")
    return int(count)


_plans: OrderedDict[tuple[int, int], tuple[Any, Any]] = OrderedDict()
_plans_lock = threading.Lock()


def native_type(datatype: Any) -> Any:
    """The ``pycomm._core.datatype.Type`` of a public type (or the native type itself)."""
    return getattr(datatype, "_native", datatype)


def plan_for(datatype: Any, count: int, cuda: ModuleType) -> Any:
    """The prepared table of ``count`` objects of ``datatype``, from the cache when it is there."""
    native = native_type(datatype)
    # Keyed by identity; the entry holds the type, so the id cannot be reused while it is cached.
    key = (id(native), count)
    with _plans_lock:
        entry = _plans.get(key)
        if entry is not None:
            _plans.move_to_end(key)
            return entry[1]
    plan = cuda.PackPlan(np.ascontiguousarray(native.flat_table(count), dtype=np.int64))
    with _plans_lock:
        _plans[key] = (native, plan)
        while len(_plans) > _PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    return plan


def _origin(plan: Any, data: GpuBuffer, count: int, offset: int, role: str) -> int:
    """The origin's address, checked so that every byte the objects touch lies inside the buffer."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise InvalidArgumentError(f"offset must be an integer, got {type(offset).__name__}")
    begin, end = plan.span
    if begin < end and (offset + begin < 0 or offset + end > data.nbytes):
        raise InvalidArgumentError(
            f"{role} is too small: {count} object(s) of this type touch bytes [{begin}, {end}) from the "
            f"origin, which lies {offset} bytes into a buffer of {data.nbytes} bytes"
        )
    return data.pointer + int(offset)


def _launch_stream(stream: int | None, *buffers: GpuBuffer) -> int:
    if stream is not None:
        return int(stream)
    for buffer in buffers:
        if buffer.stream is not None:
            return buffer.stream
    current = _current_cupy_stream()
    return 1 if current is None else current


def _cupy_waits_for(cupy: ModuleType, stream: int) -> None:
    """Makes cupy's current stream wait for work enqueued on ``stream``."""
    current = cupy.cuda.get_current_stream()
    if (current.ptr or 1) == (stream or 1):
        return
    event = cupy.cuda.Event(disable_timing=True)
    event.record(cupy.cuda.Stream.null if stream in (0, 1) else cupy.cuda.ExternalStream(stream))
    current.wait_event(event)


def _allocate_packed(nbytes: int, data: GpuBuffer) -> Any:
    cupy = require_cupy("allocating the packed GPU array")
    device = cupy.cuda.runtime.pointerGetAttributes(data.pointer).device if data.nbytes else None
    if device is None or device < 0:
        return cupy.empty(nbytes, dtype=cupy.uint8)
    with cupy.cuda.Device(device):
        return cupy.empty(nbytes, dtype=cupy.uint8)


def pack_gpu(
    buf: Any,
    type: Any,
    count: int = 1,
    out: Any = None,
    *,
    offset: int = 0,
    stream: int | None = None,
) -> Any:
    """Packs ``count`` objects of ``type`` from the GPU buffer ``buf`` into ``out`` (a GPU buffer of
    at least ``count * type.size`` bytes; allocated as a cupy ``uint8`` array when None), in
    MPI_Pack's byte order. Returns the packed bytes: a cupy ``out`` is returned as a flat ``uint8``
    view trimmed to the bytes written (like the host path), any other ``out`` as given."""
    count = _check_count(count)
    cuda = _cuda("packing a GPU buffer")
    data = _gpu_buffer(buf, "buffer", stream)
    plan = plan_for(type, count, cuda)
    origin = _origin(plan, data, count, offset, "buffer")
    if out is None:
        out = _allocate_packed(plan.packed_bytes, data)
        allocated = True
    else:
        allocated = False
    packed = _gpu_buffer(out, "out", stream)
    if packed.readonly:
        raise InvalidArgumentError("out: the GPU buffer is read-only")
    if packed.nbytes < plan.packed_bytes:
        raise InvalidArgumentError(
            f"out is too small: {plan.packed_bytes} packed bytes do not fit in {packed.nbytes}"
        )
    launch_stream = _launch_stream(stream, data, packed)
    plan.pack(origin, packed.pointer, launch_stream)
    if allocated:
        _cupy_waits_for(sys.modules["cupy"], launch_stream)
        return out
    return _trimmed(out, plan.packed_bytes)


def _trimmed(out: Any, nbytes: int) -> Any:
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(out, cupy.ndarray):
        return out.reshape(-1).view(cupy.uint8)[:nbytes]
    return out


def unpack_gpu(
    packed: Any,
    buf: Any,
    type: Any,
    count: int = 1,
    *,
    offset: int = 0,
    stream: int | None = None,
) -> Any:
    """Unpacks ``count`` objects of ``type`` from the GPU buffer ``packed`` (``count * type.size``
    bytes in MPI_Pack's order) into the GPU buffer ``buf``, whose other bytes are left alone;
    returns the packed bytes consumed."""
    count = _check_count(count)
    cuda = _cuda("unpacking into a GPU buffer")
    data = _gpu_buffer(buf, "buffer", stream)
    if data.readonly:
        raise InvalidArgumentError("buffer: the GPU buffer is read-only")
    plan = plan_for(type, count, cuda)
    origin = _origin(plan, data, count, offset, "buffer")
    source = _gpu_buffer(packed, "packed", stream)
    if source.nbytes < plan.packed_bytes:
        raise InvalidArgumentError(f"packed holds {source.nbytes} bytes but {plan.packed_bytes} are needed")
    plan.unpack(source.pointer, origin, _launch_stream(stream, data, source))
    return plan.packed_bytes


def pack_to_address(
    buf: Any, type: Any, count: int, address: int, capacity: int, stream: int | None = None
) -> tuple[int, int]:
    """Packs into raw device-visible memory (mapped pinned host memory for the one-shot send
    method); returns (packed bytes, the stream the kernel was enqueued on)."""
    count = _check_count(count)
    cuda = _cuda("packing a GPU buffer")
    data = _gpu_buffer(buf, "buffer", stream)
    plan = plan_for(type, count, cuda)
    origin = _origin(plan, data, count, 0, "buffer")
    if capacity < plan.packed_bytes:
        raise InvalidArgumentError(f"{plan.packed_bytes} packed bytes do not fit in {capacity}")
    launch_stream = _launch_stream(stream, data)
    plan.pack(origin, address, launch_stream)
    return plan.packed_bytes, launch_stream


def unpack_from_address(
    address: int, nbytes: int, buf: Any, type: Any, count: int, stream: int | None = None
) -> int:
    """Unpacks from raw device-visible memory into the GPU buffer ``buf``; returns the stream used."""
    count = _check_count(count)
    cuda = _cuda("unpacking into a GPU buffer")
    data = _gpu_buffer(buf, "buffer", stream)
    if data.readonly:
        raise InvalidArgumentError("buffer: the GPU buffer is read-only")
    plan = plan_for(type, count, cuda)
    origin = _origin(plan, data, count, 0, "buffer")
    if nbytes < plan.packed_bytes:
        raise InvalidArgumentError(f"packed holds {nbytes} bytes but {plan.packed_bytes} are needed")
    launch_stream = _launch_stream(stream, data)
    plan.unpack(address, origin, launch_stream)
    return launch_stream
