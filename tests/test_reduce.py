"""Element-wise reductions (pycomm.kernels.reduce, reduce_into, widen/accumulate/finalize) against
the numpy reference, bit for bit, on every dtype and op.

Inputs are drawn by hypothesis: lengths around the vector widths and the 2048-element tile of a
chained reduction, starts misaligned by 1..7 bytes, random bit patterns (every float class), special
values and 1..8 inputs (a world size). Every instruction-set build this CPU can run (baseline,
x86-64-v3, x86-64-v4) is checked to give the same bytes, each forced with PYCOMM_KERNEL_ISA in a
child process.
"""

from __future__ import annotations

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

PROFILES = ("bits", "normal", "small", "special")

# Around the vector widths (up to 64 one-byte lanes with unrolling) and the tile of a chained
# reduction (2048 elements), and anything up to 5000.
LENGTHS = st.one_of(
    st.integers(0, 70),
    st.integers(71, 5000),
    st.sampled_from([127, 128, 129, 2047, 2048, 2049, 4095, 4096, 4097]),
)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def input_sets(draw, dtype: str, min_inputs: int = 1, max_inputs: int = 8):
    """1..8 equally long inputs of ``dtype``, each with its own kind of values and each starting
    at its own misalignment."""
    n_inputs = draw(st.integers(min_inputs, max_inputs))
    length = draw(LENGTHS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = []
    for _ in range(n_inputs):
        values = ref.random_values(rng, dtype, length, draw(st.sampled_from(PROFILES)))
        arrays.append(ref.misaligned_copy(values, draw(st.integers(0, 7))))
    return arrays


def garbage_out(like: np.ndarray, offset: int) -> np.ndarray:
    """A misaligned output buffer full of bytes that must all be overwritten."""
    return ref.misaligned_copy(np.frombuffer(b"\xa5" * like.nbytes, like.dtype), offset)


# ---------------------------------------------------------------------------------------------
# reduce(): every dtype and op against the reference


@pytest.mark.parametrize("dtype", ref.ALL_DTYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_reduce_matches_reference(dtype: str, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(ref.REDUCE_OPS), label="op")
    inputs = data.draw(input_sets(dtype), label="inputs")
    before = [x.copy() for x in inputs]
    out = garbage_out(inputs[0], data.draw(st.integers(0, 7), label="out offset"))

    result = kernels.reduce(inputs, op, out=out, dtype=dtype)

    assert result is out
    ref.assert_same_bits(out, ref.reduce_chain(before, op, dtype), dtype, f"reduce {op} {dtype}")
    for x, y in zip(inputs, before):
        assert np.array_equal(ref.bits(x), ref.bits(y)), "reduce modified an input"


@pytest.mark.parametrize("dtype", ref.ALL_DTYPES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_reduce_into_matches_reference(dtype: str, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(ref.PAIRWISE_OPS), label="op")
    dst, src = data.draw(input_sets(dtype, 2, 2), label="inputs")
    if data.draw(st.booleans(), label="dst is src"):
        src = dst
    expected = ref.reduce_pair(dst.copy(), src.copy(), op, dtype)

    kernels.reduce_into(dst, src, op, dtype=dtype)

    ref.assert_same_bits(dst, expected, dtype, f"reduce_into {op} {dtype}")


@pytest.mark.parametrize("dtype", ref.ALL_DTYPES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_reduce_out_may_be_any_input(dtype: str, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(ref.REDUCE_OPS), label="op")
    inputs = data.draw(input_sets(dtype), label="inputs")
    expected = ref.reduce_chain([x.copy() for x in inputs], op, dtype)
    target = data.draw(st.integers(0, len(inputs) - 1), label="out is input")

    kernels.reduce(inputs, op, out=inputs[target], dtype=dtype)

    ref.assert_same_bits(inputs[target], expected, dtype, f"reduce {op} {dtype} into inputs[{target}]")


@pytest.mark.parametrize(
    ("dtype", "op"), [("float16", "sum"), ("bfloat16", "avg"), ("int16", "avg"), ("float64", "prod")]
)
def test_one_buffer_as_every_input_and_the_output(dtype: str, op: str) -> None:
    values = ref.random_values(np.random.default_rng(3), dtype, 3001, "normal")
    expected = ref.reduce_chain([values] * 4, op, dtype)
    kernels.reduce([values] * 4, op, out=values, dtype=dtype)
    ref.assert_same_bits(values, expected, dtype, f"{op} {dtype} of one buffer")


@pytest.mark.parametrize("dtype", ref.ALL_DTYPES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_streaming_equals_reduce(dtype: str, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(ref.REDUCE_OPS), label="op")
    inputs = data.draw(input_sets(dtype), label="inputs")

    acc = kernels.widen(inputs[0], op, dtype=dtype)
    for x in inputs[1:]:
        kernels.accumulate(acc, x, op, dtype=dtype)
    streamed = kernels.finalize(acc, dtype, op, contributions=len(inputs))

    assert acc.dtype == np.dtype(kernels.accumulator_dtype(dtype, op))
    ref.assert_same_bits(streamed, kernels.reduce(inputs, op, dtype=dtype), dtype, f"streamed {op} {dtype}")
    ref.assert_same_bits(streamed, ref.reduce_chain(inputs, op, dtype), dtype, f"streamed {op} {dtype}")


@pytest.mark.parametrize(
    ("dtype", "op", "expected"),
    [
        ("float16", "sum", "float32"),
        ("bfloat16", "avg", "float32"),
        ("float32", "sum", "float32"),
        ("float64", "avg", "float64"),
        ("int8", "avg", "int64"),
        ("uint16", "avg", "uint64"),
        ("int32", "sum", "int32"),
        ("uint64", "max", "uint64"),
    ],
)
def test_accumulator_dtype(dtype: str, op: str, expected: str) -> None:
    assert kernels.accumulator_dtype(dtype, op) == expected


# ---------------------------------------------------------------------------------------------
# Special values, exhaustively paired


@pytest.mark.parametrize("op", ref.REDUCE_OPS)
@pytest.mark.parametrize("dtype", ref.ALL_DTYPES)
def test_special_value_pairs(dtype: str, op: str) -> None:
    specials = ref.special_values(dtype)
    a = np.repeat(specials, specials.size)
    b = np.tile(specials, specials.size)
    c = np.roll(b, 3)
    for inputs in ([a, b], [b, a], [a, b, c], [c, a, b, a]):
        ref.assert_same_bits(
            kernels.reduce(inputs, op, dtype=dtype),
            ref.reduce_chain(inputs, op, dtype),
            dtype,
            f"{op} {dtype}",
        )
    if op != "avg":
        dst = a.copy()
        kernels.reduce_into(dst, b, op, dtype=dtype)
        ref.assert_same_bits(dst, ref.reduce_pair(a, b, op, dtype), dtype, f"reduce_into {op} {dtype}")


@pytest.mark.parametrize("op", ["min", "max"])
def test_min_max_rules_on_zero_signs_and_nan(op: str) -> None:
    # Ties keep the first operand (so the sign of a zero comes from the first input); a NaN wins.
    a = np.array([0.0, -0.0, np.nan, 1.0, np.nan], np.float32)
    b = np.array([-0.0, 0.0, 1.0, np.nan, np.nan], np.float32)
    out = kernels.reduce([a, b], op)
    assert list(np.signbit(out[:2])) == [False, True]
    assert np.isnan(out[2:]).all()


@pytest.mark.parametrize("op", ["sum", "prod", "avg"])
@pytest.mark.parametrize("dtype", ref.FLOAT_DTYPES)
def test_nan_results_are_the_positive_quiet_nan(dtype: str, op: str) -> None:
    grid = nan_grid(dtype)
    canonical = {"float16": 0x7E00, "bfloat16": 0x7FC0, "float32": 0x7FC00000, "float64": 0x7FF8000000000000}
    for inputs in (grid, grid[:2], grid[::-1]) + ((grid[:1],) if op == "avg" else ()):
        out = ref.bits(kernels.reduce(inputs, op, dtype=dtype))
        nan = ref.is_nan(ref.reduce_chain(inputs, op, dtype), dtype)
        assert nan.any()
        assert (out[nan] == canonical[dtype]).all(), f"{op} {dtype}: {sorted(set(map(hex, out[nan])))}"
    if op != "avg":
        dst = grid[1].copy()
        kernels.reduce_into(dst, grid[0], op, dtype=dtype)
        nan = ref.is_nan(dst, dtype)
        assert (ref.bits(dst)[nan] == canonical[dtype]).all()


def test_half_chain_rounds_once() -> None:
    # 2048 + 1 + 1 in float16 rounds to 2048 twice when rounded after every step (ulp 2 at 2048),
    # but the float32 chain keeps 2050, which float16 holds exactly.
    inputs = [np.full(5, v, np.float16) for v in (2048.0, 1.0, 1.0)]
    assert kernels.reduce(inputs, "sum").tolist() == [2050.0] * 5
    bf16 = [ref.f32_to_bf16(np.full(5, v, np.float32)) for v in (256.0, 1.0, 1.0)]
    assert ref.bf16_to_f32(kernels.reduce(bf16, "sum", dtype="bfloat16")).tolist() == [258.0] * 5


def test_integer_rules() -> None:
    big = np.array([127, -128, 100], np.int8)
    assert kernels.reduce([big, big], "sum").tolist() == [-2, 0, -56]  # wraps
    assert kernels.reduce([big, big], "avg").tolist() == [127, -128, 100]  # 64-bit sum
    odd = [np.array([-7, 7, -1, 5], np.int32), np.array([0, 0, 0, 0], np.int32)]
    assert kernels.reduce(odd, "avg").tolist() == [-3, 3, 0, 2]  # truncates toward zero
    u = np.array([65535, 2], np.uint16)
    assert kernels.reduce([u, u], "prod").tolist() == [1, 4]  # wraps, no signed overflow


# ---------------------------------------------------------------------------------------------
# Large buffers


@pytest.mark.parametrize(
    ("dtype", "op"),
    [("float16", "sum"), ("bfloat16", "avg"), ("float32", "prod"), ("int8", "max"), ("uint32", "avg")],
)
def test_large_buffers(dtype: str, op: str) -> None:
    rng = np.random.default_rng(7)
    length = (1 << 20) + 3
    inputs = [ref.misaligned_copy(ref.random_values(rng, dtype, length, "normal"), k + 1) for k in range(3)]
    ref.assert_same_bits(
        kernels.reduce(inputs, op, dtype=dtype), ref.reduce_chain(inputs, op, dtype), dtype, op
    )
    if op != "avg":
        expected = ref.reduce_pair(inputs[0], inputs[1], op, dtype)
        kernels.reduce_into(inputs[0], inputs[1], op, dtype=dtype)
        ref.assert_same_bits(inputs[0], expected, dtype, f"reduce_into {op}")


def test_independent_of_the_thread_count() -> None:
    # Buffers this large are split across the kernel threads; the split must not show in the bytes.
    rng = np.random.default_rng(13)
    cases = [("bfloat16", "avg", 4), ("float32", "sum", 3), ("int64", "prod", 2), ("float16", "max", 5)]
    inputs = {
        case: [ref.random_values(rng, case[0], (1 << 19) + 77, "special") for _ in range(case[2])]
        for case in cases
    }
    previous = kernels.threads()
    results: dict[tuple, set[bytes]] = {case: set() for case in cases}
    try:
        for threads in (1, 2, 3, 8):
            kernels.set_threads(threads)
            for (dtype, op, n), arrays in inputs.items():
                results[(dtype, op, n)].add(kernels.reduce(arrays, op, dtype=dtype).tobytes())
                if op != "avg":
                    dst = arrays[0].copy()
                    kernels.reduce_into(dst, arrays[1], op, dtype=dtype)
                    results[(dtype, op, n)].add(b"into" + dst.tobytes())
    finally:
        kernels.set_threads(previous)
    for (dtype, op, n), outputs in results.items():
        assert len(outputs) == (1 if op == "avg" else 2), f"{dtype} {op}: results depend on the thread count"
        chain = np.frombuffer(min(outputs, key=len), ref.storage_dtype(dtype))
        ref.assert_same_bits(
            chain, ref.reduce_chain(inputs[(dtype, op, n)], op, dtype), dtype, f"{dtype} {op}"
        )


# ---------------------------------------------------------------------------------------------
# The portable build computes the same bytes

_CHILD_BODY = """
for key in list(inputs):
    if not key.endswith("/0"):
        continue
    dtype, op, _ = key.split("/")
    chain = [inputs[f"{dtype}/{op}/{k}"] for k in range(3)]
    outputs[f"{dtype}/{op}"] = kernels.reduce(chain, op, dtype=dtype)
    if op != "avg":
        dst = chain[0].copy()
        kernels.reduce_into(dst, chain[1], op, dtype=dtype)
        outputs[f"{dtype}/{op}/into"] = dst
"""


def nan_grid(dtype: str) -> list[np.ndarray]:
    """Three inputs that together hold every ordered triple of NaNs (both signs, several
    payloads) and special values of a float dtype."""
    nans = {
        "float16": [0x7E00, 0xFE00, 0x7C01, 0xFE35],
        "bfloat16": [0x7FC0, 0xFFC0, 0x7F81, 0xFFA3],
        "float32": [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345],
        "float64": [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0xFFF8000000012345],
    }[dtype]
    storage = ref.storage_dtype(dtype)
    nan_values = np.array(nans, f"u{storage.itemsize}").view(storage)
    values = np.concatenate([nan_values, ref.special_values(dtype)[:10]])
    n = values.size
    return [np.repeat(values, n * n), np.tile(np.repeat(values, n), n), np.tile(values, n * n)]


def test_portable_build_computes_identical_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2024)
    inputs = {}
    for dtype in ref.ALL_DTYPES:
        for op in ref.REDUCE_OPS:
            grid = nan_grid(dtype) if dtype in ref.FLOAT_DTYPES else [np.zeros(0, dtype)] * 3
            for k in range(3):
                values = ref.random_values(rng, dtype, 1037, "special" if k else "normal")
                inputs[f"{dtype}/{op}/{k}"] = np.concatenate([values, grid[k]])

    by_isa = ref.run_on_every_isa(_CHILD_BODY, inputs, tmp_path)
    portable = by_isa["baseline"]
    assert len(portable) == 12 * 5 + 12 * 4
    for isa, outputs in by_isa.items():
        assert set(outputs) == set(portable)
        for key, value in outputs.items():
            assert value.tobytes() == portable[key].tobytes(), f"{key}: {isa} and baseline differ"
    for key, value in portable.items():
        dtype, op = key.split("/")[:2]
        chain = [inputs[f"{dtype}/{op}/{k}"] for k in range(3)]
        expected = (
            ref.reduce_pair(chain[0], chain[1], op, dtype)
            if key.endswith("into")
            else ref.reduce_chain(chain, op, dtype)
        )
        ref.assert_same_bits(value, expected, dtype, f"baseline {key}")


# ---------------------------------------------------------------------------------------------
# Errors: a clear InvalidArgumentError (a ValueError), and no output touched


def _f32(n: int = 8) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


def _raises(match: str):
    return pytest.raises(InvalidArgumentError, match=match)


def test_invalid_argument_error_is_a_value_error() -> None:
    assert issubclass(InvalidArgumentError, ValueError)


def test_unknown_dtype_and_op_names() -> None:
    with _raises(r"unsupported dtype 'float8'.*supported: float16"):
        kernels.reduce([_f32()], "sum", dtype="float8")
    with _raises(r"unsupported dtype 'bool'"):
        kernels.reduce([np.ones(3, bool), np.ones(3, bool)])
    with _raises(r"unsupported reduce op 'mean'.*sum, prod, min, max, avg"):
        kernels.reduce([_f32(), _f32()], "mean")
    with _raises(r"unsupported reduce op 'mean'"):
        kernels.reduce_into(_f32(), _f32(), "mean")
    with _raises(r"unsupported dtype 'complex64'"):
        kernels.accumulator_dtype("complex64")


def test_dtype_mismatches() -> None:
    with _raises(r"inputs\[1\]: array has dtype float64, not float32"):
        kernels.reduce([_f32(), np.zeros(8)])
    with _raises(r"src: array has dtype int32, not float32"):
        kernels.reduce_into(_f32(), np.zeros(8, np.int32))
    with _raises(r"bfloat16 data must be 2-byte elements"):
        kernels.reduce([_f32(), _f32()], dtype="bfloat16")
    with _raises(r"out: array has dtype float64, not float32"):
        kernels.reduce([_f32(), _f32()], out=np.zeros(8))


def test_byte_swapped_arrays_are_refused() -> None:
    swapped = _f32().astype(_f32().dtype.newbyteorder())
    with _raises(r"byte order"):
        kernels.reduce([swapped, swapped])
    dst = swapped.copy()
    with _raises(r"byte order"):
        kernels.reduce_into(dst, swapped)
    assert dst.tobytes() == swapped.tobytes()


def test_mismatched_lengths_and_shapes() -> None:
    out = np.full(8, 5.0, np.float32)
    with _raises(r"inputs\[1\] has shape \(9,\), inputs\[0\] has \(8,\)"):
        kernels.reduce([_f32(), _f32(9)], out=out)
    with _raises(r"out has shape \(7,\)"):
        kernels.reduce([_f32(), _f32()], out=np.zeros(7, np.float32))
    with _raises(r"src has shape \(9,\), dst has \(8,\)"):
        kernels.reduce_into(out, _f32(9))
    with _raises(r"src has shape \(4, 2\), dst has \(2, 4\)"):
        kernels.reduce_into(np.zeros((2, 4), np.float32), _f32().reshape(4, 2))
    with _raises(r"reduce needs at least one input"):
        kernels.reduce([])
    acc = kernels.widen(_f32())
    with _raises(r"src has shape \(9,\), acc has \(8,\)"):
        kernels.accumulate(acc, _f32(9))
    with _raises(r"out has shape \(7,\), acc has \(8,\)"):
        kernels.finalize(acc, "float32", out=np.zeros(7, np.float32))
    with _raises(r"acc: array has dtype float64, not float32"):
        kernels.accumulate(np.zeros(8), _f32())
    with _raises(r"acc: array has dtype float32, not int64"):
        kernels.finalize(np.zeros(8, np.float32), "int8", "avg")
    swapped = acc.astype(acc.dtype.newbyteorder())
    with _raises(r"acc: array has non-native byte order"):
        kernels.accumulate(swapped, _f32())
    with _raises(r"acc: array has non-native byte order"):
        kernels.finalize(swapped, "float32")
    assert out.tolist() == [5.0] * 8


def test_read_only_outputs() -> None:
    out = _f32()
    out.flags.writeable = False
    with _raises(r"out: array is read-only"):
        kernels.reduce([_f32(), _f32()], out=out)
    with _raises(r"dst: array is read-only"):
        kernels.reduce_into(out, _f32())
    with _raises(r"dst: array is read-only"):
        kernels.reduce_into(np.frombuffer(bytes(32), np.float32), _f32())
    assert out.tolist() == _f32().tolist()


def test_non_contiguous_arrays() -> None:
    strided = np.arange(16, dtype=np.float32)[::2]
    with _raises(r"inputs\[0\]: array must be C-contiguous"):
        kernels.reduce([strided, strided.copy()])
    dst = np.zeros((4, 2), np.float32, order="F")
    with _raises(r"dst: array must be C-contiguous"):
        kernels.reduce_into(dst, np.ones((4, 2), np.float32, order="F"))
    assert not dst.any()


def test_avg_is_not_pairwise() -> None:
    dst = _f32()
    with _raises(r"avg is not a pairwise operation"):
        kernels.reduce_into(dst, _f32(), "avg")
    with _raises(r"contributions must be an integer in \[1, 9223372036854775807\], got 0"):
        kernels.finalize(kernels.widen(_f32(), "avg"), "float32", "avg", contributions=0)
    assert dst.tolist() == _f32().tolist()


def test_overlapping_buffers() -> None:
    buffer = np.arange(16, dtype=np.float32)
    with _raises(r"dst and src overlap without being the same buffer"):
        kernels.reduce_into(buffer[0:8], buffer[4:12])
    with _raises(r"input 0 overlaps the output without being the same buffer"):
        kernels.reduce([buffer[0:8], _f32()], out=buffer[1:9])
    assert buffer.tolist() == list(range(16))


# ---------------------------------------------------------------------------------------------
# torch CPU tensors


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "int32", "uint8"])
def test_torch_tensors(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    arrays = [ref.random_values(rng, dtype, 1001, "special") for _ in range(3)]
    torch_dtype = getattr(torch, dtype)
    tensors = [
        torch.from_numpy(a.view(np.int16) if dtype == "bfloat16" else a).view(torch_dtype) for a in arrays
    ]

    result = kernels.reduce(tensors, "sum")
    ref.assert_same_bits(result, ref.reduce_chain(arrays, "sum", dtype), dtype, f"torch {dtype} sum")

    expected = ref.reduce_chain(arrays, "max", dtype)
    kernels.reduce(tensors, "max", out=tensors[2])
    got = tensors[2].view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else tensors[2].numpy()
    ref.assert_same_bits(got, expected, dtype, f"torch {dtype} max into an input")

    expected = ref.reduce_pair(arrays[0], arrays[1], "prod", dtype)
    kernels.reduce_into(tensors[0], tensors[1], "prod")
    got = tensors[0].view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else tensors[0].numpy()
    ref.assert_same_bits(got, expected, dtype, f"torch {dtype} reduce_into")


def test_torch_non_contiguous_tensor_is_refused() -> None:
    torch = pytest.importorskip("torch")
    matrix = torch.zeros((4, 4), dtype=torch.bfloat16)
    with _raises(r"C-contiguous"):
        kernels.reduce_into(matrix.t(), torch.ones((4, 4), dtype=torch.bfloat16))
    assert not matrix.any()


def test_flush_to_zero_set_by_the_caller_does_not_change_results() -> None:
    torch = pytest.importorskip("torch")
    tiny = np.full(1 << 21, np.float32(1e-40))  # subnormal; the call is large enough to use the threads
    expected = tiny + tiny  # computed before flush-to-zero is on: 2 * the subnormal, exactly
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals, so there is nothing to guard against")
    try:
        summed = kernels.reduce([tiny, tiny], "sum")
        small = kernels.reduce([tiny[:8], tiny[:8]], "sum")
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(summed.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(small.view(np.uint32), expected[:8].view(np.uint32))


def test_outputs_must_be_arrays_so_results_are_not_lost() -> None:
    src = np.ones(2, np.float32)
    for call in (
        lambda: kernels.reduce_into([1.0, 2.0], src),
        lambda: kernels.reduce([src, src], out=[0.0, 0.0]),
        lambda: kernels.cast(src, "float16", out=[0.0, 0.0]),
    ):
        with pytest.raises(InvalidArgumentError, match="must be a numpy array or a torch CPU tensor, got"):
            call()


def test_streaming_buffers_that_partly_overlap_are_refused() -> None:
    buffer = np.arange(16, dtype=np.float32)
    before = buffer.copy()
    with pytest.raises(InvalidArgumentError, match="accumulate: acc and src overlap"):
        kernels.accumulate(buffer[1:], buffer[:-1])
    with pytest.raises(InvalidArgumentError, match="finalize: out and acc overlap"):
        kernels.finalize(buffer[:8], "float32", out=buffer[4:12])
    assert np.array_equal(buffer, before)


def test_finalize_refuses_a_contribution_count_the_accumulator_cannot_divide_by() -> None:
    acc = kernels.widen(np.full(4, 100, np.int32), "avg")
    for contributions in (2**63, 2**64 - 1, -1):
        with pytest.raises(InvalidArgumentError, match="contributions must be an integer"):
            kernels.finalize(acc, "int32", "avg", contributions)
