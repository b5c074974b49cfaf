"""pycomm.ft refuses what breaks its protocol, and only that: wrong secrets, another protocol
version, truncated, oversized and random frames at the master and at a peer's data port, garbage
and forged data frames or barrier tokens on a ring link. Each is refused with a clear error while
the group keeps working. The decoders are fuzzed with thousands of inputs."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycomm._native import core
from pycomm.errors import AuthenticationError, CommError, InvalidArgumentError, ProtocolError
from pycomm.ft import Communicator, Master
from pycomm.ft._protocol import PROTOCOL_VERSION, Channel, Message, verify
from pycomm.testing.ft import local_group, on_all

_transport = core.transport
_ft = core.ft


def frame(kind: int, payload: bytes) -> bytes:
    return _transport.encode_frame(kind, payload)


def group_still_works(comms) -> None:
    results = on_all(comms, lambda c: (c.all_reduce(x := np.ones(1000)), x)[1])
    assert all(np.all(r == len(comms)) for r in results)


def read_until_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_wrong_or_missing_secret_is_refused_and_the_group_is_unaffected() -> None:
    with local_group(2, secret="right secret") as (master, comms):
        for secret, match in (("wrong secret", "secret"), (None, "requires a group secret")):
            intruder = Communicator(master.address, secret=secret)
            with pytest.raises(AuthenticationError, match=match):
                intruder.connect(timeout=5)
            intruder.close()
        group_still_works(comms)
        assert len(master.group_state()["members"]) == 2
    # A peer with a secret refuses a master that cannot prove it knows it.
    with Master() as open_master:
        cautious = Communicator(open_master.address, secret="right secret")
        with pytest.raises(AuthenticationError):
            cautious.connect(timeout=5)
        cautious.close()


def raw_hello(address: str, **overrides) -> tuple[Message, dict]:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    channel = Channel(sock)
    try:
        challenge = channel.expect(Message.CHALLENGE, timeout=5)
        hello = {
            "version": PROTOCOL_VERSION,
            "peer_id": "f" * 32,
            "peer_group": 0,
            "host": "127.0.0.1",
            "port": 9,
            "nonce": "00",
            "mac": "",
            "rejoin": None,
            **overrides,
        }
        assert challenge["version"] == PROTOCOL_VERSION
        channel.send(Message.HELLO, hello)
        return channel.receive(timeout=5)
    finally:
        channel.close()


def test_another_protocol_version_is_refused_with_a_reason() -> None:
    with local_group(2) as (master, comms):
        other = PROTOCOL_VERSION + 1
        kind, body = raw_hello(master.address, version=other)
        assert kind == Message.REFUSE and f"protocol version {other}" in body["reason"]
        group_still_works(comms)


MALFORMED = {
    "truncated header": b"PYCM\x01\x00",
    "bad magic": b"XXXX" + bytes(20),
    "oversized length": struct.pack("<IHHIIQ", 0x4D435950, 1, 2, 0, 0, 1 << 40),
    "length larger than what follows": struct.pack("<IHHIIQ", 0x4D435950, 1, 2, 0, 0, 100) + b"{}",
    "unknown version": struct.pack("<IHHIIQ", 0x4D435950, 9, 2, 0, 0, 2) + b"{}",
    "unknown type": frame(999, b"{}"),
    "payload not JSON": frame(int(Message.HELLO), b"\xff\xfe not json"),
    "payload not an object": frame(int(Message.HELLO), b"[1, 2]"),
    "HELLO missing fields": frame(int(Message.HELLO), b'{"version": 1}'),
    "HELLO with wrong types": frame(
        int(Message.HELLO),
        json.dumps(
            {"version": PROTOCOL_VERSION, "peer_id": 5, "peer_group": "x", "host": [], "port": 1, "nonce": ""}
        ).encode(),
    ),
    "HELLO out of range": frame(
        int(Message.HELLO),
        json.dumps(
            {
                "version": PROTOCOL_VERSION,
                "peer_id": "a",
                "peer_group": 0,
                "host": "h",
                "port": 70000,
                "nonce": "",
            }
        ).encode(),
    ),
    "HELLO with a host name no peer can connect to": frame(
        int(Message.HELLO),
        json.dumps(
            {
                "version": PROTOCOL_VERSION,
                "peer_id": "a",
                "peer_group": 0,
                "host": "x" * 64,  # a label IDNA cannot encode
                "port": 7000,
                "nonce": "",
            }
        ).encode(),
    ),
    # JSON the decoder refuses with something other than a JSONDecodeError:
    "a number of 5000 digits": frame(int(Message.HELLO), b'{"version": ' + b"9" * 5000 + b"}"),
    "arrays nested 100000 deep": frame(int(Message.HELLO), b"[" * 100_000),
    "random bytes": bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)),
}


def test_a_mac_that_is_not_ascii_is_refused_as_a_wrong_secret() -> None:
    with pytest.raises(AuthenticationError):
        verify(b"secret", "\u00e9" * 64, "nonce", "hello")


def test_a_send_ends_at_its_timeout_while_another_thread_waits_to_read() -> None:
    # The reader waits without a deadline while the other side reads nothing: each send must still
    # give up after its own timeout (one timeout setting for both directions could make it wait for
    # ever, holding the master's lock).
    ours, theirs = socket.socketpair()
    channel = Channel(ours)

    def wait_to_read() -> None:
        with contextlib.suppress(CommError):  # the other side closes at the end
            channel.receive(None)

    reading = threading.Thread(target=wait_to_read, daemon=True)
    reading.start()
    outcome: list[BaseException] = []

    def flood() -> None:
        try:
            while True:
                channel.send(Message.HEARTBEAT, {"pad": "x" * 60_000}, timeout=0.5)
        except CommError as error:
            outcome.append(error)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(30)
    assert outcome and "could be sent" in str(outcome[0]), outcome
    theirs.close()
    reading.join(5)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_frames_at_the_master_drop_only_that_connection(case: str) -> None:
    with local_group(2) as (master, comms):
        host, port = master.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(MALFORMED[case])
            with contextlib.suppress(OSError):  # the master may have hung up already
                sock.shutdown(socket.SHUT_WR)  # a truncated frame then ends with the connection
            read_until_closed(sock)  # the master answers with its challenge, then hangs up
        assert any("refused a connection" in text for _, text in master.events)
        group_still_works(comms)
        assert len(master.group_state()["members"]) == 2


@pytest.mark.parametrize("case", [*MALFORMED, "link for another peer", "link with a forged secret"])
def test_malformed_frames_at_a_data_port_drop_only_that_connection(case: str) -> None:
    with local_group(2, secret="s") as (_, comms):
        port = comms[0]._listener.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if case in MALFORMED:
                with contextlib.suppress(OSError):  # the peer may have hung up already
                    sock.sendall(MALFORMED[case])
                    sock.shutdown(socket.SHUT_WR)
            else:
                channel = Channel(sock)
                nonce = channel.expect(Message.LINK_CHALLENGE, timeout=5)["nonce"]
                target = "someone else" if case == "link for another peer" else comms[0].peer_id
                channel.send(
                    Message.LINK_HELLO,
                    {
                        "version": PROTOCOL_VERSION,
                        "kind": "ring",
                        "group": 0,
                        "epoch": 99,
                        "from": comms[1].peer_id,
                        "to": target,
                        "stripe": 0,
                        "stripes": 1,
                        "mac": nonce,
                    },
                )
            received = read_until_closed(sock)
            assert b"LINK_ACCEPT" not in received and len(received) < 200
        group_still_works(comms)


def test_garbage_on_a_ring_link_fails_the_operation_with_a_protocol_error() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    # Rank 0 of a ring of 2 whose "previous peer" is this test.
    engine = _ft.RingEngine([a.detach()], [d.detach()], 0, 2)
    x = np.ones(1000, np.float32)
    op = engine.submit("all_reduce", x, "float32", "sum", 1000, 0, 0)
    c.sendall(b"\x00" * 48)
    assert op.wait(10) == "failed"
    assert "bad magic" in op.error
    assert engine.failed and not op.has_result
    later = engine.submit("all_reduce", x, "float32", "sum", 1000, 0, 1)
    assert later.wait(1) == "failed"
    engine.abort("done")
    for sock in (b, c):
        sock.close()


@pytest.mark.parametrize(
    "header, message",
    [
        (dict(length=12), "bytes for a segment"),
        (dict(count=999), "disagree"),
        (dict(step=5), "step 5"),
        (dict(step=0xFFFFFFFF, length=0), "step 4294967295"),  # step + 1 would wrap to 0
        (dict(segment=9), "segment 9"),
        (dict(root=9), "unknown wire quantization 9"),
        (dict(root=1), "disagree"),  # int8 on the wire, while this peer sends the values
    ],
)
def test_forged_data_frames_are_refused_with_what_was_wrong(header: dict, message: str) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    engine = _ft.RingEngine([a.detach()], [d.detach()], 0, 2)
    op = engine.submit("all_reduce", np.ones(1000, np.float32), "float32", "sum", 1000, 0, 0)
    fields = dict(
        phase=1,
        collective="all_reduce",
        dtype="float32",
        op="sum",
        root=0,
        step=0,
        tag=0,
        sequence=0,
        count=1000,
        segment=0,
        length=2000,
    )
    fields.update(header)
    c.sendall(_ft.encode_data_header(**fields) + bytes(fields["length"]))
    assert op.wait(10) == "failed"
    assert message in op.error
    engine.abort("done")
    b.close()
    c.close()


@contextlib.contextmanager
def previous_peer_of_rank_0(world: int, connections: int = 1) -> Iterator[tuple[Any, list[socket.socket]]]:
    """A ring engine of rank 0 whose previous peer is the test: yields the engine and the sockets
    to send it frames on (what it sends the next peer goes unread)."""
    to_next, unread = socket.socketpair()
    pairs = [socket.socketpair() for _ in range(connections)]
    engine = _ft.RingEngine([to_next.detach()], [theirs.detach() for _, theirs in pairs], 0, world)
    try:
        yield engine, [ours for ours, _ in pairs]
    finally:
        engine.abort("done")
        for sock in (unread, *(ours for ours, _ in pairs)):
            sock.close()


def test_a_forged_step_on_the_wire_of_a_quantized_all_reduce_is_refused() -> None:
    with previous_peer_of_rank_0(2) as (engine, (prev,)):
        x = np.ones(100_000, np.float32)
        op = engine.submit("all_reduce", x, "float32", "sum", x.size, 0, 0, quantization="int8")
        # root carries the wire quantization (1: int8); an empty frame of step 2**32 - 1.
        prev.sendall(
            _ft.encode_data_header(1, "all_reduce", "float32", "sum", 1, 0xFFFFFFFF, 0, 0, x.size, 0, 0)
        )
        assert op.wait(10) == "failed"
        assert "step 4294967295" in op.error


@pytest.mark.parametrize("early", [True, False])
def test_a_small_all_reduce_refuses_reduce_scatter_frames(early: bool) -> None:
    # At most 16 KiB: the inputs are gathered in one pass, and there is no reduce-scatter to place
    # such a frame in (it once went to a buffer that was never allocated).
    with previous_peer_of_rank_0(2) as (engine, (prev,)):
        forged = _ft.encode_data_header(1, "all_reduce", "float32", "sum", 0, 0, 0, 0, 10, 0, 40) + bytes(40)
        if early:
            prev.sendall(forged)
        op = engine.submit("all_reduce", np.ones(10, np.float32), "float32", "sum", 10, 0, 0)
        if not early:
            prev.sendall(forged)
        assert op.wait(10) == "failed"
        assert "gathers its inputs in one pass" in op.error


def test_a_barrier_token_sent_twice_is_refused() -> None:
    # Rank 0 of a ring of 3: the inputs of ranks 2 and 1 arrive, then two tokens that both say they
    # travelled one hop. Counted, they would let rank 0 return without word from rank 1 (the one
    # two hops back).
    with previous_peer_of_rank_0(3) as (engine, (prev,)):
        op = engine.submit("all_reduce", np.ones(10, np.float32), "float32", "sum", 10, 0, 0)
        for step in (0, 1):
            prev.sendall(
                _ft.encode_data_header(2, "all_reduce", "float32", "sum", 0, step, 0, 0, 10, 0, 40)
                + bytes(40)
            )
        token = _ft.encode_data_header(4, "all_reduce", "float32", "sum", 0, 1, 0, 0, 10, 0, 0)
        prev.sendall(token + token)
        assert op.wait(10) == "failed"
        assert "barrier token of 1 hop(s)" in op.error and "twice" in op.error


def test_a_frame_that_arrives_after_its_operation_finished_is_refused() -> None:
    # A pool of two connections from the previous peer. The header of a frame for the second
    # operation of tag 0 arrives on the first connection before that operation starts; the
    # operation then gets all it needs on the second one and finishes; the first frame's payload
    # completes afterwards: one frame too many, not one to keep for later.
    count, half = 10_000, 20_000  # 40 KB: a ring all-reduce; each chunk one segment of 5000 floats

    def header(phase: int, sequence: int, length: int) -> bytes:
        hops = 1 if phase == 4 else 0
        return _ft.encode_data_header(
            phase, "all_reduce", "float32", "sum", 0, hops, 0, sequence, count, 0, length
        )

    with previous_peer_of_rank_0(2, connections=2) as (engine, (first, second)):
        first.sendall(header(1, 1, half))  # its payload comes later
        for sequence in (0, 1):
            op = engine.submit("all_reduce", np.ones(count, np.float32), "float32", "sum", count, 0, 0)
            second.sendall(header(1, sequence, half) + bytes(half) + header(2, sequence, half) + bytes(half))
            second.sendall(header(4, sequence, 0))
            assert op.wait(10) == "completed", op.error
        first.sendall(bytes(half))
        deadline = time.monotonic() + 10
        while not engine.failed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "which already finished" in engine.failure


def test_early_frames_read_at_once_on_a_pool_count_against_one_limit() -> None:
    # Two connections from the previous peer each start a 3000-byte frame for an operation not
    # started: each fits the 4096-byte limit alone, both together do not, even before any payload
    # byte has arrived.
    a, b = socket.socketpair()
    senders, receivers = zip(*(socket.socketpair() for _ in range(2)))
    engine = _ft.RingEngine([a.detach()], [r.detach() for r in receivers], 0, 2, max_early_bytes=4096)
    for tag, sender in enumerate(senders, start=7):
        sender.sendall(
            _ft.encode_data_header(1, "all_reduce", "float32", "sum", 0, 0, tag, 0, 100_000, 0, 3000)
        )
    op = engine.submit("all_reduce", np.ones(10, np.float32), "float32", "sum", 10, 0, 1)
    assert op.wait(10) == "failed"
    assert "has not started" in engine.failure
    engine.abort("done")
    for sock in (b, *senders):
        sock.close()


def test_frames_for_unstarted_operations_are_bounded() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    engine = _ft.RingEngine([a.detach()], [d.detach()], 0, 2, max_early_bytes=4096)
    header = _ft.encode_data_header(1, "all_reduce", "float32", "sum", 0, 0, 7, 0, 100_000, 0, 8192)
    c.sendall(header + bytes(8192))
    op = engine.submit("all_reduce", np.ones(10, np.float32), "float32", "sum", 10, 0, 1)
    assert op.wait(10) == "failed"
    assert "has not started" in engine.failure
    engine.abort("done")
    b.close()
    c.close()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=48, max_size=48))
def test_fuzz_the_data_header_decoder(data: bytes) -> None:
    try:
        header = _ft.decode_data_header(data)
    except ProtocolError as error:
        assert "data frame" in str(error)
        return
    again = _ft.encode_data_header(
        header["phase"],
        header["collective"],
        header["dtype"],
        header["op"],
        header["root"],
        header["step"],
        header["tag"],
        header["sequence"],
        header["count"],
        header["segment"],
        header["length"],
    )
    assert again == data


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda t, p: frame(t, p), st.integers(1, 40), st.binary(max_size=200)),
    )
)
def test_fuzz_the_control_message_reader(data: bytes) -> None:
    left, right = socket.socketpair()
    try:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        channel = Channel(right)
        try:
            kind, body = channel.receive(timeout=2)
        except CommError:
            return  # ProtocolError, a closed connection or a timeout: refused cleanly
        assert isinstance(kind, Message) and isinstance(body, dict)
    finally:
        left.close()
        right.close()


def test_a_frame_header_of_the_wrong_size_is_an_argument_error() -> None:
    with pytest.raises(InvalidArgumentError):
        _ft.decode_data_header(b"short")
    with pytest.raises(InvalidArgumentError):
        _transport.decode_header(b"short")


def test_a_flood_of_empty_frames_for_unstarted_operations_is_bounded_too() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    engine = _ft.RingEngine([a.detach()], [d.detach()], 0, 2, max_early_bytes=64 * 1024)
    tokens = b"".join(
        _ft.encode_data_header(4, "all_reduce", "float32", "sum", 0, 1, tag, 0, 10, 0, 0)
        for tag in range(10_000)
    )
    with contextlib.suppress(OSError):  # the engine hangs up once the limit is passed
        c.sendall(tokens)
    op = engine.submit("all_reduce", np.ones(10, np.float32), "float32", "sum", 10, 0, 1 << 40)
    assert op.wait(10) == "failed"
    assert "has not started" in engine.failure
    engine.abort("done")
    b.close()
    c.close()
