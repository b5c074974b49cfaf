"""numpy reference implementations of pycomm's kernel rules, the test data they are checked on,
and a helper that runs kernels in a fresh interpreter.

The references (float rounding, reductions, block quantization, the content hash) are written from
the documented rules in csrc/kernels/reduce.h, quantize.h and hash.h, never by calling pycomm, so a
kernel and its reference cannot share a mistake. bfloat16 values are carried as ``uint16`` bit
patterns, as pycomm's Python API takes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
ALL_DTYPES = FLOAT_DTYPES + INTEGER_DTYPES
REDUCE_OPS = ("sum", "prod", "min", "max", "avg")
PAIRWISE_OPS = ("sum", "prod", "min", "max")


# ---------------------------------------------------------------------------------------------
# Storage and bit patterns


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype holding pycomm dtype ``name`` (bfloat16 travels as uint16 bits)."""
    return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def bits(array: np.ndarray) -> np.ndarray:
    """The raw bit patterns of ``array`` as unsigned integers of the same width."""
    array = np.ascontiguousarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def is_nan(array: np.ndarray, name: str) -> np.ndarray:
    """NaN mask of pycomm dtype ``name`` stored in ``array`` (all False for integers)."""
    if name == "bfloat16":
        return (bits(array) & 0x7FFF) > 0x7F80
    if name in FLOAT_DTYPES:
        return np.isnan(array)
    return np.zeros(array.shape, bool)


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, name: str, context: str = "") -> None:
    """Bit-for-bit equality, except that where both sides are NaN only NaN-ness is compared
    (the kernels do not preserve NaN payloads)."""
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    actual_nan = is_nan(actual, name)
    expected_nan = is_nan(expected, name)
    differ = (bits(actual) != bits(expected)) & ~(actual_nan & expected_nan)
    if differ.any():
        where = np.flatnonzero(differ.reshape(-1))
        first = where[0]
        raise AssertionError(
            f"{context}: {where.size} of {differ.size} elements differ; first at {first}: "
            f"got bits {bits(actual).reshape(-1)[first]:#x}, expected {bits(expected).reshape(-1)[first]:#x}"
        )


# ---------------------------------------------------------------------------------------------
# bfloat16, written with integer operations on the float32 bit patterns


