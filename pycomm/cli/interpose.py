"""``pycomm interpose``: run a command with the MPI datatype interposer preloaded.

The interposer (``libpycomm_interpose.so``) replaces MPI's packing of non-contiguous datatypes in an
unmodified MPI program: ``LD_PRELOAD`` is set for the command (before any preload already set), and
``mpiexec`` passes it on to every rank. The ``--no-*`` options map to the interposer's environment
switches. With ``--json`` every rank writes its counters at ``MPI_Finalize`` and the report gathers
them, so one can see which calls pycomm handled.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import tempfile
from typing import Any

from pycomm.cli.output import add_json_option, write_json
from pycomm.errors import InvalidArgumentError

# Option destination -> the environment switch it turns off.
_SWITCHES = {
    "off": "PYCOMM_INTERPOSE",
    "no_types": "PYCOMM_INTERPOSE_TYPES",
    "no_pack": "PYCOMM_INTERPOSE_PACK",
    "no_send": "PYCOMM_INTERPOSE_SEND",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "interpose",
        help="run a command with the MPI datatype interposer preloaded",
        description=(
            "Runs COMMAND with libpycomm_interpose.so in LD_PRELOAD (e.g. pycomm interpose -- mpiexec -n 4 "
            "./app). MPI programs built against MPICH's ABI (MPICH, Cray MPICH, Intel MPI, MVAPICH) then "
            "have their non-contiguous datatypes packed by pycomm; everything else goes to MPI untouched. "
            "Exits with COMMAND's exit status."
        ),
    )
    parser.add_argument("--off", action="store_true", help="preload, but pass every call to MPI untouched")
    parser.add_argument("--no-types", action="store_true", help="decode no datatypes (so handle none)")
    parser.add_argument("--no-pack", action="store_true", help="leave MPI_Pack/MPI_Unpack to MPI")
    parser.add_argument(
        "--no-send",
        action="store_true",
        help="leave the send/receive family (Send, Recv, Isend, Irecv, Sendrecv, Neighbor_alltoallw) to MPI",
    )
    parser.add_argument(
        "--min-bytes",
        type=int,
        default=None,
        metavar="N",
        help="leave messages of fewer packed bytes to MPI (default 0)",
    )
    parser.add_argument(
        "--counters",
        metavar="PATTERN",
        help="write each rank's counters as JSON at MPI_Finalize to PATTERN (%%r: the rank)",
    )
    add_json_option(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    parser.set_defaults(run=run)


def interposer_environment(
    base: dict[str, str], path: str, args: argparse.Namespace, counters: str | None
) -> dict[str, str]:
    """``base`` with the interposer preloaded and the switches ``args`` asks for."""
    environment = dict(base)
    preloaded = environment.get("LD_PRELOAD", "")
    environment["LD_PRELOAD"] = f"{path}:{preloaded}" if preloaded else path
    for option, variable in _SWITCHES.items():
        if getattr(args, option):
            environment[variable] = "0"
    if args.min_bytes is not None:
        environment["PYCOMM_INTERPOSE_MIN_BYTES"] = str(args.min_bytes)
    if counters:
        environment["PYCOMM_INTERPOSE_COUNTERS"] = counters
    return environment


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidArgumentError("no command given; usage: pycomm interpose [OPTIONS] -- COMMAND [ARGS...]")
    return command


def read_counters(pattern: str) -> dict[str, Any]:
    """The counters files a run wrote to ``pattern``, by rank ("%r" in the pattern; else one entry "*")."""
    if "%r" not in pattern:
        paths = {"*": pattern}
    else:
        rank_in_name = re.compile(re.escape(pattern).replace(re.escape("%r"), r"(\d+)") + "$")
        paths = {}
        for path in glob.glob(glob.escape(pattern).replace("%r", "*")):
            match = rank_in_name.match(path)
            if match is not None:
                paths[match.group(1)] = path
    counters: dict[str, Any] = {}
    for rank in sorted(paths, key=lambda key: int(key) if key.isdigit() else -1):
        try:
            with open(paths[rank], encoding="utf-8") as handle:
                counters[rank] = json.load(handle)
        except (OSError, json.JSONDecodeError):
            continue  # a rank that did not reach MPI_Finalize wrote nothing
    return counters


def _exit_status(returncode: int) -> int:
    # A command killed by a signal exits like a shell reports it: 128 + the signal number.
    return 128 - returncode if returncode < 0 else returncode


def run(args: argparse.Namespace) -> int:
    from pycomm.info import interposer_path

    command = _command(args)
    if args.min_bytes is not None and args.min_bytes < 0:
        raise InvalidArgumentError(f"--min-bytes must be >= 0, got {args.min_bytes}")
    path = interposer_path()
    with tempfile.TemporaryDirectory(prefix="pycomm-interpose-") as scratch:
        counters = args.counters or (os.path.join(scratch, "counters-%r.json") if args.json else None)
        environment = interposer_environment(dict(os.environ), path, args, counters)
        try:
            child = subprocess.Popen(command, env=environment)
        except FileNotFoundError:
            raise InvalidArgumentError(f"command not found: {command[0]}") from None
        except PermissionError:
            raise InvalidArgumentError(f"command is not executable: {command[0]}") from None
        try:
            returncode = child.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the command too; give it a moment to finish before leaving.
            child.send_signal(signal.SIGINT)
            child.wait()
            raise
        if args.json:
            report = {
                "command": command,
                "returncode": _exit_status(returncode),
                "interposer": path,
                "environment": {
                    name: environment[name]
                    for name in sorted(environment)
                    if name == "LD_PRELOAD" or name.startswith("PYCOMM_INTERPOSE")
                },
                "counters": read_counters(counters) if counters else {},
            }
            write_json(args.json, report)
    return _exit_status(returncode)
