"""In-process groups of pycomm.ft peers for tests and examples: a master and N communicators in one
process, each peer driven by its own thread (the ring engines release the GIL, so the peers run
concurrently). Fault tests that kill or stall a peer need real processes (:class:`LocalCluster`).

    with local_group(3) as (master, comms):
        results = on_all(comms, lambda comm: comm.all_gather(np.array([comm.rank])))
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, Callable

from pycomm.errors import CommTimeout


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Polls `predicate` until it holds; raises CommTimeout naming `what` if it has not after
    `timeout` seconds (a bound against a hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise CommTimeout(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.01)


def on_all(comms: Sequence[Any], fn: Callable[[Any], Any], timeout: float = 60.0) -> list[Any]:
    """fn(comm) on every communicator at once, one thread each; returns the results in order and
    raises the first exception any peer raised (after all threads ended)."""
    results: list[Any] = [None] * len(comms)
    errors: list[BaseException | None] = [None] * len(comms)

    def run(index: int) -> None:
        try:
            results[index] = fn(comms[index])
        except BaseException as error:  # handed to the caller below
            errors[index] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(comms))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [index for index, thread in enumerate(threads) if thread.is_alive()]
    if stuck:
        # Where each unfinished peer waits, and what the others ended with: the only record of an
        # in-process hang.
        frames = sys._current_frames()
        lines = [f"on_all: peer(s) {stuck} did not finish within {timeout:g} s"]
        for index, thread in enumerate(threads):
            if index in stuck and thread.ident in frames:
                stack = "".join(traceback.format_stack(frames[thread.ident])[-6:])
                lines.append(f"--- peer {index} (epoch {_epoch(comms[index])}) waits in:\n{stack}")
            else:
                lines.append(f"--- peer {index} (epoch {_epoch(comms[index])}) ended with {errors[index]!r}")
        raise CommTimeout("\n".join(lines))
    for error in errors:
        if error is not None:
            raise error
    return results


def _epoch(comm: Any) -> Any:
    return getattr(comm, "epoch", "?")


def admit_all(members: Sequence[Any], newcomers: Sequence[Any], timeout: float = 30.0) -> None:
    """Connects `newcomers` and has `members` (all of one group) admit them together, with the usual
    ``if pending_peers(): update_topology()`` step once every newcomer is waiting."""
    if not members:
        raise ValueError("admit_all needs at least one member; connect() the first peer alone")
    connecting = [
        threading.Thread(target=c.connect, kwargs={"timeout": timeout}, daemon=True) for c in newcomers
    ]
    for thread in connecting:
        thread.start()
    deadline = time.monotonic() + timeout
    while members[0]._pending_count < len(newcomers):
        if time.monotonic() > deadline:
            raise CommTimeout(f"admit_all: {len(newcomers)} newcomers did not all register in {timeout:g} s")
        time.sleep(0.005)

    def admit(comm: Any) -> None:
        if comm.pending_peers():
            comm.update_topology()

    on_all(members, admit, timeout)
    for thread in connecting:
        thread.join(max(0.0, deadline - time.monotonic()))
    expected = len(members) + len(newcomers)
    if any(comm.world_size != expected for comm in [*members, *newcomers]):
        raise CommTimeout(f"admit_all: the group did not reach {expected} peers within {timeout:g} s")


@contextlib.contextmanager
def local_group(
    size: int, *, secret: str | bytes | None = None, master_options: dict | None = None, **options: Any
) -> Iterator[tuple[Any, list[Any]]]:
    """A master and `size` connected communicators in this process; all closed on exit."""
    from pycomm.ft import Communicator, Master

    master = Master(secret=secret, **(master_options or {}))
    comms = [Communicator(master.address, secret=secret, **options) for _ in range(size)]
    try:
        comms[0].connect(timeout=30)
        admit_all(comms[:1], comms[1:])
        yield master, comms
    finally:
        for comm in comms:
            comm.close()
        master.close()
