"""``pycomm bench allreduce``: pycomm.ft's all-reduce against MPICH and gloo, plus its fault timings.

Throughput: for each peer count, three groups of processes run side by side on this host, each
serving one system: pycomm.ft (a :class:`~pycomm.ft.Master` in this process, one
:class:`~pycomm.ft.Communicator` per peer), MPICH (``mpiexec`` ranks calling mpi4py's
``comm.Allreduce(MPI.IN_PLACE, buf)``) and gloo (``torch.distributed`` with backend ``"gloo"``). Every
peer also holds a control connection to this process, which drives all groups:

- a group waits blocked on its control connection (no CPU) while another one is timed, so the
  groups can stay up together and their repetitions can be interleaved, in an order that rotates
  each round, as in :mod:`pycomm.benchmarks.harness`;
- at each size every rank first checks its system's result: integer-valued float32 inputs that
  differ per rank, summed exactly, compared element by element with the known sum (twice before
  timing, once after); a wrong result stops the benchmark;
- timing runs on a zero-filled buffer (repeated in-place sums of anything else grow towards
  infinity); one repetition is a barrier, then ``calls`` all-reduces on every rank; the
  repetition's time per call is the slowest rank's; figures are medians over the repetitions.

Bus bandwidth follows the usual definition for ring-optimal all-reduce: ``2 (n - 1) / n * size``
bytes per call cross each peer's link, so GB/s = that / median seconds per call.

Faults (pycomm only, 4 peers looping checked all-reduces of ``FAULT_SIZE`` bytes in the
``pending_peers() -> update_topology() -> all_reduce`` loop): SIGKILL of one peer until the
survivors' first correct all-reduce in the new epoch (recovery); a new process's ``connect()`` until
its first completed, checked all-reduce (join); SIGSTOP of a peer until the master's
``group_state()`` no longer lists it (eviction), and until the survivors' first correct all-reduce
after it (stall recovery). Peer timestamps are ``time.monotonic()``, one clock for every process on
Linux.
"""

from __future__ import annotations

import contextlib
import faulthandler
import glob
import importlib.util
import json
import math
import os
import select
import signal
import socket
import statistics
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pycomm.errors import InvalidArgumentError, MissingDependencyError, NotSupportedError, PycommError

from .harness import Measurement, Settings
from .units import format_size

__all__ = [
    "ANCHORS",
    "DEFAULT_PEERS",
    "DEFAULT_SIZES",
    "DEFINITIONS",
    "FAULT_PEERS",
    "FAULT_SIZE",
    "QUICK_PEERS",
    "QUICK_SIZES",
    "SYSTEMS",
    "AllreduceConfig",
    "BenchmarkFailed",
    "anchor_availability",
    "bus_bytes",
    "expected_sum",
    "fault_peer",
    "format_report",
    "peer_input",
    "run_allreduce",
    "throughput_peer",
]

KIB = 1 << 10
MIB = 1 << 20

SYSTEMS = ("pycomm", "mpich", "gloo")
ANCHORS = ("mpich", "gloo")
LABELS = {
    "pycomm": "pycomm.ft Communicator.all_reduce",
    "mpich": "MPICH comm.Allreduce(IN_PLACE) via mpi4py",
    "gloo": "gloo torch.distributed.all_reduce",
}
DEFAULT_PEERS = (2, 4)
QUICK_PEERS = (2, 4)
DEFAULT_SIZES = (4 * KIB, 64 * KIB, 1 * MIB, 16 * MIB, 64 * MIB)
QUICK_SIZES = (4 * KIB, 1 * MIB)
DEFAULT_REPEAT = 7
QUICK_REPEAT = 3
DEFAULT_MIN_TIME_S = 0.1
QUICK_MIN_TIME_S = 0.005
DEFAULT_FAULT_TRIALS = 3
QUICK_FAULT_TRIALS = 1
FAULT_PEERS = 4
FAULT_SIZE = 1 * MIB
MAX_PEERS = 16

# Inputs repeat with this (prime) period, so that no power-of-two chunking of the buffer lines up
# with it: a chunk reduced at the wrong offset gives a wrong sum.
PATTERN_PERIOD = 251
_CALLS_LIMIT = 1_000_000
# How long a group may take to start (processes importing torch on a crowded machine) and one
# command to answer.
_START_TIMEOUT = 180.0
_COMMAND_TIMEOUT = 600.0
_FAULT_TIMEOUT = 60.0
_CLOSE_TIMEOUT = 10.0

