"""The peers' side of ``pycomm bench allreduce``: what runs in each child process.

A throughput peer (:func:`throughput_peer`) joins its system's group through one backend per system
(pycomm.ft, MPICH through mpi4py, gloo through ``torch.distributed``) and serves the driver's commands
over its control connection; a fault peer (:func:`fault_peer`) loops checked pycomm all-reduces and
reports each epoch's first one. Both check their results against :func:`peer_input` and
:func:`expected_sum`. The driver (:mod:`.allreduce`) starts these functions by module and name.
"""

from __future__ import annotations

import contextlib
import faulthandler
import glob
import json
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from pycomm.errors import InvalidArgumentError

# Inputs repeat with this (prime) period, so that no power-of-two chunking of the buffer lines up
# with it: a chunk reduced at the wrong offset gives a wrong sum.
PATTERN_PERIOD = 251
# How long a group may take to start (processes importing torch on a crowded machine) and one
# command to answer.
_START_TIMEOUT = 180.0
_COMMAND_TIMEOUT = 600.0
_FAULT_TIMEOUT = 60.0
_CLOSE_TIMEOUT = 10.0


# -- the values every rank checks ---------------------------------------------------------------


def _period(rank: int, salt: int) -> np.ndarray:
    return ((np.arange(PATTERN_PERIOD, dtype=np.int64) * 3 + 13 * rank + 29 * salt) % PATTERN_PERIOD).astype(
        np.float32
    )


