"""Shared state: named arrays plus a revision, kept bit-identical on every member of a group.

A sync first agrees on a 16-byte digest per peer (one small all-gather). When every digest is the
same — the steady state — nothing else happens and no array byte moves. Otherwise the members
exchange their summaries (revision, strategy, and per array its dtype, shape and 64-bit content
hash), all compute the same target — the (revision, contents) most voters hold — and each peer
whose arrays differ fetches only the differing arrays, each split over up to four holders
fetched in parallel, straight into its own arrays. Fetched bytes are checked against the target
hash. A final one-word all-reduce tells every member whether every fetch succeeded.

Strategies: ``enforce_popular`` (vote, and take the popular state when it differs; a peer that
never synced does not vote while some member has, nor one whose last fetch failed: fetches write
into its arrays, which may be left part written),
``receive_only`` (never vote or serve; take the popular state), ``send_only`` (vote and serve, but
never take another state: holding a different one is an error).

Revision rule: a peer that synced revision r must present r + 1 at its next sync (a failed sync
does not count). Peers that take the target's contents also take its revision. Every rule is
checked from the summaries every peer received, so all members raise the same error together.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from pycomm import kernels
from pycomm._arrays import as_array
from pycomm.errors import CommError, InvalidArgumentError, ProtocolError
from pycomm.ft._links import open_link
from pycomm.ft._protocol import Channel, Message, field

STRATEGIES = ("enforce_popular", "receive_only", "send_only")
TAG_DIGEST = (1 << 63) + 2
TAG_SUMMARY_LENGTH = (1 << 63) + 3
TAG_SUMMARY = (1 << 63) + 4
TAG_DONE = (1 << 63) + 5
MAX_HOLDERS_PER_ARRAY = 4
FETCH_TIMEOUT = 30.0
MAX_SUMMARY_BYTES = 1 << 20


class SharedState:
    """Named arrays (numpy arrays or torch CPU tensors, updated in place) and a revision."""

    def __init__(self, arrays: dict[str, Any], revision: int = 0) -> None:
        if not isinstance(arrays, dict) or not arrays:
            raise InvalidArgumentError("SharedState needs a non-empty dict of named arrays")
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise InvalidArgumentError(f"revision must be a non-negative int, got {revision!r}")
        self.arrays = dict(arrays)
        self.revision = revision
        self._views: dict[str, tuple[np.ndarray, str]] = {}
        for name, value in self.arrays.items():
            if not isinstance(name, str) or not name or len(name) > 200:
                raise InvalidArgumentError(
                    f"array names must be non-empty strings of at most 200 characters, got {name!r}"
                )
            array, dtype = as_array(value, role=f"shared state '{name}'")
            if not array.flags.c_contiguous or not array.flags.writeable:
                raise InvalidArgumentError(f"shared state '{name}' must be C-contiguous and writeable")
            self._views[name] = (array, dtype)

    def view(self, name: str) -> tuple[np.ndarray, str]:
        return self._views[name]

    def bytes_of(self, name: str) -> memoryview:
        array = self._views[name][0]
        return memoryview(array.reshape(-1).view(np.uint8))

    def hashes(self) -> dict[str, int]:
        return {name: kernels.hash64(array) for name, (array, _) in self._views.items()}


@dataclasses.dataclass(frozen=True)
class SyncInfo:
    revision: int
    bytes_received: int
    arrays_received: tuple[str, ...]
    seconds: float
    epoch: int
    holders: int = 0  # distinct peers this one fetched from


def _summary(state: SharedState, strategy: str, problem: str, synced: bool) -> dict:
    hashes = state.hashes()
    return {
        "revision": state.revision,
        "strategy": strategy,
        "problem": problem,
        "synced": synced,
        "arrays": [
            [name, dtype, list(array.shape), f"{hashes[name]:016x}"]
            for name, (array, dtype) in sorted(state._views.items())
        ],
    }


def _parse_summary(raw: bytes, rank: int) -> dict:
    try:
        summary = json.loads(raw.rstrip(b"\0"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"rank {rank} sent an unreadable shared-state summary: {error}") from None
    if not isinstance(summary, dict):
        raise ProtocolError(f"rank {rank} sent a shared-state summary that is not an object")
    field(summary, "revision", int)
    if field(summary, "strategy", str) not in STRATEGIES:
        raise ProtocolError(f"rank {rank} sent an unknown strategy")
    field(summary, "problem", str)
    field(summary, "synced", bool)
    arrays = field(summary, "arrays", list)
    for entry in arrays:
        if not (
            isinstance(entry, list)
            and len(entry) == 4
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
            and isinstance(entry[2], list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in entry[2])
            and isinstance(entry[3], str)
        ):
            raise ProtocolError(f"rank {rank} sent a bad array entry")
    return summary


def _contents(summary: dict) -> tuple:
    return tuple((name, dtype, tuple(shape), digest) for name, dtype, shape, digest in summary["arrays"])


def _choose_target(summaries: list[dict]) -> int:
    """The rank whose (revision, contents) the most voters hold; ties: higher revision, lower rank.

    Voters are the members that are not receive_only and have synced before: newcomers cannot
    outvote the members that carried the state (unless no member has ever synced).
    """
    senders = [r for r, s in enumerate(summaries) if s["strategy"] != "receive_only"]
    voters = [r for r in senders if summaries[r]["synced"]] or senders
    if not voters:
        raise CommError("no holder of the shared state is left: every member is receive_only")
    keys = {r: (summaries[r]["revision"], _contents(summaries[r])) for r in voters}
    votes = Counter(keys.values())
    first_holder: dict = {}
    for rank in voters:
        first_holder.setdefault(keys[rank], rank)
    best = max(votes, key=lambda key: (votes[key], key[0], -first_holder[key]))
    return first_holder[best]


def _check_rules(summaries: list[dict], target: int) -> None:
    for rank, summary in enumerate(summaries):
        if summary["problem"]:
            raise InvalidArgumentError(f"shared state of rank {rank}: {summary['problem']}")
    goal = summaries[target]
    goal_layout = [(n, d, tuple(s)) for n, d, s, _ in goal["arrays"]]
    for rank, summary in enumerate(summaries):
        same = (summary["revision"], _contents(summary)) == (goal["revision"], _contents(goal))
        if summary["strategy"] == "send_only" and not same:
            raise InvalidArgumentError(
                f"rank {rank} is send_only but holds revision {summary['revision']} with other contents than "
                f"the group's revision {goal['revision']}"
            )
        layout = [(n, d, tuple(s)) for n, d, s, _ in summary["arrays"]]
        if layout != goal_layout:
            raise InvalidArgumentError(
                f"shared state layouts differ: rank {rank} has {layout}, "
                f"the group's revision has {goal_layout}"
            )


class _FetchServer:
    """Serves this peer's arrays to fetching peers while a sync is under way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: SharedState | None = None

    def publish(self, state: SharedState | None) -> None:
        with self._lock:
            self._state = state

    def serve(self, channel: Channel) -> None:
        while True:
            try:
                kind, request = channel.receive(timeout=FETCH_TIMEOUT)
            except CommError:
                return
            if kind != Message.FETCH:
                return
            name = request.get("name")
            offset, length = request.get("offset"), request.get("length")
            with self._lock:
                state = self._state
            data = None
            if state is not None and isinstance(name, str) and name in state.arrays:
                whole = state.bytes_of(name)
                if (
                    isinstance(offset, int)
                    and isinstance(length, int)
                    and offset >= 0
                    and length >= 0
                    and offset + length <= len(whole)
                ):
                    data = whole[offset : offset + length]
            if data is None:
                channel.send(
                    Message.FETCH_REPLY,
                    {"ok": False, "reason": f"cannot serve {name!r:.80} [{offset}, +{length})"},
                )
                continue
            channel.send(Message.FETCH_REPLY, {"ok": True, "length": len(data)})
            channel.send_raw(data)


