"""Float casts (pycomm.kernels.cast) between float16, bfloat16, float32 and float64.

Up-casts from the 16-bit types are checked exhaustively over all 65536 bit patterns. Down-casts are
checked on a million random bit patterns plus every rounding tie, the values one step either side
of each tie, overflow thresholds and subnormals. float64 to a 16-bit type must round once, correctly:
the inputs include values a hair off a tie, which a float64 -> float32 -> 16-bit double rounding
gets wrong. References: numpy's float16 conversion (correctly rounded from float32 and from float64)
and the integer-arithmetic bfloat16 and correct-rounding references in _reference.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import pycomm.kernels as kernels
from pycomm.errors import InvalidArgumentError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference as ref

ALL_16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def cast(x: np.ndarray, dst: str, src: str) -> np.ndarray:
    return kernels.cast(x, dst, src_dtype=src)


def half_patterns() -> np.ndarray:
    return ALL_16.view(np.float16)


# ---------------------------------------------------------------------------------------------
# Up-casts: exhaustive


def test_float16_up_casts_every_pattern() -> None:
    halves = half_patterns()
    ref.assert_same_bits(cast(halves, "float32", "float16"), halves.astype(np.float32), "float32", "f16->f32")
    ref.assert_same_bits(cast(halves, "float64", "float16"), halves.astype(np.float64), "float64", "f16->f64")


def test_bfloat16_up_casts_every_pattern() -> None:
    widened = ref.bf16_to_f32(ALL_16)
    ref.assert_same_bits(cast(ALL_16, "float32", "bfloat16"), widened, "float32", "bf16->f32")
    with np.errstate(invalid="ignore"):
        ref.assert_same_bits(
            cast(ALL_16, "float64", "bfloat16"), widened.astype(np.float64), "float64", "bf16->f64"
        )


def test_sixteen_bit_types_round_trip_through_float32() -> None:
    finite_half = ~np.isnan(half_patterns())
    back = cast(cast(half_patterns(), "float32", "float16"), "float16", "float32")
    assert np.array_equal(ref.bits(back)[finite_half], ALL_16[finite_half])
    assert np.isnan(back[~finite_half]).all()

    finite_bf16 = ~ref.is_nan(ALL_16, "bfloat16")
    back = cast(cast(ALL_16, "float32", "bfloat16"), "bfloat16", "float32")
    assert np.array_equal(back[finite_bf16], ALL_16[finite_bf16])
    assert ref.is_nan(back[~finite_bf16], "bfloat16").all()


def test_casts_between_the_sixteen_bit_types() -> None:
    halves = half_patterns()
    ref.assert_same_bits(
        cast(halves, "bfloat16", "float16"),
        ref.f32_to_bf16(halves.astype(np.float32)),
        "bfloat16",
        "f16->bf16",
    )
    ref.assert_same_bits(
        cast(ALL_16, "float16", "bfloat16"), ref.to_f16(ref.bf16_to_f32(ALL_16)), "float16", "bf16->f16"
    )
    ref.assert_same_bits(cast(halves, "float16", "float16"), halves, "float16", "f16->f16")
    ref.assert_same_bits(cast(ALL_16, "bfloat16", "bfloat16"), ALL_16, "bfloat16", "bf16->bf16")


# ---------------------------------------------------------------------------------------------
# Down-cast inputs


def float32_cases(rng: np.random.Generator) -> np.ndarray:
    """Random float32 bit patterns, every float16 and bfloat16 tie with its two neighbours, and the
    overflow and subnormal edges."""
    random_bits = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = half_patterns()
    finite = halves[np.isfinite(halves) & (ALL_16 != 0x7BFF) & (ALL_16 != 0xFBFF)]
    neighbours = (finite.view(np.uint16) + np.uint16(1)).view(np.float16)  # next magnitude up
    half_ties = ((finite.astype(np.float64) + neighbours.astype(np.float64)) / 2).astype(np.float32)
    bf16_ties = ((ALL_16.astype(np.uint32) << np.uint32(16)) | np.uint32(0x8000)).view(np.float32)
    ties = np.concatenate([half_ties, bf16_ties, np.float32([65520.0, -65520.0])])
    edges = np.float32(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            65504.0,
            65519.996,
            65536.0,
            1e5,
            3.4028235e38,
            -3.4028235e38,
            2.0**-24,
            2.0**-25,
            2.0**-26,
            3 * 2.0**-26,
            2.0**-14,
            2.0**-14 - 2.0**-25,
            1e-45,
            1.17549435e-38,
            3.3895314e38,
            3.3961776e38,
            -3.3961776e38,
        ]
    )
    ties = ties[np.isfinite(ties) | np.isinf(ties)]
    return np.concatenate(
        [
            random_bits,
            ties,
            np.nextafter(ties, np.float32(np.inf)),
            np.nextafter(ties, np.float32(-np.inf)),
            edges,
        ]
    )


def float64_cases(rng: np.random.Generator) -> np.ndarray:
    """Random float64 values over the 16-bit types' ranges (and beyond), full random bit patterns,
    and values just off every float16 and bfloat16 tie: off by less than half a float32 ulp, so
    rounding to float32 first would land on the tie and round the wrong way."""
    n = 1 << 18
    mantissas = rng.integers(0, 1 << 52, 4 * n, dtype=np.uint64)
    exponents = np.concatenate(
        [
            rng.integers(1023 - 30, 1023 + 17, n),  # float16 range, subnormals included
            rng.integers(1023 - 140, 1023 + 129, n),  # bfloat16 range
            rng.integers(1, 2047, n),  # everything
            rng.integers(1023 - 1075, 1023 - 1000, n).clip(0),  # float64 subnormals and tiny values
        ]
    ).astype(np.uint64)
    signs = rng.integers(0, 2, 4 * n).astype(np.uint64)
    spread = ((signs << np.uint64(63)) | (exponents << np.uint64(52)) | mantissas).view(np.float64)

    halves = half_patterns()
    finite = halves[np.isfinite(halves)]
    finite = finite[np.abs(finite) != 65504]
    up = (finite.view(np.uint16) + np.uint16(1)).view(np.float16)
    half_ties = (finite.astype(np.float64) + up.astype(np.float64)) / 2
    below_max = ALL_16[(ALL_16 & 0x7FFF) < 0x7F7F]  # finite, with a finite next magnitude
    bf16_ties = (
        ref.bf16_to_f32(below_max).astype(np.float64)
        + ref.bf16_to_f32(below_max + np.uint16(1)).astype(np.float64)
    ) / 2
    overflow_ties = [65520.0, -65520.0, (2 - 2.0**-8) * 2.0**127, -(2 - 2.0**-8) * 2.0**127]
    ties = np.concatenate([half_ties, bf16_ties, overflow_ties])
    nudged = np.concatenate(
        [
            ties * (1 + 2.0**-40),
            ties * (1 - 2.0**-40),
            np.nextafter(ties, np.inf),
            np.nextafter(ties, -np.inf),
            ties,
        ]
    )
    edges = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            1e39,
            -1e300,
            5e-324,
            2.0**-150,
            2.0**-149,
            2.0**-133,
            2.0**-134,
            2.0**-134 * (1 + 2.0**-30),
            3.4028235677973366e38,
            3.4028235677973366e38 * (1 + 2.0**-30),
            65519.99999999999,
            2.0**-25 * (1 + 2.0**-50),
        ]
    )
    return np.concatenate([spread, nudged, edges])


# ---------------------------------------------------------------------------------------------
# Down-casts


def test_float32_to_float16() -> None:
    x = ref.misaligned_copy(float32_cases(np.random.default_rng(1)), 2)
    ref.assert_same_bits(cast(x, "float16", "float32"), ref.to_f16(x), "float16", "f32->f16")


def test_float32_to_bfloat16() -> None:
    x = ref.misaligned_copy(float32_cases(np.random.default_rng(2)), 1)
    ref.assert_same_bits(cast(x, "bfloat16", "float32"), ref.f32_to_bf16(x), "bfloat16", "f32->bf16")


def test_float64_to_float16_rounds_once() -> None:
    x = ref.misaligned_copy(float64_cases(np.random.default_rng(3)), 5)
    result = cast(x, "float16", "float64")
    ref.assert_same_bits(result, ref.to_f16(x), "float16", "f64->f16 against numpy")
    ref.assert_same_bits(result, ref.f64_to_f16(x), "float16", "f64->f16 against the rounding reference")


def test_float64_to_bfloat16_rounds_once() -> None:
    x = ref.misaligned_copy(float64_cases(np.random.default_rng(4)), 3)
    ref.assert_same_bits(cast(x, "bfloat16", "float64"), ref.f64_to_bf16(x), "bfloat16", "f64->bf16")


def test_double_rounding_traps() -> None:
    # 1 + 2^-11 is the tie between float16 1.0 and 1 + 2^-10; a hair above it must round up, although
    # float32 (24 bits) rounds the hair away and would leave a tie that goes to even (1.0).
    above = np.array([1 + 2.0**-11 + 2.0**-40, -(1 + 2.0**-11 + 2.0**-40)])
    assert cast(above, "float16", "float64").tolist() == [1 + 2.0**-10, -(1 + 2.0**-10)]
    below = np.array([1 + 3 * 2.0**-11 - 2.0**-40])  # just under the tie between 1+2^-10 and 1+2^-9
    assert cast(below, "float16", "float64").tolist() == [1 + 2.0**-10]
    bf16_above = np.array([1 + 2.0**-8 + 2.0**-40])
    assert ref.bf16_to_f32(cast(bf16_above, "bfloat16", "float64")).tolist() == [1 + 2.0**-7]


def test_float64_to_float32() -> None:
    x = float64_cases(np.random.default_rng(5))
    with np.errstate(over="ignore"):
        expected = x.astype(np.float32)
    ref.assert_same_bits(cast(x, "float32", "float64"), expected, "float32", "f64->f32")


def test_widening_to_float64_is_exact() -> None:
    x = float32_cases(np.random.default_rng(6))
    with np.errstate(invalid="ignore"):
        expected = x.astype(np.float64)
    ref.assert_same_bits(cast(x, "float64", "float32"), expected, "float64", "f32->f64")


def test_large_arrays_and_shapes() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1 << 20) + 3).astype(np.float32) * 1000
    ref.assert_same_bits(cast(x, "bfloat16", "float32"), ref.f32_to_bf16(x), "bfloat16", "large f32->bf16")
    ref.assert_same_bits(cast(x, "float16", "float32"), ref.to_f16(x), "float16", "large f32->f16")
    matrix = x[:12].reshape(3, 4)
    assert kernels.cast(matrix, "float64").shape == (3, 4)
    out = np.empty((3, 4), np.float16)
    assert kernels.cast(matrix, "float16", out=out) is out
    ref.assert_same_bits(out, ref.to_f16(matrix), "float16", "into out")


def test_same_buffer_same_dtype_is_a_copy() -> None:
    x = np.array([1.5, -np.inf, 3e38], np.float32)
    assert kernels.cast(x, "float32", out=x) is x
    assert x.tolist() == [1.5, -np.inf, np.float32(3e38)]


# ---------------------------------------------------------------------------------------------
# The portable build computes the same bytes

_CHILD_BODY = """
for source in ("float32", "float64"):
    for target in ("float16", "bfloat16", "float32", "float64"):
        outputs[f"{source}->{target}"] = kernels.cast(inputs[source], target)
