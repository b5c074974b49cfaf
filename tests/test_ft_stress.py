"""`pycomm stress` end to end: a minute of churn (kills, stalls, starts) with every result and every
shared-state hash checked must end with zero mismatches, no crashed peer and no hang; the same for two
minutes over emulated WAN links (50 ms round trips, 1 Gbit/s, 0.01% loss), where that needs network
namespaces (it skips with the reason otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pycomm.ft.stress import StressConfig, run_stress
from pycomm.testing import netem

WAN = netem.available()


def _segments() -> set:
    return (
        {name for name in os.listdir("/dev/shm") if name.startswith("pycomm-")}
        if os.path.isdir("/dev/shm")
        else set()
    )


def test_pycomm_stress_for_a_minute_with_churn_passes(tmp_path) -> None:
    segments_before = _segments()
    summary_path = tmp_path / "stress.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pycomm",
            "stress",
            "--seconds",
            "60",
            "--peers",
            "4",
            "--seed",
            "1",
            "--json",
            str(summary_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["passed"] and summary["mismatches"] == 0 and summary["errors"] == 0 and not summary["hang"]
    # The churn really happened, and the group kept going through it.
    assert summary["kills"] >= 3 and summary["stalls"] >= 1 and summary["joins"] > 4
    assert summary["aborts"] >= 1 and summary["evictions"] >= 1
    assert summary["revisions"] > 100 and summary["epochs"] > 5
    assert "PASSED" in completed.stdout
    assert _segments() - segments_before == set()  # killed peers' shared memory is removed too


def test_the_stress_checks_catch_a_wrong_result() -> None:
    # Peers that expect sums off by one report mismatches, and the run fails.
    config = StressConfig(peers=2, seconds=3, churn=False)
    summary = run_stress(config, extra_peer_args=["--check-the-checks"])
    assert not summary["passed"] and summary["mismatches"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not WAN[0], reason=WAN[1])
def test_pycomm_stress_over_wan_links_with_churn_passes(tmp_path) -> None:
    summary_path = tmp_path / "stress.json"
    command = [sys.executable, "-m", "pycomm", "stress", "--wan", "rtt=50ms,rate=1gbit,loss=0.01%"]
    command += ["--churn", "--seconds", "120", "--seed", "2", "--json", str(summary_path)]
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["passed"] and summary["mismatches"] == 0 and summary["errors"] == 0 and not summary["hang"]
    assert summary["kills"] >= 3 and summary["stalls"] >= 1 and summary["joins"] > 4
    assert summary["aborts"] >= 1 and summary["revisions"] > 20
    assert summary["wan"] == {"rtt": 0.05, "rate": 1e9, "loss": 0.0001}
