"""pycomm.ft over emulated WAN links: ``pycomm bench allreduce --wan`` reports every figure with every
all-reduce checked, and ``optimize_topology()`` moves the ring off a link made slow.

Both need network namespaces (root, TUN or netem, ``ip`` and ``tc``) and skip with the reason
:func:`pycomm.testing.netem.available` gives. Timings are machine noise here and never asserted: the
benchmark test checks that the figures exist, are positive and come from checked results; the ring test
checks which hops the new ring uses. The command-line checks need no namespaces.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycomm.benchmarks import allreduce_wan as suite

from pycomm.cli import main
from pycomm.ft import Master
from pycomm.testing import netem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_run import run_bench

AVAILABLE, REASON = netem.available()
needs_namespaces = pytest.mark.skipif(not AVAILABLE, reason=REASON)
QUICK_DEADLINE_S = 90
QUICK_LINK = "rtt=10ms,rate=200mbit"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


# ----- the command line -----


def test_wan_option_refuses_what_does_not_apply() -> None:
    status, _, err = run_cli("bench", "allreduce", "--wan", "rtt=50ms,rate=1gbit", "--anchors", "none")
    assert status == 2 and "--anchors does not apply to --wan" in err
    status, _, err = run_cli("bench", "allreduce", "--wan", "rtt=50ms,rate=1gbit", "--min-time-ms", "5")
    assert status == 2 and "--min-time-ms does not apply to --wan" in err
    status, _, err = run_cli("bench", "allreduce", "--wan", "rtt=50ms")
    assert status == 2 and "--wan needs a rate" in err
    status, _, err = run_cli("bench", "allreduce", "--wan", "rtt=50ms,speed=1gbit")
    assert status == 2 and "unknown link key 'speed'" in err


def test_wan_option_names_why_links_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netem, "available", lambda: (False, "creating network namespaces needs root"))
    status, out, err = run_cli("bench", "allreduce", "--wan", QUICK_LINK, "--quick")
    assert status == 2 and out == ""
    assert "--wan needs emulated links" in err and "creating network namespaces needs root" in err


# ----- one quick benchmark run -----


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    return run_bench(
        ["allreduce", "--wan", QUICK_LINK, "--quick"], tmp_path_factory.mktemp("bench-wan"), QUICK_DEADLINE_S
    )


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and value > 0 and math.isfinite(value)


@needs_namespaces
@pytest.mark.slow
def test_quick_wan_run_reports_every_system_with_checked_results(quick_run: tuple[dict, str]) -> None:
    report, stdout = quick_run
    options = report["options"]
    assert report["benchmark"] == "allreduce-wan" and options["quick"] is True
    assert options["link"] == netem.parse_link(QUICK_LINK)
    assert [(case["peers"], case["size_bytes"]) for case in report["cases"]] == [
        (peers, size) for peers in suite.QUICK_WAN_PEERS for size in suite.QUICK_WAN_SIZES
    ]
    for case in report["cases"]:
        peers, repeat = case["peers"], options["repeat"]
        assert case["bus_bytes"] == pytest.approx(2 * (peers - 1) / peers * case["size_bytes"])
        assert sorted(case["results"]) == sorted(suite.SYSTEMS)
        assert len(case["auto_pool_connections"]) == peers
        assert all(count >= 1 for count in case["auto_pool_connections"])
        # The pool the communicator says it has is the one the namespace's TCP table shows.
        assert case["auto_ring_connections"] == case["auto_pool_connections"]
        assert all(positive(rate) for rate in case["probe_gbps"] + case["probe_s"])
        for system, entry in case["results"].items():
            assert positive(entry["gbps"]) and positive(entry["link_ratio"]), system
            assert entry["link_ratio"] == pytest.approx(entry["gbps"] * 1e9 / options["link"]["rate"])
            if system in ("tcp1", "tcp4"):
                assert len(entry["slowest_link_bits_per_second"]) == repeat
                assert all(len(links) == peers for links in entry["link_bits_per_second"])
                continue
            assert len(entry["seconds_per_call"]) == repeat
            assert all(positive(seconds) for seconds in entry["seconds_per_call"])
            if system in suite.ONCE:
                # Plain TCP moves what the pycomm system sent, over as many connections as its pool.
                assert entry["wire_bytes"] > 0 and entry["streams_per_link"] == max(
                    case["auto_ring_connections"]
                )
                continue
            assert entry["late_starts"] == 0 and len(entry["barrier_skew_s"]) == repeat
            # Each peer holds the result, then knows every peer does, then returns.
            assert 0 < entry["held_s"] <= entry["committed_s"] <= entry["median_s"], system
            verified = entry["verified"]
            assert verified["ok"] and verified["identical_on_every_peer"]
            assert verified["all_reduces"] == repeat * peers
            if system == "int8":
                assert 0 < verified["max_error"] <= verified["bound"]
        assert all(positive(ratio) for ratio in case["ratios"].values())
        # int8 sends about (n / 2 + 1) / 8 of the pool's bytes (scales and headers aside).
        wire = case["results"]["once-int8"]["wire_bytes"] / case["results"]["once"]["wire_bytes"]
        assert wire == pytest.approx((peers / 2 + 1) / 8, rel=0.05)
    assert {(t["system"], t["peers"]) for t in report["targets"]} == {
        (system, peers) for system, peers, _ in suite.TARGETS if peers in suite.QUICK_WAN_PEERS
    }
    faults = report["faults"]
    assert faults["ops"]["mismatches"] == 0 and faults["ops"]["verified"] > 0
    for key in ("detect_s", "aborted_s", "recovery_s"):
        assert len(faults[key]["samples_s"]) == options["fault_trials"]
        assert all(positive(sample) for sample in faults[key]["samples_s"]), key
    for label in suite.SHORT.values():
        assert label in stdout
    assert "where the time went" in stdout
    assert "SIGKILL -> survivors' first correct all-reduce" in stdout


# ----- the ring avoids a slow link -----

# One member of the group: joins, says where it is in the ring, waits for the word, optimizes the
# topology, runs one checked all-reduce on the new ring, and leaves when told.
RING_MEMBER = """
import json, sys, time
import numpy as np
from pycomm.ft import Communicator
master, host, world, probe_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
comm = Communicator(master, host=host, shared_memory=False, timeout=60)
comm.connect(timeout=60)
while comm.world_size < world:
    if comm.pending_peers():
        comm.update_topology()
    else:
        time.sleep(0.01)
