"""ZeRO-style data-parallel training of a torch module on CPU, partitioned by a :class:`ZeroPlan`.

:class:`ShardedModule` wraps a module whose parameters are float32 tensors on the CPU. Every rank of
the :class:`~pycomm.hier.comm.HierComm` is one data-parallel replica. The parameters are flattened,
in ``named_parameters()`` order, into one float32 buffer of ``n`` elements padded with zeros to a
multiple of the world size ``W``, and each kind of state is sharded over the span of levels its plan
entry names (``S_x`` ranks for the span of entry ``x``):

- the **primary** weight shard: chunk ``rank % S_f`` of the flat buffer, ``S_f`` the forward span;
- the **secondary** weight shard (ZeRO++'s hpZ, when the backward span is narrower): chunk
  ``rank % S_b``, sliced from an all-gather of the primary shards;
- the **gradient** accumulator: the same chunk as the primary shard;
- the **optimizer** shard: the fp32 master weights and the torch optimizer's state for them, piece
  ``(rank // S_f) % (S_o / S_f)`` of that chunk, so that an all-gather over the levels between the
  two spans turns the optimizer shards back into primary shards.

One training step, with ``qx`` the quantizer of entry ``x``::

    loss = sharded(inputs)...      # all_gather(primary, levels 0..f, qf) into the module's parameters;
                                   # under hpZ the secondary shard is sliced from it
    sharded.backward(loss)         # all_gather(secondary or primary, levels 0..b, qb) into the same
                                   # storage, loss.backward(), then reduce_scatter(gradients,
                                   # levels 0..f, qg) (+ all-reduce up to the gradient span) added
                                   # into the accumulator; call it once per micro-step
    sharded.step()                 # gradient_sync: reduce_scatter over levels f+1..o (+ all-reduce
                                   # above), divide by W, optimizer.step() on the master shard,
                                   # parameter_update: all_gather(master, levels f+1..o)

Averaging rule: every gradient collective sums; the optimizer sees the sum over ranks divided by the
world size ``W`` once, in float32, after the last reduction (exact when ``W`` is a power of two).
Micro-steps add up: scale the loss by ``1 / micro_steps`` to average over them.

The backward gather writes into the storage the module's parameters view, so autograd's saved
weights are the backward-gathered ones: with hpZ the backward pass really uses the secondary copy,
and a stale copy would change the gradients. As in ZeRO++, the secondary copy is filled from every
forward gather (its quantizer included), so the backward pass of a micro-step gathers exactly the
weights its forward pass used, and a step sends the plan's collectives and no other: no separate
refresh after the optimizer step or a checkpoint load. Between an optimizer step (or a load) and the
next forward pass the secondary copy still holds the weights before it; only a forward pass uses it
next.

Supported plans: the backward span no wider than the forward span, and the forward span equal to the
narrower of the gradient and optimizer spans (every preset: ``zero3``, ``zeropp``, ``mics``, ``hsdp``,
``frontier3``); others are refused with the rule they break.

torch is imported when a :class:`ShardedModule` is created, not when :mod:`pycomm.hier` is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pycomm._deps import require_torch
from pycomm.errors import InvalidArgumentError
from pycomm.hier.plan import POLICY_KEYS, ZeroPlan

if TYPE_CHECKING:
    import torch

    from pycomm.hier.comm import HierComm

__all__ = ["ShardedModule", "shard"]

CHECKPOINT_FORMAT = "pycomm.hier.torch/1"

OptimizerFactory = Callable[[list], Any]


class ShardedModule:
    """``module`` trained data-parallel over ``hier_comm``, its state sharded as ``plan`` says (see the
    module docstring for the layout and the collectives).

    ``optimizer`` builds the torch optimizer from a list holding the one master-shard parameter, e.g.
    ``lambda params: torch.optim.Adam(params, lr=1e-3)``; it is called once, here. Creation is
    collective: rank 0's parameter values are broadcast so that every replica starts equal.

    Call it like the module for the forward pass, :meth:`backward` instead of ``loss.backward()``,
    and :meth:`step` instead of ``optimizer.step()``. Between a forward pass and the next, the
    module's parameters hold the weights last gathered; :meth:`full_parameters` gives the current
    ones.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        hier_comm: HierComm,
        plan: ZeroPlan,
        optimizer: OptimizerFactory,
    ) -> None:
        torch = require_torch("pycomm.hier.torch.ShardedModule")
        self._torch = torch
        self._parameters = _check_parameters(torch, module)
        if not isinstance(plan, ZeroPlan):
            raise InvalidArgumentError(f"plan must be a ZeroPlan, got {type(plan).__name__}")
        if hier_comm.size != plan.topology.size or hier_comm.topology.fanouts != plan.topology.fanouts:
            raise InvalidArgumentError(
                f"the plan is for {plan.topology.size} ranks laid out {plan.topology.fanouts} but the "
                f"HierComm has {hier_comm.size} laid out {hier_comm.topology.fanouts}; build both from "
                "the same topology"
            )
        self.module = module
        self.plan = plan
        self._hc = hier_comm
        self._spans = _check_spans(plan)
        topology = plan.topology
        rank, world = hier_comm.rank, hier_comm.size
        top = len(topology.levels) - 1
        forward, backward, _, optimizer_level = self._spans
        self._top = top
        self._elements = sum(parameter.numel() for _, parameter in self._parameters)
        self._padded = -(-self._elements // world) * world
        span = [topology.span_size(level) for level in range(top + 1)]
        self._forward_chunk = self._padded // span[forward]
        self._backward_chunk = self._padded // span[backward]
        self._optimizer_chunk = self._padded // span[optimizer_level]
        self._forward_index = rank % span[forward]
        self._backward_index = rank % span[backward]
        self._optimizer_piece = (rank // span[forward]) % (span[optimizer_level] // span[forward])

        # The module's parameters become views of one flat buffer that the gathers write into.
        self._full = np.zeros(self._padded, np.float32)
        self._full_tensor = torch.from_numpy(self._full)
        with torch.no_grad():
            offset = 0
            for _, parameter in self._parameters:
                count = parameter.numel()
                self._full[offset : offset + count] = parameter.detach().reshape(-1).numpy()
                offset += count
        hier_comm.comm.Bcast(self._full, root=0)
        self._bind_parameters()

        self._gradient_full = np.zeros(self._padded, np.float32)
        self._accumulated = np.zeros(self._forward_chunk, np.float32)
        self._micro_steps = 0
        start = self._forward_index * self._forward_chunk + self._optimizer_piece * self._optimizer_chunk
        master = torch.from_numpy(self._full[start : start + self._optimizer_chunk].copy())
        self._master = torch.nn.Parameter(master, requires_grad=False)
        self.optimizer = optimizer([self._master])
        self._primary = np.zeros(self._forward_chunk, np.float32)
        self._secondary = np.zeros(self._backward_chunk, np.float32)
        self._publish()

    # -- training ------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The module's forward pass, on the parameters gathered by the forward policy."""
        forward = self.plan.policy["forward_gather"]
        self._hc.all_gather(
            self._primary, self._full, levels=range(forward.level + 1), quantization=forward.quantizer
        )
        if self._has_secondary:
            start, stop = self.secondary_range  # type: ignore[misc]
            self._secondary[...] = self._full[start:stop]
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """Gathers the weights by the backward policy (from the secondary copy under hpZ), runs
        ``loss.backward()`` and adds this micro-step's reduced gradient shard to the accumulator."""
        backward = self.plan.policy["backward_gather"]
        source = self._secondary if self._has_secondary else self._primary
        self._hc.all_gather(
            source, self._full, levels=range(backward.level + 1), quantization=backward.quantizer
        )
        loss.backward()
        offset = 0
        for _, parameter in self._parameters:
            count = parameter.numel()
            target = self._gradient_full[offset : offset + count]
            if parameter.grad is None:
                target[...] = 0
            else:
                target[...] = parameter.grad.detach().reshape(-1).numpy()
                parameter.grad = None
            offset += count
        forward, _, gradient, optimizer_level = self._spans
        quantizer = self.plan.policy["gradient_reduce"].quantizer
        reduced = self._hc.reduce_scatter(
            self._gradient_full, op="sum", levels=range(forward + 1), quantization=quantizer
        )
        # Past the optimizer span a micro-step's gradients are all-reduced (HSDP), not scattered.
        reduced = self._all_reduce(reduced, range(optimizer_level + 1, gradient + 1), quantizer)
        self._accumulated += reduced
        self._micro_steps += 1

    def step(self) -> None:
        """The once-per-step gradient reduction, the optimizer step on the master shard and the
        all-gather of the updated weights into the primary shards."""
        if self._micro_steps == 0:
            raise InvalidArgumentError("step() before any backward(): there are no gradients to apply")
        forward, _, gradient, optimizer_level = self._spans
        quantizer = self.plan.step_quantizers["gradient_sync"]
        if optimizer_level > forward:
            shard = self._hc.reduce_scatter(
                self._accumulated,
                op="sum",
                levels=range(forward + 1, optimizer_level + 1),
                quantization=quantizer,
            )
        else:
            shard = self._accumulated
        shard = self._all_reduce(shard, range(max(gradient, optimizer_level) + 1, self._top + 1), quantizer)
        # The data-parallel average: one division by the world size, after every sum.
        gradient_tensor = self._torch.from_numpy(np.asarray(shard, np.float32) / np.float32(self._hc.size))
        self._master.grad = gradient_tensor
        self.optimizer.step()
        self._master.grad = None
        self._accumulated[...] = 0
        self._micro_steps = 0
        self._publish()

    # -- checkpoints ---------------------------------------------------------------------------------

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter, unsharded, from the fp32 master shards (collective; exact whatever the
        quantizers): what an unsharded copy of the module would load."""
        _, _, _, optimizer_level = self._spans
        gathered = self._hc.all_gather(self._master.detach().numpy(), levels=range(optimizer_level + 1))
        # Rank order within the optimizer span is (forward index, piece) with the forward index
        # fastest; the flat buffer wants the piece fastest.
        forward_ranks = self._padded // self._forward_chunk
        flat = gathered.reshape(-1, forward_ranks, self._optimizer_chunk).transpose(1, 0, 2).reshape(-1)
        result = {}
        offset = 0
        for name, parameter in self._parameters:
            count = parameter.numel()
            result[name] = self._torch.from_numpy(flat[offset : offset + count].copy()).view(parameter.shape)
            offset += count
        return result

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of this rank (collective, because of ``parameters``):

        - ``master`` and ``optimizer``: this rank's fp32 master shard and its optimizer's state —
          the sharded part, which :meth:`load_state_dict` restores;
        - ``parameters``: the full parameters by name (:meth:`full_parameters`), for an unsharded
          module; not read back;
        - ``format``, ``world_size``, ``rank``, ``fanouts``, ``policy``, ``elements``: the layout, checked
          on load.

        Gradients accumulated since the last step are not saved: save between steps.
        """
        return {
            "format": CHECKPOINT_FORMAT,
            "world_size": self._hc.size,
            "rank": self._hc.rank,
            "fanouts": tuple(self.plan.topology.fanouts),
            "policy": self._policy_signature(),
            "elements": self._elements,
            "master": self._master.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "parameters": self.full_parameters(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict` saved by the same rank under the same topology and policy
        (collective): the master shard and optimizer state, then the primary shards by the
        parameter-update gather, as after an optimizer step."""
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            raise InvalidArgumentError(f"not a {CHECKPOINT_FORMAT} checkpoint (see ShardedModule.state_dict)")
        expected = {
            "world_size": self._hc.size,
            "rank": self._hc.rank,
            "fanouts": tuple(self.plan.topology.fanouts),
            "policy": self._policy_signature(),
            "elements": self._elements,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise InvalidArgumentError(
                    f"checkpoint {key} is {state.get(key)!r} but this ShardedModule has {value!r}; a "
                    "sharded checkpoint loads only into the same world size, topology, policy, model and "
                    "rank (load its 'parameters' into a module to start a different layout)"
                )
        master = state["master"]
        if tuple(master.shape) != tuple(self._master.shape):
            raise InvalidArgumentError(
                f"checkpoint master shard has shape {tuple(master.shape)}, "
                f"expected {tuple(self._master.shape)}"
            )
        with self._torch.no_grad():
            self._master.copy_(master)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._accumulated[...] = 0
        self._micro_steps = 0
        self._publish()

    # -- state for tests and tools -------------------------------------------------------------------

    @property
    def secondary_shard(self) -> np.ndarray | None:
        """A copy of the hpZ secondary shard (chunk ``rank % S_b`` of the flat weights, as the last
        forward pass gathered them), or None when the plan has no secondary partition."""
        return self._secondary.copy() if self._has_secondary else None

    @property
    def secondary_range(self) -> tuple[int, int] | None:
        """The flat-buffer elements ``[start, stop)`` the secondary shard holds, or None."""
        if not self._has_secondary:
            return None
        start = self._backward_index * self._backward_chunk
        return start, start + self._backward_chunk

    @property
    def elements(self) -> int:
        """Parameter elements, before padding."""
        return self._elements

    # -- internals -----------------------------------------------------------------------------------

    @property
    def _has_secondary(self) -> bool:
        return self._spans[1] < self._spans[0]

    def _bind_parameters(self) -> None:
        offset = 0
        for _, parameter in self._parameters:
            count = parameter.numel()
            parameter.data = self._full_tensor[offset : offset + count].view(parameter.shape)
            offset += count

    def _publish(self) -> None:
        """Master shards -> primary shards (parameter_update)."""
        forward, _, _, optimizer_level = self._spans
        master = self._master.detach().numpy()
        if optimizer_level > forward:
            self._hc.all_gather(
                master,
                self._primary,
                levels=range(forward + 1, optimizer_level + 1),
                quantization=self.plan.step_quantizers["parameter_update"],
            )
        else:
            self._primary[...] = master

    def _all_reduce(self, data: np.ndarray, levels: range, quantizer: str | None) -> np.ndarray:
        if not len(levels):
            return data
        if quantizer is None:
            return self._hc.all_reduce(data, levels=levels)
        # HierComm's all-reduce is unquantized; quantize both halves as the plan counts them.
        chunk = self._hc.reduce_scatter(data, op="sum", levels=levels, quantization=quantizer)
        return self._hc.all_gather(chunk, levels=levels, quantization=quantizer)[: data.size]

    def _policy_signature(self) -> dict[str, Any]:
        signature: dict[str, Any] = {
            key: (self.plan.policy[key].level, self.plan.policy[key].quantizer) for key in POLICY_KEYS
        }
        signature.update(self.plan.step_quantizers)
        return signature


def _check_parameters(torch: Any, module: Any) -> list[tuple[str, Any]]:
    if not isinstance(module, torch.nn.Module):
        raise InvalidArgumentError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    parameters = list(module.named_parameters())
    if not parameters:
        raise InvalidArgumentError("the module has no parameters to shard")
    for name, parameter in parameters:
        if parameter.device.type != "cpu":
            raise InvalidArgumentError(
                f"parameter {name!r} is on device {parameter.device}; ShardedModule trains on the CPU "
                "only (move the module with module.cpu() first)"
            )
        if parameter.dtype != torch.float32:
            raise InvalidArgumentError(
                f"parameter {name!r} is {parameter.dtype}; ShardedModule keeps float32 parameters only "
                "(convert the module with module.float() first)"
            )
    return parameters


def _check_spans(plan: ZeroPlan) -> tuple[int, int, int, int]:
    levels = [plan.policy[key].level for key in POLICY_KEYS]
    forward, backward, gradient, optimizer_level = levels
    if backward > forward:
        raise InvalidArgumentError(
            f"backward_gather spans level {backward}, wider than forward_gather's {forward}: a backward "
            "gather can only draw on the forward partition or a narrower secondary copy of it"
        )
    if min(gradient, optimizer_level) != forward:
        raise InvalidArgumentError(
            f"ShardedModule needs the forward span (level {forward}) to equal the narrower of the "
            f"gradient ({gradient}) and optimizer ({optimizer_level}) spans, so that a gradient shard "
            "is a weight shard; every preset scheme satisfies this"
        )
    return forward, backward, gradient, optimizer_level


def shard(
    module: torch.nn.Module, hier_comm: HierComm, plan: ZeroPlan, optimizer: OptimizerFactory
) -> ShardedModule:
    """``ShardedModule(module, hier_comm, plan, optimizer)``."""
    return ShardedModule(module, hier_comm, plan, optimizer)
