"""The fault-tolerant engine of backend "pycomm": a torch group over one epoch of a
:class:`pycomm.ft.Communicator` (torch ranks are the epoch's ranks).

A peer that fails during an operation makes that operation raise ``DistBackendError`` (its cause
the :class:`~pycomm.errors.Aborted` of pycomm.ft, the tensor restored to its input) on every
survivor; one that fails between operations makes the next one raise it. Either way a failure
costs each survivor one such error. The group is then stale, like any group after a membership
change (a join through ``update_topology()`` too), and :func:`pycomm.torch.reform` makes the next
one from the communicator's new epoch.

All-reduce, broadcast, all-gather and reduce-scatter map onto pycomm.ft's collectives (sum, avg,
prod, min, max; every rank ends with identical bytes); reduce, gather, scatter, all-to-all and
barrier are built from them. There is no point-to-point operation: the ring carries collectives
only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pycomm import kernels
from pycomm.errors import NotSupportedError
from pycomm.torch._group import FLOAT_KINDS, BackendArgumentError, ReduceOp, failure

_FT_OPS = ("sum", "avg", "prod", "min", "max")


class FtEngine:
    """Runs a group's operations on ``communicator`` in the epoch it is in now."""

    name = "fault-tolerant"
    threaded = True

    def __init__(self, communicator: Any) -> None:
        self.communicator = communicator
        self.epoch = communicator.epoch
        self.size = communicator.world_size
        self.rank = communicator.rank

    def close(self) -> None:
        """The communicator outlives its groups (the next group of a new epoch uses it)."""

    def interrupt(self, reason: str) -> None:
        """Fails the communicator's operation in flight, if any (it ends the epoch for every member,
        as any failure does), so that the group's worker returns and the next group finds no
        operation of this one still running."""
        comm = self.communicator
        if comm._inflight:
            comm._report_failure(comm.epoch, reason)

    def _current(self) -> Any:
        comm = self.communicator
        with comm._lock:
            if comm.epoch == self.epoch:
                return comm
            # A failure that replaced the epoch owes this peer one Aborted: this error is it, or
            # the first operation of the reformed group would raise it again.
            owed = comm._take_owed_abort()
        raise failure(
            f"the fault-tolerant group changed from epoch {self.epoch} ({self.size} peers) to epoch "
            f"{comm.epoch} ({comm.world_size} peers); call pycomm.torch.reform() for a group of the "
            "new epoch",
            owed,
        )

    def check_reduce(self, kind: str, op: ReduceOp) -> None:
        if kind in ("bool", "complex64", "complex128"):
            raise BackendArgumentError(
                f"{kind} tensors cannot be reduced by the fault-tolerant engine of backend 'pycomm'; "
                "it reduces float16, bfloat16, float32, float64 and integer tensors"
            )
        if op.name == "premul_sum" and kind in FLOAT_KINDS:
            return
        if op.name not in _FT_OPS:
            raise BackendArgumentError(
                f"{op} is not supported by the fault-tolerant engine of backend 'pycomm'; it takes "
                "SUM, AVG, PRODUCT, MIN, MAX and (floats) PREMUL_SUM"
            )

    def check_point_to_point(self) -> None:
        raise NotSupportedError(
            "the fault-tolerant engine of backend 'pycomm' has no send/recv (its ring carries collectives "
            "only); use collectives, or the MPI engine under mpiexec"
        )

    # -- reductions --------------------------------------------------------------------------------

    def all_reduce(self, array: np.ndarray, kind: str, op: ReduceOp) -> None:
        comm = self._current()
        if array.size == 0:
            return
        if op.name != "premul_sum":
            comm.all_reduce(array, op=op.name, dtype=kind)
            return
        # Scaled in a copy: after a failure the tensor must hold its input again.
        scaled = array.copy()
        _scale(scaled, kind, op)
        comm.all_reduce(scaled, op="sum", dtype=kind)
        array[...] = scaled

    def reduce(self, array: np.ndarray, kind: str, op: ReduceOp, root: int) -> None:
        result = array.copy()
        self.all_reduce(result, kind, op)
        if self.rank == root:
            array[...] = result

    def reduce_scatter(self, out: np.ndarray, source: np.ndarray, kind: str, op: ReduceOp) -> None:
        comm = self._current()
        if out.size == 0:
            return
        name = op.name
        if name == "premul_sum":
            source = source.copy()
            _scale(source, kind, op)
            name = "sum"
        out[...] = comm.reduce_scatter(source, op=name, dtype=kind)

    # -- data movement -----------------------------------------------------------------------------

    def broadcast(self, array: np.ndarray, root: int) -> None:
        comm = self._current()
        if array.size:
            comm.broadcast(array.view(np.uint8), root=root)

    def _gather_bytes(self, source: np.ndarray) -> np.ndarray:
        return self._current().all_gather(source.view(np.uint8)).reshape(self.size, -1)

    def all_gather(self, out: np.ndarray, source: np.ndarray, kind: str) -> None:
        if source.size:
            out.view(np.uint8)[...] = self._gather_bytes(source).reshape(-1)

    def all_gather_parts(self, outs: list[np.ndarray], source: np.ndarray) -> None:
        gathered = self._gather_bytes(source) if source.size else None
        for position, out in enumerate(outs):
            if gathered is not None:
                out.view(np.uint8)[...] = gathered[position]

    def gather(self, outs: list[np.ndarray], source: np.ndarray, root: int) -> None:
        gathered = self._gather_bytes(source) if source.size else None
        if self.rank == root and gathered is not None:
            for position, out in enumerate(outs):
                out.view(np.uint8)[...] = gathered[position]

    def scatter(self, out: np.ndarray, parts: list[np.ndarray], root: int) -> None:
        if out.size == 0:
            return
        everything = np.empty((self.size, out.nbytes), np.uint8)
        if self.rank == root:
            for position, part in enumerate(parts):
                everything[position] = part.view(np.uint8)
        self.broadcast(everything.reshape(-1), root)
        out.view(np.uint8)[...] = everything[self.rank]

    def all_to_all(
        self, receive: np.ndarray, receive_counts: list[int], send: np.ndarray, send_counts: list[int]
    ) -> None:
        # pycomm.ft gathers equal blocks: gather every rank's counts, pad each send buffer to the
        # longest, gather those, and keep the pieces addressed to this rank.
        item = send.itemsize
        counts = self._current().all_gather(np.asarray(send_counts, np.int64)).reshape(self.size, self.size)
        longest = int(counts.sum(axis=1).max()) * item
        if longest == 0:
            return
        padded = np.zeros(longest, np.uint8)
        padded[: send.nbytes] = send.view(np.uint8)
        gathered = self._gather_bytes(padded)
        target = receive.view(np.uint8)
        at = 0
        for source in range(self.size):
            if int(counts[source, self.rank]) != receive_counts[source]:
                raise BackendArgumentError(
                    f"all_to_all: rank {source} sends {int(counts[source, self.rank])} elements to rank "
                    f"{self.rank}, which expects {receive_counts[source]}"
                )
            begin = int(counts[source, : self.rank].sum()) * item
            size = receive_counts[source] * item
            target[at : at + size] = gathered[source, begin : begin + size]
            at += size

    def send(self, array: np.ndarray, peer: int, tag: int) -> None:
        self.check_point_to_point()

    def recv(self, array: np.ndarray, peer: int | None, tag: int) -> int:
        self.check_point_to_point()
        return -1

    def barrier(self) -> None:
        self._current().all_reduce(np.zeros(1, np.int32))


def _scale(array: np.ndarray, kind: str, op: ReduceOp) -> None:
    factor = op.factor
    factor = float(factor.item() if hasattr(factor, "item") else factor)
    if kind in ("float16", "bfloat16"):
        wide = kernels.cast(array, "float32", src_dtype=kind)
        wide *= factor
        kernels.cast(wide, kind, out=array)
    else:
        array *= factor
