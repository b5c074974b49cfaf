"""SharedState sync: only differing arrays move, from several holders at once; the rules (revision,
strategies, layouts, no holder left) give the same clear error on every member."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pycomm.errors import Aborted, CommError, InvalidArgumentError
from pycomm.ft import SharedState
from pycomm.testing.ft import local_group, on_all, wait_until


def test_a_receiver_fetches_only_differing_arrays_from_several_holders() -> None:
    with local_group(4) as (_, comms):
        receiver = comms[3].peer_id

        def sync(comm):
            behind = comm.peer_id == receiver
            state = SharedState(
                {
                    "same": np.arange(1000, dtype=np.int64),
                    "big": np.full(1 << 20, -1.0 if behind else 2.0, np.float32),
                    "small": np.full(10, 0 if behind else 9, np.uint8),
                },
                revision=0 if behind else 7,
            )
            return comm.peer_id, comm.sync_shared_state(state), state

        for peer_id, info, state in on_all(comms, sync):
            assert np.all(state.arrays["big"] == 2.0) and np.all(state.arrays["small"] == 9)
            assert state.revision == 7
            if peer_id == receiver:
                assert info.arrays_received == ("big", "small")
                assert info.bytes_received == (1 << 20) * 4 + 10
                assert info.holders == 3  # the big array came in parts from all three holders
            else:
                assert info.bytes_received == 0 and info.holders == 0


def test_identical_states_move_nothing_and_the_revision_rule_is_checked_everywhere() -> None:
    with local_group(3) as (_, comms):
        states = {c.peer_id: SharedState({"w": np.ones(100)}, revision=3) for c in comms}
        infos = on_all(comms, lambda c: c.sync_shared_state(states[c.peer_id]))
        assert all(info.bytes_received == 0 and info.revision == 3 for info in infos)

        def skip_a_revision(comm):
            states[comm.peer_id].revision = 5 if comm.rank == 1 else 4
            return comm.sync_shared_state(states[comm.peer_id])

        with pytest.raises(InvalidArgumentError, match="rank 1: revision 5 after revision 3"):
            on_all(comms, skip_a_revision)
        # A failed sync does not count: presenting 4 everywhere now works.
        for state in states.values():
            state.revision = 4
        assert all(i.revision == 4 for i in on_all(comms, lambda c: c.sync_shared_state(states[c.peer_id])))


def test_no_holder_left_and_differing_layouts_are_errors_on_every_member() -> None:
    with local_group(2) as (_, comms):
        with pytest.raises(CommError, match="no holder"):
            on_all(comms, lambda c: c.sync_shared_state(SharedState({"w": np.ones(4)}), "receive_only"))

        def layouts(comm):
            return comm.sync_shared_state(SharedState({"w": np.ones(4 + comm.rank)}))

        with pytest.raises(InvalidArgumentError, match="layouts differ"):
            on_all(comms, layouts)


def test_bad_shared_state_arguments() -> None:
    with pytest.raises(InvalidArgumentError):
        SharedState({})
    with pytest.raises(InvalidArgumentError, match="revision"):
        SharedState({"w": np.ones(2)}, revision=-1)
    with pytest.raises(InvalidArgumentError, match="contiguous"):
        SharedState({"w": np.ones((4, 4))[:, 0]})
    with local_group(1) as (_, (comm,)), pytest.raises(InvalidArgumentError, match="strategy"):
        comm.sync_shared_state(SharedState({"w": np.ones(2)}), strategy="majority")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count file descriptors")
def test_a_peer_whose_fetch_failed_part_way_does_not_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    import pycomm.ft.shared_state as shared_state

    with local_group(3, shared_memory=False) as (_, comms):
        states = {c.peer_id: SharedState({"w": np.zeros(1000)}, revision=0) for c in comms}
        on_all(comms, lambda c: c.sync_shared_state(states[c.peer_id]))
        fetcher = comms[0].peer_id
        states[fetcher].arrays["w"][:] = 5.0  # ranks 1 and 2 outvote it: it fetches their zeros
        for state in states.values():
            state.revision = 1

        def broken_fetch(comm, holder, jobs, errors):  # a holder dies half way through
            for _, target, _ in jobs:
                target[: len(target) // 2] = bytes([7]) * (len(target) // 2)
            errors.append("the holder went away")

        monkeypatch.setattr(shared_state, "_fetch_from", broken_fetch)
        with pytest.raises(CommError, match="the holder went away"):
            on_all(comms, lambda c: c.sync_shared_state(states[c.peer_id]))
        monkeypatch.undo()
        assert not np.all(states[fetcher].arrays["w"] == 5.0)  # part written
        # One holder leaves: the part-written peer and the last holder would tie 1:1, and the tie
        # goes to the lower rank; but the part-written one does not vote.
        comms[2].close()

        def sync(comm):
            while True:
                try:
                    return comm.sync_shared_state(states[comm.peer_id])
                except Aborted:
                    continue

        on_all(comms[:2], sync)
        for comm in comms[:2]:
            assert np.all(states[comm.peer_id].arrays["w"] == 0.0)


def test_repeated_failures_leak_no_descriptor_or_thread() -> None:
    import threading

    # A fixed pool: a pool sized from the connect round trip (connections=None) may open more links
    # in a later epoch on a loaded machine, which is not a leak.
    with local_group(3, connections=2) as (master, comms):
        on_all(comms, lambda c: c.all_reduce(np.ones(8)))
        fds, threads = _open_descriptors(), threading.active_count()
        for cycle in range(5):
            # One peer's ring breaks mid-operation: every peer's operation is abandoned, the
            # buffers are restored, and the next epoch works.
            def run(comm, tag=cycle + 1):
                x = np.full(1 << 18, comm.rank + 1.0)
                # A peer slow to submit (a loaded machine) may learn of the previous cycle's break
                # only now: its submission raises the Aborted it is owed, with nothing in flight.
                try:
                    work = comm.all_reduce_async(x, tag=tag)
                    if comm.rank == 0:
                        comm._engine.abort("a test broke this peer's ring")
                    work.wait()
                except Aborted:
                    assert np.all(x == comm.rank + 1.0)
                y = np.ones(8)
                while True:
                    try:
                        comm.all_reduce(y)
                        return y
                    except Aborted:
                        y[:] = 1

            assert all(np.all(y == 3) for y in on_all(comms, run))
        # The failed epochs' links close on their own threads, which a loaded machine runs late.
        wait_until(lambda: _open_descriptors() <= fds, "the failed epochs' descriptors are closed", 20.0)
        assert threading.active_count() <= threads + 1  # a link thread may still be finishing
        assert master.group_state()["epoch"] >= 6


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_segments_of_dead_processes_are_swept_at_connect() -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)  # a process that has exited
    stale = f"/dev/shm/pycomm-{pid}-{'a' * 32}-3"
    alive = f"/dev/shm/pycomm-{os.getpid()}-{'b' * 32}-3"
    for path in (stale, alive):
        with open(path, "wb") as handle:
            handle.write(b"x")
    try:
        with local_group(1):
            pass
        assert not os.path.exists(stale)
        assert os.path.exists(alive)  # this process still runs: its segments are its own business
    finally:
        for path in (stale, alive):
            if os.path.exists(path):
                os.unlink(path)
