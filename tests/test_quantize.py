"""Block quantizers (pycomm.kernels.quantize / dequantize): int8, int4 and uint8, nearest and
stochastic rounding, float16/bfloat16/float32/float64 input.

Round to nearest is checked exactly (scales, zero points, codes and dequantized values against the
numpy reference), and every scheme and rounding against the analytic error bound derived below.
Stochastic rounding is checked to be a pure function of the seed, to differ across seeds and to be
unbiased. Then the edge blocks (all negative, constant, zero, one outlier, subnormal, non-finite),
and bad arguments.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pycomm.kernels as kernels
from pycomm.errors import InvalidArgumentError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference as ref

SCHEMES = ("int8", "int4", "uint8")
ROUNDINGS = ("nearest", "stochastic")
PROFILES = ("normal", "negative", "positive", "constant", "zeros", "outlier", "subnormal", "mixed")


# ---------------------------------------------------------------------------------------------
# Test data


def block_values(rng: np.random.Generator, dtype: str, n: int, profile: str) -> np.ndarray:
    """One block of ``n`` finite values of ``dtype`` (float64 values stay in float32's range)."""
    max_exponent, min_exponent = (12, -20) if dtype == "float16" else (100, -120)
    scale = np.exp2(float(rng.integers(min_exponent, max_exponent)))
    if profile == "subnormal":
        if dtype == "float16":
            patterns = rng.integers(0, 0x400, n) | (rng.integers(0, 2, n) << 15)
            return patterns.astype(np.uint16).view(np.float16)
        patterns = (rng.integers(0, 1 << 23, n) | (rng.integers(0, 2, n) << 31)).astype(np.uint32)
        values = patterns.view(np.float32)
        return ref.f32_to_bf16(values) if dtype == "bfloat16" else values.astype(ref.storage_dtype(dtype))
    if profile == "normal":
        values = rng.standard_normal(n) * scale
    elif profile == "negative":
        values = -np.abs(rng.standard_normal(n)) * scale - scale / 8
    elif profile == "positive":
        values = np.abs(rng.standard_normal(n)) * scale + scale / 8
    elif profile == "constant":
        values = np.full(n, rng.standard_normal() * scale)
    elif profile == "zeros":
        values = np.where(rng.random(n) < 0.5, 0.0, -0.0)
    elif profile == "outlier":
        values = rng.standard_normal(n) * scale * 2.0**-30
        values[rng.integers(0, n)] = scale * 1e6 * rng.choice([-1.0, 1.0])
    else:  # mixed: integers and halves, so that x / scale lands on ties
        values = rng.integers(-8, 9, n) * 0.5 * scale
    if dtype == "bfloat16":
        return ref.f32_to_bf16(values.astype(np.float32))
    with np.errstate(over="ignore"):
        values = values.astype(ref.storage_dtype(dtype))
    return np.where(np.isfinite(values), values, 0).astype(values.dtype)


@st.composite
def quantize_cases(draw):
    scheme = draw(st.sampled_from(SCHEMES), label="scheme")
    rounding = draw(st.sampled_from(ROUNDINGS), label="rounding")
    dtype = draw(st.sampled_from(ref.FLOAT_DTYPES), label="dtype")
    block_size = draw(
        st.one_of(st.integers(1, 70), st.sampled_from([128, 256, 1000, 1024, 4096])), label="block"
    )
    if scheme == "int4" and block_size % 2:
        block_size += 1
    length = draw(st.one_of(st.integers(0, 70), st.integers(71, 3000)), label="length")
    focus = draw(st.sampled_from(PROFILES), label="profile")
    seed = draw(st.integers(0, 2**64 - 1), label="seed")
    offset = draw(st.integers(0, 7), label="misalignment")
    rng = np.random.default_rng(seed % 2**32)
    parts = [
        block_values(
            rng, dtype, part.stop - part.start, focus if rng.random() < 0.7 else rng.choice(PROFILES)
        )
        for part in ref.blocks(length, block_size)
    ]
    values = np.concatenate(parts) if parts else np.zeros(0, ref.storage_dtype(dtype))
    return scheme, rounding, dtype, block_size, seed, ref.misaligned_copy(values, offset)


# ---------------------------------------------------------------------------------------------
# The error bound
#
# Symmetric schemes (limit L = 127 or 7). For a block with absmax a the kernel stores
# s = fl(a / L), computes y = fl(x / s) and q = clamp(round(y), -L, L), and dequantizes to
# fl(q * s). Then, for every x in the block (|x| <= a):
#   - q not clamped, nearest:     |x/s - q| <= 1/2 + |y - x/s| <= 1/2 + 2^-17   (|y| < 128)
#     stochastic: q is floor(y), or floor(y) + 1 with probability y - floor(y) (never when y is
#     on the grid), so |y - q| < 1 and |x/s - q| < 1 + 2^-17;
#   - q clamped to L (y > L): |x - L s| <= a - L s <= L * ulp(s) / 2, the rounding error of the
#     scale times L (in the normal range about ulp(a) / 2; for a subnormal block, where the scale
#     is only a few ulps of the subnormal grid, this term is what dominates);
#   - the product fl(q * s) adds at most ulp(a) / 2 (|q s| <= a (1 + 2^-23)).
# So |x - deq| <= s/2 (1 + 2^-16) + L ulp(s) / 2 + ulp(a)   for nearest,
#    |x - deq| <= s (1 + 2^-16)   + L ulp(s) / 2 + ulp(a)   for stochastic.
# A block whose scale underflows to 0 (a < L * 2^-150) is stored as zeros; its error a is inside
# the L ulp(s) / 2 term with ulp(0) = 2^-149.
#
# uint8 (L = 255) with block range [lo, hi]: r = fl(hi - lo), s = fl(r / 255), d = fl(x - lo),
# y = fl(d / s), deq = fl(fl(q s) + lo). The same steps, plus the rounding of d and of r (each at
# most ulp(r) / 2) and of the final addition (ulp(M) / 2, M = max(|lo|, |hi|)), give
#   |x - deq| <= s/2 (1 + 2^-16) + 255 ulp(s) / 2 + 2 ulp(r) + ulp(M)   (s instead of s/2 when
#   stochastic).
# float64 input is first rounded to float32, which adds ulp(a) / 2 against the original value.
# All bounds are evaluated in float64.


def error_bound(x32: np.ndarray, scale: np.float32, scheme: str, rounding: str) -> float:
    limit = ref.QUANT_LIMITS[scheme]
    s = float(scale)
    step = s if rounding == "stochastic" else s / 2
    bound = step * (1 + 2.0**-16) + limit * float(ref.ulp(scale)) / 2
    if scheme == "uint8":
        low, high = float(x32.min()), float(x32.max())
        bound += 2 * float(ref.ulp(np.float32(high) - np.float32(low)))
        bound += float(ref.ulp(max(abs(low), abs(high))))
    else:
        bound += float(ref.ulp(np.abs(x32).max()))
    return bound


def check_within_bound(
    original: np.ndarray, dtype: str, restored: np.ndarray, q: kernels.Quantized, rounding: str
) -> None:
    x32 = ref.load_f32(original, dtype)
    exact = (
        ref.bf16_to_f32(original).astype(np.float64) if dtype == "bfloat16" else original.astype(np.float64)
    )
    error = np.abs(exact - restored.astype(np.float64))
    for index, part in enumerate(ref.blocks(original.size, q.block_size)):
        bound = error_bound(x32[part], q.scales[index], q.scheme, rounding)
        if dtype == "float64":
            bound += float(ref.ulp(np.abs(x32[part]).max())) / 2
        worst = int(np.argmax(error[part]))
        assert error[part][worst] <= bound, (
            f"{q.scheme} {rounding} {dtype} block {index}: |x - deq| = {error[part][worst]!r} at element "
            f"{part.start + worst} (x = {exact[part][worst]!r}) exceeds {bound!r}; scale {q.scales[index]!r}"
        )


# ---------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=quantize_cases())
def test_round_trip(case) -> None:
    scheme, rounding, dtype, block_size, seed, x = case
    before = x.copy()
    q = kernels.quantize(x, scheme, block_size, rounding, seed=seed, dtype=dtype)
    restored = kernels.dequantize(q)

    assert np.array_equal(ref.bits(x), ref.bits(before)), "quantize modified its input"
    count = x.size
    n_blocks = -(-count // block_size)
    assert q.count == count
    assert q.data.shape == ((count + 1) // 2 if scheme == "int4" else count,)
    assert q.data.dtype == (np.int8 if scheme == "int8" else np.uint8)
    assert q.scales.shape == (n_blocks,)
    assert (q.zero_points is not None) == (scheme == "uint8")
    assert restored.dtype == np.float32

    x32 = ref.load_f32(x, dtype)
    codes, scales, zero_points = ref.quantize_nearest(x32, scheme, block_size)
    ref.assert_same_bits(q.scales, scales, "float32", "scales")
    if scheme == "uint8":
        ref.assert_same_bits(q.zero_points, zero_points, "float32", "zero points")
    stored = ref.unpack_codes(q.data, scheme, count)
    if scheme == "int4" and count % 2:
        assert q.data[-1] >> 4 == 0, "the unused high nibble of an odd-length int4 array must be 0"

    if rounding == "nearest":
        assert np.array_equal(stored, codes)
        packed = ref.pack_int4(codes) if scheme == "int4" else codes.astype(q.data.dtype)
        assert q.data.tobytes() == packed.tobytes()
    else:
        # Stochastic rounding picks one of the two codes around x / scale, and leaves a value that
        # is on the grid where it is.
        low_codes = np.zeros(count, np.int64)
        on_grid = np.ones(count, bool)
        for index, part in enumerate(ref.blocks(count, block_size)):
            if scales[index] != 0:
                with np.errstate(all="ignore"):
                    shifted = (x32[part] - zero_points[index]) if scheme == "uint8" else x32[part]
                    scaled = shifted / scales[index]
                low_codes[part] = np.floor(scaled)
                on_grid[part] = scaled == np.floor(scaled)
        lowest, highest = (
            (0, 255) if scheme == "uint8" else (-ref.QUANT_LIMITS[scheme], ref.QUANT_LIMITS[scheme])
        )
        allowed = (stored == np.clip(low_codes, lowest, highest)) | (
            (stored == np.clip(low_codes + 1, lowest, highest)) & ~on_grid
        )
        assert allowed.all(), f"codes outside floor/ceil of x / scale at {np.flatnonzero(~allowed)[:5]}"
    expected = ref.dequantize(stored, scales, zero_points if scheme == "uint8" else None, block_size)
    ref.assert_same_bits(restored, expected, "float32", "dequantized")
    check_within_bound(x, dtype, restored, q, rounding)

    # Other output types get the float32 result rounded once.
    ref.assert_same_bits(kernels.dequantize(q, dtype="float16"), ref.to_f16(expected), "float16", "to f16")
    ref.assert_same_bits(
        kernels.dequantize(q, dtype="bfloat16"), ref.f32_to_bf16(expected), "bfloat16", "to bf16"
    )
    ref.assert_same_bits(
        kernels.dequantize(q, dtype="float64"), expected.astype(np.float64), "float64", "to f64"
    )


@settings(max_examples=100, deadline=None)
@given(case=quantize_cases(), blocks_kept=st.integers(0, 5))
def test_codes_depend_only_on_the_block_and_element_index(case, blocks_kept: int) -> None:
    scheme, rounding, dtype, block_size, seed, x = case
    whole = kernels.quantize(x, scheme, block_size, rounding, seed=seed, dtype=dtype)
    prefix_length = min(x.size, blocks_kept * block_size)
    prefix = kernels.quantize(x[:prefix_length].copy(), scheme, block_size, rounding, seed=seed, dtype=dtype)
    data_bytes = (prefix_length + 1) // 2 if scheme == "int4" else prefix_length
    assert prefix.data.tobytes() == whole.data[:data_bytes].tobytes()
    assert prefix.scales.tobytes() == whole.scales[: prefix.scales.size].tobytes()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_stochastic_rounding_is_a_function_of_the_seed(scheme: str) -> None:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(5000) * 3).astype(np.float32)
    first = kernels.quantize(x, scheme, 128, "stochastic", seed=1234)
    again = kernels.quantize(x, scheme, 128, "stochastic", seed=1234)
    assert first.data.tobytes() == again.data.tobytes()
    assert first.scales.tobytes() == again.scales.tobytes()
    for other_seed in (1235, 2**63 + 1234, 2**64 - 1):
        other = kernels.quantize(x, scheme, 128, "stochastic", seed=other_seed)
        assert other.scales.tobytes() == first.scales.tobytes()
        changed = np.count_nonzero(
            ref.unpack_codes(other.data, scheme, x.size) != ref.unpack_codes(first.data, scheme, x.size)
        )
        # Each code of a value between two grid points flips with a fair chance; thousands would
        # have to agree by accident for this to fail.
        assert changed > x.size // 10, f"seed {other_seed} changed only {changed} codes"


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.83])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_stochastic_rounding_is_unbiased(scheme: str, fraction: float) -> None:
    # Blocks of 256: the first elements pin the scale (and, for uint8, the zero point) to a grid
    # step of `step`; every other element sits `fraction` of a step above a grid point, on both
    # sides of zero for the symmetric schemes. Over n draws the mean error of an unbiased rounding
    # is 0 with standard deviation step * sqrt(f (1 - f) / n); 6 of those is a safe bound. The
    # float rounding of x / scale + u biases by at most 2^-17 step (derivation above).
    limit = ref.QUANT_LIMITS[scheme]
    step = np.float32(1.0) / np.float32(limit)
    grid = 3 if scheme == "int4" else 40
    value = np.float32((grid + fraction) * step)
    blocks = 64
    x = np.full((blocks, 256), value, np.float32)
    if scheme == "uint8":
        x[:, 0], x[:, 1] = 0.0, 1.0
    else:
        x[:, 0] = 1.0
        x[:, 2::2] = -value
    mask = np.ones(x.shape, bool)
    mask[:, :2] = False
    errors = []
    for seed in range(16):
        q = kernels.quantize(x.reshape(-1), scheme, 256, "stochastic", seed=seed)
        assert np.all(q.scales == step)
        errors.append((kernels.dequantize(q).reshape(x.shape) - x)[mask].astype(np.float64))
    errors = np.concatenate(errors)
    exact_fraction = float(value / step) - grid  # the fraction after float32 rounding
    sigma = float(step) * np.sqrt(exact_fraction * (1 - exact_fraction) / errors.size)
    bias_allowance = float(step) * 2.0**-16
    assert abs(errors.mean()) <= 6 * sigma + bias_allowance, (errors.mean(), sigma)
    # Within one step, as the bound says; and round to nearest, on the same data, is biased.
    assert np.abs(errors).max() <= float(step) * (1 + 2.0**-16)
    nearest = kernels.quantize(x.reshape(-1), scheme, 256, "nearest")
    nearest_errors = (kernels.dequantize(nearest).reshape(x.shape) - x)[mask]
    assert np.abs(nearest_errors).mean() > 50 * sigma


