"""What a benchmark ran on, recorded beside its results so numbers from different machines or builds
are never compared by mistake."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import numpy as np

import pycomm
from pycomm import kernels

__all__ = ["cpu_model", "machine_info"]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int | None:
    # The CPUs this process may run on (a container or taskset can allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def machine_info() -> dict[str, Any]:
    """CPU, cores, Python, numpy, pycomm version, build and kernel threads, and the date (UTC, ISO 8601)."""
    report = pycomm.info()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pycomm": report["version"],
        "build": report["build"],
        "kernel_threads": kernels.threads(),
    }
