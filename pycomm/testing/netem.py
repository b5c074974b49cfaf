"""Emulated WAN links between local network namespaces, for tests and stress runs.

Training across continents meets round trips of tens of milliseconds, links of a gigabit or less and
the odd lost packet. This module builds such links on one machine so that tests can show what pycomm
does over them::

    from pycomm.testing import netem

    with netem.Network(peers=3, rtt="50ms", rate="1gbit", loss="0.01%") as net:
        net.set_link(0, 1, rate="100mbit")            # one direction made slow
        server = net.spawn(1, [sys.executable, "server.py", net.address(1)])
        client = net.spawn(0, [sys.executable, "client.py", net.address(1)])
        print(net.stats())                            # packets forwarded and dropped, per link

Each peer is a network namespace (named ``pycomm-<owner pid>-...``) with one device, ``wan0``,
holding the address ``10.77.0.<peer + 1>``. Every link ``i -> j`` has its own one-way delay (half
its ``rtt``), rate and loss. Two backends build them:

- ``relay`` (kernels without the netem qdisc): ``wan0`` is a TUN device whose other end is held by
  one relay process (``pycomm/_netem_relay``, C++). The relay delays each packet by its link's
  one-way delay and drops it with the link's loss probability from a seeded generator; a ``tbf``
  qdisc under a per-destination ``htb`` class on the sender's ``wan0`` sets the rate. By default
  (``offload=True``) the devices carry TCP in super-packets of up to 64 KiB, as a NIC with
  segmentation offload would, so one read and one write move up to ~45 packets; the relay still
  draws the loss of each packet and, when one is lost, forwards the packets around it with the
  sequence numbers they would have had. The packets of a super-packet arrive together (they left
  the sender back to back), so the receiver sees the bursts a GRO-capable NIC would hand it.
- ``netem`` (kernels that have it): ``wan0`` is a veth into a hub namespace's bridge; each link's
  ``htb`` class gets a ``tbf`` for the rate and a ``netem`` for the delay and the loss. No relay runs.

Rates count IP packets (a 1500-byte MTU leaves TCP 96.5% of the rate for data), and each peer's
``wan0`` takes any number of links at once: the links out of a peer do not share a rate.

``backend="auto"`` picks netem where a scratch namespace shows the kernel has it.

Nothing outlives a network: leaving the ``with`` block (normally, by an exception or Ctrl-C), ``close``,
SIGTERM or SIGHUP to the owning process (when no other handler is installed) and interpreter exit each
kill every process inside its namespaces, stop the relay and delete the namespaces. A SIGKILLed
owner cannot clean up; the relay then stops by itself (its control pipe closes), and the next
:class:`Network` (or :func:`sweep`) removes the namespaces of owners that no longer run.

Everything here needs root (namespaces, TUN, tc); :func:`available` says whether this machine can, and why
not.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import itertools
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

from pycomm.errors import InvalidArgumentError, NotSupportedError, PycommError
from pycomm.testing._link_spec import (
    Duration,
    LinkSettings,
    Loss,
    Rate,
    parse_duration,
    parse_link,
    parse_loss,
    parse_rate,
)
from pycomm.testing.process_tree import pid_alive

__all__ = [
    "Duration",
    "LinkSettings",
    "Loss",
    "NetemError",
    "Network",
    "Rate",
    "available",
    "owned_namespaces",
    "parse_duration",
    "parse_link",
    "parse_loss",
    "parse_rate",
    "relay_processes",
    "sweep",
]

_T = TypeVar("_T")
_CLONE_NEWNET = 0x40000000

DEVICE = "wan0"
SUBNET = "10.77.0"
MAX_PEERS = 250
BACKENDS = ("auto", "relay", "netem")
RELAY_FILE = "_netem_relay"

_NETNS_DIRECTORY = "/var/run/netns"  # where `ip netns` binds namespaces
_NAME_PREFIX = "pycomm"
_OWNED_NAME = re.compile(r"^pycomm-(\d+)-(\d+)-")
_COMMAND_TIMEOUT = 20.0
_RELAY_REPLY_TIMEOUT = 10.0
# Each link's class under the htb root: a pass-through ceiling far above any emulated rate; only its
# tbf child shapes. An explicit quantum keeps htb from warning about one derived from that ceiling.
_CLASS_RATE = "100gbit"
_CLASS_QUANTUM = 60000
# Queues are sized from rate x delay; a link without a rate is sized as if it ran this fast.
_UNLIMITED_RATE_FOR_SIZING = 10e9
# Room for the round trips that delay-based sizing gives nothing to (rtt 0), and a floor under tiny links.
_MIN_QUEUE_SECONDS = 0.02
_MIN_RELAY_QUEUE_BYTES = 1 << 20
_MAX_RELAY_QUEUE_BYTES = 256 << 20
# How many packets the TUN device buffers between the shaper and the relay (its default is 500, a
# few milliseconds at a gigabit: any scheduling hiccup of the relay would become loss).
_DEVICE_QUEUE_PACKETS = 10000
# The largest TCP super-packet (64 KiB of IP packet, plus the headers of its ~45 packets) and some.
_OFFLOAD_BURST_BYTES = 96 << 10


class NetemError(PycommError, RuntimeError):
    """A command that builds or drives the emulated network failed; the message holds its output."""


# ----- what this machine can do -----


@dataclasses.dataclass(frozen=True)
class _Kernel:
    reason: str = ""  # why networks cannot be built here; empty when they can
    netem: bool = False
    tun: bool = False


_kernel_probe: _Kernel | None = None
_probe_lock = threading.Lock()


def relay_path() -> str:
    """Where the installed package keeps the relay program."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), RELAY_FILE)


