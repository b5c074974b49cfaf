"""Frames and framed TCP connections (csrc/transport): round trips, every way a peer can break the
protocol (each refused with a clear error that drops only that connection), and a fuzz test of the
frame decoder."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycomm._native import core
from pycomm.errors import CommError, CommTimeout, InvalidArgumentError, ProtocolError

transport = core.transport
HEADER = transport.HEADER_BYTES


def header(
    type_: int = 5,
    length: int = 0,
    magic: bytes = b"PYCM",
    version: int = 1,
    flags: int = 0,
    reserved: int = 0,
) -> bytes:
    return magic + struct.pack("<HHIIQ", version, type_, flags, reserved, length)


@pytest.fixture
def listener() -> Iterator[object]:
    server = transport.Listener("127.0.0.1", 0)
    yield server
    server.close()


def raw_client(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_header_layout_is_the_documented_one() -> None:
    assert HEADER == 24
    assert transport.encode_frame(0x0102, b"xyz") == header(type_=0x0102, length=3) + b"xyz"


@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20])
def test_frames_cross_a_connection_intact(listener: object, size: int) -> None:
    payload = os.urandom(size)
    received: dict[str, object] = {}

    def serve() -> None:
        connection = listener.accept(10)
        received["frame"] = connection.recv_frame(10)
        connection.send_frame(7, received["frame"][2][::-1], 10)
        connection.close()

    server = threading.Thread(target=serve)
    server.start()
    client = transport.connect("127.0.0.1", listener.port, 10)
    client.send_frame(3, payload, 10)
    reply = client.recv_frame(10)
    server.join(10)
    assert received["frame"] == (3, 0, payload)
    assert reply == (7, 0, payload[::-1])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PYC", "truncated frame: 3 of 24 header bytes"),
        (header(magic=b"HTTP"), "not a pycomm frame: magic"),
        (header(version=2), "peer speaks pycomm protocol version 2, this side speaks version 1"),
        (header(type_=0), "frame of reserved type 0"),
        (header(flags=4), "frame flags 0x4 are not defined in protocol version 1"),
        (header(reserved=1), "reserved field is not zero"),
        (header(length=2**63), f"frame of {2**63} payload bytes exceeds this connection's limit"),
        (header(length=10) + b"12345", "truncated frame: 5 of 10 payload bytes"),
        (header(length=1) + b"12", "1 bytes after the end of a frame"),
    ],
)
def test_decoder_names_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(")):
        transport.decode_frame(data)


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(InvalidArgumentError, match="frame type 0 is reserved"):
        transport.encode_frame(0, b"")


@settings(max_examples=3000, deadline=None)
@given(
    st.binary(max_size=80)
    | st.builds(lambda t, p: transport.encode_frame(t, p), st.integers(1, 65535), st.binary(max_size=40))
)
def test_fuzzed_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        type_, flags, payload = transport.decode_frame(data, 64)
    except ProtocolError:
        return
    # Whatever decodes must be exactly one well-formed frame.
    assert flags == 0
    assert transport.encode_frame(type_, payload) == data


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 63), st.integers(1, 255))
def test_corrupted_frames_decode_or_raise_protocol_error(payload: bytes, position: int, change: int) -> None:
    frame = bytearray(transport.encode_frame(9, payload))
    frame[position % len(frame)] ^= change
    try:
        type_, _, decoded = transport.decode_frame(bytes(frame), 1 << 20)
    except ProtocolError:
        return
    assert transport.encode_frame(type_, decoded) == bytes(frame)


def serve_one_frame(listener: object, max_payload: int = 1 << 20) -> tuple[object, threading.Thread, dict]:
    """Accepts one connection and tries to receive a frame on it, recording what happened."""
    outcome: dict[str, object] = {}

    def serve() -> None:
        connection = listener.accept(10, max_payload)
        outcome["connection"] = connection
        try:
            outcome["frame"] = connection.recv_frame(10)
        except Exception as error:
            outcome["error"] = error

    server = threading.Thread(target=serve)
    server.start()
    return listener, server, outcome


@pytest.mark.parametrize(
    ("sent", "error", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ProtocolError, "not a pycomm frame"),
        (header(version=9), ProtocolError, "protocol version 9"),
        (header(length=1 << 40), ProtocolError, "exceeds this connection's limit of 1048576"),
        (header(length=100) + b"x" * 40, CommError, "peer closed the connection after 40 of 100 bytes"),
        (b"PYCM\x01", CommError, "peer closed the connection after 5 of 24 bytes"),
    ],
)
def test_a_peer_breaking_the_protocol_is_dropped_and_others_carry_on(
    listener: object, sent: bytes, error: type, message: str
) -> None:
    _, server, outcome = serve_one_frame(listener)
    with raw_client(listener.port) as peer:
        peer.sendall(sent)
        peer.shutdown(socket.SHUT_WR)
        server.join(10)
    assert isinstance(outcome["error"], error) and message in str(outcome["error"]), outcome
    dropped = outcome["connection"]
    assert not dropped.open
    with pytest.raises(CommError, match="connection was dropped"):
        dropped.recv_frame(1)
    # The listener and new connections are unaffected.
    _, server, outcome = serve_one_frame(listener)
    client = transport.connect("127.0.0.1", listener.port, 10)
    client.send_frame(4, b"still here", 10)
    server.join(10)
    assert outcome["frame"] == (4, 0, b"still here")


def test_receive_deadline_raises_timeout(listener: object) -> None:
    accepted: dict[str, object] = {}
    server = threading.Thread(target=lambda: accepted.setdefault("c", listener.accept(10)))
    server.start()
    client = transport.connect("127.0.0.1", listener.port, 10)
    server.join(10)
    with pytest.raises(CommTimeout, match="deadline passed"):
        client.recv_frame(0.05)
    assert not client.open  # the stream position is unknown after a failed receive


def test_connections_carry_a_user_timeout(listener: object) -> None:
    server = threading.Thread(target=lambda: listener.accept(10))
    server.start()
    client = transport.connect("127.0.0.1", listener.port, 10, user_timeout_ms=2500)
    server.join(10)
    duplicate = socket.socket(fileno=os.dup(client.fileno()))
    try:
        assert duplicate.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        assert duplicate.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        duplicate.close()


def test_connect_to_a_closed_port_fails_clearly() -> None:
    server = transport.Listener("127.0.0.1", 0)
    port = server.port
    server.close()
    with pytest.raises(CommError, match=f"cannot connect to 127.0.0.1:{port}"):
        transport.connect("127.0.0.1", port, 5)


def test_bad_timeouts_are_refused(listener: object) -> None:
    for timeout in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="timeout must be a number of seconds"):
            transport.connect("127.0.0.1", listener.port, timeout)


def test_out_of_range_ports_and_frame_types_are_refused(listener: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"frame type must be in \[0, 65535\], got 70000"):
        transport.encode_frame(70000, b"")
    with pytest.raises(InvalidArgumentError, match=r"port must be in \[0, 65535\], got -1"):
        transport.connect("127.0.0.1", -1, 1)
    with pytest.raises(InvalidArgumentError, match=r"port must be in \[0, 65535\], got 65536"):
        transport.Listener("127.0.0.1", 65536)
