"""A peer of a pycomm.ft group: membership through the master, collectives on a ring of TCP links.

The control plane (this module) talks to the master: it registers, waits for admission, beats
its heart, and installs each epoch the master announces by opening the ring links of that epoch
and handing them to a C++ ring engine (``pycomm._core.ft``), which runs every collective of the
epoch without the master.

When an operation fails (a neighbour vanished, a frame broke the protocol, the deadline passed)
or the master ends the epoch (it evicted a silent peer), this peer stops its engine and reports,
for every tag, how many operations it submitted and finished and whether it holds the result of
the unfinished one. The master decides from all reports which unfinished operations the
survivors keep (see :func:`pycomm.ft.master.decide_commits`) and starts the next epoch; each
waiting operation then either returns its result or raises :class:`Aborted` with the caller's
buffer untouched (the engine never writes it before the result is kept).

Threads: a control reader and a heartbeat thread per communicator, plus the data listener's;
:meth:`Communicator.close` stops and joins them all.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any, Callable

import numpy as np

from pycomm import kernels
from pycomm._arrays import FLOAT_DTYPES, as_array
from pycomm._native import core
from pycomm.errors import (
    Aborted,
    AuthenticationError,
    CommError,
    CommTimeout,
    Evicted,
    InvalidArgumentError,
    ProtocolError,
)
from pycomm.ft._links import (
    MAX_PROBE_BYTES,
    MAX_STRIPES,
    DataListener,
    LinkEstimate,
    measure_bandwidth,
    open_ring_pool,
)
from pycomm.ft._protocol import (
    PROTOCOL_VERSION,
    Channel,
    Message,
    field,
    new_nonce,
    parse_address,
    secret_bytes,
    sign,
    verify,
)
from pycomm.ft.ring_order import best_ring, score

_ft = core.ft

# Communicators still open at interpreter exit are closed first: their threads may be inside the
# native engine, and Python ends daemon threads abruptly during finalization.
_open_communicators: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_communicators() -> None:
    for comm in list(_open_communicators):
        comm.close()


REDUCE_OPS = ("sum", "avg", "prod", "min", "max")
# Tags at or above this value are reserved for pycomm's own operations (pending_peers, shared state).
INTERNAL_TAG_BASE = 1 << 63
TAG_PENDING = INTERNAL_TAG_BASE + 1
TAG_PROBE = INTERNAL_TAG_BASE + 6  # pycomm.ft.shared_state uses + 2 ... + 5
TAG_BANDWIDTH = INTERNAL_TAG_BASE + 7
LINK_TIMEOUT = 5.0
# What an all-reduce may put on the wire instead of the values (see csrc/ft/quantized_ring.cc).
WIRE_QUANTIZATIONS = ("int8", "uint8", "fp16", "bf16")
# The largest pool connections=None picks, and the streams it first probes a link with.
AUTO_CONNECTIONS_MAX = 16
PROBE_STREAMS = 8
# How long an abandoned operation waits for the master to start the next epoch.
RECOVERY_WAIT = 30.0


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """What an in-place collective returns. ``seconds`` runs from the call to its return;
    ``held_seconds`` until this peer held the whole result, ``committed_seconds`` until it knew
    every peer held it (the ring barrier that ends every operation; None for a result kept after a
    failure). What follows ``committed_seconds`` is mostly the copy of the result into the caller's
    buffer (a shared-memory all-reduce wrote it there as it went)."""

    epoch: int
    world_size: int
    rank: int
    tag: int
    seconds: float
    held_seconds: float | None = None
    committed_seconds: float | None = None


def _like_input(template: Any, array: np.ndarray, dtype: str) -> Any:
    """`array` as the caller's kind of array: a torch tensor when the input was one."""
    if type(template).__module__.split(".")[0] != "torch":
        return array
    import torch

    tensor = torch.from_numpy(array)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor


