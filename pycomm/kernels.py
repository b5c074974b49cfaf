"""The shared byte kernels: element-wise reductions, block quantizers, float casts, content hash.

These are what every collective runs on its buffers; they are exposed for tests, benchmarks and
users who build their own communication on top. All release the GIL. Inputs are numpy arrays or
torch CPU tensors (C-contiguous); bfloat16 data is passed as ``uint16`` bit patterns with
``dtype="bfloat16"`` (or as a torch bfloat16 tensor, or an ml_dtypes bfloat16 array).

Numeric rules (identical on every machine, so every peer computes the same bytes):

- float16/bfloat16 are computed in float32 and rounded to nearest even when stored; a chain over
  several inputs (:func:`reduce`, :func:`accumulate`) keeps float32 and rounds once;
- integer sum/prod wrap around like numpy; ``avg`` sums integers in 64 bits and truncates toward zero;
- ``min``/``max`` follow numpy's ``minimum``/``maximum``: a NaN wins, ties keep the first operand
  (``min(+0.0, -0.0)`` is ``+0.0``);
- a sum, product or average that is NaN is the positive quiet NaN, whatever NaNs went in (a
  reduction of one input with sum, prod, min or max is a plain copy); converting a NaN to or from
  float16, or to bfloat16, makes it quiet and keeps the top of its payload (the rule of x86's F16C
  instructions, which the builds that have them use);
- the 64-bit sum behind an int64/uint64 ``avg`` wraps like any int64 sum, so averages of values
  near the type's limits overflow; use a float dtype for those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pycomm._arrays import as_array, as_output, check_integer, empty
from pycomm._native import core
from pycomm.errors import InvalidArgumentError, NotSupportedError

_k = core.kernels

REDUCE_OPS = ("sum", "prod", "min", "max", "avg")
QUANT_SCHEMES = ("int8", "int4", "uint8")

__all__ = [
    "QUANT_SCHEMES",
    "REDUCE_OPS",
    "Quantized",
    "accumulate",
    "accumulator_dtype",
    "cast",
    "dequantize",
    "finalize",
    "hash64",
    "isa",
    "quantize",
    "reduce",
    "reduce_into",
    "runnable_isas",
    "set_threads",
    "threads",
    "widen",
]


def _flat(array: np.ndarray, role: str) -> np.ndarray:
    """A 1-D view of a C-contiguous array. reshape() would copy anything else, and a copy of an
    output is written and then lost; of an input, read in an order the caller did not ask for."""
    if not array.flags.c_contiguous:
        raise InvalidArgumentError(f"{role}: array must be C-contiguous")
    return array.reshape(-1)


def _check_same_shape(a: np.ndarray, b: np.ndarray, role_a: str, role_b: str) -> None:
    if a.shape != b.shape:
        raise InvalidArgumentError(f"{role_b} has shape {b.shape}, {role_a} has {a.shape}")


def isa() -> str:
    """The instruction set the kernels run with (``x86-64-v4``, ``x86-64-v3`` or ``baseline``): the
    best this CPU supports, or the one named by the environment variable ``PYCOMM_KERNEL_ISA``."""
    return _k.isa()


def runnable_isas() -> list[str]:
    """The instruction sets of this build that this CPU can run, best first (all give the same
    bytes; ``PYCOMM_KERNEL_ISA`` picks one for a process)."""
    return _k.runnable_isas().split(",")


def threads() -> int:
    """Threads one large kernel call may use (default: the number of cores, at most 8, or
    ``PYCOMM_KERNEL_THREADS``). Calls that move under 4 MiB always run on the calling thread."""
    return _k.threads()


def set_threads(threads: int) -> None:
    """Sets how many threads one large kernel call may use (1: only the calling thread). Results do
    not depend on it: every kernel is element-wise or block-wise."""
    _k.set_threads(check_integer(threads, "threads", 1, 1024))


def accumulator_dtype(dtype: str, op: str = "sum") -> str:
    """The dtype a chained reduction of ``dtype`` accumulates in (float32 for 16-bit floats)."""
    return _k.accumulator_dtype(dtype, op)


def reduce_into(dst: Any, src: Any, op: str = "sum", dtype: str | None = None) -> None:
    """``dst = dst (op) src`` in place, element-wise; ``op`` is sum, prod, min or max."""
    d, name = as_output(dst, "dst", dtype)
    s, _ = as_array(src, "src", name)
    _check_same_shape(d, s, "dst", "src")
    _k.reduce_into(d, s, op, name)


def reduce(inputs: Sequence[Any], op: str = "sum", out: Any = None, dtype: str | None = None) -> np.ndarray:
    """Element-wise reduction of several equally shaped arrays, left to right.

    ``out`` may be one of the inputs. 16-bit floats accumulate in float32 and round once; ``avg``
    divides the sum by ``len(inputs)``. Returns ``out`` (a new array when none is given).
    """
    if len(inputs) == 0:
        raise InvalidArgumentError("reduce needs at least one input")
    first, name = as_array(inputs[0], "inputs[0]", dtype)
    arrays = [first] + [as_array(x, f"inputs[{k}]", name)[0] for k, x in enumerate(inputs[1:], start=1)]
    for k, array in enumerate(arrays):
        if array.shape != first.shape:
            raise InvalidArgumentError(f"inputs[{k}] has shape {array.shape}, inputs[0] has {first.shape}")
    result = empty(first.shape, name, like=first) if out is None else out
    o, _ = as_output(result, "out", name)
    if o.shape != first.shape:
        raise InvalidArgumentError(f"out has shape {o.shape}, the inputs have {first.shape}")
    _k.reduce(o, arrays, op, name)
    return result


def widen(src: Any, op: str = "sum", dtype: str | None = None) -> np.ndarray:
    """Starts a streaming reduction: returns an accumulator (``accumulator_dtype``) holding ``src``."""
    s, name = as_array(src, "src", dtype)
    acc = np.empty(s.shape, accumulator_dtype(name, op))
    _k.widen(acc, s, op, name)
    return acc


def accumulate(acc: np.ndarray, src: Any, op: str = "sum", dtype: str | None = None) -> None:
    """``acc = acc (op) src`` in the accumulator's precision (``avg`` accumulates a sum)."""
    s, name = as_array(src, "src", dtype)
    a, _ = as_output(acc, "acc", accumulator_dtype(name, op))
    _check_same_shape(a, s, "acc", "src")
    _k.accumulate(a, s, op, name)


