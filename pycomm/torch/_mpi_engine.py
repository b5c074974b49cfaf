"""The MPI engine of backend "pycomm": each group is an mpi4py communicator of its own (a duplicate
of ``COMM_WORLD`` for the default group, a sub-communicator for ``new_group``), and, when the group's
topology has more than one level, a :class:`~pycomm.hier.HierComm` that runs the all-reduce,
all-gather and reduce-scatter level by level; when its ranks share one machine instead, a
shared-memory all-reduce (:mod:`pycomm.torch._shm`) takes the all-reduces of 64 KiB and more.

Numeric rules (every rank ends with identical bytes):

- float16 and bfloat16 are reduced in float32 and rounded once at the end (MPI has no 16-bit float
  reductions; this is also more accurate than a chain of 16-bit sums).
- ``AVG`` is the sum divided by the group size, rounded once; it takes floating-point tensors.
  ``PREMUL_SUM`` multiplies this rank's input by the factor, then sums.
- bool reduces logically: ``SUM``/``MAX``/``BOR`` are "or", ``PRODUCT``/``MIN``/``BAND`` are "and",
  ``BXOR`` is "xor". Complex tensors take ``SUM``, ``AVG`` and ``PREMUL_SUM``.
- Bitwise ops take integers and bool. The hierarchical path serves sum, avg, prod, min and max on
  pycomm's kernel dtypes; other ops and dtypes use MPI's flat collectives.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pycomm import kernels
from pycomm.torch._group import FLOAT_KINDS, BackendArgumentError, ReduceOp, display_name
from pycomm.torch._shm import SharedMemoryAllReduce

_INTEGER_KINDS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_COMPLEX_KINDS = ("complex64", "complex128")
_HIER_OPS = ("sum", "avg", "prod", "min", "max")


def check_reduce(kind: str, op: ReduceOp, engine: str) -> None:
    """Raises BackendArgumentError when ``op`` does not apply to tensors of ``kind``."""
    allowed: tuple[str, ...]
    if kind in FLOAT_KINDS:
        allowed = ("sum", "avg", "prod", "min", "max", "premul_sum")
    elif kind in _INTEGER_KINDS or kind == "bool":
        allowed = ("sum", "prod", "min", "max", "band", "bor", "bxor")
    else:
        allowed = ("sum", "avg", "premul_sum")
    if op.name not in allowed:
        raise BackendArgumentError(
            f"{op} is not defined for {kind} tensors in the {engine} engine of backend 'pycomm'; "
            f"{kind} takes " + ", ".join(display_name(name) for name in allowed)
        )


def _bytes(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint8)


def _unaliased(source: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``source``, or a copy of it where it overlaps ``out`` (FSDP gathers a rank's shard from inside
    the output; MPI forbids overlapping send and receive buffers)."""
    return source.copy() if np.may_share_memory(source, out) else source


def _factor(op: ReduceOp) -> float:
    factor = op.factor
    return float(factor.item() if hasattr(factor, "item") else factor)