DEFINITIONS = {
    "size_bytes": "bytes of the float32 array each peer all-reduces (sum, in place)",
    "bus_bytes": "2 (n - 1) / n x size_bytes for n peers: what crosses each peer's link in a ring-optimal "
    "all-reduce (the usual bus-bandwidth convention)",
    "seconds_per_call": "one entry per measured repetition: the slowest rank's time over the repetition's "
    "calls (each rank times a barrier-aligned loop of calls_per_repeat all-reduces)",
    "rank_seconds_per_call": "per rank, its own time per call in each repetition",
    "median_s": "median over the repetitions of seconds_per_call (min_s, max_s, q1_s, q3_s likewise); "
    "latency_us = median_s x 1e6",
    "gbps": "bus_bytes / median_s / 1e9 (bus bandwidth)",
    "ratios": "pycomm gbps / anchor gbps, both medians of the same run with interleaved repetitions; "
    "above 1 pycomm is faster",
    "verified": "checks of the system's result on every rank: integer-valued float32 inputs that differ "
    "per rank, compared element by element with their exact sum, twice before timing and once after; "
    "timing runs on zeros, checked to be zeros still afterwards",
    "recovery_s": "SIGKILL of 1 of 4 peers looping all-reduces -> the last survivor's first correct "
    "all-reduce in a later epoch (monotonic clock, shared by all processes)",
    "join_s": "a new process's Communicator.connect() call -> its first completed, checked all-reduce "
    "(the members admit it from their pending_peers()/update_topology() loop)",
    "eviction_s": "SIGSTOP of 1 of 4 peers -> the master's group_state() no longer lists it (polled "
    "every millisecond); bounded below by the master's heartbeat_timeout",
    "shutdown": "per peer count and system: seconds each peer's close took after the measurements "
    "(pycomm Communicator.close(), gloo destroy_process_group(), MPICH nothing: MPI_Finalize runs at exit), "
    "and the peers whose close did not return within 10 s, with the stacks they printed",
    "stall_recovery_s": "SIGSTOP of 1 of 4 peers -> the last survivor's first correct all-reduce without it",
}

TABLE_NOTES = (
    "size: float32 bytes per peer; us: median latency of one all-reduce (slowest rank, barrier-aligned "
    "loops); GB/s: bus bandwidth = 2(n-1)/n x size / median time (1 GB = 1e9 B)",
    "IQR %: spread of pycomm's repetitions; pycomm/X = pycomm GB/s / X GB/s from medians of the same run "
    "(>1: pycomm faster); every system's results were checked exactly before and after timing",
)


class BenchmarkFailed(PycommError):
    """A peer failed, a result was wrong or a group did not start: the benchmark has no figures."""


@dataclass(frozen=True)
class AllreduceConfig:
    """What one ``pycomm bench allreduce`` run measures."""

    peers: tuple[int, ...] = DEFAULT_PEERS
    sizes: tuple[int, ...] = DEFAULT_SIZES
    anchors: tuple[str, ...] = ANCHORS
    repeat: int = DEFAULT_REPEAT
    warmup: int = 1
    min_time_s: float = DEFAULT_MIN_TIME_S
    recovery: bool = True
    fault_trials: int = DEFAULT_FAULT_TRIALS
    fault_size: int = FAULT_SIZE
    heartbeat_timeout: float = 1.5
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.peers:
            raise InvalidArgumentError("no peer counts given")
        for peers in self.peers:
            if isinstance(peers, bool) or not isinstance(peers, int) or not 2 <= peers <= MAX_PEERS:
                raise InvalidArgumentError(
                    f"peer counts must be whole numbers in [2, {MAX_PEERS}], got {peers}"
                )
        if not self.sizes:
            raise InvalidArgumentError("no sizes given")
        for size in (*self.sizes, self.fault_size):
            if size <= 0 or size % 4 != 0:
                raise InvalidArgumentError(
                    f"size {size} bytes is not a positive multiple of 4 bytes (whole float32 values)"
                )
        unknown = [anchor for anchor in self.anchors if anchor not in ANCHORS]
        if unknown:
            raise InvalidArgumentError(
                f"unsupported anchor {', '.join(unknown)}; choose from {', '.join(ANCHORS)} (or none)"
            )
        if self.fault_trials < 1:
            raise InvalidArgumentError(f"fault trials must be at least 1, got {self.fault_trials}")
        Settings(self.repeat, self.warmup, self.min_time_s)  # checks repeat, warmup and min_time_s

    @property
    def settings(self) -> Settings:
        return Settings(self.repeat, self.warmup, self.min_time_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "peers": list(self.peers),
            "sizes": list(self.sizes),
            "anchors": list(self.anchors),
            "repeat": self.repeat,
            "warmup": self.warmup,
            "min_time_ms": self.min_time_s * 1000,
            "recovery": self.recovery,
            "fault_trials": self.fault_trials,
            "fault_size": self.fault_size,
            "fault_peers": FAULT_PEERS,
            "heartbeat_timeout_s": self.heartbeat_timeout,
            "quick": self.quick,
            "dtype": "float32",
            "op": "sum",
        }


