"""The ``pycomm`` command line: one sub-command a module in this package.

Each module exposes ``register(subparsers)``, which adds its parser and sets ``run`` (a function of
the parsed arguments returning an exit status). Every command takes ``--json [FILE]`` (``-`` or no
value: standard output) for machine-readable output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pycomm.cli import bench, info, interpose, master, stress, topo, tune
from pycomm.errors import PycommError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycomm",
        description="pycomm: fault-tolerant collectives, MPI datatypes and hierarchical partitioning.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info.register(subparsers)
    bench.register(subparsers)
    master.register(subparsers)
    stress.register(subparsers)
    interpose.register(subparsers)
    tune.register(subparsers)
    topo.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PycommError as error:
        print(f"pycomm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pycomm {args.command}: interrupted", file=sys.stderr)
        return 130
