"""The control protocol of pycomm.ft: JSON messages in pycomm frames, over plain TCP sockets.

Every message is one frame (``pycomm._core.transport``: magic, version, type, length) whose
payload is a JSON object. The header is validated, the length included, before the payload is
read, and every field a handler uses is checked for type (:func:`field`), so a peer that sends
garbage is dropped with a :class:`ProtocolError` naming what was wrong, never makes the receiver
allocate what it claims and never crashes the reader.

Authentication: when a group secret is set, the side that accepts a connection sends a random
challenge and the other answers with an HMAC-SHA256 of it and of the message it is bound to; the
answer is checked in constant time. The secret itself never crosses the wire.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import json
import os
import socket
import struct
import threading
import time
from typing import Any

from pycomm._native import core
from pycomm.errors import AuthenticationError, CommError, CommTimeout, Evicted, ProtocolError

_transport = core.transport

# 2: ring links are pools of connections (LINK_HELLO names the stripe and the pool size).
PROTOCOL_VERSION = 2
# Control messages are small; a peer claiming more is refused before anything is allocated.
MAX_CONTROL_PAYLOAD = 1 << 20
HEADER_BYTES = _transport.HEADER_BYTES


class Message(enum.IntEnum):
    # peer <-> master
    CHALLENGE = 1
    HELLO = 2
    WELCOME = 3
    REFUSE = 4
    HEARTBEAT = 5
    PENDING = 6
    UPDATE_TOPOLOGY = 7
    EPOCH = 8
    END_EPOCH = 9
    FAILURE = 10
    EVICTED = 11
    LEAVE = 12
    # peer <-> peer
    LINK_CHALLENGE = 20
    LINK_HELLO = 21
    LINK_ACCEPT = 22
    FETCH = 23
    FETCH_REPLY = 24
    PROBE = 25
    PROBE_DONE = 26


def new_nonce() -> str:
    return os.urandom(16).hex()


def sign(secret: bytes | None, nonce: str, *parts: Any) -> str:
    """The answer to a challenge: HMAC-SHA256 over the nonce and the parts the answer is bound to."""
    if secret is None:
        return ""
    text = json.dumps([nonce, *parts], separators=(",", ":"))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def verify(secret: bytes | None, mac: Any, nonce: str, *parts: Any) -> None:
    if secret is None:
        return
    expected = sign(secret, nonce, *parts)
    if not isinstance(mac, str) or not mac.isascii() or not hmac.compare_digest(mac, expected):
        raise AuthenticationError("the other side did not prove knowledge of the group secret")


def secret_bytes(secret: str | bytes | None) -> bytes | None:
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("secret must be a non-empty str or bytes, or None")
    return secret


def field(message: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    """message[name], checked to be of type `kind` (a bool is not accepted where an int is asked)."""
    value = message.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(f"message field '{name}' must be {wanted}, got {value!r:.80}")
    return value


def _set_socket_timeout(sock: socket.socket, option: int, seconds: float | None) -> None:
    """SO_SNDTIMEO / SO_RCVTIMEO: None waits for ever (the kernel's 0)."""
    micro = 0 if seconds is None else max(1, round(seconds * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", micro // 1_000_000, micro % 1_000_000))


class Channel:
    """A framed connection over a Python socket: one reader thread, senders serialised by a lock.

    The socket blocks, and each direction has its own kernel timeout (SO_SNDTIMEO, SO_RCVTIMEO):
    Python's settimeout() is one setting for both, and a reader waiting without a deadline would
    otherwise make a concurrent send wait for ever."""

    def __init__(self, sock: socket.socket, max_payload: int = MAX_CONTROL_PAYLOAD) -> None:
        self.sock = sock
        self.max_payload = max_payload
        self._send_lock = threading.Lock()
        self._closed = False
        configure_stream(sock)
        sock.settimeout(None)

    def send(self, kind: Message, body: dict | None = None, timeout: float = 5.0) -> None:
        payload = json.dumps(body or {}, separators=(",", ":")).encode()
        frame = _transport.encode_frame(int(kind), payload)
        self._send(frame, timeout, kind.name)

    def send_raw(self, data: memoryview, timeout: float = 30.0) -> None:
        """Bytes that a message announced, sent as they are (no frame)."""
        self._send(data, timeout, f"{len(data)} bytes")

    def _send(self, data: bytes | memoryview, timeout: float, what: str) -> None:
        with self._send_lock:
            try:
                _set_socket_timeout(self.sock, socket.SO_SNDTIMEO, timeout)
                self.sock.sendall(data)
            except OSError as error:  # BlockingIOError: the timeout passed
                self.close()
                timed_out = isinstance(error, BlockingIOError)
                reason = f"nothing could be sent for {timeout:g} s" if timed_out else error
                raise CommError(f"sending {what} failed: {reason}") from error

    def receive_into(self, target: memoryview, timeout: float) -> None:
        """Reads exactly len(target) announced bytes straight into `target`."""
        self._fill(target, time.monotonic() + timeout)

    def receive(self, timeout: float | None) -> tuple[Message, dict]:
        """The next message. A CommTimeout leaves the stream at an unknown position: close it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        header = self._read_exact(HEADER_BYTES, deadline)
        kind, _flags, length = _transport.decode_header(header, self.max_payload)
        payload = self._read_exact(length, deadline) if length else b""
        try:
            message = Message(kind)
        except ValueError:
            raise ProtocolError(f"unknown message type {kind}") from None
        try:
            body = json.loads(payload) if payload else {}
        except (ValueError, RecursionError) as error:  # not JSON; a number too long; nesting too deep
            raise ProtocolError(f"{message.name} payload is not JSON we read: {error!s:.200}") from None
        if not isinstance(body, dict):
            raise ProtocolError(f"{message.name} payload must be a JSON object")
        return message, body

    def expect(self, kind: Message, timeout: float | None) -> dict:
        got, body = self.receive(timeout)
        reason = str(body.get("reason", "no reason given"))[:500]
        if got == Message.REFUSE:
            if body.get("auth"):
                raise AuthenticationError(f"refused: {reason}")
            raise CommError(f"refused: {reason}")
        if got == Message.EVICTED:
            raise Evicted(f"evicted: {reason}")
        if got != kind:
            raise ProtocolError(f"expected {kind.name}, got {got.name}")
        return body

    def _read_exact(self, size: int, deadline: float | None) -> bytes:
        buffer = bytearray(size)
        self._fill(memoryview(buffer), deadline)
        return bytes(buffer)

    def _fill(self, target: memoryview, deadline: float | None) -> None:
        """Reads until `target` is full; CommTimeout at the deadline, CommError if the peer leaves."""
        filled = 0
        while filled < len(target):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeout(f"{filled} of {len(target)} bytes arrived before the deadline")
                _set_socket_timeout(self.sock, socket.SO_RCVTIMEO, left)
            else:
                _set_socket_timeout(self.sock, socket.SO_RCVTIMEO, None)
            try:
                got = self.sock.recv_into(target[filled:])
            except (BlockingIOError, socket.timeout):  # the timeout passed: the deadline decides
                continue
            except OSError as error:
                raise CommError(f"connection failed: {error}") from error
            if got == 0:
                raise CommError(
                    f"connection closed by the other side ({filled} of {len(target)} bytes arrived)"
                )
            filled += got

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port)


def configure_stream(sock: socket.socket, user_timeout_ms: int = 10_000) -> None:
    """TCP_NODELAY, and TCP_USER_TIMEOUT so a vanished host is declared dead in seconds (TCP only)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
