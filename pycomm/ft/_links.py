"""Peer-to-peer connections of pycomm.ft: the ring links of each epoch and shared-state fetches.

Every peer listens on one data port. A connection starts with a challenge from the acceptor and a
LINK_HELLO from the connector naming the kind of link, the group, the epoch and both peer ids,
signed with the group secret when there is one. A ring link is a pool of ``stripes`` connections
(the hello says which one it is): the pool is handed, as raw file descriptors, to the C++ ring
engine of that epoch, which stripes each operation over it. Fetch links serve shared-state requests;
probe links absorb a stream of bytes until the prober says it has measured enough
(``measure_bandwidth``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, TypeVar

from pycomm.errors import CommError, CommTimeout
from pycomm.ft._protocol import (
    PROTOCOL_VERSION,
    Channel,
    Message,
    configure_stream,
    field,
    new_nonce,
    sign,
    verify,
)

_T = TypeVar("_T")

HANDSHAKE_TIMEOUT = 5.0
# The most bytes one probe connection accepts, and the chunk a probe is sent in.
MAX_PROBE_BYTES = 1 << 30
PROBE_CHUNK = 1 << 20
# What a probe stream hands the kernel at a time, checking between pieces whether the probe is over.
PROBE_PIECE = 64 << 10
PROBE_TIMEOUT = 60.0
# A probe stops once its rate has settled (no window of SETTLE_WINDOW_RTTS round trips, at least
# MIN_SETTLE_WINDOW seconds, beat the best by SETTLE_GAIN for SETTLE_WINDOWS windows in a row), after
# PROBE_SECONDS, or when its bytes are all sent, whichever comes first.
SETTLE_WINDOW_RTTS = 4
MIN_SETTLE_WINDOW = 0.02
SETTLE_GAIN = 0.05
SETTLE_WINDOWS = 3
PROBE_SECONDS = 5.0
# Where Linux's struct tcp_info keeps the bytes the peer acknowledged (u64, Linux 4.1+) and the
# smallest round trip seen (u32 microseconds, Linux 4.6+).
_TCPI_BYTES_ACKED = 120
_TCPI_MIN_RTT = 148
_TCPI_LENGTH = 152
# The most connections one ring link may pool (a peer that announces more is refused).
MAX_STRIPES = 64


class DataListener:
    """Accepts peer links for one communicator; owns its threads (joined by :meth:`close`)."""

    def __init__(
        self,
        host: str,
        peer_id: str,
        group: int,
        secret: bytes | None,
        serve_fetch: Callable[[Channel], None],
    ) -> None:
        self.peer_id = peer_id
        self.group = group
        self._secret = secret
        self._serve_fetch = serve_fetch
        self._socket = socket.create_server((host, 0), backlog=256)
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        # (epoch, sender) -> (stripes announced, {stripe: socket}) for ring links still arriving.
        self._ring_links: dict[tuple[int, str], tuple[int, dict[int, socket.socket]]] = {}
        self._serving: set[Channel] = set()
        self._arrived = threading.Condition()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="pycomm-link", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        self._closing.set()
        # shutdown() wakes the accept thread at once (close() alone leaves it in accept()).
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        with self._arrived:
            for _, pool in self._ring_links.values():
                for sock in pool.values():
                    sock.close()
            self._ring_links.clear()
            # A fetch server waiting for its peer's next request ends now, not at its timeout.
            for channel in self._serving:
                channel.close()
            self._arrived.notify_all()
        for thread in list(self._threads):
            thread.join(timeout=10)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._socket.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._start(self._handshake, sock)

    def _handshake(self, sock: socket.socket) -> None:
        configure_stream(sock)
        channel = Channel(sock)
        try:
            nonce = new_nonce()
            channel.send(Message.LINK_CHALLENGE, {"version": PROTOCOL_VERSION, "nonce": nonce})
            hello = channel.expect(Message.LINK_HELLO, timeout=HANDSHAKE_TIMEOUT)
            version = field(hello, "version", int)
            if version != PROTOCOL_VERSION:
                raise CommError(f"a peer speaks protocol version {version}, this one {PROTOCOL_VERSION}")
            kind = field(hello, "kind", str)
            group = field(hello, "group", int)
            epoch = field(hello, "epoch", int)
            sender = field(hello, "from", str)
            receiver = field(hello, "to", str)
            stripe = field(hello, "stripe", int)
            stripes = field(hello, "stripes", int)
            verify(
                self._secret,
                hello.get("mac"),
                nonce,
                "link",
                kind,
                group,
                epoch,
                sender,
                receiver,
                stripe,
                stripes,
            )
            if receiver != self.peer_id or group != self.group or kind not in ("ring", "fetch", "probe"):
                raise CommError(
                    f"a {kind!r:.20} link for peer {receiver!r:.40} in group {group} reached this peer"
                )
            if not 0 <= stripe < stripes <= MAX_STRIPES:
                raise CommError(f"connection {stripe} of a pool of {stripes} (at most {MAX_STRIPES})")
            channel.send(Message.LINK_ACCEPT, {})
        except (CommError, OSError):
            channel.close()
            return
        if kind in ("probe", "fetch"):
            self._serve(channel, _absorb_probe if kind == "probe" else self._serve_fetch)
            return
        sock.settimeout(None)
        with self._arrived:
            if self._closing.is_set():
                sock.close()
                return
            announced, pool = self._ring_links.setdefault((epoch, sender), (stripes, {}))
            if announced != stripes or stripe in pool:
                # A peer that contradicts itself (or reconnects) starts its pool over.
                for old in pool.values():
                    old.close()
                announced, pool = self._ring_links[(epoch, sender)] = (stripes, {})
            pool[stripe] = sock
            self._arrived.notify_all()

    def _serve(self, channel: Channel, handler: Callable[[Channel], None]) -> None:
        """Runs a fetch or probe link's handler; close() closes the channel if it is still open."""
        with self._arrived:
            if self._closing.is_set():
                channel.close()
                return
            self._serving.add(channel)
        try:
            handler(channel)
        except (CommError, OSError):
            pass  # the other side sees its request fail
        finally:
            with self._arrived:
                self._serving.discard(channel)
            channel.close()

    def take_ring_links(self, epoch: int, sender: str, timeout: float) -> list[socket.socket]:
        """The pool of connections `sender` opened to this peer for `epoch`, in stripe order, once all
        have arrived; drops links of older epochs."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for key in [k for k in self._ring_links if k[0] < epoch]:
                    for old in self._ring_links.pop(key)[1].values():
                        old.close()
                stripes, pool = self._ring_links.get((epoch, sender), (0, {}))
                if stripes and len(pool) == stripes:
                    del self._ring_links[(epoch, sender)]
                    return [pool[stripe] for stripe in range(stripes)]
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    raise CommTimeout(
                        f"the previous peer {sender[:8]} did not connect for epoch {epoch} in {timeout} s "
                        f"({len(pool)} of {stripes or '?'} connections arrived)"
                    )
                self._arrived.wait(left)


def _absorb_probe(channel: Channel) -> None:
    """Receives PROBE chunks until an empty one, then says how many bytes arrived."""
    total = 0
    sink = memoryview(bytearray(PROBE_CHUNK))
    while True:
        length = field(channel.expect(Message.PROBE, timeout=PROBE_TIMEOUT), "length", int)
        if length == 0:
            break
        if not 0 < length <= PROBE_CHUNK or total + length > MAX_PROBE_BYTES:
            raise CommError(
                f"a probe chunk of {length} bytes after {total} (chunks of at most {PROBE_CHUNK}, "
                f"{MAX_PROBE_BYTES} in all)"
            )
        channel.receive_into(sink[:length], timeout=PROBE_TIMEOUT)
        total += length
    channel.send(Message.PROBE_DONE, {"bytes": total})


@dataclasses.dataclass(frozen=True)
class LinkEstimate:
    """What a probe measured of one direction of a link: bytes/s and the round trip in seconds."""

    bandwidth: float
    round_trip: float


def _tcp_progress(channels: list[Channel]) -> tuple[int, float] | None:
    """(bytes the peers have acknowledged on these connections, the smallest round trip they saw, in
    seconds: the path's own, without the queues the probe fills) from TCP_INFO; None where the
    platform does not give them."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or not sys.platform.startswith("linux"):  # the offsets are Linux's struct
        return None
    acked, round_trip = 0, float("inf")
    for channel in channels:
        try:
            info = channel.sock.getsockopt(socket.IPPROTO_TCP, option, _TCPI_LENGTH)
        except OSError:
            return None
        if len(info) < _TCPI_LENGTH:
            return None
        acked += struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
        round_trip = min(round_trip, struct.unpack_from("=I", info, _TCPI_MIN_RTT)[0] * 1e-6)
    return acked, round_trip


class _Settling:
    """Watches the acknowledged bytes of a probe's streams over windows of a few round trips. The
    rate has settled once SETTLE_WINDOWS windows in a row did not beat the best window by SETTLE_GAIN
    (bbr's full-bandwidth test); the estimate is the rate over those windows, so neither the ramp
    nor one window's jitter counts."""

    def __init__(self, now: float, acked: int) -> None:
        self.window_start, self.window_acked = now, acked
        self.plateau_start, self.plateau_acked = now, acked
        self.best = 0.0
        self.flat = 0

    def add(self, now: float, acked: int, round_trip: float) -> None:
        if now - self.window_start < max(MIN_SETTLE_WINDOW, SETTLE_WINDOW_RTTS * round_trip):
            return
        rate = (acked - self.window_acked) / (now - self.window_start)
        if rate > self.best * (1 + SETTLE_GAIN):
            self.best, self.flat = rate, 0
            self.plateau_start, self.plateau_acked = now, acked
        elif self.best > 0:  # windows before the first acknowledged byte are no plateau
            self.flat += 1
        self.window_start, self.window_acked = now, acked

    @property
    def settled(self) -> bool:
        return self.flat >= SETTLE_WINDOWS

    @property
    def rate(self) -> float:
        """Bytes/s over the windows since the best one (the best window's own rate before any);
        0 before the first window ends."""
        if not self.flat:
            return self.best
        return (self.window_acked - self.plateau_acked) / (self.window_start - self.plateau_start)


def measure_bandwidth(
    host: str,
    port: int,
    total_bytes: int,
    streams: int,
    probe_timeout: float = PROBE_TIMEOUT,
    **link: Any,
) -> LinkEstimate:
    """The rate from this peer to the one at host:port over ``streams`` probe connections at once.

    Where TCP_INFO is available (Linux) the rate is that of the bytes the receiver acknowledged once
    it stopped growing (see ``_Settling``), so TCP's start-up is not counted, and the probe ends
    there: a long-fat link is probed for about a second, not until ``total_bytes`` are sent (at
    most that many, and at most PROBE_SECONDS); its connections are then reset, since the bytes
    still queued would only delay what follows. Elsewhere, or when ``total_bytes`` end before a
    whole window was seen, the bytes are timed from the first until every receiver said it had
    all. The round trip is the smallest TCP saw, where TCP_INFO gives it, else the shortest time
    TCP's connect took. Each message and piece of a stream must go out, and each receiver answer,
    within ``probe_timeout`` seconds."""
    connects: list[float] = []

    def opened(round_trip: float) -> int:  # what TCP's connect took; a probe link is a pool of 1
        connects.append(round_trip)
        return 1

    def connect() -> Channel:
        return open_link(host, port, kind="probe", stripes=opened, **link)[0]

    channels = _in_parallel([connect] * streams)
    try:
        share = max(1, total_bytes // streams)
        payload = memoryview(bytes(min(share, PROBE_CHUNK)))
        stop = threading.Event()

        def stream(channel: Channel) -> int:
            sent = 0
            while sent < share and not stop.is_set():
                chunk = min(share - sent, len(payload))
                channel.send(Message.PROBE, {"length": chunk})
                # In pieces, so that a stop is seen within a piece's time even on a slow link (the
                # reset below ends a chunk cut short; its receiver sees the link fail and stops).
                for begin in range(0, chunk, PROBE_PIECE):
                    if stop.is_set():
                        break
                    piece = min(PROBE_PIECE, chunk - begin)
                    channel.send_raw(payload[begin : begin + piece], timeout=probe_timeout)
                    sent += piece
            if stop.is_set():
                # Reset, not closed: what is still queued is discarded instead of sent.
                channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return sent
            channel.send(Message.PROBE, {"length": 0})
            arrived = field(channel.expect(Message.PROBE_DONE, timeout=probe_timeout), "bytes", int)
            if arrived != sent:
                raise CommError(f"a probe link received {arrived} bytes of {sent}")
            return sent

        progress = _tcp_progress(channels)
        started = time.perf_counter()
        watched: list[tuple[float, float]] = []
        if progress is not None:
            watcher = threading.Thread(
                target=lambda: watched.append(_watch(channels, stop, started, progress[0])), daemon=True
            )
            watcher.start()
        try:
            sent = sum(_in_parallel([functools.partial(stream, channel) for channel in channels]))
        finally:
            stop.set()
            if progress is not None:
                watcher.join()
        rate, round_trip = watched[0] if watched else (0.0, 0.0)
        # Timed whole: exact when every stream ended with its receiver's word; after a stop, the
        # bytes handed to the kernel (at most a send buffer a stream more than arrived).
        elapsed = time.perf_counter() - started
        bandwidth = rate or sent / elapsed
        if not bandwidth > 0:
            raise CommError(f"the probe measured no bandwidth: no byte crossed the link in {elapsed:.1f} s")
        return LinkEstimate(bandwidth, round_trip or min(connects))
    finally:
        for channel in channels:
            channel.close()


def _watch(channels: list[Channel], stop: threading.Event, started: float, acked: int) -> tuple[float, float]:
    """Samples the probe's acknowledged bytes until its rate settles (then stops the streams) or they
    stop; returns the settled rate (0 when no whole window was seen: a probe too short to time this
    way) and the smallest round trip TCP measured."""
    settling = _Settling(started, acked)
    round_trip = 0.0
    while True:
        stopped = stop.wait(max(0.001, min(0.01, round_trip / 4)))
        now = time.perf_counter()
        progress = _tcp_progress(channels)
        if progress is None:
            break
        acked, round_trip = progress
        if stopped:
            break
        settling.add(now, acked, round_trip)
        if settling.settled or now - started > PROBE_SECONDS:
            stop.set()
    return settling.rate, round_trip


def _in_parallel(calls: list[Callable[[], _T]]) -> list[_T]:
    """Runs each call on its own thread and returns their results in order; raises the first error
    once all have ended, after closing the channels the others returned."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as error:  # raised below, on the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for result in results:
            if isinstance(result, Channel):
                result.close()
        raise errors[0]
    return results


def open_link(
    host: str,
    port: int,
    *,
    kind: str,
    group: int,
    epoch: int,
    sender: str,
    receiver: str,
    secret: bytes | None,
    timeout: float,
    stripe: int = 0,
    stripes: int | Callable[[float], int] = 1,
) -> tuple[Channel, int]:
    """Connects to a peer's data port and completes the link handshake; returns the channel and the
    size of its pool. ``stripes`` may be a function of the round-trip time (seconds) that TCP's
    connect took, for the first connection of a pool sized from it."""
    started = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, ValueError) as error:  # ValueError: a host name IDNA cannot encode
        raise CommError(f"cannot reach peer {receiver[:8]} at {host!r:.80}:{port}: {error}") from error
    round_trip = time.perf_counter() - started
    try:
        if callable(stripes):
            stripes = stripes(round_trip)
        configure_stream(sock)
    except BaseException:
        sock.close()
        raise
    channel = Channel(sock)
    try:
        challenge = channel.expect(Message.LINK_CHALLENGE, timeout=timeout)
        nonce = field(challenge, "nonce", str)
        mac = sign(secret, nonce, "link", kind, group, epoch, sender, receiver, stripe, stripes)
        channel.send(
            Message.LINK_HELLO,
            {
                "version": PROTOCOL_VERSION,
                "kind": kind,
                "group": group,
                "epoch": epoch,
                "from": sender,
                "to": receiver,
                "stripe": stripe,
                "stripes": stripes,
                "mac": mac,
            },
        )
        channel.expect(Message.LINK_ACCEPT, timeout=timeout)
    except BaseException:
        channel.close()
        raise
    sock.settimeout(None)
    return channel, stripes


def open_ring_pool(host: str, port: int, stripes: int | Callable[[float], int], **link: Any) -> list[Channel]:
    """Opens a ring link's pool of connections: the first (which may size the pool from its round
    trip), then the others at once, each on its own thread."""
    first, count = open_link(host, port, kind="ring", stripe=0, stripes=stripes, **link)

    def connect(stripe: int) -> Channel:
        return open_link(host, port, kind="ring", stripe=stripe, stripes=count, **link)[0]

    try:
        return [first, *_in_parallel([functools.partial(connect, k) for k in range(1, count)])]
    except BaseException:
        first.close()
        raise