class MpiEngine:
    """Runs a group's operations on ``comm`` (owned: freed by :meth:`close`)."""

    name = "mpi"

    def __init__(self, comm: Any, topology: Any = None) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        # One worker thread calls MPI for the group while the caller goes on: that needs MPI's full
        # thread support. Without it the operations run in the caller's thread.
        self.threaded = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        self.hier = None
        if topology is not None and sum(level.fanout > 1 for level in topology.levels) > 1:
            from pycomm.hier import HierComm

            self.hier = HierComm(comm, topology)
        # Ranks of one machine: large all-reduces through shared memory (see _shm).
        self.shared = SharedMemoryAllReduce.create(comm) if self.hier is None else None
        self._ops = {
            "sum": MPI.SUM,
            "avg": MPI.SUM,
            "premul_sum": MPI.SUM,
            "prod": MPI.PROD,
            "min": MPI.MIN,
            "max": MPI.MAX,
            "band": MPI.BAND,
            "bor": MPI.BOR,
            "bxor": MPI.BXOR,
        }
        self._bool_ops = {
            "sum": MPI.BOR,
            "max": MPI.BOR,
            "bor": MPI.BOR,
            "prod": MPI.BAND,
            "min": MPI.BAND,
            "band": MPI.BAND,
            "bxor": MPI.BXOR,
        }

    def close(self) -> None:
        if self.shared is not None:
            self.shared.free()
            self.shared = None
        if self.hier is not None:
            self.hier.free()
            self.hier = None
        if self.comm is not None:
            self.comm.Free()
            self.comm = None

    def check_reduce(self, kind: str, op: ReduceOp) -> None:
        check_reduce(kind, op, self.name)

    def check_point_to_point(self) -> None:
        """Point-to-point operations are MPI's own."""

    def interrupt(self, reason: str) -> None:
        """An MPI call in progress cannot be cancelled: it ends when its peers take part."""

    # -- reductions --------------------------------------------------------------------------------

    def _hierarchical(self, kind: str, op: ReduceOp) -> bool:
        return self.hier is not None and op.name in _HIER_OPS and kind not in ("bool", *_COMPLEX_KINDS)

    def _reduced(self, array: np.ndarray, kind: str, op: ReduceOp) -> tuple[np.ndarray, Any]:
        """The array MPI reduces for ``array`` (float32 for 16-bit floats), pre-multiplied for
        PREMUL_SUM, and the MPI op."""
        if kind in ("float16", "bfloat16"):
            wide = kernels.cast(array, "float32", src_dtype=kind)
        elif op.name == "premul_sum":
            wide = array.copy()
        else:
            wide = array
        if op.name == "premul_sum":
            wide *= _factor(op)
        mpi_op = self._bool_ops[op.name] if kind == "bool" else self._ops[op.name]
        return wide, mpi_op

    def _finish(self, wide: np.ndarray, array: np.ndarray, kind: str, op: ReduceOp, divisor: int) -> None:
        if op.name == "avg":
            wide /= divisor
        if kind in ("float16", "bfloat16"):
            kernels.cast(wide, kind, out=array)
        elif wide is not array:
            array[...] = wide

    def all_reduce(self, array: np.ndarray, kind: str, op: ReduceOp) -> None:
        if array.size == 0:
            return
        if self._hierarchical(kind, op):
            self.hier.all_reduce(array, out=array, op=op.name, dtype=kind)
            return
        wide, mpi_op = self._reduced(array, kind, op)
        if self.shared is not None and self.shared.applies(wide, op.name):
            self.shared.all_reduce(wide, op.name)
        else:
            self.comm.Allreduce(self._MPI.IN_PLACE, wide, mpi_op)
        self._finish(wide, array, kind, op, self.size)

    def reduce(self, array: np.ndarray, kind: str, op: ReduceOp, root: int) -> None:
        if array.size == 0:
            return
        wide, mpi_op = self._reduced(array, kind, op)
        if self.rank == root:
            self.comm.Reduce(self._MPI.IN_PLACE, wide, mpi_op, root)
            self._finish(wide, array, kind, op, self.size)
        else:
            self.comm.Reduce(wide, None, mpi_op, root)

    def reduce_scatter(self, out: np.ndarray, source: np.ndarray, kind: str, op: ReduceOp) -> None:
        if out.size == 0:
            return
        source = _unaliased(source, out)
        if self._hierarchical(kind, op):
            self.hier.reduce_scatter(source, out=out, op=op.name, dtype=kind)
            return
        wide, mpi_op = self._reduced(source, kind, op)
        result = np.empty(out.size, wide.dtype) if wide.dtype != out.dtype else out
        self.comm.Reduce_scatter_block(wide, result, mpi_op)
        self._finish(result, out, kind, op, self.size)

    # -- data movement -----------------------------------------------------------------------------

    def broadcast(self, array: np.ndarray, root: int) -> None:
        if array.size:
            self.comm.Bcast(_bytes(array), root)

    def all_gather(self, out: np.ndarray, source: np.ndarray, kind: str) -> None:
        if source.size == 0:
            return
        source = _unaliased(source, out)
        if self.hier is not None and kind not in ("bool", *_COMPLEX_KINDS):
            self.hier.all_gather(source, out=out, dtype=kind)
            return
        self.comm.Allgather(_bytes(source), _bytes(out))

    def all_gather_parts(self, outs: list[np.ndarray], source: np.ndarray) -> None:
        gathered = np.empty((self.size, source.nbytes), np.uint8)
        if source.size:
            self.comm.Allgather(_bytes(source), gathered)
        for position, out in enumerate(outs):
            _bytes(out)[...] = gathered[position]

    def gather(self, outs: list[np.ndarray], source: np.ndarray, root: int) -> None:
        if source.size == 0:
            return
        if self.rank != root:
            self.comm.Gather(_bytes(source), None, root)
            return
        gathered = np.empty((self.size, source.nbytes), np.uint8)
        self.comm.Gather(_bytes(source), gathered, root)
        for position, out in enumerate(outs):
            _bytes(out)[...] = gathered[position]

    def scatter(self, out: np.ndarray, parts: list[np.ndarray], root: int) -> None:
        if out.size == 0:
            return
        send = np.concatenate([_bytes(part) for part in parts]) if self.rank == root else None
        self.comm.Scatter(send, _bytes(out), root)

    def all_to_all(
        self, receive: np.ndarray, receive_counts: list[int], send: np.ndarray, send_counts: list[int]
    ) -> None:
        MPI = self._MPI
        item = send.itemsize
        send = _unaliased(send, receive)

        def layout(counts: list[int]) -> tuple[list[int], list[int]]:
            sizes = [count * item for count in counts]
            return sizes, [sum(sizes[:k]) for k in range(len(sizes))]

        self.comm.Alltoallv(
            [_bytes(send), layout(send_counts), MPI.BYTE], [_bytes(receive), layout(receive_counts), MPI.BYTE]
        )

    def send(self, array: np.ndarray, peer: int, tag: int) -> None:
        self.comm.Send(_bytes(array), peer, tag)

    def recv(self, array: np.ndarray, peer: int | None, tag: int) -> int:
        MPI = self._MPI
        status = MPI.Status()
        source = MPI.ANY_SOURCE if peer is None else peer
        self.comm.Recv(_bytes(array), source, tag, status)
        received = status.Get_count(MPI.BYTE)
        if received != array.nbytes:
            raise BackendArgumentError(
                f"recv: rank {status.Get_source()} sent {received} bytes (tag {tag}); the tensor holds "
                f"{array.nbytes}"
            )
        return status.Get_source()

    def barrier(self) -> None:
        self.comm.Barrier()


