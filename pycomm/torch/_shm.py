"""All-reduce of a group whose ranks share one machine, through a shared-memory segment.

The segment holds two sets of ``size`` slots of ``CHUNK_BYTES``. An array is reduced one chunk at a
time: every rank copies its chunk into its own slot; after a barrier, rank ``r`` reduces element
slice ``r`` of the chunk over all slots, in rank order, into slot 0 (pycomm's kernels, so 16-bit and
integer rules are those of :mod:`pycomm.kernels`); after a second barrier every rank copies slot 0
back. Each rank moves about three times the array's bytes, all ranks at once, instead of the
log-many exchange steps of MPI's algorithms, and every rank ends with the same bytes (they are read
from one place), summed in one fixed order.

Consecutive chunks alternate between the two sets, so a chunk never waits for the previous one's
readers: a rank can only refill a set after the barrier of the chunk in between, which every rank
reaches after it finished reading that set.

The segment is a file in ``/dev/shm`` that rank 0 creates with its space reserved (a full tmpfs is an
error here, not a SIGBUS later), every rank maps, and rank 0 unlinks as soon as all have it: nothing
is left behind, and releasing it is local to each rank (an MPI window's free is collective, and a
group torn down after a timeout must not wait for its peers).
"""

from __future__ import annotations

import mmap
import os
import secrets
from typing import Any

import numpy as np

from pycomm import kernels
from pycomm.errors import InvalidArgumentError

CHUNK_BYTES = 1 << 20
# Below this MPI's own all-reduce (a few exchange steps of small messages) is as fast.
MIN_BYTES = 64 << 10
# The dtypes the shared-memory path reduces: the engine widens 16-bit floats to float32 first.
_INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_DTYPES = {np.dtype(name): name for name in ("float32", "float64", *_INTEGERS)}
_OPS = {"sum": "sum", "avg": "sum", "premul_sum": "sum", "prod": "prod", "min": "min", "max": "max"}


class SharedMemoryAllReduce:
    """The shared-memory all-reduce of one communicator; :meth:`create` returns None where its ranks
    are not all on one machine."""

    def __init__(self, comm: Any, memory: mmap.mmap) -> None:
        self._comm = comm
        self._memory = memory
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        slots = np.frombuffer(memory, dtype=np.uint8, count=2 * self.size * CHUNK_BYTES)
        self._sets = slots.reshape(2, self.size, CHUNK_BYTES)
        self._next_set = 0

    @classmethod
    def create(cls, comm: Any) -> SharedMemoryAllReduce | None:
        """Collective over ``comm``: the same outcome on every rank."""
        from mpi4py import MPI

        size = comm.Get_size()
        if size < 2:
            return None
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        # The node communicator is the whole group on every rank, or on none.
        on_one_machine = node.Get_size() == size
        node.Free()
        if not on_one_machine:
            return None
        length = 2 * size * CHUNK_BYTES
        path = None
        if comm.Get_rank() == 0:
            path = _create_segment(length)
        path = comm.bcast(path, root=0)
        if path is None:
            return None
        memory = None
        try:
            descriptor = os.open(path, os.O_RDWR)
            try:
                memory = mmap.mmap(descriptor, length)
            finally:
                os.close(descriptor)
        except OSError:
            pass
        everyone = comm.allreduce(memory is not None, op=MPI.LAND)
        if comm.Get_rank() == 0:
            os.unlink(path)
        if not everyone:
            if memory is not None:
                memory.close()
            return None
        return cls(comm, memory)

    def applies(self, array: np.ndarray, op: str) -> bool:
        """Whether :meth:`all_reduce` takes ``array``: the same answer on every rank."""
        return array.nbytes >= MIN_BYTES and op in _OPS and array.dtype in _DTYPES

    def all_reduce(self, array: np.ndarray, op: str) -> None:
        """In place; ``array`` is the same size and dtype on every rank (an MPI all-reduce's rule).
        ``avg`` and ``premul_sum`` sum: the engine scales before and divides after."""
        if not array.flags.c_contiguous:
            raise InvalidArgumentError("the shared-memory all-reduce takes C-contiguous arrays")
        dtype, kernel_op = _DTYPES[array.dtype], _OPS[op]
        data = array.reshape(-1).view(np.uint8)
        itemsize = array.itemsize
        for start in range(0, data.size, CHUNK_BYTES):
            piece = data[start : start + CHUNK_BYTES]
            slots = self._sets[self._next_set]
            self._next_set ^= 1
            slots[self.rank, : piece.size] = piece
            self._barrier()
            elements = piece.size // itemsize
            low = elements * self.rank // self.size * itemsize
            high = elements * (self.rank + 1) // self.size * itemsize
            if high > low:
                inputs = [slots[r, low:high].view(array.dtype) for r in range(self.size)]
                kernels.reduce(inputs, kernel_op, out=inputs[0], dtype=dtype)
            self._barrier()
            piece[...] = slots[0, : piece.size]

    def _barrier(self) -> None:
        # MPI's barrier orders the slot writes before it against the reads after it (its
        # shared-memory implementation fences).
        self._comm.Barrier()

    def free(self) -> None:
        """Local: unmaps this rank's view of the segment."""
        self._sets = None
        self._memory.close()


def _create_segment(length: int) -> str | None:
    """A new file of ``length`` reserved bytes in /dev/shm, or None where there is none or no room."""
    # Named as pycomm.ft's segments are, so that remove_stale_segments() also clears one whose
    # creator died before unlinking it.
    path = f"/dev/shm/pycomm-{os.getpid()}-torch-{secrets.token_hex(6)}"
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        os.posix_fallocate(descriptor, 0, length)
    except OSError:
        os.close(descriptor)
        os.unlink(path)
        return None
    os.close(descriptor)
    return path