@pytest.mark.parametrize("scheme", SCHEMES)
def test_stochastic_rounding_keeps_grid_values(scheme: str) -> None:
    # Every block holds the grid's extreme (fixing the scale: 1, or 1/8 for int4) and otherwise
    # exact multiples of the scale; for int8 and uint8 from the upper half of the grid, where
    # x / scale + u is rounded most coarsely in float32. Every one must come back unchanged,
    # whatever its random draw. (Taking the floor of the float32 sum x / scale + u, which rounds
    # before the floor, moves about eight of these 2^21 values.)
    rng = np.random.default_rng(59)
    blocks = (1 << 21) // 256
    if scheme == "int4":
        grid = rng.integers(-7, 8, (blocks, 256)).astype(np.float32) / 8
        grid[:, 0] = 7 / 8
    elif scheme == "int8":
        grid = (rng.integers(64, 128, (blocks, 256)) * rng.choice([-1, 1], (blocks, 256))).astype(np.float32)
        grid[:, 0] = 127
    else:
        grid = rng.integers(128, 256, (blocks, 256)).astype(np.float32)
        grid[:, 0], grid[:, 1] = 0, 255
    q = kernels.quantize(grid.reshape(-1), scheme, 256, "stochastic", seed=2024)
    moved = np.flatnonzero(kernels.dequantize(q) != grid.reshape(-1))
    assert moved.size == 0, f"{moved.size} grid values moved, first at element {moved[:3]}"


