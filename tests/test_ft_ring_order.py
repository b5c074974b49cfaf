"""Ring order from measured bandwidths: the solver against brute force and with slow links to
avoid, and optimize_topology() moving a group onto the new ring (the master's member order, a
correct all-reduce afterwards), measuring real links on loopback, and refusing inconsistent input.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading

import numpy as np
import pytest

from pycomm.errors import Aborted, CommError, InvalidArgumentError
from pycomm.ft._links import MAX_PROBE_BYTES, PROBE_CHUNK, SETTLE_WINDOWS, _absorb_probe, _Settling
from pycomm.ft._protocol import Channel, Message
from pycomm.ft.ring_order import EXACT_LIMIT, best_ring, score
from pycomm.testing.ft import local_group, on_all


def _brute_force(matrix: list[list[float]]) -> tuple[float, float]:
    n = len(matrix)
    scores = [score([0, *rest], matrix) for rest in itertools.permutations(range(1, n))]
    bottleneck = max(s[0] for s in scores)
    return bottleneck, min(s[1] for s in scores if s[0] >= bottleneck * (1 - 1e-9))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_exact_solver_finds_the_best_ring(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(5):
        matrix = rng.uniform(1e8, 1e9, (n, n)).tolist()
        order = best_ring(matrix)
        assert sorted(order) == list(range(n)) and order[0] == 0
        best = _brute_force(matrix) if n > 1 else (np.inf, 0.0)
        got = score(order, matrix)
        assert got[0] == pytest.approx(best[0]) and got[1] == pytest.approx(best[1])


def test_a_slow_link_is_avoided_in_one_direction_only() -> None:
    matrix = np.full((6, 6), 1e9)
    matrix[2][3] = 1e7  # 2 -> 3 is slow; 3 -> 2 is not
    order = best_ring(matrix.tolist())
    hops = {(order[k], order[(k + 1) % 6]) for k in range(6)}
    assert (2, 3) not in hops
    assert score(order, matrix.tolist())[0] == 1e9


def test_the_heuristic_avoids_slow_links_beyond_the_exact_limit() -> None:
    n = EXACT_LIMIT + 4
    rng = np.random.default_rng(0)
    matrix = rng.uniform(0.8e9, 1e9, (n, n))
    slow = [(0, 1), (1, 0), (5, 6), (7, 2), (2, 7), (9, 3)]
    for i, j in slow:
        matrix[i][j] = 1e6
    # The natural order 0, 1, 2, ... uses a slow hop; a good ring uses none.
    assert score(list(range(n)), matrix.tolist())[0] == 1e6
    order = best_ring(matrix.tolist())
    assert sorted(order) == list(range(n)) and order[0] == 0
    assert score(order, matrix.tolist())[0] >= 0.8e9


@pytest.mark.parametrize(
    "matrix, message",
    [([], "square"), ([[0, 1], [1]], "square"), ([[0, -1], [1, 0]], "bandwidth\\[0\\]\\[1\\]")],
)
def test_bad_matrices_are_refused(matrix, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        best_ring(matrix)


def test_optimize_topology_moves_the_group_onto_the_faster_ring() -> None:
    with local_group(4, shared_memory=False) as (master, comms):
        matrix = np.full((4, 4), 1e9)
        matrix[0][1] = 1e7  # the current ring's hop from rank 0 to rank 1 is slow

        def run(comm):
            before = comm.members
            epoch = comm.epoch
            plan = comm.optimize_topology(bandwidths=matrix)
            x = np.arange(1000, dtype=np.float32) * (comm.rank + 1)
            comm.all_reduce(x)
            again = comm.optimize_topology(bandwidths=np.full((4, 4), 1e9))
            return before, epoch, plan, comm.epoch, comm.members, x, again

        results = on_all(comms, run)
        ring_at_the_master = master.group_state()["members"]
    before, epoch, plan, new_epoch, members, x, again = results[0]
    assert ring_at_the_master == members
    assert plan.changed and new_epoch == epoch + 1
    assert plan.order == members and plan.bottleneck == 1e9
    assert (before[0], before[1]) not in {(members[k], members[(k + 1) % 4]) for k in range(4)}
    assert not again.changed  # every ring is as fast now: no new epoch
    for _, _, other, _, other_members, other_x, _ in results:
        assert other.order == plan.order and other_members == members
        assert other_x.tobytes() == x.tobytes()
    np.testing.assert_array_equal(x, np.arange(1000, dtype=np.float32) * 10)


def test_members_that_pass_different_min_gains_decide_alike() -> None:
    # The best ring is 20% faster: only a member asking for less than that would move; all use the
    # largest min_gain, so none does (a member that moved alone would wait for the others in vain).
    with local_group(3, shared_memory=False) as (_, comms):
        matrix = np.full((3, 3), 1e9)
        matrix[0][1] = 1e9 / 1.2

        def run(comm):
            epoch = comm.epoch
            plan = comm.optimize_topology(bandwidths=matrix, min_gain=0.05 if comm.rank == 0 else 0.5)
            return plan.changed, epoch, comm.epoch

        results = on_all(comms, run, timeout=30)
    assert all(not changed and epoch == after for changed, epoch, after in results)


def test_a_group_of_one_has_no_ring_to_optimize() -> None:
    with local_group(1, connections=2) as (_, (comm,)):
        epoch = comm.epoch
        for _ in range(2):
            plan = comm.optimize_topology()
            assert not plan.changed and comm.epoch == epoch
        x = np.arange(10, dtype=np.float32)
        comm.all_reduce(x)
        np.testing.assert_array_equal(x, np.arange(10, dtype=np.float32))


def test_optimize_topology_measures_every_link_on_loopback() -> None:
    # A link_bandwidth this low starts every pool at 1, as the measurement will size it on loopback:
    # nothing to resize (with the 10 Gbit/s default, a connect slowed by a busy machine can start one
    # at 2 or more, and the measurement then moves the group into a new epoch to shrink it).
    with local_group(3, shared_memory=False, link_bandwidth=1e6) as (_, comms):

        def run(comm):
            plan = comm.optimize_topology(probe_bytes=1 << 20, min_gain=1e9)  # measure, keep the ring
            return plan, comm.epoch

        results = on_all(comms, run)
    for plan, epoch in results:
        assert not plan.changed and epoch == results[0][1]
        assert np.array_equal(plan.bandwidth, results[0][0].bandwidth)  # one matrix, agreed
        off_diagonal = plan.bandwidth[~np.eye(3, dtype=bool)]
        assert np.all(off_diagonal > 0) and np.all(np.diag(plan.bandwidth) == 0)
        assert len(plan.connections) == 3 and all(pool >= 1 for pool in plan.connections)


def test_without_tcp_info_a_probe_times_its_whole_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    from pycomm.ft import _links

    monkeypatch.setattr(_links, "_tcp_progress", lambda channels: None)  # as where TCP_INFO is missing
    with local_group(2, shared_memory=False) as (_, comms):
        plans = on_all(comms, lambda comm: comm.optimize_topology(probe_bytes=4 << 20, min_gain=1e9))
    for plan in plans:
        assert np.all(plan.bandwidth[~np.eye(2, dtype=bool)] > 0)
        assert len(plan.connections) == 2 and all(pool >= 1 for pool in plan.connections)


def test_a_probe_that_fails_aborts_the_call_everywhere_and_the_next_call_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pycomm.ft import communicator

    measure = communicator.measure_bandwidth
    with local_group(3, shared_memory=False, link_bandwidth=1e6) as (_, comms):
        broken = {comms[2].peer_id}

        def flaky(*args, **link):  # the probes of one member fail, as if its link went down
            if link["sender"] in broken:
                raise CommError("the link went down")
            return measure(*args, **link)

        monkeypatch.setattr(communicator, "measure_bandwidth", flaky)
        epoch = comms[0].epoch

        def run(comm):
            try:
                comm.optimize_topology(probe_bytes=1 << 20, min_gain=1e9)
            except Aborted as error:
                return str(error)
            return "no error"

        errors = on_all(comms, run)
        assert "probing the link to" in errors[2] and "the link went down" in errors[2], errors
        assert all(error != "no error" for error in errors), errors  # every member is told
        assert all(comm.epoch > epoch for comm in comms)
        broken.clear()
        plans = on_all(comms, lambda comm: comm.optimize_topology(probe_bytes=1 << 20, min_gain=1e9))
        assert all(plan.order == plans[0].order for plan in plans)
        sums = on_all(comms, lambda comm: (x := np.ones(8), comm.all_reduce(x))[0])
        assert all(np.all(x == 3) for x in sums)


def test_members_with_different_matrices_are_refused_everywhere() -> None:
    with local_group(2, shared_memory=False) as (_, comms):

        def run(comm):
            try:
                comm.optimize_topology(bandwidths=np.full((2, 2), 1e9 + comm.rank))
            except InvalidArgumentError as error:
                return str(error)
            return "accepted"

        assert on_all(comms, run) == ["the members passed different bandwidth matrices"] * 2


# ----- the probe's rate -----


def feed(settling: _Settling, rates: list[float], step: float = 0.01, round_trip: float = 0.05) -> float:
    """Acknowledged bytes growing at ``rates[k]`` bytes/s during sample k; returns the time reached."""
    now, acked = 0.0, 0
    for rate in rates:
        now += step
        acked += int(rate * step)
        settling.add(now, acked, round_trip)
        if settling.settled:
            break
    return now


def test_a_probe_settles_on_the_plateau_and_leaves_out_the_ramp() -> None:
    # 50 ms round trips: 0.2 s windows. TCP's start-up doubles the rate each window, then the link
    # is full at 100 MB/s, the windows alternating 10% above and below (acknowledgements in bursts).
    ramp = [rate for rate in (6e6, 12e6, 25e6, 50e6) for _ in range(20)]
    plateau = [rate for rate in (110e6, 90e6) * 10 for _ in range(20)]
    settling = _Settling(0.0, 0)
    ended = feed(settling, ramp + plateau)
    assert settling.settled
    assert ended == pytest.approx(0.01 * (len(ramp) + 20 * (SETTLE_WINDOWS + 1)))  # no longer than needed
    # The best window (110 MB/s) is left out with the ramp: the windows after it average 100 MB/s
    # (two 90s and one 110 over three windows here: 96.7).
    assert settling.best == pytest.approx(110e6, rel=0.01)
    assert settling.rate == pytest.approx((90e6 + 110e6 + 90e6) / 3, rel=0.01)


def test_a_rate_that_keeps_growing_has_not_settled() -> None:
    settling = _Settling(0.0, 0)
    feed(settling, [1e6 * 1.1**window for window in range(40) for _ in range(20)])
    assert not settling.settled
    assert settling.rate == settling.best  # nothing after the best window: its own rate


def test_windows_before_the_first_acknowledged_byte_are_no_plateau() -> None:
    # Streams that start late (a busy machine) show empty windows first: no settling at rate 0.
    settling = _Settling(0.0, 0)
    feed(settling, [0.0] * 200 + [50e6] * 200)
    assert settling.settled and settling.rate == pytest.approx(50e6, rel=0.01)


def test_no_rate_before_a_whole_window() -> None:
    settling = _Settling(0.0, 0)
    feed(settling, [1e9] * 10)  # 0.1 s of a 0.2 s window
    assert settling.rate == 0 and not settling.settled


def test_a_link_whose_pool_cannot_be_sized_closes_its_socket() -> None:
    from pycomm.ft._links import open_link

    def refuse(round_trip: float) -> int:
        raise InvalidArgumentError(f"no pool for a round trip of {round_trip} s")

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            with pytest.raises(InvalidArgumentError, match="no pool for a round trip"):
                open_link(
                    "127.0.0.1",
                    port,
                    kind="ring",
                    group=0,
                    epoch=1,
                    sender="a",
                    receiver="b",
                    secret=None,
                    timeout=5.0,
                    stripes=refuse,
                )
        assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([PROBE_CHUNK + 1], "a probe chunk of 1048577 bytes after 0"),
        ([-5], "a probe chunk of -5 bytes"),
        ([PROBE_CHUNK] * (MAX_PROBE_BYTES // PROBE_CHUNK) + [1], f"after {MAX_PROBE_BYTES}"),
    ],
)
def test_a_probe_link_refuses_chunks_it_was_not_built_for(lengths: list[int], message: str) -> None:
    here, there = socket.socketpair()
    prober, absorber = Channel(here), Channel(there)
    failure: list[BaseException] = []

    def absorb() -> None:
        try:
            _absorb_probe(absorber)
        except CommError as error:
            failure.append(error)

    thread = threading.Thread(target=absorb, daemon=True)
    thread.start()
    try:
        chunk = memoryview(bytes(PROBE_CHUNK))
        for length in lengths[:-1]:  # accepted chunks, then the one refused (its bytes never sent)
            prober.send(Message.PROBE, {"length": length})
            prober.send_raw(chunk[:length], timeout=10)
        prober.send(Message.PROBE, {"length": lengths[-1]})
        thread.join(timeout=60)
        assert len(failure) == 1 and message in str(failure[0])
    finally:
        prober.close()
        absorber.close()
