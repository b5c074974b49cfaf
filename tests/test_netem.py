"""Link emulation (``pycomm.testing.netem``): delay, rate and loss between network namespaces, and cleanup.

Small Python programs (below) run inside the namespaces and measure what a peer sees. The round-trip
time and rate checks are the emulator's accuracy requirements (within 10% of what was asked); no other
test looks at a clock. Rates are measured as TCP goodput, which is 1448/1500 = 96.5% of the link's
IP-level rate with the default MTU, inside the tolerance. Cleanup tests kill a real process that owns
a network and check that nothing of it survives. Everything but the input checks needs root; those
tests skip with the reason :func:`netem.available` gives.
"""

from __future__ import annotations

import dataclasses
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycomm.errors import InvalidArgumentError
from pycomm.testing import netem
from pycomm.testing.ft import wait_until
from pycomm.testing.process_tree import pid_alive

AVAILABLE, REASON = netem.available()
needs_namespaces = pytest.mark.skipif(not AVAILABLE, reason=REASON)

# ----- programs that run inside the namespaces -----

UDP_ECHO = """
import socket
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("0.0.0.0", 0))
print(server.getsockname()[1], flush=True)
while True:
    data, sender = server.recvfrom(2048)
    server.sendto(data, sender)
"""

# Sequential small datagrams: each round trip is the link's, with no queue in front of it.
UDP_ROUND_TRIPS = """
import json, socket, statistics, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(5)
samples = []
for index in range(count):
    start = time.perf_counter()
    client.sendto(index.to_bytes(8, "little"), (address, port))
    while client.recvfrom(64)[0] != index.to_bytes(8, "little"):
        pass
    samples.append(time.perf_counter() - start)
print(json.dumps({"median": statistics.median(samples)}), flush=True)
"""

# Counts the bytes of `streams` TCP connections over a window that starts after slow start.
TCP_RECEIVER = """
import json, socket, sys, threading, time
streams, warmup, window = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
listener = socket.socket()
listener.bind(("0.0.0.0", 0))
listener.listen(streams)
print(listener.getsockname()[1], flush=True)
connections = [listener.accept()[0] for _ in range(streams)]
received = [0] * streams
def drain(index):
    buffer = bytearray(1 << 20)
    while True:
        got = connections[index].recv_into(buffer)
        if not got:
            return
        received[index] += got
for index in range(streams):
    threading.Thread(target=drain, args=(index,), daemon=True).start()
time.sleep(warmup)
before, start = sum(received), time.monotonic()
time.sleep(window)
after, end = sum(received), time.monotonic()
print(json.dumps({"bits_per_second": (after - before) * 8 / (end - start)}), flush=True)
"""

