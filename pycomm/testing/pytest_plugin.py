"""pytest fixtures for multi-process tests; load with ``pytest_plugins = ["pycomm.testing.pytest_plugin"]``.

- ``mpi_run(target, nprocs, args=(), kwargs=None, **options)``: :func:`pycomm.testing.run_mpi` with
  the job's files kept under the test's ``tmp_path``. The test is skipped, with the install command as
  the reason, only where mpi4py or MPICH's ``mpiexec`` is really missing; set
  ``PYCOMM_TESTING_REQUIRE_MPI=1`` (in CI) to make that a failure instead. Tests using it get the
  ``mpi`` marker, so ``-m "not mpi"`` deselects them.
- ``local_cluster``: a :class:`pycomm.testing.LocalCluster` (30 s default deadline per child) that is
  closed, every child killed and reaped, when the test ends however it ends.
- ``free_port``: a loopback TCP port that was free a moment ago (prefer the announce handshake).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from pycomm.errors import MissingDependencyError
from pycomm.testing.environment import find_mpiexec
from pycomm.testing.local import LocalCluster
from pycomm.testing.mpi import run_mpi
from pycomm.testing.ports import free_port as _free_port
from pycomm.testing.results import MpiResult

REQUIRE_MPI_VARIABLE = "PYCOMM_TESTING_REQUIRE_MPI"
FIXTURE_TIMEOUT = 30.0


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so that projects using the plugin under --strict-markers need not.
    config.addinivalue_line("markers", "mpi: launches mpiexec jobs (needs mpi4py and MPICH's mpiexec)")


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "mpi_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mpi)


@pytest.fixture
def mpi_run(tmp_path: Path) -> Callable[..., MpiResult]:
    try:
        find_mpiexec("the mpi_run fixture")
    except MissingDependencyError as missing:
        if os.environ.get(REQUIRE_MPI_VARIABLE, "") not in ("", "0"):
            pytest.fail(f"{missing} ({REQUIRE_MPI_VARIABLE} is set, so this is not skipped)")
        pytest.skip(str(missing))
    jobs = tmp_path / "mpi"

    def run(target: Any, nprocs: int, args: Any = (), kwargs: Any = None, **options: Any) -> MpiResult:
        options.setdefault("timeout", FIXTURE_TIMEOUT)
        options.setdefault("workdir", jobs)
        return run_mpi(target, nprocs, args, kwargs, **options)

    return run


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(timeout=FIXTURE_TIMEOUT, workdir=tmp_path / "cluster") as cluster:
        yield cluster


@pytest.fixture
def free_port() -> int:
    return _free_port()
