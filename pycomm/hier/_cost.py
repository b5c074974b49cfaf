"""The cost model behind :meth:`ZeroPlan.predict`: the time of one optimizer step from the bytes each
level carries, the links' bandwidth and latency, quantization work and compute, with overlap.

The model, per optimizer step of ``micro_steps`` micro-steps on ``P`` ranks:

- **Links.** A collective's ring at level ``i`` costs ``calls * steps_i * latency_i + bytes_i /
  (ring_bandwidth_i * bandwidth_efficiency)``: ``bytes_i`` from :meth:`ZeroPlan.bytes_per_level`,
  ``steps_i = f_i - 1`` (twice for an all-reduce), ``ring_bandwidth_i`` the slowest hop of the level's
  ring divided by the ranks sharing a link (:attr:`Level.ring_bandwidth`), ``calls`` the collectives a
  pass issues (one per transformer layer). Levels of one collective run one after the other.
- **Quantization.** ``elements * source bytes / quantize_throughput`` for every element a rank
  quantizes or dequantizes (:meth:`Transfer.quantize_elements`).
- **Compute.** ``flops / (P * achieved_flops_per_gcd)`` with ``flops = 6 * n_params * tokens`` unless
  given; a third of it forward, two thirds backward.
- **Overlap.** While layer ``l`` computes, layer ``l + 1``'s gather (forward) or layer ``l``'s
  gradient reduce and the next gather (backward) run, so up to ``overlap`` times each pass's compute
  time hides that pass's communication and quantization; the rest is exposed. The once-per-step
  gradient sync and weight update are exposed in full (they sit between the last backward and the
  next forward), and the optimizer's own arithmetic is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycomm.errors import InvalidArgumentError
from pycomm.hier.plan import PHASES
from pycomm.hier.topology import GB, format_table

if TYPE_CHECKING:
    from pycomm.hier.plan import ZeroPlan

# Defaults. Compute and links are physical figures; overlap, bandwidth efficiency and quantize
# throughput are the least-known constants: each was set inside its plausible range so that the
# documented Frontier case (20B GPT, 384 GCDs) lands near the published ratios, and the same values
# apply to every scheme and machine.
ACHIEVED_FLOPS_PER_GCD = 80e12
"""FLOP/s one GCD sustains in a transformer's matrix multiplies when no communication stalls it:
42% of an MI250X GCD's 191.5 TFLOP/s bf16 peak, near the 32-38% of peak measured end to end (stalls
included) for 22B-1T GPT training on Frontier ("Optimizing Distributed Training on Frontier for Large
Language Models")."""
OVERLAP = 0.2
"""Fraction of a pass's compute time that can hide that pass's communication. Prefetching the next
layer's gather and reducing the last layer's gradients run beside compute, but they compete with it
for HBM bandwidth and compute units, a gather issued too late stalls the layer, and the first and
last layers of a pass cannot overlap at all; traces of ZeRO-3 training usually show most of the
communication exposed."""
BANDWIDTH_EFFICIENCY = 0.5
"""Fraction of a link's peak a collective library's ring achieves on large messages when every rank
of a node communicates at once (protocol and pipelining overheads, NIC and fabric contention); RCCL
bus bandwidths of half the link peak are common on MI250X nodes and Slingshot."""
QUANTIZE_THROUGHPUT = 200e9
"""Bytes of 16-bit input per second a GCD's quantize or dequantize-and-sum kernel processes: an eighth
of an MI250X GCD's 1.6 TB/s of HBM, since block quantization reads, reduces and writes in several
passes and kernels written for one GPU family run well below the memory roofline on another."""


def estimated_layers(n_params: float) -> int:
    """Transformer layers of a GPT of ``n_params`` parameters, from ``n = 12 * L * h^2`` with the
    width ``h ~ 128 L`` of the GPT-3 family (GPT-NeoX-20B: 44 layers, 6144 wide)."""
    return max(1, round((n_params / (12 * 128**2)) ** (1 / 3)))


@dataclass
class Prediction:
    """The predicted cost of one optimizer step of a plan.

    ``levels``: one row a level with ``bytes`` (per rank, per phase and total) and ``time`` (seconds,
    per phase and total, communication only). ``quantization_time``, ``compute_time``,
    ``communication_time`` (links and quantization, before overlap) and ``exposed_time`` (what overlap
    leaves) are per step; ``step_time`` is compute plus exposed; ``tflops_per_gcd`` is model FLOP/s a
    rank. ``assumptions`` names every constant used.
    """

    scheme: str
    ranks: int
    tokens_per_step: float
    micro_steps: int
    levels: list[dict[str, Any]]
    quantization_time: float
    compute_time: float
    communication_time: float
    exposed_time: float
    step_time: float
    tflops_per_gcd: float
    memory_per_rank: dict[str, float]
    assumptions: dict[str, Any] = field(default_factory=dict)

    def speedup_over(self, other: Prediction) -> float:
        """How many times faster this plan trains than ``other`` (ratio of TFLOPS per GCD; equal to
        the ratio of step times for the same model, tokens and ranks)."""
        return self.tflops_per_gcd / other.tflops_per_gcd

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "ranks": self.ranks,
            "tokens_per_step": self.tokens_per_step,
            "micro_steps": self.micro_steps,
            "levels": self.levels,
            "quantization_time": self.quantization_time,
            "compute_time": self.compute_time,
            "communication_time": self.communication_time,
            "exposed_time": self.exposed_time,
            "step_time": self.step_time,
            "tflops_per_gcd": self.tflops_per_gcd,
            "memory_per_rank": self.memory_per_rank,
            "assumptions": self.assumptions,
        }

    def table(self) -> str:
        """Per-level bytes (GB per rank per step) and time (s), then the totals."""
        headers = ["level", *(f"{p} GB" for p in _SHORT), "total GB", "time s"]
        rows = [
            [
                row["level"],
                *(f"{row['bytes'][p] / GB:.3g}" for p in PHASES),
                f"{row['bytes']['total'] / GB:.3g}",
                f"{row['time']['total']:.3g}",
            ]
            for row in self.levels
        ]
        lines = [
            format_table(headers, rows),
            f"quantize {self.quantization_time:.3g} s, communication {self.communication_time:.3g} s "
            f"(exposed {self.exposed_time:.3g} s), compute {self.compute_time:.3g} s, "
            f"step {self.step_time:.3g} s, {self.tflops_per_gcd:.3g} TFLOPS per GCD",
        ]
        return "\n".join(lines)


