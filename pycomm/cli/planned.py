"""Commands of the documented CLI that this version does not ship yet.

They are listed in ``pycomm --help`` so the interface is visible, and each one fails with a clear
message instead of pretending to work.
"""

from __future__ import annotations

import argparse
from typing import Any

from pycomm.errors import NotSupportedError

PLANNED: dict[str, str] = {}


def register(subparsers: Any) -> None:
    for name, purpose in PLANNED.items():
        parser = subparsers.add_parser(name, help=f"{purpose} (not in this version yet)")
        parser.set_defaults(run=_not_yet, purpose=purpose, accepts_any_arguments=True)


def _not_yet(args: argparse.Namespace) -> int:
    raise NotSupportedError(
        f"'pycomm {args.command}' ({args.purpose}) is not part of this version of pycomm yet"
    )
