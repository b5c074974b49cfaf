"""The ``dist.ProcessGroup`` subclass behind backend "pycomm": torch's calling conventions turned into
calls on an engine (:mod:`pycomm.torch._mpi_engine` or :mod:`pycomm.torch._ft_engine`).

Every operation is checked in the caller's thread (a wrong dtype or size raises there, as gloo's
checks do), then queued to the group's one worker thread, which runs the engine's blocking call on
host numpy views of the tensors. The operation's future is completed on another thread
(:mod:`pycomm.torch._threads`): torch runs a future's callbacks there, and they may wait for more
operations of the group. One worker keeps the order in which this rank submitted, which is the
order every rank of the group must use (as with any torch backend); ``async_op=True`` returns at
once and the operation runs meanwhile.

A deadline applies to every operation: the group's timeout (``init_process_group(timeout=...)``),
counted from submission. An operation past it fails with ``DistBackendError`` (from ``wait()`` and
from its future, which DDP waits on) and the group is broken from then on: every later operation
raises at once (the engine may still be inside the stuck call; an MPI collective cannot be
cancelled). CUDA tensors are staged through host memory: copied to the host at submission and the
results copied back by the worker.
"""

from __future__ import annotations

import atexit
import datetime
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from pycomm.errors import Aborted, CommError, Evicted, InvalidArgumentError, NotSupportedError, PycommError
from pycomm.torch._threads import CompletionPool, Watchdog

# torch dtypes every engine moves as bytes, with the pycomm kernel name of their element type.
# bool and the complex types are reduced through views (see reduce_op_for).
# Workers that shutdown() left inside a call that cannot be cancelled (an MPI collective waiting for
# peers). MPI_Finalize, which mpi4py runs as the interpreter exits (after every atexit handler),
# must not run while one is inside MPI: MPICH aborts ("pthread_mutex_destroy: Device or resource
# busy"). At exit they get this long in all to finish (their peers may still come).
_STUCK_WORKERS: list[threading.Thread] = []
_STUCK_WORKERS_WAIT_S = 30.0


def _join_stuck_workers() -> None:
    deadline = time.monotonic() + _STUCK_WORKERS_WAIT_S
    for worker in _STUCK_WORKERS:
        worker.join(max(0.0, deadline - time.monotonic()))


atexit.register(_join_stuck_workers)

_KERNEL_DTYPES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.uint16: "uint16",
    torch.uint32: "uint32",
    torch.uint64: "uint64",
    torch.bool: "bool",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
}
FLOAT_KINDS = ("float16", "bfloat16", "float32", "float64")
_OP_NAMES = {
    dist.ReduceOp.SUM: "sum",
    dist.ReduceOp.AVG: "avg",
    dist.ReduceOp.PRODUCT: "prod",
    dist.ReduceOp.MIN: "min",
    dist.ReduceOp.MAX: "max",
    dist.ReduceOp.BAND: "band",
    dist.ReduceOp.BOR: "bor",
    dist.ReduceOp.BXOR: "bxor",
}


class BackendArgumentError(InvalidArgumentError, RuntimeError):
    """A torch.distributed call the backend cannot run as given (dtype, size, device, rank). It is a
    ``ValueError`` like pycomm's other argument errors and a ``RuntimeError`` like torch's backend
    checks, so handlers written for either catch it."""


def failure(message: str, cause: BaseException | None = None) -> dist.DistBackendError:
    """The error torch users catch for a collective that failed (as NCCL and gloo raise it)."""
    error = dist.DistBackendError(message)
    error.__cause__ = cause
    return error


def display_name(op: str) -> str:
    """torch's name of a reduce op (``ReduceOp.PRODUCT``, not PROD)."""
    return "PRODUCT" if op == "prod" else op.upper()