# ---------------------------------------------------------------------------------------------
# Edge blocks


@pytest.mark.parametrize("dtype", ref.FLOAT_DTYPES)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_all_negative_blocks(dtype: str, rounding: str) -> None:
    values = np.array([-5.0, -3.0, -1.0, -2.5, -4.75, -1.25], np.float32)
    x = ref.f32_to_bf16(values) if dtype == "bfloat16" else values.astype(ref.storage_dtype(dtype))
    q = kernels.quantize(x, "uint8", 6, rounding, seed=3, dtype=dtype)
    assert q.zero_points.tolist() == [-5.0]  # the block minimum, not a clamp to zero
    assert q.scales[0] == np.float32(4.0) / np.float32(255)  # from the true (negative) maximum
    check_within_bound(x, dtype, kernels.dequantize(q), q, rounding)
    for scheme in ("int8", "int4"):
        q = kernels.quantize(x, scheme, 6, rounding, seed=3, dtype=dtype)
        assert q.scales[0] == np.float32(5.0) / np.float32(ref.QUANT_LIMITS[scheme])
        check_within_bound(x, dtype, kernels.dequantize(q), q, rounding)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -3.25, 1e-40, 7e37])
def test_constant_blocks(value: float, rounding: str) -> None:
    x = np.full(100, value, np.float32)
    q = kernels.quantize(x, "uint8", 32, rounding, seed=9)
    assert (q.scales == 0).all()
    assert kernels.dequantize(q).tolist() == x.tolist()  # uint8 stores a constant block exactly
    for scheme in ("int8", "int4"):
        q = kernels.quantize(x, scheme, 32, rounding, seed=9)
        restored = kernels.dequantize(q)
        if value == 0:
            assert (q.scales == 0).all()
            assert restored.tolist() == x.tolist()
        else:
            # Nearest gives code +-limit, so the value comes back as limit * fl(|value| / limit),
            # not always exactly (the scale is rounded).
            if rounding == "nearest" and abs(value) >= np.finfo(np.float32).tiny:
                assert (np.abs(ref.unpack_codes(q.data, scheme, x.size)) == ref.QUANT_LIMITS[scheme]).all()
            check_within_bound(x, "float32", restored, q, rounding)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_subnormal_blocks(scheme: str, dtype: str) -> None:
    rng = np.random.default_rng(17)
    for rounding in ROUNDINGS:
        for bits in (3, 10, 23):  # subnormals with a few, some and all mantissa bits
            patterns = (rng.integers(0, 1 << bits, 512) | (rng.integers(0, 2, 512) << 31)).astype(np.uint32)
            values = patterns.view(np.float32)
            x = ref.f32_to_bf16(values) if dtype == "bfloat16" else values.astype(ref.storage_dtype(dtype))
            q = kernels.quantize(x, scheme, 64, rounding, seed=1, dtype=dtype)
            check_within_bound(x, dtype, kernels.dequantize(q), q, rounding)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_block_with_one_huge_outlier(scheme: str) -> None:
    x = np.full(64, 0.001, np.float32)
    x[17] = 3e30
    q = kernels.quantize(x, scheme, 64)
    restored = kernels.dequantize(q)
    check_within_bound(x, "float32", restored, q, "nearest")
    assert restored[17] == pytest.approx(3e30, rel=1 / ref.QUANT_LIMITS[scheme])


