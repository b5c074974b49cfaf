"""``pycomm bench allreduce --wan SPEC``: pycomm.ft's all-reduce over emulated WAN links.

Each peer count gets a :class:`pycomm.testing.netem.Network` of one namespace per peer plus one for
the :class:`~pycomm.ft.Master` (slot 0; its links carry control messages only), every link with the
round trip, rate and loss of ``SPEC``. The peers (:mod:`.allreduce_wan_peer`, started in their
namespaces with ``Network.spawn``; ``shared_memory=False``, listening on their ``wan0`` address) each
hold two communicators, one per pycomm group:

- ``auto``: ``connections=None``, then ``optimize_topology()``: every link probed, the pool of
  connections to the next peer sized from its measured bandwidth and round trip and the socket
  buffer limits; it also runs the int8 all-reduces (``quantization="int8"``);
- ``single``: ``connections=1``, one connection per operation, the scheme of PCCL;

and the physical anchors are plain TCP over the same ring of links, all links at once: with 1 and
with 4 streams per link in a steady state (a sender and a receiver per link, started for each
repetition), and moving once the very bytes the pool's and the int8 all-reduce sent (``once``,
``once-int8``: as many persistent connections per link as the pool, every link starting at one
instant).

A repetition of a pycomm system is one all-reduce of ``size`` bytes of float32 on every peer, all
starting at one instant of the machine's monotonic clock (which the namespaces share) that a barrier
agreed on; its time is the slowest peer's, from that instant. (Timed from each peer's own exit from
a barrier, it would include the barrier's skew: the peers leave it up to a one-way delay apart, and
one that starts early waits for the others' bytes.) Every one of them is checked on every peer:
integer-valued inputs that differ per rank and per repetition, compared element by element with
their exact sum (int8: every element within the bound ``Communicator.all_reduce`` documents), and the
result's hash compared across peers (the same bytes everywhere). A steady-state TCP repetition counts
the bytes each receiver got during a window after a warm-up (slow start left out); its figure is the
slowest link's. A one-shot TCP repetition is timed like a pycomm one, to the last byte on the slowest
link. The systems' repetitions are interleaved, in an order that rotates each round; figures are
medians.

Bus bandwidth is ``2 (n - 1) / n * size`` bytes per all-reduce (what each peer's link carries in a
ring), in Gbit/s, and is reported as a share of the link rate. For int8 the same unquantized bytes
give the effective data rate. Rates count IP packets: TCP over a 1500-byte MTU carries at most 96.5%
of the link rate as data.

Faults (:mod:`.allreduce_wan_faults`): ``FAULT_PEERS`` peers loop checked all-reduces of
``fault_size`` bytes over the links; one is SIGKILLed half way through an all-reduce, and the times
from the kill to the master ending the epoch (detection), to the survivors' ``Aborted``, and to the
last survivor's first correct all-reduce in the new epoch (recovery) are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pycomm.errors import InvalidArgumentError, NotSupportedError

from .allreduce import BenchmarkFailed, bus_bytes, fault_table_rows
from .harness import Measurement, check_float32_sizes, check_process_counts
from .units import format_size

__all__ = [
    "DEFAULT_WAN_PEERS",
    "DEFAULT_WAN_SIZES",
    "FAULT_PEERS",
    "QUICK_WAN_PEERS",
    "QUICK_WAN_SIZES",
    "SYSTEMS",
    "TARGETS",
    "WanConfig",
    "format_wan_report",
    "run_wan",
]

MIB = 1 << 20
PEER_MODULE = "pycomm.benchmarks.allreduce_wan_peer"

SYSTEMS = ("auto", "single", "int8", "tcp1", "tcp4", "once", "once-int8")
LABELS = {
    "auto": "pycomm all_reduce, connections=None, pool sized by optimize_topology() from the link measured",
    "single": "pycomm all_reduce, connections=1 (one connection per operation, PCCL's scheme)",
    "int8": "pycomm all_reduce(quantization='int8'), connections=None; effective rate of the float32 data",
    "tcp1": "plain TCP, 1 stream per ring link, every link at once",
    "tcp4": "plain TCP, 4 streams per ring link, every link at once",
    "once": "plain TCP moving once, every link at once, the bytes the pool's all-reduce sends, over as many "
    "persistent connections",
    "once-int8": "the same, with the bytes the int8 all-reduce sends; the rate of the float32 data they "
    "carry",
}
SHORT = {
    "auto": "pycomm pool",
    "single": "pycomm 1 conn",
    "int8": "pycomm int8",
    "tcp1": "TCP 1 stream",
    "tcp4": "TCP 4 streams",
    "once": "TCP once",
    "once-int8": "TCP once, int8",
}
# The one-shot TCP anchors: the pycomm system whose bytes each moves.
ONCE = {"once": "auto", "once-int8": "int8"}
TCP_STREAMS = {"tcp1": 1, "tcp4": 4}
# How long the links between the peers may take to go quiet after a steady-state TCP anchor.
QUIET_LIMIT_S = 10.0
# (system, peers, least share of the link rate) the benchmark is measured against, for 256 MiB.
TARGETS = (("auto", 2, 0.9), ("auto", 4, 0.9), ("int8", 2, 3.5))
TARGET_SIZE = 256 * MIB

DEFAULT_WAN_PEERS = (2, 4)
QUICK_WAN_PEERS = (2,)
DEFAULT_WAN_SIZES = (256 * MIB,)
QUICK_WAN_SIZES = (1 * MIB,)
DEFAULT_WAN_REPEAT = 3
QUICK_WAN_REPEAT = 2
FAULT_PEERS = 3
DEFAULT_FAULT_SIZE = 64 * MIB
QUICK_FAULT_SIZE = 1 * MIB
MAX_WAN_PEERS = 8
_START_TIMEOUT = 180.0
_STEADY_TIMEOUT = 120.0
# What the emulated network counted over a whole case (netem.Network.stats()).
_NETWORK_COUNTERS = (
    "forwarded_packets",
    "forwarded_bytes",
    "dropped_loss",
    "dropped_queue_full",
    "dropped_other",
)


@dataclass(frozen=True)
class WanConfig:
    """What one ``pycomm bench allreduce --wan`` run measures. ``link``: what
    :func:`pycomm.testing.netem.parse_link` returns (a rate is required: figures are shares of it)."""

    link: dict[str, float]
    peers: tuple[int, ...] = DEFAULT_WAN_PEERS
    sizes: tuple[int, ...] = DEFAULT_WAN_SIZES
    repeat: int = DEFAULT_WAN_REPEAT
    warmup: int = 1
    recovery: bool = True
    fault_trials: int = 3
    fault_size: int = DEFAULT_FAULT_SIZE
    tcp_warmup_s: float = 1.0
    tcp_window_s: float = 2.0
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.link.get("rate"):
            raise InvalidArgumentError(
                "--wan needs a rate (e.g. rtt=50ms,rate=1gbit): the figures are shares of the link rate"
            )
        check_process_counts(self.peers, "peer counts", MAX_WAN_PEERS)
        check_float32_sizes(self.sizes)
        check_float32_sizes([self.fault_size])
        if self.repeat < 1 or self.warmup < 0 or self.fault_trials < 1:
            raise InvalidArgumentError(
                f"repeat and fault trials must be at least 1 and warmup at least 0, got repeat "
                f"{self.repeat}, warmup {self.warmup}, fault trials {self.fault_trials}"
            )
        if not (self.tcp_warmup_s >= 0 and self.tcp_window_s > 0):
            raise InvalidArgumentError("the TCP warm-up must be >= 0 s and its window > 0 s")

    @property
    def rate(self) -> float:
        return float(self.link["rate"])

    @property
    def rtt(self) -> float:
        return float(self.link.get("rtt", 0.0))

    def master_timeouts(self) -> dict[str, float]:
        """The master's timeouts over the link (as ``pycomm stress --wan`` scales them)."""
        return {"heartbeat_timeout": 1.5 + 20 * self.rtt, "recovery_timeout": 2.0 + 40 * self.rtt}

    def operation_timeout(self, size: int) -> float:
        """Every operation's deadline: a minute plus ten times the all-reduce at the link rate."""
        return 60.0 + 10 * 2 * size * 8 / self.rate

    def to_json(self) -> dict[str, Any]:
        return {
            "link": dict(self.link),
            "peers": list(self.peers),
            "sizes": list(self.sizes),
            "repeat": self.repeat,
            "warmup": self.warmup,
            "recovery": self.recovery,
            "fault_trials": self.fault_trials,
            "fault_size": self.fault_size,
            "fault_peers": FAULT_PEERS,
            "tcp_warmup_s": self.tcp_warmup_s,
            "tcp_window_s": self.tcp_window_s,
            "quick": self.quick,
            "dtype": "float32",
            "op": "sum",
            **self.master_timeouts(),
        }