def _probe_kernel() -> _Kernel:
    """Builds what a network needs in a scratch namespace, once per process: the result cannot change
    while the process runs (short of loading kernel modules)."""
    global _kernel_probe
    with _probe_lock:
        if _kernel_probe is not None:
            return _kernel_probe
        if not sys.platform.startswith("linux"):
            _kernel_probe = _Kernel(f"network namespaces are Linux only (this is {sys.platform})")
        elif os.geteuid() != 0:
            _kernel_probe = _Kernel("creating network namespaces needs root")
        elif shutil.which("ip") is None or shutil.which("tc") is None:
            _kernel_probe = _Kernel("the iproute2 tools `ip` and `tc` are not on PATH")
        else:
            _kernel_probe = _probe_in_scratch_namespace()
        return _kernel_probe


def _probe_in_scratch_namespace() -> _Kernel:
    name = f"{_owner_tag()}-probe"
    try:
        _run(["ip", "netns", "add", name])
    except NetemError as error:
        return _Kernel(f"cannot create a network namespace: {error}")
    try:
        # The tree every link's sender gets (see _root_commands), built on lo.
        shaping = [
            "qdisc add dev lo root handle 1: htb",
            f"class add dev lo parent 1: classid 1:10 htb rate {_CLASS_RATE} quantum {_CLASS_QUANTUM}",
            "filter add dev lo parent 1: protocol ip prio 1 u32 match ip dst 10.77.0.2/32 flowid 1:10",
            "qdisc add dev lo parent 1:10 handle 100: tbf rate 1gbit burst 10000 limit 100000",
        ]
        try:
            _run(["tc", "-n", name, "-batch", "-"], stdin=shaping)
        except NetemError as error:
            return _Kernel(f"the kernel lacks a qdisc or filter the links need (htb, u32, tbf): {error}")
        try:
            _run(["tc", "-n", name, "qdisc", "add", "dev", "lo", "parent", "100:1", "netem", "delay", "1ms"])
            netem = True
        except NetemError:
            netem = False
    finally:
        with contextlib.suppress(NetemError):
            _run(["ip", "netns", "del", name])
    tun = _tun_usable()
    if not netem and not tun:
        return _Kernel("the kernel has no netem qdisc and /dev/net/tun cannot be opened for the relay")
    return _Kernel(netem=netem, tun=tun)


def _tun_usable() -> bool:
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError:
        return False
    return True


def _choose_backend(requested: str) -> str:
    kernel = _probe_kernel()
    if kernel.reason:
        raise NotSupportedError(f"pycomm.testing.netem cannot build networks here: {kernel.reason}")
    if requested == "auto":
        requested = "netem" if kernel.netem else "relay"
    if requested == "netem" and not kernel.netem:
        raise NotSupportedError(
            "backend 'netem' needs the kernel's netem qdisc, which this kernel lacks; use 'relay'"
        )
    if requested == "relay":
        if not kernel.tun:
            raise NotSupportedError("backend 'relay' needs /dev/net/tun, which cannot be opened here")
        if not os.access(relay_path(), os.X_OK):
            raise NotSupportedError(
                f"the relay program {relay_path()} is missing: reinstall pycomm (Linux builds it)"
            )
    return requested


