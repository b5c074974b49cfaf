"""``pycomm master``: serves the membership master of pycomm.ft in the foreground."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from typing import Any

from pycomm.cli.output import add_json_option, write_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "master",
        help="run the membership master of the fault-tolerant collectives",
        description=(
            "Admits peers into groups, numbers memberships (epochs), evicts failed peers. Runs until "
            "interrupted (Ctrl-C or SIGTERM) or for --seconds. The group secret is read from the "
            "PYCOMM_SECRET environment variable, never from the command line."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    parser.add_argument("--heartbeat-timeout", type=float, default=1.5, help="silence that evicts a peer (s)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pycomm.ft import Master

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    secret = os.environ.get("PYCOMM_SECRET") or None
    started = time.monotonic()

    def show(text: str) -> None:
        print(f"[{time.monotonic() - started:8.3f}] {text}", flush=True)

    with Master(
        args.host, args.port, secret=secret, heartbeat_timeout=args.heartbeat_timeout, log=show
    ) as master:
        print(
            f"pycomm master listening on {master.address}" + (" (secret required)" if secret else ""),
            flush=True,
        )
        try:
            while not stop.wait(0.2):
                if args.seconds is not None and time.monotonic() - started > args.seconds:
                    break
        except KeyboardInterrupt:
            pass
        state = master.group_state()
    if args.json:
        write_json(args.json, {"address": master.address, "group": state})
    return 0