DEFINITIONS = {
    "bus_bytes": "2 (n - 1) / n x size_bytes for n peers: what crosses each peer's link in a ring all-reduce",
    "seconds_per_call": "per repetition, the slowest peer's time for one all-reduce, from an instant of "
    "the shared monotonic clock every peer starts at (rank_seconds: every peer's)",
    "barrier_skew_s": "per repetition, how far apart the peers left the barrier that agreed on the "
    "instant (what timing from each peer's own exit would have added)",
    "late_starts": "peers that left that barrier after the instant (timed from the instant all the same)",
    "held_s": "pycomm, the median over repetitions of the instant the last peer held the whole result "
    "(OpInfo.held_seconds, from the start instant)",
    "committed_s": "the same for the instant the last peer knew every peer held it (the ring barrier that "
    "ends every operation: OpInfo.committed_seconds); from there to seconds_per_call, the copy of the "
    "result into the caller's array",
    "gbps": "pycomm: bus_bytes x 8 / median seconds / 1e9 (int8: of the unquantized float32 bytes, the "
    "effective data rate); TCP: the median over repetitions of the slowest link's data rate",
    "link_ratio": "gbps / the link rate (rates count IP packets: TCP data is at most 96.5% of them)",
    "wire_fraction": "int8: the bytes sent / the unquantized bytes, (n / 2 + 1) / 8 (scales and headers "
    "aside)",
    "ratios": "medians of the same run: auto / single, auto / tcp1, auto / tcp4, int8 / auto, auto / once, "
    "int8 / once-int8",
    "verified": "every timed all-reduce on every peer: integer-valued inputs that differ per rank and "
    "repetition, compared element by element with the exact sum (int8: within the documented bound, "
    "max_error and bound reported), and the result's hash equal on every peer",
    "auto_pool_connections": "per peer, the established connections its connections=None communicator "
    "opened to the next peer (read from the namespace's /proc/net/tcp)",
    "auto_ring_connections": "per peer, the pool its connections=None communicator says it has "
    "(Communicator.ring_connections)",
    "probe_gbps": "per peer, the bandwidth optimize_topology() measured to its next peer in the ring",
    "probe_s": "per peer, how long optimize_topology() took (probing every link, then a new epoch)",
    "detect_s": "SIGKILL of 1 of 3 peers half way through an all-reduce -> the master ends the epoch",
    "aborted_s": "SIGKILL -> the last survivor's all-reduce raises Aborted (the new epoch has begun)",
    "recovery_s": "SIGKILL -> the last survivor's first correct all-reduce in the new epoch (it includes "
    "re-running that all-reduce)",
    "operation_s": "the median time between a survivor's completed all-reduces before the kill",
    "network": "per case, the emulated network's packet counters over the whole case (pycomm and TCP): "
    "forwarded, dropped by the emulated loss, by a full link queue, and elsewhere",
}