def bus_bytes(size: int, peers: int) -> float:
    """Bytes over each peer's link per all-reduce of ``size`` bytes among ``peers``: 2 (n - 1) / n x size."""
    return 2 * (peers - 1) * size / peers


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


# -- control connections: JSON lines between this process and every peer --------------------------


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


class _Connection:
    """The driver's end of one peer's control connection: lines are read as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lines: deque[dict[str, Any]] = deque()
        self.hello: dict[str, Any] | None = None
        self.closed = False
        self._buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def feed(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Driver:
    """Accepts the peers' control connections and reads from all of them."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self.connections: list[_Connection] = []

    def pump(self, timeout: float) -> None:
        """Waits up to ``timeout`` s for anything to read; accepts and reads what came."""
        open_connections = [c for c in self.connections if not c.closed]
        readable, _, _ = select.select([self._server, *open_connections], [], [], max(timeout, 0.0))
        for item in readable:
            if item is self._server:
                sock, _ = self._server.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.connections.append(_Connection(sock))
            else:
                item.feed()
        for connection in self.connections:
            if connection.hello is None and connection.lines:
                connection.hello = connection.lines.popleft()

    def wait(self, done: Callable[[], bool], timeout: float, what: str, check: Callable[[], None]) -> None:
        """Pumps until ``done()``; ``check()`` raises when a process that should answer has died."""
        deadline = time.monotonic() + timeout
        while not done():
            check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkFailed(f"timed out after {timeout:g} s waiting for {what}")
            self.pump(min(left, 0.05))

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self._server.close()


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


# -- the driver's side: throughput -------------------------------------------------------------


@dataclass
class _Group:
    """One system's peers as the driver sees them."""

    system: str
    peers: int
    driver: _Driver
    alive: Callable[[], str | None]  # a description of the failure once a process died
    connections: list[_Connection] = field(default_factory=list)
    version: str = ""

    def check(self) -> None:
        problem = self.alive()
        if problem is not None:
            raise BenchmarkFailed(f"{self.system} with {self.peers} peers failed: {problem}")

    def adopt(self) -> bool:
        """Takes this group's connections (by their hello); True once every rank said hello."""
        for connection in self.driver.connections:
            hello = connection.hello
            if (
                hello is not None
                and hello.get("system") == self.system
                and connection not in self.connections
            ):
                self.connections.append(connection)
        self.connections.sort(key=lambda c: c.hello["rank"] if c.hello else 0)
        return len(self.connections) == self.peers

    def command(self, body: dict[str, Any], timeout: float = _COMMAND_TIMEOUT) -> list[dict[str, Any]]:
        for connection in self.connections:
            connection.send(body)

        def answered() -> bool:
            return all(c.lines for c in self.connections) or any(
                c.closed and not c.lines for c in self.connections
            )

        self.driver.wait(answered, timeout, f"{self.system} peers to answer {body['op']}", self.check)
        if not all(c.lines for c in self.connections):
            self.check()
            raise BenchmarkFailed(f"a {self.system} peer closed its control connection during {body['op']}")
        replies = [c.lines.popleft() for c in self.connections]
        for rank, reply in enumerate(replies):
            if "error" in reply:
                raise BenchmarkFailed(
                    f"{self.system} rank {rank} failed during {body['op']}:\n{reply['error']}"
                )
        return replies

    def time(self, calls: int) -> list[float]:
        """Each rank's seconds for ``calls`` all-reduces after a barrier."""
        return [float(reply["seconds"]) for reply in self.command({"op": "time", "calls": calls})]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _cluster_alive(processes: Sequence[Any]) -> Callable[[], str | None]:
    def alive() -> str | None:
        for process in processes:
            if not process.running:
                return (
                    f"{process.name} exited with status {process.returncode}:\n{_tail(process.read_stderr())}"
                )
        return None

    return alive


class _MpiJob:
    """``mpiexec -n N`` in a background thread (through :func:`pycomm.testing.run_mpi`)."""

    def __init__(self, peers: int, control: str, timeout: float) -> None:
        from pycomm.testing import run_mpi

        self.result: Any = None
        self.error: BaseException | None = None
        self.expected_end = False

        def launch() -> None:
            try:
                self.result = run_mpi(
                    throughput_peer,
                    peers,
                    args=("mpich", control, peers, -1, {}),
                    timeout=timeout,
                    check=False,
                )
            except BaseException as error:
                self.error = error

        self.thread = threading.Thread(target=launch, name="pycomm-bench-mpiexec", daemon=True)
        self.thread.start()

    def alive(self) -> str | None:
        if self.thread.is_alive() or self.expected_end:
            return None
        if self.error is not None:
            return f"mpiexec could not run: {self.error}"
        ranks = "\n".join(
            f"{rank.name} {rank.status()}:\n{_tail(rank.stderr)}" for rank in self.result.ranks if not rank.ok
        )
        launcher = _tail(self.result.launcher_stderr + self.result.launcher_stdout)
        return f"mpiexec ended (status {self.result.returncode}):\n{ranks}\n{launcher}"