print(json.dumps({"peer_id": comm.peer_id, "members": comm.members}), flush=True)
sys.stdin.readline()
plan = comm.optimize_topology(probe_bytes=probe_bytes)
members = comm.members  # the new epoch's ring
x = np.full(1000, comm.rank + 1, np.float32)
info = comm.all_reduce(x)
result = {"order": plan.order, "changed": plan.changed, "members": members, "world": info.world_size,
          "bandwidth": plan.bandwidth.tolist(), "sum_ok": bool((x == world * (world + 1) / 2).all())}
print(json.dumps(result), flush=True)
sys.stdin.readline()  # a member that left early would start another epoch under the others
comm.close()
"""


def read_json_line(process: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    assert process.stdout is not None
    if not select.select([process.stdout], [], [], timeout)[0]:
        raise AssertionError(f"a ring member printed nothing within {timeout} s")
    line = process.stdout.readline()
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"a ring member exited with {process.wait()}: {process.stderr.read()[-3000:]}")
    return json.loads(line)


@contextlib.contextmanager
def members_network(
    peers: int, **link: str
) -> Iterator[tuple[netem.Network, Master, list[subprocess.Popen[str]]]]:
    """A network whose slot 0 holds the master; the members started go into the list, and are
    killed if still running at the end."""
    started: list[subprocess.Popen[str]] = []
    with netem.Network(peers=peers, **link) as net:
        # Members wait idle between steps on a machine that may be busy: no eviction for that.
        master = net.call_in(0, lambda: Master(host=net.address(0), heartbeat_timeout=10.0))
        try:
            yield net, master, started
        finally:
            master.close()
            for process in started:
                if process.poll() is None:
                    process.kill()
                process.communicate(timeout=10)


@pytest.fixture
def ring_network() -> Iterator[tuple[netem.Network, Master, list[subprocess.Popen[str]]]]:
    with members_network(4, rtt="2ms", rate="200mbit") as network:
        yield network


def tell(processes: list[subprocess.Popen[str]], line: str) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()


def hops(order: list[str]) -> set[tuple[str, str]]:
    return {(order[k], order[(k + 1) % len(order)]) for k in range(len(order))}


@needs_namespaces
@pytest.mark.slow
def test_ring_order_changes_when_one_emulated_link_is_made_slow(ring_network: Any, tmp_path) -> None:
    net, master, started = ring_network
    world = 4
    for slot in range(world):
        started.append(
            net.spawn(
                slot,
                [
                    sys.executable,
                    "-c",
                    RING_MEMBER,
                    master.address,
                    net.address(slot),
                    str(world),
                    str(4 << 20),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,  # the installed package, never a source checkout
            )
        )
    joined = [read_json_line(process, 60.0) for process in started]
    members = joined[0]["members"]
    assert all(entry["members"] == members for entry in joined)
    slot_of = {entry["peer_id"]: slot for slot, entry in enumerate(joined)}
    # One hop of the current ring (rank 0 -> rank 1) becomes ten times slower, in that direction only.
    slow = (members[0], members[1])
    net.set_link(slot_of[slow[0]], slot_of[slow[1]], rate="20mbit")
    tell(started, "go")
    plans = [read_json_line(process, 60.0) for process in started]
    order = plans[0]["order"]
    # What was measured (Mbit/s, row = sender, in the old rank order) explains a failure.
    measured = [[round(rate * 8e-6) for rate in row] for row in plans[0]["bandwidth"]]
    assert all(plan["order"] == order and plan["changed"] for plan in plans), measured
    assert sorted(order) == sorted(members) and slow not in hops(order), measured
    # The group now runs on that ring, and its all-reduce is right.
    assert all(plan["members"] == order and plan["world"] == world and plan["sum_ok"] for plan in plans)
    tell(started, "leave")
    assert [process.wait(timeout=30) for process in started] == [0] * world


# ----- the pool is sized from what optimize_topology() measured -----

# One of two members: joins with a link_bandwidth far below the link's (a pool of 1), says what it
# has, optimizes the topology (which probes the link and sizes the pool from the probe), then runs
# one checked all-reduce over the new pool.
POOL_MEMBER = """
import json, math, sys, time
import numpy as np
from pycomm.ft import Communicator
from pycomm.ft.communicator import _window_per_connection
master, host = sys.argv[1], sys.argv[2]
comm = Communicator(master, host=host, shared_memory=False, timeout=60, link_bandwidth=1e6)
comm.connect(timeout=60)
while comm.world_size < 2:
    if comm.pending_peers():
        comm.update_topology()
    else:
        time.sleep(0.01)
