"""The cases of ``pycomm bench reduce``: pycomm's byte kernels against numpy, with memcpy as the bound.

What is compared with what (each row of the table names its anchor):

- ``reduce_into(dst, src, op)`` against the numpy ufunc into ``dst`` (``np.add(dst, src, out=dst)``),
  on the same buffers. numpy has no bfloat16, so bfloat16 is compared with float32 arrays of the same
  number of bytes, both numpy's and pycomm's own float32 kernel;
- ``quantize`` / ``dequantize`` (int8, int4, uint8; blocks of 256) against the numpy block quantizer
  of :mod:`pycomm.benchmarks.numpy_anchors`, which computes the same bytes;
- ``cast`` float32 -> float16 / bfloat16 against numpy's ``astype`` into a preallocated array (and,
  for bfloat16, numpy bit arithmetic that rounds the same way);
- ``hash64`` against ``zlib.crc32`` and ``hashlib.blake2b`` over the same bytes;
- every kernel against ``np.copyto`` of its array size, timed in the same rounds (the bound).

``size`` is the byte size of a case's main array: each operand of a reduction, the float32 input of
``quantize`` and ``cast``, the float32 output of ``dequantize``, the hashed buffer. Bus bytes are the
bytes one call reads plus those it writes, counted the same way for pycomm and for its anchor.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from pycomm import kernels
from pycomm.errors import InvalidArgumentError

from . import numpy_anchors
from .harness import Bound, Case, Timed

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_DTYPES",
    "DEFAULT_OPS",
    "DEFAULT_SIZES",
    "DEFINITIONS",
    "DTYPES",
    "KERNELS",
    "OPS",
    "QUICK_DTYPES",
    "QUICK_OPS",
    "QUICK_SIZES",
    "build_bounds",
    "build_cases",
    "validate_sizes",
]

KIB = 1 << 10
MIB = 1 << 20

DTYPES = (
    "float32",
    "bfloat16",
    "float16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)
OPS = ("sum", "prod", "min", "max")  # what reduce_into supports (avg needs a contribution count)
KERNELS = ("reduce", "quantize", "dequantize", "cast", "hash")
BLOCK_SIZE = 256  # the quantizers' default block, and the one ZeRO++-style collectives use

# The default sweep keeps the main command to about a minute on 2 cores; --sizes/--ops widen it.
DEFAULT_SIZES = (4 * KIB, 64 * KIB, 1 * MIB, 16 * MIB, 64 * MIB)
DEFAULT_DTYPES = ("float32", "bfloat16", "float16", "int32", "int8")
DEFAULT_OPS = ("sum", "max")
QUICK_SIZES = (4 * KIB, 1 * MIB)
QUICK_DTYPES = ("float32", "bfloat16", "int8")
QUICK_OPS = ("sum", "max")

# Sizes must hold whole quantizer blocks of float32 (and so whole elements of every dtype).
SIZE_GRANULE = BLOCK_SIZE * 4

DEFINITIONS = {
    "size_bytes": "bytes of the case's main array: each reduction operand, the float32 input of quantize "
    "and cast, the float32 output of dequantize, the hashed buffer",
    "bus_bytes": "bytes one call reads plus bytes it writes: reduce_into 3 x size (reads dst and src, "
    "writes dst); quantize size + quantized data + scales (+ zero points); dequantize the reverse; cast "
    "size + size/2; hash64 size; memcpy 2 x size",
    "seconds_per_call": "one entry per measured repetition: the repetition's time over its calls",
    "median_s": "median over the repetitions of seconds per call (min_s, max_s, q1_s, q3_s likewise)",
    "gbps": "bus_bytes / median_s / 1e9",
    "ratio": "pycomm gbps / anchor gbps, both medians of the same run with interleaved repetitions; "
    "above 1 pycomm is faster",
    "bound": "the bound (memcpy: np.copyto of size_bytes), timed in the same interleaved rounds as the case",
    "of_bound": "pycomm gbps / bound gbps, both medians of the case's rounds",
    "bounds": "per size, the bound's gbps across the cases it was measured with (median, min, max)",
    "threads": "options.threads: threads one large pycomm kernel call may use (pycomm.kernels.threads()); "
    "the numpy, zlib and hashlib anchors run on one thread",
    "bfloat16": "numpy has no bfloat16: bfloat16 reductions are compared with float32 arrays of the same "
    "bytes, both numpy's ufunc and pycomm's own float32 kernel",
}

TABLE_NOTES = (
    "size: bytes of the main array (each reduction operand; float32 input of quantize/cast; float32 "
    "output of dequantize; hashed bytes)",
    "bus/size: (bytes read + bytes written per call) / size; GB/s = bus bytes / median time (1 GB = 1e9 B)",
    "IQR %: spread of pycomm's repetitions; ratio = pycomm GB/s / anchor GB/s from medians of the same "
    "run (>1: pycomm faster)",
    "of bound: pycomm GB/s / memcpy (np.copyto of size bytes) GB/s, memcpy timed in the case's rounds",
    "bfloat16 reductions: anchors run on float32 arrays of the same bytes (numpy has no bfloat16)",
)

_UFUNCS: dict[str, Callable[..., Any]] = {
    "sum": np.add,
    "prod": np.multiply,
    "min": np.minimum,
    "max": np.maximum,
}


def validate_sizes(sizes: Sequence[int]) -> None:
    if not sizes:
        raise InvalidArgumentError("no sizes given")
    for size in sizes:
        if size <= 0 or size % SIZE_GRANULE != 0:
            raise InvalidArgumentError(
                f"size {size} bytes is not a positive multiple of {SIZE_GRANULE} bytes (one quantizer "
                f"block of {BLOCK_SIZE} float32 values); use e.g. 4KiB or 64MiB"
            )


def _choose(name: str, given: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = [value for value in given if value not in allowed]
    if unknown or not given:
        raise InvalidArgumentError(
            f"unsupported {name} {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}"
        )


def _float_values(count: int, rng: np.random.Generator, dtype: str) -> np.ndarray:
    values = rng.standard_normal(count, dtype=np.float32)
    return kernels.cast(values, "bfloat16") if dtype == "bfloat16" else values.astype(dtype)


def _operands(dtype: str, op: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(dst, src) holding values that keep every repetition on the kernel's ordinary path.

    For sum and prod, src is +-1: a float sum saturates at a finite value instead of overflowing, a
    product keeps its magnitude (no drift into denormals, which are slow on x86), integers just wrap.
    """
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    count = size // itemsize
    signs = rng.choice(np.array([-1, 1], np.int8), count)
    if dtype in ("float32", "bfloat16", "float16", "float64"):
        dst = _float_values(count, rng, dtype)
        src = _float_values(count, rng, dtype) if op in ("min", "max") else _cast_signs(signs, dtype)
    else:
        info = np.iinfo(dtype)
        dst = rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
        src = (
            rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
            if op in ("min", "max")
            else signs.astype(dtype)
        )
    return dst, src


