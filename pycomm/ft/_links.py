"""Peer-to-peer connections of pycomm.ft: the ring links of each epoch and shared-state fetches.

Every peer listens on one data port. A connection starts with a challenge from the acceptor and a
LINK_HELLO from the connector naming the kind of link, the group, the epoch and both peer ids,
signed with the group secret when there is one. A ring link is a pool of ``stripes`` connections
(the hello says which one it is): the pool is handed, as raw file descriptors, to the C++ ring
engine of that epoch, which stripes each operation over it. Fetch links serve shared-state requests;
probe links receive a burst of bytes and say when it has all arrived (``measure_bandwidth``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Callable

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

HANDSHAKE_TIMEOUT = 5.0
# The largest burst a probe link accepts.
MAX_PROBE_BYTES = 1 << 30
PROBE_TIMEOUT = 60.0
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
    request = channel.expect(Message.PROBE, timeout=PROBE_TIMEOUT)
    length = field(request, "length", int)
    if not 0 < length <= MAX_PROBE_BYTES:
        raise CommError(f"a probe of {length} bytes (at most {MAX_PROBE_BYTES})")
    sink = memoryview(bytearray(min(length, 1 << 20)))
    left = length
    while left:
        chunk = min(left, len(sink))
        channel.receive_into(sink[:chunk], timeout=PROBE_TIMEOUT)
        left -= chunk
    channel.send(Message.PROBE_DONE, {})


def measure_bandwidth(
    host: str, port: int, total_bytes: int, streams: int, probe_timeout: float = PROBE_TIMEOUT, **link: Any
) -> float:
    """Bytes/s from this peer to the one at host:port: ``total_bytes`` sent at once over ``streams``
    probe connections, timed from the first byte until every stream's receiver said it had all
    (within ``probe_timeout`` seconds)."""
    channels = [open_link(host, port, kind="probe", **link)[0] for _ in range(streams)]
    try:
        share = max(1, total_bytes // streams)
        payload = memoryview(bytes(share))
        errors: list[BaseException] = []

        def burst(channel: Channel) -> None:
            try:
                channel.send(Message.PROBE, {"length": share})
                channel.send_raw(payload, timeout=probe_timeout)
                channel.expect(Message.PROBE_DONE, timeout=probe_timeout)
            except BaseException as error:  # raised below, on the caller's thread
                errors.append(error)

        threads = [threading.Thread(target=burst, args=(c,), daemon=True) for c in channels]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise errors[0]
        return share * streams / elapsed
    finally:
        for channel in channels:
            channel.close()


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
    except OSError as error:
        raise CommError(f"cannot reach peer {receiver[:8]} at {host}:{port}: {error}") from error
    round_trip = time.perf_counter() - started
    if callable(stripes):
        stripes = stripes(round_trip)
    configure_stream(sock)
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
    channels: list[Channel | None] = [first] + [None] * (count - 1)
    errors: list[BaseException] = []

    def connect(stripe: int) -> None:
        try:
            channels[stripe] = open_link(host, port, kind="ring", stripe=stripe, stripes=count, **link)[0]
        except BaseException as error:  # raised below, on the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=connect, args=(k,), daemon=True) for k in range(1, count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for channel in channels:
            if channel is not None:
                channel.close()
        raise errors[0]
    return [channel for channel in channels if channel is not None]