before, epoch = comm.ring_connections, comm.epoch
plan = comm.optimize_topology()
x = np.full(1 << 20, comm.rank + 1, np.float32)
info = comm.all_reduce(x)
result = {"before": before, "epoch_before": epoch, "epoch": comm.epoch, "changed": plan.changed,
          "bandwidth": plan.bandwidth.tolist(), "pools": plan.connections, "after": comm.ring_connections,
          "window": _window_per_connection(), "sum_ok": bool((x == 3).all()), "world": info.world_size}
print(json.dumps(result), flush=True)
sys.stdin.readline()
comm.close()
"""
# Socket buffers small enough that one connection cannot fill the link: 128 KiB windows over a
# 100 Mbit/s link of 40 ms need about four.
SMALL_BUFFERS = "4096 65536 262144"


@needs_namespaces
@pytest.mark.slow
def test_optimize_topology_sizes_the_pool_from_the_measured_link(tmp_path) -> None:
    rate, rtt = 100e6, 0.04
    with members_network(3, rtt=f"{rtt * 1e3:g}ms", rate="100mbit") as (net, master, started):
        for slot in (1, 2):
            for name in ("tcp_wmem", "tcp_rmem"):
                command = ["sysctl", "-qw", f"net.ipv4.{name}={SMALL_BUFFERS}"]
                assert net.spawn(slot, command).wait(timeout=10) == 0
        for slot in (1, 2):
            argv = [sys.executable, "-c", POOL_MEMBER, master.address, net.address(slot)]
            pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            started.append(net.spawn(slot, argv, **pipes, text=True, cwd=tmp_path))
        results = [read_json_line(process, 90.0) for process in started]
        tell(started, "leave")
        assert [process.wait(timeout=30) for process in started] == [0, 0]
    data_rate = 0.965 * rate / 8  # bytes/s of TCP data the link carries
    for result in results:
        assert result["window"] == 128 << 10 and result["before"] == 1
        measured = [result["bandwidth"][0][1], result["bandwidth"][1][0]]
        # Each direction measured within 10% of the link's data rate: TCP's start-up left out.
        assert all(abs(value / data_rate - 1) < 0.1 for value in measured), measured
        # Each pool covers its link's bandwidth-delay product (40 ms or more, queueing included) and
        # is what the peer now runs with, in the new epoch.
        least = math.ceil(0.9 * data_rate * rtt / result["window"])
        assert all(least <= pool <= 2 * least for pool in result["pools"]), (result["pools"], least)
        assert result["changed"] and result["epoch"] == result["epoch_before"] + 1
        assert result["after"] in result["pools"] and result["sum_ok"] and result["world"] == 2