_SHORT = {
    "forward_gather": "fwd",
    "backward_gather": "bwd",
    "gradient_reduce": "grad",
    "gradient_sync": "sync",
    "parameter_update": "update",
}
_SHORT = {phase: _SHORT[phase] for phase in PHASES}


def predict(
    plan: ZeroPlan,
    tokens_per_step: float,
    *,
    micro_steps: int = 1,
    flops: float | None = None,
    achieved_flops_per_gcd: float = ACHIEVED_FLOPS_PER_GCD,
    overlap: float = OVERLAP,
    bandwidth_efficiency: float = BANDWIDTH_EFFICIENCY,
    quantize_throughput: float = QUANTIZE_THROUGHPUT,
    layers: int | None = None,
) -> Prediction:
    """Predict one optimizer step of ``plan`` processing ``tokens_per_step`` tokens in all, split
    into ``micro_steps`` micro-steps (gradient accumulation). See the module docstring for the model;
    each keyword overrides one constant, and the result's ``assumptions`` lists them all."""
    _positive("tokens_per_step", tokens_per_step)
    if isinstance(micro_steps, bool) or not isinstance(micro_steps, int) or micro_steps < 1:
        raise InvalidArgumentError(f"micro_steps must be an int >= 1, got {micro_steps!r}")
    _positive("achieved_flops_per_gcd", achieved_flops_per_gcd)
    _positive("quantize_throughput", quantize_throughput)
    if not 0 <= overlap <= 1:
        raise InvalidArgumentError(f"overlap must be in [0, 1], got {overlap!r}")
    if not 0 < bandwidth_efficiency <= 1:
        raise InvalidArgumentError(f"bandwidth_efficiency must be in (0, 1], got {bandwidth_efficiency!r}")
    if flops is not None:
        _positive("flops", flops)
    if layers is None:
        layers = estimated_layers(plan.n_params)
    elif isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise InvalidArgumentError(f"layers must be an int >= 1, got {layers!r}")

    topology = plan.topology
    ranks = topology.size
    total_flops = flops if flops is not None else 6 * plan.n_params * tokens_per_step
    compute = total_flops / (ranks * achieved_flops_per_gcd)

    # Per-phase seconds of one occurrence (a micro-step's, or the step's for the step phases).
    phase_time = dict.fromkeys(PHASES, 0.0)
    level_bytes = [dict.fromkeys(PHASES, 0.0) for _ in topology.levels]
    level_time = [dict.fromkeys(PHASES, 0.0) for _ in topology.levels]
    quantization = dict.fromkeys(PHASES, 0.0)
    for transfer in plan.transfers():
        times = micro_steps if transfer.per_micro_step else 1
        for index, level in enumerate(topology.levels):
            sent = transfer.bytes_at(topology, index)
            if not sent:
                continue
            seconds = layers * transfer.steps_at(topology, index) * level.latency + sent / (
                level.ring_bandwidth * bandwidth_efficiency
            )
            level_bytes[index][transfer.phase] += times * sent
            level_time[index][transfer.phase] += times * seconds
            phase_time[transfer.phase] += seconds
        quantize = transfer.quantize_elements(topology) * transfer.source_bytes / quantize_throughput
        quantization[transfer.phase] += times * quantize
        phase_time[transfer.phase] += quantize

    forward_compute = compute / micro_steps / 3
    backward_compute = 2 * compute / micro_steps / 3
    exposed_forward = max(0.0, phase_time["forward_gather"] - overlap * forward_compute)
    exposed_backward = max(
        0.0, phase_time["backward_gather"] + phase_time["gradient_reduce"] - overlap * backward_compute
    )
    exposed = micro_steps * (exposed_forward + exposed_backward) + (
        phase_time["gradient_sync"] + phase_time["parameter_update"]
    )
    communication = (
        micro_steps
        * (phase_time["forward_gather"] + phase_time["backward_gather"] + phase_time["gradient_reduce"])
        + phase_time["gradient_sync"]
        + phase_time["parameter_update"]
    )
    step = compute + exposed
    rows = []
    for index, level in enumerate(topology.levels):
        sent = dict(level_bytes[index])
        sent["total"] = sum(level_bytes[index].values())
        spent = dict(level_time[index])
        spent["total"] = sum(level_time[index].values())
        rows.append({"level": level.name, "bytes": sent, "time": spent})
    assumptions = {
        "model": f"{plan.n_params:.4g} parameters, {layers} layers (one collective per layer per pass)",
        "tokens_per_step": tokens_per_step,
        "micro_steps": micro_steps,
        "flops_per_step": total_flops,
        "flops_rule": "given" if flops is not None else "6 * parameters * tokens",
        "achieved_flops_per_gcd": achieved_flops_per_gcd,
        "overlap": overlap,
        "bandwidth_efficiency": bandwidth_efficiency,
        "quantize_throughput": quantize_throughput,
        "quantization_block": plan.quantization_block,
        "bytes_per_param": plan.bytes_per_param,
        "gradient_bytes_per_param": plan.gradient_bytes_per_param,
        "optimizer_bytes_per_param": plan.optimizer_bytes_per_param,
        "links": "; ".join(
            f"{level.name}: {level.ring_bandwidth / GB:g} GB/s per rank, {level.latency * 1e6:g} us"
            for level in topology.levels
        ),
        "collectives": "as HierComm runs them (pycomm.hier._volume): one level after another, reduce-scatter "
        "inner level first, all-gather outer level first; qgZ in two all-to-all hops (all inner levels "
        "together, then the outermost)",
    }
    return Prediction(
        scheme=plan.scheme,
        ranks=ranks,
        tokens_per_step=tokens_per_step,
        micro_steps=micro_steps,
        levels=rows,
        quantization_time=sum(quantization.values()),
        compute_time=compute,
        communication_time=communication,
        exposed_time=exposed,
        step_time=step,
        tflops_per_gcd=total_flops / (ranks * step) / 1e12,
        memory_per_rank=plan.memory_per_rank(),
        assumptions=assumptions,
    )


def _positive(role: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise InvalidArgumentError(f"{role} must be a positive finite number, got {value!r}")
