"""``pycomm stress``: the churn stress run of the fault-tolerant collectives (pycomm.ft.stress)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pycomm.cli.output import add_json_option, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stress",
        help="churn stress run: a master and N peers (loopback or emulated WAN links), peers killed, stalled "
        "and started",
        description=(
            "Starts a master and N peer processes on loopback that run a training-like loop (shared-state "
            "sync, concurrent all-reduces, deterministic update) while peers are killed (SIGKILL), stalled "
            "(SIGSTOP) and started. Every result and every shared-state hash is checked. Exit status 0 only "
            "when nothing mismatched, no peer crashed and nothing hung. --wan runs the same over emulated "
            "WAN links between network namespaces."
        ),
    )
    parser.add_argument("--peers", type=int, default=4, help="peers kept running (default 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration (default 30)")
    parser.add_argument("--no-churn", dest="churn", action="store_false", help="no kills, stalls or starts")
    parser.add_argument("--seed", type=int, default=None, help="seed of the event schedule")
    parser.add_argument("--size", type=int, default=1 << 16, help="elements per all-reduce (default 65536)")
    parser.add_argument(
        "--concurrency", type=int, default=3, help="all-reduces in flight per step (default 3)"
    )
    parser.add_argument(
        "--hang-timeout", type=float, default=20.0, help="seconds without progress that fail the run"
    )
    parser.add_argument(
        "--wan",
        metavar="SPEC",
        help="run over emulated WAN links, every link with this round trip, rate and loss, e.g. "
        "rtt=50ms,rate=1gbit,loss=0.01%% (needs root: network namespaces; pycomm.testing.netem)",
    )
    parser.add_argument(
        "--churn",
        dest="churn",
        action="store_true",
        default=True,
        help="kill, stall and start peers (default)",
    )
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pycomm.errors import NotSupportedError
    from pycomm.ft.stress import StressConfig, run_stress

    wan = None
    if args.wan is not None:
        from pycomm.testing import netem

        wan = netem.parse_link(args.wan)
        usable, reason = netem.available()
        if not usable:
            raise NotSupportedError(f"--wan: emulated links cannot be built on this machine: {reason}")
    config = StressConfig(
        wan=wan,
        peers=args.peers,
        seconds=args.seconds,
        churn=args.churn,
        seed=args.seed,
        size=args.size,
        concurrency=args.concurrency,
        hang_timeout=args.hang_timeout,
    )
    live = sys.stderr.isatty()

    def report(line: str, final: bool) -> None:
        if live:
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
        elif final or report.count % 5 == 0:
            sys.stderr.write(line + "\n")
        report.count += 1
        sys.stderr.flush()

    report.count = 0
    summary = run_stress(config, report)
    print(
        f"stress: {'PASSED' if summary['passed'] else 'FAILED'} after {summary['seconds']} s "
        f"with {summary['peers']} peers"
    )
    keys = (
        "revisions",
        "epochs",
        "ops",
        "aborts",
        "joins",
        "kills",
        "stalls",
        "evictions",
        "mismatches",
        "errors",
    )
    print("  " + ", ".join(f"{key} {summary[key]}" for key in keys))
    print(
        f"  longest time without progress: {summary['longest_stall_s']} s"
        + ("  (HANG)" if summary["hang"] else "")
    )
    for problem in summary["problems"][:20]:
        print(f"  problem: {problem}")
    for index, tail in summary.get("peer_stderr", {}).items():
        print(f"  --- peer {index} stderr ---\n{tail}")
    if args.json:
        write_json(args.json, summary)
    return 0 if summary["passed"] else 1