def world_communicator(rank: int, size: int, global_ranks: list[int]) -> Any:
    """The mpi4py communicator of a new torch group: a duplicate of ``COMM_WORLD`` for the default
    group, or the sub-communicator of ``global_ranks`` (collective over those ranks only)."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if not global_ranks:
        if world.Get_size() != size or world.Get_rank() != rank:
            raise BackendArgumentError(
                f"torch says rank {rank} of {size} but MPI says rank {world.Get_rank()} of "
                f"{world.Get_size()}; "
                "the MPI engine of backend 'pycomm' needs the torch ranks of an mpiexec launch (import "
                "pycomm.torch before init_process_group and leave RANK/WORLD_SIZE unset, or set them "
                "from MPI)"
            )
        return world.Dup()
    if list(global_ranks)[rank] != world.Get_rank():
        raise BackendArgumentError(
            f"this process is MPI rank {world.Get_rank()} but torch rank {list(global_ranks)[rank]}; "
            "the MPI engine needs torch's global ranks to be MPI's"
        )
    group = world.Get_group().Incl(list(global_ranks))
    try:
        return world.Create_group(group)
    finally:
        group.Free()


def detect_topology(comm: Any) -> Any:
    """The group's topology from MPI (see :meth:`~pycomm.hier.Topology.detect`); None, with a warning
    saying why, when the ranks are not laid out node by node (the flat collectives then serve)."""
    from pycomm.errors import InvalidArgumentError
    from pycomm.hier import Topology

    try:
        return Topology.detect(comm)
    except InvalidArgumentError as error:
        warnings.warn(
            f"backend 'pycomm': no hierarchical collectives for this group ({error})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
