"""The `pycomm` command line: every documented command is present, and the ones this version does
not ship fail with a clear message instead of pretending to work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pycomm.cli import main

# Every command of the documented interface (DESIGN: info, master, stress, bench, tune, topo, interpose).
COMMANDS = ["info", "master", "stress", "bench", "tune", "interpose", "topo"]
BENCHMARKS = ["reduce", "allreduce", "pack", "hier"]


def test_help_lists_every_documented_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for command in COMMANDS:
        assert command in listed


def test_console_script_runs(tmp_path: Path) -> None:
    # The installed script runs and lists every command of the interface.
    script = Path(sys.executable).with_name("pycomm")
    assert script.exists(), f"the pycomm console script should be installed beside {sys.executable}"
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout
    bench = subprocess.run(
        [str(script), "bench", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert bench.returncode == 0, bench.stderr
    for benchmark in BENCHMARKS:
        assert benchmark in bench.stdout


def test_stress_refuses_what_it_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stress", "--wan", "rtt=50ms,latency=3"]) == 2
    assert "unknown link key 'latency'" in capsys.readouterr().err
    assert main(["stress", "--peers", "2"]) == 2
    assert "at least 3 peers" in capsys.readouterr().err


def test_master_command_serves_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "master.json"
    result = subprocess.run(
        [sys.executable, "-m", "pycomm", "master", "--seconds", "0.5", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "pycomm master listening on 127.0.0.1:" in result.stdout
    assert json.loads(out.read_text())["group"] == {"epoch": 0, "members": [], "pending": []}