def anchor_availability(anchors: Sequence[str]) -> dict[str, str | None]:
    """For each anchor, None where it can run here, else why not (with the install command)."""
    found: dict[str, str | None] = {}
    for anchor in anchors:
        reason = None
        if anchor == "mpich":
            from pycomm.testing import find_mpiexec

            try:
                find_mpiexec("the MPICH anchor of pycomm bench allreduce")
            except (MissingDependencyError, NotSupportedError) as error:
                reason = str(error)
        elif importlib.util.find_spec("torch") is None:
            reason = str(
                MissingDependencyError(
                    "the gloo anchor of pycomm bench allreduce",
                    "torch",
                    'pip install "pycomm[torch]"  (a CPU build: pip install torch==2.13.0)',
                )
            )
        found[anchor] = reason
    return found


def _calibrate(group: _Group, min_time_s: float) -> int:
    """Calls per repetition so that the slowest rank's repetition lasts at least ``min_time_s``."""
    calls = 1
    while True:
        elapsed = max(group.time(calls))
        if elapsed >= min_time_s or calls >= _CALLS_LIMIT:
            return calls
        per_call = max(elapsed / calls, 1e-9)
        calls = min(_CALLS_LIMIT, max(calls + 1, min(calls * 100, math.ceil(1.2 * min_time_s / per_call))))


