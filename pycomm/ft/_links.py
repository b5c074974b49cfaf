"""Peer-to-peer connections of pycomm.ft: the ring links of each epoch and shared-state fetches.

Every peer listens on one data port. A connection starts with a challenge from the acceptor and a
LINK_HELLO from the connector naming the kind of link, the group, the epoch and both peer ids,
signed with the group secret when there is one. Ring links are then handed, as raw file
descriptors, to the C++ ring engine of that epoch; fetch links serve shared-state requests.
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
        self._ring_links: dict[tuple[int, str], socket.socket] = {}
        self._fetch_channels: set[Channel] = set()
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
            for sock in self._ring_links.values():
                sock.close()
            self._ring_links.clear()
            # A fetch server waiting for its peer's next request ends now, not at its timeout.
            for channel in self._fetch_channels:
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
            verify(self._secret, hello.get("mac"), nonce, "link", kind, group, epoch, sender, receiver)
            if receiver != self.peer_id or group != self.group or kind not in ("ring", "fetch"):
                raise CommError(
                    f"a {kind!r:.20} link for peer {receiver!r:.40} in group {group} reached this peer"
                )
            channel.send(Message.LINK_ACCEPT, {})
        except (CommError, OSError):
            channel.close()
            return
        if kind == "fetch":
            with self._arrived:
                if self._closing.is_set():
                    channel.close()
                    return
                self._fetch_channels.add(channel)
            try:
                self._serve_fetch(channel)
            finally:
                with self._arrived:
                    self._fetch_channels.discard(channel)
                channel.close()
            return
        sock.settimeout(None)
        with self._arrived:
            if self._closing.is_set():
                sock.close()
                return
            old = self._ring_links.pop((epoch, sender), None)
            if old is not None:
                old.close()
            self._ring_links[(epoch, sender)] = sock
            self._arrived.notify_all()

    def take_ring_link(self, epoch: int, sender: str, timeout: float) -> socket.socket:
        """The ring link `sender` opened to this peer for `epoch`; drops links of older epochs."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for key in [k for k in self._ring_links if k[0] < epoch]:
                    self._ring_links.pop(key).close()
                sock = self._ring_links.pop((epoch, sender), None)
                if sock is not None:
                    return sock
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    raise CommTimeout(
                        f"the previous peer {sender[:8]} did not connect for epoch {epoch} in {timeout} s"
                    )
                self._arrived.wait(left)


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
) -> Channel:
    """Connects to a peer's data port and completes the link handshake."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise CommError(f"cannot reach peer {receiver[:8]} at {host}:{port}: {error}") from error
    configure_stream(sock)
    channel = Channel(sock)
    try:
        challenge = channel.expect(Message.LINK_CHALLENGE, timeout=timeout)
        nonce = field(challenge, "nonce", str)
        mac = sign(secret, nonce, "link", kind, group, epoch, sender, receiver)
        channel.send(
            Message.LINK_HELLO,
            {
                "version": PROTOCOL_VERSION,
                "kind": kind,
                "group": group,
                "epoch": epoch,
                "from": sender,
                "to": receiver,
                "mac": mac,
            },
        )
        channel.expect(Message.LINK_ACCEPT, timeout=timeout)
    except BaseException:
        channel.close()
        raise
    sock.settimeout(None)
    return channel