class ReduceOp:
    """A torch ReduceOp as the engines see it: a name and, for PREMUL_SUM, the factor."""

    def __init__(self, torch_op: Any) -> None:
        self.factor: Any = None
        if torch_op == dist.ReduceOp.PREMUL_SUM:
            self.name = "premul_sum"
            if not hasattr(torch_op, "factor"):
                raise NotSupportedError(
                    f"ReduceOp.PREMUL_SUM: torch {torch.__version__} does not expose the op's factor to "
                    "Python backends (torch 2.13 does); use SUM and scale the tensor"
                )
            self.factor = torch_op.factor
            if self.factor is None:
                raise BackendArgumentError("ReduceOp.PREMUL_SUM without a factor")
        else:
            name = _OP_NAMES.get(getattr(torch_op, "op", torch_op))
            if name is None:
                raise BackendArgumentError(f"unknown ReduceOp {torch_op!r}")
            self.name = name

    def __repr__(self) -> str:
        return f"ReduceOp.{display_name(self.name)}"


class Tensor:
    """One tensor argument: a host view the engine reads or writes, and where it came from.

    A contiguous CPU tensor is viewed in place. Any other tensor (a CUDA tensor, a non-contiguous
    view) is copied to a contiguous host tensor here, in the caller's thread; :meth:`write_back` copies
    an output back from the worker once the operation succeeded.
    """

    def __init__(self, tensor: Any, role: str, output: bool) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise BackendArgumentError(f"{role}: expected a torch.Tensor, got {type(tensor).__name__}")
        kind = _KERNEL_DTYPES.get(tensor.dtype)
        if kind is None:
            raise BackendArgumentError(
                f"{role}: dtype {tensor.dtype} is not supported by backend 'pycomm'; supported: "
                + ", ".join(str(dtype).removeprefix("torch.") for dtype in _KERNEL_DTYPES)
            )
        if tensor.device.type not in ("cpu", "cuda"):
            raise BackendArgumentError(f"{role}: {tensor.device.type} tensors are not supported; cpu or cuda")
        if tensor.is_sparse:
            raise BackendArgumentError(f"{role}: sparse tensors are not supported")
        self.tensor = tensor
        self.kind = kind
        self.role = role
        staged = tensor.device.type != "cpu" or not tensor.is_contiguous()
        self.host = (
            tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) if staged else tensor
        )
        self._output = output and staged

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    def array(self) -> np.ndarray:
        """The host data as a flat numpy array: bfloat16 as uint16 bits, bool as uint8 (0 or 1), the
        other dtypes as numpy's own (complex64 and complex128 included)."""
        host = self.host.detach()
        if self.kind == "bfloat16":
            return host.view(torch.int16).numpy().view(np.uint16).reshape(-1)
        if self.kind == "bool":
            return host.numpy().view(np.uint8).reshape(-1)
        if self.kind in ("uint16", "uint32", "uint64"):
            signed = {"uint16": torch.int16, "uint32": torch.int32, "uint64": torch.int64}[self.kind]
            return host.view(signed).numpy().view(self.kind).reshape(-1)
        return host.numpy().reshape(-1)

    def write_back(self) -> None:
        if self._output:
            self.tensor.copy_(self.host)
            if self.tensor.device.type == "cuda":
                # A copy from pageable host memory may still be in flight when copy_ returns, on this
                # thread's stream; the caller's streams must see the result once the Work is done.
                torch.cuda.current_stream(self.tensor.device).synchronize()


def tensors(values: Sequence[Any], role: str, output: bool) -> list[Tensor]:
    if not isinstance(values, (list, tuple)):
        raise BackendArgumentError(f"{role}: expected a list of tensors, got {type(values).__name__}")
    return [Tensor(value, f"{role}[{index}]", output) for index, value in enumerate(values)]


def single(values: Sequence[Any], role: str, output: bool) -> Tensor:
    if not isinstance(values, (list, tuple)) or len(values) != 1:
        raise BackendArgumentError(f"{role}: backend 'pycomm' takes exactly one tensor per rank")
    return Tensor(values[0], role, output)


def same_kind(items: Sequence[Tensor], reference: Tensor) -> None:
    for item in items:
        if item.kind != reference.kind:
            raise BackendArgumentError(
                f"{item.role} has dtype {item.tensor.dtype} but {reference.role} has {reference.tensor.dtype}"
            )


def same_numel(items: Sequence[Tensor], count: int, what: str) -> None:
    for item in items:
        if item.numel != count:
            raise BackendArgumentError(f"{item.role} has {item.numel} elements; {what} needs {count}")