def test_odd_lengths_and_partial_last_blocks() -> None:
    x = np.arange(1, 12, dtype=np.float32)  # 11 elements: blocks of 4, 4, 3
    q = kernels.quantize(x, "int4", 4)
    assert q.data.size == 6 and q.scales.size == 3
    assert q.data[-1] >> 4 == 0
    assert q.scales.tolist() == [np.float32(v) / np.float32(7) for v in (4.0, 8.0, 11.0)]
    check_within_bound(x, "float32", kernels.dequantize(q), q, "nearest")


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ref.FLOAT_DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_non_finite_values_name_their_block(scheme: str, dtype: str, bad: float) -> None:
    rng = np.random.default_rng(23)
    for where in (0, 99, 100, 101, 250, 299):
        values = rng.standard_normal(300).astype(np.float32)
        values[where] = bad
        x = ref.f32_to_bf16(values) if dtype == "bfloat16" else values.astype(ref.storage_dtype(dtype))
        block = where // 100
        message = (
            rf"block {block} \(elements {block * 100}\.\.{block * 100 + 99}\) holds a NaN or an infinity"
        )
        with pytest.raises(InvalidArgumentError, match=message):
            kernels.quantize(x, scheme, 100, dtype=dtype)


def test_float64_beyond_float32_range_is_refused() -> None:
    x = np.ones(10)
    x[3] = 1e39
    with pytest.raises(InvalidArgumentError, match=r"block 0 .*float32's range"):
        kernels.quantize(x, "int8", 8)
    with pytest.raises(InvalidArgumentError, match=r"block 1 \(elements 8\.\.9\) .*float32's range"):
        kernels.quantize(np.array([0.0] * 8 + [-3e38, 3e38], np.float32), "uint8", 8)