def _tile(period: np.ndarray, count: int) -> np.ndarray:
    return np.tile(period, -(-count // PATTERN_PERIOD))[:count]


def peer_input(rank: int, count: int, salt: int = 0) -> np.ndarray:
    """Rank ``rank``'s input: whole numbers in [0, 251), different on every rank and for every salt."""
    return _tile(_period(rank, salt), count)


def expected_sum(world: int, count: int, salt: int = 0) -> np.ndarray:
    """The exact sum of ``peer_input`` over ranks 0..world-1 (float32 holds it: below 2**24)."""
    total = np.zeros(PATTERN_PERIOD, np.float32)
    for rank in range(world):
        total += _period(rank, salt)
    return _tile(total, count)


def _check_sum(
    all_reduce: Callable[[np.ndarray], Any], data: np.ndarray, rank: int, world: int, salt: int
) -> int:
    """Runs one all-reduce on the check input into ``data``; returns the number of wrong elements."""
    np.copyto(data, peer_input(rank, data.size, salt))
    all_reduce(data)
    return int(np.count_nonzero(data != expected_sum(world, data.size, salt)))


# -- control connections: the peer's end (the driver's is in .allreduce) -------------------------


class _PeerLink:
    """A peer's end of its control connection (blocking)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=_START_TIMEOUT)
        self.sock.settimeout(None)
        self._reader = self.sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, Any] | None:
        """The next command; None once the driver closed the connection (it ended or died)."""
        line = self._reader.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._reader.close()
            self.sock.close()


# -- the peers' side: one backend per system -------------------------------------------------------


class _Backend:
    rank: int
    world: int
    version: str

    def all_reduce(self, data: np.ndarray) -> Any:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _PycommBackend(_Backend):
    def __init__(self, peers: int, master: str) -> None:
        import pycomm
        from pycomm.ft import Communicator

        self.comm = Communicator(master, timeout=_COMMAND_TIMEOUT)
        self.comm.connect(timeout=_START_TIMEOUT)
        # Admission is collective: the members admit newcomers until the group is complete. The first
        # pending_peers() of a newly admitted peer answers False locally (its admitters are returning
        # from update_topology()), so every peer runs the same loop.
        while self.comm.world_size < peers:
            if self.comm.pending_peers():
                self.comm.update_topology()
            else:
                time.sleep(0.005)
        self._token = np.zeros(1, np.float32)
        self.rank, self.world, self.version = self.comm.rank, self.comm.world_size, pycomm.__version__

    def all_reduce(self, data: np.ndarray) -> Any:
        return self.comm.all_reduce(data)

    def barrier(self) -> None:
        self.comm.all_reduce(self._token)

    def close(self) -> None:
        self.comm.close()


class _MpichBackend(_Backend):
    def __init__(self) -> None:
        import mpi4py
        from mpi4py import MPI

        self.mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        library = MPI.Get_library_version().strip().splitlines()[0]
        self.version = f"{library}; mpi4py {mpi4py.__version__}"

    def all_reduce(self, data: np.ndarray) -> Any:
        self.comm.Allreduce(self.mpi.IN_PLACE, data)

    def barrier(self) -> None:
        self.comm.Barrier()


class _GlooBackend(_Backend):
    def __init__(self, peers: int, rank: int, port: int) -> None:
        import datetime

        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=peers,
            timeout=datetime.timedelta(seconds=_COMMAND_TIMEOUT),
        )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.version = f"torch {torch.__version__}"
        self._array: np.ndarray | None = None
        self._tensor: Any = None

    def all_reduce(self, data: np.ndarray) -> Any:
        # A tensor sharing the array's memory (torch.from_numpy), made once per array as a torch user
        # would hold one: the sum lands in `data`, as with the other systems.
        if data is not self._array:
            self._array, self._tensor = data, self.torch.from_numpy(data)
        self.dist.all_reduce(self._tensor)

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        self._array = self._tensor = None
        self.dist.destroy_process_group()


def _open_backend(system: str, peers: int, rank: int, options: dict[str, Any]) -> _Backend:
    if system == "pycomm":
        return _PycommBackend(peers, options["master"])
    if system == "mpich":
        return _MpichBackend()
    if system == "gloo":
        return _GlooBackend(peers, rank, options["port"])
    raise InvalidArgumentError(f"unknown system {system!r}")


def throughput_peer(system: str, control: str, peers: int, rank: int, options: dict[str, Any]) -> None:
    """One peer of a throughput group (run in a child process): joins its system's group, then
    serves the driver's commands until told to exit or the driver goes away."""
    backend = _open_backend(system, peers, rank, options)
    link = _PeerLink(control)
    try:
        link.send(
            {
                "system": system,
                "rank": backend.rank,
                "world": backend.world,
                "pid": os.getpid(),
                "version": backend.version,
            }
        )
        data = np.zeros(0, np.float32)
        while True:
            command = link.receive()
            if command is None:
                break
            if command["op"] == "exit":
                # Leaving is timed too; a close() that hangs prints every thread's stack and ends the
                # process, so the driver can report it instead of waiting for it.
                faulthandler.dump_traceback_later(_CLOSE_TIMEOUT, exit=True)
                start = time.perf_counter()
                backend.close()
                faulthandler.cancel_dump_traceback_later()
                link.send({"closed_s": time.perf_counter() - start})
                return
            try:
                reply, data = _serve(backend, command, data)
            except Exception:
                link.send({"error": traceback.format_exc()[-3000:]})
                raise
            link.send(reply)
    finally:
        link.close()
    backend.close()


def _serve(backend: _Backend, command: dict[str, Any], data: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    op = command["op"]
    if op == "prepare":
        # Two checked all-reduces with different inputs before any timing, then zeros to time on.
        data = np.zeros(int(command["elements"]), np.float32)
        wrong = [_check_sum(backend.all_reduce, data, backend.rank, backend.world, salt) for salt in (1, 2)]
        data.fill(0)
        return {"checks": 2, "wrong": wrong, "elements": data.size}, data
    if op == "time":
        calls = int(command["calls"])
        backend.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            backend.all_reduce(data)
        return {"seconds": time.perf_counter() - start}, data
    if op == "check":
        nonzero = int(np.count_nonzero(data))
        wrong = _check_sum(backend.all_reduce, data, backend.rank, backend.world, 3)
        return {"checks": 1, "wrong": [wrong], "nonzero_after_timing": nonzero}, np.zeros(0, np.float32)
    raise InvalidArgumentError(f"unknown command {op!r}")


# -- the fault measurements' peer -------------------------------------------------------------


def fault_peer(control: str, master: str, min_world: int, elements: int) -> None:
    """A peer of the fault measurements (run in a child process): the training-like loop
    ``if pending_peers(): update_topology(); all_reduce(x)`` with every result checked, reporting
    the first completed all-reduce of each epoch to the driver."""
    from pycomm.errors import Aborted
    from pycomm.ft import Communicator

    link = _PeerLink(control)

    peer_ids: list[str] = []

    def watch_driver() -> None:
        # Leave as soon as the driver ends or goes away (its connection closes). os._exit skips
        # close(), so this peer's shared-memory segments are removed here.
        while True:
            command = link.receive()
            if command is None or command.get("op") == "exit":
                for peer_id in peer_ids:
                    for path in glob.glob(f"/dev/shm/pycomm-*-{peer_id}-*"):
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                os._exit(0)

    threading.Thread(target=watch_driver, name="pycomm-bench-watch", daemon=True).start()
    comm = Communicator(master, timeout=_FAULT_TIMEOUT)
    peer_ids.append(comm.peer_id)
    started = time.monotonic()
    comm.connect(timeout=_FAULT_TIMEOUT)
    link.send(
        {
            "system": "fault",
            "peer_id": comm.peer_id,
            "pid": os.getpid(),
            "connect_start": started,
            "connected": time.monotonic(),
            "epoch": comm.epoch,
            "world": comm.world_size,
        }
    )
    data = np.empty(elements, np.float32)
    inputs: dict[int, np.ndarray] = {}
    sums: dict[int, np.ndarray] = {}
    counts = {"ops": 0, "verified": 0, "unverified": 0, "aborts": 0, "mismatches": 0}
    reported: set[int] = set()
    formed = min_world <= 1
    while True:
        # Each operation that raises Aborted is retried by itself. The survivors agree on which
        # operations finished, so retrying just the aborted one keeps every peer's sequence of
        # collectives the same; starting the iteration over instead would let a peer whose
        # all_reduce was aborted run pending_peers() while another, whose pending_peers() was kept,
        # runs the all_reduce, and both would wait for each other until the operation's deadline.
        while True:
            try:
                pending = comm.pending_peers()
                break
            except Aborted:
                counts["aborts"] += 1
        if pending:
            comm.update_topology()
        # Until the first group is complete its members only admit; the decision depends on the
        # world size alone, so every member takes it alike.
        formed = formed or comm.world_size >= min_world
        if not formed:
            time.sleep(0.005)
            continue
        while True:
            # The input depends on the rank, which a new epoch may change: rebuilt for each try.
            epoch, rank, world = comm.epoch, comm.rank, comm.world_size
            if rank not in inputs:
                inputs[rank] = peer_input(rank, elements)
            np.copyto(data, inputs[rank])
            try:
                info = comm.all_reduce(data)
                break
            except Aborted:
                counts["aborts"] += 1
        done = time.monotonic()
        counts["ops"] += 1
        if (info.epoch, info.rank, info.world_size) != (epoch, rank, world):
            # The epoch changed between reading the rank and submitting: the input used the old rank.
            counts["unverified"] += 1
            continue
        if world not in sums:
            sums[world] = expected_sum(world, elements)
        correct = bool(np.array_equal(data, sums[world]))
        counts["verified" if correct else "mismatches"] += 1
        if not correct:
            link.send(
                {"mismatch": f"epoch {epoch} rank {rank} of {world}: wrong all-reduce result", **counts}
            )
        if epoch not in reported:
            reported.add(epoch)
            link.send({"first_op": epoch, "world": world, "rank": rank, "t": done, "ok": correct, **counts})
