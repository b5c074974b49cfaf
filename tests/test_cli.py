"""The `pycomm` command line: every documented command is present, and the ones this version does
not ship fail with a clear message instead of pretending to work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pycomm.cli import main
from pycomm.cli.planned import PLANNED


def test_help_lists_every_documented_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for command in ["info", "bench", *PLANNED]:
        assert command in listed


@pytest.mark.parametrize("command", sorted(PLANNED))
def test_planned_commands_say_they_are_not_there(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--some-option"]) == 2
    assert "not part of this version of pycomm yet" in capsys.readouterr().err


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pycomm")
    assert script.exists(), f"the pycomm console script should be installed beside {sys.executable}"
    result = subprocess.run([str(script), "stress"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pycomm stress: error:" in result.stderr
