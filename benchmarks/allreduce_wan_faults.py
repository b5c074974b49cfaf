"""The fault measurement of ``pycomm bench allreduce --wan``: a peer SIGKILLed over emulated links.

:class:`FaultRun` starts ``FAULT_PEERS`` peers (:func:`.allreduce_wan_peer.fault`) in the namespaces of
a :class:`pycomm.testing.netem.Network`, looping checked all-reduces, and per trial SIGKILLs one half
way through an all-reduce and times the detection (the master ends the epoch), the survivors'
``Aborted`` and their first correct all-reduce in the new epoch; a newcomer then takes the victim's
namespace for the next trial. The approach is that of :mod:`.allreduce_faults` on loopback.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .allreduce import BenchmarkFailed
from .allreduce_faults import _summary
from .allreduce_wan import _STEADY_TIMEOUT, FAULT_PEERS, _network, _Process, _wait
from .units import format_size

if TYPE_CHECKING:
    from .allreduce_wan import WanConfig


class FaultRun:
    """``FAULT_PEERS`` peers looping checked all-reduces over the links; one SIGKILLed per trial."""

    def __init__(self, config: WanConfig, progress: Callable[[str], None]) -> None:
        self.config = config
        self.progress = progress
        self.peers: list[_Process] = []
        self.reports: dict[str, list[dict[str, Any]]] = {}

    def run(self) -> dict[str, Any]:
        config = self.config
        trials = []
        with (
            tempfile.TemporaryDirectory(prefix="pycomm-bench-wan-") as workdir,
            _network(config, FAULT_PEERS) as (net, master),
        ):
            self.net, self.master, self.workdir = net, master, workdir
            try:
                self.progress(
                    f"wan faults: {FAULT_PEERS} peers looping {format_size(config.fault_size)} all-reduces"
                )
                for slot in range(1, FAULT_PEERS + 1):
                    self._spawn(slot, FAULT_PEERS)
                self._wait_steady(0, "the first group of 3 to run")
                for trial in range(config.fault_trials):
                    trials.append(self._trial())
                    self.progress(
                        f"wan faults: trial {trial + 1}: detected {trials[-1]['detect_s'] * 1e3:.0f} ms, "
                        f"recovered {trials[-1]['recovery_s'] * 1e3:.0f} ms after the kill"
                    )
                counts = self._counts()
                events = list(master.events)
            finally:
                for process in self.peers:
                    process.send({"op": "exit"})
                    process.close()
        return {
            "peers": FAULT_PEERS,
            "size_bytes": config.fault_size,
            "trials": config.fault_trials,
            "master": config.master_timeouts(),
            **{key: _summary([t[key] for t in trials]) for key in ("detect_s", "aborted_s", "recovery_s")},
            "operation_s": statistics.median(t["operation_s"] for t in trials),
            "per_trial": trials,
            "ops": counts,
            "master_events": [what for _, what in events[-40:]],
        }

    def _spawn(self, slot: int, min_world: int) -> _Process:
        timeout = self.config.operation_timeout(self.config.fault_size)
        argv = [
            "fault",
            "--master",
            self.master.address,
            "--host",
            self.net.address(slot),
            "--elements",
            str(self.config.fault_size // 4),
            "--timeout",
            str(timeout),
            "--min-world",
            str(min_world),
        ]
        process = _Process(self.net, slot, argv, f"fault-{len(self.peers)}", self.workdir)
        self.peers.append(process)
        self.reports[process.name] = []
        return process

    def _members(self) -> list[_Process]:
        return [p for p in self.peers if not p.expected_exit]

    def _collect(self) -> None:
        for process in self.peers:
            while process.lines:
                line = process.lines.popleft()
                if line.get("ok") is False:
                    raise BenchmarkFailed(f"{process.name} computed a wrong all-reduce: {line}")
                if "error" in line:
                    raise BenchmarkFailed(f"{process.name} failed:\n{line['error']}")
                self.reports[process.name].append(line)

    def _wait_steady(self, after_epoch: int, what: str) -> dict[str, dict[str, Any]]:
        """Until every member completed a correct all-reduce in an epoch after ``after_epoch`` in a
        group of all of them; returns each one's first such report."""
        members = self._members()
        found: dict[str, dict[str, Any]] = {}

        def done() -> bool:
            self._collect()
            for process in members:
                later = [
                    r
                    for r in self.reports[process.name]
                    if "op" in r and r["op"] > after_epoch and r["world"] == len(members)
                ]
                if not later:
                    return False
                found[process.name] = later[0]
            return True

        _wait(members, done, _STEADY_TIMEOUT, what)
        return found

    def _trial(self) -> dict[str, Any]:
        survivors, victim = self._members()[:-1], self._members()[-1]
        watched = self.reports[survivors[0].name]
        epoch = self.master.group_state()["epoch"]
        seen = sum(1 for r in watched if r.get("op") == epoch)

        def completed() -> list[float]:
            self._collect()
            return [r["t"] for r in watched if r.get("op") == epoch]

        # Kill half way through an all-reduce: half an operation after a survivor completed one,
        # the operation's time taken from the survivor's last three.
        _wait(
            self.peers, lambda: len(completed()) >= max(3, seen + 1), _STEADY_TIMEOUT, "all-reduces to time"
        )
        times = completed()[-3:]
        operation = statistics.median(b - a for a, b in zip(times, times[1:]))
        time.sleep(operation / 2)
        killed_at = time.monotonic()
        victim.kill()
        firsts = self._wait_steady(epoch, "the survivors of a SIGKILL to run a correct all-reduce")
        ended = [
            when
            for when, what in self.master.events
            if when >= killed_at and f": epoch {epoch} ended" in what
        ]
        aborts = [
            [r["t"] for r in self.reports[p.name] if "aborted" in r and r["t"] >= killed_at]
            for p in survivors
        ]
        record = {
            "epoch": epoch,
            "operation_s": operation,
            "detect_s": ended[0] - killed_at if ended else math.nan,
            # A survivor whose all-reduce had finished everywhere keeps it and hears of the failure from
            # its next one: every survivor raises Aborted once.
            "aborted_s": max(min(found) for found in aborts) - killed_at if all(aborts) else math.nan,
            "recovery_s": max(op["t"] for op in firsts.values()) - killed_at,
            "recovery_survivors_s": sorted(op["t"] - killed_at for op in firsts.values()),
        }
        # Back to three: a newcomer in the victim's namespace.
        epoch = self.master.group_state()["epoch"]
        self._spawn(victim.slot, 0)
        self._wait_steady(epoch, "a newcomer to join and run a correct all-reduce")
        return record

    def _counts(self) -> dict[str, int]:
        self._collect()
        totals = {"ops": 0, "verified": 0, "unverified": 0, "aborts": 0, "mismatches": 0}
        for reports in self.reports.values():
            last = next((r for r in reversed(reports) if "ops" in r), {})
            for key in totals:
                totals[key] += int(last.get(key, 0))
        return totals
