"""Loads the compiled core, with an error that says what to do when it is not there.

The usual cause is importing pycomm from a source checkout (where ``pycomm/`` has no compiled
``_core``) instead of from an installed copy.
"""

from __future__ import annotations

from pathlib import Path

try:
    from pycomm import _core as core
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    here = Path(__file__).resolve().parent
    in_checkout = (here.parent / "CMakeLists.txt").exists()
    hint = (
        f"pycomm was imported from the source tree {here.parent}, which has no compiled core; "
        "install it with `pip install .` and run from another directory (pytest does this already)"
        if in_checkout
        else "reinstall pycomm (`pip install --force-reinstall pycomm`)"
    )
    raise ImportError(
        f"pycomm's compiled core (pycomm._core) could not be loaded: {error}. {hint}"
    ) from error

__all__ = ["core"]