def _cast_signs(signs: np.ndarray, dtype: str) -> np.ndarray:
    values = signs.astype(np.float32)
    return kernels.cast(values, "bfloat16") if dtype == "bfloat16" else values.astype(dtype)


def reduce_case(dtype: str, op: str, size: int, seed: int = 0) -> Case:
    """``reduce_into(dst, src, op)`` on ``size``-byte operands against the numpy ufunc."""

    def setup() -> tuple[Timed, list[Timed]]:
        rng = np.random.default_rng(seed)
        dst, src = _operands(dtype, op, size, rng)
        ufunc = _UFUNCS[op]
        pycomm = Timed("reduce_into", partial(kernels.reduce_into, dst, src, op, dtype), 3 * size)
        if dtype != "bfloat16":
            return pycomm, [
                Timed(f"numpy np.{ufunc.__name__}(out=)", partial(ufunc, dst, src, out=dst), 3 * size)
            ]
        dst32, src32 = _operands("float32", op, size, rng)
        return pycomm, [
            Timed(
                f"numpy np.{ufunc.__name__}(out=) float32", partial(ufunc, dst32, src32, out=dst32), 3 * size
            ),
            Timed("pycomm reduce_into float32", partial(kernels.reduce_into, dst32, src32, op), 3 * size),
        ]

    return Case(f"reduce_into {op}", dtype, size, setup, {"kernel": "reduce", "dtype": dtype, "op": op})