def available() -> tuple[bool, str]:
    """(True, which backend and why) when :class:`Network` works on this machine, else (False, the
    reason), for a test's skip message. The first call probes the kernel in a scratch namespace."""
    try:
        backend = _choose_backend("auto")
    except NotSupportedError as error:
        return False, str(error)
    if backend == "netem":
        return True, "the kernel's netem qdisc emulates delay and loss; tbf sets the rate"
    return (
        True,
        "the kernel has no netem qdisc: pycomm's packet relay emulates delay and loss; tbf sets the rate",
    )


# ----- commands, names and cleanup -----


def _run(
    argv: Sequence[str], *, stdin: Sequence[str] | None = None, timeout: float = _COMMAND_TIMEOUT
) -> str:
    text = "".join(line + "\n" for line in stdin) if stdin is not None else None
    try:
        done = subprocess.run(
            list(argv), input=text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise NetemError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s") from error
    except OSError as error:
        raise NetemError(f"cannot run `{shlex.join(argv)}`: {error}") from error
    if done.returncode != 0:
        fed = f"; its input was:\n{text}" if text else ""
        raise NetemError(
            f"`{shlex.join(argv)}` failed with exit status {done.returncode}: {done.stderr.strip()}{fed}"
        )
    return done.stdout


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, an identity that pid reuse
    cannot fake."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    return int(text[text.rfind(")") + 2 :].split()[19])


def _owner_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{_NAME_PREFIX}-{pid}-{_start_time(pid)}"


def _owner_alive(pid: int, start: int) -> bool:
    return pid_alive(pid) and _start_time(pid) == start


def owned_namespaces() -> list[str]:
    """Every namespace this module made that still exists, whoever owns it."""
    try:
        names = os.listdir(_NETNS_DIRECTORY)
    except OSError:
        return []
    return sorted(name for name in names if _OWNED_NAME.match(name))


def relay_processes() -> list[int]:
    """Pids of every running relay program."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                program = handle.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if os.path.basename(program) == RELAY_FILE.encode() and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _namespace_pids(names: Sequence[str]) -> list[int]:
    """Processes whose network namespace is one of ``names`` (what `ip netns pids` reports)."""
    bound = set()
    for name in names:
        with contextlib.suppress(OSError):
            found = os.stat(os.path.join(_NETNS_DIRECTORY, name))
            bound.add((found.st_dev, found.st_ino))
    if not bound:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            inside = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # gone, or a zombie (which has no namespaces left)
        if (inside.st_dev, inside.st_ino) in bound:
            pids.append(int(entry))
    return pids


def _kill_inside(names: Sequence[str], timeout: float = 10.0) -> None:
    """SIGKILLs every process in the namespaces, including those that forked after the first sweep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _namespace_pids(names)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _delete_namespaces(names: Sequence[str]) -> None:
    present = [name for name in names if os.path.exists(os.path.join(_NETNS_DIRECTORY, name))]
    if present:
        with contextlib.suppress(NetemError):
            _run(["ip", "-force", "-batch", "-"], stdin=[f"netns del {name}" for name in present])


