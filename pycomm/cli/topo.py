"""``pycomm topo``: a topology, the partition schemes' memory per rank, bytes and time per level, and
the predicted speedups between schemes, from the cost model of :mod:`pycomm.hier`.

The default case is the Frontier paper's: a 20B GPT on 48 Frontier nodes (384 GCDs), one sequence of
2048 tokens per GCD per micro-step and 16 micro-steps per optimizer step.
"""

from __future__ import annotations

import argparse
from typing import Any

from pycomm.cli.output import add_json_option, format_table, write_json
from pycomm.errors import InvalidArgumentError
from pycomm.hier import Topology, ZeroPlan
from pycomm.hier._cost import Prediction
from pycomm.hier.plan import SCHEMES

GB = 1e9


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("topo", help="topology, partition plans and the cost model")
    parser.add_argument(
        "--preset",
        choices=["frontier", "dgx", "levels"],
        default="frontier",
        help="machine: frontier (default), dgx (8 GPUs + InfiniBand), or levels (--levels)",
    )
    parser.add_argument(
        "--nodes", type=int, default=None, help="nodes of a preset (default 48 frontier, 2 dgx)"
    )
    parser.add_argument("--levels", help="name:fanout,... innermost first, e.g. gcd:2,gpu:4,node:2")
    parser.add_argument("--params", type=float, default=20e9, help="model parameters (default 20e9)")
    parser.add_argument(
        "--micro-steps",
        type=int,
        default=16,
        help="micro-steps (gradient accumulation) per optimizer step (default 16)",
    )
    parser.add_argument(
        "--tokens",
        type=float,
        default=None,
        help="tokens per optimizer step (default 2048 per rank per micro-step)",
    )
    parser.add_argument(
        "--scheme", default="all", help=f"all (default) or comma-separated of {', '.join(SCHEMES)}"
    )
    add_json_option(parser)
    parser.set_defaults(run=run)


def build_topology(args: argparse.Namespace) -> Topology:
    if args.preset == "levels" or args.levels:
        if not args.levels:
            raise InvalidArgumentError(
                "--preset levels needs --levels name:fanout,... (e.g. gcd:2,gpu:4,node:2)"
            )
        if args.nodes is not None:
            raise InvalidArgumentError(
                "--nodes applies to a preset; with --levels give the node fanout there"
            )
        return Topology.from_levels(_parse_levels(args.levels))
    if args.preset == "dgx":
        return Topology.dgx(2 if args.nodes is None else args.nodes)
    return Topology.frontier(48 if args.nodes is None else args.nodes)


def _parse_levels(text: str) -> list[tuple[str, int]]:
    levels = []
    for part in text.split(","):
        name, _, fanout = part.strip().partition(":")
        if not name or not fanout.strip().isdigit():
            raise InvalidArgumentError(
                f"--levels: expected name:fanout pairs such as gcd:2,node:4, got '{text}'"
            )
        levels.append((name, int(fanout)))
    return levels


def _schemes(text: str, topology: Topology) -> list[str]:
    if text == "all":
        # Schemes that need more levels than the machine has are left out rather than failing.
        needed = {"zero3": 1, "zeropp": 2, "mics": 2, "hsdp": 2, "frontier3": 3}
        return [scheme for scheme in SCHEMES if len(topology.levels) >= needed[scheme]]
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCHEMES]
    if unknown or not names:
        raise InvalidArgumentError(
            f"--scheme: unknown {unknown or text!r}; choose all or from {list(SCHEMES)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    topology = build_topology(args)
    if args.micro_steps < 1:
        raise InvalidArgumentError(f"--micro-steps must be >= 1, got {args.micro_steps}")
    tokens = args.tokens if args.tokens is not None else 2048.0 * topology.size * args.micro_steps
    schemes = _schemes(args.scheme, topology)
    plans = {scheme: ZeroPlan(topology, args.params, scheme) for scheme in schemes}
    predictions = {
        scheme: plan.predict(tokens, micro_steps=args.micro_steps) for scheme, plan in plans.items()
    }
    report = _report(topology, plans, predictions, args.params, tokens)
    if args.json:
        write_json(args.json, report)
        if args.json == "-":
            return 0
    print(_text(topology, plans, predictions, args.params, tokens, args.micro_steps))
    return 0


def _speedups(predictions: dict[str, Prediction]) -> dict[str, dict[str, float]]:
    return {
        a: {b: predictions[a].speedup_over(predictions[b]) for b in predictions if b != a}
        for a in predictions
    }


def _report(
    topology: Topology,
    plans: dict[str, ZeroPlan],
    predictions: dict[str, Prediction],
    params: float,
    tokens: float,
) -> dict[str, Any]:
    first = next(iter(predictions.values()))
    return {
        "topology": topology.to_dict(),
        "params": params,
        "tokens_per_step": tokens,
        "schemes": {
            scheme: {
                "policy": {
                    key: {"level": topology.levels[value.level].name, "quantizer": value.quantizer}
                    for key, value in plan.policy.items()
                },
                "step_quantizers": plan.step_quantizers,
                "memory_per_rank": plan.memory_per_rank(),
                "bytes_leaving_outermost_member": plan.bytes_leaving(-1, predictions[scheme].micro_steps),
                "prediction": predictions[scheme].to_dict(),
            }
            for scheme, plan in plans.items()
        },
        "speedups": _speedups(predictions),
        "assumptions": first.assumptions,
    }


def _text(
    topology: Topology,
    plans: dict[str, ZeroPlan],
    predictions: dict[str, Prediction],
    params: float,
    tokens: float,
    micro_steps: int,
) -> str:
    lines = [topology.describe(), ""]
    lines.append(f"model {params:.3g} parameters; {tokens:,.0f} tokens per step in {micro_steps} micro-steps")
    lines.append("")
    memory_rows = []
    for scheme, plan in plans.items():
        memory = plan.memory_per_rank()
        placement = ", ".join(
            f"{key.split('_')[0]}={topology.levels[value.level].name}"
            + (f"/{value.quantizer}" if value.quantizer else "")
            for key, value in plan.policy.items()
        )
        memory_rows.append(
            [
                scheme,
                *(
                    f"{memory[key] / GB:.3g}"
                    for key in ("parameters", "secondary", "gradients", "optimizer", "total")
                ),
                placement,
            ]
        )
    lines.append("memory per rank (GB)")
    headers = ["scheme", "params", "secondary", "grads", "optimizer", "total", "policy (span up to level)"]
    lines.append(format_table(headers, memory_rows))
    for scheme, prediction in predictions.items():
        outer = plans[scheme].bytes_leaving(-1, micro_steps)
        per_micro_step = outer / plans[scheme].model_bytes / micro_steps
        lines += [
            "",
            f"{scheme}: bytes per rank and seconds per step by level; {outer / GB:.3g} GB leave each "
            f"{topology.levels[-1].name} per step ({per_micro_step:.3g} M per micro-step, M = model bytes)",
            prediction.table(),
        ]
    lines += ["", "predicted speedup (row over column, TFLOPS per GCD)"]
    speedups = _speedups(predictions)
    names = list(predictions)
    lines.append(
        format_table(
            ["", *names],
            [[a, *("-" if a == b else f"{speedups[a][b]:.2f}x" for b in names)] for a in names],
        )
    )
    lines += ["", "assumptions"]
    lines += [f"  {key}: {value}" for key, value in next(iter(predictions.values())).assumptions.items()]
    return "\n".join(lines)