class _Failed:
    """What a failed operation's inner future holds: the error its chained future raises."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _outcome(completion: torch.futures.Future) -> Any:
    value = completion.value()
    if isinstance(value, _Failed):
        raise value.error
    return value


class Work(dist._Work):
    """One submitted operation. The worker (or, past the deadline, the group's watchdog) completes
    it; :meth:`wait` raises its error, or ``DistBackendError`` when its deadline passes first."""

    def __init__(self, group: ProcessGroup, description: str, result: list) -> None:
        super().__init__()
        self._group = group
        self._description = description
        self._result = result
        self.deadline = time.monotonic() + group.timeout_seconds
        self._done = threading.Event()
        self._finishing = threading.Lock()
        self._error: BaseException | None = None
        # Made when someone asks for the future (DDP does; a plain dist.all_reduce does not): the
        # future handed out is chained to one completed here, so a callback that raises makes torch
        # mark the chained future failed in C++, which DDP's reducer understands (an error set from
        # Python is only a Python value to C++ code, and DDP would read it as tensors).
        self._completion: torch.futures.Future | None = None
        self._future: torch.futures.Future | None = None
        self.source = -1

    def finish(self, error: BaseException | None) -> None:
        """Completes the operation once (a later call, e.g. the worker after the watchdog, is ignored);
        a future handed out is completed on a thread of the group's completion pool."""
        with self._finishing:
            if self._done.is_set():
                return
            self._error = error
            self._done.set()
            completion = self._completion
        if completion is not None:
            outcome = self._outcome()
            self._group.complete(lambda: completion.set_result(outcome))

    def _outcome(self) -> Any:
        return self._result if self._error is None else _Failed(self._error)

    def wait(self, timeout: datetime.timedelta | None = None) -> bool:
        limit = self.deadline - time.monotonic()
        if timeout is not None and timeout.total_seconds() > 0:
            limit = min(limit, timeout.total_seconds())
        if not self._done.wait(max(0.0, limit)):
            raise self._group.timed_out(self._description)
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self) -> BaseException | None:
        return self._error

    def get_future(self) -> torch.futures.Future:
        with self._finishing:
            if self._future is None:
                self._completion = torch.futures.Future()
                self._future = self._completion.then(_outcome)
                if self._done.is_set():
                    self._completion.set_result(self._outcome())
            return self._future

    def result(self) -> list:
        self.wait()
        return self._result

    def source_rank(self) -> int:
        self.wait()
        return self.source

    def _source_rank(self) -> int:
        return self.source_rank()