def _relay_owners(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of the owners named in a relay's namespace arguments."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            arguments = handle.read().decode("utf-8", "replace")
    except OSError:
        return set()
    return {(int(found[1]), int(found[2])) for found in re.finditer(r"/pycomm-(\d+)-(\d+)-", arguments)}


def sweep() -> list[str]:
    """Removes what networks of dead owners left behind (an owner killed by SIGKILL cannot clean up):
    their relays, every process in their namespaces, and the namespaces. Returns the namespaces removed.
    Every new :class:`Network` runs it first."""
    stale = []
    for name in owned_namespaces():
        match = _OWNED_NAME.match(name)
        assert match is not None
        if not _owner_alive(int(match.group(1)), int(match.group(2))):
            stale.append(name)
    for pid in relay_processes():
        owners = _relay_owners(pid)
        if owners and not any(_owner_alive(*owner) for owner in owners):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _kill_inside(stale)
    _delete_namespaces(stale)
    return stale


# ----- the relay program -----


class _Relay:
    """The relay process and its control stream (one command a line, one reply a line; see
    csrc/netem/control.h). Closing its stdin stops it, so it cannot outlive this object's owner."""

    def __init__(self, namespaces: Sequence[str], addresses: Sequence[str], seed: int, offload: bool) -> None:
        argv = [relay_path(), "--device", DEVICE, "--seed", str(seed), "--offload", ("off", "on")[offload]]
        for name, address in zip(namespaces, addresses):
            argv += ["--peer", f"{os.path.join(_NETNS_DIRECTORY, name)}={address}"]
        # Its own session: a Ctrl-C in the terminal reaches the owner, which then stops the relay in order.
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._pending = b""
        self._lock = threading.RLock()
        self._unanswered: str | None = None  # a command whose answer did not come in time
        try:
            ready = self._read_line(_RELAY_REPLY_TIMEOUT)
        except BaseException:
            self.close()
            raise
        if ready != "ready":
            self.close()
            raise NetemError(f"the relay said {ready!r} instead of 'ready'")

    @property
    def pid(self) -> int:
        return self._process.pid

    def command(self, line: str) -> str:
        with self._lock:
            assert self._process.stdin is not None
            # Its late answer would be read as the next command's: the relay cannot be trusted again.
            if self._unanswered is not None:
                raise NetemError(f"the relay did not answer {self._unanswered!r} in time: not used again")
            try:
                self._process.stdin.write(line.encode() + b"\n")
                self._process.stdin.flush()
            except OSError as error:
                raise NetemError(f"the relay is gone ({error}){self._exit_report()}") from error
            try:
                reply = self._read_line(_RELAY_REPLY_TIMEOUT)
            except NetemError:
                self._unanswered = line
                raise
        if reply.startswith("error "):
            raise NetemError(f"the relay refused {line!r}: {reply[len('error ') :]}")
        return reply

    def _read_line(self, timeout: float) -> str:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise NetemError(f"the relay did not answer within {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise NetemError(f"the relay stopped{self._exit_report()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def _exit_report(self) -> str:
        try:
            status = self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return ""
        assert self._process.stderr is not None
        message = self._process.stderr.read().decode("utf-8", "replace").strip()
        return f" (exit status {status}): {message}" if message else f" (exit status {status})"

    def close(self) -> None:
        # After a command of another thread has its answer: its pipe's descriptor is not closed (and
        # perhaps reused) under it. Reentrant: a signal handler of the commanding thread gets here.
        with self._lock:
            process = self._process
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


# ----- traffic control -----


def _class_id(destination: int) -> str:
    return f"1:{destination + 0x10:x}"  # tc reads class and handle numbers as hexadecimal


def _shaper_handle(destination: int) -> str:
    return f"{destination + 0x100:x}:"


def _netem_handle(destination: int) -> str:
    return f"{destination + 0x200:x}:"


def _address(peer: int) -> str:
    return f"{SUBNET}.{peer + 1}"


def _root_commands(source: int, peers: int, backend: str) -> list[str]:
    """An htb root on the sender's device with one class a destination, chosen by destination address.
    Packets of no link (ARP on the bridge) go straight through. Rates count IP packets on both
    backends: on a veth the size table takes the Ethernet header off again."""
    size_table = " stab overhead -14" if backend == "netem" else ""
    commands = [f"qdisc add dev {DEVICE} root handle 1:{size_table} htb"]
    for destination in range(peers):
        if destination == source:
            continue
        class_id = _class_id(destination)
        commands += [
            f"class add dev {DEVICE} parent 1: classid {class_id} htb rate {_CLASS_RATE} "
            f"quantum {_CLASS_QUANTUM}",
            f"filter add dev {DEVICE} parent 1: protocol ip prio 1 u32 "
            f"match ip dst {_address(destination)}/32 flowid {class_id}",
        ]
    return commands


def _queue_seconds(link: LinkSettings) -> float:
    return max(link.rtt, _MIN_QUEUE_SECONDS)


def _leaf_kinds(link: LinkSettings, backend: str) -> tuple[str, ...]:
    kinds = ("tbf",) if link.rate is not None else ()
    if backend == "netem" and (link.rtt > 0 or link.loss > 0):
        kinds += ("netem",)
    return kinds or ("pfifo",)


def _leaf_commands(
    destination: int, link: LinkSettings, before: LinkSettings | None, backend: str, mtu: int, offload: bool
) -> list[str]:
    """The qdiscs under one link's class. The shaper's queue is a bandwidth-delay product (at least
    20 ms), like a router buffer; its burst lets half a millisecond of traffic through at once, or,
    with offload, up to 2 ms (at most 96 KiB): room for a TCP super-packet, which tbf would
    otherwise cut into packets before the relay sees it."""
    class_id, kinds = _class_id(destination), _leaf_kinds(link, backend)
    commands = []
    if before is not None and _leaf_kinds(before, backend) != kinds:
        commands.append(f"qdisc del dev {DEVICE} parent {class_id}")
    rate = link.rate if link.rate is not None else _UNLIMITED_RATE_FOR_SIZING
    queue_bytes = max(math.ceil(rate / 8 * _queue_seconds(link)), 32 * mtu)
    queue_packets = max(math.ceil(queue_bytes / mtu), 1000)
    parent = class_id
    if kinds == ("pfifo",):
        commands.append(
            f"qdisc replace dev {DEVICE} parent {class_id} handle {_shaper_handle(destination)} "
            f"pfifo limit {queue_packets}"
        )
    if "tbf" in kinds:
        burst = max(4 * mtu, math.ceil(rate / 8 * 0.0005))
        if offload:
            burst = max(burst, min(_OFFLOAD_BURST_BYTES, math.ceil(rate / 8 * 0.002)))
        commands.append(
            f"qdisc replace dev {DEVICE} parent {class_id} handle {_shaper_handle(destination)} "
            f"tbf rate {round(rate)}bit burst {burst} limit {queue_bytes}"
        )
        parent = f"{_shaper_handle(destination)}1"
    if "netem" in kinds:
        # Changing a tbf gives it a fresh child queue, so its netem child is (re)placed every time.
        delay_us = round(link.delay * 1e6)
        loss = f" loss {link.loss * 100:.9g}%" if link.loss > 0 else ""
        in_flight = math.ceil(rate / 8 * (link.delay + _MIN_QUEUE_SECONDS) / mtu) * 2
        commands.append(
            f"qdisc replace dev {DEVICE} parent {parent} handle {_netem_handle(destination)} "
            f"netem delay {delay_us}us{loss} limit {max(in_flight, 1000)}"
        )
    return commands


def _relay_queue_bytes(link: LinkSettings) -> int:
    """The relay's delay line for one link: twice what the link can have in flight, so that only a
    link with no rate limit (which the relay must bound somehow) ever fills it."""
    rate = link.rate if link.rate is not None else _UNLIMITED_RATE_FOR_SIZING
    wanted = math.ceil(2 * rate / 8 * (link.delay + _MIN_QUEUE_SECONDS))
    return min(max(wanted, _MIN_RELAY_QUEUE_BYTES), _MAX_RELAY_QUEUE_BYTES)


# ----- the network -----

_KEEP: Any = object()
_serials = itertools.count()
_open_networks: set[Network] = set()
_registry_lock = threading.RLock()
_installed_handlers: dict[int, Any] = {}


class Network:
    """``peers`` network namespaces joined by emulated links (see the module's description).

    ``rtt``, ``rate`` and ``loss`` set every link (``set_link`` changes one); numbers are SI units
    (seconds, bits per second, a fraction), strings may carry units (``"50ms"``, ``"1gbit"``,
    ``"0.01%"``). ``seed`` fixes the relay's loss draws. ``mtu`` is that of every ``wan0``.
    ``offload`` (relay backend): TCP crosses the relay in super-packets of up to 64 KiB, which the
    relay still delays and drops packet by packet (see the module's description); False moves
    one packet per read and write, as a real link would carry them, at many times the CPU cost.
    """

    def __init__(
        self,
        peers: int,
        rtt: Duration = 0.0,
        rate: Rate = None,
        loss: Loss = 0.0,
        *,
        seed: int = 0,
        mtu: int = 1500,
        backend: str = "auto",
        offload: bool = True,
    ) -> None:
        if isinstance(peers, bool) or not isinstance(peers, int) or not 2 <= peers <= MAX_PEERS:
            raise InvalidArgumentError(f"peers must be an integer from 2 to {MAX_PEERS}, got {peers!r}")
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
            raise InvalidArgumentError(f"mtu must be an integer from 576 to 65535, got {mtu!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if not isinstance(offload, bool):
            raise InvalidArgumentError(f"offload must be True or False, got {offload!r}")
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        default = LinkSettings(parse_duration(rtt, "rtt"), parse_rate(rate, "rate"), parse_loss(loss, "loss"))
        self.backend = _choose_backend(backend)
        self.peers = peers
        self.mtu = mtu
        self.offload = offload and self.backend == "relay"
        self._links = {(i, j): default for i in range(peers) for j in range(peers) if i != j}
        self._lock = threading.RLock()
        self._children: list[subprocess.Popen[Any]] = []
        self._relay: _Relay | None = None
        self._closed = False
        self._owner = os.getpid()
        tag = f"{_owner_tag()}-{next(_serials)}"
        self._names = [f"{tag}-{peer}" for peer in range(peers)]
        self._hub = f"{tag}-hub" if self.backend == "netem" else None
        sweep()
        _register(self)  # before anything exists, so that every exit path removes what was made
        try:
            self._build(seed)
        except BaseException:
            self.close()
            raise

    # --- building ---

    def _all_names(self) -> list[str]:
        return self._names + ([self._hub] if self._hub else [])

    def _build(self, seed: int) -> None:
        _run(["ip", "-batch", "-"], stdin=[f"netns add {name}" for name in self._all_names()])
        if self.backend == "relay":
            self._relay = _Relay(
                self._names, [self.address(peer) for peer in range(self.peers)], seed, self.offload
            )
        else:
            self._build_bridge()
        for peer, name in enumerate(self._names):
            device = f"link set {DEVICE} mtu {self.mtu} txqueuelen {_DEVICE_QUEUE_PACKETS}"
            if self.backend == "netem":
                device += " gso_max_segs 1"  # one packet per skb: loss and rate act on packets, not bursts
            commands = [
                "link set lo up",
                # No IPv6 link-local address: nothing but the programs' traffic crosses the links.
                f"link set {DEVICE} addrgenmode none",
                f"addr add {self.address(peer)}/24 dev {DEVICE}",
                f"{device} up",
            ]
            _run(["ip", "-n", name, "-batch", "-"], stdin=commands)
            shaping = _root_commands(peer, self.peers, self.backend)
            for destination in range(self.peers):
                if destination != peer:
                    link = self._links[peer, destination]
                    shaping += _leaf_commands(destination, link, None, self.backend, self.mtu, self.offload)
            _run(["tc", "-n", name, "-batch", "-"], stdin=shaping)
        if self._relay is not None:
            for (source, destination), link in self._links.items():
                self._configure_relay(source, destination, link)

    def _build_bridge(self) -> None:
        assert self._hub is not None
        _run(
            ["ip", "-batch", "-"],
            stdin=[
                f"link add port{peer} netns {self._hub} mtu {self.mtu} type veth "
                f"peer name {DEVICE} netns {name}"
                for peer, name in enumerate(self._names)
            ],
        )
        hub = ["link add hub type bridge", f"link set hub mtu {self.mtu} up"]
        for peer in range(self.peers):
            hub += [f"link set port{peer} master hub", f"link set port{peer} up"]
        _run(["ip", "-n", self._hub, "-batch", "-"], stdin=hub)

    def _configure_relay(self, source: int, destination: int, link: LinkSettings) -> None:
        assert self._relay is not None
        delay_ns = round(link.delay * 1e9)
        self._relay.command(
            f"link {source} {destination} {delay_ns} {link.loss!r} {_relay_queue_bytes(link)}"
        )

    # --- use ---

    def address(self, peer: int) -> str:
        """Peer ``peer``'s IPv4 address on its ``wan0`` (the same in every network: each peer has its
        own namespace)."""
        self._check_peer(peer, "peer")
        return _address(peer)

    def namespace(self, peer: int) -> str:
        """The name of peer ``peer``'s namespace, for ``ip netns exec NAME ...`` or ``ip -n NAME ...``."""
        self._check_peer(peer, "peer")
        return self._names[peer]

    def link(self, source: int, destination: int) -> LinkSettings:
        """The settings of the direction ``source -> destination``."""
        self._check_link(source, destination)
        return self._links[source, destination]

    def set_link(
        self,
        source: int,
        destination: int,
        *,
        rtt: Duration = _KEEP,
        rate: Rate = _KEEP,
        loss: Loss = _KEEP,
        both: bool = False,
    ) -> None:
        """Changes the direction ``source -> destination`` (and the reverse with ``both=True``); what is
        left out stays. Its one-way delay becomes ``rtt / 2``; ``rate=None`` lifts the limit. Packets
        already on the link keep their delay; the rate limiter's queue is emptied."""
        self._check_link(source, destination)
        changes: dict[str, Any] = {}
        if rtt is not _KEEP:
            changes["rtt"] = parse_duration(rtt, "rtt")
        if rate is not _KEEP:
            changes["rate"] = parse_rate(rate, "rate")
        if loss is not _KEEP:
            changes["loss"] = parse_loss(loss, "loss")
        directions = [(source, destination), (destination, source)] if both else [(source, destination)]
        with self._lock:
            self._check_open()
            for sender, receiver in directions:
                before = self._links[sender, receiver]
                after = dataclasses.replace(before, **changes)
                commands = _leaf_commands(receiver, after, before, self.backend, self.mtu, self.offload)
                _run(["tc", "-n", self._names[sender], "-batch", "-"], stdin=commands)
                if self._relay is not None:
                    self._configure_relay(sender, receiver, after)
                self._links[sender, receiver] = after

    def spawn(self, peer: int, args: Sequence[str], **popen_options: Any) -> subprocess.Popen[Any]:
        """Starts ``args`` inside peer ``peer``'s namespace (``ip netns exec``, which also gives it the
        namespace's view of /sys) and returns its :class:`subprocess.Popen`; ``popen_options`` go to
        Popen. It is killed, with anything it started there, when the network closes."""
        self._check_peer(peer, "peer")
        if isinstance(args, (str, bytes)) or popen_options.get("shell"):
            raise InvalidArgumentError("spawn wants the command as a list of arguments, without shell=True")
        with self._lock:
            self._check_open()
            process = subprocess.Popen(["ip", "netns", "exec", self._names[peer], *args], **popen_options)
            self._children.append(process)
        return process

    def call_in(self, peer: int, function: Callable[[], _T]) -> _T:
        """Runs ``function`` on a thread that has entered peer ``peer``'s network namespace and
        returns what it returns (or raises what it raised). Sockets it creates live in that
        namespace, and so do the threads it starts: how an in-process server (a pycomm.ft Master)
        joins the emulated network."""
        self._check_peer(peer, "peer")
        path = os.path.join(_NETNS_DIRECTORY, self._names[peer])
        outcome: list[Any] = []

        def enter_and_call() -> None:
            try:
                _enter_network_namespace(path)
                outcome.append((True, function()))
            except BaseException as error:  # handed to the caller below
                outcome.append((False, error))

        thread = threading.Thread(target=enter_and_call, name=f"netem-peer-{peer}", daemon=True)
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def stats(self) -> dict[str, Any]:
        """Packets forwarded and dropped: totals and, under ``"links"``, per ``(source, destination)``.

        ``dropped_loss`` counts the emulated loss (on the netem backend without a rate, also netem's
        queue overflowing); ``dropped_queue_full`` the link's queues overflowing, like a router's
        buffer: the rate limiter's, and the relay's delay line; ``dropped_other`` packets lost
        elsewhere (a device ring the relay did not empty in time, packets to no peer);
        ``relay_reads`` (relay backend) the frames the relay read, fewer than the packets it received
        when offload groups them; ``relay_unaccounted`` the packets the relay read that it neither
        forwarded, dropped (for loss, a full queue, a refused write, no route) nor still holds in a
        delay line: 0 unless its books are wrong. Each call runs ``tc`` and ``ip`` once per peer.
        """
        with self._lock:
            self._check_open()
            links = {key: dict.fromkeys(_LINK_COUNTERS, 0) for key in self._links}
            dropped_other = 0
            extra = {}
            for source, name in enumerate(self._names):
                dropped_other += self._add_qdisc_counters(source, name, links)
            if self._relay is not None:
                relay = json.loads(self._relay.command("stats"))
                dropped_other += relay["unroutable"]
                extra["relay_reads"] = relay["received_frames"]
                unaccounted = relay["received_packets"] - relay["unroutable"]
                for entry in relay["links"]:
                    counters = links[entry["source"], entry["destination"]]
                    for key in ("forwarded_packets", "forwarded_bytes", "dropped_loss"):
                        counters[key] = entry[key]
                    counters["dropped_queue_full"] += entry["dropped_queue_full"]
                    dropped_other += entry["dropped_write"]
                    unaccounted -= sum(entry[key] for key in _RELAY_FATES)
                extra["relay_unaccounted"] = unaccounted
        totals: dict[str, Any] = {
            key: sum(counters[key] for counters in links.values()) for key in _LINK_COUNTERS
        }
        return {"backend": self.backend, **totals, "dropped_other": dropped_other, **extra, "links": links}

    def _add_qdisc_counters(
        self, source: int, name: str, links: dict[tuple[int, int], dict[str, int]]
    ) -> int:
        """Adds what the sender's qdiscs counted to its links; returns the drops of its device's ring.

        The shaper (tbf, or pfifo without a rate) drops what overflows its queue. On the netem backend,
        where no relay counts, the link's outermost qdisc counts what was forwarded, and netem counts
        its losses plus its own queue overflowing, which its tbf parent counts as well.
        """
        shown = json.loads(_run(["tc", "-n", name, "-s", "-j", "qdisc", "show", "dev", DEVICE]) or "[]")
        by_handle = {qdisc.get("handle"): qdisc for qdisc in shown}
        for destination in range(self.peers):
            if destination == source:
                continue
            counters = links[source, destination]
            shaper = by_handle.get(_shaper_handle(destination))
            emulator = by_handle.get(_netem_handle(destination))
            overflowed = shaper.get("drops", 0) if shaper else 0
            counters["dropped_queue_full"] += overflowed
            if self.backend == "netem":
                outermost = shaper or emulator or {}
                counters["forwarded_packets"] = outermost.get("packets", 0)
                counters["forwarded_bytes"] = outermost.get("bytes", 0)
                if emulator:
                    counters["dropped_loss"] = emulator.get("drops", 0) - (overflowed if shaper else 0)
        device = json.loads(_run(["ip", "-n", name, "-s", "-j", "link", "show", "dev", DEVICE]))
        return int(device[0].get("stats64", {}).get("tx", {}).get("dropped", 0))

    # --- lifetime ---

    def close(self) -> None:
        """Kills every process in the namespaces, stops the relay and deletes the namespaces. Safe to
        call twice, or on a half-built network; if it is interrupted, interpreter exit finishes it."""
        with self._lock:
            self._closed = True
        self._tear_down()
        _unregister(self)

    def _tear_down(self) -> None:
        # Every step may run again after an interrupted first try: each does nothing the second time.
        if os.getpid() != self._owner:
            return
        # Our own children first, by pid (not yet reaped, so not reused): one may still be `ip netns
        # exec` before it entered its namespace, where the namespace sweep below would miss it.
        for process in self._children:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        _kill_inside(self._all_names())
        for process in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)
        if self._relay is not None:
            self._relay.close()
        _delete_namespaces(self._all_names())

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        first = self._names[0]
        return f"<netem.Network {state}: {self.peers} peers, backend {self.backend}, namespaces {first}...>"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError("this network is closed")

    def _check_peer(self, peer: int, what: str) -> None:
        if isinstance(peer, bool) or not isinstance(peer, int) or not 0 <= peer < self.peers:
            raise InvalidArgumentError(
                f"{what} must be a peer index from 0 to {self.peers - 1}, got {peer!r}"
            )

    def _check_link(self, source: int, destination: int) -> None:
        self._check_peer(source, "source")
        self._check_peer(destination, "destination")
        if source == destination:
            raise InvalidArgumentError(f"a link joins two different peers, got {source} -> {destination}")


_LINK_COUNTERS = ("forwarded_packets", "forwarded_bytes", "dropped_loss", "dropped_queue_full")
# What becomes of a packet the relay read for a link (its per-link counters, in packets).
_RELAY_FATES = ("forwarded_packets", "dropped_loss", "dropped_queue_full", "dropped_write", "queued_packets")


# ----- every exit path closes the open networks -----


def _enter_network_namespace(path: str) -> None:
    """Moves the calling thread into the network namespace bound at ``path`` (setns(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(descriptor, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise NetemError(f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(descriptor)


def _register(network: Network) -> None:
    with _registry_lock:
        _open_networks.add(network)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit and the sweep remain
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signum not in _installed_handlers and signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _close_all_and_die)
                _installed_handlers[signum] = _close_all_and_die


def _unregister(network: Network) -> None:
    with _registry_lock:
        _open_networks.discard(network)
        if _open_networks or threading.current_thread() is not threading.main_thread():
            return
        for signum in list(_installed_handlers):
            if signal.getsignal(signum) is _installed_handlers.pop(signum):
                signal.signal(signum, signal.SIG_DFL)


def _close_all() -> None:
    for network in list(_open_networks):
        network.close()


def _close_all_and_die(signum: int, frame: object) -> None:
    # The process would have died at once without this handler: close the networks, then die of the
    # same signal, so the parent sees the usual exit status.
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _forget_after_fork() -> None:
    # A forked child shares nothing it must clean up: the networks belong to its parent.
    _open_networks.clear()
    _installed_handlers.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)
