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

The peers' side (the backends and the functions the child processes run) is in
:mod:`.allreduce_peer`, the fault measurements in :mod:`.allreduce_faults`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycomm.errors import InvalidArgumentError, MissingDependencyError, NotSupportedError, PycommError

from .allreduce_peer import (
    _CLOSE_TIMEOUT,
    _COMMAND_TIMEOUT,
    _START_TIMEOUT,
    expected_sum,
    fault_peer,
    peer_input,
    throughput_peer,
)
from .allreduce_peer import PATTERN_PERIOD as PATTERN_PERIOD
from .harness import Measurement, Settings, check_float32_sizes, check_process_counts
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
_CALLS_LIMIT = 1_000_000

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
        check_process_counts(self.peers, "peer counts", MAX_PEERS)
        check_float32_sizes(self.sizes)
        check_float32_sizes([self.fault_size])
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


# -- control connections: the driver's end (the peer's is in .allreduce_peer) ----------------------


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
    from .allreduce_faults import _FaultRun

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
        fault_rows = fault_table_rows(
            faults,
            (
                ("recovery", "recovery: SIGKILL 1 of 4 -> survivors' first correct all-reduce"),
                ("join", "join: newcomer connect() -> its first all-reduce"),
                ("eviction", "eviction: SIGSTOP 1 of 4 -> gone from group_state()"),
                ("stall_recovery", "stall recovery: SIGSTOP -> survivors' first correct all-reduce"),
            ),
        )
        parts += [format_table(("measurement", "samples", "median ms", "min ms", "max ms"), fault_rows)]
    return "\n".join(parts)


def fault_table_rows(faults: dict[str, Any], rows: Sequence[tuple[str, str]]) -> list[list[Any]]:
    """Table rows (label, samples, median/min/max ms) of fault measurements ``(key, label)``."""
    return [
        [
            label,
            len(faults[key]["samples_s"]),
            faults[key]["median_s"] * 1e3,
            faults[key]["min_s"] * 1e3,
            faults[key]["max_s"] * 1e3,
        ]
        for key, label in rows
    ]
