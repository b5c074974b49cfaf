"""The peers' side of ``pycomm bench allreduce --wan``: programs that run inside the namespaces of a
:class:`pycomm.testing.netem.Network`.

Each program is started with ``python -m pycomm.benchmarks.allreduce_wan_peer KIND ...`` through
``Network.spawn`` and talks to the driver (:mod:`.allreduce_wan`) over its standard input and output,
one JSON object a line: the namespaces have no route to the driver's loopback, and a pipe crosses
them without touching the emulated links. Anything else the process prints goes to its standard error.

- ``throughput``: one peer of both pycomm groups the driver times: a communicator whose pool of
  connections is sized from the link as measured (``connections=None``, then
  ``optimize_topology()``, which probes every link and sizes each pool from its bandwidth and round
  trip) and one with ``connections=1``. It runs one timed, checked all-reduce per command.
- ``fault``: the loop ``if pending_peers(): update_topology(); all_reduce(x)`` with every result
  checked, reporting each completed all-reduce and each ``Aborted`` with its time.
- ``tcp-receive`` / ``tcp-send``: plain TCP over the same links, the physical anchor.

Every all-reduce's input is :func:`.allreduce_peer.peer_input` (whole numbers in [0, 251)), so the
exact sum is known; an int8 all-reduce is checked against the error bound ``Communicator.all_reduce``
documents instead, and its bytes are hashed so the driver can check that every peer holds the same.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

import numpy as np

from pycomm import kernels

from .allreduce_peer import _period, expected_sum, peer_input

START_TIMEOUT = 180.0
# The communicators' identities in one throughput peer: group 0 sizes its pool from the link, group 1
# keeps one connection per operation.
GROUPS = {"auto": (0, None), "single": (1, 1)}
# What each timed system runs: (communicator, quantization on the wire).
SYSTEMS = {"auto": ("auto", None), "single": ("single", None), "int8": ("auto", "int8")}
_TCP_ESTABLISHED, _TCP_LISTEN = "01", "0A"


class _Pipe:
    """JSON lines to the driver on the original standard output; commands from standard input.
    File descriptor 1 is pointed at standard error, so nothing else can write into the stream."""

    def __init__(self) -> None:
        self._out: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, Any] | None:
        """The next command; None once the driver closed the pipe (it ended or died)."""
        line = sys.stdin.buffer.readline()
        return json.loads(line) if line else None


# -- what the checks compare with ------------------------------------------------------------


def int8_bound(world: int, salt: int) -> float:
    """The largest error ``Communicator.all_reduce(quantization="int8")`` allows on these inputs: half
    a step (absmax / 127) of every input's block plus half a step of the sum's block, each block's
    absmax bounded by its array's, plus the float32 rounding of the sums."""
    periods = [_period(rank, salt).astype(np.float64) for rank in range(world)]
    exact = np.sum(periods, axis=0)
    bound = sum(float(np.abs(p).max()) for p in periods) / 254 + float(np.abs(exact).max()) / 254
    bound += world * 2.0**-24 * float(np.abs(periods).sum(axis=0).max())
    return bound + float(np.abs(exact).max()) * 2.0**-24


def _check(data: np.ndarray, world: int, salt: int, quantization: str | None) -> dict[str, Any]:
    """Compares an all-reduce's result with the exact sum (or, quantized, with its bound)."""
    expected = expected_sum(world, data.size, salt)
    if quantization is None:
        return {"wrong": int(np.count_nonzero(data != expected))}
    # float32 holds the sums (below 2**24) and their differences from the result to within 2**-12.
    error = np.abs(data - expected)
    bound = int8_bound(world, salt)
    return {
        "wrong": int(np.count_nonzero(error > bound + 2.0**-12)),
        "max_error": float(error.max()),
        "bound": bound,
    }


def outgoing_connections(exclude_host: str) -> int:
    """Established TCP connections this namespace opened (their local port is not a listening one) to
    any address but ``exclude_host``: in a throughput peer before its second group starts, the pool
    its first group opened to the next peer of the ring."""

    def address(text: str) -> tuple[str, int]:
        host, port = text.split(":")
        return socket.inet_ntoa(int(host, 16).to_bytes(4, "little")), int(port, 16)

    rows = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            rows.append((address(fields[1]), address(fields[2]), fields[3]))
    listening = {local[1] for local, _, state in rows if state == _TCP_LISTEN}
    return sum(
        1
        for local, remote, state in rows
        if state == _TCP_ESTABLISHED and local[1] not in listening and remote[0] != exclude_host
    )


