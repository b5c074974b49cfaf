"""``pycomm bench allreduce``: every case is there, every figure follows from the raw timings, every
system's results were checked, and the fault measurements ran with checked results.

Timings are machine noise here and never asserted. One ``--quick`` run (2 and 4 peers, 4 KiB and
1 MiB, one fault trial) serves most tests; it runs as a subprocess with a 90 s deadline, so a hang
fails the test instead of stalling the suite. An anchor whose package is missing is skipped by the
benchmark itself; the tests about that anchor are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycomm.benchmarks import allreduce as suite

from pycomm.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_run import run_bench

pytestmark = pytest.mark.slow

QUICK_DEADLINE_S = 90
AVAILABILITY = suite.anchor_availability(suite.ANCHORS)
NAMES = {"mpich": "MPICH", "gloo": "gloo"}


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def require_anchor(anchor: str) -> None:
    if AVAILABILITY[anchor] is not None:
        pytest.skip(f"the {anchor} anchor cannot run here: {AVAILABILITY[anchor]}")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    return run_bench(["allreduce", "--quick"], tmp_path_factory.mktemp("bench-allreduce"), QUICK_DEADLINE_S)


def systems_of(report: dict[str, Any]) -> list[str]:
    return [name for name, system in report["systems"].items() if system["measured"]]


def test_quick_json_has_every_case(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    assert report["benchmark"] == "allreduce"
    assert {"cpu_model", "cores", "usable_cores", "numpy", "pycomm", "date"} <= set(report["machine"])
    assert report["options"]["quick"] is True
    assert {"bus_bytes", "gbps", "ratios", "verified", "recovery_s", "join_s", "eviction_s"} <= set(
        report["definitions"]
    )
    expected_systems = ["pycomm", *(a for a in suite.ANCHORS if AVAILABILITY[a] is None)]
    assert systems_of(report) == expected_systems
    found = {(case["peers"], case["size_bytes"]) for case in report["cases"]}
    assert found == {(peers, size) for peers in suite.QUICK_PEERS for size in suite.QUICK_SIZES}
    assert len(report["cases"]) == len(found)
    for case in report["cases"]:
        assert sorted(case["results"]) == sorted(expected_systems)
        assert sorted(case["ratios"]) == sorted(expected_systems[1:])
        assert case["dtype"] == "float32" and case["op"] == "sum"
        assert case["elements"] * 4 == case["size_bytes"]


@pytest.mark.parametrize("anchor", suite.ANCHORS)
def test_quick_run_measured_the_anchor(quick_run: tuple[dict[str, Any], str], anchor: str) -> None:
    require_anchor(anchor)
    report, stdout = quick_run
    assert report["systems"][anchor]["measured"] and report["systems"][anchor]["version"]
    assert f"pycomm/{NAMES[anchor]}" in stdout
    for case in report["cases"]:
        assert case["results"][anchor]["label"] == suite.LABELS[anchor]


def test_quick_figures_follow_from_the_raw_timings(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    repeat = report["settings"]["repeat"]
    for case in report["cases"]:
        peers, size = case["peers"], case["size_bytes"]
        bus = 2 * (peers - 1) / peers * size
        assert case["bus_bytes"] == pytest.approx(bus, rel=1e-12)
        for system, entry in case["results"].items():
            times = entry["seconds_per_call"]
            per_rank = entry["rank_seconds_per_call"]
            assert len(times) == repeat and len(per_rank) == peers, system
            assert all(len(ranks) == repeat for ranks in per_rank)
            # A repetition's figure is its slowest rank's.
            for index, value in enumerate(times):
                assert value == pytest.approx(max(ranks[index] for ranks in per_rank), rel=1e-12)
            assert all(t > 0 and math.isfinite(t) for t in times)
            assert entry["median_s"] == pytest.approx(statistics.median(times), rel=1e-12)
            assert entry["min_s"] == min(times) and entry["max_s"] == max(times)
            assert entry["min_s"] <= entry["q1_s"] <= entry["median_s"] <= entry["q3_s"] <= entry["max_s"]
            assert entry["bus_bytes"] == pytest.approx(bus, rel=1e-12)
            assert entry["gbps"] == pytest.approx(bus / entry["median_s"] / 1e9, rel=1e-12)
            assert entry["latency_us"] == pytest.approx(entry["median_s"] * 1e6, rel=1e-12)
            assert entry["calls_per_repeat"] >= 1
        pycomm = case["results"]["pycomm"]
        for anchor, ratio in case["ratios"].items():
            anchor_median = case["results"][anchor]["median_s"]
            # Same bytes on both sides: the bandwidth ratio is the inverse ratio of the median times.
            assert ratio == pytest.approx(anchor_median / pycomm["median_s"], rel=1e-9)
            assert ratio == pytest.approx(pycomm["gbps"] / case["results"][anchor]["gbps"], rel=1e-12)


def test_quick_results_were_checked_on_every_rank(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    for case in report["cases"]:
        for system, entry in case["results"].items():
            verified = entry["verified"]
            assert verified["ok"] is True, system
            assert verified["ranks"] == case["peers"]
            assert verified["elements"] == case["size_bytes"] // 4
            assert verified["checks_per_rank"] >= 3
            assert [phase["phase"] for phase in verified["phases"]] == ["before", "after"]
            for phase in verified["phases"]:
                assert phase["wrong_elements"] == [0] * case["peers"]
                assert phase["nonzero_after_timing"] == [0] * case["peers"]


def test_quick_fault_measurements(quick_run: tuple[dict[str, Any], str]) -> None:
    report, stdout = quick_run
    faults = report["faults"]
    assert faults["peers"] == suite.FAULT_PEERS and faults["trials"] == 1
    expected_samples = {"recovery": 1, "join": 2, "eviction": 1, "stall_recovery": 1}
    for key, count in expected_samples.items():
        summary = faults[key]
        samples = summary["samples_s"]
        assert len(samples) == count, key
        assert all(s > 0 and math.isfinite(s) for s in samples)
        assert summary["median_s"] == pytest.approx(statistics.median(samples), rel=1e-12)
        assert summary["min_s"] == min(samples) and summary["max_s"] == max(samples)
    trial = faults["per_trial"][0]
    assert trial["recovery_s"] == max(trial["recovery_survivors_s"])
    assert len(trial["recovery_survivors_s"]) == suite.FAULT_PEERS - 1
    assert trial["recovery_epochs"][1] > trial["recovery_epochs"][0]
    assert all(0 < admitted <= join for admitted, join in zip(trial["join_admitted_s"], trial["join_s"]))
    # Every all-reduce of the loop was compared with its exact sum, through a kill and a stall.
    assert faults["ops"]["mismatches"] == 0
    assert faults["ops"]["verified"] > 0 and faults["ops"]["aborts"] >= 1
    for label in ("recovery: SIGKILL", "join: newcomer", "eviction: SIGSTOP", "stall recovery"):
        assert label in stdout


def test_quick_peers_left_cleanly(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    assert [shutdown["peers"] for shutdown in report["shutdown"]] == list(suite.QUICK_PEERS)
    for shutdown in report["shutdown"]:
        assert sorted(shutdown["systems"]) == sorted(systems_of(report))
        for system, record in shutdown["systems"].items():
            assert record["did_not_close"] == [], (system, record["did_not_close"])
            assert len(record["close_s"]) == shutdown["peers"]


def test_missing_anchor_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    reason = (
        "the gloo anchor of pycomm bench allreduce needs torch, which is not installed; install it with: x"
    )
    monkeypatch.setattr(suite, "anchor_availability", lambda anchors: {a: reason for a in anchors})
    path = tmp_path / "alone.json"
    status, stdout, stderr = run_cli(
        "bench",
        "allreduce",
        "--anchors",
        "gloo",
        "--peers",
        "2",
        "--sizes",
        "4K",
        "--repeat",
        "1",
        "--min-time-ms",
        "1",
        "--no-recovery",
        "--json",
        str(path),
    )
    assert status == 0, stderr
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["systems"]["gloo"] == {
        "label": suite.LABELS["gloo"],
        "measured": False,
        "version": None,
        "skipped": reason,
    }
    assert report["faults"] is None
    [case] = report["cases"]
    assert list(case["results"]) == ["pycomm"] and case["ratios"] == {}
    assert f"skipping the gloo anchor: {reason}" in stderr
    assert f"note: the gloo anchor was skipped: {reason}" in stdout
    assert "pycomm/gloo" not in stdout


def test_anchor_availability_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    assert 'pip install "pycomm[torch]"' in (suite.anchor_availability(["gloo"])["gloo"] or "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peers", "1"], "peer counts must be whole numbers in [2, 16]"),
        (["--peers", "two"], "--peers takes whole numbers"),
        (["--sizes", "6"], "not a positive multiple of 4 bytes"),
        (["--sizes", "4KB"], "cannot read the size"),
        (["--anchors", "nccl"], "unsupported anchor nccl"),
        (["--repeat", "0"], "repeat must be at least 1"),
    ],
)
def test_bad_options_are_refused_before_measuring(argv: list[str], message: str) -> None:
    status, stdout, stderr = run_cli("bench", "allreduce", "--quick", *argv)
    assert status == 2
    assert message in stderr
    assert stdout == "" and "starting" not in stderr


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_check_inputs_are_integers_whose_sum_float32_holds_exactly(world: int) -> None:
    count = 3 * suite.PATTERN_PERIOD + 5
    inputs = [suite.peer_input(rank, count) for rank in range(world)]
    for values in inputs:
        assert values.dtype == np.float32 and np.array_equal(values, np.rint(values))
    if world > 1:
        assert not np.array_equal(inputs[0], inputs[1])
    exact = np.sum([values.astype(np.int64) for values in inputs], axis=0)
    assert np.array_equal(suite.expected_sum(world, count).astype(np.int64), exact)
    assert not np.array_equal(suite.peer_input(0, count, salt=1), inputs[0])