# Cubic, Linux's default, whatever this host picked: the figures must not depend on the host.
TCP_SENDER = """
import socket, sys, threading, time
address, port, streams, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def connect():
    connection = socket.socket()
    try:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
    except OSError:
        pass
    connection.connect((address, port))
    return connection
connections = [connect() for _ in range(streams)]
data, end = bytes(1 << 20), time.monotonic() + seconds
def send(connection):
    try:
        while time.monotonic() < end:
            connection.sendall(data)
    except OSError:
        pass
threads = [threading.Thread(target=send, args=(connection,)) for connection in connections]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""

# Sends `size` bytes of a seeded pattern over one TCP connection.
TCP_PATTERN_SENDER = """
import random, socket, sys
address, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connection = socket.create_connection((address, port))
connection.sendall(random.Random(size).randbytes(size))
connection.close()
"""

# Receives one connection to its end and prints the SHA-256 of what arrived.
TCP_DIGEST_RECEIVER = """
import hashlib, json, socket
listener = socket.socket()
listener.bind(("0.0.0.0", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
connection, digest, received = listener.accept()[0], hashlib.sha256(), 0
while chunk := connection.recv(1 << 20):
    digest.update(chunk)
    received += len(chunk)
print(json.dumps({"received": received, "sha256": digest.hexdigest()}), flush=True)
"""

UDP_BURST = """
import socket, sys
address, count = sys.argv[1], int(sys.argv[2])
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for index in range(count):
    sender.sendto(index.to_bytes(8, "little") * 8, (address, 9))
print("sent", flush=True)
"""

SLEEPER = "import time; time.sleep(120)"

# Owns a network in a process of its own, reports what it made, then waits to be signalled.
NETWORK_OWNER = """
import json, subprocess, sys, time
from pycomm.testing import netem
with netem.Network(peers=2, rtt="10ms") as net:
    sleeper = net.spawn(1, [sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL)
    namespaces = [net.namespace(0), net.namespace(1)]
    made = {"namespaces": namespaces, "relay": net._relay.pid, "sleeper": sleeper.pid}
    print(json.dumps(made), flush=True)
    time.sleep(120)
"""


class Programs:
    """Starts the programs above in a network's namespaces and closes every pipe afterwards."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, net: netem.Network, peer: int, program: str, *args: object) -> subprocess.Popen[str]:
        process = net.spawn(
            peer,
            [sys.executable, "-c", program, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


@pytest.fixture
def programs() -> Iterator[Programs]:
    started = Programs()
    yield started
    started.close()


def read_line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert process.stdout is not None
    if not select.select([process.stdout], [], [], timeout)[0]:
        raise AssertionError(f"{process.args[-4:]} printed nothing within {timeout} s")
    line = process.stdout.readline()
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"{process.args[-4:]} exited with {process.wait()}: {process.stderr.read()}")
    return line.strip()


def median_round_trip(
    net: netem.Network, programs: Programs, source: int, destination: int, count: int
) -> float:
    server = programs.start(net, destination, UDP_ECHO)
    port = read_line(server)
    client = programs.start(net, source, UDP_ROUND_TRIPS, net.address(destination), port, count)
    return json.loads(read_line(client))["median"]


def tcp_rate(
    net: netem.Network,
    programs: Programs,
    source: int,
    destination: int,
    *,
    streams: int,
    warmup: float,
    window: float,
) -> float:
    receiver = programs.start(net, destination, TCP_RECEIVER, streams, warmup, window)
    port = read_line(receiver)
    programs.start(net, source, TCP_SENDER, net.address(destination), port, streams, warmup + window + 1)
    return json.loads(read_line(receiver))["bits_per_second"]


def namespace_exists(name: str) -> bool:
    return name in netem.owned_namespaces()


# ----- input -----


def test_parse_link_reads_units_into_si() -> None:
    assert netem.parse_link("rtt=50ms,rate=1gbit,loss=0.01%") == {"rtt": 0.05, "rate": 1e9, "loss": 0.0001}
    assert netem.parse_link(" rate = 100Mbit/s , rtt=1.5s ") == {"rate": 1e8, "rtt": 1.5}
    assert netem.parse_link("rate=unlimited,loss=0.25") == {"rate": None, "loss": 0.25}
    assert netem.parse_link("rtt=200us") == {"rtt": pytest.approx(200e-6)}
    assert netem.parse_link("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rtt=50ms,jitter=1ms", "unknown link key 'jitter'"),
        ("rtt=-5ms", "rtt must not be negative"),
        ("rate=0", "rate must be positive"),
        ("rate=0mbit", "rate must be positive"),
        ("loss=101%", "loss must be between 0 and 100%"),
        ("loss=1.5", "loss must be between 0 and 100%"),
        ("rate=1gbps", "rate: unknown unit"),
        ("rtt=5 minutes", "rtt: unknown unit"),
        ("rtt=fast", "rtt: cannot read 'fast'"),
        ("rtt=1ms,rtt=2ms", "'rtt' given twice"),
        ("rtt", "is not KEY=VALUE"),
    ],
)
def test_parse_link_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        netem.parse_link(text)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"peers": 1}, "peers must be an integer from 2"),
        ({"peers": 2, "rtt": -0.01}, "rtt must not be negative"),
        ({"peers": 2, "rate": 0}, "rate must be positive"),
        ({"peers": 2, "loss": "200%"}, "loss must be between"),
        ({"peers": 2, "loss": float("nan")}, "loss must be finite"),
        ({"peers": 2, "backend": "ns3"}, "backend must be one of"),
        ({"peers": 2, "mtu": 100}, "mtu must be an integer"),
        ({"peers": 2, "offload": "yes"}, "offload must be True or False"),
    ],
)
def test_network_refuses_bad_arguments_before_building_anything(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        netem.Network(**arguments)


def test_netem_backend_puts_delay_and_loss_under_the_rate_limiter() -> None:
    # The netem backend cannot run on a kernel without netem; this is the tc configuration it sends.
    link = netem.LinkSettings(rtt=0.05, rate=1e8, loss=0.01)
    commands = netem._leaf_commands(1, link, None, "netem", 1500, False)
    assert [command.split(" handle ")[1].split()[:2] for command in commands] == [
        ["101:", "tbf"],
        ["201:", "netem"],
    ]
    assert "parent 1:11 " in commands[0] and "rate 100000000bit" in commands[0]
    assert "parent 101:1 " in commands[1] and "delay 25000us loss 1%" in commands[1]
    # Relay backend: only the rate is tc's business.
    relay = netem._leaf_commands(1, link, None, "relay", 1500, False)
    assert [command.split(" handle ")[1].split()[:2] for command in relay] == [["101:", "tbf"]]
    # Half a millisecond of the rate at once; with offload 2 ms, room for a TCP super-packet.
    assert "burst 6250 " in relay[0]
    assert "burst 25000 " in netem._leaf_commands(1, link, None, "relay", 1500, True)[0]


# ----- accuracy -----


@needs_namespaces
@pytest.mark.parametrize("rtt", [0.020, 0.050])
def test_round_trip_time_is_what_was_asked(rtt: float, programs: Programs) -> None:
    with netem.Network(peers=2, rtt=rtt, rate="100mbit") as net:
        measured = median_round_trip(net, programs, 0, 1, count=round(1.0 / rtt))
    assert measured == pytest.approx(rtt, rel=0.10)


@needs_namespaces
def test_rate_of_one_tcp_stream_is_what_was_asked(programs: Programs) -> None:
    with netem.Network(peers=2, rtt="20ms", rate="100mbit") as net:
        measured = tcp_rate(net, programs, 0, 1, streams=1, warmup=0.7, window=1.5)
    assert measured == pytest.approx(100e6, rel=0.10)


@needs_namespaces
@pytest.mark.slow
def test_gigabit_link_with_50ms_round_trips_is_filled_by_four_streams(programs: Programs) -> None:
    # One stream with default TCP buffers reaches about half of this link (window-limited), so four.
    with netem.Network(peers=2, rtt="50ms", rate="1gbit") as net:
        measured = tcp_rate(net, programs, 0, 1, streams=4, warmup=1.5, window=2.5)
    assert measured == pytest.approx(1e9, rel=0.10)


@needs_namespaces
def test_loss_drops_the_asked_share_of_packets(programs: Programs) -> None:
    sent = 20000
    with netem.Network(peers=2, loss="1%", seed=7) as net:
        sender = programs.start(net, 0, UDP_BURST, net.address(1), sent)
        assert read_line(sender) == "sent"

        # The relay may still hold the last datagrams when the sender is done.
        wait_until(
            lambda: accounted(net.stats()["links"][0, 1]) >= sent, "every datagram counted", timeout=10
        )
        counters = net.stats()["links"][0, 1]
    assert accounted(counters) == sent
    assert counters["dropped_queue_full"] == 0
    assert 0.008 <= counters["dropped_loss"] / sent <= 0.012


@needs_namespaces
@pytest.mark.parametrize("offload", [True, False])
def test_tcp_over_a_lossy_link_arrives_whole_with_packets_lost_one_by_one(
    offload: bool, programs: Programs
) -> None:
    # With offload the relay reads TCP in super-packets; a loss inside one must cost exactly that
    # packet, and the packets around it must reach the receiver as the sender cut them.
    import hashlib
    import random

    size = 8 << 20
    with netem.Network(peers=2, rtt="2ms", rate="200mbit", loss="1%", seed=3, offload=offload) as net:
        receiver = programs.start(net, 1, TCP_DIGEST_RECEIVER)
        port = read_line(receiver)
        programs.start(net, 0, TCP_PATTERN_SENDER, net.address(1), port, size)
        arrived = json.loads(read_line(receiver, timeout=60))
        stats = net.stats()
    counters = stats["links"][0, 1]
    sent = hashlib.sha256(random.Random(size).randbytes(size)).hexdigest()
    assert arrived == {"received": size, "sha256": sent}
    assert 0.005 <= counters["dropped_loss"] / accounted(counters) <= 0.015, counters
    if offload:
        # Reads count the acknowledgements too (one per super-packet); measured: 1 read per 5.3 packets.
        assert stats["relay_reads"] < stats["forwarded_packets"] / 3, stats
    else:
        assert stats["relay_reads"] >= stats["forwarded_packets"], stats


# Floods one link for 2 s over 4 streams (no rate limit there: only their windows bound it).
TCP_FLOOD = """
import socket, sys, threading, time
address, port = sys.argv[1], int(sys.argv[2])
end = time.monotonic() + 2.0
def send():
    connection, data = socket.create_connection((address, port)), bytes(1 << 20)
    try:
        while time.monotonic() < end:
            connection.sendall(data)
    except OSError:
        pass
threads = [threading.Thread(target=send) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


@needs_namespaces
def test_a_delay_line_cut_by_set_link_counts_every_packet_it_drops(programs: Programs) -> None:
    with netem.Network(peers=2, rtt="100ms", backend="relay", offload=True) as net:
        receiver = programs.start(net, 1, TCP_RECEIVER, 4, 30.0, 1.0)  # drains; its figure is not used
        programs.start(net, 0, TCP_FLOOD, net.address(1), read_line(receiver))
        time.sleep(1.2)  # the 100 ms delay line holds thousands of packets, in super-packets
        net.set_link(0, 1, rtt="2ms", rate="10mbit")  # it shrinks to 1 MiB: the rest is dropped
        time.sleep(3.0)
        stats = net.stats()
    assert stats["links"][0, 1]["dropped_queue_full"] > 100, stats["links"]
    # Every packet read is forwarded, dropped for a reason or still queued: a super-packet dropped
    # when its line shrank counts as every packet in it.
    assert stats["relay_unaccounted"] == 0, stats


def accounted(counters: dict[str, int]) -> int:
    return counters["forwarded_packets"] + counters["dropped_loss"] + counters["dropped_queue_full"]


# ----- one direction changed -----


@needs_namespaces
def test_slower_direction_adds_only_its_own_delay(programs: Programs) -> None:
    with netem.Network(peers=3, rtt="20ms") as net:
        net.set_link(0, 1, rtt="100ms")  # 0 -> 1 now takes 50 ms, 1 -> 0 still 10 ms
        assert net.link(0, 1).delay == pytest.approx(0.05) and net.link(1, 0).delay == pytest.approx(0.01)
        changed = median_round_trip(net, programs, 0, 1, count=15)
        untouched = median_round_trip(net, programs, 2, 0, count=15)
    assert changed == pytest.approx(0.060, rel=0.10)
    assert untouched == pytest.approx(0.020, rel=0.10)


@needs_namespaces
def test_slower_direction_limits_only_its_own_rate(programs: Programs) -> None:
    with netem.Network(peers=2, rtt="10ms") as net:
        net.set_link(0, 1, rate="20mbit")  # the other direction stays unlimited
        slow = tcp_rate(net, programs, 0, 1, streams=1, warmup=0.5, window=1.0)
        fast = tcp_rate(net, programs, 1, 0, streams=1, warmup=0.5, window=1.0)
    assert slow == pytest.approx(20e6, rel=0.10)
    assert fast > 3 * slow


@needs_namespaces
def test_set_link_refuses_bad_links_and_keeps_the_network_usable(programs: Programs) -> None:
    with netem.Network(peers=2, rtt="20ms") as net:
        with pytest.raises(InvalidArgumentError, match="a link joins two different peers"):
            net.set_link(1, 1, rtt="5ms")
        with pytest.raises(InvalidArgumentError, match="destination must be a peer index from 0 to 1"):
            net.set_link(0, 2, rtt="5ms")
        with pytest.raises(InvalidArgumentError, match="rate must be positive"):
            net.set_link(0, 1, rate=0)
        with pytest.raises(InvalidArgumentError, match="loss must be between"):
            net.set_link(0, 1, loss="120%")
        # A rate limiter comes and goes (the link's qdiscs change kind), then the delay changes.
        net.set_link(0, 1, rate="10mbit")
        net.set_link(0, 1, rate=None, rtt="40ms", both=True)
        assert net.link(0, 1) == net.link(1, 0) == netem.LinkSettings(rtt=0.04, rate=None, loss=0.0)
        assert median_round_trip(net, programs, 1, 0, count=15) == pytest.approx(0.04, rel=0.10)


@needs_namespaces
def test_bridged_namespaces_of_the_netem_backend_carry_the_rate(
    programs: Programs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a kernel without netem this runs the netem backend's topology (veth, bridge, tbf) with no
    # delay or loss, which is all it can do without the qdisc.
    kernel = netem._probe_kernel()
    monkeypatch.setattr(netem, "_kernel_probe", dataclasses.replace(kernel, netem=True))
    with netem.Network(peers=2, rate="50mbit", backend="netem") as net:
        assert net.backend == "netem"
        measured = tcp_rate(net, programs, 0, 1, streams=1, warmup=0.5, window=1.0)
        assert net.stats()["links"][0, 1]["forwarded_packets"] > 0
    assert measured == pytest.approx(50e6, rel=0.10)


# ----- cleanup -----


def relay_of(net: netem.Network) -> int:
    assert net._relay is not None
    return net._relay.pid


@needs_namespaces
def test_leaving_the_block_removes_namespaces_processes_and_relay(programs: Programs) -> None:
    with pytest.raises(RuntimeError, match="inside the block"), netem.Network(peers=3) as net:
        names = [net.namespace(peer) for peer in range(3)]
        sleeper = net.spawn(2, [sys.executable, "-c", SLEEPER])
        relay = relay_of(net) if net.backend == "relay" else None
        assert all(namespace_exists(name) for name in names)
        raise RuntimeError("inside the block")
    assert sleeper.returncode == -signal.SIGKILL
    assert not any(namespace_exists(name) for name in names)
    assert relay is None or not pid_alive(relay)
    net.close()  # a second close does nothing
    with pytest.raises(InvalidArgumentError, match="closed"):
        net.spawn(0, [sys.executable, "-c", SLEEPER])


@dataclasses.dataclass
class Owner:
    """A process of its own that owns a network, and what that network made."""

    process: subprocess.Popen[str]
    namespaces: list[str]
    relay: int
    sleeper: int  # a process it started inside the network

    def all_gone(self) -> bool:
        return not (
            any(namespace_exists(name) for name in self.namespaces)
            or pid_alive(self.sleeper)
            or pid_alive(self.relay)
        )


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Owner]:
    # It runs from an empty directory, so it imports the installed pycomm, not a checkout.
    process = subprocess.Popen(
        [sys.executable, "-c", NETWORK_OWNER],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Owner(process, **json.loads(read_line(process)))
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


@needs_namespaces
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_owner_interrupted_by_a_signal_cleans_up(signum: int, owner: Owner) -> None:
    owner.process.send_signal(signum)
    _, errors = owner.process.communicate(timeout=30)
    assert owner.process.returncode == -signum, errors
    assert owner.all_gone()


@needs_namespaces
def test_namespaces_of_a_killed_owner_are_swept_by_the_next_network(owner: Owner) -> None:
    owner.process.kill()
    owner.process.wait(timeout=30)
    # The relay notices its control pipe closing and stops by itself; the namespaces stay behind,
    # and so does the process inside, until a sweep.
    wait_until(lambda: not pid_alive(owner.relay), "the orphaned relay stopped", timeout=10)
    assert all(namespace_exists(name) for name in owner.namespaces)
    assert pid_alive(owner.sleeper)
    with netem.Network(peers=2):
        assert owner.all_gone()


@needs_namespaces
def test_sweep_leaves_networks_of_live_owners_alone() -> None:
    with netem.Network(peers=2) as net:
        names = [net.namespace(0), net.namespace(1)]
        assert not set(names) & set(netem.sweep())
        assert all(namespace_exists(name) for name in names)
