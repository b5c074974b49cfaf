"""Point-to-point sends of datatypes over mpi4py, with GPU buffers packed on the GPU.

:func:`send` packs ``count`` objects of a type and sends the packed bytes as ``MPI.BYTE``;
:func:`recv` receives them and unpacks them into the receiver's buffer. What travels is the packed
stream in MPI_Pack's order, so the two sides choose their methods independently, and a receiver that
posts ``count * t.size`` bytes (or ``MPI.PACKED`` and unpacks with MPI) gets the same data.

A GPU buffer goes by the method the send model picks (:mod:`pycomm.datatype.send_model`) for its
packed size and smallest block, or the one passed as ``method``: packed into device memory for a
CUDA-aware MPI ("device"), packed straight into mapped pinned host memory ("one_shot"), or packed on
the device and copied to pinned host memory ("staged"). Both calls block until the buffer can be
reused (send) or holds the data (recv), like ``MPI_Send`` and ``MPI_Recv``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from pycomm._deps import require_cupy, require_mpi4py
from pycomm.datatype import _gpu
from pycomm.datatype.send_model import METHODS, available_methods, choose_method
from pycomm.errors import InvalidArgumentError

__all__ = ["recv", "send"]


class _PinnedPool:
    """Reuses mapped pinned host buffers: pinning memory costs far more than a send of it. A buffer
    is taken out while in use, so concurrent sends from several threads never share one."""

    _KEEP = 4  # buffers kept for reuse

    def __init__(self) -> None:
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Any:
        with self._lock:
            fitting = [b for b in self._free if b.nbytes >= nbytes]
            if fitting:
                buffer = min(fitting, key=lambda b: b.nbytes)
                self._free.remove(buffer)
                return buffer
        from pycomm import _cuda

        # Rounded up to a power of two so that a range of sizes shares buffers.
        return _cuda.PinnedHostBuffer(1 << max(12, (max(nbytes, 1) - 1).bit_length()))

    def give_back(self, buffer: Any) -> None:
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > self._KEEP:
                self._free.remove(min(self._free, key=lambda b: b.nbytes))


_pinned = _PinnedPool()


def _mpi() -> Any:
    require_mpi4py("sending datatypes with MPI")
    from mpi4py import MPI

    return MPI


def _pick(method: str | None, packed_bytes: int, smallest_block: int) -> str:
    if method is None:
        return choose_method(packed_bytes, smallest_block)
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown send method '{method}'; methods: {', '.join(METHODS)}")
    if method not in available_methods():
        raise InvalidArgumentError(f"method '{method}' needs a CUDA-aware MPI, which this one is not")
    return method


def send(
    comm: Any, buf: Any, t: Any, dest: int, tag: int = 0, count: int = 1, *, method: str | None = None
) -> str:
    """Sends ``count`` objects of ``t`` from ``buf`` (host or GPU) to rank ``dest`` of the mpi4py
    communicator ``comm`` as packed bytes; returns the method used (``"host"`` for a host buffer)."""
    MPI = _mpi()
    if not _gpu.is_gpu_buffer(buf):
        from pycomm import datatype

        packed = datatype.pack(buf, t, count)
        comm.Send([packed, MPI.BYTE], dest, tag)
        return "host"
    cuda = _gpu._cuda("sending a GPU buffer")
    plan = _gpu.plan_for(t, _gpu._check_count(count), cuda)
    chosen = _pick(method, plan.packed_bytes, plan.smallest_block)
    nbytes = plan.packed_bytes
    if chosen == "device":
        packed = _gpu.pack_gpu(buf, t, count)
        require_cupy("sending from device memory").cuda.get_current_stream().synchronize()
        comm.Send([packed, MPI.BYTE], dest, tag)
        return chosen
    host = _pinned.take(nbytes)
    try:
        if chosen == "one_shot":
            _, stream = _gpu.pack_to_address(buf, t, count, host.device_pointer, host.nbytes)
        else:
            packed = _gpu.pack_gpu(buf, t, count)
            stream = _gpu._launch_stream(None, _gpu._gpu_buffer(packed, "packed", None))
            cuda.copy_async(host.host_pointer, packed.data.ptr, nbytes, stream)
        cuda.synchronize(stream)
        comm.Send([np.frombuffer(host, dtype=np.uint8, count=nbytes), MPI.BYTE], dest, tag)
    finally:
        _pinned.give_back(host)
    return chosen


def _check_received(MPI: Any, status: Any, expected: int) -> None:
    received = status.Get_count(MPI.BYTE)
    if received != expected:
        raise InvalidArgumentError(
            f"received {received} bytes but {expected} were expected (count * t.size): the sender's "
            "type or count differs from the receiver's"
        )


def recv(
    comm: Any, buf: Any, t: Any, source: int, tag: int = 0, count: int = 1, *, method: str | None = None
) -> str:
    """Receives ``count`` objects of ``t`` sent as packed bytes (by :func:`send` or as ``MPI.BYTE`` /
    ``MPI.PACKED``) from rank ``source`` into ``buf`` (host or GPU); returns the method used."""
    MPI = _mpi()
    status = MPI.Status()
    if not _gpu.is_gpu_buffer(buf):
        from pycomm import datatype

        packed = np.empty(datatype.pack_size(t, count), dtype=np.uint8)
        comm.Recv([packed, MPI.BYTE], source, tag, status)
        _check_received(MPI, status, packed.size)
        datatype.unpack(packed, buf, t, count)
        return "host"
    cuda = _gpu._cuda("receiving into a GPU buffer")
    plan = _gpu.plan_for(t, _gpu._check_count(count), cuda)
    chosen = _pick(method, plan.packed_bytes, plan.smallest_block)
    nbytes = plan.packed_bytes
    if chosen == "device":
        cupy = require_cupy("receiving into device memory")
        packed = cupy.empty(nbytes, dtype=cupy.uint8)
        cupy.cuda.get_current_stream().synchronize()  # the allocation's stream work is done
        comm.Recv([packed, MPI.BYTE], source, tag, status)
        _check_received(MPI, status, nbytes)
        _gpu.unpack_gpu(packed, buf, t, count)
        cupy.cuda.get_current_stream().synchronize()
        return chosen
    host = _pinned.take(nbytes)
    try:
        comm.Recv([np.frombuffer(host, dtype=np.uint8, count=nbytes), MPI.BYTE], source, tag, status)
        _check_received(MPI, status, nbytes)
        if chosen == "one_shot":
            # The unpack kernel reads the pinned buffer across the bus: no device copy first.
            stream = _gpu.unpack_from_address(host.device_pointer, nbytes, buf, t, count)
        else:
            cupy = require_cupy("receiving into a GPU buffer by staging")
            packed = cupy.empty(nbytes, dtype=cupy.uint8)
            stream = _gpu._launch_stream(None, _gpu._gpu_buffer(buf, "buffer", None))
            cuda.copy_async(packed.data.ptr, host.host_pointer, nbytes, stream)
            _gpu.unpack_gpu(packed, buf, t, count, stream=stream)
        # Until the kernel or copy has read the pinned buffer it cannot go back to the pool.
        cuda.synchronize(stream)
    finally:
        _pinned.give_back(host)
    return chosen