def _fetch_from(comm: Any, holder: dict, jobs: list, errors: list) -> None:
    try:
        link, _ = open_link(
            holder["host"],
            holder["port"],
            kind="fetch",
            group=comm.peer_group,
            epoch=comm.epoch,
            sender=comm.peer_id,
            receiver=holder["id"],
            secret=comm._secret,
            timeout=FETCH_TIMEOUT,
        )
    except (CommError, OSError) as error:
        errors.append(f"cannot reach holder {holder['id'][:8]}: {error}")
        return
    try:
        for name, target, offset in jobs:
            link.send(Message.FETCH, {"name": name, "offset": offset, "length": len(target)})
            reply = link.expect(Message.FETCH_REPLY, timeout=FETCH_TIMEOUT)
            if reply.get("ok") is not True or reply.get("length") != len(target):
                errors.append(f"holder {holder['id'][:8]} refused '{name}': {reply.get('reason')}")
                return
            link.receive_into(target, FETCH_TIMEOUT)
    except (CommError, OSError) as error:
        errors.append(f"fetching from holder {holder['id'][:8]} failed: {error}")
    finally:
        link.close()


def synchronize(comm: Any, state: SharedState, strategy: str = "enforce_popular") -> SyncInfo:
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    if not isinstance(state, SharedState):
        raise InvalidArgumentError("sync_shared_state() takes a SharedState")
    started = time.perf_counter()
    server = comm._shared_state_server()
    last = comm._last_synced_revision
    problem = ""
    if last is not None and state.revision != last + 1:
        problem = (
            f"revision {state.revision} after revision {last}: "
            "each sync must present the last synced revision + 1"
        )
    summary = json.dumps(_summary(state, strategy, problem, last is not None), separators=(",", ":")).encode()
    if len(summary) > MAX_SUMMARY_BYTES:
        raise InvalidArgumentError(
            f"the shared state's summary is {len(summary)} bytes; the limit is {MAX_SUMMARY_BYTES}"
        )
    digest = np.array([len(summary), kernels.hash64(np.frombuffer(summary, np.uint8))], dtype=np.uint64)
    server.publish(state)
    try:
        digests = comm.all_gather_async(digest, tag=TAG_DIGEST, internal=True).wait()
        if not problem and strategy != "receive_only" and all(np.array_equal(d, digests[0]) for d in digests):
            comm._last_synced_revision = state.revision
            return SyncInfo(state.revision, 0, (), time.perf_counter() - started, comm.epoch)
        longest = int(digests[:, 0].max())
        if longest > MAX_SUMMARY_BYTES:  # every member sees the same digests and refuses alike
            raise ProtocolError(
                f"a member announced a {longest}-byte shared-state summary; the limit is {MAX_SUMMARY_BYTES}"
            )
        padded = np.zeros(longest, np.uint8)
        padded[: len(summary)] = np.frombuffer(summary, np.uint8)
        gathered = comm.all_gather_async(padded, tag=TAG_SUMMARY, internal=True).wait()
        summaries = [_parse_summary(bytes(row), rank) for rank, row in enumerate(gathered)]
        target = _choose_target(summaries)
        _check_rules(summaries, target)
        goal = summaries[target]
        received, names, holders, failure = _fetch_differences(comm, state, summaries, goal)
        if comm.agree_max(1 if failure else 0, TAG_DONE):
            raise CommError(
                f"the shared-state sync failed on at least one member{': ' + failure if failure else ''}"
            )
    finally:
        server.publish(None)
    state.revision = goal["revision"]
    comm._last_synced_revision = state.revision
    return SyncInfo(state.revision, received, names, time.perf_counter() - started, comm.epoch, holders)


