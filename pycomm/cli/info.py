"""``pycomm info``: what this installation was built with and what it can reach."""

from __future__ import annotations

import argparse
from typing import Any

from pycomm.cli.output import add_json_option, write_json
from pycomm.info import info as collect_info


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("info", help="build features, MPI, CUDA, torch and the interposer")
    add_json_option(parser)
    parser.set_defaults(run=run)


def _status(entry: dict[str, Any], available_text: str) -> str:
    return available_text if entry.get("available") else f"not available ({entry.get('reason', 'unknown')})"


def run(args: argparse.Namespace) -> int:
    report = collect_info()
    if args.json:
        write_json(args.json, report)
        if args.json == "-":
            return 0
    build, mpi, cuda, torch = report["build"], report["mpi"], report["cuda"], report["torch"]
    lines = [
        f"pycomm {report['version']}  (Python {report['python']}, numpy {report['numpy']})",
        f"  build        {build['compiler']}, {build['build_type']}",
        f"  kernels      {build['kernel_isa_active']} (built: {', '.join(build['kernel_isas'])})",
        "  MPI headers  "
        + (
            f"{build['mpi_headers_version']} from {build['mpi_headers_source']}"
            if build["mpi_headers"]
            else "not found at build time"
        ),
        "  MPI runtime  "
        + _status(
            mpi,
            f"{mpi.get('impl')} {mpi.get('version')} via mpi4py {mpi.get('mpi4py')}; "
            f"mpiexec: {mpi.get('mpiexec')}",
        ),
        "  CUDA         "
        + (
            f"built (nvcc {cuda['compiler_version']}); "
            + (
                f"{cuda['devices']} device(s), first: {cuda.get('device_name')}"
                if cuda["devices"]
                else f"no usable device ({cuda.get('reason')})"
            )
            if cuda["built"]
            else f"not built ({cuda.get('reason')})"
        ),
        "  torch        " + _status(torch, f"{torch.get('version')} (gloo: {torch.get('gloo')})"),
        "  interposer   "
        + (report["interposer"]["path"] or f"not available ({report['interposer']['reason']})"),
    ]
    print("\n".join(lines))
    return 0