# ---------------------------------------------------------------------------------------------
# dequantize(accumulate=True)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantize_accumulates_into_float32(scheme: str) -> None:
    rng = np.random.default_rng(29)
    x = rng.standard_normal(1001).astype(np.float32)
    q = kernels.quantize(x, scheme, 64)
    out = ref.misaligned_copy(rng.standard_normal(1001).astype(np.float32), 3)
    expected = out + kernels.dequantize(q)
    result = kernels.dequantize(q, out=out, accumulate=True)
    assert result is out
    ref.assert_same_bits(out, expected, "float32", "accumulate")


def test_dequantize_accumulate_needs_a_float32_out() -> None:
    q = kernels.quantize(np.ones(8, np.float32), "int8", 4)
    with pytest.raises(InvalidArgumentError, match=r"accumulate=True needs out"):
        kernels.dequantize(q, accumulate=True)
    out = np.full(8, 2.0, np.float16)
    with pytest.raises(InvalidArgumentError, match=r"accumulate needs a float32 output, got float16"):
        kernels.dequantize(q, out=out, dtype="float16", accumulate=True)
    assert out.tolist() == [2.0] * 8


# ---------------------------------------------------------------------------------------------
# Bad arguments: a clear error, nothing written


def _raises(match: str):
    return pytest.raises(InvalidArgumentError, match=match)


