"""pycomm: an HPC communication runtime for Python.

Fault-tolerant collectives with peer churn (``pycomm.ft``), CUDA-aware MPI derived datatypes
(``pycomm.datatype``), hierarchical ZeRO++ partitioning (``pycomm.hier``) and a ``torch.distributed``
backend (``pycomm.torch``), over one C++ core. ``import pycomm`` needs only numpy; each feature that
needs MPI, CUDA or torch imports it when used and says how to install it when it is missing.
"""

from __future__ import annotations

from pycomm._native import core as _core
from pycomm.errors import (
    CommError,
    CommTimeout,
    InvalidArgumentError,
    MissingDependencyError,
    NotSupportedError,
    ProtocolError,
    PycommError,
)
from pycomm.info import info, interposer_path

__version__: str = _core.build_info()["version"]

__all__ = [
    "CommError",
    "CommTimeout",
    "InvalidArgumentError",
    "MissingDependencyError",
    "NotSupportedError",
    "ProtocolError",
    "PycommError",
    "__version__",
    "info",
    "interposer_path",
]