# -- throughput --------------------------------------------------------------------------------


def _join(args: argparse.Namespace, group: int, connections: int | None) -> Any:
    from pycomm.ft import Communicator

    comm = Communicator(
        args.master,
        peer_group=group,
        connections=connections,
        host=args.host,
        timeout=args.timeout,
        shared_memory=False,
    )
    comm.connect(timeout=START_TIMEOUT)
    # Admission is collective: members admit newcomers until the group is complete.
    while comm.world_size < args.peers:
        if comm.pending_peers():
            comm.update_topology()
        else:
            time.sleep(0.01)
    return comm


def throughput(args: argparse.Namespace) -> None:
    """Joins both groups, then runs the driver's commands: ``run`` (one timed, checked all-reduce
    of one system) and ``exit``."""
    import pycomm

    pipe = _Pipe()
    master_host = args.master.rsplit(":", 1)[0]
    comms: dict[str, Any] = {}
    try:
        comms["auto"] = _join(args, *GROUPS["auto"])
        probe = _optimize(comms["auto"])
        # One checked all-reduce first: the ring of the complete group is up when the pool is counted.
        data = np.empty(args.elements, np.float32)
        token = np.zeros(1, np.float64)
        sent = comms["auto"].bytes_sent
        first = _timed(comms["auto"], data, token, None, 0, args.start_margin)
        wire = {"auto": comms["auto"].bytes_sent - sent}
        first_int8 = _timed(comms["auto"], data, token, "int8", 0, args.start_margin)
        wire["int8"] = comms["auto"].bytes_sent - sent - wire["auto"]
        pool = outgoing_connections(master_host)
        comms["single"] = _join(args, *GROUPS["single"])
        pipe.send(
            {
                "pid": os.getpid(),
                "ranks": {name: comm.rank for name, comm in comms.items()},
                "world": args.peers,
                "auto_pool_connections": pool,
                "auto_ring_connections": comms["auto"].ring_connections,
                **probe,
                "first_check_wrong": first["wrong"] + first_int8["wrong"],
                "wire_bytes": wire,
                "version": pycomm.__version__,
            }
        )
        while True:
            command = pipe.receive()
            if command is None:
                break
            if command["op"] == "exit":
                started = time.perf_counter()
                for comm in comms.values():
                    comm.close()
                pipe.send({"closed_s": time.perf_counter() - started})
                return
            group, quantization = SYSTEMS[command["system"]]
            pipe.send(
                _timed(comms[group], data, token, quantization, int(command["salt"]), args.start_margin)
            )
    except Exception:
        pipe.send({"error": traceback.format_exc()[-3000:]})
        raise
    finally:
        for comm in comms.values():
            comm.close()


def _optimize(comm: Any) -> dict[str, float]:
    """optimize_topology(): probes every link and sizes the pool to the next peer from what it
    measured; returns how long that took and the bandwidth measured to the next peer of the ring."""
    before = comm.members
    started = time.perf_counter()
    plan = comm.optimize_topology()
    took = time.perf_counter() - started
    after = comm.members[(comm.rank + 1) % comm.world_size]
    measured = plan.bandwidth[before.index(comm.peer_id), before.index(after)]
    return {"probe_s": took, "probe_gbps": float(measured) * 8e-9}


def _sleep_until(instant: float) -> None:
    """Returns at ``instant`` of the monotonic clock (within a millisecond)."""
    while time.monotonic() < instant:
        time.sleep(max(0.0, min(0.001, instant - time.monotonic())))


def _timed(
    comm: Any, data: np.ndarray, token: np.ndarray, quantization: str | None, salt: int, margin: float
) -> dict:
    """One all-reduce of this peer's input, timed from an instant every peer starts at, then checked.

    A barrier leaves the peers up to a one-way delay apart (each leaves it when the last message
    reaches it), and a peer that starts early waits for the others' bytes: timed from each peer's own
    exit, the slowest peer's time would include that skew. The namespaces share the machine's
    monotonic clock, so the barrier (a max all-reduce) agrees on an instant instead: ``margin``
    seconds after the latest peer entered it (more than the barrier takes). Each peer sleeps until
    then and is timed from it; one that left the barrier later (``late``) is timed from the instant
    all the same, which can only make its time longer."""
    epoch, rank, world = comm.epoch, comm.rank, comm.world_size
    np.copyto(data, peer_input(rank, data.size, salt))
    token[0] = time.monotonic() + margin
    comm.all_reduce(token, op="max")
    left = time.monotonic()
    start = float(token[0])
    _sleep_until(start)
    called = time.monotonic()
    info = comm.all_reduce(data, quantization=quantization)
    seconds = time.monotonic() - start
    if (info.epoch, info.rank, info.world_size) != (epoch, rank, world):
        raise RuntimeError(f"the group changed during the measurement: epoch {epoch} -> {info.epoch}")
    return {
        "seconds": seconds,
        "held_s": called - start + info.held_seconds,
        "committed_s": called - start + info.committed_seconds,
        "barrier_left": left,
        "late": left > start,
        "rank": rank,
        "hash": f"{kernels.hash64(data):016x}",
        **_check(data, world, salt, quantization),
    }


