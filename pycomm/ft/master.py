"""The master of pycomm.ft: admits peers into groups, numbers each membership an epoch, evicts
failed peers and arbitrates recovery. It keeps no model state and sees no collective traffic:
collectives inside an epoch never talk to it.

Failure handling: a member is declared failed when its control connection breaks, when its
heartbeats stop for ``heartbeat_timeout`` (a SIGSTOPped process keeps its sockets open but stops
beating), or when it does not answer a recovery in time. A member that reports a failed
operation ends the epoch too. Recovery: the master tells every member the epoch ended, collects
from each its operation states (per tag: submitted, completed, whether it holds the result of the
unfinished one), decides for each unfinished operation whether the survivors keep it — only if
every survivor holds its result or has finished it, so all keep the same bytes — and starts the
next epoch with the survivors.

A restarted master learns the membership back from the peers, which re-register with their epoch
and member list; members that do not come back within ``rejoin_grace`` are treated as failed.

Threads: one accept thread, one reader thread per connection, one monitor thread for deadlines;
all state is guarded by one lock. ``close()`` stops and joins them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from typing import Any, Callable

from pycomm.errors import AuthenticationError, CommError, ProtocolError
from pycomm.ft._protocol import (
    PROTOCOL_VERSION,
    Channel,
    Message,
    field,
    new_nonce,
    secret_bytes,
    sign,
    verify,
)

HELLO_TIMEOUT = 5.0


def _valid_host(host: str) -> bool:
    """A host name or address the other peers can connect to (socket.create_connection would raise
    something other than an OSError for a name IDNA cannot encode, such as a label of 64 letters)."""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return 0 < len(host) <= 253


@dataclasses.dataclass
class _Session:
    peer_id: str
    group: int
    channel: Channel
    data_host: str
    data_port: int
    last_seen: float
    node: str = ""  # which machine (and shared-memory namespace) the peer runs on
    pid: int = 0  # its process id there (names its shared-memory segments)
    alive: bool = True

    def member_entry(self) -> dict:
        return {
            "id": self.peer_id,
            "host": self.data_host,
            "port": self.data_port,
            "node": self.node,
            "pid": self.pid,
        }


@dataclasses.dataclass
class _Recovery:
    epoch: int
    reason: str
    deadline: float
    reports: dict = dataclasses.field(default_factory=dict)  # peer id -> tag states


@dataclasses.dataclass
class _Group:
    epoch: int = 0
    members: list = dataclasses.field(default_factory=list)  # member entries, ring order
    pending: list = dataclasses.field(default_factory=list)  # peer ids waiting for admission
    update_requests: set = dataclasses.field(default_factory=set)
    # The ring order each requester asked for (optimize_topology), or None (update_topology).
    update_orders: dict = dataclasses.field(default_factory=dict)
    recovery: _Recovery | None = None
    rejoin_deadline: float | None = None  # set while a restarted master waits for members

    def member_ids(self) -> list:
        return [entry["id"] for entry in self.members]


def decide_commits(reports: dict) -> list:
    """The unfinished operations the survivors keep: (tag, sequence) pairs.

    ``reports`` maps each survivor to its tag states ``[[tag, submitted, completed, has_result], ...]``.
    An operation is kept only if every survivor finished it or holds its result: a peer returns
    from an operation only after every peer holds the result, so if any survivor finished it, all
    of them hold it and all keep it; otherwise they all abandon it and restore their input.
    """
    states = {
        peer: {int(t): (int(s), int(c), bool(h)) for t, s, c, h in tags} for peer, tags in reports.items()
    }
    unfinished = {
        (tag, completed)
        for tags in states.values()
        for tag, (sub, completed, _) in tags.items()
        if sub > completed
    }
    commits = []
    for tag, sequence in sorted(unfinished):
        kept = True
        for tags in states.values():
            submitted, completed, has_result = tags.get(tag, (0, 0, False))
            finished = completed > sequence
            holds = submitted > completed and completed == sequence and has_result
            if not (finished or holds):
                kept = False
                break
        if kept:
            commits.append([tag, sequence])
    return commits


def _tag_states(body: dict) -> list:
    tags = field(body, "tags", list)
    for entry in tags:
        if (
            not isinstance(entry, list)
            or len(entry) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry[:3])
            or not isinstance(entry[3], bool)
        ):
            raise ProtocolError(f"bad tag state {entry!r:.80}")
    return tags


class Master:
    """Serves peer groups in background threads until :meth:`close`.

    ``address`` is ``"host:port"`` (port 0 picks a free one). ``secret``: peers must prove they know
    it. ``heartbeat_timeout``: silence after which a member is evicted; ``recovery_timeout``: how
    long survivors have to report after an epoch ends; ``rejoin_grace``: after a restart, how long
    the members of the adopted epoch have to re-register. ``log``: called with each membership
    event (admissions, evictions, epochs).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str | bytes | None = None,
        *,
        heartbeat_timeout: float = 1.5,
        recovery_timeout: float = 2.0,
        rejoin_grace: float = 3.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._secret = secret_bytes(secret)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.recovery_timeout = float(recovery_timeout)
        self.rejoin_grace = float(rejoin_grace)
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=256)
        self._listener.settimeout(0.2)
        bound = self._listener.getsockname()
        self.host, self.port = bound[0], bound[1]
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._groups: dict[int, _Group] = {}
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self.events: list[tuple[float, str]] = []  # (time, what): the last 1000, for tests
        self._log_callback = log
        self._start(self._accept_loop, "pycomm-master-accept")
        self._start(self._monitor_loop, "pycomm-master-monitor")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Master:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stops serving: closes every connection and joins every thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        # shutdown() wakes the accept thread at once (close() alone leaves it in accept()).
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.channel.close()
        for thread in list(self._threads):
            thread.join(timeout=10)

    def group_state(self, peer_group: int = 0) -> dict:
        """A snapshot: epoch, member ids in ring order, pending ids."""
        with self._lock:
            group = self._groups.get(peer_group, _Group())
            return {"epoch": group.epoch, "members": group.member_ids(), "pending": list(group.pending)}

    # -- threads ------------------------------------------------------------------------------

    def _start(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _log(self, what: str) -> None:
        with self._lock:
            self.events.append((time.monotonic(), what))
            del self.events[:-1000]
        if self._log_callback is not None:
            self._log_callback(what)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._start(self._serve, "pycomm-master-peer", sock)

    def _serve(self, sock: socket.socket) -> None:
        channel = Channel(sock)
        try:
            session = self._handshake(channel)
        except (CommError, OSError) as error:
            self._log(f"refused a connection: {error}")
            channel.close()
            return
        except Exception as error:  # a mistake of this master's: refuse, and keep serving others
            self._log(f"refused a connection: {type(error).__name__}: {error}")
            channel.close()
            return
        if session is None:
            channel.close()
            return
        while not self._closing.is_set() and session.alive:
            try:
                kind, body = channel.receive(timeout=None)
                self._on_message(session, kind, body)
            except (CommError, OSError) as error:
                self._drop(session, f"its control connection failed: {error}")
                return
            except Exception as error:  # a mistake of this master's: drop the peer, not the thread
                self._log(f"dropping a peer: {type(error).__name__}: {error}")
                self._drop(session, f"its message could not be handled: {type(error).__name__}: {error}")
                return

    def _monitor_loop(self) -> None:
        while not self._closing.wait(0.05):
            try:
                self._check_deadlines(time.monotonic())
            except Exception as error:  # the monitor must outlive any one mistake
                self._log(f"monitor: {type(error).__name__}: {error}")

    def _check_deadlines(self, now: float) -> None:
        with self._lock:
            for session in list(self._sessions.values()):
                if session.alive and now - session.last_seen > self.heartbeat_timeout:
                    self._drop(session, f"no heartbeat for {now - session.last_seen:.1f} s")
            for group_id, group in list(self._groups.items()):
                if group.recovery is not None and now > group.recovery.deadline:
                    silent = [p for p in group.member_ids() if p not in group.recovery.reports]
                    for peer_id in silent:
                        session = self._sessions.get(peer_id)
                        if session is not None:
                            self._drop(session, "it did not report after the epoch ended")
                    # Members without a session (not re-registered with a restarted master) go too.
                    gone = [p for p in silent if p in group.member_ids()]
                    if gone:
                        self._remove_members(group_id, gone, "did not report after the epoch ended")
                    self._try_finish_recovery(group_id)
                if group.rejoin_deadline is not None and now > group.rejoin_deadline:
                    group.rejoin_deadline = None
                    missing = [p for p in group.member_ids() if p not in self._sessions]
                    if missing:
                        self._remove_members(
                            group_id, missing, f"{len(missing)} member(s) did not re-register"
                        )

    # -- handshake ----------------------------------------------------------------------------

    def _handshake(self, channel: Channel) -> _Session | None:
        nonce = new_nonce()
        channel.send(
            Message.CHALLENGE, {"version": PROTOCOL_VERSION, "nonce": nonce, "auth": self._secret is not None}
        )
        kind, hello = channel.receive(timeout=HELLO_TIMEOUT)
        if kind != Message.HELLO:
            raise ProtocolError(f"expected HELLO, got {kind.name}")
        version = field(hello, "version", int)
        if version != PROTOCOL_VERSION:
            channel.send(
                Message.REFUSE,
                {"reason": f"protocol version {version}; this master speaks {PROTOCOL_VERSION}"},
            )
            raise ProtocolError(f"a peer speaks protocol version {version}")
        peer_id = field(hello, "peer_id", str)
        group_id = field(hello, "peer_group", int)
        data_host = field(hello, "host", str)
        data_port = field(hello, "port", int)
        peer_nonce = field(hello, "nonce", str)
        node = hello.get("node", "")
        if not isinstance(node, str) or len(node) > 200:
            raise ProtocolError("HELLO field 'node' must be a string of at most 200 characters")
        pid = hello.get("pid", 0)
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 1 << 31:
            raise ProtocolError("HELLO field 'pid' must be a process id")
        if not (
            0 < len(peer_id) <= 64
            and _valid_host(data_host)
            and 0 < data_port < 65536
            and len(peer_nonce) <= 64
        ):
            raise ProtocolError("HELLO fields out of range")
        try:
            verify(self._secret, hello.get("mac"), nonce, "hello", peer_id, group_id)
        except AuthenticationError as error:
            channel.send(Message.REFUSE, {"reason": str(error), "auth": True})
            raise
        rejoin = hello.get("rejoin")
        session = _Session(peer_id, group_id, channel, data_host, data_port, time.monotonic(), node, pid)
        with self._lock:
            old = self._sessions.get(peer_id)
            if old is not None and old.alive:
                channel.send(Message.REFUSE, {"reason": f"peer id {peer_id} is already connected"})
                return None
            welcome = {"mac": sign(self._secret, peer_nonce, "welcome", peer_id)}
            refusal = self._admit(session, rejoin, welcome)
            if refusal is not None:
                channel.send(Message.EVICTED, {"reason": refusal})
                return None
        return session

    def _admit(self, session: _Session, rejoin: Any, welcome: dict) -> str | None:
        """Registers a session (lock held); returns a reason when it must be refused."""
        group = self._groups.setdefault(session.group, _Group())
        if rejoin is not None:
            if not isinstance(rejoin, dict):
                raise ProtocolError("rejoin must be an object")
            epoch = field(rejoin, "epoch", int)
            members = field(rejoin, "members", list)
            if group.epoch == 0 and not group.members and epoch > 0:
                # A restarted master: adopt the membership the first returning member reports.
                group.epoch = epoch
                group.members = [self._member_entry(entry) for entry in members]
                group.rejoin_deadline = time.monotonic() + self.rejoin_grace
                self._log(f"group {session.group}: adopted epoch {epoch} from a re-registering member")
            if epoch != group.epoch or session.peer_id not in group.member_ids():
                return f"the group moved on to epoch {group.epoch} without this peer"
            self._sessions[session.peer_id] = session
            session.channel.send(Message.WELCOME, welcome)
            if all(p in self._sessions for p in group.member_ids()):
                group.rejoin_deadline = None
            self._log(f"group {session.group}: {session.peer_id} re-registered in epoch {epoch}")
            return None
        self._sessions[session.peer_id] = session
        session.channel.send(Message.WELCOME, welcome)
        group.pending.append(session.peer_id)
        self._log(f"group {session.group}: {session.peer_id} is waiting for admission")
        if not group.members and group.recovery is None:
            self._new_epoch(session.group, admit_pending=True, commits=[], reason="first members")
        else:
            self._tell_pending(group)
        return None

    @staticmethod
    def _member_entry(entry: Any) -> dict:
        if not isinstance(entry, dict):
            raise ProtocolError("a member entry must be an object")
        port = field(entry, "port", int)
        if not 0 < port < 65536:
            raise ProtocolError("member port out of range")
        node, pid = entry.get("node", ""), entry.get("pid", 0)
        return {
            "id": field(entry, "id", str),
            "host": field(entry, "host", str),
            "port": port,
            "node": node if isinstance(node, str) else "",
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
        }

    # -- messages -----------------------------------------------------------------------------

    def _on_message(self, session: _Session, kind: Message, body: dict) -> None:
        with self._lock:
            session.last_seen = time.monotonic()
            group = self._groups[session.group]
            if kind == Message.HEARTBEAT:
                return
            if kind == Message.LEAVE:
                self._drop(session, "it left")
                return
            if kind == Message.UPDATE_TOPOLOGY:
                epoch = field(body, "epoch", int)
                order = body.get("order")
                if order is not None and (
                    not isinstance(order, list) or not all(isinstance(peer, str) for peer in order)
                ):
                    raise ProtocolError("an UPDATE_TOPOLOGY order must be a list of peer ids")
                if group.recovery is None and epoch == group.epoch and session.peer_id in group.member_ids():
                    group.update_requests.add(session.peer_id)
                    group.update_orders[session.peer_id] = None if order is None else tuple(order)
                    if group.update_requests >= set(group.member_ids()):
                        self._update_topology(session.group)
                return
            if kind == Message.FAILURE:
                epoch = field(body, "epoch", int)
                reason = str(field(body, "reason", str))[:500]
                tags = _tag_states(body)
                if epoch != group.epoch or session.peer_id not in group.member_ids():
                    return  # about an epoch already replaced
                if group.recovery is None:
                    self._start_recovery(session.group, f"{session.peer_id[:8]} reported: {reason}")
                group.recovery.reports[session.peer_id] = tags
                self._try_finish_recovery(session.group)
                return
            raise ProtocolError(f"a peer may not send {kind.name}")

    def _update_topology(self, group_id: int) -> None:
        """Every member asked for the next epoch: admit the waiting peers (update_topology), or put
        the ring in the order every member asked for (optimize_topology)."""
        group = self._groups[group_id]
        orders = set(group.update_orders.values())
        if orders == {None}:
            self._new_epoch(group_id, admit_pending=True, commits=[], reason="update_topology")
            return
        order = next(iter(orders)) if len(orders) == 1 else None
        by_id = {entry["id"]: entry for entry in group.members}
        if order is None or sorted(order) != sorted(by_id):
            self._log(f"group {group_id}: members asked for different ring orders; the order stays")
            self._new_epoch(group_id, admit_pending=True, commits=[], reason="update_topology")
            return
        group.members = [by_id[peer_id] for peer_id in order]
        self._new_epoch(group_id, admit_pending=False, commits=[], reason="optimize_topology")

    def _drop(self, session: _Session, reason: str) -> None:
        """Forgets a session and evicts it from its group (lock held or not)."""
        with self._lock:
            if not session.alive or self._closing.is_set():
                return  # a closing master evicts nobody: its peers re-register with the next one
            session.alive = False
            if self._sessions.get(session.peer_id) is session:
                del self._sessions[session.peer_id]
            with contextlib.suppress(CommError):
                session.channel.send(Message.EVICTED, {"reason": reason}, timeout=0.2)
            session.channel.close()
            group = self._groups.get(session.group)
            if group is None:
                return
            if session.peer_id in group.pending:
                group.pending.remove(session.peer_id)
                self._log(f"group {session.group}: pending {session.peer_id} left: {reason}")
                self._tell_pending(group)
            if session.peer_id in group.member_ids():
                self._remove_members(
                    session.group, [session.peer_id], f"{session.peer_id[:8]} failed: {reason}"
                )

    def _remove_members(self, group_id: int, peer_ids: list, reason: str) -> None:
        group = self._groups[group_id]
        self._log(f"group {group_id}: evicting {', '.join(peer_ids)}: {reason}")
        group.members = [entry for entry in group.members if entry["id"] not in peer_ids]
        if group.recovery is None:
            self._start_recovery(group_id, reason)
        for peer_id in peer_ids:
            group.recovery.reports.pop(peer_id, None)
        self._try_finish_recovery(group_id)

    def _start_recovery(self, group_id: int, reason: str) -> None:
        group = self._groups[group_id]
        group.recovery = _Recovery(group.epoch, reason, time.monotonic() + self.recovery_timeout)
        group.update_requests.clear()
        group.update_orders.clear()
        self._log(f"group {group_id}: epoch {group.epoch} ended: {reason}")
        for peer_id in group.member_ids():
            self._send(peer_id, Message.END_EPOCH, {"epoch": group.epoch, "reason": reason})

    def _try_finish_recovery(self, group_id: int) -> None:
        group = self._groups[group_id]
        recovery = group.recovery
        if recovery is None or any(p not in recovery.reports for p in group.member_ids()):
            return
        commits = decide_commits(recovery.reports)
        group.recovery = None
        self._new_epoch(
            group_id,
            admit_pending=not group.members,
            commits=commits,
            reason=recovery.reason,
            failed=recovery.epoch,
        )

    def _new_epoch(
        self, group_id: int, admit_pending: bool, commits: list, reason: str, failed: int | None = None
    ) -> None:
        """Starts the next epoch; `failed`: the epoch a failure ended (None for a planned change)."""
        group = self._groups[group_id]
        admitted = []
        if admit_pending:
            for peer_id in group.pending:
                session = self._sessions.get(peer_id)
                if session is not None and session.alive:
                    group.members.append(session.member_entry())
                    admitted.append(peer_id)
            group.pending.clear()
        group.epoch += 1
        group.update_requests.clear()
        group.update_orders.clear()
        self._log(f"group {group_id}: epoch {group.epoch} with {len(group.members)} member(s) ({reason})")
        message = {
            "epoch": group.epoch,
            "members": group.members,
            "admitted": admitted,
            "failed": failed,
            "commits": commits,
            "reason": reason,
        }
        for peer_id in group.member_ids():
            self._send(peer_id, Message.EPOCH, message)
        self._tell_pending(group)

    def _tell_pending(self, group: _Group) -> None:
        for peer_id in group.member_ids():
            self._send(peer_id, Message.PENDING, {"count": len(group.pending)})

    def _send(self, peer_id: str, kind: Message, body: dict) -> None:
        session = self._sessions.get(peer_id)
        if session is None or not session.alive:
            return
        # On failure its reader thread sees the closed channel and drops the session.
        with contextlib.suppress(CommError):
            session.channel.send(kind, body, timeout=1.0)
