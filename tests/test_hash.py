"""pycomm's content hash (pycomm.kernels.hash64).

Pinned known answers, so that any change of the algorithm fails here (the hash is versioned by
HASH_VERSION: a deliberate change bumps the version and these values together); agreement with the
independent numpy implementation in _reference.py; the same value in fresh processes, with the
portable kernels and with one thread; sensitivity to every bit, to the order of stripes and leaves
and to the length; and every bytes-like input hashing as its bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pycomm
import pycomm.kernels as kernels
from pycomm._native import core
from pycomm.errors import InvalidArgumentError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference as ref


def pattern(n: int) -> bytes:
    """A fixed, non-repeating-looking byte pattern of length n."""
    return ((np.arange(n, dtype=np.int64) * 131 + 7) % 251).astype(np.uint8).tobytes()


# Computed once from the implementation of HASH_VERSION 1. If one of these fails, the algorithm
# changed: every stored digest and every peer running an older pycomm now disagrees. Change them
# only together with a new HASH_VERSION.
KNOWN_ANSWERS = [
    (b"", 0, 0xEF46DB3751D8E999),
    (b"a", 0, 0xBCDB81E28D5BC1A4),
    (b"a", 1, 0x22EE2D6448F15AF4),
    (b"", 2**64 - 1, 0x298F4C84B24F5380),
    (pattern(64), 0, 0xCB199D35D572ADDF),
    (pattern(4095), 0, 0xEA077AF35C8C8377),
    (pattern(4096), 0, 0x6AD3C5ED97F6F762),
    (pattern(4097), 0, 0xFF8C54F458EA7A86),
    (pattern(10000), 0, 0x2BAC0995D3189C32),
    (pattern(10000), 0x0123456789ABCDEF, 0xE203F0447EAC6E79),
    (pattern(3 * 2**20 + 5), 0, 0xF30F9E48085FB577),  # large enough to be hashed by several threads
]


def test_hash_version() -> None:
    assert kernels.HASH_VERSION == 1  # the version KNOWN_ANSWERS belong to
    assert core.kernels.HASH_LEAF_BYTES == ref.HASH_LEAF_BYTES


@pytest.mark.parametrize(
    ("data", "seed", "digest"),
    KNOWN_ANSWERS,
    ids=[f"{len(d)}-bytes-seed-{s:#x}" for d, s, _ in KNOWN_ANSWERS],
)
def test_known_answers(data: bytes, seed: int, digest: int) -> None:
    assert kernels.hash64(data, seed) == digest
    assert ref.hash64(data, seed) == digest


@settings(max_examples=150, deadline=None)
@given(
    length=st.one_of(
        st.integers(0, 200), st.integers(200, 20000), st.sampled_from([4095, 4096, 4097, 8192, 8193])
    ),
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 7),
    data_seed=st.integers(0, 2**32 - 1),
)
def test_matches_the_reference(length: int, seed: int, offset: int, data_seed: int) -> None:
    data = np.random.default_rng(data_seed).integers(0, 256, length, dtype=np.uint8)
    misaligned = ref.misaligned_copy(data, offset)
    assert kernels.hash64(misaligned, seed) == ref.hash64(data.tobytes(), seed)


# ---------------------------------------------------------------------------------------------
# Stability across processes, instruction sets and thread counts

_CHILD_BODY = """
outputs["digests"] = np.array(
    [kernels.hash64(inputs[f"data{i}"], int(seed)) for i, seed in enumerate(inputs["seeds"])], np.uint64
)
"""


def test_stable_across_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(41)
    lengths = [0, 1, 63, 64, 65, 4095, 4096, 4097, 10000, 3 * 2**20 + 17]
    inputs = {f"data{i}": rng.integers(0, 256, n, dtype=np.uint8) for i, n in enumerate(lengths)}
    inputs["seeds"] = rng.integers(0, 2**63, len(lengths), dtype=np.uint64)
    here = np.array(
        [kernels.hash64(inputs[f"data{i}"], int(seed)) for i, seed in enumerate(inputs["seeds"])], np.uint64
    )

    runs = {
        "fresh process": ref.run_kernels_elsewhere(_CHILD_BODY, inputs, tmp_path / "a")[1],
        "another fresh process": ref.run_kernels_elsewhere(_CHILD_BODY, inputs, tmp_path / "b")[1],
    }
    for isa, outputs in ref.run_on_every_isa(_CHILD_BODY, inputs, tmp_path / "isa").items():
        runs[f"{isa} kernels"] = outputs
    for name, outputs in runs.items():
        assert outputs["digests"].tolist() == here.tolist(), name
    assert len(set(here.tolist())) == len(lengths)


def test_independent_of_the_thread_count() -> None:
    data = np.random.default_rng(43).integers(0, 256, 5 * 2**20 + 3, dtype=np.uint8)
    previous = kernels.threads()
    try:
        digests = set()
        for threads in (1, 2, 3, 8):
            kernels.set_threads(threads)
            digests.add(kernels.hash64(data, 9))
    finally:
        kernels.set_threads(previous)
    assert digests == {ref.hash64(data.tobytes(), 9)}


# ---------------------------------------------------------------------------------------------
# Sensitivity


def test_every_single_bit_flip_changes_the_hash() -> None:
    buffer = bytearray(np.random.default_rng(47).integers(0, 256, 10 * 1024, dtype=np.uint8).tobytes())
    original = kernels.hash64(buffer)
    digests = set()
    for position in range(len(buffer)):
        byte = buffer[position]
        for bit in range(8):
            buffer[position] = byte ^ (1 << bit)
            digests.add(kernels.hash64(buffer))
        buffer[position] = byte
    assert kernels.hash64(buffer) == original
    assert original not in digests
    assert len(digests) == 8 * len(buffer)  # and no two flips collide


def test_order_of_stripes_and_leaves_matters() -> None:
    data = np.random.default_rng(53).integers(0, 256, 3 * 4096 + 100, dtype=np.uint8)
    original = kernels.hash64(data)
    for first, second in [(0, 1), (0, 7), (3, 64), (10, 100), (0, 192)]:  # 64-byte stripe indices
        swapped = data.copy().reshape(-1)
        a, b = slice(64 * first, 64 * first + 64), slice(64 * second, 64 * second + 64)
        swapped[a], swapped[b] = data[b], data[a]
        assert kernels.hash64(swapped) != original, (first, second)
    leaves = data.copy()
    leaves[:4096], leaves[4096:8192] = data[4096:8192], data[:4096]
    assert kernels.hash64(leaves) != original
    # Lanes too: swapping two 8-byte words inside one stripe.
    words = data.copy()
    words[0:8], words[8:16] = data[8:16], data[0:8]
    assert kernels.hash64(words) != original


def test_length_matters() -> None:
    data = pattern(5000)
    assert kernels.hash64(data + b"\0") != kernels.hash64(data)
    assert kernels.hash64(data[:-1]) != kernels.hash64(data)
    zero_runs = {kernels.hash64(bytes(n)) for n in range(0, 9000, 7)} | {
        kernels.hash64(bytes(n)) for n in range(4090, 4200)
    }
    assert len(zero_runs) == len(range(0, 9000, 7)) + len(range(4090, 4200)) - len(
        set(range(0, 9000, 7)) & set(range(4090, 4200))
    )


def test_seed_matters() -> None:
    data = pattern(300)
    assert len({kernels.hash64(data, seed) for seed in range(200)} | {kernels.hash64(data, 2**64 - 1)}) == 201


# ---------------------------------------------------------------------------------------------
# Inputs


def test_bytes_like_inputs_hash_as_their_bytes() -> None:
    raw = pattern(1000)
    expected = kernels.hash64(raw, 5)
    assert kernels.hash64(bytearray(raw), 5) == expected
    assert kernels.hash64(memoryview(raw), 5) == expected
    assert kernels.hash64(memoryview(raw).cast("I"), 5) == expected
    assert kernels.hash64(np.frombuffer(raw, np.uint8), 5) == expected
    assert kernels.hash64(np.frombuffer(raw, np.uint8).reshape(10, 100), 5) == expected
    for dtype in (
        "int16",
        "float32",
        "float64",
        "complex128",
        "<u4",
        ">u4",
        "V8",
        [("a", "u1"), ("b", "<i2")],
    ):
        array = np.frombuffer(raw, np.dtype(dtype), len(raw) // np.dtype(dtype).itemsize)
        assert kernels.hash64(array, 5) == kernels.hash64(raw[: array.nbytes], 5), dtype
    misaligned = ref.misaligned_copy(np.frombuffer(raw, np.uint8), 3).view(np.uint8)
    assert kernels.hash64(misaligned, 5) == expected
    assert kernels.hash64(np.float64(1.5)) == kernels.hash64(np.float64(1.5).tobytes())
    assert kernels.hash64(np.zeros((0, 3), np.float32)) == kernels.hash64(b"")


def test_torch_tensors_hash_as_their_bytes() -> None:
    torch = pytest.importorskip("torch")
    values = torch.arange(1000, dtype=torch.float32)
    assert kernels.hash64(values) == kernels.hash64(values.numpy().tobytes())
    halves = values.to(torch.bfloat16)
    assert kernels.hash64(halves) == kernels.hash64(halves.view(torch.int16).numpy().tobytes())
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        kernels.hash64(values.reshape(10, 100).t())


def test_non_contiguous_input_is_refused() -> None:
    array = np.arange(64, dtype=np.uint8)
    with pytest.raises(InvalidArgumentError, match=r"data: buffer must be C-contiguous"):
        kernels.hash64(array[::2])
    with pytest.raises(InvalidArgumentError, match=r"data: buffer must be C-contiguous"):
        kernels.hash64(np.asfortranarray(array.reshape(8, 8)))
    with pytest.raises(InvalidArgumentError, match=r"data: buffer must be C-contiguous"):
        kernels.hash64(memoryview(bytes(64))[::2])


def test_bad_arguments() -> None:
    for seed in (-1, 2**64):
        with pytest.raises(InvalidArgumentError, match=r"seed must be an integer in \[0, "):
            kernels.hash64(b"abc", seed)
    with pytest.raises(InvalidArgumentError, match="hash64 takes a buffer"):
        kernels.hash64("text is not bytes")


class _FakeDeviceArray:
    """Says it lives on a GPU (``__cuda_array_interface__``) without any GPU behind it."""

    def __init__(self, strides: tuple[int, ...] | None) -> None:
        self.__cuda_array_interface__ = {
            "shape": (4, 4),
            "typestr": "<f4",
            "data": (0x10000, False),
            "strides": strides,
            "version": 3,
            "stream": 1,
        }


def test_gpu_arrays_are_checked_and_need_a_usable_device() -> None:
    with pytest.raises(InvalidArgumentError, match="GPU array must be C-contiguous"):
        kernels.hash64(_FakeDeviceArray(strides=(4, 16)))
    has_device = pycomm.info()["cuda"].get("devices", 0) > 0
    if has_device:
        pytest.skip("a real GPU is present: the fake pointer would be looked up on it")
    with pytest.raises(pycomm.NotSupportedError):
        kernels.hash64(_FakeDeviceArray(strides=None))


def test_gpu_hash_equals_the_cpu_hash_on_a_real_device() -> None:
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install 'pycomm[cuda]')")
    if pycomm.info()["cuda"].get("devices", 0) == 0:
        pytest.skip("no usable CUDA device on this machine")
    rng = np.random.default_rng(47)
    for length in (0, 1, 63, 4095, 4096, 4097, 3 * 2**20 + 17):
        host = rng.integers(0, 256, length, dtype=np.uint8)
        device = cupy.asarray(host)
        assert kernels.hash64(device, 5) == kernels.hash64(host, 5), length
        # Misaligned device pointers take the byte-load path.
        if length > 8:
            assert kernels.hash64(device[3:], 5) == kernels.hash64(host[3:], 5), length