# -- faults ----------------------------------------------------------------------------------


def fault(args: argparse.Namespace) -> None:
    """The checked training-like loop of the fault measurement; reports every completed all-reduce
    (``op``) and every ``Aborted`` (``aborted``) with its ``time.monotonic()``."""
    from pycomm.errors import Aborted
    from pycomm.ft import Communicator

    pipe = _Pipe()

    def watch_driver() -> None:
        # Leave as soon as the driver ends or goes away.
        while True:
            command = pipe.receive()
            if command is None or command.get("op") == "exit":
                os._exit(0)

    threading.Thread(target=watch_driver, name="pycomm-bench-watch", daemon=True).start()
    comm = Communicator(args.master, host=args.host, timeout=args.timeout, shared_memory=False)
    started = time.monotonic()
    comm.connect(timeout=START_TIMEOUT)
    pipe.send({"peer_id": comm.peer_id, "pid": os.getpid(), "connect_start": started, "epoch": comm.epoch})
    data = np.empty(args.elements, np.float32)
    sums: dict[int, np.ndarray] = {}
    counts = {"ops": 0, "verified": 0, "unverified": 0, "aborts": 0, "mismatches": 0}

    def retried(call: Any) -> Any:
        # Each operation that raises Aborted is retried by itself, so every survivor runs the same
        # sequence of collectives (see allreduce_peer.fault_peer).
        while True:
            try:
                return call()
            except Aborted:
                counts["aborts"] += 1
                pipe.send({"aborted": comm.epoch, "t": time.monotonic(), **counts})

    state: dict[str, int] = {}

    def all_reduce() -> Any:
        # The input depends on the rank, which a new epoch may change: rebuilt for each try.
        state.update(epoch=comm.epoch, rank=comm.rank, world=comm.world_size)
        np.copyto(data, peer_input(state["rank"], data.size))
        return comm.all_reduce(data)

    formed = False
    while True:
        if retried(comm.pending_peers):
            comm.update_topology()
        formed = formed or comm.world_size >= args.min_world
        if not formed:
            time.sleep(0.01)
            continue
        info = retried(all_reduce)
        done = time.monotonic()
        counts["ops"] += 1
        if (info.epoch, info.rank, info.world_size) != (state["epoch"], state["rank"], state["world"]):
            counts["unverified"] += 1  # the epoch changed between reading the rank and submitting
            continue
        world = state["world"]
        if world not in sums:
            sums[world] = expected_sum(world, data.size)
        correct = bool(np.array_equal(data, sums[world]))
        counts["verified" if correct else "mismatches"] += 1
        pipe.send({"op": info.epoch, "world": world, "t": done, "ok": correct, **counts})


# -- plain TCP -------------------------------------------------------------------------------


def tcp_once(args: argparse.Namespace) -> None:
    """Plain TCP moving what an all-reduce moves, once: ``streams`` persistent connections to the next
    peer of the ring and as many from the previous one. Commands: ``connect`` (to the next peer),
    ``run`` (at the instant ``start`` of the shared monotonic clock, send ``bytes`` split over the
    connections and receive as many; reply the seconds from ``start`` until all arrived) and
    ``exit``."""
    pipe = _Pipe()
    listener = socket.create_server((args.host, 0), backlog=args.streams)
    pipe.send({"port": listener.getsockname()[1]})
    listener.settimeout(START_TIMEOUT)
    outgoing: list[socket.socket] = []
    incoming: list[socket.socket] = []
    try:
        while (command := pipe.receive()) is not None and command["op"] != "exit":
            if command["op"] == "connect":
                host, port = command["to"].rsplit(":", 1)
                dial = threading.Thread(target=_dial, args=(host, int(port), args.streams, outgoing))
                dial.start()
                incoming.extend(listener.accept()[0] for _ in range(args.streams))
                dial.join()
                pipe.send({"connected": len(outgoing)})
            else:
                seconds = _move_once(outgoing, incoming, int(command["bytes"]), float(command["start"]))
                pipe.send({"seconds": seconds})
    finally:
        for connection in outgoing + incoming:
            connection.close()


