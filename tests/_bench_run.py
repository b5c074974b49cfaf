"""One run of ``pycomm bench ...`` for the benchmark tests: a child process in an empty directory (so
the installed package runs, never a source checkout), its JSON report and its standard output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_bench(arguments: list[str], workdir: Path, timeout: float) -> tuple[dict[str, Any], str]:
    path = workdir / "report.json"
    completed = subprocess.run(
        [sys.executable, "-m", "pycomm", "bench", *arguments, "--json", str(path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(path.read_text(encoding="utf-8")), completed.stdout
