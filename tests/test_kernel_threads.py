"""The kernels' thread pool: results independent of how calls are split, safe across fork() and
concurrent callers, sized by the process's usable cores or PYCOMM_KERNEL_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from pycomm import kernels


def run_child(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_forked_child_gets_a_working_pool(tmp_path: Path) -> None:
    child = run_child(
        """
        import os
        import numpy as np
        from pycomm import kernels

        kernels.set_threads(4)
        a = np.ones(1 << 21, np.float32)
        kernels.reduce_into(a, a)  # the parent's workers exist now
        pid = os.fork()
        if pid == 0:
            b = np.ones(1 << 21, np.float32)
            kernels.reduce_into(b, b)  # must not wait for workers that do not exist here
            os._exit(0 if (b == 2).all() else 1)
        _, status = os.waitpid(pid, 0)
        kernels.reduce_into(a, a)
        print(os.waitstatus_to_exitcode(status), a[0])
        """,
        tmp_path,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["0", "4.0"]


def test_concurrent_callers_each_get_their_own_result() -> None:
    previous = kernels.threads()
    kernels.set_threads(2)
    errors: list[str] = []

    def work(value: int) -> None:
        for _ in range(20):
            a = np.full(1 << 20, value, np.int32)
            b = np.full(1 << 20, 1, np.int32)
            kernels.reduce_into(a, b)
            if not (a == value + 1).all():
                errors.append(f"caller {value} got a wrong sum")

    try:
        callers = [threading.Thread(target=work, args=(value,)) for value in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)
        assert not any(caller.is_alive() for caller in callers), "a caller hung"
    finally:
        kernels.set_threads(previous)
    assert errors == []


def test_thread_count_follows_the_cpu_affinity(tmp_path: Path) -> None:
    child = run_child(
        """
        import os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from pycomm import kernels
        print(kernels.threads())
        """,
        tmp_path,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "1"


@pytest.mark.parametrize("value", ["abc", "0", "5000"])
def test_a_bad_thread_count_in_the_environment_is_an_error(tmp_path: Path, value: str) -> None:
    child = run_child(
        """
        from pycomm import kernels
        from pycomm.errors import InvalidArgumentError
        try:
            kernels.threads()
        except InvalidArgumentError as error:
            print(error)
        """,
        tmp_path,
        {"PYCOMM_KERNEL_THREADS": value},
    )
    assert child.returncode == 0, child.stderr
    assert f"PYCOMM_KERNEL_THREADS='{value}' is not a thread count in [1, 1024]" in child.stdout