def bf16_to_f32(patterns: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32 (exact: bfloat16 is the top half of a float32)."""
    return (patterns.astype(np.uint32) << np.uint32(16)).view(np.float32)


@np.errstate(all="ignore")
def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even; a NaN stays a (quiet) NaN."""
    word = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    upper = word >> np.uint32(16)
    lower = word & np.uint32(0xFFFF)
    # Round up when the dropped half is above the midpoint, or exactly on it with an odd upper half.
    # A carry out of the mantissa correctly bumps the exponent (up to infinity).
    round_up = (lower > 0x8000) | ((lower == 0x8000) & ((upper & np.uint32(1)) == 1))
    rounded = upper + round_up.astype(np.uint32)
    nan = (word & np.uint32(0x7FFFFFFF)) > 0x7F800000
    return np.where(nan, upper | np.uint32(0x0040), rounded).astype(np.uint16)


@np.errstate(all="ignore")
def round_f64(values: np.ndarray, exponent_bits: int, mantissa_bits: int) -> np.ndarray:
    """float64 -> nearest (ties to even) value of a binary format with the given field widths,
    returned as float64 (exactly representable in the target). Correctly rounded by construction:
    the value is scaled by a power of two so that the target's quantum becomes 1, and rounded once.
    Overflow gives infinity; NaN stays NaN."""
    x = np.asarray(values, np.float64)
    bias = (1 << (exponent_bits - 1)) - 1
    min_exponent = 1 - bias  # of the smallest normal, 2**min_exponent
    max_finite = (2.0 - 2.0**-mantissa_bits) * 2.0**bias
    magnitude = np.abs(x)
    _, exponent = np.frexp(magnitude)  # magnitude in [2**(exponent-1), 2**exponent)
    quantum_exponent = np.maximum(exponent - 1, min_exponent) - mantissa_bits
    scaled = np.ldexp(magnitude, -quantum_exponent)  # exact: a power-of-two scaling
    rounded = np.ldexp(np.rint(scaled), quantum_exponent)  # np.rint rounds half to even
    rounded = np.where(rounded > max_finite, np.inf, rounded)
    rounded = np.where(np.isinf(magnitude), np.inf, rounded)
    result = np.copysign(rounded, x)
    return np.where(np.isnan(x), np.nan, result)


@np.errstate(all="ignore")
def to_f16(values: np.ndarray) -> np.ndarray:
    """numpy's float16 conversion (correctly rounded from float32 or float64), without its overflow
    warning."""
    return np.asarray(values).astype(np.float16)


def f64_to_bf16(values: np.ndarray) -> np.ndarray:
    """float64 -> bfloat16 bit patterns, one correct rounding."""
    rounded = round_f64(values, 8, 7).astype(np.float32)  # exact: bfloat16 values are float32 values
    return f32_to_bf16(rounded)


@np.errstate(all="ignore")
def f64_to_f16(values: np.ndarray) -> np.ndarray:
    """float64 -> float16, one correct rounding (independent of numpy's own conversion)."""
    return round_f64(values, 5, 10).astype(np.float16)  # exact after rounding


# ---------------------------------------------------------------------------------------------
# Reductions


def to_compute(array: np.ndarray, name: str) -> np.ndarray:
    """Widen to the type the rules compute in: float32 for 16-bit floats, else the type itself."""
    if name == "bfloat16":
        return bf16_to_f32(array)
    if name == "float16":
        return array.astype(np.float32)
    return array


@np.errstate(all="ignore")
def from_compute(array: np.ndarray, name: str) -> np.ndarray:
    """Round a computed value back to storage (nearest even for 16-bit floats)."""
    if name == "bfloat16":
        return f32_to_bf16(array)
    if name == "float16":
        return array.astype(np.float16)
    return array.astype(storage_dtype(name))


@np.errstate(all="ignore")
def combine(a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    """``a (op) b`` in a's type: IEEE arithmetic for floats, wrap-around for integers; min/max keep
    the first operand on a tie (so min(+0, -0) is +0) and let a NaN in either operand win."""
    if op == "sum":
        return a + b
    if op == "prod":
        return a * b
    first_wins = (a <= b) if op == "min" else (a >= b)
    if a.dtype.kind == "f":
        first_wins = first_wins | np.isnan(a)
    return np.where(first_wins, a, b)


@np.errstate(all="ignore")
def integer_average(total: np.ndarray, n: int) -> np.ndarray:
    """``total / n`` truncated toward zero (numpy's // floors, so negative inexact quotients move up)."""
    quotient = total // total.dtype.type(n)
    inexact_negative = (total < 0) & (quotient * total.dtype.type(n) != total)
    return quotient + inexact_negative.astype(total.dtype)


@np.errstate(all="ignore")
def reduce_chain(inputs: list[np.ndarray], op: str, name: str) -> np.ndarray:
    """What reduce(inputs, op) must return: left to right in the accumulator type, rounded once."""
    if name in INTEGER_DTYPES and op == "avg":
        wide = np.int64 if np.dtype(name).kind == "i" else np.uint64
        total = inputs[0].astype(wide)
        for x in inputs[1:]:
            total = total + x.astype(wide)  # wraps in 64 bits
        return integer_average(total, len(inputs)).astype(storage_dtype(name))
    acc = to_compute(inputs[0], name).copy()
    for x in inputs[1:]:
        acc = combine(acc, to_compute(x, name), "sum" if op == "avg" else op)
    if op == "avg":
        acc = acc / acc.dtype.type(len(inputs))
    return from_compute(acc, name)


@np.errstate(all="ignore")
def reduce_pair(dst: np.ndarray, src: np.ndarray, op: str, name: str) -> np.ndarray:
    """What reduce_into(dst, src, op) must leave in dst."""
    return from_compute(combine(to_compute(dst, name), to_compute(src, name), op), name)


# ---------------------------------------------------------------------------------------------
# Test data


def special_values(name: str) -> np.ndarray:
    """The values the kernels most easily get wrong, stored as pycomm dtype ``name``."""
    if name in INTEGER_DTYPES:
        info = np.iinfo(name)
        values = [0, 1, 2, 3, info.max, info.max - 1, info.min, info.min + 1, info.max // 2, 7, 100]
        if info.min < 0:
            values += [-1, -2, -3, -7, -100, info.min // 2]
        return np.array(values, dtype=name)
    if name == "bfloat16":
        patterns = [
            0x0000,
            0x8000,
            0x7F80,
            0xFF80,
            0x7FC0,
            0xFFC0,
            0x7F81,
            0x0001,
            0x8001,
            0x007F,
            0x0080,
            0x7F7F,
            0xFF7F,
            0x3F80,
            0xBF80,
            0x3F81,
            0x4000,
            0x3F00,
            0x4B00,
            0x0101,
        ]
        return np.array(patterns, dtype=np.uint16)
    dtype = np.dtype(name)
    info = np.finfo(dtype)
    values = [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        -np.nan,
        info.max,
        -info.max,
        info.tiny,
        -info.tiny,
        info.smallest_subnormal,
        -info.smallest_subnormal,
        info.tiny - info.smallest_subnormal,
        1.0,
        -1.0,
        1.0 + info.eps,
        0.5,
        3.0,
        -3.0,
        1.5,
        2.0**10,
        info.max / 2,
    ]
    return np.array(values, dtype=dtype)


def random_values(rng: np.random.Generator, name: str, n: int, profile: str) -> np.ndarray:
    """``n`` values of pycomm dtype ``name`` drawn by ``profile``:

    - ``bits``: uniformly random bit patterns (for floats: every class, NaN and subnormals included);
    - ``normal``: moderate values of mixed sign, whose sums and products round (floats) or
      wrap (integers);
    - ``small``: small integers, so sums are exact and min/max see many ties;
    - ``special``: random picks from special_values() mixed with random bits.
    """
    dtype = storage_dtype(name)
    if profile == "bits":
        return rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)
    if profile == "special":
        values = random_values(rng, name, n, "bits")
        specials = special_values(name)
        pick = rng.random(n) < 0.5
        values[pick] = specials[rng.integers(0, specials.size, int(pick.sum()))]
        return values
    if name in INTEGER_DTYPES:
        info = np.iinfo(name)
        if profile == "small":
            low = max(info.min, -4)
            return rng.integers(low, 5, n, dtype=dtype, endpoint=False)
        return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    if profile == "small":
        floats = rng.integers(-4, 5, n).astype(np.float64)
    else:
        floats = rng.standard_normal(n) * np.exp2(rng.integers(-6, 7, n))
    if name == "bfloat16":
        return f32_to_bf16(floats.astype(np.float32))
    return floats.astype(dtype)


def misaligned_copy(values: np.ndarray, offset: int) -> np.ndarray:
    """A writable copy of ``values`` whose data starts ``offset`` bytes past an aligned address."""
    raw = bytearray(values.nbytes + offset + 64)
    base = np.frombuffer(raw, np.uint8)
    shift = (-base.ctypes.data) % 64  # start from a 64-byte boundary, then move by `offset`
    array = np.frombuffer(raw, values.dtype, values.size, shift + offset).reshape(values.shape)
    array[...] = values
    return array


# ---------------------------------------------------------------------------------------------
# Block quantization (csrc/kernels/quantize.h)

QUANT_LIMITS = {"int8": 127, "int4": 7, "uint8": 255}


@np.errstate(all="ignore")
def load_f32(values: np.ndarray, name: str) -> np.ndarray:
    """The float32 values the quantizer works on (float64 is rounded to nearest, others are exact)."""
    if name == "bfloat16":
        return bf16_to_f32(values)
    return values.astype(np.float32)


def blocks(count: int, block_size: int) -> list[slice]:
    return [slice(begin, min(begin + block_size, count)) for begin in range(0, count, block_size)]


@np.errstate(all="ignore")
def block_parameters(x: np.ndarray, scheme: str) -> tuple[np.float32, np.float32]:
    """(scale, zero point) of one block of float32 values, in float32 arithmetic as documented."""
    limit = np.float32(QUANT_LIMITS[scheme])
    if scheme == "uint8":
        # Ordered as the kernel orders floats: -0 below +0.
        zeros = x == 0
        low = np.float32(-0.0) if (zeros & np.signbit(x)).any() and x.min() == 0 else x.min()
        high = np.float32(0.0) if (zeros & ~np.signbit(x)).any() and x.max() == 0 else x.max()
        return (high - low) / limit, low
    return np.abs(x).max() / limit, np.float32(0)


@np.errstate(all="ignore")
def quantize_nearest(
    x: np.ndarray, scheme: str, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (one int per element, unpacked), scales and zero points of round-to-nearest-even
    quantization of float32 values ``x``."""
    codes = np.zeros(x.size, np.int64)
    scales, zero_points = [], []
    for part in blocks(x.size, block_size):
        scale, zero_point = block_parameters(x[part], scheme)
        scales.append(scale)
        zero_points.append(zero_point)
        if scale == 0:
            continue
        if scheme == "uint8":
            codes[part] = np.clip(np.rint((x[part] - zero_point) / scale), 0, 255)
        else:
            limit = QUANT_LIMITS[scheme]
            codes[part] = np.clip(np.rint(x[part] / scale), -limit, limit)
    return codes, np.array(scales, np.float32), np.array(zero_points, np.float32)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Two codes a byte, element 2i in the low nibble; an odd count leaves the last high nibble 0."""
    nibbles = (codes & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return nibbles[0::2] | (nibbles[1::2] << np.uint8(4))


def unpack_codes(data: np.ndarray, scheme: str, count: int) -> np.ndarray:
    """The integer codes stored in a quantized ``data`` buffer."""
    if scheme == "int4":
        nibbles = np.empty(data.size * 2, np.int64)
        nibbles[0::2] = data & 0x0F
        nibbles[1::2] = data >> 4
        nibbles = nibbles[:count]
        return np.where(nibbles >= 8, nibbles - 16, nibbles)
    return data.astype(np.int64)


@np.errstate(all="ignore")
def dequantize(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, block_size: int
) -> np.ndarray:
    """float32 values of quantized codes: q * scale (+ zero point), each operation rounded."""
    out = np.empty(codes.size, np.float32)
    for index, part in enumerate(blocks(codes.size, block_size)):
        out[part] = codes[part].astype(np.float32) * scales[index]
        if zero_points is not None:
            out[part] = out[part] + zero_points[index]
    return out


def ulp(values: np.ndarray) -> np.ndarray:
    """float32 unit in the last place of |values| (the smallest subnormal at zero), as float64."""
    return np.spacing(np.abs(np.asarray(values, np.float32))).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Content hash (csrc/kernels/hash.h), version 1: leaves of 4096 bytes, each read as little-endian
# 64-bit words in 8 lanes of multiply-rotate rounds, folded in order with the total length.

HASH_LEAF_BYTES = 4096
_MASK64 = (1 << 64) - 1
_PRIME1 = 0x9E3779B185EBCA87
_PRIME2 = 0xC2B2AE3D27D4EB4F
_PRIME3 = 0x165667B19E3779F9
_PRIME4 = 0x85EBCA77C2B2AE63
_PRIME5 = 0x27D4EB2F165667C5


def _rotate_left(x: np.ndarray, bits: int) -> np.ndarray:
    return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))


def _mix_round(accumulator: np.ndarray, word: np.ndarray) -> np.ndarray:
    return _rotate_left(accumulator + word * np.uint64(_PRIME2), 31) * np.uint64(_PRIME1)


def _avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(_PRIME2)
    h = h ^ (h >> np.uint64(29))
    h = h * np.uint64(_PRIME3)
    return h ^ (h >> np.uint64(32))


def leaf_digests(data: bytes, seed: int = 0) -> np.ndarray:
    """The digest of every 4096-byte leaf of ``data`` (all leaves at once, as numpy uint64 lanes)."""
    length = len(data)
    leaves = -(-length // HASH_LEAF_BYTES)
    padded = np.zeros(leaves * HASH_LEAF_BYTES, np.uint8)
    padded[:length] = np.frombuffer(data, np.uint8)
    words = padded.view("<u8").astype(np.uint64).reshape(leaves, HASH_LEAF_BYTES // 64, 8)
    leaf_lengths = np.full(leaves, HASH_LEAF_BYTES, np.uint64)
    if leaves:
        leaf_lengths[-1] = length - (leaves - 1) * HASH_LEAF_BYTES
    start = np.uint64(seed) ^ (np.arange(leaves, dtype=np.uint64) * np.uint64(_PRIME3))
    lanes = start[:, None] + np.arange(1, 9, dtype=np.uint64)[None, :] * np.uint64(_PRIME5)
    stripes = (leaf_lengths + np.uint64(63)) // np.uint64(64)  # a short last stripe is zero-padded
    for stripe in range(HASH_LEAF_BYTES // 64):
        active = (np.uint64(stripe) < stripes)[:, None]
        lanes = np.where(active, _mix_round(lanes, words[:, stripe, :]), lanes)
    digest = leaf_lengths * np.uint64(_PRIME5) + start
    for lane in range(8):
        digest = (digest ^ _mix_round(np.zeros_like(digest), lanes[:, lane])) * np.uint64(
            _PRIME1
        ) + np.uint64(_PRIME4)
    return _avalanche(digest)


def hash64(data: bytes, seed: int = 0) -> int:
    """pycomm's content hash (HASH_VERSION 1) of ``data``."""

    def rotate(x: int, bits: int) -> int:
        return ((x << bits) | (x >> (64 - bits))) & _MASK64

    state = (seed + _PRIME5 + len(data)) & _MASK64
    for digest in leaf_digests(data, seed).tolist():
        mixed = (rotate((digest * _PRIME2) & _MASK64, 31) * _PRIME1) & _MASK64
        state = (rotate(state ^ mixed, 27) * _PRIME1 + _PRIME4) & _MASK64
    return int(_avalanche(np.array([state], np.uint64))[0])


# ---------------------------------------------------------------------------------------------
# Running kernels in a fresh interpreter (for the portable build, and for cross-process stability)


def run_script(
    script: str, args: list[str], directory: Path, env_overrides: dict[str, str] | None = None
) -> str:
    """Runs ``script`` in a fresh Python with ``args`` in ``directory`` (outside the source tree, so
    that it imports the installed pycomm); returns its stdout."""
    env = {**os.environ, **(env_overrides or {})}
    completed = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"subprocess failed ({completed.returncode}):\n{completed.stderr}"
    return completed.stdout


_CHILD_PRELUDE = """
import sys
import numpy as np
import pycomm.kernels as kernels
inputs = dict(np.load(sys.argv[1]))
outputs = {}
"""

_CHILD_EPILOGUE = """
np.savez(sys.argv[2], **outputs)
print(kernels.isa())
"""


def run_kernels_elsewhere(
    body: str, inputs: dict[str, np.ndarray], directory: Path, isa: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """Runs ``body`` in a fresh interpreter, optionally with ``PYCOMM_KERNEL_ISA=isa``.

    ``body`` sees ``inputs`` (the arrays given here), ``kernels`` (pycomm.kernels) and ``np``, and
    stores its results in the dict ``outputs``. Returns the instruction set the child ran with and
    its outputs."""
    tag = isa or "default"
    directory.mkdir(parents=True, exist_ok=True)
    inputs_path = directory / f"inputs-{tag}.npz"
    outputs_path = directory / f"outputs-{tag}.npz"
    np.savez(inputs_path, **inputs)
    stdout = run_script(
        _CHILD_PRELUDE + body + _CHILD_EPILOGUE,
        [str(inputs_path), str(outputs_path)],
        directory,
        {"PYCOMM_KERNEL_ISA": isa} if isa else None,
    )
    with np.load(outputs_path) as loaded:
        outputs = dict(loaded)
    return stdout.strip().splitlines()[-1], outputs


def run_on_every_isa(
    body: str, inputs: dict[str, np.ndarray], directory: Path
) -> dict[str, dict[str, np.ndarray]]:
    """Runs ``body`` (see :func:`run_kernels_elsewhere`) once per instruction set this build has and
    this CPU can run, each in its own fresh interpreter; returns each one's outputs by ISA name."""
    import pycomm.kernels

    results = {}
    for isa in pycomm.kernels.runnable_isas():
        ran_with, outputs = run_kernels_elsewhere(body, inputs, directory / isa, isa=isa)
        assert ran_with == isa, f"asked for {isa}, the child ran {ran_with}"
        results[isa] = outputs
    assert "baseline" in results
    return results
