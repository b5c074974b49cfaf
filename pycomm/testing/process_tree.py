"""Finding, freezing and killing every process a launch started, without leaving orphans.

A launched child is started in a new session, so ``killpg`` reaches it and the helpers it forks. That is
not enough for MPI: MPICH's ``hydra_pmi_proxy`` and every rank call ``setsid()``, so each sits in its own
session, and a rank that is orphaned (its proxy died) is reparented away from the launcher. The harness
therefore marks every launch with a unique token in the environment (``PYCOMM_TESTING_TOKEN``, which
the launcher, its proxies and the ranks all inherit) and, on Linux, finds the processes to kill from
``/proc``: the descendants of the launched process plus every process whose environment holds the token.

Processes are frozen with ``SIGSTOP`` before any is killed, so none can fork a new child or react to a
sibling's death while the tree is being collected; then all get ``SIGKILL``.

Where there is no ``/proc`` (macOS) the harness falls back to ``killpg`` on the launch's session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence

from pycomm.testing._child import STACK_DUMP_SIGNAL

TOKEN_VARIABLE = "PYCOMM_TESTING_TOKEN"

_PROC = "/proc"
# A process tree that keeps forking faster than it can be frozen is not something tests do; the bound
# only keeps a pathological child from looping the sweep forever.
_MAX_SWEEPS = 50


def has_proc_filesystem() -> bool:
    return os.path.isfile(os.path.join(_PROC, "self", "stat"))


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``, or None once it is gone."""
    try:
        with open(os.path.join(_PROC, str(pid), "stat"), "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name sits in parentheses and may itself contain spaces or ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 2:
        return None
    return fields[0], int(fields[1])


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from ``/proc`` (``R``, ``S``, ``T`` stopped, ``Z`` zombie ...)."""
    stat = _read_stat(pid)
    return None if stat is None else stat[0]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process. A zombie counts as dead: it runs no code and holds no sockets.

    The distinction matters because an orphan's zombie lingers until init reaps it, and some container
    inits never do.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_state(pid) not in ("Z", "X")


def _all_pids() -> list[int]:
    try:
        names = os.listdir(_PROC)
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def _environment_has(pid: int, entry: bytes) -> bool:
    try:
        with open(os.path.join(_PROC, str(pid), "environ"), "rb") as handle:
            return entry in handle.read().split(b"\0")
    except OSError:
        return False


def find_tree(root: int | None, token: str | None) -> set[int]:
    """Live descendants of ``root`` (itself included) and every live process carrying ``token``."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    entry = f"{TOKEN_VARIABLE}={token}".encode() if token else None
    for pid in _all_pids():
        stat = _read_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        parents[pid] = stat[1]
        if entry is not None and _environment_has(pid, entry):
            found.add(pid)
    if root is not None and root in parents:
        found.add(root)
    # Children appear after their parents in no guaranteed order, so grow the set to a fixed point.
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(os.getpid())
    return found


def _signal_each(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def signal_group(pgid: int, signum: int) -> bool:
    """``killpg`` that reports whether the group still existed."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_tree(root: int | None, token: str | None, *, session: int | None = None) -> set[int]:
    """Freeze, then SIGKILL, ``root``'s descendants and every process carrying ``token``.

    ``root`` must still be unreaped (or None): a reaped pid may already belong to someone else.
    ``session`` is the process group the launch was started in, signalled too. Returns the pids killed.
    """
    frozen: set[int] = set()
    if has_proc_filesystem():
        for _ in range(_MAX_SWEEPS):
            fresh = find_tree(root, token) - frozen
            if not fresh:
                break
            _signal_each(fresh, signal.SIGSTOP)
            frozen |= fresh
    if session is not None:
        signal_group(session, signal.SIGKILL)
    _signal_each(frozen, signal.SIGKILL)
    return frozen


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the deadline."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in remaining if pid_alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.01)


def dump_python_stacks(children: Sequence[tuple[int, str]], wait: float = 1.0) -> None:
    """Ask harness children (pid, stderr file) to print every thread's stack, and give them ``wait``
    seconds to do it. Best effort: a stopped child cannot answer and is skipped."""
    if STACK_DUMP_SIGNAL is None:
        return
    sizes: dict[str, int] = {}
    for pid, stderr_path in children:
        if not pid_alive(pid) or process_state(pid) in ("T", "t"):
            continue
        sizes[stderr_path] = _size(stderr_path)
        _signal_each([pid], STACK_DUMP_SIGNAL)
    if not sizes:
        return
    deadline = time.monotonic() + wait
    while sizes and time.monotonic() < deadline:
        time.sleep(0.01)
        sizes = {path: size for path, size in sizes.items() if _size(path) == size}
    # faulthandler writes a dump from its signal handler without blocking on anything, so once a
    # file has started to grow the rest follows within moments.
    time.sleep(0.05)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