def _verification(replies: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    return {
        "phase": phase,
        "checks_per_rank": replies[0]["checks"],
        "wrong_elements": [sum(reply["wrong"]) for reply in replies],
        "nonzero_after_timing": [reply.get("nonzero_after_timing", 0) for reply in replies],
    }


def _measure_size(
    groups: Sequence[_Group], peers: int, size: int, settings: Settings, progress: Callable[[str], None]
) -> dict[str, Any]:
    count = size // 4
    checks: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        checks[group.system] = [_verification(group.command({"op": "prepare", "elements": count}), "before")]
    _raise_if_wrong(checks, peers, size)
    calls = {group.system: _calibrate(group, settings.min_time_s) for group in groups}
    progress(
        f"peers {peers}, {format_size(size)}: "
        + ", ".join(f"{system} {n} call(s) a repetition" for system, n in calls.items())
    )
    samples: dict[str, list[float]] = {group.system: [] for group in groups}
    per_rank: dict[str, list[list[float]]] = {group.system: [[] for _ in range(peers)] for group in groups}
    for round_index in range(settings.warmup + settings.repeat):
        for offset in range(len(groups)):
            group = groups[(round_index + offset) % len(groups)]
            seconds = group.time(calls[group.system])
            if round_index >= settings.warmup:
                samples[group.system].append(max(seconds) / calls[group.system])
                for rank, value in enumerate(seconds):
                    per_rank[group.system][rank].append(value / calls[group.system])
    for group in groups:
        checks[group.system].append(_verification(group.command({"op": "check"}), "after"))
    _raise_if_wrong(checks, peers, size)
    results: dict[str, Any] = {}
    for group in groups:
        # Bus bytes are fractional for peer counts such as 3 (2 x 2/3 x size): kept exact, as a float.
        measurement = Measurement(
            LABELS[group.system], bus_bytes(size, peers), calls[group.system], tuple(samples[group.system])
        )
        results[group.system] = {
            **measurement.to_json(),
            "latency_us": measurement.median_s * 1e6,
            "rank_seconds_per_call": per_rank[group.system],
            "verified": {
                "ok": True,
                "ranks": peers,
                "elements": count,
                "checks_per_rank": sum(check["checks_per_rank"] for check in checks[group.system]),
                "phases": checks[group.system],
            },
        }
    pycomm = results.get("pycomm")
    ratios = {
        system: pycomm["gbps"] / entry["gbps"]
        for system, entry in results.items()
        if system != "pycomm" and pycomm is not None
    }
    return {
        "peers": peers,
        "size_bytes": size,
        "elements": count,
        "dtype": "float32",
        "op": "sum",
        "bus_bytes": bus_bytes(size, peers),
        "results": results,
        "ratios": ratios,
    }


def _raise_if_wrong(checks: dict[str, list[dict[str, Any]]], peers: int, size: int) -> None:
    for system, phases in checks.items():
        for phase in phases:
            if any(phase["wrong_elements"]) or any(phase["nonzero_after_timing"]):
                raise BenchmarkFailed(
                    f"{system} computed a wrong all-reduce with {peers} peers at {format_size(size)} "
                    f"({phase['phase']} timing): wrong elements per rank {phase['wrong_elements']}, "
                    f"non-zero elements of the timed zeros per rank {phase['nonzero_after_timing']}"
                )


def _run_peer_count(
    peers: int,
    systems: Sequence[str],
    config: AllreduceConfig,
    progress: Callable[[str], None],
    versions: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Starts every system's group of ``peers`` processes, measures every size, stops them."""
    from pycomm.ft import Master
    from pycomm.testing import LocalCluster, free_port

    progress(f"peers {peers}: starting {', '.join(systems)} ({peers} processes per system)")
    lifetime = _START_TIMEOUT + _COMMAND_TIMEOUT * 4
    driver = _Driver()
    mpi_job: _MpiJob | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(driver.close)
        cluster = stack.enter_context(LocalCluster(timeout=lifetime))
        groups: list[_Group] = []
        spawned: dict[str, list[Any]] = {}
        for system in systems:
            if system == "mpich":
                mpi_job = _MpiJob(peers, driver.address, lifetime)
                groups.append(_Group(system, peers, driver, mpi_job.alive))
                continue
            if system == "pycomm":
                master = stack.enter_context(Master())
                options: dict[str, Any] = {"master": master.address}
            else:
                options = {"port": free_port()}
            processes = [
                cluster.spawn(
                    throughput_peer,
                    args=(system, driver.address, peers, rank, options),
                    name=f"{system}-{rank}",
                )
                for rank in range(peers)
            ]
            spawned[system] = processes
            groups.append(_Group(system, peers, driver, _cluster_alive(processes)))
        try:
            for group in groups:

                def ready(group: _Group = group) -> bool:
                    return group.adopt()

                driver.wait(ready, _START_TIMEOUT, f"{group.system}'s {peers} peers to start", group.check)
                group.version = group.connections[0].hello.get("version", "")
                versions.setdefault(group.system, group.version)
            cases = [_measure_size(groups, peers, size, config.settings, progress) for size in config.sizes]
            shutdown = _stop_groups(driver, groups, mpi_job, spawned)
            for system, record in shutdown.items():
                if record["did_not_close"]:
                    progress(
                        f"peers {peers}: {len(record['did_not_close'])} {system} peer(s) did not return from "
                        f"close() within {_CLOSE_TIMEOUT:g} s (stacks in the JSON)"
                    )
            with contextlib.suppress(PycommError):
                cluster.wait_all(timeout=30, check=False)
        finally:
            if mpi_job is not None:
                mpi_job.expected_end = True
                driver.close()  # its ranks see their control connection close and leave
                mpi_job.thread.join(timeout=60)
    return cases, {"peers": peers, "systems": shutdown}


def _stop_groups(
    driver: _Driver, groups: Sequence[_Group], mpi_job: _MpiJob | None, processes: dict[str, list[Any]]
) -> dict[str, Any]:
    """Tells every peer to leave; returns per system how long each peer's close took, and which did
    not return from it (with the stacks the peer printed)."""
    for group in groups:
        for connection in group.connections:
            with contextlib.suppress(OSError):
                connection.send({"op": "exit"})

    def answered() -> bool:
        return all(c.lines or c.closed for group in groups for c in group.connections)

    with contextlib.suppress(BenchmarkFailed):
        driver.wait(answered, _CLOSE_TIMEOUT + 5, "peers to leave", lambda: None)
    if mpi_job is not None:
        mpi_job.expected_end = True
        mpi_job.thread.join(timeout=60)
    shutdown: dict[str, Any] = {}
    for group in groups:
        closed, hung = [], []
        for rank, connection in enumerate(group.connections):
            reply = connection.lines.popleft() if connection.lines else {}
            if "closed_s" in reply:
                closed.append(reply["closed_s"])
                continue
            stacks = ""
            for process in processes.get(group.system, []):
                if process.pid == connection.hello.get("pid"):
                    with contextlib.suppress(PycommError):
                        process.wait(timeout=_CLOSE_TIMEOUT, check=False)
                    stacks = _tail(process.read_stderr(), 60)
            hung.append({"rank": rank, "stderr_tail": stacks})
        shutdown[group.system] = {"close_s": closed, "did_not_close": hung}
    return shutdown


# -- the driver's side: faults ------------------------------------------------------------------


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


@dataclass
class _FaultPeer:
    process: Any
    connection: _Connection | None = None
    first_ops: dict[int, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    gone: bool = False

    @property
    def peer_id(self) -> str:
        return self.connection.hello["peer_id"] if self.connection and self.connection.hello else ""


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "samples_s": list(samples),
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
    }


class _FaultRun:
    """Four pycomm peers looping checked all-reduces; kills, stalls and newcomers, timed."""

    def __init__(self, config: AllreduceConfig, progress: Callable[[str], None]) -> None:
        self.config = config
        self.progress = progress
        self.peers: list[_FaultPeer] = []
        self.problems: list[str] = []

    def run(self) -> dict[str, Any]:
        from pycomm.ft import Master
        from pycomm.testing import LocalCluster

        config = self.config
        trials: list[dict[str, Any]] = []
        with (
            Master(heartbeat_timeout=config.heartbeat_timeout) as master,
            LocalCluster(timeout=_START_TIMEOUT + 60.0 * config.fault_trials + 60.0) as cluster,
        ):
            self.master, self.cluster, self.driver = master, cluster, _Driver()
            try:
                self.progress(
                    f"faults: starting {FAULT_PEERS} pycomm peers looping {format_size(config.fault_size)} "
                    "all-reduces"
                )
                for _ in range(FAULT_PEERS):
                    self._spawn(FAULT_PEERS)
                self._wait_steady(0, "the first group of 4 to run")
                for trial in range(config.fault_trials):
                    trials.append(self._trial(trial))
                counts = self._counts()
            except BenchmarkFailed as error:
                raise BenchmarkFailed(f"{error}\n{self._diagnosis()}") from None
            finally:
                for peer in self.peers:
                    if peer.connection is not None:
                        with contextlib.suppress(OSError):
                            peer.connection.send({"op": "exit"})
                self.driver.close()
        # The cluster's exit killed the last peers: their shared-memory segments are removed here.
        for peer in self.peers:
            if peer.peer_id:
                for path in glob.glob(f"/dev/shm/pycomm-*-{peer.peer_id}-*"):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        master_settings = {
            "heartbeat_timeout_s": master.heartbeat_timeout,
            "recovery_timeout_s": master.recovery_timeout,
        }
        return {
            "peers": FAULT_PEERS,
            "size_bytes": config.fault_size,
            "trials": config.fault_trials,
            "master": master_settings,
            "recovery": _summary([t["recovery_s"] for t in trials]),
            "join": _summary([s for t in trials for s in t["join_s"]]),
            "eviction": _summary([t["eviction_s"] for t in trials]),
            "stall_recovery": _summary([t["stall_recovery_s"] for t in trials]),
            "per_trial": trials,
            "ops": counts,
        }

    # -- the sequence of one trial ----------------------------------------------------------

    def _trial(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {"trial": index, "join_s": [], "join_admitted_s": []}
        # (a) SIGKILL one of 4.
        victim = self._members()[1]
        epoch = self.master.group_state()["epoch"]
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.gone = True
        firsts = self._wait_steady(epoch, "the survivors of a SIGKILL to run a correct all-reduce")
        record["recovery_s"] = max(op["t"] for op in firsts.values()) - killed_at
        record["recovery_survivors_s"] = sorted(op["t"] - killed_at for op in firsts.values())
        record["recovery_epochs"] = [epoch, min(op["first_op"] for op in firsts.values())]
        # (b) a newcomer joins the 3.
        self._join(record)
        # (c) SIGSTOP one of 4: eviction, then the survivors' recovery.
        victim = self._members()[2]
        epoch = self.master.group_state()["epoch"]
        stopped_at = time.monotonic()
        victim.process.stall()
        deadline = stopped_at + _FAULT_TIMEOUT
        while victim.peer_id in self.master.group_state()["members"]:
            if time.monotonic() > deadline:
                raise BenchmarkFailed(
                    f"the master did not evict a SIGSTOPped peer within {_FAULT_TIMEOUT:g} s"
                )
            self._check()
            self.driver.pump(0.001)
            self._collect()
        record["eviction_s"] = time.monotonic() - stopped_at
        victim.gone = True
        firsts = self._wait_steady(epoch, "the survivors of a SIGSTOP to run a correct all-reduce")
        record["stall_recovery_s"] = max(op["t"] for op in firsts.values()) - stopped_at
        victim.process.kill()
        # Back to 4 for the next trial (another join sample).
        self._join(record)
        self.progress(
            f"faults: trial {index + 1}: recovery {record['recovery_s'] * 1e3:.0f} ms, joins "
            + ", ".join(f"{s * 1e3:.0f}" for s in record["join_s"])
            + f" ms, eviction {record['eviction_s'] * 1e3:.0f} ms, stall recovery "
            f"{record['stall_recovery_s'] * 1e3:.0f} ms"
        )
        return record

    def _join(self, record: dict[str, Any]) -> None:
        epoch = self.master.group_state()["epoch"]
        newcomer = self._spawn(0)
        self._wait_steady(epoch, "a newcomer to join and run a correct all-reduce")
        hello = newcomer.connection.hello  # type: ignore[union-attr]
        record["join_s"].append(newcomer.first_ops[min(newcomer.first_ops)]["t"] - hello["connect_start"])
        record["join_admitted_s"].append(hello["connected"] - hello["connect_start"])

    # -- bookkeeping ------------------------------------------------------------------------

    def _spawn(self, min_world: int) -> _FaultPeer:
        process = self.cluster.spawn(
            fault_peer,
            args=(self.driver.address, self.master.address, min_world, self.config.fault_size // 4),
            name=f"fault-{len(self.peers)}",
        )
        peer = _FaultPeer(process)
        self.peers.append(peer)
        return peer

    def _members(self) -> list[_FaultPeer]:
        return [peer for peer in self.peers if not peer.gone]

    def _collect(self) -> None:
        """Hands new connections to their peers (by pid) and files the peers' reports."""
        by_pid = {peer.process.pid: peer for peer in self.peers}
        for connection in self.driver.connections:
            hello = connection.hello
            if hello is not None and hello.get("system") == "fault":
                peer = by_pid.get(hello["pid"])
                if peer is not None and peer.connection is None:
                    peer.connection = connection
        for peer in self.peers:
            while peer.connection is not None and peer.connection.lines:
                line = peer.connection.lines.popleft()
                peer.last = line
                if "first_op" in line:
                    peer.first_ops.setdefault(int(line["first_op"]), line)
                if "mismatch" in line or line.get("ok") is False:
                    self.problems.append(
                        f"{peer.process.name}: {line.get('mismatch', 'wrong all-reduce result')}"
                    )

    def _check(self) -> None:
        if self.problems:
            raise BenchmarkFailed(
                "pycomm computed a wrong all-reduce during the fault measurements: "
                + "; ".join(self.problems[:5])
            )
        for peer in self._members():
            if not peer.process.running:
                raise BenchmarkFailed(
                    f"pycomm peer {peer.process.name} exited with status {peer.process.returncode} "
                    f"during the fault measurements:\n{_tail(peer.process.read_stderr())}"
                )

    def _wait_steady(self, after_epoch: int, what: str) -> dict[str, dict[str, Any]]:
        """Waits until every live peer completed a correct all-reduce in an epoch after ``after_epoch``
        with all of them as members; returns each one's first such report."""
        members = self._members()

        def firsts() -> dict[str, dict[str, Any]] | None:
            self._collect()
            self._check()
            found = {}
            for peer in members:
                later = [op for epoch, op in peer.first_ops.items() if epoch > after_epoch]
                if not later:
                    return None
                found[peer.process.name] = min(later, key=lambda op: op["t"])
            if any(op["world"] != len(members) for op in found.values()):
                # A first all-reduce in a group of another size: wait for the group's next epoch.
                return None
            return found

        result: dict[str, dict[str, Any]] = {}

        def done() -> bool:
            found = firsts()
            if found is not None:
                result.update(found)
            return found is not None

        self.driver.wait(done, _FAULT_TIMEOUT, what, self._check)
        return result

    def _diagnosis(self) -> str:
        """What the master holds and logged, what every peer last reported, and the peers' stacks."""
        lines = [f"master: {self.master.group_state()}"]
        lines += [f"  master {when:.3f}: {what}" for when, what in list(self.master.events)[-40:]]
        for peer in self.peers:
            process = peer.process
            state = "running" if process.running else f"exited {process.returncode}"
            if process.running and process.stalled:
                state = "stopped"
            lines.append(f"{process.name} ({state}, gone={peer.gone}, {peer.peer_id[:8]}): last {peer.last}")
        for peer in self._members():
            if peer.process.running and not peer.process.stalled:
                peer.process.dump_stacks()
        for peer in self._members():
            lines.append(f"--- {peer.process.name} stderr:\n{_tail(peer.process.read_stderr(), 80)}")
        return "\n".join(lines)

    def _counts(self) -> dict[str, int]:
        totals = {"ops": 0, "verified": 0, "unverified": 0, "aborts": 0, "mismatches": 0}
        self._collect()
        for peer in self.peers:
            for key in totals:
                totals[key] += int(peer.last.get(key, 0))
        return totals


# -- the whole run, and what people read -------------------------------------------------------


def run_allreduce(config: AllreduceConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measures everything ``config`` asks for; returns the JSON document of the run."""
    from .machine import machine_info

    report = progress or (lambda line: None)
    started = time.monotonic()
    availability = anchor_availability(config.anchors)
    for anchor, reason in availability.items():
        if reason is not None:
            report(f"skipping the {anchor} anchor: {reason}")
    systems = ["pycomm", *(anchor for anchor in config.anchors if availability[anchor] is None)]
    machine = machine_info()
    versions: dict[str, str] = {}
    cases: list[dict[str, Any]] = []
    shutdowns: list[dict[str, Any]] = []
    for peers in config.peers:
        measured, shutdown = _run_peer_count(peers, systems, config, report, versions)
        cases += measured
        shutdowns.append(shutdown)
    faults = _FaultRun(config, report).run() if config.recovery else None
    return {
        "benchmark": "allreduce",
        "machine": machine,
        "settings": config.settings.to_json(),
        "options": config.to_json(),
        "definitions": DEFINITIONS,
        "systems": {
            system: {
                "label": LABELS[system],
                "measured": system in systems,
                "version": versions.get(system),
                "skipped": availability.get(system),
            }
            for system in ("pycomm", *config.anchors)
        },
        "cases": cases,
        "shutdown": shutdowns,
        "faults": faults,
        "seconds": time.monotonic() - started,
    }


def _cell(entry: dict[str, Any] | None, key: str, scale: float = 1.0) -> Any:
    return "-" if entry is None else entry[key] * scale


def format_report(document: dict[str, Any]) -> str:
    """The throughput table (one row per peer count and size), then the fault timings."""
    from pycomm.cli.output import format_table

    anchors = [a for a in document["options"]["anchors"] if document["systems"][a]["measured"]]
    parts = [*TABLE_NOTES]
    for name, system in document["systems"].items():
        if system["skipped"]:
            parts.append(f"note: the {name} anchor was skipped: {system['skipped']}")
        elif system["version"]:
            parts.append(f"{name}: {system['label']} ({system['version']})")
    names = {"mpich": "MPICH", "gloo": "gloo"}
    headers = ["peers", "size", "pycomm us", "pycomm GB/s", "IQR %"]
    for anchor in anchors:
        headers += [f"{names[anchor]} us", f"{names[anchor]} GB/s"]
    headers += [f"pycomm/{names[anchor]}" for anchor in anchors]
    rows = []
    for case in document["cases"]:
        results = case["results"]
        pycomm = results["pycomm"]
        spread = (pycomm["q3_s"] - pycomm["q1_s"]) / pycomm["median_s"]
        row = [
            case["peers"],
            format_size(case["size_bytes"]),
            pycomm["latency_us"],
            pycomm["gbps"],
            round(100 * spread, 1),
        ]
        for anchor in anchors:
            row += [_cell(results.get(anchor), "latency_us"), _cell(results.get(anchor), "gbps")]
        row += [case["ratios"].get(anchor, "-") for anchor in anchors]
        rows.append(row)
    parts += ["", format_table(headers, rows)]
    for shutdown in document.get("shutdown", []):
        for system, record in shutdown["systems"].items():
            if record["did_not_close"]:
                parts.append(
                    f"warning: with {shutdown['peers']} peers, {len(record['did_not_close'])} {system} "
                    f"peer(s) did not return from close() within {_CLOSE_TIMEOUT:g} s (stacks in the JSON)"
                )
    faults = document["faults"]
    if faults is not None:
        master = faults["master"]
        parts += [
            "",
            f"pycomm faults: {faults['peers']} peers looping checked {format_size(faults['size_bytes'])} "
            f"all-reduces, {faults['trials']} trial(s); master heartbeat_timeout "
            f"{master['heartbeat_timeout_s']:g} s, recovery_timeout {master['recovery_timeout_s']:g} s; "
            f"{faults['ops']['verified']} all-reduces checked, {faults['ops']['mismatches']} wrong, "
            f"{faults['ops']['aborts']} aborted (retried)",
        ]
        fault_rows = [
            [
                label,
                len(faults[key]["samples_s"]),
                faults[key]["median_s"] * 1e3,
                faults[key]["min_s"] * 1e3,
                faults[key]["max_s"] * 1e3,
            ]
            for key, label in (
                ("recovery", "recovery: SIGKILL 1 of 4 -> survivors' first correct all-reduce"),
                ("join", "join: newcomer connect() -> its first all-reduce"),
                ("eviction", "eviction: SIGSTOP 1 of 4 -> gone from group_state()"),
                ("stall_recovery", "stall recovery: SIGSTOP -> survivors' first correct all-reduce"),
            )
        ]
        parts += [format_table(("measurement", "samples", "median ms", "min ms", "max ms"), fault_rows)]
    return "\n".join(parts)
