"""``pycomm bench``: pycomm measured side by side with its anchors in one run.

``bench reduce`` times the byte kernels every collective runs on (reductions, quantizers, casts, the
content hash) against numpy, with memcpy of the same size as the bound. ``bench allreduce`` times
pycomm.ft's all-reduce against MPICH (mpi4py) and gloo (torch.distributed) on 2 and 4 local peers,
and pycomm's recovery, join and eviction times. ``bench pack`` times datatype pack and unpack
against MPICH's MPI_Pack (mpi4py), a numpy strided copy and memcpy on TEMPI's shapes, plus type
commit times (and, on request, the GPU kernels and a halo exchange under the MPI interposer).
``bench hier`` times pycomm.hier's hierarchical and quantized all-gather and reduce-scatter against
MPI's flat ones on 8 ranks laid out 2 x 2 x 2, with the bytes sent per level against the plan's
formulas. ``bench torch`` times ``dist.all_reduce`` and a DDP training step on backend "pycomm"
against gloo, both groups in one mpiexec job per world size. The harness and the cases live in
:mod:`pycomm.benchmarks`; this module only reads options and writes the output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pycomm import kernels
from pycomm.cli.output import add_json_option, write_json
from pycomm.errors import InvalidArgumentError

if TYPE_CHECKING:
    from pycomm.benchmarks import Bound, Case, CaseResult, Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: pycomm against its anchors, side by side",
        description="Benchmarks that measure pycomm and its anchors in the same run and report ratios.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _register_reduce(benchmarks)
    _register_allreduce(benchmarks)
    _register_pack(benchmarks)
    _register_hier(benchmarks)
    _register_torch(benchmarks)


def _register_reduce(benchmarks: Any) -> None:
    from pycomm.benchmarks import reduce as suite
    from pycomm.benchmarks.units import format_size

    parser = benchmarks.add_parser(
        "reduce",
        help="reduction, quantizer, cast and hash kernels against numpy, memcpy as the bound",
        description=(
            "Times pycomm's byte kernels (reduce_into, quantize, dequantize, cast, hash64) and their "
            "numpy/zlib/hashlib anchors in the same run, with np.copyto of the same size as the "
            "memory-bandwidth bound. Reports medians, GB/s of bus bytes (read + written), ratios "
            "pycomm/anchor and the fraction of memcpy."
        ),
    )
    default_sizes = ",".join(format_size(s).replace(" ", "") for s in suite.DEFAULT_SIZES)
    quick_sizes = ",".join(format_size(s).replace(" ", "") for s in suite.QUICK_SIZES)
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        help=f"array sizes, comma-separated, binary units (default {default_sizes}; --quick: {quick_sizes})",
    )
    parser.add_argument(
        "--dtypes",
        metavar="LIST",
        help=f"reduction dtypes (default {','.join(suite.DEFAULT_DTYPES)}; --quick: "
        f"{','.join(suite.QUICK_DTYPES)}); any of {','.join(suite.DTYPES)}",
    )
    parser.add_argument(
        "--ops",
        metavar="LIST",
        help=f"reduction ops, each run on every dtype (default {','.join(suite.DEFAULT_OPS)}; --quick: "
        f"{','.join(suite.QUICK_OPS)})",
    )
    parser.add_argument(
        "--kernels",
        metavar="LIST",
        default=",".join(suite.KERNELS),
        help=f"kernel groups to run (default all: {','.join(suite.KERNELS)})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="measured repetitions of each callable; figures are their medians (default 5; --quick: 3)",
    )
    parser.add_argument(
        "--min-time-ms",
        type=float,
        metavar="MS",
        help="shortest repetition; calls are repeated until one lasts this long (default 25; --quick: 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads one large pycomm kernel call may use during the run (default: pycomm's setting, "
        "see pycomm.kernels.threads()); the numpy, zlib and hashlib anchors use one thread",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few sizes, dtypes and short repetitions (tests, CI)"
    )
    add_json_option(parser)
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw bandwidth against size (log-log) into a PNG (needs matplotlib)",
    )
    parser.set_defaults(run=_run_reduce)


def _split(text: str | None, default: tuple[str, ...]) -> list[str]:
    if text is None:
        return list(default)
    return [part.strip() for part in text.split(",") if part.strip()]


def _whole_numbers(text: str | None, default: tuple[int, ...], option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _split(text, tuple(map(str, default))))
    except ValueError:
        raise InvalidArgumentError(f"{option} takes whole numbers, e.g. 2,4; got {text!r}") from None


def _reduce_options(args: argparse.Namespace) -> dict[str, Any]:
    """The command line with --quick and the defaults applied (what the JSON records as options)."""
    from pycomm.benchmarks import parse_sizes
    from pycomm.benchmarks import reduce as suite

    quick = args.quick
    return {
        "sizes": parse_sizes(args.sizes)
        if args.sizes
        else list(suite.QUICK_SIZES if quick else suite.DEFAULT_SIZES),
        "dtypes": _split(args.dtypes, suite.QUICK_DTYPES if quick else suite.DEFAULT_DTYPES),
        "ops": _split(args.ops, suite.QUICK_OPS if quick else suite.DEFAULT_OPS),
        "kernels": _split(args.kernels, suite.KERNELS),
        "repeat": args.repeat if args.repeat is not None else (3 if quick else 5),
        "min_time_ms": args.min_time_ms if args.min_time_ms is not None else (2.0 if quick else 25.0),
        "threads": args.threads if args.threads is not None else kernels.threads(),
        "quick": quick,
        "block_size": suite.BLOCK_SIZE,
    }


def _run_reduce(args: argparse.Namespace) -> int:
    from pycomm.benchmarks import Settings, format_results, plot_bandwidth, results_to_json
    from pycomm.benchmarks import reduce as suite

    options = _reduce_options(args)
    settings = Settings(repeat=options["repeat"], min_time_s=options["min_time_ms"] / 1000)
    cases = suite.build_cases(options["sizes"], options["dtypes"], options["ops"], options["kernels"])
    if args.plot:
        # Fail before a run of minutes, not after it.
        from pycomm._deps import require_matplotlib

        require_matplotlib("pycomm bench --plot")
        if args.plot == args.json:
            raise InvalidArgumentError("--json and --plot name the same file")

    machine, case_results = _measure(
        cases, suite.build_bounds(options["sizes"]), settings, options["threads"]
    )
    if args.json:
        payload = results_to_json("reduce", case_results, settings, machine, suite.DEFINITIONS, options)
        write_json(args.json, payload)
    if args.plot:
        plot_bandwidth(case_results, args.plot, _title(machine))
    if args.json != "-":
        timing = (
            f"{settings.repeat} repetitions of >= {options['min_time_ms']:g} ms each, interleaved; medians. "
            f"pycomm may split a large call over up to {options['threads']} thread(s); the anchors use one"
        )
        print(format_results(case_results, [_title(machine), timing, *suite.TABLE_NOTES]))
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write(
    args: argparse.Namespace, document: dict[str, Any], report: Callable[[dict[str, Any]], str]
) -> None:
    """The document as JSON where ``--json`` says, and the report printed unless the JSON went to
    standard output."""
    if args.json:
        write_json(args.json, document)
    if args.json != "-":
        print(report(document))


def _measure(
    cases: list[Case], bounds: list[Bound], settings: Settings, threads: int
) -> tuple[dict[str, Any], list[CaseResult]]:
    """Runs the cases with the kernels limited to ``threads``; returns (machine info, results)."""
    from pycomm.benchmarks import machine_info, run_benchmark

    previous_threads = kernels.threads()
    kernels.set_threads(threads)
    try:
        machine = machine_info()
        case_results = run_benchmark(cases, bounds, settings, progress=_progress)
    finally:
        # main() is also called in-process (tests, scripts): leave the process as it was found.
        kernels.set_threads(previous_threads)
    return machine, case_results


def _title(machine: dict[str, Any]) -> str:
    return (
        f"pycomm {machine['pycomm']} bench reduce: {machine['cpu_model']}, {machine['usable_cores']} usable "
        f"core(s), kernels {machine['build']['kernel_isa_active']} on up to {machine['kernel_threads']} "
        f"thread(s), numpy {machine['numpy']}, {machine['date']}"
    )


def _register_allreduce(benchmarks: Any) -> None:
    from pycomm.benchmarks import allreduce as suite
    from pycomm.benchmarks import allreduce_wan as wan
    from pycomm.benchmarks.units import format_size

    parser = benchmarks.add_parser(
        "allreduce",
        help="pycomm.ft all-reduce against MPICH (mpi4py) and gloo (torch), plus recovery/join/eviction",
        description=(
            "Times pycomm.ft's fault-tolerant all-reduce, MPICH's MPI_Allreduce (mpi4py, under mpiexec) "
            "and gloo's (torch.distributed) on groups of local processes in the same run, repetitions "
            "interleaved, every system's results checked exactly first. Reports median latency, bus "
            "bandwidth (2(n-1)/n x bytes / median time) and the ratios pycomm/gloo and pycomm/MPICH; "
            "then, for pycomm only, the time to recover from a SIGKILLed peer, for a newcomer to join, "
            "and for the master to evict a SIGSTOPped peer."
        ),
    )
    sizes = ",".join(format_size(s).replace(" ", "") for s in suite.DEFAULT_SIZES)
    quick_sizes = ",".join(format_size(s).replace(" ", "") for s in suite.QUICK_SIZES)
    wan_size = ",".join(format_size(s).replace(" ", "") for s in wan.DEFAULT_WAN_SIZES)
    wan_quick_size = ",".join(format_size(s).replace(" ", "") for s in wan.QUICK_WAN_SIZES)
    parser.add_argument(
        "--peers",
        metavar="LIST",
        help=f"peer counts (processes per system), comma-separated (default "
        f"{','.join(map(str, suite.DEFAULT_PEERS))})",
    )
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        help=f"float32 array sizes per peer, binary units (default {sizes}; --quick: {quick_sizes})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help=f"measured repetitions per system and case; figures are medians (default "
        f"{suite.DEFAULT_REPEAT}; --quick: {suite.QUICK_REPEAT})",
    )
    parser.add_argument(
        "--min-time-ms",
        type=float,
        metavar="MS",
        help=f"shortest repetition; calls are repeated until the slowest rank's lasts this long (default "
        f"{suite.DEFAULT_MIN_TIME_S * 1000:g}; --quick: {suite.QUICK_MIN_TIME_S * 1000:g})",
    )
    parser.add_argument(
        "--anchors",
        metavar="LIST",
        help=f"systems to compare with (default {','.join(suite.ANCHORS)}; 'none' for pycomm alone); an "
        "anchor whose package is missing is skipped with a note",
    )
    parser.add_argument(
        "--no-recovery",
        action="store_true",
        help="skip the fault measurements (recovery after SIGKILL, join, eviction after SIGSTOP)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {quick_sizes}, few short repetitions and one fault trial (tests, CI; under a minute)",
    )
    parser.add_argument(
        "--wan",
        metavar="SPEC",
        help="instead, over emulated WAN links with this round trip, rate and loss (e.g. "
        "rtt=50ms,rate=1gbit,loss=0.01%%; needs root: network namespaces, pycomm.testing.netem): one "
        f"large all-reduce (--sizes, default {wan_size}; --quick: {wan_quick_size}) on "
        f"{','.join(map(str, wan.DEFAULT_WAN_PEERS))} peers with the pool of connections sized from the "
        "link, with connections=1 and with int8 on the wire, plain TCP over the same links (1 and 4 "
        "streams), and the recovery from a peer SIGKILLed over the link; figures as shares of the rate "
        f"({wan.DEFAULT_WAN_REPEAT} repetitions by default; --quick: {wan.QUICK_WAN_REPEAT}, on "
        f"{','.join(map(str, wan.QUICK_WAN_PEERS))} peers)",
    )
    add_json_option(parser)
    parser.set_defaults(run=_run_allreduce)


def _allreduce_config(args: argparse.Namespace) -> Any:
    from pycomm.benchmarks import allreduce as suite
    from pycomm.benchmarks import parse_sizes

    quick = args.quick
    peers = _whole_numbers(args.peers, suite.DEFAULT_PEERS, "--peers")
    anchors = tuple(_split(args.anchors, suite.ANCHORS))
    if anchors == ("none",):
        anchors = ()
    return suite.AllreduceConfig(
        peers=peers,
        sizes=tuple(parse_sizes(args.sizes))
        if args.sizes
        else (suite.QUICK_SIZES if quick else suite.DEFAULT_SIZES),
        anchors=anchors,
        repeat=args.repeat
        if args.repeat is not None
        else (suite.QUICK_REPEAT if quick else suite.DEFAULT_REPEAT),
        min_time_s=(args.min_time_ms / 1000)
        if args.min_time_ms is not None
        else (suite.QUICK_MIN_TIME_S if quick else suite.DEFAULT_MIN_TIME_S),
        recovery=not args.no_recovery,
        fault_trials=suite.QUICK_FAULT_TRIALS if quick else suite.DEFAULT_FAULT_TRIALS,
        quick=quick,
    )


def _allreduce_wan_config(args: argparse.Namespace) -> Any:
    from pycomm.benchmarks import allreduce_wan as suite
    from pycomm.benchmarks import parse_sizes
    from pycomm.testing import netem

    for option, value in (("--anchors", args.anchors), ("--min-time-ms", args.min_time_ms)):
        if value is not None:
            raise InvalidArgumentError(
                f"{option} does not apply to --wan (its anchor is plain TCP over the same links, and each "
                "repetition is one all-reduce)"
            )
    quick = args.quick
    return suite.WanConfig(
        link=netem.parse_link(args.wan),
        peers=_whole_numbers(
            args.peers, suite.QUICK_WAN_PEERS if quick else suite.DEFAULT_WAN_PEERS, "--peers"
        ),
        sizes=tuple(parse_sizes(args.sizes))
        if args.sizes
        else (suite.QUICK_WAN_SIZES if quick else suite.DEFAULT_WAN_SIZES),
        repeat=args.repeat
        if args.repeat is not None
        else (suite.QUICK_WAN_REPEAT if quick else suite.DEFAULT_WAN_REPEAT),
        warmup=0 if quick else 1,
        recovery=not args.no_recovery,
        fault_trials=1 if quick else 3,
        fault_size=suite.QUICK_FAULT_SIZE if quick else suite.DEFAULT_FAULT_SIZE,
        tcp_warmup_s=0.3 if quick else 1.0,
        tcp_window_s=0.6 if quick else 2.0,
        quick=quick,
    )


def _run_allreduce_wan(args: argparse.Namespace) -> int:
    from pycomm.benchmarks import allreduce_wan as suite

    config = _allreduce_wan_config(args)
    document = suite.run_wan(config, progress=_progress)

    def report(document: dict[str, Any]) -> str:
        machine, link = document["machine"], config.link
        title = (
            f"pycomm {machine['pycomm']} bench allreduce --wan {args.wan}: {machine['cpu_model']}, "
            f"{machine['usable_cores']} usable core(s), {machine['date']}; every link rtt "
            f"{link.get('rtt', 0) * 1e3:g} ms, rate {config.rate / 1e9:g} Gbit/s, loss "
            f"{link.get('loss', 0):g}; "
            f"{config.repeat} repetition(s) per system after {config.warmup} warm-up round(s), interleaved; "
            f"medians; {document['seconds']:.0f} s in all"
        )
        return f"{title}\n{suite.format_wan_report(document)}"

    _write(args, document, report)
    return 0


def _run_allreduce(args: argparse.Namespace) -> int:
    from pycomm.benchmarks import allreduce as suite

    if args.wan is not None:
        return _run_allreduce_wan(args)
    config = _allreduce_config(args)
    document = suite.run_allreduce(config, progress=_progress)

    def report(document: dict[str, Any]) -> str:
        machine, settings = document["machine"], document["settings"]
        title = (
            f"pycomm {machine['pycomm']} bench allreduce: {machine['cpu_model']}, {machine['usable_cores']} "
            f"usable core(s), numpy {machine['numpy']}, {machine['date']}; {settings['repeat']} repetitions "
            f"of >= {settings['min_time_s'] * 1000:g} ms per system and case, interleaved; medians; "
            f"{document['seconds']:.0f} s in all"
        )
        return f"{title}\n{suite.format_report(document)}"

    _write(args, document, report)
    return 0


def _register_pack(benchmarks: Any) -> None:
    from pycomm.benchmarks import pack as suite

    parser = benchmarks.add_parser(
        "pack",
        help="datatype pack/unpack against MPI_Pack (mpi4py), numpy and memcpy; type commit times",
        description=(
            "Times pycomm.datatype's pack and unpack on TEMPI's shapes (2-D byte vectors, 64 B blocks at "
            "a 128 B stride, the faces of a 512^3 float cube) against MPI_Pack/MPI_Unpack of the MPI "
            "library mpi4py loads, a numpy copy of the same strided view and memcpy of the packed bytes, "
            "repetitions interleaved, after checking that every engine packs the same bytes. Reports "
            "medians, GB/s of packed bytes, the ratios pycomm/MPI and pycomm/numpy, the fraction of "
            "memcpy and whether each row meets its targets; then the time to commit a fresh type."
        ),
    )
    parser.add_argument(
        "--groups",
        metavar="LIST",
        default=",".join(suite.GROUPS),
        help=f"shape groups to run (default all: {','.join(suite.GROUPS)}): 2-D vectors of 1-512 B blocks "
        "at a 512 B stride, 64 B blocks at a 128 B stride, cube faces",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="measured repetitions of each callable; figures are their medians (default 5; --quick: 3)",
    )
    parser.add_argument(
        "--min-time-ms",
        type=float,
        metavar="MS",
        help="shortest repetition; calls are repeated until one lasts this long (default 25; --quick: 2)",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="also run the GPU pack benchmark (benchmarks/pack_gpu.py); without a GPU, says why and goes on",
    )
    parser.add_argument(
        "--halo",
        action="store_true",
        help="also run the 3-D halo exchange (benchmarks/halo.py) under mpiexec -n 2 with MPI alone and "
        "with pycomm's MPI interposer preloaded",
    )
    parser.add_argument(
        "--interposer",
        metavar="PATH",
        help="with --halo: the interposer library to preload (default: the one installed with pycomm)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="in-cache sizes and short repetitions (tests, CI; seconds)"
    )
    add_json_option(parser)
    parser.set_defaults(run=_run_pack)


def _run_pack(args: argparse.Namespace) -> int:
    from pycomm.benchmarks import Settings
    from pycomm.benchmarks import pack as suite

    quick = args.quick
    options = {
        "groups": _split(args.groups, suite.GROUPS),
        "repeat": args.repeat if args.repeat is not None else (3 if quick else 5),
        "min_time_ms": args.min_time_ms if args.min_time_ms is not None else (2.0 if quick else 25.0),
        "quick": quick,
        "gpu": args.gpu,
        "halo": args.halo,
        "interposer": args.interposer,
    }
    if args.interposer is not None and not args.halo:
        raise InvalidArgumentError("--interposer is used by --halo only; add --halo")
    settings = Settings(repeat=options["repeat"], min_time_s=options["min_time_ms"] / 1000)
    suite.pack_shapes(quick, options["groups"])  # refuses unknown groups before MPI starts
    document = suite.run_pack(options, settings, progress=_progress)
    _write(args, document, suite.format_report)
    # A shape whose engines disagree was not timed: the run did not measure what it claims.
    return 1 if document["failures"] else 0


def _register_hier(benchmarks: Any) -> None:
    from pycomm.benchmarks import hier as suite
    from pycomm.benchmarks.units import format_size

    sizes = ",".join(format_size(s).replace(" ", "") for s in suite.DEFAULT_SIZES)
    parser = benchmarks.add_parser(
        "hier",
        help="hierarchical all-gather / reduce-scatter (plain, int8, int4) against MPI's flat ones",
        description=(
            "Under mpiexec -n 8 on a fake 2 x 2 x 2 topology: pycomm.hier.HierComm's all-gather, int8 "
            "all-gather (qwZ), reduce-scatter and int4 two-hop reduce-scatter (qgZ) against "
            "MPI_Allgather / MPI_Reduce_scatter_block over the same ranks, repetitions interleaved; "
            "medians, ratios hierarchical/flat, the bytes sent per level against the plan's formulas, "
            "and pycomm.kernels quantize / dequantize GB/s."
        ),
    )
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        help=f"float32 bytes one rank gathers into or reduce-scatters, binary units (default {sizes})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="measured repetitions per collective; figures are medians (default 5; --quick: 2)",
    )
    parser.add_argument(
        "--min-time-ms",
        type=float,
        metavar="MS",
        help="shortest repetition (default 20; --quick: 1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="two tiny sizes, short repetitions (tests, CI; seconds)"
    )
    add_json_option(parser)
    parser.set_defaults(run=_run_hier)


def _run_hier(args: argparse.Namespace) -> int:
    from pycomm.benchmarks import hier as suite
    from pycomm.benchmarks import parse_sizes

    quick = args.quick
    if args.sizes:
        sizes = parse_sizes(args.sizes)
    else:
        sizes = list(suite.QUICK_SIZES if quick else suite.DEFAULT_SIZES)
    repeat = args.repeat if args.repeat is not None else (2 if quick else 5)
    if repeat < 1:
        raise InvalidArgumentError(f"--repeat must be at least 1, got {repeat}")
    min_time_ms = args.min_time_ms if args.min_time_ms is not None else (1.0 if quick else 20.0)
    if not min_time_ms > 0:
        raise InvalidArgumentError(f"--min-time-ms must be positive, got {min_time_ms}")
    document = suite.run_hier(sizes, repeat, min_time_ms / 1000, progress=_progress)
    document["settings"]["quick"] = quick
    _write(args, document, suite.format_report)
    # Bytes that differ from the formula mean the plan's per-level figures are not what is sent.
    return 0 if all(row["bytes_match"] for row in document["collectives"]) else 1


def _register_torch(benchmarks: Any) -> None:
    from pycomm.benchmarks import torch_backend as suite
    from pycomm.benchmarks.units import format_size

    sizes = ",".join(format_size(s).replace(" ", "") for s in suite.DEFAULT_SIZES)
    quick_sizes = ",".join(format_size(s).replace(" ", "") for s in suite.QUICK_SIZES)
    parser = benchmarks.add_parser(
        "torch",
        help="torch.distributed backend 'pycomm' against gloo: all_reduce and a DDP step",
        description=(
            "In one mpiexec job per world size, backend 'pycomm' (the default group) and a gloo group "
            "over the same ranks, repetitions interleaved: dist.all_reduce of float32 tensors (every "
            "result checked exactly), median latency and bus bandwidth (2(n-1)/n x bytes / median "
            "time); and the median step time of a DDP-wrapped MLP trained with SGD. Reports the ratio "
            "pycomm/gloo and the faster backend of each row."
        ),
    )
    parser.add_argument(
        "--ranks",
        metavar="LIST",
        help=f"world sizes, one mpiexec job each, comma-separated (default "
        f"{','.join(map(str, suite.DEFAULT_RANKS))})",
    )
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        help=f"float32 tensor sizes per rank, binary units (default {sizes}; --quick: {quick_sizes})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help=f"measured repetitions per backend and row; figures are medians (default "
        f"{suite.DEFAULT_REPEAT}; --quick: {suite.QUICK_REPEAT})",
    )
    parser.add_argument(
        "--min-time-ms",
        type=float,
        metavar="MS",
        help=f"shortest repetition; calls are repeated until the slowest rank's lasts this long (default "
        f"{suite.DEFAULT_MIN_TIME_S * 1000:g}; --quick: {suite.QUICK_MIN_TIME_S * 1000:g})",
    )
    parser.add_argument(
        "--width",
        type=int,
        metavar="N",
        help=f"width of the DDP model's {suite.LAYERS} linear layers (default {suite.DEFAULT_WIDTH}; "
        f"--quick: {suite.QUICK_WIDTH})",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        default=suite.DEFAULT_BATCH,
        help=f"DDP batch per rank (default {suite.DEFAULT_BATCH})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {quick_sizes}, a small model, few short repetitions (tests, CI; seconds)",
    )
    add_json_option(parser)
    parser.set_defaults(run=_run_torch)


def _torch_config(args: argparse.Namespace) -> Any:
    from pycomm.benchmarks import parse_sizes
    from pycomm.benchmarks import torch_backend as suite

    quick = args.quick
    ranks = _whole_numbers(args.ranks, suite.DEFAULT_RANKS, "--ranks")
    return suite.TorchConfig(
        ranks=ranks,
        sizes=tuple(parse_sizes(args.sizes))
        if args.sizes
        else (suite.QUICK_SIZES if quick else suite.DEFAULT_SIZES),
        repeat=args.repeat
        if args.repeat is not None
        else (suite.QUICK_REPEAT if quick else suite.DEFAULT_REPEAT),
        min_time_s=(args.min_time_ms / 1000)
        if args.min_time_ms is not None
        else (suite.QUICK_MIN_TIME_S if quick else suite.DEFAULT_MIN_TIME_S),
        width=args.width if args.width is not None else (suite.QUICK_WIDTH if quick else suite.DEFAULT_WIDTH),
        batch=args.batch,
        quick=quick,
    )


def _run_torch(args: argparse.Namespace) -> int:
    from pycomm.benchmarks import torch_backend as suite

    config = _torch_config(args)
    document = suite.run_torch(config, progress=_progress)
    _write(args, document, suite.format_report)
    return 0
