"""ZeRO-style partition plans over a :class:`~pycomm.hier.topology.Topology`: which ranks hold which
piece of the weights, gradients and optimizer state, what that costs in memory, and how many bytes
each level's links carry per training step.

A plan is one policy: for each of the four kinds of traffic and state,

- ``forward_gather``: the weights are sharded over the span of this level and all-gathered over it
  before each layer's forward pass (the primary weight partition);
- ``backward_gather``: the span the weights are gathered over before each layer's backward pass;
  narrower than the forward span it is a secondary partition (ZeRO++'s hpZ), filled from the
  forward gather at no extra traffic and costing memory;
- ``gradient_reduce``: each micro-step's gradients are reduced over this span (reduce-scatter as far
  as the optimizer shard reaches, all-reduce above it) and accumulated sharded;
- ``optimizer_shard``: the optimizer state (fp32 master weights, Adam m and v) is sharded over this
  span,

each with the level index of the span (levels ``0..k``, :meth:`Topology.span`) and a quantizer on the
wire (None, ``"int8"``, ``"int4"``). Two collectives follow once per optimizer step when the spans
differ, each with its own quantizer (policy keys ``gradient_sync`` and ``parameter_update``): the
reduction of the accumulated gradients over the levels above the gradient span, and the all-gather of
the updated weights from the optimizer shards into the weight partition.

All collectives are hierarchical, as :class:`~pycomm.hier.comm.HierComm` runs them: one collective
per level, reduce-scatter innermost level first, all-gather outermost first, so the slow outer links
carry the least; a quantized reduce-scatter is qgZ's two hops (an all-to-all over all levels but the
outermost together, then one across the outermost). The bytes each level carries come from
:mod:`pycomm.hier._volume`, the formulas of what HierComm sends, padding and scales included. The
cost model (:meth:`ZeroPlan.predict`) lives in :mod:`pycomm.hier._cost`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from pycomm.errors import InvalidArgumentError
from pycomm.hier import _volume
from pycomm.hier.topology import Topology

QUANTIZERS: dict[str | None, float | None] = {None: None, "int8": 1.0, "int4": 0.5}
"""Payload bytes per element on the wire for each quantizer (None: the tensor's own bytes)."""

POLICY_KEYS = ("forward_gather", "backward_gather", "gradient_reduce", "optimizer_shard")
STEP_KEYS = ("gradient_sync", "parameter_update")
PHASES = ("forward_gather", "backward_gather", "gradient_reduce", "gradient_sync", "parameter_update")
SCHEMES = ("zero3", "zeropp", "mics", "hsdp", "frontier3")


@dataclass(frozen=True)
class Placement:
    """A span (levels ``0..level``) and the quantizer of the traffic over it."""

    level: int
    quantizer: str | None = None


@dataclass(frozen=True)
class Transfer:
    """One collective of a training step, over a contiguous run of levels.

    ``operation`` is ``"all_gather"``, ``"reduce_scatter"`` or ``"all_reduce"`` of the whole model's
    ``elements`` (each rank holds its share at the levels below ``levels[0]``); ``wire_bytes`` and
    ``source_bytes`` are the bytes per element on the wire and in memory; ``per_micro_step`` tells
    whether it runs every micro-step or once per optimizer step; ``block_size`` is the elements per
    float32 scale of a quantized collective.
    """

    phase: str
    operation: str
    levels: tuple[int, ...]
    elements: int
    wire_bytes: float
    source_bytes: float
    quantizer: str | None
    per_micro_step: bool
    block_size: int = 256

    def count(self, topology: Topology) -> int:
        """Elements each rank passes to the collective: its shard of the model for an all-gather
        (``ceil(n / |span(last level)|)``), else the part of the model it holds when the collective
        starts (``ceil(n / |span(first level - 1)|)``, the whole model from level 0)."""
        if self.operation == "all_gather":
            return -(-self.elements // topology.span_size(self.levels[-1]))
        first = self.levels[0]
        return -(-self.elements // topology.span_size(first - 1)) if first > 0 else self.elements

    def sent_per_level(self, topology: Topology) -> list[float]:
        """Bytes one rank sends over each level's links (one entry a topology level), from
        :func:`pycomm.hier._volume.sent_per_level`: what :class:`~pycomm.hier.comm.HierComm` sends
        for this collective, padding and quantization scales included. For an unquantized
        collective over levels ``a..b`` whose sizes divide evenly it is, at level ``i``::

            n * w * (f_i - 1) / (f_0 * f_1 * ... * f_i)      (all-gather, reduce-scatter)

        twice that for an all-reduce, the same whichever levels the collective starts from, because
        a rank holds ``1 / (f_0 * ... * f_(i-1))`` of the model when level ``i`` runs."""
        fanouts = [topology.levels[index].fanout for index in self.levels]
        sent = _volume.sent_per_level(
            self.operation, fanouts, self.count(topology), self.source_bytes, self.quantizer, self.block_size
        )
        result = [0.0] * len(topology.levels)
        for index, volume in zip(self.levels, sent):
            result[index] = volume
        return result

    def bytes_at(self, topology: Topology, level: int) -> float:
        """Bytes one rank sends over the links of ``level`` (see :meth:`sent_per_level`)."""
        if level not in self.levels:
            return 0.0
        return self.sent_per_level(topology)[level]

    def quantize_elements(self, topology: Topology) -> float:
        """Elements one rank quantizes plus dequantizes in this collective (0 unquantized).

        All-gather: its shard once, then every element it receives. Reduce-scatter: at each level
        what it holds, then what it receives (dequantized and summed in fp32). All-reduce: both."""
        if self.quantizer is None:
            return 0.0
        first, last = self.levels[0], self.levels[-1]
        held = self.elements / (topology.span_size(first - 1) if first > 0 else 1)
        shard = self.elements / topology.span_size(last)
        gather = shard + held
        scatter = 0.0
        for level in self.levels:
            fanout = topology.levels[level].fanout
            scatter += held + held * (fanout - 1) / fanout
            held /= fanout
        return {"all_gather": gather, "reduce_scatter": scatter, "all_reduce": gather + scatter}[
            self.operation
        ]

    def steps_at(self, topology: Topology, level: int) -> int:
        """Message steps of the ring at ``level`` (``f - 1``; twice for an all-reduce)."""
        if level not in self.levels:
            return 0
        steps = topology.levels[level].fanout - 1
        return 2 * steps if self.operation == "all_reduce" else steps


PolicyValue = Union[int, str, tuple, Mapping, Placement, None]


class ZeroPlan:
    """A partition plan for a model of ``n_params`` parameters on ``topology``.

    ``scheme`` is one of :data:`SCHEMES` or a policy mapping (see the module docstring; a value is a
    level index or name, a ``(level, quantizer)`` pair, a :class:`Placement` or a mapping with
    ``level`` and ``quantizer``; ``gradient_sync`` and ``parameter_update`` take a quantizer name or
    None). The presets, with ``top`` the outermost level and ``node`` the one inside it:

    - ``zero3``: everything over the whole world, 16-bit on the wire (ZeRO stage 3);
    - ``zeropp``: ZeRO++ — forward gather over the world in int8 (qwZ), backward gather from a
      secondary partition over ``node`` (hpZ), gradients reduce-scattered over the world in int4 with
      qgZ's two hops (an all-to-all inside the node, then one across nodes, re-quantized), optimizer
      over the world;
    - ``mics``: MiCS — weights, gradients and optimizer sharded within ``node`` (the partition group);
      the accumulated gradients are all-reduced across partition groups once per optimizer step;
    - ``hsdp``: hybrid-sharded data parallelism (FSDP2's HSDP) — sharded within ``node``, replicated
      across; gradients reduce-scattered within the node and all-reduced across nodes every
      micro-step;
    - ``frontier3``: the 3-level scheme of the Frontier paper as read here: each kind of state is
      partitioned at the level whose bandwidth fits how often it moves. The weights, gathered twice
      every micro-step, are sharded over level 0 (the two GCDs of an MI250X, 200 GB/s), so forward
      and backward gathers never leave the package; the gradients, reduced once every micro-step,
      are sharded within the node (level 1, the 50-100 GB/s links between MI250X) and accumulate
      there; the optimizer state, touched once per step, is sharded over the whole world so it takes
      little memory. Slingshot carries only the once-per-step traffic, quantized as ZeRO++ does:
      the gradient reduce-scatter across nodes in int4 (qgZ) and the all-gather of the updated
      weights in int8 (qwZ). It needs a topology of at least three levels.

    ``bytes_per_param`` (weights, 2 for fp16/bf16), ``gradient_bytes_per_param`` (2) and
    ``optimizer_bytes_per_param`` (12: fp32 master weights, Adam m and v) size the tensors;
    ``quantization_block`` is the elements per float32 scale of the quantizers (256, as
    :func:`pycomm.kernels.quantize`).
    """

    def __init__(
        self,
        topology: Topology,
        n_params: float,
        scheme: str | Mapping[str, PolicyValue] = "zero3",
        *,
        bytes_per_param: float = 2,
        optimizer_bytes_per_param: float = 12,
        gradient_bytes_per_param: float = 2,
        quantization_block: int = 256,
    ) -> None:
        if not isinstance(topology, Topology):
            raise InvalidArgumentError(f"topology must be a Topology, got {type(topology).__name__}")
        if isinstance(n_params, bool) or not isinstance(n_params, (int, float)) or not n_params >= 1:
            raise InvalidArgumentError(f"n_params must be a number >= 1, got {n_params!r}")
        if not math.isfinite(n_params):
            raise InvalidArgumentError(f"n_params must be finite, got {n_params!r}")
        for role, value in [
            ("bytes_per_param", bytes_per_param),
            ("optimizer_bytes_per_param", optimizer_bytes_per_param),
            ("gradient_bytes_per_param", gradient_bytes_per_param),
        ]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InvalidArgumentError(f"{role} must be a number >= 0, got {value!r}")
        if (
            isinstance(quantization_block, bool)
            or not isinstance(quantization_block, int)
            or quantization_block < 1
        ):
            raise InvalidArgumentError(f"quantization_block must be an int >= 1, got {quantization_block!r}")
        self.topology = topology
        self.n_params = round(n_params)
        self.bytes_per_param = bytes_per_param
        self.optimizer_bytes_per_param = optimizer_bytes_per_param
        self.gradient_bytes_per_param = gradient_bytes_per_param
        self.quantization_block = quantization_block
        if isinstance(scheme, str):
            self.scheme = scheme
            policy: Mapping[str, PolicyValue] = preset_policy(topology, scheme)
        elif isinstance(scheme, Mapping):
            self.scheme = "custom"
            policy = scheme
        else:
            raise InvalidArgumentError(
                f"scheme must be one of {list(SCHEMES)} or a policy mapping, got {scheme!r}"
            )
        self.policy, self.step_quantizers = _normalise_policy(topology, policy)

    # -- the policy -----------------------------------------------------------------------------------

    def __repr__(self) -> str:
        parts = [f"{key}={self._describe_placement(self.policy[key])}" for key in POLICY_KEYS]
        parts += [f"{key}={self.step_quantizers[key]}" for key in STEP_KEYS]
        return (
            f"ZeroPlan({self.scheme!r}, n_params={self.n_params:.4g}, {self.topology!r}, {', '.join(parts)})"
        )

    def _describe_placement(self, placement: Placement) -> str:
        name = self.topology.levels[placement.level].name
        return f"{name}" + (f"/{placement.quantizer}" if placement.quantizer else "")

    @property
    def model_bytes(self) -> float:
        """M: the model's weights in memory (``n_params * bytes_per_param``; 16-bit by default)."""
        return self.n_params * self.bytes_per_param

    def wire_bytes_per_element(self, quantizer: str | None, source_bytes: float) -> float:
        """Bytes per element on the wire: the payload plus one float32 scale per block."""
        payload = QUANTIZERS[quantizer]
        if payload is None:
            return source_bytes
        return payload + 4 / self.quantization_block

    def transfers(self) -> list[Transfer]:
        """The collectives of one optimizer step, in the order they run."""
        top = len(self.topology.levels) - 1
        forward, backward = self.policy["forward_gather"], self.policy["backward_gather"]
        gradient, optimizer = self.policy["gradient_reduce"].level, self.policy["optimizer_shard"].level
        gradient_quantizer = self.policy["gradient_reduce"].quantizer
        weights, grads = self.bytes_per_param, self.gradient_bytes_per_param
        result: list[Transfer] = []

        def add(
            phase: str, operation: str, levels: range, quantizer: str | None, source: float, micro: bool
        ) -> None:
            if len(levels) and any(self.topology.levels[i].fanout > 1 for i in levels):
                wire = self.wire_bytes_per_element(quantizer, source)
                result.append(
                    Transfer(
                        phase,
                        operation,
                        tuple(levels),
                        self.n_params,
                        wire,
                        source,
                        quantizer,
                        micro,
                        self.quantization_block,
                    )
                )

        add("forward_gather", "all_gather", range(forward.level + 1), forward.quantizer, weights, True)
        add("backward_gather", "all_gather", range(backward.level + 1), backward.quantizer, weights, True)
        # Every micro-step: reduce-scatter as far as the optimizer shard reaches, all-reduce above it.
        add(
            "gradient_reduce",
            "reduce_scatter",
            range(min(gradient, optimizer) + 1),
            gradient_quantizer,
            grads,
            True,
        )
        add(
            "gradient_reduce",
            "all_reduce",
            range(optimizer + 1, gradient + 1),
            gradient_quantizer,
            grads,
            True,
        )
        # Once per step: the levels the micro-steps left out, by the same rule.
        sync = self.step_quantizers["gradient_sync"]
        add("gradient_sync", "reduce_scatter", range(gradient + 1, optimizer + 1), sync, grads, False)
        add("gradient_sync", "all_reduce", range(max(gradient, optimizer) + 1, top + 1), sync, grads, False)
        update = self.step_quantizers["parameter_update"]
        add("parameter_update", "all_gather", range(forward.level + 1, optimizer + 1), update, weights, False)
        return result

    # -- memory ---------------------------------------------------------------------------------------

    def memory_per_rank(self) -> dict[str, float]:
        """Bytes of model state one rank holds between steps.

        - ``parameters``: the primary weight partition, ``n * bytes_per_param / |span(forward)|``;
        - ``secondary``: hpZ's copy when the backward span is narrower, ``n * bytes_per_param /
          |span(backward)|`` (else 0);
        - ``gradients``: the accumulation buffer, sharded over the narrower of the gradient and
          optimizer spans;
        - ``optimizer``: ``n * optimizer_bytes_per_param / |span(optimizer)|``;
        - ``total``: their sum. Activations and the transiently gathered layers are not included.
        """
        span = self.topology.span_size
        forward, backward = self.policy["forward_gather"].level, self.policy["backward_gather"].level
        gradient, optimizer = self.policy["gradient_reduce"].level, self.policy["optimizer_shard"].level
        memory = {
            "parameters": self.n_params * self.bytes_per_param / span(forward),
            "secondary": self.n_params * self.bytes_per_param / span(backward) if backward < forward else 0.0,
            "gradients": self.n_params * self.gradient_bytes_per_param / span(min(gradient, optimizer)),
            "optimizer": self.n_params * self.optimizer_bytes_per_param / span(optimizer),
        }
        memory["total"] = sum(memory.values())
        return memory

    # -- bytes ----------------------------------------------------------------------------------------

    def bytes_per_level(self, micro_steps: int = 1) -> list[dict[str, Any]]:
        """Bytes one rank sends over each level's links in one optimizer step of ``micro_steps``
        micro-steps, by phase (forward_gather, backward_gather, gradient_reduce, gradient_sync,
        parameter_update) and in ``total``.

        Each row is the sum over :meth:`transfers` of :meth:`Transfer.sent_per_level` (HierComm's
        exact bytes: for unquantized sizes that divide evenly, ``n * w * (f_i - 1) / (f_0 * ... *
        f_i)`` at level ``i`` per gather or reduce-scatter, twice that per all-reduce). Micro-step
        phases count ``micro_steps`` times; gradient_sync and parameter_update once.
        """
        micro_steps = _check_micro_steps(micro_steps)
        rows: list[dict[str, Any]] = [
            {"level": level.name, **{phase: 0.0 for phase in PHASES}} for level in self.topology.levels
        ]
        for transfer in self.transfers():
            times = micro_steps if transfer.per_micro_step else 1
            for row, sent in zip(rows, transfer.sent_per_level(self.topology)):
                row[transfer.phase] += times * sent
        for row in rows:
            row["total"] = sum(row[phase] for phase in PHASES)
        return rows

    def bytes_leaving(self, level: int | str = -1, micro_steps: int = 1) -> float:
        """Bytes that cross ``level``'s links out of one of its members per optimizer step — for the
        outermost level, out of one node: the per-rank bytes at that level times the ranks inside one
        member (``|span(level - 1)|``).

        This is ZeRO++'s "cross-node volume": a bandwidth-optimal all-gather or reduce-scatter of the
        whole model (``M`` bytes, 16-bit) moves ``M * (n - 1) / n ~ M`` out of each of ``n`` nodes,
        so ZeRO-3 moves ``3 M (n-1)/n`` (two gathers and a reduce-scatter) and ZeRO++ ``0.75 M (n-1)/n``
        (an int8 gather ``M/2``, the node-local hpZ gather 0, an int4 reduce-scatter ``M/4``), plus the
        quantizers' scales.
        """
        index = self.topology.level_index(level)
        inside = self.topology.span_size(index - 1) if index > 0 else 1
        return self.bytes_per_level(micro_steps)[index]["total"] * inside

    # -- time -----------------------------------------------------------------------------------------

    def predict(self, tokens_per_step: float, **assumptions: Any) -> Any:
        """Predicted time of one optimizer step; see :func:`pycomm.hier._cost.predict` for the model
        and its keyword arguments. Returns a :class:`~pycomm.hier._cost.Prediction`."""
        from pycomm.hier._cost import predict

        return predict(self, tokens_per_step, **assumptions)


def preset_policy(topology: Topology, scheme: str) -> dict[str, Any]:
    """The policy of a named scheme on ``topology`` (see :class:`ZeroPlan`)."""
    count = len(topology.levels)
    top = count - 1
    if scheme not in SCHEMES:
        raise InvalidArgumentError(
            f"unknown scheme {scheme!r}; choose one of {list(SCHEMES)} or give a policy"
        )
    if scheme == "zero3":
        return {key: top for key in POLICY_KEYS}
    if count < 2:
        raise InvalidArgumentError(
            f"scheme {scheme!r} needs a topology of at least two levels (inside and across nodes), "
            f"got {topology!r}"
        )
    node = top - 1
    if scheme == "zeropp":
        return {
            "forward_gather": (top, "int8"),
            "backward_gather": node,
            "gradient_reduce": (top, "int4"),
            "optimizer_shard": top,
        }
    if scheme == "mics":
        return {key: node for key in POLICY_KEYS}
    if scheme == "hsdp":
        return {
            "forward_gather": node,
            "backward_gather": node,
            "gradient_reduce": top,
            "optimizer_shard": node,
        }
    if count < 3:
        raise InvalidArgumentError(
            f"scheme 'frontier3' needs a topology of at least three levels (e.g. GCD pair, GPU, node), "
            f"got {topology!r}"
        )
    return {
        "forward_gather": 0,
        "backward_gather": 0,
        "gradient_reduce": 0,
        "optimizer_shard": top,
        "gradient_sync": "int4",
        "parameter_update": "int8",
    }


def _normalise_policy(
    topology: Topology, policy: Mapping[str, PolicyValue]
) -> tuple[dict[str, Placement], dict[str, str | None]]:
    unknown = set(policy) - set(POLICY_KEYS) - set(STEP_KEYS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown policy keys {sorted(unknown)}; a policy has {list(POLICY_KEYS)} and optionally "
            f"{list(STEP_KEYS)}"
        )
    missing = [key for key in POLICY_KEYS if key not in policy]
    if missing:
        raise InvalidArgumentError(f"the policy lacks {missing}; it needs all of {list(POLICY_KEYS)}")
    placements = {key: _placement(topology, key, policy[key]) for key in POLICY_KEYS}
    if placements["optimizer_shard"].quantizer is not None:
        raise InvalidArgumentError("optimizer_shard is storage, not traffic: it takes no quantizer")
    steps = {key: _quantizer(key, policy.get(key)) for key in STEP_KEYS}
    return placements, steps


def _placement(topology: Topology, key: str, value: PolicyValue) -> Placement:
    quantizer: Any = None
    if isinstance(value, Placement):
        level, quantizer = value.level, value.quantizer
    elif isinstance(value, Mapping):
        if "level" not in value or set(value) - {"level", "quantizer"}:
            raise InvalidArgumentError(f"policy[{key!r}]: a mapping has 'level' and optionally 'quantizer'")
        level, quantizer = value["level"], value.get("quantizer")
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidArgumentError(f"policy[{key!r}]: a pair is (level, quantizer), got {value!r}")
        level, quantizer = value
    else:
        level = value
    if level is None:
        raise InvalidArgumentError(f"policy[{key!r}] needs a level (index or name)")
    return Placement(topology.level_index(level), _quantizer(key, quantizer))  # type: ignore[arg-type]


def _quantizer(key: str, value: Any) -> str | None:
    if not (value is None or isinstance(value, str)) or value not in QUANTIZERS:
        raise InvalidArgumentError(
            f"policy[{key!r}]: quantizer must be one of {list(QUANTIZERS)}, got {value!r}"
        )
    return value


def _check_micro_steps(micro_steps: int) -> int:
    if isinstance(micro_steps, bool) or not isinstance(micro_steps, int) or micro_steps < 1:
        raise InvalidArgumentError(f"micro_steps must be an int >= 1, got {micro_steps!r}")
    return micro_steps