def test_bad_quantize_arguments() -> None:
    x = np.ones(16, np.float32)
    with _raises(r"int4 packs two values a byte, so block_size must be even, got 7"):
        kernels.quantize(x, "int4", 7)
    for block_size in (0, -4, 2.5, "8"):
        with _raises(r"block_size must be an integer in \[1, 1073741824\]"):
            kernels.quantize(x, "int8", block_size)
    with _raises(r"block_size must be an integer in \[1, 1073741824\], got 1099511627776"):
        kernels.quantize(x, "int8", 2**40)
    with _raises(r"unsupported quantization scheme 'int2'; supported: int8, int4, uint8"):
        kernels.quantize(x, "int2")
    with _raises(r"unsupported rounding 'up'; supported: nearest, stochastic"):
        kernels.quantize(x, "int8", 8, "up")
    with _raises(r"seed must be an integer in \[0, 18446744073709551615\]"):
        kernels.quantize(x, seed=-1)
    with _raises(r"seed must be an integer in \[0, 18446744073709551615\]"):
        kernels.quantize(x, seed=2**64)
    with _raises(r"the input must be a float dtype .* got int32"):
        kernels.quantize(np.ones(16, np.int32))
    with _raises(r"bfloat16 data must be 2-byte elements"):
        kernels.quantize(x, dtype="bfloat16")
    with _raises(r"x: array must be C-contiguous"):
        kernels.quantize(np.ones(32, np.float32)[::2])
    with _raises(r"x: array must be C-contiguous"):
        kernels.quantize(np.ones((4, 4), np.float32, order="F")[:, :3])
    with _raises(r"x: array must be C-contiguous"):
        kernels.quantize(np.asfortranarray(np.arange(16, dtype=np.float32).reshape(4, 4)))
    with _raises(r"byte order"):
        kernels.quantize(x.astype(">f4"))