for source, patterns in (("float16", inputs["patterns"].view(np.float16)), ("bfloat16", inputs["patterns"])):
    for target in ("float16", "bfloat16", "float32", "float64"):
        outputs[f"{source}->{target}"] = kernels.cast(patterns, target, src_dtype=source)
"""


def test_portable_build_computes_identical_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    inputs = {
        "float32": float32_cases(rng)[::3].copy(),
        "float64": float64_cases(rng)[::5].copy(),
        "patterns": ALL_16,
    }

    by_isa = ref.run_on_every_isa(_CHILD_BODY, inputs, tmp_path)
    portable = by_isa["baseline"]
    assert len(portable) == 16
    for isa, outputs in by_isa.items():
        assert set(outputs) == set(portable)
        for key, value in outputs.items():
            assert value.tobytes() == portable[key].tobytes(), f"{key}: {isa} and baseline differ"
    for key, value in portable.items():
        source, target = key.split("->")
        source_values = {"float16": half_patterns(), "bfloat16": ALL_16}.get(source, inputs.get(source))
        here = kernels.cast(source_values, target, src_dtype=source)
        assert here.tobytes() == value.tobytes(), f"{key}: the child and this process differ"


# ---------------------------------------------------------------------------------------------
# Errors


def _raises(match: str):
    return pytest.raises(InvalidArgumentError, match=match)


def test_cast_errors() -> None:
    x = np.arange(8, dtype=np.float32)
    with _raises(r"cast: the output must be a float dtype .* got int8"):
        kernels.cast(x, "int8")
    with _raises(r"cast: the input must be a float dtype .* got int32"):
        kernels.cast(np.arange(8, dtype=np.int32), "float32")
    with _raises(r"unsupported dtype 'float8'"):
        kernels.cast(x, "float8")
    with _raises(r"out: array has dtype float32, not float16"):
        kernels.cast(x, "float16", out=np.zeros(8, np.float32))
    out = np.full(7, 9.0, np.float16)
    with _raises(r"out has shape \(7,\), x has \(8,\)"):
        kernels.cast(x, "float16", out=out)
    assert (out == 9).all()

    readonly = np.full(8, 9.0, np.float16)
    readonly.flags.writeable = False
    with _raises(r"out: array is read-only"):
        kernels.cast(x, "float16", out=readonly)

    for strided in (np.full(16, 9.0, np.float16)[::2], np.asfortranarray(np.full((2, 4), 9.0, np.float16))):
        with _raises(r"out: array must be C-contiguous"):
            kernels.cast(x.reshape(strided.shape), "float16", out=strided)
        assert (strided == 9).all()
    with _raises(r"x: array must be C-contiguous"):
        kernels.cast(np.asfortranarray(x.reshape(2, 4)), "float16")
    with _raises(r"byte order"):
        kernels.cast(x.astype(">f4"), "float16")


def test_overlapping_buffers_are_refused() -> None:
    raw = np.arange(16, dtype=np.float32)
    before = raw.copy()
    with _raises(r"cast: out and x overlap"):
        kernels.cast(raw[:8], "float16", out=raw[2:6].view(np.float16))
    with _raises(r"cast: out and x overlap"):
        kernels.cast(raw[:8], "float16", out=raw[:4].view(np.float16))
    assert raw.tobytes() == before.tobytes()


def test_float16_nans_follow_the_f16c_rule_on_every_build() -> None:
    # Quiet bit set, payload's top bits kept: what x86's F16C instructions do, so a build may use
    # them or the portable conversions and still write the same bytes.
    signalling = np.array([0x7C01, 0xFC02, 0x7E00, 0x7D55], np.uint16).view(np.float16)
    widened = kernels.cast(signalling, "float32").view(np.uint32)
    assert [hex(v) for v in widened] == ["0x7fc02000", "0xffc04000", "0x7fc00000", "0x7feaa000"]
    narrow_input = np.array([0x7F802000, 0x7F800001, 0xFFC00001, 0x7FBFFFFF], np.uint32).view(np.float32)
    narrowed = kernels.cast(narrow_input, "float16").view(np.uint16)
    assert [hex(v) for v in narrowed] == ["0x7e01", "0x7e00", "0xfe00", "0x7fff"]
