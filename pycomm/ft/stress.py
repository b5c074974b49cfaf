"""The churn stress run behind ``pycomm stress``: a master and N peer processes on loopback, with
peers killed (SIGKILL), stalled (SIGSTOP, then SIGCONT after the master evicted them) and started
while they run a checked training-like loop (:mod:`pycomm.ft._stress_peer`).

Correctness is checked three ways: each peer compares every all-reduce with its exact result
and checks that an aborted operation left its buffer as it was; every peer prints the hash of its
shared state after each step, and no two peers may print different hashes for one revision; a
member that already held the state must never have to fetch it again. A run fails on any
mismatch, on a peer that crashes, and on a hang (no step finished for ``hang_timeout`` seconds).

Victims are chosen among the current members that are neither stalled nor alone enough to end
the group: an event needs three such members that hold the shared state (finished a step since they
joined), so the group and its state always outlive it.

With ``wan`` (link settings as :func:`pycomm.testing.netem.parse_link` reads them), the run happens
over emulated WAN links: the master and every peer slot get a network namespace of a
:class:`pycomm.testing.netem.Network` (the master's is slot 0; a started peer takes a slot whose
peer is gone), every link between two of them has the given round trip, rate and loss, and the
peers keep their all-reduces on TCP (no shared memory) so that everything crosses the links.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Callable

from pycomm.errors import InvalidArgumentError
from pycomm.ft.master import Master


@dataclasses.dataclass
class StressConfig:
    peers: int = 4
    seconds: float = 30.0
    churn: bool = True
    seed: int | None = None
    size: int = 1 << 16  # elements per all-reduce
    concurrency: int = 3  # all-reduces in flight per step
    event_interval: tuple[float, float] = (1.0, 2.5)
    stall_seconds: tuple[float, float] = (2.0, 3.0)
    hang_timeout: float = 20.0
    heartbeat_timeout: float = 1.5
    op_timeout: float = 30.0
    recovery_timeout: float = 2.0
    wan: dict | None = None  # emulated links: {"rtt": s, "rate": bit/s, "loss": fraction}

    def over_the_wan(self) -> StressConfig:
        """The timeouts a run over emulated links needs: each control round trip and each recovery
        report crosses a link, and the emulation itself takes CPU from the peers."""
        rtt = float((self.wan or {}).get("rtt", 0.0))
        return dataclasses.replace(
            self,
            heartbeat_timeout=max(self.heartbeat_timeout, 1.5 + 20 * rtt),
            recovery_timeout=max(self.recovery_timeout, 2.0 + 40 * rtt),
        )

    def check(self) -> None:
        if not 2 <= self.peers <= 64:
            raise InvalidArgumentError(f"peers must be in [2, 64], got {self.peers}")
        if self.churn and self.peers < 3:
            raise InvalidArgumentError("a churn run needs at least 3 peers (events never leave fewer than 2)")
        if self.seconds <= 0 or self.size < 1 or not 1 <= self.concurrency <= 16:
            raise InvalidArgumentError("seconds and size must be positive, concurrency in [1, 16]")


class _Peer:
    """One peer process and what it printed."""

    def __init__(
        self,
        index: int,
        command: list[str],
        workdir: str,
        on_line: Callable[[_Peer, dict], None],
        launch: Callable[..., subprocess.Popen] = subprocess.Popen,
        slot: int = 0,
    ) -> None:
        self.index = index
        self.slot = slot
        self.peer_ids: set[str] = set()
        self.stalled_until: float | None = None
        self.killed = False  # by the run, on purpose
        self.holds_state = False  # finished a step (so holds the shared state) since it last joined
        self.recent: list[str] = []  # its last abort and eviction records, for a failed run's report
        self.reported = False  # its unexpected exit is counted
        self.stderr_path = os.path.join(workdir, f"peer{index}.err")
        with open(self.stderr_path, "w") as stderr:
            self.process = launch(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=workdir, start_new_session=True
            )
        self._on_line = on_line
        self.reader = threading.Thread(target=self._read, name=f"stress-peer-{index}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"error": f"unreadable output: {line[:200]!r}"}
            self._on_line(self, record)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stderr_tail(self, lines: int = 15) -> str:
        with open(self.stderr_path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])


class StressRun:
    def __init__(
        self,
        config: StressConfig,
        report: Callable[[str, bool], None] | None = None,
        extra_peer_args: list[str] | None = None,
    ) -> None:
        config.check()
        if config.wan is not None:
            config = config.over_the_wan()
        self._extra_peer_args = list(extra_peer_args or [])
        self.config = config
        self._report = report or (lambda text, final: None)
        self._random = random.Random(config.seed)
        self._lock = threading.Lock()
        self._peers: list[_Peer] = []
        self._hashes: dict[int, str] = {}
        self._last_progress = time.monotonic()
        self.counts = {
            "steps": 0,
            "ops": 0,
            "aborts": 0,
            "joins": 0,
            "kills": 0,
            "stalls": 0,
            "evictions": 0,
            "mismatches": 0,
            "errors": 0,
        }
        self._peer_counters: dict[int, dict] = {}
        self.longest_stall = 0.0
        self._network = None  # the emulated WAN of a run with wan settings
        self._members: set[str] = set()  # the members last seen at the master
        self._master_log: list[str] = []
        self.problems: list[str] = []
        self.max_revision = -1

    # -- peer output --------------------------------------------------------------------------

    def _on_line(self, peer: _Peer, record: dict) -> None:
        with self._lock:
            now = time.monotonic()
            if "joined" in record:
                self.counts["joins"] += 1
                peer.peer_ids.add(str(record.get("peer_id")))
                peer.holds_state = False  # a new session starts from an empty state
                peer.recent.append(json.dumps(record)[:400])
            elif "revision" in record:
                peer.holds_state = True
                self.counts["steps"] += 1
                self.longest_stall = max(self.longest_stall, now - self._last_progress)
                self._last_progress = now
                revision = int(record["revision"])
                self.max_revision = max(self.max_revision, revision)
                digest = self._hashes.setdefault(revision, record["hash"])
                if digest != record["hash"]:
                    self._problem(
                        f"revision {revision}: peer {peer.index} holds state {record['hash']}, "
                        f"another peer {digest}"
                    )
                if record.get("fetched") and not record.get("fresh"):
                    self._problem(
                        f"peer {peer.index} had to fetch {record['fetched']} bytes of state it held"
                    )
                self._peer_counters[peer.index] = {
                    k: record.get(k, 0) for k in ("ops", "aborts", "evictions")
                }
            elif "mismatch" in record:
                self._problem(f"peer {peer.index}: {record['mismatch']}")
            elif "evicted" in record or "aborted" in record:
                peer.recent.append(json.dumps(record)[:400])
                del peer.recent[:-20]
            elif "error" in record:
                peer.reported = True
                self.counts["errors"] += 1
                self.problems.append(f"peer {peer.index} failed: {record['error']}")

    def _problem(self, text: str) -> None:
        self.counts["mismatches"] += 1
        self.problems.append(text)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> dict:
        config = self.config
        started = time.monotonic()
        hang = False
        with contextlib.ExitStack() as stack:
            master = stack.enter_context(self._master())
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pycomm-stress-"))
            command = [
                sys.executable,
                "-m",
                "pycomm.ft._stress_peer",
                "--master",
                master.address,
                "--size",
                str(config.size),
                "--concurrency",
                str(config.concurrency),
                "--timeout",
                str(config.op_timeout),
                *self._extra_peer_args,
            ]
            try:
                for _ in range(config.peers):
                    self._spawn(command, workdir)
                next_event = started + self._random.uniform(*config.event_interval)
                next_report = started + 1.0
                self._last_progress = time.monotonic()
                while time.monotonic() - started < config.seconds:
                    time.sleep(0.05)
                    now = time.monotonic()
                    self._resume_stalled(now)
                    self._check_exits()
                    self._check_continuity(master)
                    if config.churn and now >= next_event:
                        self._event(master, command, workdir)
                        next_event = now + self._random.uniform(*config.event_interval)
                    with self._lock:
                        gap = now - self._last_progress
                    if gap > config.hang_timeout:
                        hang = True
                        self.problems.append(
                            f"no step finished for {gap:.1f} s (hang); peer stacks are in stderr"
                        )
                        for peer in self._peers:
                            if peer.running:
                                peer.signal(signal.SIGCONT)
                                peer.signal(signal.SIGUSR1)
                        time.sleep(1.0)
                        break
                    if now >= next_report:
                        self._report(self._progress_line(now - started, master), False)
                        next_report = now + 1.0
                with self._lock:
                    self.longest_stall = max(self.longest_stall, time.monotonic() - self._last_progress)
                epoch = master.group_state()["epoch"]
                self._master_log = [f"{when - started:7.2f}s {text}" for when, text in master.events[-60:]]
            finally:
                stderr_tails = self._stop_all(hang)
        summary = self._summary(time.monotonic() - started, epoch, hang)
        if hang or self.counts["errors"]:
            summary["peer_stderr"] = stderr_tails
        if not summary["passed"]:
            summary["master_log"] = self._master_log
            summary["peer_events"] = {peer.index: peer.recent for peer in self._peers if peer.recent}
        self._report(self._progress_line(summary["seconds"], None), True)
        return summary

    def _master(self) -> contextlib.AbstractContextManager:
        """The master: in this process, on loopback or (with emulated links) in slot 0's namespace."""
        config = self.config
        timeouts = {
            "heartbeat_timeout": config.heartbeat_timeout,
            "recovery_timeout": config.recovery_timeout,
        }
        if config.wan is None:
            return Master(**timeouts)
        from pycomm.testing import netem

        network = netem.Network(peers=config.peers + 1, **config.wan)
        self._network = network
        try:
            master = network.call_in(0, lambda: Master(host=network.address(0), **timeouts))
        except BaseException:
            network.close()
            raise

        @contextlib.contextmanager
        def running() -> Iterator[Master]:
            try:
                yield master
            finally:
                master.close()
                network.close()

        return running()

    def _check_continuity(self, master: Master) -> None:
        """Events never take the last healthy members, so every epoch keeps a member of the one
        before; an epoch of newcomers only would restart the shared state from revision 0."""
        members = set(master.group_state()["members"])
        if self._members and members and not members & self._members:
            self.problems.append(
                "every member left at once (evicted or failed together) and the group restarted from "
                f"newcomers; the master said: {' | '.join(text for _, text in master.events[-12:])}"
            )
            with self._lock:
                self.counts["errors"] += 1
        if members:
            self._members = members

    def _spawn(self, command: list[str], workdir: str) -> None:
        if self._network is None:
            self._peers.append(_Peer(len(self._peers), command, workdir, self._on_line))
            return
        taken = {peer.slot for peer in self._peers if peer.running}
        slot = next(slot for slot in range(1, self.config.peers + 1) if slot not in taken)
        wan_command = [*command, "--host", self._network.address(slot), "--no-shared-memory"]
        launch = functools.partial(self._network.spawn, slot)
        self._peers.append(_Peer(len(self._peers), wan_command, workdir, self._on_line, launch, slot))

    def _resume_stalled(self, now: float) -> None:
        for peer in self._peers:
            if peer.stalled_until is not None and now >= peer.stalled_until:
                peer.signal(signal.SIGCONT)
                peer.stalled_until = None

    def _check_exits(self) -> None:
        for peer in self._peers:
            if not peer.running and not peer.killed and not peer.reported:
                peer.reported = True
                with self._lock:
                    self.counts["errors"] += 1
                    self.problems.append(f"peer {peer.index} exited with status {peer.process.returncode}")

    def _event(self, master: Master, command: list[str], workdir: str) -> None:
        members = set(master.group_state()["members"])
        victims = [p for p in self._peers if p.running and p.stalled_until is None and p.peer_ids & members]
        running = sum(1 for p in self._peers if p.running)
        choices = []
        # At least two healthy members that hold the shared state must outlive the event: a group
        # left with newcomers only would start the state over (legitimately, but not what this run
        # checks). Over slow links, recoveries last long enough for events to pile up.
        with self._lock:
            holders = sum(1 for p in victims if p.holds_state)
        if len(victims) >= 3 and holders >= 3:
            choices += ["kill", "stall"]
        if running < self.config.peers:
            choices.append("start")
        if not choices:
            return
        action = self._random.choice(choices)
        if action == "start":
            self._spawn(command, workdir)
            return
        victim = self._random.choice(victims)
        if action == "kill":
            victim.killed = True
            victim.signal(signal.SIGKILL)
            self.counts["kills"] += 1
        else:
            victim.signal(signal.SIGSTOP)
            victim.stalled_until = time.monotonic() + self._random.uniform(*self.config.stall_seconds)
            self.counts["stalls"] += 1

    def _stop_all(self, keep_stderr: bool) -> dict:
        tails = {}
        for peer in self._peers:
            if peer.running:
                peer.killed = True
                peer.signal(signal.SIGCONT)
                peer.signal(signal.SIGKILL)
        for peer in self._peers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                peer.process.wait(timeout=10)
            peer.reader.join(timeout=5)
            peer.process.stdout.close()
            # A killed peer cannot remove its shared-memory segments, and no survivor is left to.
            for peer_id in peer.peer_ids:
                for path in glob.glob(f"/dev/shm/pycomm-*-{peer_id}-*"):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            if keep_stderr or peer.reported:
                tails[peer.index] = peer.stderr_tail()
        return tails

    def _totals(self) -> dict:
        totals = dict(self.counts)
        for key in ("ops", "aborts", "evictions"):
            totals[key] = sum(counters.get(key, 0) for counters in self._peer_counters.values())
        return totals

    def _progress_line(self, elapsed: float, master: Master | None) -> str:
        with self._lock:
            totals = self._totals()
        world = ""
        if master is not None:
            state = master.group_state()
            world = f" epoch {state['epoch']} world {len(state['members'])}"
        return (
            f"{elapsed:5.1f}s{world} revision {self.max_revision} ops {totals['ops']} "
            f"aborts {totals['aborts']} "
            f"joins {totals['joins']} kills {totals['kills']} stalls {totals['stalls']} "
            f"evictions {totals['evictions']} mismatches {totals['mismatches']} errors {totals['errors']}"
        )

    def _summary(self, seconds: float, epoch: int, hang: bool) -> dict:
        with self._lock:
            totals = self._totals()
        passed = not hang and totals["mismatches"] == 0 and totals["errors"] == 0 and totals["steps"] > 0
        return {
            "passed": passed,
            "seconds": round(seconds, 2),
            "peers": self.config.peers,
            "churn": self.config.churn,
            "wan": self.config.wan,
            "revisions": self.max_revision + 1,
            "epochs": epoch,
            **totals,
            "longest_stall_s": round(self.longest_stall, 3),
            "hang": hang,
            "problems": self.problems[:50],
        }


def run_stress(
    config: StressConfig,
    report: Callable[[str, bool], None] | None = None,
    extra_peer_args: list[str] | None = None,
) -> dict:
    """Runs the stress; `extra_peer_args` go to every peer's command line."""
    return StressRun(config, report, extra_peer_args).run()