def test_bad_dequantize_arguments_leave_out_untouched() -> None:
    q = kernels.quantize(np.arange(8, dtype=np.float32), "uint8", 4)
    sentinel = np.full(8, 7.0, np.float32)

    out = sentinel[:7].copy()
    with _raises(r"out has 7 elements, the quantized array 8"):
        kernels.dequantize(q, out=out)
    assert out.tolist() == [7.0] * 7

    out = sentinel.copy()
    out.flags.writeable = False
    with _raises(r"out: array is read-only"):
        kernels.dequantize(q, out=out)

    for shaped in (
        np.full((2, 8), 7.0, np.float32)[:, ::2],
        np.asfortranarray(np.full((2, 4), 7.0, np.float32)),
    ):
        with _raises(r"out: array must be C-contiguous"):
            kernels.dequantize(q, out=shaped)
        assert (shaped == 7.0).all()

    out = sentinel.copy()
    with _raises(r"out: array has dtype float32, not float16"):
        kernels.dequantize(q, out=out, dtype="float16")
    with _raises(r"dequantize: the output must be a float dtype"):
        kernels.dequantize(q, out=np.zeros(8, np.int32), dtype="int32")
    with _raises(r"scales: 8 elements in blocks of 4 need 2 scales, got 1"):
        kernels.dequantize(
            kernels.Quantized("uint8", 4, 8, (8,), q.data, q.scales[:1], q.zero_points), out=out
        )
    with _raises(r"uint8 needs one per block"):
        kernels.dequantize(kernels.Quantized("uint8", 4, 8, (8,), q.data, q.scales, None), out=out)
    with _raises(r"int4 packs two values a byte, so block_size must be even, got 3"):
        kernels.dequantize(
            kernels.Quantized("int4", 3, 8, (8,), q.data[:4], np.ones(3, np.float32), None), out=out
        )
    assert out.tolist() == [7.0] * 8


def test_dequantize_keeps_the_shape() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    q = kernels.quantize(x, "int8", 5)
    assert q.shape == (2, 3, 4)
    restored = kernels.dequantize(q)
    assert restored.shape == (2, 3, 4)
    check_within_bound(x.reshape(-1), "float32", restored.reshape(-1), q, "nearest")


