"""What a finished child left behind, and the errors that report a failed or hung launch.

A failure report carries every child's output, not just the failing one's: in a collective the rank
that raised is often not the rank whose mistake caused it. Each stream is cut to its last lines so a
chatty child cannot bury the others.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pycomm.errors import PycommError

TAIL_LINES = 40
TAIL_CHARACTERS = 4000


@dataclass(frozen=True)
class ProcessResult:
    """One child: an MPI rank or a local process.

    ``returncode`` follows :mod:`subprocess`: negative for a signal, and None where the child did not
    exit by itself and nobody saw how it ended (an MPI rank killed by the launcher). ``value`` is a
    function target's return value. ``elapsed`` is the child's lifetime (an MPI rank's is the whole
    job's). ``running`` marks a snapshot taken for an error report while the child still ran.
    """

    name: str
    pid: int | None
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool = False
    killed_by_harness: bool = False
    value: Any = field(default=None, repr=False)
    running: bool = False

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that ended the child, if one did."""
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:
            return None

    @property
    def ok(self) -> bool:
        """Exited with status 0, or was killed on purpose through the harness (``kill()``)."""
        return not self.running and (self.killed_by_harness or (self.returncode == 0 and not self.timed_out))

    def status(self) -> str:
        """How the child ended, in words."""
        if self.running:
            return "still running"
        if self.timed_out:
            return "killed at its timeout"
        if self.returncode is None:
            return "did not exit by itself (killed by the launcher or the harness)"
        if self.returncode < 0:
            name = self.signal.name if self.signal else f"signal {-self.returncode}"
            reason = " by the harness" if self.killed_by_harness else ""
            return f"killed by {name}{reason}"
        return f"exit status {self.returncode}"


@dataclass(frozen=True)
class MpiResult:
    """An ``mpiexec`` job: the launcher's own status and output, and one :class:`ProcessResult` per rank."""

    command: Sequence[str]
    launcher_pid: int
    returncode: int | None
    ranks: Sequence[ProcessResult]
    launcher_stdout: str
    launcher_stderr: str
    elapsed: float
    timed_out: bool = False

    @property
    def stdouts(self) -> list[str]:
        return [rank.stdout for rank in self.ranks]

    @property
    def stderrs(self) -> list[str]:
        return [rank.stderr for rank in self.ranks]

    @property
    def values(self) -> list[Any]:
        """Each rank's return value (function targets), in rank order."""
        return [rank.value for rank in self.ranks]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and all(rank.ok for rank in self.ranks)


class JobFailed(PycommError, RuntimeError):
    """A launched job or process failed; the message holds every child's output and the command line."""

    def __init__(self, message: str, results: Sequence[ProcessResult] = (), mpi: MpiResult | None = None):
        super().__init__(message)
        self.results = list(results)
        self.mpi = mpi


class JobTimeout(JobFailed, TimeoutError):
    """A launched job or process passed its deadline and was killed with all its descendants."""


def tail(text: str, lines: int = TAIL_LINES, characters: int = TAIL_CHARACTERS) -> tuple[str, str]:
    """The end of ``text`` and a note saying how much was cut ('' when nothing was)."""
    all_lines = text.splitlines()
    kept = all_lines[-lines:]
    body = "\n".join(kept)
    if len(body) > characters:
        body = "..." + body[-characters:]
    if len(kept) < len(all_lines) or body.startswith("..."):
        return body, f" (last {len(kept)} of {len(all_lines)} lines, at most {characters} characters)"
    return body, ""


def _stream_section(label: str, text: str) -> list[str]:
    if not text.strip():
        return [f"--- {label}: empty ---"]
    body, note = tail(text.rstrip("\n"))
    return [f"--- {label}{note} ---", body]


def format_outputs(results: Sequence[ProcessResult]) -> str:
    """Every child's status, standard output and standard error, labelled."""
    lines: list[str] = []
    for result in results:
        pid = f", pid {result.pid}" if result.pid else ""
        lines.append(f"===== {result.name}{pid}: {result.status()} =====")
        lines += _stream_section(f"{result.name} stdout", result.stdout)
        lines += _stream_section(f"{result.name} stderr", result.stderr)
    return "\n".join(lines)


def format_launcher(stdout: str, stderr: str) -> str:
    lines = ["===== mpiexec (the launcher's own output) ====="]
    lines += _stream_section("mpiexec stdout", stdout)
    lines += _stream_section("mpiexec stderr", stderr)
    return "\n".join(lines)
