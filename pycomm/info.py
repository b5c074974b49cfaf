"""What this installation of pycomm can do: build features, MPI, CUDA, torch, the interposer.

``info()`` never initialises MPI in the calling process: when ``mpi4py.MPI`` is not loaded yet, the
MPI library is asked from a short-lived child process (initialising MPI in a user's process behind
their back would change what their own ``from mpi4py import MPI`` does).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from types import ModuleType
from typing import Any

import numpy as np

from pycomm._deps import find_mpiexec
from pycomm._native import core
from pycomm.errors import NotSupportedError

# Run in a child interpreter: describes the MPI library without initialising MPI.
_MPI_PROBE = """
import json, mpi4py
mpi4py.rc.initialize = False
from mpi4py import MPI
from pycomm.info import describe_mpi
print(json.dumps(describe_mpi(MPI)))
"""


def describe_mpi(mpi: ModuleType) -> dict[str, Any]:
    """Implementation, version and standard of an ``mpi4py.MPI`` module (callable before MPI_Init)."""
    import mpi4py

    name, version = mpi.get_vendor()
    major, minor = mpi.Get_version()
    library_version = mpi.Get_library_version().strip()
    return {
        "available": True,
        "impl": name,
        "version": ".".join(map(str, version)),
        "standard": f"{major}.{minor}",
        "library_version": library_version.splitlines()[0] if library_version else "",
        "mpi4py": mpi4py.__version__,
        "mpiexec": find_mpiexec(),
    }


def _mpi_runtime() -> dict[str, Any]:
    try:
        import mpi4py  # noqa: F401  (only to learn whether it is installed)
    except ImportError:
        return {"available": False, "reason": 'mpi4py is not installed (pip install "pycomm[mpi]")'}
    loaded = sys.modules.get("mpi4py.MPI")
    if loaded is not None:
        return describe_mpi(loaded)
    # From a neutral directory: `python -c` puts the working directory first on sys.path, and a
    # source checkout's pycomm/ (which has no compiled core) must not shadow the installed one.
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _MPI_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tempfile.gettempdir(),
        )
        if probe.returncode == 0:
            return json.loads(probe.stdout)
        problem = probe.stderr.strip()
    except subprocess.TimeoutExpired:
        problem = "the probe did not finish within 60 s"
    except json.JSONDecodeError:
        problem = f"the probe printed something unexpected: {probe.stdout.strip()[:200]}"
    return {"available": False, "reason": f"mpi4py could not load an MPI library: {problem}"}


def _cuda_runtime(build: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"built": build["cuda"], "compiler_version": build["cuda_version"] or None}
    if not build["cuda"]:
        result["devices"] = 0
        result["reason"] = "no CUDA compiler was found when pycomm was built"
        return result
    from pycomm import _cuda

    result.update(_cuda.runtime_status())
    return result


def _torch_runtime() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": 'torch is not installed (pip install "pycomm[torch]")'}

    return {
        "available": True,
        "version": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gloo": torch.distributed.is_available() and torch.distributed.is_gloo_available(),
    }


INTERPOSER_FILE = "libpycomm_interpose.so"


def interposer_path() -> str:
    """Path of ``libpycomm_interpose.so``, the MPI datatype interposer, for ``LD_PRELOAD``.

    Raises :class:`NotSupportedError` when this installation has none: pycomm was built without MPI
    headers (the interposer is built against ``mpi.h``), or the file is missing from the package.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), INTERPOSER_FILE)
    if os.path.isfile(path):
        return path
    if not core.build_info()["mpi_headers"]:
        raise NotSupportedError(
            "pycomm was built without MPI headers, so the MPI datatype interposer (libpycomm_interpose.so) "
            "was not built; reinstall with the mpich wheel in the build environment (the default "
            "build requirements), or build against a system MPI: pip install . "
            "-C cmake.define.PYCOMM_MPI_HOME=/path/to/mpi"
        )
    raise NotSupportedError(
        f"pycomm was built with MPI headers but {path} is missing: the installation is incomplete; "
        "reinstall pycomm"
    )


def _interposer() -> dict[str, Any]:
    try:
        return {"available": True, "path": interposer_path()}
    except NotSupportedError as error:
        return {"available": False, "path": None, "reason": str(error)}


def info() -> dict[str, Any]:
    """A JSON-serialisable description of this installation (what ``pycomm info --json`` prints)."""
    build = core.build_info()
    return {
        "version": build["version"],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "build": {
            "compiler": build["compiler"],
            "build_type": build["build_type"],
            "kernel_isas": build["kernel_isas"].split(","),
            "kernel_isa_active": core.kernels.isa(),
            "mpi_headers": build["mpi_headers"],
            "mpi_headers_version": build["mpi_headers_version"] or None,
            "mpi_headers_source": build["mpi_headers_source"] or None,
            "cuda": build["cuda"],
        },
        "mpi": _mpi_runtime(),
        "cuda": _cuda_runtime(build),
        "torch": _torch_runtime(),
        "interposer": _interposer(),
    }