def test_independent_of_the_thread_count() -> None:
    x = (np.random.default_rng(37).standard_normal((1 << 20) + 5) * 10).astype(np.float32)
    previous = kernels.threads()
    results: dict[tuple[str, str], set[bytes]] = {}
    try:
        for threads in (1, 2, 3, 8):
            kernels.set_threads(threads)
            for scheme in SCHEMES:
                for rounding in ROUNDINGS:
                    q = kernels.quantize(x, scheme, 256, rounding, seed=5)
                    restored = kernels.dequantize(q)
                    results.setdefault((scheme, rounding), set()).add(q.data.tobytes() + restored.tobytes())
    finally:
        kernels.set_threads(previous)
    for key, outputs in results.items():
        assert len(outputs) == 1, f"{key}: results depend on the thread count"
    codes, _, _ = ref.quantize_nearest(x, "int8", 256)
    assert np.array_equal(ref.unpack_codes(kernels.quantize(x, "int8", 256).data, "int8", x.size), codes)


# ---------------------------------------------------------------------------------------------
# The portable build computes the same bytes

_CHILD_BODY = """
for key in [k for k in inputs if k.startswith("x/")]:
    _, dtype = key.split("/")
    for scheme in ("int8", "int4", "uint8"):
        for rounding in ("nearest", "stochastic"):
            q = kernels.quantize(inputs[key], scheme, 96, rounding, seed=77, dtype=dtype)
            name = f"{dtype}/{scheme}/{rounding}"
            outputs[name + "/data"] = q.data
            outputs[name + "/scales"] = q.scales
            if q.zero_points is not None:
                outputs[name + "/zero_points"] = q.zero_points
            outputs[name + "/restored"] = kernels.dequantize(q)
            acc = inputs["acc"].copy()
            outputs[name + "/accumulated"] = kernels.dequantize(q, out=acc, accumulate=True)
            outputs[name + "/as_bf16"] = kernels.dequantize(q, dtype="bfloat16")
"""


def test_portable_build_computes_identical_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(31)
    inputs = {"acc": rng.standard_normal(2001).astype(np.float32)}
    for dtype in ref.FLOAT_DTYPES:
        parts = [block_values(rng, dtype, 96, profile) for profile in PROFILES for _ in range(2)]
        inputs[f"x/{dtype}"] = np.concatenate([*parts, block_values(rng, dtype, 465, "normal")])

    by_isa = ref.run_on_every_isa(_CHILD_BODY, inputs, tmp_path)
    portable = by_isa["baseline"]
    assert len(portable) == 4 * 3 * 2 * 5 + 4 * 2
    for isa, outputs in by_isa.items():
        assert set(outputs) == set(portable)
        for key, value in outputs.items():
            assert value.tobytes() == portable[key].tobytes(), f"{key}: {isa} and baseline differ"
    for key, value in portable.items():
        dtype, scheme, rounding, what = key.split("/")
        if what == "data":
            here = kernels.quantize(inputs[f"x/{dtype}"], scheme, 96, rounding, seed=77, dtype=dtype)
            assert here.data.tobytes() == value.tobytes(), f"{key}: in-process result differs"
            if rounding == "nearest":
                codes, _, _ = ref.quantize_nearest(ref.load_f32(inputs[f"x/{dtype}"], dtype), scheme, 96)
                assert np.array_equal(ref.unpack_codes(value, scheme, codes.size), codes), key


def test_error_messages_name_the_scheme_sizes() -> None:
    q = kernels.quantize(np.ones(9, np.float32), "int4", 4)
    bad = kernels.Quantized("int4", 4, 9, (9,), np.zeros(4, np.uint8), q.scales, None)
    with pytest.raises(InvalidArgumentError, match=re.escape("data: 9 elements in int4 need 5 bytes, got 4")):
        kernels.dequantize(bad)


def test_quantize_outputs_and_input_must_not_overlap() -> None:
    buffer = np.zeros(1024, np.uint8)
    x = buffer[:512].view(np.float32)  # 128 floats in bytes 0..511
    data = buffer[256:384]  # the 128 quantized bytes would land inside x
    scales = np.zeros(1, np.float32)
    with pytest.raises(InvalidArgumentError, match="quantize: x and data overlap"):
        kernels._k.quantize(x, "float32", data.view(np.int8), scales, None, "int8", 128, "nearest", 0)