def node_identity() -> str:
    """Which machine and shared-memory namespace this process runs in: peers with the same value
    can reach each other's /dev/shm (the boot id tells machines apart, /dev/shm's device and inode
    containers that do not share it)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        shm = os.stat("/dev/shm")
    except OSError:
        return ""  # no shared-memory path on this system
    return f"{boot}:{shm.st_dev}:{shm.st_ino}"


def _segment_name(entry: dict, epoch: int) -> str:
    """A member's shared-memory segment in `epoch`, named after its process id so that segments of
    processes that died can be found (see remove_stale_segments)."""
    return f"/pycomm-{entry.get('pid', 0)}-{entry['id']}-{epoch}"


def remove_stale_segments() -> int:
    """Removes /dev/shm segments of pycomm processes that no longer run (killed peers whose group
    ended with them); returns how many. Segments of live processes are left alone."""
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir("/dev/shm"):
            parts = name.split("-")
            if parts[0] != "pycomm" or len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) == 0:
                continue
            try:
                os.kill(int(parts[1]), 0)
                continue  # alive (or a process of another user): not ours to remove
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", name))
                removed += 1
    return removed


def _new_result(template: Any, array: np.ndarray, dtype: str, shape: tuple) -> Callable[[Any], Any]:
    """What a collective with a new output array returns: the result, shaped, as the caller's kind."""

    def result(handle: Any) -> Any:
        out = np.empty(handle.result_bytes // max(array.itemsize, 1), dtype=array.dtype)
        handle.copy_result(out)
        return _like_input(template, out.reshape(shape), dtype)

    return result


def _window_per_connection() -> int:
    """Bytes one TCP connection can have in flight: half the smaller of the kernel's largest send and
    receive buffers (autotuning keeps the other half for bookkeeping), 2 MiB where unreadable."""
    limits = []
    for name in ("tcp_wmem", "tcp_rmem"):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as handle:
                limits.append(int(handle.read().split()[2]))
        except (OSError, ValueError, IndexError):
            return 2 << 20
    return max(64 << 10, min(limits) // 2)


def _positive_int(name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise InvalidArgumentError(f"{name} must be an int in [1, {limit}], got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgumentError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _user_tag(tag: Any, internal: bool = False) -> int:
    limit = 1 << 64 if internal else INTERNAL_TAG_BASE
    if not isinstance(tag, int) or isinstance(tag, bool) or not 0 <= tag < limit:
        raise InvalidArgumentError(
            f"tag must be an int in [0, 2**63) (larger tags are pycomm's own), got {tag!r}"
        )
    return tag


@dataclasses.dataclass
class RingPlan:
    """What optimize_topology() decided: the member ids in ring order, the measured (or given)
    bandwidth matrix in the old epoch's rank order (bytes/s, row = sender), the ring's bottleneck
    bandwidth, whether the ring changed (a new epoch began: a faster order, or a pool resized from
    the measurement) and the size of each link's pool."""

    order: list[str]
    bandwidth: np.ndarray
    bottleneck: float
    changed: bool
    # The pool of each link of the ring, connections[k] from order[k] to order[k + 1], as measured
    # (0: a new link this call measured nothing for; the ring sizes it as it forms, from an earlier
    # measurement of that link if there is one, else from link_bandwidth and the connect time).
    connections: list[int] = dataclasses.field(default_factory=list)


class Work:
    """A collective in flight; :meth:`wait` returns its result or raises :class:`Aborted`."""

    def __init__(
        self,
        comm: Communicator,
        handle: Any,
        epoch: int,
        description: str,
        on_result: Callable[[Any], Any],
        failure: str = "",
    ) -> None:
        self._comm = comm
        self._handle = handle
        self._epoch = epoch
        self._description = description
        self._on_result = on_result
        self._failure = failure
        self._started = time.perf_counter()
        self._outcome: tuple[bool, Any] | None = None

    @property
    def tag(self) -> int:
        return self._handle.tag if self._handle is not None else -1

    def done(self) -> bool:
        return self._outcome is not None or (self._handle is not None and self._handle.status == "completed")

    def wait(self, timeout: float | None = None) -> Any:
        if self._outcome is None:
            try:
                self._outcome = (True, self._settle(self._comm.timeout if timeout is None else timeout))
            except BaseException as error:
                self._outcome = (False, error)
                # A shared-memory all-reduce writes results into the caller's buffer as it runs:
                # one that failed puts the input back (ring operations never wrote it).
                if self._handle is not None and self._handle.status != "running":
                    self._handle.restore_input()
            finally:
                self._comm._forget(self)
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _settle(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        reason = self._failure
        if self._handle is not None:
            status = self._handle.wait(max(0.0, deadline - time.monotonic()))
            if status == "running":
                reason = f"{self._description} did not finish within {timeout:g} s"
                self._comm._report_failure(self._epoch, reason)
                status = self._handle.wait(LINK_TIMEOUT)
            if status == "completed":
                return self._keep()
            reason = self._handle.error or reason
        self._comm._report_failure(self._epoch, reason)
        # The new epoch may take the master a recovery round: wait for it even if this
        # operation's own deadline has passed.
        decision_deadline = max(deadline, time.monotonic() + RECOVERY_WAIT)
        # Also without an engine (the epoch's ring could not be built): the next epoch must exist
        # before this peer retries, or a retry loop would spin on instant failures meanwhile.
        tag, sequence = (
            (self._handle.tag, self._handle.sequence) if self._handle is not None else (None, None)
        )
        keep = self._comm._await_decision(self._epoch, tag, sequence, decision_deadline)
        if keep:
            return self._keep()
        self._comm._owes_abort = None  # this Aborted is the notice of the failure
        raise Aborted(
            f"{self._description} was abandoned in epoch {self._epoch}: {reason}; the group is now in epoch "
            f"{self._comm.epoch} with {self._comm.world_size} peer(s)"
        )

    def _keep(self) -> Any:
        return self._on_result(self._handle)


class Communicator:
    """One peer of a fault-tolerant group (see the module docstring and DESIGN.md).

    ``master``: "host:port" of the :class:`~pycomm.ft.Master`. ``secret``: the group secret, if
    the master has one. ``host``: the address this peer listens on for its neighbours.
    ``timeout``: the deadline of every operation, in seconds. ``heartbeat_interval``: how often
    the master hears from this peer. ``reconnect_timeout``: how long to keep re-registering
    after the master connection breaks before giving up (the run goes on meanwhile).
    ``segment_bytes`` (the unit that pipelines the ring) and ``spin_microseconds`` (how long the
    engine busy-polls between events before it sleeps; default 50) tune the data plane.
    ``shared_memory``: when every member runs on this machine, all-reduces go through shared
    memory (/dev/shm) instead of the ring's TCP links; False keeps them on TCP.
    ``connections``: the pool of TCP connections to the next peer that every ring operation is
    striped over. None sizes it per epoch from the link: its bandwidth times its round trip, divided
    by the window one connection can use under the kernel's socket buffer limits, at most 16. The
    bandwidth and round trip are those optimize_topology() measured to that peer; until it has,
    ``link_bandwidth`` (bytes/s; the fastest rate the link is expected to reach) and the round trip
    TCP's connect took.
    """

    def __init__(
        self,
        master: str,
        peer_group: int = 0,
        secret: str | bytes | None = None,
        connections: int | None = None,
        *,
        host: str = "127.0.0.1",
        timeout: float = 60.0,
        heartbeat_interval: float = 0.2,
        reconnect_timeout: float = 30.0,
        segment_bytes: int = 256 * 1024,
        spin_microseconds: int | None = None,
        shared_memory: bool = True,
        link_bandwidth: float = 10e9 / 8,
    ) -> None:
        if connections is not None and (
            isinstance(connections, bool)
            or not isinstance(connections, int)
            or not 1 <= connections <= MAX_STRIPES
        ):
            raise InvalidArgumentError(
                f"connections must be None (sized from the link) or an int in [1, {MAX_STRIPES}], "
                f"got {connections!r}"
            )
        if not isinstance(peer_group, int) or isinstance(peer_group, bool) or peer_group < 0:
            raise InvalidArgumentError(f"peer_group must be a non-negative int, got {peer_group!r}")
        self._connections = connections
        self.link_bandwidth = _positive("link_bandwidth", link_bandwidth)
        self.master_address = master
        self._master_host, self._master_port = parse_address(master)
        self.peer_group = peer_group
        self._secret = secret_bytes(secret)
        self._host = host
        self.timeout = _positive("timeout", timeout)
        self.heartbeat_interval = _positive("heartbeat_interval", heartbeat_interval)
        self.reconnect_timeout = _positive("reconnect_timeout", reconnect_timeout)
        # Checked here: the engine is built later, on the control thread, where a bad value could
        # only end the epoch.
        if (
            isinstance(segment_bytes, bool)
            or not isinstance(segment_bytes, int)
            or not 64 <= segment_bytes <= 1 << 26
        ):
            raise InvalidArgumentError(f"segment_bytes must be an int in [64, 2**26], got {segment_bytes!r}")
        if spin_microseconds is not None and (
            isinstance(spin_microseconds, bool)
            or not isinstance(spin_microseconds, int)
            or not 0 <= spin_microseconds <= 1_000_000
        ):
            raise InvalidArgumentError(
                f"spin_microseconds must be an int in [0, 10**6], got {spin_microseconds!r}"
            )
        self._segment_bytes = segment_bytes
        self._spin_microseconds = spin_microseconds
        self._node = node_identity() if shared_memory else ""
        self.peer_id = uuid.uuid4().hex
        self._lock = threading.Condition(threading.RLock())
        self._epoch = 0
        self._members: list[dict] = []
        self._rank = 0
        self._engine: Any = None
        self._reported_epoch: int | None = None
        self._decisions: dict[int, set] = {}
        self._pending_count = 0
        self._evicted: str | None = None
        self._closing = threading.Event()
        self._inflight: dict[int, Work] = {}
        self._channel: Channel | None = None
        self._listener: DataListener | None = None
        self._threads: list[threading.Thread] = []
        self._last_synced_revision: int | None = None
        self._newly_admitted = False
        # Set when a failure ended an epoch; cleared when this peer raises Aborted (see _submit).
        self._owes_abort: str | None = None
        self._admitted: list[str] = []  # peers admitted into the current epoch
        self._state_server: Any = None
        self._ring_connections = 0  # the pool to the next peer in this epoch
        # Pool sizes optimize_topology() chose from its measurements, by peer id.
        self._measured_pools: dict[str, int] = {}

    # -- membership ---------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def world_size(self) -> int:
        return len(self._members)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def members(self) -> list[str]:
        return [entry["id"] for entry in self._members]

    @property
    def ring_connections(self) -> int:
        """The connections this epoch's ring operations are striped over to the next peer (0 alone)."""
        return self._ring_connections

    @property
    def bytes_sent(self) -> int:
        """Bytes this epoch's ring handed to its connections to the next peer, frame headers
        included (0 at the start of each epoch; shared-memory all-reduces send none)."""
        engine = self._engine
        return 0 if engine is None else int(engine.bytes_sent)

    def connect(self, timeout: float | None = None) -> None:
        """Registers with the master and returns once this peer is a member of the group."""
        if self._channel is not None:
            raise InvalidArgumentError("connect() was already called")
        if self._node:
            remove_stale_segments()
        self._listener = DataListener(
            self._host, self.peer_id, self.peer_group, self._secret, self._serve_fetch
        )
        try:
            self._channel = self._open_control(rejoin=None)
        except BaseException:
            self._listener.close()
            raise
        _open_communicators.add(self)
        self._start(self._control_loop, "pycomm-control")
        self._start(self._heartbeat_loop, "pycomm-heartbeat")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._epoch == 0 and self._evicted is None and not self._closing.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CommTimeout(f"not admitted into group {self.peer_group} within {timeout:g} s")
                self._lock.wait(left)
            self._raise_if_unusable()
            # Members that admitted this peer are returning from update_topology() (see pending_peers).
            self._newly_admitted = any(member not in self._admitted for member in self.members)

    def pending_peers(self) -> bool:
        """True when peers wait for admission; the same answer on every member (it is agreed on
        with a one-word all-reduce), so all members call :meth:`update_topology` together.

        A peer admitted into a group that already had members answers its first call False
        without communicating, when that call comes before any other collective: the members that
        admitted it are then returning from their update_topology(), the point that call stands
        for in the usual loop ``if pending_peers(): update_topology(); sync_shared_state(...); ...``.
        (A loop that starts with another collective works too: that collective clears the rule.)
        """
        if self._newly_admitted:
            self._newly_admitted = False
            return False
        return bool(self.agree_max(1 if self._pending_count > 0 else 0, TAG_PENDING))

    def agree_max(self, value: int, tag: int) -> int:
        """The largest of every member's small non-negative `value` (an internal all-reduce)."""
        flag = np.array([value], dtype=np.uint64)
        self._submit("all_reduce", flag, "uint64", "max", 0, tag, self._copy_back(flag)).wait()
        return int(flag[0])

    def update_topology(self, timeout: float | None = None) -> None:
        """Admits the waiting peers: a collective among the members, with no operation in flight.
        Returns in the new epoch (also when a failure replaced the epoch meanwhile; the next
        operation then raises the Aborted that failure owes). Raises Aborted at once when a failure
        ended the epoch after the last operation, the pending_peers() agreement included: that
        agreement may have been aborted on other members, which are retrying their step."""
        with self._lock:
            self._raise_if_unusable()
            # A failure after the members agreed on pending_peers(): some of them may have seen
            # that agreement aborted and gone back to the start of their loops; this peer goes too.
            self._raise_owed_abort()
            if self._inflight:
                raise InvalidArgumentError(
                    f"update_topology() with {len(self._inflight)} operation(s) in flight; "
                    "wait for them first"
                )
            epoch = self._epoch
        self._send_control(Message.UPDATE_TOPOLOGY, {"epoch": epoch})
        self._wait_for_epoch_after(epoch, self.timeout if timeout is None else timeout)

    def _wait_for_epoch_after(self, epoch: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._epoch <= epoch and self._evicted is None and not self._closing.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeout(f"the master started no epoch after {epoch} within {timeout:g} s")
                self._lock.wait(left)
            self._raise_if_unusable()

    def close(self) -> None:
        """Leaves the group (the others see a graceful departure) and releases every resource."""
        if self._closing.is_set():
            return
        channel = self._channel
        if channel is not None and self._evicted is None:
            with contextlib.suppress(CommError):
                channel.send(Message.LEAVE, {}, timeout=1.0)
        self._closing.set()
        _open_communicators.discard(self)
        with self._lock:
            engine, self._engine = self._engine, None
            self._lock.notify_all()
        if engine is not None:
            engine.abort("the communicator was closed")
        if channel is not None:
            channel.close()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- collectives --------------------------------------------------------------------------

    def all_reduce(
        self,
        x: Any,
        op: str = "sum",
        quantization: str | None = None,
        tag: int = 0,
        *,
        dtype: str | None = None,
    ) -> OpInfo:
        """Reduces x over all members in place; every member ends with identical bytes.

        ``dtype`` names the element type where numpy cannot (``"bfloat16"`` for uint16 bit
        patterns); torch tensors and ml_dtypes arrays say it themselves.

        ``quantization`` (sum or avg of floats): what travels on the wire, "int8" / "uint8"
        (block-scaled, 256 elements a float32 scale) or "fp16" / "bf16". Each value is quantized
        once: every peer's input once, and each chunk's float32 sum once by the peer that owns it,
        whose bytes every peer then decodes. An element of the sum errs by at most half a
        quantization step of each other peer's input block plus half a step of the sum's block (int8:
        step = absmax / 127; uint8: (max - min) / 255); the error does not grow from hop to hop.
        "fp16" holds magnitudes up to 65504: a larger input or sum becomes +-inf on every peer, as an
        fp16 value does (bf16 and the block-scaled formats have float32's range).
        Quantized all-reduces always run on the TCP ring, also among co-located peers.
        """
        return self.all_reduce_async(x, op=op, quantization=quantization, tag=tag, dtype=dtype).wait()

    def all_reduce_async(
        self,
        x: Any,
        op: str = "sum",
        quantization: str | None = None,
        tag: int = 0,
        *,
        dtype: str | None = None,
    ) -> Work:
        if op not in REDUCE_OPS:
            raise InvalidArgumentError(f"unknown reduce op {op!r}; one of {', '.join(REDUCE_OPS)}")
        array, dtype = self._in_place_array(x, dtype)
        if quantization is not None:
            if quantization not in WIRE_QUANTIZATIONS:
                raise InvalidArgumentError(
                    f"quantization={quantization!r}; one of {', '.join(WIRE_QUANTIZATIONS)} or None"
                )
            if op not in ("sum", "avg") or dtype not in FLOAT_DTYPES:
                raise InvalidArgumentError(
                    f"quantization={quantization!r} takes op sum or avg of a float dtype, "
                    f"got op {op!r} on {dtype}"
                )
        return self._submit(
            "all_reduce", array, dtype, op, 0, _user_tag(tag), self._copy_back(array), quantization or "none"
        )

    def broadcast(self, x: Any, root: int = 0, tag: int = 0, *, dtype: str | None = None) -> OpInfo:
        """Copies root's x into every member's x."""
        return self.broadcast_async(x, root=root, tag=tag, dtype=dtype).wait()

    def broadcast_async(self, x: Any, root: int = 0, tag: int = 0, *, dtype: str | None = None) -> Work:
        array, dtype = self._in_place_array(x, dtype)
        if not isinstance(root, int) or isinstance(root, bool) or root < 0:
            raise InvalidArgumentError(f"root must be a rank, got {root!r}")
        return self._submit("broadcast", array, dtype, "sum", root, _user_tag(tag), self._copy_back(array))

    def all_gather(self, x: Any, tag: int = 0, *, dtype: str | None = None) -> Any:
        """Every member's x, stacked: shape (world_size, *x.shape), in rank order."""
        return self.all_gather_async(x, tag=tag, dtype=dtype).wait()

    def all_gather_async(
        self, x: Any, tag: int = 0, *, dtype: str | None = None, internal: bool = False
    ) -> Work:
        array, dtype = as_array(x, dtype=dtype)
        array = np.ascontiguousarray(array)

        result = _new_result(x, array, dtype, (-1, *array.shape))
        return self._submit("all_gather", array, dtype, "sum", 0, _user_tag(tag, internal), result)

    def reduce_scatter(self, x: Any, op: str = "sum", tag: int = 0, *, dtype: str | None = None) -> Any:
        """Reduces x over all members and returns this member's chunk of the flattened result:
        chunk r of n holds elements [r * k + min(r, m), ...) where k, m = divmod(x.size, n)."""
        return self.reduce_scatter_async(x, op=op, tag=tag, dtype=dtype).wait()

    def reduce_scatter_async(
        self, x: Any, op: str = "sum", tag: int = 0, *, dtype: str | None = None
    ) -> Work:
        if op not in REDUCE_OPS:
            raise InvalidArgumentError(f"unknown reduce op {op!r}; one of {', '.join(REDUCE_OPS)}")
        array, dtype = as_array(x, dtype=dtype)
        array = np.ascontiguousarray(array)

        result = _new_result(x, array, dtype, (-1,))
        return self._submit("reduce_scatter", array, dtype, op, 0, _user_tag(tag), result)

    def sync_shared_state(self, state: Any, strategy: str = "enforce_popular") -> Any:
        """Makes every member's shared state identical; see :mod:`pycomm.ft.shared_state`."""
        from pycomm.ft.shared_state import synchronize

        return synchronize(self, state, strategy)

    def optimize_topology(
        self,
        bandwidths: Any = None,
        *,
        probe_bytes: int = 256 << 20,
        min_gain: float = 0.1,
        timeout: float | None = None,
    ) -> RingPlan:
        """Measures the bandwidth from every member to every other, picks the fastest ring order
        (:mod:`pycomm.ft.ring_order`: the largest bottleneck, then the least time per byte) and, if
        it differs from the current one, moves the group into a new epoch whose ring has that
        order. A collective among the members with nothing in flight, like update_topology().

        Each member probes every other over ``connections`` streams (with ``connections=None``, 8,
        and 16 when 8 may have been too few), one peer at a time, all members at once in a pattern
        where no two probes share a sender or a receiver. A probe stops once its rate has settled
        (about a second over a long-fat link; see :func:`pycomm.ft._links.measure_bandwidth`), and
        sends at most ``probe_bytes`` (a link probed again over 16 streams gets a second probe).
        ``bandwidths`` (a members x members matrix in rank order, the same on every member) skips
        the measurement. The ring changes only when the best order is faster than the current one
        by more than ``min_gain`` (0.1: a 10% larger bottleneck, or as large a one and 10% less time
        per byte), so measurement noise does not reorder it; members that pass different values
        all use the largest.

        With ``connections=None``, each link's pool is then sized from what was measured (its
        bandwidth times its round trip over one connection's window); when a pool of the chosen
        ring is smaller than that, or at least twice as large, the group moves into a new epoch
        even if the order stays.
        """
        with self._lock:
            self._raise_if_unusable()
            if self._inflight:
                raise InvalidArgumentError(
                    f"optimize_topology() with {len(self._inflight)} operation(s) in flight; "
                    "wait for them first"
                )
            epoch, members, rank = self._epoch, list(self._members), self._rank
        world = len(members)
        if not min_gain >= 0:
            raise InvalidArgumentError(f"min_gain must be >= 0, got {min_gain!r}")
        # Each member's row: its bandwidth to every member, the pool it would open to each, the
        # pool it has now and its min_gain; gathered, every member decides alike (with the largest
        # min_gain: members that passed different ones must still agree).
        row = np.zeros(2 * world + 2, np.float64)
        row[world : 2 * world] = self._connections or 0
        row[2 * world] = self._ring_connections
        row[2 * world + 1] = min_gain
        if bandwidths is None:
            probe_bytes = _positive_int("probe_bytes", probe_bytes, MAX_PROBE_BYTES)
            for shift in range(1, world):
                self.agree_max(0, TAG_PROBE)  # the previous round has ended everywhere
                target = members[(rank + shift) % world]
                try:
                    estimate = self._probe(target, epoch, probe_bytes)
                except (CommError, OSError) as error:
                    self._abandon(epoch, f"probing the link to {target['id'][:8]} failed: {error}", error)
                column = (rank + shift) % world
                row[column] = estimate.bandwidth
                if self._connections is None:
                    row[world + column] = self._pool_size(estimate.round_trip, estimate.bandwidth)
            rows = self.all_gather_async(row, tag=TAG_BANDWIDTH, internal=True).wait().reshape(world, -1)
            matrix = np.ascontiguousarray(rows[:, :world])
        else:
            matrix = np.asarray(bandwidths, np.float64)
            if matrix.shape != (world, world):
                raise InvalidArgumentError(
                    f"bandwidths must be a {world} x {world} matrix, got {matrix.shape}"
                )
            digests = self.all_gather_async(
                np.array([kernels.hash64(matrix)], np.uint64), tag=TAG_BANDWIDTH, internal=True
            ).wait()
            if len(set(digests.reshape(-1).tolist())) != 1:
                raise InvalidArgumentError("the members passed different bandwidth matrices")
            rows = self.all_gather_async(row, tag=TAG_BANDWIDTH, internal=True).wait().reshape(world, -1)
            rows[:, world : 2 * world] = 0  # nothing measured: every pool stays as it is
        min_gain = float(rows[:, 2 * world + 1].max())
        order = best_ring(matrix.tolist())
        (best_bottleneck, best_time), (bottleneck, time_per_byte) = (
            score(order, matrix.tolist()),
            score(list(range(world)), matrix.tolist()),
        )
        faster = best_bottleneck > bottleneck * (1 + min_gain) or (
            best_bottleneck >= bottleneck and best_time < time_per_byte * (1 - min_gain)
        )
        if not faster:
            order, best_bottleneck = list(range(world)), bottleneck
        # A link's pool: what its sender measured it needs, or the one it has (no measurement).
        current = [int(rows[index, 2 * world]) for index in range(world)]
        pools = [
            int(rows[a, world + b]) or (current[a] if b == (a + 1) % world else 0)
            for a, b in zip(order, order[1:] + order[:1])
        ]
        # A pool too small caps its link; one over twice the need only costs the hosts' CPU, and
        # one a connection or so too large is left alone (a measurement near a boundary).
        # (A group of one has no ring to resize.)
        resized = world > 1 and any(
            pool and (pool > current[sender] or 2 * pool <= current[sender])
            for pool, sender in zip(pools, order)
        )
        if not (faster or resized):
            pools = [current[sender] for sender in order]
        plan = RingPlan([members[index]["id"] for index in order], matrix, best_bottleneck, False, pools)
        with self._lock:  # what later epochs size their pools from (churn, the next call)
            if self._connections is None:
                self._measured_pools.update(
                    (members[index]["id"], int(rows[rank, world + index]))
                    for index in range(world)
                    if rows[rank, world + index] > 0
                )
        if faster or resized:
            self._send_control(Message.UPDATE_TOPOLOGY, {"epoch": epoch, "order": plan.order})
            self._wait_for_epoch_after(epoch, self.timeout if timeout is None else timeout)
            plan.changed = True
        return plan

    def _probe(self, target: dict, epoch: int, probe_bytes: int) -> LinkEstimate:
        """Measures the link to ``target`` over ``connections`` streams; with ``connections=None``
        over PROBE_STREAMS, and again over AUTO_CONNECTIONS_MAX when the pool sized from what they
        measured would need as many: a rate they reached may be their windows' limit, not the
        link's."""
        streams = self._connections or PROBE_STREAMS
        while True:
            estimate = measure_bandwidth(
                target["host"],
                target["port"],
                probe_bytes,
                streams,
                probe_timeout=self.timeout,
                group=self.peer_group,
                epoch=epoch,
                sender=self.peer_id,
                receiver=target["id"],
                secret=self._secret,
                timeout=LINK_TIMEOUT,
            )
            needed = self._pool_size(estimate.round_trip, estimate.bandwidth)
            if self._connections is not None or needed < streams or streams == AUTO_CONNECTIONS_MAX:
                return estimate
            streams = AUTO_CONNECTIONS_MAX

    def _abandon(self, epoch: int, reason: str, cause: BaseException) -> None:
        """Ends ``epoch`` for a failure outside an operation and raises its one Aborted once the
        group is in the next epoch (as a failed operation would)."""
        self._report_failure(epoch, reason)
        self._wait_for_epoch_after(epoch, RECOVERY_WAIT)
        self._owes_abort = None  # this Aborted is the notice of the failure
        raise Aborted(
            f"{reason}; epoch {epoch} was abandoned and the group is now in epoch {self._epoch} "
            f"with {self.world_size} peer(s): retry"
        ) from cause

    # -- internals: submitting and settling operations ----------------------------------------

    @staticmethod
    def _in_place_array(x: Any, dtype: str | None) -> tuple[np.ndarray, str]:
        array, dtype = as_array(x, dtype=dtype)
        if not array.flags.c_contiguous:
            raise InvalidArgumentError("x must be C-contiguous: the result is written into it in place")
        if not array.flags.writeable:
            raise InvalidArgumentError("x is read-only: the result is written into it in place")
        return array, dtype

    def _copy_back(self, array: np.ndarray) -> Callable[[Any], OpInfo]:
        flat = array.reshape(-1)
        started = time.monotonic()
        epoch, world, rank = self._epoch, self.world_size, self._rank

        def result(handle: Any) -> OpInfo:
            handle.copy_result(flat)
            held, finished = handle.held_at, handle.finished_at
            committed = finished if handle.status == "completed" else None
            return OpInfo(
                epoch,
                world,
                rank,
                handle.tag,
                time.monotonic() - started,
                None if held is None else held - started,
                None if committed is None else committed - started,
            )

        return result

    def _submit(
        self,
        collective: str,
        array: np.ndarray,
        dtype: str,
        op: str,
        root: int,
        tag: int,
        on_result: Callable,
        quantization: str = "none",
    ) -> Work:
        flat = array.reshape(-1)
        if tag != TAG_PENDING:
            self._newly_admitted = False
        with self._lock:
            self._raise_if_unusable()
            self._raise_owed_abort()
            if tag in self._inflight:
                raise InvalidArgumentError(
                    f"an operation with tag {tag} is already in flight; use another tag"
                )
            if collective == "broadcast" and root >= max(self.world_size, 1):
                raise InvalidArgumentError(f"root {root} is not a rank of a group of {self.world_size}")
            engine, epoch = self._engine, self._epoch
            description = f"{collective}(tag {tag}, {flat.size} x {dtype})"
            if engine is None:
                work = Work(self, None, epoch, description, on_result, failure=f"epoch {epoch} has no ring")
            else:
                handle = engine.submit(collective, flat, dtype, op, flat.size, root, tag, quantization)
                work = Work(self, handle, epoch, description, on_result)
            self._inflight[tag] = work
        return work

    def _forget(self, work: Work) -> None:
        with self._lock:
            for tag, known in list(self._inflight.items()):
                if known is work:
                    del self._inflight[tag]

    def _report_failure(self, epoch: int, reason: str) -> None:
        """Ends `epoch` on this peer (once): stops its engine and sends the master its op states."""
        with self._lock:
            if epoch != self._epoch or self._reported_epoch == epoch or self._evicted is not None:
                return
            self._reported_epoch = epoch
            engine = self._engine
        states = []
        if engine is not None:
            engine.abort(reason)
            states = [[t, s, c, h] for t, s, c, h in engine.tag_states()]
        # If the master is gone, the report is repeated after re-registering.
        with contextlib.suppress(CommError):
            self._send_control(Message.FAILURE, {"epoch": epoch, "reason": reason[:400], "tags": states})

    def _await_decision(self, epoch: int, tag: int | None, sequence: int | None, deadline: float) -> bool:
        """Waits until the master replaced ``epoch``; True if it kept operation (tag, sequence)."""
        with self._lock:
            while epoch not in self._decisions:
                self._raise_if_unusable()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeout(f"the master did not start a new epoch after epoch {epoch} in time")
                self._lock.wait(left)
            return tag is not None and (tag, sequence) in self._decisions[epoch]

    def _raise_owed_abort(self) -> None:
        """Raises the Aborted this peer owes its loop (under the lock). A failure ended the epoch
        and no operation of this peer was abandoned by it: every survivor gets one Aborted per
        failure, so all of them go back to the same point of their loops."""
        owed = self._take_owed_abort()
        if owed is not None:
            raise owed

    def _take_owed_abort(self) -> Aborted | None:
        """The Aborted this peer owes its loop, if any, now counted as raised (under the lock, or
        by a layer above that reports the failure in its own error: pycomm.torch's stale group)."""
        if self._owes_abort is None:
            return None
        reason, self._owes_abort = self._owes_abort, None
        return Aborted(
            f"the group changed since the last operation ({reason}); it is now in epoch "
            f"{self._epoch} with {self.world_size} peer(s): retry"
        )

    def _raise_if_unusable(self) -> None:
        if self._evicted is not None:
            raise Evicted(f"this peer is no longer in the group: {self._evicted}")
        if self._closing.is_set():
            raise CommError("the communicator is closed")

    # -- internals: the control connection ----------------------------------------------------

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _open_control(self, rejoin: dict | None) -> Channel:
        try:
            sock = socket.create_connection((self._master_host, self._master_port), timeout=LINK_TIMEOUT)
        except OSError as error:
            raise CommError(f"cannot reach the master at {self.master_address}: {error}") from error
        channel = Channel(sock)
        try:
            challenge = channel.expect(Message.CHALLENGE, timeout=LINK_TIMEOUT)
            version = field(challenge, "version", int)
            if version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the master speaks protocol version {version}, this peer {PROTOCOL_VERSION}"
                )
            if challenge.get("auth") is True and self._secret is None:
                raise AuthenticationError("the master requires a group secret and none was given")
            nonce = new_nonce()
            host = self._host
            if host in ("", "0.0.0.0", "::"):
                host = sock.getsockname()[0]
            hello = {
                "version": PROTOCOL_VERSION,
                "peer_id": self.peer_id,
                "peer_group": self.peer_group,
                "host": host,
                "port": self._listener.port,
                "nonce": nonce,
                "node": self._node,
                "pid": os.getpid(),
                "mac": sign(
                    self._secret, field(challenge, "nonce", str), "hello", self.peer_id, self.peer_group
                ),
                "rejoin": rejoin,
            }
            channel.send(Message.HELLO, hello)
            welcome = channel.expect(Message.WELCOME, timeout=LINK_TIMEOUT)
            verify(self._secret, welcome.get("mac"), nonce, "welcome", self.peer_id)
        except BaseException:
            channel.close()
            raise
        return channel

    def _send_control(self, kind: Message, body: dict) -> None:
        channel = self._channel
        if channel is None:
            raise CommError("not connected")
        channel.send(kind, body, timeout=2.0)

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.heartbeat_interval):
            channel = self._channel
            if channel is None or channel.closed:
                continue
            # A failure is the control loop's to notice (it re-registers).
            with contextlib.suppress(CommError):
                channel.send(Message.HEARTBEAT, {}, timeout=1.0)

    def _control_loop(self) -> None:
        while not self._closing.is_set():
            channel = self._channel
            try:
                kind, body = channel.receive(timeout=None)
                self._on_control(kind, body)
            except Evicted as error:
                self._mark_evicted(str(error))
                return
            except (CommError, OSError) as error:
                if self._closing.is_set() or self._evicted is not None:
                    return
                channel.close()
                if not self._reconnect(error):
                    return

    def _on_control(self, kind: Message, body: dict) -> None:
        if kind == Message.EPOCH:
            self._install_epoch(body)
        elif kind == Message.END_EPOCH:
            self._report_failure(field(body, "epoch", int), str(field(body, "reason", str)))
        elif kind == Message.PENDING:
            self._pending_count = field(body, "count", int)
        elif kind == Message.EVICTED:
            raise Evicted(str(body.get("reason", "no reason given"))[:500])
        else:
            raise ProtocolError(f"the master may not send {kind.name} here")

    def _reconnect(self, error: Exception) -> bool:
        """Re-registers with a restarted (or reachable again) master; False once evicted."""
        deadline = time.monotonic() + self.reconnect_timeout
        while not self._closing.is_set():
            with self._lock:
                rejoin = {"epoch": self._epoch, "members": self._members}
            try:
                self._channel = self._open_control(rejoin)
            except (Evicted, AuthenticationError) as refused:
                self._mark_evicted(str(refused))
                return False
            except (CommError, OSError):
                if time.monotonic() > deadline:
                    self._mark_evicted(
                        f"lost the master at {self.master_address} ({error}) and could not re-register "
                        f"within {self.reconnect_timeout:g} s"
                    )
                    return False
                self._closing.wait(0.1)
                continue
            with self._lock:
                reported = self._reported_epoch == self._epoch
                epoch = self._epoch
            if reported:
                # The failure report may have died with the old master: repeat it.
                self._reported_epoch = None
                self._report_failure(epoch, "repeated after the master came back")
            return True
        return False

    def _install_epoch(self, body: dict) -> None:
        epoch = field(body, "epoch", int)
        members = field(body, "members", list)
        commits = field(body, "commits", list)
        admitted = [str(peer) for peer in body.get("admitted", []) if isinstance(peer, str)]
        entries = []
        for entry in members:
            if not isinstance(entry, dict):
                raise ProtocolError("a member entry must be an object")
            node, pid = entry.get("node", ""), entry.get("pid", 0)
            entries.append(
                {
                    "id": field(entry, "id", str),
                    "host": field(entry, "host", str),
                    "port": field(entry, "port", int),
                    "node": node if isinstance(node, str) else "",
                    "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
                }
            )
        kept = set()
        for pair in commits:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)):
                raise ProtocolError(f"bad commit entry {pair!r:.80}")
            kept.add((pair[0], pair[1]))
        with self._lock:
            if epoch <= self._epoch:
                return
            old_epoch, old_engine = self._epoch, self._engine
        if old_engine is not None:
            old_engine.abort(f"epoch {old_epoch} ended")
        ids = [entry["id"] for entry in entries]
        if self.peer_id not in ids:
            self._mark_evicted(f"epoch {epoch} does not include this peer")
            return
        rank = ids.index(self.peer_id)
        engine, pool, failure = None, 0, None
        try:
            engine, pool = self._build_ring(epoch, entries, rank)
        except (CommError, OSError) as error:
            failure = f"could not form the ring of epoch {epoch}: {error}"
        # Segments of peers that left without cleaning up (killed) would stay in /dev/shm.
        for entry in self._members:
            if entry["id"] not in ids:
                with contextlib.suppress(OSError):
                    os.unlink("/dev/shm" + _segment_name(entry, old_epoch))
        with self._lock:
            if self._closing.is_set():  # closed while the ring was being built
                if engine is not None:
                    engine.abort("the communicator was closed")
                return
            self._decisions[old_epoch] = kept
            for old in [e for e in self._decisions if e < old_epoch - 16]:
                del self._decisions[old]
            self._epoch, self._members, self._rank, self._engine = epoch, entries, rank, engine
            self._ring_connections = pool
            self._admitted = admitted
            # Only members of the failed epoch are owed the notice (not peers admitted now).
            if isinstance(body.get("failed"), int) and old_epoch != 0 and self._owes_abort is None:
                self._owes_abort = str(body.get("reason", "a peer failed"))[:200]
            self._reported_epoch = None
            self._lock.notify_all()
        if failure is not None:
            self._report_failure(epoch, failure)

    def _build_ring(self, epoch: int, members: list[dict], rank: int) -> tuple[Any, int]:
        """This epoch's ring engine and the size of the pool to the next peer."""
        world = len(members)
        if world == 1:
            return _ft.RingEngine([], [], 0, 1, segment_bytes=self._segment_bytes), 0
        after = members[(rank + 1) % world]
        before = members[(rank - 1) % world]
        links = open_ring_pool(
            after["host"],
            after["port"],
            self._connections or self._measured_pools.get(after["id"]) or self._pool_size,
            group=self.peer_group,
            epoch=epoch,
            sender=self.peer_id,
            receiver=after["id"],
            secret=self._secret,
            timeout=LINK_TIMEOUT,
        )
        try:
            incoming = self._listener.take_ring_links(epoch, before["id"], LINK_TIMEOUT)
        except BaseException:
            for link in links:
                link.close()
            raise
        return _ft.RingEngine(
            [link.sock.detach() for link in links],
            [sock.detach() for sock in incoming],
            rank,
            world,
            segment_bytes=self._segment_bytes,
            shared_memory_names=self._shared_memory_names(epoch, members),
            **({} if self._spin_microseconds is None else {"spin_microseconds": self._spin_microseconds}),
        ), len(links)

    def _pool_size(self, round_trip: float, bandwidth: float | None = None) -> int:
        """Connections to the next peer for ``connections=None``: enough that their windows cover the
        bandwidth-delay product of the link (one TCP flow moves at most its window per round trip);
        ``bandwidth`` defaults to ``link_bandwidth``."""
        product = (self.link_bandwidth if bandwidth is None else bandwidth) * round_trip
        return max(1, min(AUTO_CONNECTIONS_MAX, math.ceil(product / _window_per_connection())))

    def _shared_memory_names(self, epoch: int, members: list[dict]) -> list[str]:
        """Segment names for the shared-memory all-reduce when every member runs beside this one."""
        if not self._node or any(entry.get("node") != self._node for entry in members):
            return []
        return [_segment_name(entry, epoch) for entry in members]

    def _mark_evicted(self, reason: str) -> None:
        with self._lock:
            if self._evicted is None:
                self._evicted = reason
            engine, self._engine = self._engine, None
            self._lock.notify_all()
        if engine is not None:
            engine.abort(f"evicted: {reason}")

    def _shared_state_server(self) -> Any:
        from pycomm.ft.shared_state import _FetchServer

        if self._state_server is None:
            self._state_server = _FetchServer()
        return self._state_server

    def _serve_fetch(self, channel: Channel) -> None:
        self._shared_state_server().serve(channel)