def _dial(host: str, port: int, streams: int, into: list[socket.socket]) -> None:
    into.extend(socket.create_connection((host, port), timeout=START_TIMEOUT) for _ in range(streams))


def _move_once(
    outgoing: list[socket.socket], incoming: list[socket.socket], total: int, start: float
) -> float:
    """At ``start``, sends ``total`` bytes over ``outgoing`` and receives as many over ``incoming``;
    the seconds from ``start`` until the last byte arrived."""
    share = total // len(outgoing)
    payload = memoryview(bytes(share))
    ends: list[float] = []

    def receive(connection: socket.socket) -> None:
        buffer, left = bytearray(1 << 20), share
        while left:
            got = connection.recv_into(buffer, min(left, len(buffer)))
            if not got:
                return  # counted below: a connection that ended early
            left -= got
        ends.append(time.monotonic())

    _sleep_until(start)
    threads = [threading.Thread(target=c.sendall, args=(payload,)) for c in outgoing]
    threads += [threading.Thread(target=receive, args=(c,)) for c in incoming]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(ends) != len(incoming):
        raise RuntimeError("a connection from the previous peer ended early")
    return max(ends) - start


def tcp_receive(args: argparse.Namespace) -> None:
    """Accepts ``streams`` connections, drains them, and reports the bits a second that arrived
    during ``window`` seconds after ``warmup`` seconds (slow start left out)."""
    pipe = _Pipe()
    listener = socket.create_server((args.host, 0), backlog=args.streams)
    pipe.send({"port": listener.getsockname()[1]})
    listener.settimeout(START_TIMEOUT)
    connections = [listener.accept()[0] for _ in range(args.streams)]
    received = [0] * args.streams

    def drain(index: int) -> None:
        buffer = bytearray(1 << 20)
        while True:
            try:
                got = connections[index].recv_into(buffer)
            except OSError:
                return
            if not got:
                return
            received[index] += got

    for index in range(args.streams):
        threading.Thread(target=drain, args=(index,), daemon=True).start()
    time.sleep(args.warmup)
    before, start = sum(received), time.monotonic()
    time.sleep(args.window)
    after, end = sum(received), time.monotonic()
    pipe.send({"bits_per_second": (after - before) * 8 / (end - start)})
    for connection in connections:
        connection.close()


def tcp_send(args: argparse.Namespace) -> None:
    """Sends zeros over ``streams`` connections for ``seconds`` (the host's congestion control)."""
    host, port = args.to.rsplit(":", 1)
    connections = [
        socket.create_connection((host, int(port)), timeout=START_TIMEOUT) for _ in range(args.streams)
    ]
    data, end = bytes(1 << 20), time.monotonic() + args.seconds

    def send(connection: socket.socket) -> None:
        try:
            while time.monotonic() < end:
                connection.sendall(data)
        except OSError:
            pass  # the receiver has its figure and closed

    threads = [threading.Thread(target=send, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pycomm.benchmarks.allreduce_wan_peer")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind in ("throughput", "fault"):
        sub = kinds.add_parser(kind)
        sub.add_argument("--master", required=True)
        sub.add_argument("--host", required=True)
        sub.add_argument("--elements", type=int, required=True)
        sub.add_argument("--timeout", type=float, required=True)
    kinds.choices["throughput"].add_argument("--peers", type=int, required=True)
    kinds.choices["throughput"].add_argument("--start-margin", type=float, required=True, help="seconds")
    kinds.choices["fault"].add_argument("--min-world", type=int, required=True)
    receive = kinds.add_parser("tcp-receive")
    receive.add_argument("--host", required=True)
    receive.add_argument("--streams", type=int, required=True)
    receive.add_argument("--warmup", type=float, required=True)
    receive.add_argument("--window", type=float, required=True)
    once = kinds.add_parser("tcp-once")
    once.add_argument("--host", required=True)
    once.add_argument("--streams", type=int, required=True)
    send = kinds.add_parser("tcp-send")
    send.add_argument("--to", required=True)
    send.add_argument("--streams", type=int, required=True)
    send.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    kinds_run = {"throughput": throughput, "fault": fault, "tcp-once": tcp_once}
    kinds_run.update({"tcp-receive": tcp_receive, "tcp-send": tcp_send})
    kinds_run[args.kind](args)


if __name__ == "__main__":
    main()