def _quantized_bytes(scheme: str, count: int) -> int:
    blocks = -(-count // BLOCK_SIZE)
    data = (count + 1) // 2 if scheme == "int4" else count
    return data + 4 * blocks * (2 if scheme == "uint8" else 1)


def quantize_case(scheme: str, size: int, seed: int = 0) -> Case:
    """``quantize(x, scheme)`` of a float32 array against the numpy block quantizer."""

    def setup() -> tuple[Timed, list[Timed]]:
        x = np.random.default_rng(seed).standard_normal(size // 4, dtype=np.float32)
        bus = size + _quantized_bytes(scheme, x.size)
        anchor = getattr(numpy_anchors, f"quantize_{scheme}")
        return (
            Timed("quantize", partial(kernels.quantize, x, scheme, BLOCK_SIZE), bus),
            [Timed(f"numpy block quantizer ({scheme})", partial(anchor, x, BLOCK_SIZE), bus)],
        )

    return Case(
        f"quantize (block {BLOCK_SIZE})", scheme, size, setup, {"kernel": "quantize", "scheme": scheme}
    )


def dequantize_case(scheme: str, size: int, seed: int = 0) -> Case:
    """``dequantize(q, out=)`` into a float32 array against the numpy dequantizer, same output buffer."""

    def setup() -> tuple[Timed, list[Timed]]:
        x = np.random.default_rng(seed).standard_normal(size // 4, dtype=np.float32)
        q = kernels.quantize(x, scheme, BLOCK_SIZE)
        out = np.empty_like(x)
        bus = q.nbytes + size
        extra = () if q.zero_points is None else (q.zero_points,)
        anchor = getattr(numpy_anchors, f"dequantize_{scheme}")
        return (
            Timed("dequantize", partial(kernels.dequantize, q, out), bus),
            [
                Timed(
                    f"numpy block dequantizer ({scheme})", partial(anchor, q.data, q.scales, *extra, out), bus
                )
            ],
        )

    return Case(
        f"dequantize (block {BLOCK_SIZE})", scheme, size, setup, {"kernel": "dequantize", "scheme": scheme}
    )


def cast_case(dtype: str, size: int, seed: int = 0) -> Case:
    """``cast(x, dtype, out=)`` from float32 against numpy's ``astype`` into a preallocated array."""

    def setup() -> tuple[Timed, list[Timed]]:
        x = np.random.default_rng(seed).standard_normal(size // 4, dtype=np.float32)
        out = np.empty(x.size, np.uint16 if dtype == "bfloat16" else dtype)
        half = np.empty(x.size, np.float16)
        bus = size + size // 2
        astype = Timed(
            "numpy astype(float16) into out", partial(np.copyto, half, x, casting="same_kind"), bus
        )
        anchors = [astype]
        if dtype == "bfloat16":
            bits = np.empty(x.size, np.uint16)
            rounding = partial(numpy_anchors.float32_to_bfloat16_bits, x, bits)
            anchors.insert(0, Timed("numpy bfloat16 rounding (uint32 bit ops)", rounding, bus))
        return Timed("cast", partial(kernels.cast, x, dtype, out), bus), anchors

    return Case("cast from float32", dtype, size, setup, {"kernel": "cast", "from": "float32", "to": dtype})


def _blake2b(buffer: np.ndarray) -> bytes:
    return hashlib.blake2b(buffer).digest()


def hash_case(size: int, seed: int = 0) -> Case:
    """``hash64`` of a byte buffer against ``zlib.crc32`` and ``hashlib.blake2b`` of the same bytes."""

    def setup() -> tuple[Timed, list[Timed]]:
        buffer = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
        return (
            Timed("hash64", partial(kernels.hash64, buffer), size),
            [
                Timed("zlib.crc32", partial(zlib.crc32, buffer), size),
                Timed("hashlib.blake2b", partial(_blake2b, buffer), size),
            ],
        )

    return Case("hash64", "bytes", size, setup, {"kernel": "hash"})


def memcpy_bound(size: int, seed: int = 0) -> Bound:
    """``np.copyto(dst, src)`` of ``size`` bytes: the memory bandwidth a streaming kernel can hope for."""

    def setup() -> Timed:
        src = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
        dst = np.empty_like(src)
        return Timed("np.copyto", partial(np.copyto, dst, src), 2 * size)

    return Bound("memcpy (np.copyto)", size, setup)


def build_cases(
    sizes: Sequence[int],
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    ops: Sequence[str] = DEFAULT_OPS,
    kernel_groups: Sequence[str] = KERNELS,
) -> list[Case]:
    """Every case of the sweep: each op on each dtype, each quantizer both ways, each cast, the hash."""
    validate_sizes(sizes)
    _choose("dtype", dtypes, DTYPES)
    _choose("op", ops, OPS)
    _choose("kernel group", kernel_groups, KERNELS)
    cases: list[Case] = []
    for size in sizes:
        if "reduce" in kernel_groups:
            cases += [reduce_case(dtype, op, size) for op in ops for dtype in dtypes]
        if "quantize" in kernel_groups:
            cases += [quantize_case(scheme, size) for scheme in kernels.QUANT_SCHEMES]
        if "dequantize" in kernel_groups:
            cases += [dequantize_case(scheme, size) for scheme in kernels.QUANT_SCHEMES]
        if "cast" in kernel_groups:
            cases += [cast_case(dtype, size) for dtype in ("bfloat16", "float16")]
        if "hash" in kernel_groups:
            cases.append(hash_case(size))
    return cases


def build_bounds(sizes: Sequence[int]) -> list[Bound]:
    return [memcpy_bound(size) for size in sizes]
