"""Hierarchical partitioning (pillar 3): a multi-level topology model, ZeRO-style partition plans and
a cost model that predicts bytes and time per level.

``Topology`` and ``ZeroPlan`` are pure Python and need only numpy. ``HierComm`` (hierarchical and
quantized collectives over mpi4py) is imported on first use, so that this package loads where mpi4py
or the compiled core is missing.
"""

from __future__ import annotations

from typing import Any

from pycomm.hier._cost import Prediction
from pycomm.hier.plan import ZeroPlan
from pycomm.hier.topology import Level, Topology

__all__ = ["HierComm", "Level", "Prediction", "Topology", "ZeroPlan"]


def __getattr__(name: str) -> Any:
    if name == "HierComm":
        from pycomm.hier.comm import HierComm

        return HierComm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