def _fetch_differences(
    comm: Any, state: SharedState, summaries: list[dict], goal: dict
) -> tuple[int, tuple, str]:
    mine = summaries[comm.rank]
    goal_arrays = {entry[0]: entry for entry in goal["arrays"]}
    wanted = [name for name, _, _, digest in mine["arrays"] if goal_arrays[name][3] != digest]
    if not wanted:
        return 0, (), 0, ""
    members = comm._members
    by_holder: dict[int, list] = {}
    for name in wanted:
        holders = [
            r
            for r, s in enumerate(summaries)
            if r != comm.rank
            and s["strategy"] != "receive_only"
            and any(e == goal_arrays[name] for e in s["arrays"])
        ]
        if not holders:
            return 0, (), 0, f"no holder of array '{name}' is left"
        whole = state.bytes_of(name)
        parts = min(len(holders), MAX_HOLDERS_PER_ARRAY, max(1, len(whole)))
        bounds = np.linspace(0, len(whole), parts + 1).astype(np.int64)
        for part in range(parts):
            holder = holders[(part + comm.rank) % len(holders)]
            start, stop = int(bounds[part]), int(bounds[part + 1])
            by_holder.setdefault(holder, []).append((name, whole[start:stop], start))
    errors: list[str] = []
    threads = [
        threading.Thread(target=_fetch_from, args=(comm, members[h], jobs, errors), daemon=True)
        for h, jobs in by_holder.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        comm._last_synced_revision = None  # its arrays may be part written: it votes no more
        return 0, (), 0, "; ".join(errors)
    hashes = state.hashes()
    for name in wanted:
        if f"{hashes[name]:016x}" != goal_arrays[name][3]:
            comm._last_synced_revision = None
            return 0, (), 0, f"array '{name}' does not match the group's hash after fetching it"
    return sum(len(state.bytes_of(n)) for n in wanted), tuple(wanted), len(by_holder), ""
