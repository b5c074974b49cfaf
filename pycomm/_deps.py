"""Optional dependencies, imported only when a feature needs them.

Each ``require_*`` returns the module or raises :class:`MissingDependencyError` naming the feature,
the missing package and the command that installs it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig
from types import ModuleType

from pycomm.errors import MissingDependencyError

_INSTALL = {
    "mpi4py": ("mpi4py and an MPI library", 'pip install "pycomm[mpi]"  (mpi4py + the mpich wheel)'),
    "torch": ("torch", 'pip install "pycomm[torch]"  (a CPU build: pip install torch==2.13.0)'),
    "cupy": ("cupy", 'pip install "pycomm[cuda]"'),
    "matplotlib": ("matplotlib", 'pip install "pycomm[plot]"'),
}


def _require(module: str, feature: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package, install = _INSTALL[module.split(".")[0]]
        raise MissingDependencyError(feature, package, install) from error


def require_mpi4py(feature: str) -> ModuleType:
    """The ``mpi4py`` package (not ``mpi4py.MPI``: importing that initialises MPI)."""
    return _require("mpi4py", feature)


def find_mpiexec() -> str | None:
    """Path of ``mpiexec``, or None. The copy beside this interpreter (the mpich wheel's, matching the
    ``libmpi`` that this environment's mpi4py loads) wins over ``PATH``, so that a program started as
    ``venv/bin/python`` without activating the environment still finds it."""
    beside = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def require_mpiexec(feature: str) -> str:
    """Path of ``mpiexec`` (see :func:`find_mpiexec`), for a feature that launches MPI jobs."""
    require_mpi4py(feature)
    path = find_mpiexec()
    if path is None:
        raise MissingDependencyError(feature, "mpiexec (an MPI launcher)", 'pip install "pycomm[mpi]"')
    return path


def require_torch(feature: str) -> ModuleType:
    return _require("torch", feature)


def require_cupy(feature: str) -> ModuleType:
    return _require("cupy", feature)


def require_matplotlib(feature: str) -> ModuleType:
    """The ``matplotlib`` package; pyplot is not imported, so the caller's backend is left alone."""
    return _require("matplotlib", feature)
