"""The `pycomm` command line: every documented command is present, and the ones this version does
not ship fail with a clear message instead of pretending to work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pycomm.cli import main
from pycomm.cli.bench import PLANNED as PLANNED_BENCHMARKS
from pycomm.cli.planned import PLANNED

# Every documented command this version does not ship yet, as the argument list that names it.
PLANNED_COMMANDS = [[name] for name in sorted(PLANNED)] + [
    ["bench", name] for name in sorted(PLANNED_BENCHMARKS)
]


def test_help_lists_every_documented_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for command in ["info", "bench", *PLANNED]:
        assert command in listed


@pytest.mark.parametrize("command", PLANNED_COMMANDS, ids=" ".join)
def test_planned_commands_say_they_are_not_there(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--some-option"]) == 2
    assert "not part of this version of pycomm yet" in capsys.readouterr().err


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pycomm")
    assert script.exists(), f"the pycomm console script should be installed beside {sys.executable}"
    result = subprocess.run(
        [str(script), "bench", "hier"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "pycomm bench: error:" in result.stderr
    assert "not part of this version" in result.stderr


def test_stress_refuses_what_it_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stress", "--wan", "rtt=50ms"]) == 2
    assert "not in this version" in capsys.readouterr().err
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