# -- processes in the namespaces, and their pipes ------------------------------------------------


class _Process:
    """A peer program in a namespace; JSON lines from its standard output are read as they come."""

    def __init__(self, net: Any, slot: int, argv: Sequence[str], name: str, workdir: str) -> None:
        self.name, self.slot = name, slot
        self.stderr_path = os.path.join(workdir, f"{name}.err")
        self.lines: deque[dict[str, Any]] = deque()
        self.expected_exit = False
        self._buffer = b""
        self.eof = False
        with open(self.stderr_path, "wb") as stderr:
            self.popen = net.spawn(
                slot,
                [sys.executable, "-m", PEER_MODULE, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
                cwd=workdir,  # `-m` puts the working directory first on the path: nothing to import there
            )
        os.set_blocking(self.popen.stdout.fileno(), False)

    def fileno(self) -> int:
        return self.popen.stdout.fileno()

    def feed(self) -> None:
        try:
            data = os.read(self.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.popen.stdin.write(json.dumps(message).encode() + b"\n")
            self.popen.stdin.flush()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.expected_exit = True

    def problem(self) -> str | None:
        """Why this process cannot answer: it reported an error, or it exited unexpectedly and every
        line it wrote has been read and taken."""
        for line in self.lines:
            if "error" in line:
                return f"{self.name} failed:\n{line['error']}"
        if self.eof and not self.lines and self.popen.poll() is not None and not self.expected_exit:
            return f"{self.name} exited with status {self.popen.returncode}:\n{self.stderr_tail()}"
        return None

    def stderr_tail(self, lines: int = 30) -> str:
        with open(self.stderr_path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def close(self) -> None:
        self.expected_exit = True
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                stream.close()


def _pump(processes: Sequence[_Process], timeout: float) -> None:
    open_ones = [p for p in processes if not p.eof]
    if not open_ones:
        time.sleep(timeout)
        return
    readable, _, _ = select.select(open_ones, [], [], max(timeout, 0.0))
    for process in readable:
        process.feed()


def _wait(processes: Sequence[_Process], done: Callable[[], bool], timeout: float, what: str) -> None:
    """Reads the processes' lines until ``done()``; fails when one of them died or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not done():
        for process in processes:
            problem = process.problem()
            if problem is not None:
                raise BenchmarkFailed(f"while waiting for {what}: {problem}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchmarkFailed(f"timed out after {timeout:g} s waiting for {what}")
        _pump(processes, min(left, 0.05))


def _answers(processes: Sequence[_Process], timeout: float, what: str) -> list[dict[str, Any]]:
    """One line from each process, in order."""
    _wait(processes, lambda: all(p.lines for p in processes), timeout, what)
    return [p.lines.popleft() for p in processes]


@contextlib.contextmanager
def _network(config: WanConfig, peers: int) -> Any:
    """A network of ``peers`` namespaces plus slot 0 for the master; yields (network, master)."""
    from pycomm.ft import Master
    from pycomm.testing import netem

    with netem.Network(peers=peers + 1, **config.link) as net:
        master = net.call_in(0, lambda: Master(host=net.address(0), **config.master_timeouts()))
        try:
            yield net, master
        finally:
            master.close()


# -- throughput --------------------------------------------------------------------------------


def _measure_tcp(net: Any, peers: int, streams: int, config: WanConfig, workdir: str) -> list[float]:
    """Bits a second of plain TCP on every link of the ring (slot i -> slot i + 1) at once."""
    links = [(1 + k, 1 + (k + 1) % peers) for k in range(peers)]
    window = ["--warmup", str(config.tcp_warmup_s), "--window", str(config.tcp_window_s)]
    receivers = [
        _Process(
            net,
            d,
            ["tcp-receive", "--host", net.address(d), "--streams", str(streams), *window],
            f"tcp-receive-{d}",
            workdir,
        )
        for _, d in links
    ]
    senders: list[_Process] = []
    try:
        ports = _answers(receivers, _START_TIMEOUT, "the TCP receivers to listen")
        seconds = config.tcp_warmup_s + config.tcp_window_s + 5.0
        for (source, destination), port in zip(links, ports):
            to = f"{net.address(destination)}:{port['port']}"
            argv = ["tcp-send", "--to", to, "--streams", str(streams), "--seconds", str(seconds)]
            senders.append(_Process(net, source, argv, f"tcp-send-{source}", workdir))
        rates = _answers(receivers, _START_TIMEOUT + seconds, "the TCP receivers' figures")
    finally:
        for process in receivers + senders:
            process.kill()
            process.close()
            process.popen.wait(timeout=10)
    if not _wait_until_quiet(net, config):
        raise BenchmarkFailed(
            f"the links between the peers still carried packets {QUIET_LIMIT_S:g} s after the TCP "
            "anchor's senders were killed: the next measurement would share them"
        )
    return [float(rate["bits_per_second"]) for rate in rates]


def _wait_until_quiet(net: Any, config: WanConfig) -> bool:
    """Waits until no packet crosses the links between the peers for a round trip (at least 50 ms);
    False if they are not quiet within QUIET_LIMIT_S. Killed mid-stream, the anchor's senders leave a
    bandwidth-delay product in flight and a router queue on every link; the system measured next would
    otherwise share the links with it for its first ~0.1 s. The master's links (slot 0) carry the
    communicators' heartbeats all along and are not counted."""
    quiet = max(0.05, config.rtt)
    deadline = time.monotonic() + QUIET_LIMIT_S
    before = _packets_between_peers(net)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        after = _packets_between_peers(net)
        if after == before:
            return True
        before = after
    return False


def _packets_between_peers(net: Any) -> int:
    links = net.stats()["links"]
    return sum(
        counters["forwarded_packets"]
        for (source, destination), counters in links.items()
        if source and destination
    )


def _start_once(net: Any, peers: int, streams: int, workdir: str) -> list[_Process]:
    """The one-shot TCP anchor's programs, one a peer, each connected to the next peer of the ring."""
    once = [
        _Process(
            net,
            slot,
            ["tcp-once", "--host", net.address(slot), "--streams", str(streams)],
            f"once-{slot}",
            workdir,
        )
        for slot in range(1, peers + 1)
    ]
    ports = _answers(once, _START_TIMEOUT, "the one-shot TCP programs to listen")
    for k, process in enumerate(once):
        following = (k + 1) % peers
        process.send({"op": "connect", "to": f"{net.address(following + 1)}:{ports[following]['port']}"})
    _answers(once, _START_TIMEOUT, "the one-shot TCP programs to connect")
    return once


def _run_once(once: list[_Process], wire: int, margin: float, timeout: float) -> list[dict[str, Any]]:
    """Every link moves ``wire`` bytes at once, from one instant of the shared monotonic clock."""
    start = time.monotonic() + margin
    for process in once:
        process.send({"op": "run", "bytes": wire, "start": start})
    return _answers(once, timeout, "the one-shot TCP transfers")


def _run_pycomm(processes: list[_Process], system: str, salt: int, timeout: float) -> list[dict[str, Any]]:
    for process in processes:
        process.send({"op": "run", "system": system, "salt": salt})
    return _answers(processes, timeout, f"{system} all-reduces")


def _raise_if_wrong(system: str, peers: int, size: int, replies: list[dict[str, Any]]) -> None:
    wrong = [reply["wrong"] for reply in replies]
    hashes = {reply["hash"] for reply in replies}
    if any(wrong) or len(hashes) != 1:
        raise BenchmarkFailed(
            f"{LABELS[system]} computed a wrong all-reduce with {peers} peers at {format_size(size)}: wrong "
            f"elements per peer {wrong}, {len(hashes)} different result(s) among the peers"
        )


def _measure_case(config: WanConfig, peers: int, size: int, progress: Callable[[str], None]) -> dict:
    """Starts a network and the peers, runs the interleaved rounds, checks and summarises them."""
    count = size // 4
    timeout = config.operation_timeout(size)
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pycomm-bench-wan-"))
        net, master = stack.enter_context(_network(config, peers))
        progress(f"wan: {peers} peers, {format_size(size)}: starting the peers")
        argv = ["--master", master.address, "--elements", str(count), "--timeout", str(timeout)]
        processes = [
            _Process(
                net,
                slot,
                [
                    "throughput",
                    *argv,
                    *("--host", net.address(slot), "--peers", str(peers)),
                    *("--start-margin", str(max(0.5, 10 * config.rtt))),
                ],
                f"peer-{slot}",
                workdir,
            )
            for slot in range(1, peers + 1)
        ]
        once: list[_Process] = []
        try:
            hellos = _answers(processes, _START_TIMEOUT + timeout, f"{peers} peers to join both groups")
            if any(hello["first_check_wrong"] for hello in hellos):
                raise BenchmarkFailed(f"the first all-reduce of {peers} peers was wrong: {hellos}")
            streams = max(hello["auto_ring_connections"] for hello in hellos)
            once = _start_once(net, peers, streams, workdir)
            samples: dict[str, list[Any]] = {system: [] for system in SYSTEMS}
            for round_index in range(config.warmup + config.repeat):
                for offset in range(len(SYSTEMS)):
                    system = SYSTEMS[(round_index + offset) % len(SYSTEMS)]
                    if system in TCP_STREAMS:
                        sample: Any = _measure_tcp(net, peers, TCP_STREAMS[system], config, workdir)
                    elif system in ONCE:
                        wire = max(hello["wire_bytes"][ONCE[system]] for hello in hellos)
                        sample = _run_once(once, wire, max(0.5, 10 * config.rtt), timeout)
                    else:
                        salt = 1 + round_index * len(SYSTEMS) + offset
                        sample = _run_pycomm(processes, system, salt, timeout)
                        _raise_if_wrong(system, peers, size, sample)
                    if round_index >= config.warmup:
                        samples[system].append(sample)
                progress(
                    f"wan: {peers} peers, {format_size(size)}: round {round_index + 1} done"
                    + (" (warm-up)" if round_index < config.warmup else "")
                )
            for process in processes + once:
                process.send({"op": "exit"})
            closed = _answers(processes, 30.0, "the peers to leave")
            counters = net.stats()
        finally:
            for process in processes + once:
                process.close()
    network = {key: counters[key] for key in _NETWORK_COUNTERS}
    return {**_summarise(config, peers, size, hellos, samples, closed), "network": network}


def _summarise(
    config: WanConfig,
    peers: int,
    size: int,
    hellos: list[dict[str, Any]],
    samples: dict[str, list[Any]],
    closed: list[dict[str, Any]],
) -> dict[str, Any]:
    bus = bus_bytes(size, peers)
    results: dict[str, Any] = {}
    for system in SYSTEMS:
        if system in TCP_STREAMS:
            per_link = samples[system]
            slowest = [min(links) for links in per_link]
            median = statistics.median(slowest)
            results[system] = {
                "label": LABELS[system],
                "streams_per_link": TCP_STREAMS[system],
                "link_bits_per_second": per_link,
                "slowest_link_bits_per_second": slowest,
                "gbps": median / 1e9,
                "link_ratio": median / config.rate,
                "verified": None,
            }
            continue
        replies = samples[system]
        seconds = tuple(max(reply["seconds"] for reply in repetition) for repetition in replies)
        measurement = Measurement(LABELS[system], bus, 1, seconds)
        gbps = bus * 8 / measurement.median_s / 1e9
        if system in ONCE:
            results[system] = {
                **measurement.to_json(),
                "wire_bytes": max(hello["wire_bytes"][ONCE[system]] for hello in hellos),
                "streams_per_link": max(hello["auto_ring_connections"] for hello in hellos),
                "gbps": gbps,
                "link_ratio": gbps * 1e9 / config.rate,
                "verified": None,
            }
            del results[system]["calls_per_repeat"]
            continue
        entry = {
            **measurement.to_json(),
            "rank_seconds": [[reply["seconds"] for reply in repetition] for repetition in replies],
            "barrier_skew_s": [
                max(reply["barrier_left"] for reply in repetition)
                - min(reply["barrier_left"] for reply in repetition)
                for repetition in replies
            ],
            "late_starts": sum(reply["late"] for repetition in replies for reply in repetition),
            "held_s": statistics.median(max(reply["held_s"] for reply in rep) for rep in replies),
            "committed_s": statistics.median(max(reply["committed_s"] for reply in rep) for rep in replies),
            "gbps": gbps,
            "link_ratio": gbps * 1e9 / config.rate,
            "verified": {
                "ok": True,
                "all_reduces": len(replies) * peers,
                "elements": size // 4,
                "identical_on_every_peer": True,
            },
        }
        del entry["calls_per_repeat"]
        if system == "int8":
            entry["verified"]["max_error"] = max(r["max_error"] for rep in replies for r in rep)
            entry["verified"]["bound"] = min(r["bound"] for rep in replies for r in rep)
            entry["wire_fraction"] = (peers / 2 + 1) / 8
        results[system] = entry
    gbps = {system: results[system]["gbps"] for system in SYSTEMS}
    return {
        "peers": peers,
        "size_bytes": size,
        "bus_bytes": bus,
        "auto_pool_connections": [hello["auto_pool_connections"] for hello in hellos],
        "auto_ring_connections": [hello["auto_ring_connections"] for hello in hellos],
        "probe_gbps": [hello["probe_gbps"] for hello in hellos],
        "probe_s": [hello["probe_s"] for hello in hellos],
        "results": results,
        "ratios": {
            "auto/single": gbps["auto"] / gbps["single"],
            "auto/tcp1": gbps["auto"] / gbps["tcp1"],
            "auto/tcp4": gbps["auto"] / gbps["tcp4"],
            "int8/auto": gbps["int8"] / gbps["auto"],
            "auto/once": gbps["auto"] / gbps["once"],
            "int8/once-int8": gbps["int8"] / gbps["once-int8"],
        },
        "close_s": [reply.get("closed_s") for reply in closed],
    }


# -- the whole run, and what people read -----------------------------------------------------


def run_wan(config: WanConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measures everything ``config`` asks for over emulated links; returns the run's JSON document."""
    from pycomm.testing import netem

    from .machine import machine_info

    usable, reason = netem.available()
    if not usable:
        raise NotSupportedError(
            f"pycomm bench allreduce --wan needs emulated links, which cannot be built here: {reason}"
        )
    report = progress or (lambda line: None)
    started = time.monotonic()
    cases = [_measure_case(config, peers, size, report) for peers in config.peers for size in config.sizes]
    from .allreduce_wan_faults import FaultRun

    faults = FaultRun(config, report).run() if config.recovery else None
    return {
        "benchmark": "allreduce-wan",
        "machine": machine_info(),
        "emulation": reason,
        "options": config.to_json(),
        "definitions": DEFINITIONS,
        "systems": LABELS,
        "cases": cases,
        "targets": _targets(config, cases),
        "faults": faults,
        "seconds": time.monotonic() - started,
    }


def _targets(config: WanConfig, cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured case against the targets (stated for 256 MiB; other sizes are reported too)."""
    found = []
    for system, peers, target in TARGETS:
        for case in cases:
            if case["peers"] == peers:
                ratio = case["results"][system]["link_ratio"]
                found.append(
                    {
                        "system": system,
                        "peers": peers,
                        "size_bytes": case["size_bytes"],
                        "target_size": case["size_bytes"] == TARGET_SIZE,
                        "link_ratio": ratio,
                        "target": target,
                        "met": ratio >= target,
                    }
                )
    return found


TABLE_NOTES = (
    "Gbit/s: pycomm: bus bandwidth 2(n-1)/n x size x 8 / median time (int8: of the unquantized data, the "
    "effective rate); TCP 1/4 streams: data rate of the slowest ring link, every link busy at once, after "
    "a warm-up; TCP once: the same bus bandwidth (or effective rate) for plain TCP moving once, from one "
    "instant, the bytes the pool's (int8's) all-reduce sends; x link: Gbit/s / the link rate (TCP data is "
    "at most 0.965 of it)",
    "every timed all-reduce was checked on every peer: exact sums (int8: within the documented bound), "
    "the same bytes on every peer",
)


def _row(case: dict[str, Any], system: str) -> list[Any]:
    entry = case["results"][system]
    if system in TCP_STREAMS or system in ONCE:
        return [
            case["peers"],
            format_size(case["size_bytes"]),
            SHORT[system],
            entry.get("median_s", "-"),
            entry["gbps"],
            entry["link_ratio"],
            "-",
            "-",
        ]
    spread = (entry["q3_s"] - entry["q1_s"]) / entry["median_s"]
    verified = entry["verified"]
    checked = f"{verified['all_reduces']} exact"
    if "bound" in verified:
        checked = (
            f"{verified['all_reduces']}, err <= {verified['max_error']:.3g} (bound {verified['bound']:.3g})"
        )
    return [
        case["peers"],
        format_size(case["size_bytes"]),
        SHORT[system],
        entry["median_s"],
        entry["gbps"],
        entry["link_ratio"],
        round(100 * spread, 1),
        checked,
    ]


def format_wan_report(document: dict[str, Any]) -> str:
    """The throughput table (one row per case and system), the ratios, the targets, the fault timings."""
    from pycomm.cli.output import format_table

    parts = [*TABLE_NOTES, f"emulation: {document['emulation']}"]
    rows = [_row(case, system) for case in document["cases"] for system in SYSTEMS]
    headers = ["peers", "size", "system", "median s", "Gbit/s", "x link", "IQR %", "checked"]
    parts += ["", format_table(headers, rows), ""]
    for case in document["cases"]:
        ratios = ", ".join(f"{name} {value:.2f}x" for name, value in case["ratios"].items())
        pools = sorted(set(case["auto_pool_connections"]))
        probed = case["probe_gbps"]
        parts.append(
            f"{case['peers']} peers, {format_size(case['size_bytes'])}: {ratios}; connections=None pooled "
            f"{'/'.join(map(str, pools))} connection(s) to the next peer (optimize_topology() measured "
            f"{min(probed):.3f}-{max(probed):.3f} Gbit/s to it in {max(case['probe_s']):.1f} s)"
        )
        phases = [
            f"{SHORT[system]} held {entry['held_s']:.3f} s, committed {entry['committed_s']:.3f} s, returned "
            f"{entry['median_s']:.3f} s"
            for system, entry in case["results"].items()
            if "held_s" in entry
        ]
        parts.append(f"  where the time went (slowest peer, medians): {'; '.join(phases)}")
    target_rows = [
        [
            f"{SHORT[t['system']]}, {t['peers']} peers, {format_size(t['size_bytes'])}",
            f">= {t['target']:g}x link",
            round(t["link_ratio"], 3),
            ("met" if t["met"] else "not met") + ("" if t["target_size"] else " (target stated for 256 MiB)"),
        ]
        for t in document["targets"]
    ]
    parts += ["", format_table(["target", "asked", "measured x link", ""], target_rows)]
    faults = document["faults"]
    if faults is not None:
        ops = faults["ops"]
        parts += [
            "",
            f"pycomm faults over the link: {faults['peers']} peers looping checked "
            f"{format_size(faults['size_bytes'])} all-reduces (median {faults['operation_s']:.2f} s each), "
            f"{faults['trials']} trial(s), one peer SIGKILLed half way through an all-reduce; master "
            f"heartbeat_timeout {faults['master']['heartbeat_timeout']:g} s; {ops['verified']} all-reduces "
            f"checked, {ops['mismatches']} wrong, {ops['aborts']} aborted (retried)",
        ]
        fault_rows = fault_table_rows(
            faults,
            (
                ("detect_s", "SIGKILL -> the master ends the epoch"),
                ("aborted_s", "SIGKILL -> survivors' Aborted (new epoch)"),
                ("recovery_s", "SIGKILL -> survivors' first correct all-reduce"),
            ),
        )
        parts.append(format_table(("measurement", "samples", "median ms", "min ms", "max ms"), fault_rows))
    return "\n".join(parts)