class ProcessGroup(dist.ProcessGroup):
    """A torch process group whose operations run on ``engine``; see the module's docstring.

    The method names are the ones ``torch.distributed`` (and torch's C++ callers, such as DDP's
    reducer) call on a process group; each validates, then queues one engine call.
    """

    def __init__(self, engine: Any, rank: int, size: int, timeout: datetime.timedelta, name: str) -> None:
        super().__init__(rank, size)
        self._engine = engine
        self._rank = rank
        self._size = size
        self.timeout_seconds = timeout.total_seconds()
        self._name = name
        self._description = ""
        self._broken: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._completions: CompletionPool | None = None
        self._watchdog: Watchdog | None = None
        if engine.threaded:
            self._completions = CompletionPool(f"pycomm-torch-{name}")
            self._watchdog = Watchdog(f"pycomm-torch-{name}", self._expire)
            self._worker = threading.Thread(target=self._serve, name=f"pycomm-torch-{name}", daemon=True)
            self._worker.start()

    # -- identity --------------------------------------------------------------------------------

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def getRank(self) -> int:
        return self._rank

    def getSize(self) -> int:
        return self._size

    def getBackendName(self) -> str:
        return "pycomm"

    def name(self) -> str:
        return "pycomm"

    # torch keeps a group's name in its C++ backends, which a Python group has none of.
    @property
    def group_name(self) -> str:
        return self._name

    def _set_group_name(self, name: str) -> None:
        self._name = name

    @property
    def group_desc(self) -> str:
        return self._description

    def _set_group_desc(self, description: str) -> None:
        self._description = description

    @property
    def engine(self) -> Any:
        return self._engine

    def __repr__(self) -> str:
        return f"pycomm.torch.ProcessGroup({self._engine.name}, rank {self._rank} of {self._size})"

    # -- running operations ----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, run = item
            work.finish(self._execute(work, run))

    def _execute(self, work: Work, run: Callable[[], Any]) -> BaseException | None:
        try:
            run()
        except (Aborted, Evicted) as error:
            self._broken = str(error)
            return failure(f"backend 'pycomm': {work._description} failed: {error}", error)
        except (BackendArgumentError, NotSupportedError) as error:
            return error
        except dist.DistBackendError as error:
            self._broken = str(error)
            return error
        except CommError as error:
            self._broken = str(error)
            return failure(f"backend 'pycomm': {work._description} failed: {error}", error)
        except PycommError as error:
            return failure(f"backend 'pycomm': {work._description} failed: {error}", error)
        except Exception as error:  # an engine bug must reach the caller, not end the worker
            return failure(f"backend 'pycomm': {work._description} failed: {error!r}", error)
        return None

    def _submit(
        self, description: str, run: Callable[[], Any], outputs: Sequence[Tensor], result: list
    ) -> Work:
        if self._broken is not None:
            raise failure(
                f"backend 'pycomm': {description} on a group that failed earlier ({self._broken}); "
                "destroy it and create a new one"
            )

        def run_and_write_back() -> None:
            run()
            for output in outputs:
                output.write_back()

        work = Work(self, description, result)
        if self._worker is None:
            work.finish(self._execute(work, run_and_write_back))
        else:
            self._watchdog.watch(work, work.deadline)
            self._queue.put((work, run_and_write_back))
        return work

    def complete(self, task: Callable[[], None]) -> None:
        """Completes a future: off the worker thread when there is one (see _threads)."""
        if self._completions is None:
            task()
        else:
            self._completions.submit(task)

    def _expire(self, work: Work) -> None:
        work.finish(self.timed_out(work._description))

    def timed_out(self, description: str) -> dist.DistBackendError:
        self._broken = f"{description} timed out"
        return failure(
            f"backend 'pycomm': {description} on rank {self._rank} of {self._size} did not complete within "
            f"{datetime.timedelta(seconds=self.timeout_seconds)} (the group's timeout); the group is "
            "unusable from now on"
        )

    def shutdown(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            # An operation still running (it timed out, or its peers left) is abandoned, where the
            # engine can: the fault-tolerant engine then fails it; an MPI call cannot be cancelled.
            self._engine.interrupt("the torch group was shut down while it ran")
            self._worker.join(timeout=min(self.timeout_seconds, 10.0))
            if self._worker.is_alive():
                # Stuck in a call that cannot be cancelled: it leaves when that call ends (it finds the
                # end of the queue next); its resources are left to the process.
                _STUCK_WORKERS.append(self._worker)
                return
            self._worker = None
            self._watchdog.close()
            self._completions.close(timeout=5.0)
        self._engine.close()

    def abort(self) -> None:
        self._broken = self._broken or "the group was aborted"
        self.shutdown()

    # -- all-reduce, broadcast, reduce -------------------------------------------------------------

    def allreduce(self, tensor_list: Any, opts: Any = None) -> Work:
        op = ReduceOp(_options(opts, dist.AllreduceOptions).reduceOp)
        items = tensors(tensor_list, "tensors", output=True)
        if not items:
            raise BackendArgumentError("allreduce needs at least one tensor")
        same_kind(items, items[0])
        self._engine.check_reduce(items[0].kind, op)

        def run() -> None:
            if len(items) == 1:
                self._engine.all_reduce(items[0].array(), items[0].kind, op)
                return
            # One operation for all of them: a failure then leaves every tensor as it was.
            flat = np.concatenate([item.array() for item in items])
            self._engine.all_reduce(flat, items[0].kind, op)
            offset = 0
            for item in items:
                target = item.array()
                target[...] = flat[offset : offset + target.size]
                offset += target.size

        return self._submit(f"allreduce({op})", run, items, list(tensor_list))

    def allreduce_coalesced(self, tensor_list: Any, opts: Any = None) -> Work:
        return self.allreduce(tensor_list, _options(opts, dist.AllreduceCoalescedOptions))

    def broadcast(self, tensor_list: Any, opts: Any = None) -> Work:
        opts = _options(opts, dist.BroadcastOptions)
        root = self._check_rank(opts.rootRank, "rootRank")
        items = tensors(tensor_list, "tensors", output=True)

        def run() -> None:
            for item in items:
                self._engine.broadcast(item.array(), root)

        return self._submit(f"broadcast(root={root})", run, items, list(tensor_list))

    def reduce(self, tensor_list: Any, opts: Any = None) -> Work:
        opts = _options(opts, dist.ReduceOptions)
        op = ReduceOp(opts.reduceOp)
        root = self._check_rank(opts.rootRank, "rootRank")
        item = single(tensor_list, "tensors", output=True)
        self._engine.check_reduce(item.kind, op)
        return self._submit(
            f"reduce({op}, root={root})",
            lambda: self._engine.reduce(item.array(), item.kind, op, root),
            [item],
            list(tensor_list),
        )

    # -- gathers -----------------------------------------------------------------------------------

    def allgather(self, output_tensors: Any, input_tensor: Any, opts: Any = None) -> Work:
        if not isinstance(output_tensors, (list, tuple)) or len(output_tensors) != 1:
            raise BackendArgumentError("allgather: backend 'pycomm' takes one output list per rank")
        source = single(input_tensor, "input_tensor", output=False)
        outputs = tensors(output_tensors[0], "output_tensors", output=True)
        self._check_parts(outputs, source)
        return self._submit(
            "allgather",
            lambda: self._engine.all_gather_parts([out.array() for out in outputs], source.array()),
            outputs,
            list(output_tensors),
        )

    def allgather_coalesced(self, output_lists: Any, input_list: Any, opts: Any = None) -> Work:
        inputs = tensors(input_list, "input_list", output=False)
        if not isinstance(output_lists, (list, tuple)) or len(output_lists) != len(inputs):
            raise BackendArgumentError("allgather_coalesced: one output list per input tensor")
        groups = [
            tensors(outputs, f"output_lists[{k}]", output=True) for k, outputs in enumerate(output_lists)
        ]
        for outputs, source in zip(groups, inputs):
            self._check_parts(outputs, source)

        def run() -> None:
            for outputs, source in zip(groups, inputs):
                self._engine.all_gather_parts([out.array() for out in outputs], source.array())

        return self._submit("allgather_coalesced", run, [t for g in groups for t in g], list(output_lists))

    def all_gather_single(self, output_tensor: Any, input_tensor: Any, opts: Any = None) -> Work:
        output = Tensor(output_tensor, "output_tensor", output=True)
        source = Tensor(input_tensor, "input_tensor", output=False)
        same_kind([source], output)
        same_numel(
            [output], source.numel * self._size, "all_gather_into_tensor (input elements x group size)"
        )
        return self._submit(
            "all_gather_into_tensor",
            lambda: self._engine.all_gather(output.array(), source.array(), source.kind),
            [output],
            [output_tensor],
        )

    _allgather_base = all_gather_single

    def all_gather_single_coalesced(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        outputs = tensors(output_tensors, "output_tensors", output=True)
        inputs = tensors(input_tensors, "input_tensors", output=False)
        if len(outputs) != len(inputs):
            raise BackendArgumentError("allgather_into_tensor_coalesced: as many outputs as inputs")
        for output, source in zip(outputs, inputs):
            same_kind([source], output)
            same_numel([output], source.numel * self._size, "all_gather_into_tensor")

        def run() -> None:
            for output, source in zip(outputs, inputs):
                self._engine.all_gather(output.array(), source.array(), source.kind)

        return self._submit("allgather_into_tensor_coalesced", run, outputs, list(output_tensors))

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def gather(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        opts = _options(opts, dist.GatherOptions)
        root = self._check_rank(opts.rootRank, "rootRank")
        source = single(input_tensors, "input_tensors", output=False)
        outputs: list[Tensor] = []
        if self._rank == root:
            if not isinstance(output_tensors, (list, tuple)) or len(output_tensors) != 1:
                raise BackendArgumentError("gather: the root passes one output list")
            outputs = tensors(output_tensors[0], "gather_list", output=True)
            self._check_parts(outputs, source)
        elif output_tensors and any(output_tensors):
            raise BackendArgumentError("gather: only the root passes a gather_list")
        return self._submit(
            f"gather(root={root})",
            lambda: self._engine.gather([out.array() for out in outputs], source.array(), root),
            outputs,
            list(output_tensors),
        )

    # -- scatters and reduce-scatters ---------------------------------------------------------------

    def scatter(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        opts = _options(opts, dist.ScatterOptions)
        root = self._check_rank(opts.rootRank, "rootRank")
        output = single(output_tensors, "output_tensors", output=True)
        inputs: list[Tensor] = []
        if self._rank == root:
            if not isinstance(input_tensors, (list, tuple)) or len(input_tensors) != 1:
                raise BackendArgumentError("scatter: the root passes one scatter_list")
            inputs = tensors(input_tensors[0], "scatter_list", output=False)
            self._check_parts(inputs, output)
        elif input_tensors and any(input_tensors):
            raise BackendArgumentError("scatter: only the root passes a scatter_list")
        return self._submit(
            f"scatter(root={root})",
            lambda: self._engine.scatter(output.array(), [part.array() for part in inputs], root),
            [output],
            list(output_tensors),
        )

    def reduce_scatter(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        op = ReduceOp(_options(opts, dist.ReduceScatterOptions).reduceOp)
        output = single(output_tensors, "output_tensors", output=True)
        if not isinstance(input_tensors, (list, tuple)) or len(input_tensors) != 1:
            raise BackendArgumentError("reduce_scatter: backend 'pycomm' takes one input list per rank")
        inputs = tensors(input_tensors[0], "input_list", output=False)
        self._check_parts(inputs, output)
        self._engine.check_reduce(output.kind, op)

        def run() -> None:
            flat = np.concatenate([part.array() for part in inputs]) if inputs else output.array()[:0]
            self._engine.reduce_scatter(output.array(), flat, output.kind, op)

        return self._submit(f"reduce_scatter({op})", run, [output], list(output_tensors))

    def reduce_scatter_single(self, output_tensor: Any, input_tensor: Any, opts: Any = None) -> Work:
        op = ReduceOp(_options(opts, dist.ReduceScatterOptions).reduceOp)
        output = Tensor(output_tensor, "output", output=True)
        source = Tensor(input_tensor, "input", output=False)
        same_kind([source], output)
        same_numel(
            [source], output.numel * self._size, "reduce_scatter_tensor (output elements x group size)"
        )
        self._engine.check_reduce(output.kind, op)
        return self._submit(
            f"reduce_scatter_tensor({op})",
            lambda: self._engine.reduce_scatter(output.array(), source.array(), output.kind, op),
            [output],
            [output_tensor],
        )

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_single_coalesced(
        self, output_tensors: Any, input_tensors: Any, opts: Any = None
    ) -> Work:
        op = ReduceOp(_options(opts, dist.ReduceScatterOptions).reduceOp)
        outputs = tensors(output_tensors, "outputs", output=True)
        inputs = tensors(input_tensors, "inputs", output=False)
        if len(outputs) != len(inputs):
            raise BackendArgumentError("reduce_scatter_tensor_coalesced: as many outputs as inputs")
        for output, source in zip(outputs, inputs):
            same_kind([source], output)
            same_numel([source], output.numel * self._size, "reduce_scatter_tensor")
            self._engine.check_reduce(output.kind, op)

        def run() -> None:
            for output, source in zip(outputs, inputs):
                self._engine.reduce_scatter(output.array(), source.array(), output.kind, op)

        return self._submit(f"reduce_scatter_tensor_coalesced({op})", run, outputs, list(output_tensors))

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    # -- all-to-all ---------------------------------------------------------------------------------

    def all_to_all_single(
        self,
        output_tensor: Any,
        input_tensor: Any,
        output_split_sizes: Any,
        input_split_sizes: Any,
        opts: Any = None,
    ) -> Work:
        output = Tensor(output_tensor, "output", output=True)
        source = Tensor(input_tensor, "input", output=False)
        same_kind([source], output)
        send_counts = self._split_counts(source, input_split_sizes, "input_split_sizes")
        receive_counts = self._split_counts(output, output_split_sizes, "output_split_sizes")
        return self._submit(
            "all_to_all_single",
            lambda: self._engine.all_to_all(output.array(), receive_counts, source.array(), send_counts),
            [output],
            [output_tensor],
        )

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        outputs = tensors(output_tensors, "output_tensor_list", output=True)
        inputs = tensors(input_tensors, "input_tensor_list", output=False)
        for items, role in ((outputs, "output_tensor_list"), (inputs, "input_tensor_list")):
            if len(items) != self._size:
                raise BackendArgumentError(
                    f"{role} has {len(items)} tensors; the group has {self._size} ranks"
                )
        if outputs:
            same_kind(outputs + inputs, outputs[0])

        def run() -> None:
            send = np.concatenate([item.array() for item in inputs])
            receive = np.empty(sum(item.numel for item in outputs), send.dtype)
            self._engine.all_to_all(
                receive, [item.numel for item in outputs], send, [item.numel for item in inputs]
            )
            offset = 0
            for item in outputs:
                item.array()[...] = receive[offset : offset + item.numel]
                offset += item.numel

        return self._submit("alltoall", run, outputs, list(output_tensors))

    # -- point to point and barrier -----------------------------------------------------------------

    def send(self, tensor_list: Any, dst: int, tag: int) -> Work:
        peer = self._check_rank(dst, "dst")
        item = single(tensor_list, "tensors", output=False)
        self._engine.check_point_to_point()
        return self._submit(
            f"send(dst={peer}, tag={tag})",
            lambda: self._engine.send(item.array(), peer, tag),
            [],
            list(tensor_list),
        )

    def recv(self, tensor_list: Any, src: int, tag: int) -> Work:
        peer = self._check_rank(src, "src")
        item = single(tensor_list, "tensors", output=True)
        self._engine.check_point_to_point()
        work: Work

        def run() -> None:
            work.source = self._engine.recv(item.array(), peer, tag)

        work = self._submit(f"recv(src={peer}, tag={tag})", run, [item], list(tensor_list))
        return work

    def recv_anysource(self, tensor_list: Any, tag: int) -> Work:
        item = single(tensor_list, "tensors", output=True)
        self._engine.check_point_to_point()
        work: Work

        def run() -> None:
            work.source = self._engine.recv(item.array(), None, tag)

        work = self._submit(f"recv(any source, tag={tag})", run, [item], list(tensor_list))
        return work

    def barrier(self, opts: Any = None) -> Work:
        return self._submit("barrier", self._engine.barrier, [], [])

    # -- checks -------------------------------------------------------------------------------------

    def _check_rank(self, rank: Any, role: str) -> int:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self._size:
            raise BackendArgumentError(f"{role}={rank!r} is not a rank of this group of {self._size}")
        return rank

    def _check_parts(self, parts: Sequence[Tensor], reference: Tensor) -> None:
        if len(parts) != self._size:
            raise BackendArgumentError(
                f"{len(parts)} tensors in the list; the group has {self._size} ranks (one tensor per rank)"
            )
        same_kind(parts, reference)
        same_numel(parts, reference.numel, f"{reference.role} has that many, and each rank's part")

    def _split_counts(self, item: Tensor, splits: Any, role: str) -> list[int]:
        rows = item.tensor.shape[0] if item.tensor.dim() else 1
        per_row = item.numel // rows if rows else 0
        if not splits:
            if rows % self._size:
                raise BackendArgumentError(
                    f"{item.role}: dimension 0 ({rows}) must divide by the group size ({self._size}) "
                    f"when {role} is not given"
                )
            return [rows // self._size * per_row] * self._size
        splits = list(splits)
        if len(splits) != self._size or any(not isinstance(s, int) or s < 0 for s in splits):
            raise BackendArgumentError(f"{role} must be {self._size} non-negative ints, got {splits!r}")
        if sum(splits) != rows:
            raise BackendArgumentError(f"{role} adds up to {sum(splits)} rows; {item.role} has {rows}")
        return [s * per_row for s in splits]


def _options(opts: Any, kind: type) -> Any:
    return kind() if opts is None else opts


def not_supported(engine: str, what: str, instead: str) -> NotSupportedError:
    return NotSupportedError(f"the {engine} engine of backend 'pycomm' has no {what}; {instead}")
