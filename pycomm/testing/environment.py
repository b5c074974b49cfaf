"""The environment, interpreter and launcher that harness children run with.

Children get an explicit environment built from a short allow-list of the parent's variables, never a
copy of it: a variable that leaked in from the developer's shell or the CI runner (``PYTHONPATH``
pointing at a source checkout, ``SLURM_*`` that make MPICH's launcher ask Slurm for nodes, a
``HYDRA_*`` or ``MPIR_CVAR_*`` override) would otherwise change what a test does on one machine only.

A machine that does need a setting everywhere (say ``UCX_TLS`` in a container that forbids
``process_vm_readv``) passes it on explicitly: ``PYCOMM_TESTING_PASS_ENV="UCX_TLS,MPIR_CVAR_*"`` names
variables, or prefixes ending in ``*``, that children inherit too.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sysconfig
from collections.abc import Mapping

from pycomm._deps import require_mpiexec
from pycomm.errors import InvalidArgumentError, NotSupportedError

# Variables a child needs to behave like a normal program on this machine.
_INHERITED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
)
_INHERITED_PREFIXES = ("LC_",)

_PYTHON_SETTINGS = {
    # Output reaches the capture file as it is printed, so a killed child still shows its last words.
    "PYTHONUNBUFFERED": "1",
    # Tracebacks on fatal signals; the harness also asks for all-thread stacks on SIGUSR1 at a timeout.
    "PYTHONFAULTHANDLER": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}

# Several children share a few cores; one BLAS or OpenMP thread each keeps them from thrashing.
_SINGLE_THREADED = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}

TIMEOUT_SCALE_VARIABLE = "PYCOMM_TESTING_TIMEOUT_SCALE"
PASS_ENV_VARIABLE = "PYCOMM_TESTING_PASS_ENV"


def scripts_directory() -> str:
    """Where this interpreter's environment installs executables (``mpiexec`` from the mpich wheel)."""
    return sysconfig.get_path("scripts")


def child_environment(
    extra: Mapping[str, str | None] | None = None, *, single_threaded: bool = True
) -> dict[str, str]:
    """The environment for a harness child.

    Starts from the allow-listed variables of this process, puts this interpreter's scripts directory
    first on ``PATH`` (so ``mpiexec``, ``hydra_pmi_proxy`` and ``python`` are this environment's), adds
    the Python settings above and, with ``single_threaded``, one OpenMP/BLAS thread. ``extra`` is applied
    last; a value of None removes that variable.
    """
    names, prefixes = _passed_through()
    environment = {
        name: value for name, value in os.environ.items() if name in names or name.startswith(prefixes)
    }
    path = environment.get("PATH", os.defpath).split(os.pathsep)
    scripts = scripts_directory()
    environment["PATH"] = os.pathsep.join([scripts, *(entry for entry in path if entry != scripts)])
    environment.update(_PYTHON_SETTINGS)
    if single_threaded:
        environment.update(_SINGLE_THREADED)
    for name, value in (extra or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = str(value)
    return environment


def _passed_through() -> tuple[set[str], tuple[str, ...]]:
    """Names and name prefixes of the parent's variables that children inherit."""
    names, prefixes = set(_INHERITED), list(_INHERITED_PREFIXES)
    for entry in os.environ.get(PASS_ENV_VARIABLE, "").split(","):
        entry = entry.strip()
        if entry.endswith("*"):
            prefixes.append(entry[:-1])
        elif entry:
            names.add(entry)
    return names, tuple(prefixes)


def scaled_timeout(seconds: float) -> float:
    """``seconds`` times ``$PYCOMM_TESTING_TIMEOUT_SCALE`` (default 1), for slow or crowded machines."""
    raw = os.environ.get(TIMEOUT_SCALE_VARIABLE, "")
    if not raw:
        return seconds
    try:
        scale = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{TIMEOUT_SCALE_VARIABLE}={raw!r} is not a number") from None
    if not scale > 0:
        raise InvalidArgumentError(f"{TIMEOUT_SCALE_VARIABLE}={raw!r} must be a positive number")
    return seconds * scale


def find_mpiexec(feature: str) -> str:
    """Path of MPICH's ``mpiexec``; raises :class:`~pycomm.errors.MissingDependencyError` when absent.

    The copy beside this interpreter wins over ``PATH`` (see :func:`pycomm._deps.find_mpiexec`).
    """
    path = require_mpiexec(feature)
    if not _is_hydra(path):
        raise NotSupportedError(
            f"{feature} drives MPICH's hydra launcher, but {path} is not hydra (another MPI's mpiexec?); "
            'install the mpich wheel into this environment: pip install "pycomm[mpi]"'
        )
    return path


@functools.cache
def _is_hydra(mpiexec: str) -> bool:
    try:
        probe = subprocess.run(
            [mpiexec, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            env=child_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in probe.stdout
