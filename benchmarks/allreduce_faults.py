"""The fault measurements of ``pycomm bench allreduce``: pycomm peers killed, stalled and joined.

:class:`_FaultRun` starts ``FAULT_PEERS`` pycomm peers (:func:`.allreduce_peer.fault_peer`) looping
checked all-reduces and times, per trial, the recovery from a SIGKILL, a newcomer's join, the eviction
of a SIGSTOPped peer and the survivors' recovery from it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .allreduce import FAULT_PEERS, BenchmarkFailed, _Connection, _Driver, _tail
from .allreduce_peer import _FAULT_TIMEOUT, _START_TIMEOUT, fault_peer
from .units import format_size

if TYPE_CHECKING:
    from .allreduce import AllreduceConfig


@dataclass
class _FaultPeer:
    process: Any
    connection: _Connection | None = None
    first_ops: dict[int, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    gone: bool = False

    @property
    def peer_id(self) -> str:
        return self.connection.hello["peer_id"] if self.connection and self.connection.hello else ""


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "samples_s": list(samples),
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
    }


class _FaultRun:
    """Four pycomm peers looping checked all-reduces; kills, stalls and newcomers, timed."""

    def __init__(self, config: AllreduceConfig, progress: Callable[[str], None]) -> None:
        self.config = config
        self.progress = progress
        self.peers: list[_FaultPeer] = []
        self.problems: list[str] = []

    def run(self) -> dict[str, Any]:
        from pycomm.ft import Master
        from pycomm.testing import LocalCluster

        config = self.config
        trials: list[dict[str, Any]] = []
        with (
            Master(heartbeat_timeout=config.heartbeat_timeout) as master,
            LocalCluster(timeout=_START_TIMEOUT + 60.0 * config.fault_trials + 60.0) as cluster,
        ):
            self.master, self.cluster, self.driver = master, cluster, _Driver()
            try:
                self.progress(
                    f"faults: starting {FAULT_PEERS} pycomm peers looping {format_size(config.fault_size)} "
                    "all-reduces"
                )
                for _ in range(FAULT_PEERS):
                    self._spawn(FAULT_PEERS)
                self._wait_steady(0, "the first group of 4 to run")
                for trial in range(config.fault_trials):
                    trials.append(self._trial(trial))
                counts = self._counts()
            except BenchmarkFailed as error:
                raise BenchmarkFailed(f"{error}\n{self._diagnosis()}") from None
            finally:
                for peer in self.peers:
                    if peer.connection is not None:
                        with contextlib.suppress(OSError):
                            peer.connection.send({"op": "exit"})
                self.driver.close()
        # The cluster's exit killed the last peers: their shared-memory segments are removed here.
        for peer in self.peers:
            if peer.peer_id:
                for path in glob.glob(f"/dev/shm/pycomm-*-{peer.peer_id}-*"):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        master_settings = {
            "heartbeat_timeout_s": master.heartbeat_timeout,
            "recovery_timeout_s": master.recovery_timeout,
        }
        return {
            "peers": FAULT_PEERS,
            "size_bytes": config.fault_size,
            "trials": config.fault_trials,
            "master": master_settings,
            "recovery": _summary([t["recovery_s"] for t in trials]),
            "join": _summary([s for t in trials for s in t["join_s"]]),
            "eviction": _summary([t["eviction_s"] for t in trials]),
            "stall_recovery": _summary([t["stall_recovery_s"] for t in trials]),
            "per_trial": trials,
            "ops": counts,
        }

    # -- the sequence of one trial ----------------------------------------------------------

    def _trial(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {"trial": index, "join_s": [], "join_admitted_s": []}
        # (a) SIGKILL one of 4.
        victim = self._members()[1]
        epoch = self.master.group_state()["epoch"]
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.gone = True
        firsts = self._wait_steady(epoch, "the survivors of a SIGKILL to run a correct all-reduce")
        record["recovery_s"] = max(op["t"] for op in firsts.values()) - killed_at
        record["recovery_survivors_s"] = sorted(op["t"] - killed_at for op in firsts.values())
        record["recovery_epochs"] = [epoch, min(op["first_op"] for op in firsts.values())]
        # (b) a newcomer joins the 3.
        self._join(record)
        # (c) SIGSTOP one of 4: eviction, then the survivors' recovery.
        victim = self._members()[2]
        epoch = self.master.group_state()["epoch"]
        stopped_at = time.monotonic()
        victim.process.stall()
        deadline = stopped_at + _FAULT_TIMEOUT
        while victim.peer_id in self.master.group_state()["members"]:
            if time.monotonic() > deadline:
                raise BenchmarkFailed(
                    f"the master did not evict a SIGSTOPped peer within {_FAULT_TIMEOUT:g} s"
                )
            self._check()
            self.driver.pump(0.001)
            self._collect()
        record["eviction_s"] = time.monotonic() - stopped_at
        victim.gone = True
        firsts = self._wait_steady(epoch, "the survivors of a SIGSTOP to run a correct all-reduce")
        record["stall_recovery_s"] = max(op["t"] for op in firsts.values()) - stopped_at
        victim.process.kill()
        # Back to 4 for the next trial (another join sample).
        self._join(record)
        self.progress(
            f"faults: trial {index + 1}: recovery {record['recovery_s'] * 1e3:.0f} ms, joins "
            + ", ".join(f"{s * 1e3:.0f}" for s in record["join_s"])
            + f" ms, eviction {record['eviction_s'] * 1e3:.0f} ms, stall recovery "
            f"{record['stall_recovery_s'] * 1e3:.0f} ms"
        )
        return record

    def _join(self, record: dict[str, Any]) -> None:
        epoch = self.master.group_state()["epoch"]
        newcomer = self._spawn(0)
        self._wait_steady(epoch, "a newcomer to join and run a correct all-reduce")
        hello = newcomer.connection.hello  # type: ignore[union-attr]
        record["join_s"].append(newcomer.first_ops[min(newcomer.first_ops)]["t"] - hello["connect_start"])
        record["join_admitted_s"].append(hello["connected"] - hello["connect_start"])

    # -- bookkeeping ------------------------------------------------------------------------

    def _spawn(self, min_world: int) -> _FaultPeer:
        process = self.cluster.spawn(
            fault_peer,
            args=(self.driver.address, self.master.address, min_world, self.config.fault_size // 4),
            name=f"fault-{len(self.peers)}",
        )
        peer = _FaultPeer(process)
        self.peers.append(peer)
        return peer

    def _members(self) -> list[_FaultPeer]:
        return [peer for peer in self.peers if not peer.gone]

    def _collect(self) -> None:
        """Hands new connections to their peers (by pid) and files the peers' reports."""
        by_pid = {peer.process.pid: peer for peer in self.peers}
        for connection in self.driver.connections:
            hello = connection.hello
            if hello is not None and hello.get("system") == "fault":
                peer = by_pid.get(hello["pid"])
                if peer is not None and peer.connection is None:
                    peer.connection = connection
        for peer in self.peers:
            while peer.connection is not None and peer.connection.lines:
                line = peer.connection.lines.popleft()
                peer.last = line
                if "first_op" in line:
                    peer.first_ops.setdefault(int(line["first_op"]), line)
                if "mismatch" in line or line.get("ok") is False:
                    self.problems.append(
                        f"{peer.process.name}: {line.get('mismatch', 'wrong all-reduce result')}"
                    )

    def _check(self) -> None:
        if self.problems:
            raise BenchmarkFailed(
                "pycomm computed a wrong all-reduce during the fault measurements: "
                + "; ".join(self.problems[:5])
            )
        for peer in self._members():
            if not peer.process.running:
                raise BenchmarkFailed(
                    f"pycomm peer {peer.process.name} exited with status {peer.process.returncode} "
                    f"during the fault measurements:\n{_tail(peer.process.read_stderr())}"
                )

    def _wait_steady(self, after_epoch: int, what: str) -> dict[str, dict[str, Any]]:
        """Waits until every live peer completed a correct all-reduce in an epoch after ``after_epoch``
        with all of them as members; returns each one's first such report."""
        members = self._members()

        def firsts() -> dict[str, dict[str, Any]] | None:
            self._collect()
            self._check()
            found = {}
            for peer in members:
                later = [op for epoch, op in peer.first_ops.items() if epoch > after_epoch]
                if not later:
                    return None
                found[peer.process.name] = min(later, key=lambda op: op["t"])
            if any(op["world"] != len(members) for op in found.values()):
                # A first all-reduce in a group of another size: wait for the group's next epoch.
                return None
            return found

        result: dict[str, dict[str, Any]] = {}

        def done() -> bool:
            found = firsts()
            if found is not None:
                result.update(found)
            return found is not None

        self.driver.wait(done, _FAULT_TIMEOUT, what, self._check)
        return result

    def _diagnosis(self) -> str:
        """What the master holds and logged, what every peer last reported, and the peers' stacks."""
        lines = [f"master: {self.master.group_state()}"]
        lines += [f"  master {when:.3f}: {what}" for when, what in list(self.master.events)[-40:]]
        for peer in self.peers:
            process = peer.process
            state = "running" if process.running else f"exited {process.returncode}"
            if process.running and process.stalled:
                state = "stopped"
            lines.append(f"{process.name} ({state}, gone={peer.gone}, {peer.peer_id[:8]}): last {peer.last}")
        for peer in self._members():
            if peer.process.running and not peer.process.stalled:
                peer.process.dump_stacks()
        for peer in self._members():
            lines.append(f"--- {peer.process.name} stderr:\n{_tail(peer.process.read_stderr(), 80)}")
        return "\n".join(lines)

    def _counts(self) -> dict[str, int]:
        totals = {"ops": 0, "verified": 0, "unverified": 0, "aborts": 0, "mismatches": 0}
        self._collect()
        for peer in self.peers:
            for key in totals:
                totals[key] += int(peer.last.get(key, 0))
        return totals