def finalize(
    acc: np.ndarray, dtype: str, op: str = "sum", contributions: int = 1, out: Any = None
) -> np.ndarray:
    """Ends a streaming reduction: the accumulator rounded to ``dtype`` (``avg`` divides by
    ``contributions``)."""
    a, _ = as_array(acc, "acc", accumulator_dtype(dtype, op))
    result = empty(a.shape, dtype) if out is None else out
    o, _ = as_output(result, "out", dtype)
    _check_same_shape(a, o, "acc", "out")
    _k.finalize(o, a, op, dtype, check_integer(contributions, "contributions", 1, 2**63 - 1))
    return result


@dataclass(frozen=True)
class Quantized:
    """A block-quantized array: ``data`` (int8 for ``int8``; uint8 bytes for ``uint8`` and for
    ``int4``, two values a byte), one float32 ``scales`` entry per block, and for ``uint8`` one
    float32 ``zero_points`` entry per block (the block's minimum)."""

    scheme: str
    block_size: int
    count: int
    shape: tuple[int, ...]
    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: data, scales and zero points."""
        extra = 0 if self.zero_points is None else self.zero_points.nbytes
        return self.data.nbytes + self.scales.nbytes + extra


def quantize(
    x: Any,
    scheme: str = "int8",
    block_size: int = 256,
    rounding: str = "nearest",
    seed: int = 0,
    dtype: str | None = None,
) -> Quantized:
    """Quantizes a float array block by block.

    ``int8``: symmetric, ``scale = absmax / 127``; ``int4``: symmetric, ``scale = absmax / 7``, two
    values a byte; ``uint8``: ``scale = (max - min) / 255`` with the block minimum as zero point.
    ``rounding="nearest"`` errs by at most ``scale / 2`` an element; ``"stochastic"`` is unbiased and
    errs by less than ``scale``, drawing its random numbers from ``seed`` and the element index.
    A block holding NaN or infinity raises :class:`InvalidArgumentError` naming the block.
    """
    s, name = as_array(x, "x", dtype)
    if scheme not in QUANT_SCHEMES:
        raise InvalidArgumentError(
            f"unsupported quantization scheme '{scheme}'; supported: {', '.join(QUANT_SCHEMES)}"
        )
    block_size = check_integer(block_size, "block_size", 1, 2**30)
    seed = check_integer(seed, "seed", 0, 2**64 - 1)
    count = s.size
    blocks = -(-count // block_size)
    data = np.empty(
        (count + 1) // 2 if scheme == "int4" else count, np.int8 if scheme == "int8" else np.uint8
    )
    scales = np.empty(blocks, np.float32)
    zero_points = np.empty(blocks, np.float32) if scheme == "uint8" else None
    _k.quantize(_flat(s, "x"), name, data, scales, zero_points, scheme, block_size, rounding, seed)
    return Quantized(scheme, block_size, count, s.shape, data, scales, zero_points)


def dequantize(q: Quantized, out: Any = None, dtype: str = "float32", accumulate: bool = False) -> np.ndarray:
    """The float values of ``q``; with ``accumulate=True``, adds them to the float32 array ``out``."""
    if accumulate and out is None:
        raise InvalidArgumentError("accumulate=True needs out, the float32 array to add into")
    result = empty(q.shape, dtype) if out is None else out
    o, name = as_output(result, "out", None if out is not None and dtype == "float32" else dtype)
    if o.size != q.count:
        raise InvalidArgumentError(f"out has {o.size} elements, the quantized array {q.count}")
    _k.dequantize(q.data, q.scales, q.zero_points, q.scheme, q.block_size, _flat(o, "out"), name, accumulate)
    return result


def cast(x: Any, dtype: str, out: Any = None, src_dtype: str | None = None) -> np.ndarray:
    """Converts between float16, bfloat16, float32 and float64, rounding to nearest even."""
    s, src_name = as_array(x, "x", src_dtype)
    result = empty(s.shape, dtype) if out is None else out
    o, _ = as_output(result, "out", dtype)
    _check_same_shape(s, o, "x", "out")
    _k.cast(_flat(o, "out"), dtype, _flat(s, "x"), src_name)
    return result


def hash64(data: Any, seed: int = 0) -> int:
    """pycomm's 64-bit content hash of a C-contiguous buffer's bytes (version ``HASH_VERSION``).

    The same value on every machine, run and thread count, and for GPU arrays (cupy, torch CUDA
    tensors, anything with ``__cuda_array_interface__``), which are hashed on their device when the
    CUDA part is built; not cryptographic.
    """
    seed = check_integer(seed, "seed", 0, 2**64 - 1)
    if type(data).__module__.split(".")[0] == "torch":
        if data.is_cuda:
            return _hash64_device(data.detach().__cuda_array_interface__, seed)
        if not data.is_contiguous():
            raise InvalidArgumentError("data: buffer must be C-contiguous")
        import torch

        return _k.hash64(data.detach().reshape(-1).view(torch.uint8).numpy(), seed)
    interface = getattr(data, "__cuda_array_interface__", None)
    if interface is not None:
        return _hash64_device(interface, seed)
    try:
        return _k.hash64(data, seed)
    except TypeError:
        raise InvalidArgumentError(
            f"data: hash64 takes a buffer (bytes, a numpy array, a tensor), got {type(data).__name__}"
        ) from None


def _hash64_device(interface: dict[str, Any], seed: int) -> int:
    shape = tuple(interface["shape"])
    itemsize = np.dtype(interface["typestr"]).itemsize
    strides = interface.get("strides")
    if strides is not None:
        expected, contiguous = itemsize, True
        for extent, stride in zip(reversed(shape), reversed(strides)):
            contiguous &= extent <= 1 or stride == expected
            expected *= extent
        if not contiguous:
            raise InvalidArgumentError("data: a GPU array must be C-contiguous to be hashed")
    if not core.build_info()["cuda"]:
        raise NotSupportedError(
            "hashing GPU memory needs the CUDA part of pycomm, which this build does not have "
            "(no CUDA compiler was found when it was built)"
        )
    from pycomm import _cuda

    length = int(np.prod(shape, dtype=np.int64)) * itemsize
    # Interface version 3 names the stream the producer wrote on; the hash is queued behind it.
    stream = interface.get("stream") or 0
    return _cuda.hash64(interface["data"][0], length, seed, stream)


HASH_VERSION: int = _k.HASH_VERSION
