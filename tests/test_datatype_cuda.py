"""GPU pack/unpack of datatypes, the send model and the send helpers.

The GPU tests compare the kernels' bytes with a numpy packer that walks the flat table exactly as its
definition says (rows in order, loops outermost first, ``block`` bytes per iteration); they skip,
saying why, without cupy or a usable GPU. The send-model tests and the table checks run everywhere
(the latter wherever the CUDA part is built); none asserts a timing.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import pycomm
from pycomm.datatype import send_model
from pycomm.errors import InvalidArgumentError, NotSupportedError

CUDA_BUILT = bool(pycomm.info()["build"]["cuda"])


# --- flat tables and the numpy reference ---------------------------------------------------------------
def table(rows: list[tuple[int, int, list[tuple[int, int]]]]) -> np.ndarray:
    """A flat table from (offset, block, [(count, stride), ...] outermost first) rows, packed offsets
    filled in and dims padded on the outer side with (1, 0)."""
    dims = max(1, max(len(r[2]) for r in rows))
    result, packed = [], 0
    for offset, block, loops in rows:
        padded = [(1, 0)] * (dims - len(loops)) + list(loops)
        result.append([packed, offset, block, *[v for loop in padded for v in loop]])
        packed += block * int(np.prod([c for c, _ in loops], dtype=np.int64))
    return np.array(result, dtype=np.int64).reshape(len(rows), 3 + 2 * dims)


def instance_offsets(row: np.ndarray) -> np.ndarray:
    offsets = np.array([row[1]], dtype=np.int64)
    for count, stride in row[3:].reshape(-1, 2):
        offsets = (offsets[:, None] + np.arange(count, dtype=np.int64) * stride).reshape(-1)
    return offsets


def reference_pack(flat: np.ndarray, memory: np.ndarray, origin: int) -> np.ndarray:
    pieces = []
    for row in flat:
        block = int(row[2])
        index = origin + instance_offsets(row)[:, None] + np.arange(block, dtype=np.int64)
        pieces.append(memory[index].reshape(-1))
    return np.concatenate(pieces) if pieces else np.empty(0, np.uint8)


def touched_mask(flat: np.ndarray, size: int, origin: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    for row in flat:
        index = origin + instance_offsets(row)[:, None] + np.arange(int(row[2]), dtype=np.int64)
        mask[index.reshape(-1)] = True
    return mask


class TableType:
    """Stands in for a pycomm.datatype.Type: all the GPU path asks of one is its flat table."""

    def __init__(self, flat: np.ndarray) -> None:
        self._flat = flat
        self._native = self

    def flat_table(self, count: int = 1, max_rows: int = 1 << 22) -> np.ndarray:
        assert count == 1, "test tables already hold their objects"
        return self._flat


def vector_rows(objects: int, blocks: int, block: int, stride: int, extent: int, offset: int = 0) -> Any:
    return [(offset, block, [(objects, extent), (blocks, stride)])]


def cube_face_rows(n: int, axis: int, index: int) -> Any:
    """The face ``index`` of an n x n x n float32 cube (C order), normal to ``axis``."""
    row, plane = n * 4, n * n * 4
    if axis == 0:
        return [(index * plane, plane, [])]
    if axis == 1:
        return [(index * row, row, [(n, plane)])]
    return [(index * 4, 4, [(n, plane), (n, row)])]


def struct_rows(objects: int, extent: int) -> Any:
    """An indexed/struct-like object of three pieces of different sizes, repeated ``objects`` times."""
    rows = []
    for k in range(objects):
        base = k * extent
        rows += [(base + 0, 8, []), (base + 24, 3, [(5, 16)]), (base + 120, 32, [(2, 48)])]
    return rows


# --- send model (no GPU needed) --------------------------------------------------------------------------
def test_default_model_picks_an_available_method() -> None:
    model = send_model.default_model()
    assert model.source == "defaults"
    for packed in (64, 4096, 1 << 20, 1 << 28, 1 << 33):
        for block in (1, 8, 512, 1 << 16):
            host_only = model.choose(packed, block, send_model.available_methods(cuda_aware=False))
            assert host_only in ("one_shot", "staged")
            assert model.choose(packed, block, send_model.METHODS) in send_model.METHODS
            assert all(model.predict(m, packed, block) > 0 for m in send_model.METHODS)


def test_model_interpolates_in_log_space_and_holds_its_ends() -> None:
    grid = {m: [[1e-6, 4e-6], [2e-6, 8e-6]] for m in ("one_shot", "staged")}
    model = send_model.SendModel(sizes=[1024, 4096], blocks=[4, 64], seconds=grid, source="measured")
    assert model.predict("one_shot", 1024, 4) == pytest.approx(1e-6)
    assert model.predict("one_shot", 2048, 4) == pytest.approx(2e-6)  # halfway in log(size): geometric mean
    assert model.predict("one_shot", 2048, 16) == pytest.approx(2e-6 * np.sqrt(2))
    assert model.predict("one_shot", 16, 1) == pytest.approx(1e-6)  # below the grid: held
    assert model.predict("one_shot", 8192, 64) == pytest.approx(16e-6)  # past it: in proportion to the bytes
    with pytest.raises(InvalidArgumentError, match="no times for method 'device'"):
        model.predict("device", 1024, 4)


def test_model_rejects_malformed_grids() -> None:
    with pytest.raises(InvalidArgumentError, match="expected 2 rows of 2 times"):
        send_model.SendModel(sizes=[1, 2], blocks=[1, 2], seconds={"staged": [[1.0, 1.0]]})
    with pytest.raises(InvalidArgumentError, match="unknown send method"):
        send_model.SendModel(sizes=[1], blocks=[1], seconds={"carrier_pigeon": [[1.0]]})
    with pytest.raises(InvalidArgumentError, match="ascending"):
        send_model.SendModel(sizes=[2, 1], blocks=[1], seconds={})


def test_model_cache_round_trips(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCOMM_CACHE_DIR", str(tmp_path))
    path = send_model.cache_path()
    assert path == tmp_path / "send_model.json"
    assert send_model.load_model("GPU A | driver 1").source == "defaults"  # nothing cached yet
    measured = send_model.SendModel(
        sizes=[4096, 65536],
        blocks=[8, 512],
        seconds={m: [[1e-5, 2e-5], [3e-5, 4e-5]] for m in send_model.METHODS},
        source="measured",
        device="GPU A | driver 1",
    )
    send_model.save_model(measured, "GPU A | driver 1")
    send_model.save_model(send_model.default_model(), "GPU B | driver 2")
    assert send_model.load_model("GPU A | driver 1") == measured  # the other key did not overwrite it
    assert send_model.load_model("GPU B | driver 2") == send_model.default_model()
    assert set(json.loads(path.read_text())["models"]) == {"GPU A | driver 1", "GPU B | driver 2"}
    path.write_text("{ not json")
    assert send_model.load_model("GPU A | driver 1").source == "defaults"


def test_forced_method_and_cuda_awareness_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCOMM_CUDA_AWARE_MPI", "0")
    assert not send_model.cuda_aware_mpi()
    assert send_model.choose_method(1 << 20, 64) in ("one_shot", "staged")
    monkeypatch.setenv("PYCOMM_SEND_METHOD", "device")
    with pytest.raises(InvalidArgumentError, match="not available here"):
        send_model.choose_method(1 << 20, 64)
    monkeypatch.setenv("PYCOMM_CUDA_AWARE_MPI", "1")
    assert send_model.choose_method(1 << 20, 64) == "device"


# --- GPU buffers recognised without a GPU --------------------------------------------------------------
def test_gpu_buffers_are_recognised_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from pycomm.datatype import _gpu

    fake = SimpleNamespace(
        __cuda_array_interface__={"shape": (4, 8), "typestr": "<f4", "data": (1 << 20, False), "version": 3}
    )
    assert _gpu.is_gpu_buffer(fake)
    assert not _gpu.is_gpu_buffer(np.zeros(4))
    described = _gpu._gpu_buffer(fake, "buffer", None)
    assert (described.pointer, described.nbytes, described.stream) == (1 << 20, 128, None)
    strided = {"shape": (4, 8), "typestr": "<f4", "data": (1 << 20, False), "strides": (64, 4), "version": 3}
    with pytest.raises(InvalidArgumentError, match="must be contiguous"):
        _gpu._gpu_buffer(SimpleNamespace(__cuda_array_interface__=strided), "buffer", None)
    with pytest.raises(InvalidArgumentError, match="count must be >= 0"):
        _gpu.pack_gpu(fake, TableType(table([(0, 4, [])])), -1)


def test_dlpack_capsules_are_read_in_place() -> None:
    from pycomm.datatype import _gpu

    array = np.arange(24, dtype=np.int32).reshape(4, 6)
    cpu = 1  # kDLCPU: lets a host array exercise the capsule reader
    view = _gpu._from_dlpack(array, None, "buffer", (cpu,))
    assert (view.pointer, view.nbytes) == (array.ctypes.data, array.nbytes)
    with pytest.raises(InvalidArgumentError, match="must be contiguous"):
        _gpu._from_dlpack(array[:, ::2], None, "buffer", (cpu,))
    with pytest.raises(InvalidArgumentError, match="is not GPU memory"):
        _gpu._from_dlpack(array, None, "buffer", _gpu._DLPACK_GPU_DEVICES)


# --- the plan's view of a table (CUDA part built; no GPU needed) ---------------------------------------
needs_cuda_build = pytest.mark.skipif(
    not CUDA_BUILT, reason="this build has no CUDA part (no nvcc at build time)"
)


@needs_cuda_build
def test_plan_reads_what_a_table_touches_and_guarantees() -> None:
    from pycomm import _cuda

    plan = _cuda.PackPlan(table(vector_rows(3, 4, 16, 64, 1024, offset=32)))
    assert (plan.packed_bytes, plan.rows, plan.dims) == (3 * 4 * 16, 1, 2)
    assert plan.span == (32, 32 + 2 * 1024 + 3 * 64 + 16)
    assert (plan.table_alignment, plan.smallest_block) == (16, 16)
    assert plan.vector_width(0x1000, 0x2000) == 16
    assert plan.vector_width(0x1004, 0x2000) == 4  # the real address decides
    assert plan.vector_width(0x1000, 0x2001) == 1
    negative = _cuda.PackPlan(table([(300, 8, [(4, -100)])]))
    assert negative.span == (0, 308)
    odd = _cuda.PackPlan(table(struct_rows(2, 200)))
    assert (odd.rows, odd.table_alignment, odd.smallest_block) == (6, 1, 3)


@needs_cuda_build
def test_plan_rejects_what_is_not_a_flat_table() -> None:
    from pycomm import _cuda

    bad_order = table([(0, 8, []), (64, 8, [])])
    bad_order[1, 0] = 16
    with pytest.raises(InvalidArgumentError, match="packed offset 16 but the rows before it pack 8"):
        _cuda.PackPlan(bad_order)
    with pytest.raises(InvalidArgumentError, match="negative count"):
        _cuda.PackPlan(np.array([[0, 0, 4, -2, 8]], dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match="3 \\+ 2 \\* dims"):
        _cuda.PackPlan(np.zeros((1, 4), dtype=np.int64))


def test_reference_packer_agrees_with_the_cpu_engine() -> None:
    """The tables the engine emits, walked by the numpy reference, give the CPU engine's bytes: the
    reference the GPU tests trust reads the table as the engine means it."""
    datatype = pytest.importorskip("pycomm.datatype")
    if not hasattr(datatype, "vector") or not hasattr(datatype, "pack"):
        pytest.skip("pycomm.datatype has no pack yet")
    float32 = datatype.FLOAT
    types = [
        datatype.vector(5, 3, 7, float32),
        datatype.subarray([6, 5, 4], [2, 5, 1], [3, 0, 2], float32),
        datatype.indexed([2, 1, 3], [0, 5, 9], float32),
        datatype.struct([1, 2], [0, 12], [datatype.DOUBLE, datatype.INT]),
        datatype.hvector(3, 2, -40, float32),
    ]
    for t in (t.commit() for t in types):
        for count in (1, 3):
            flat = t._native.flat_table(count)
            begin, end = t._native.span(count)
            origin = max(0, -begin)
            memory = np.random.default_rng(count).integers(0, 256, size=origin + end, dtype=np.uint8)
            expected = np.asarray(datatype.pack(memory, t, count, offset=origin))
            np.testing.assert_array_equal(reference_pack(flat, memory, origin), expected)


# --- GPU ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cupy() -> Any:
    module = pytest.importorskip("cupy", reason="cupy is not installed (pip install 'pycomm[cuda]')")
    if not CUDA_BUILT:
        pytest.skip("this build has no CUDA part (no nvcc at build time)")
    if pycomm.info()["cuda"].get("devices", 0) == 0:
        pytest.skip(f"no usable CUDA device: {pycomm.info()['cuda'].get('reason')}")
    return module


def check_round_trip(cupy: Any, flat: np.ndarray, origin: int = 0, slack: int = 0) -> None:
    """Packs on the GPU and compares with the reference, then unpacks into a zeroed buffer and checks
    that exactly the touched bytes came back."""
    from pycomm.datatype import _gpu

    begin, end = _gpu_span(flat)
    size = origin + end + slack
    assert origin + begin >= 0
    rng = np.random.default_rng(size)
    host = rng.integers(0, 256, size=size, dtype=np.uint8)
    device = cupy.asarray(host)
    t = TableType(flat)
    packed = _gpu.pack_gpu(device, t, 1, offset=origin)
    expected = reference_pack(flat, host, origin)
    np.testing.assert_array_equal(cupy.asnumpy(packed), expected)
    target = cupy.zeros(size, dtype=cupy.uint8)
    assert _gpu.unpack_gpu(packed, target, t, 1, offset=origin) == expected.size
    mask = touched_mask(flat, size, origin)
    np.testing.assert_array_equal(cupy.asnumpy(target), np.where(mask, host, 0))


def _gpu_span(flat: np.ndarray) -> tuple[int, int]:
    begin, end = None, None
    for row in flat:
        offsets = instance_offsets(row)
        low, high = int(offsets.min()), int(offsets.max()) + int(row[2])
        begin = low if begin is None else min(begin, low)
        end = high if end is None else max(end, high)
    return int(begin or 0), int(end or 0)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 8, 12, 16, 24, 64, 100, 128, 256, 512])
def test_vectors_of_every_block_size(cupy: Any, block: int) -> None:
    check_round_trip(cupy, table(vector_rows(3, 37, block, 512, 37 * 512)))


def test_large_blocks_are_split_across_the_grid(cupy: Any) -> None:
    check_round_trip(cupy, table(vector_rows(2, 3, 40_000, 50_000, 150_016)))
    check_round_trip(cupy, table([(0, 5 << 20, [])]))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_faces_of_a_cube(cupy: Any, axis: int) -> None:
    check_round_trip(cupy, table(cube_face_rows(64, axis, 5)))


def test_multi_row_tables(cupy: Any) -> None:
    check_round_trip(cupy, table(struct_rows(50, 256)))
    four_dims = [(16, 16, [(3, 4096), (4, 1024), (5, 128), (2, 48)]), (8, 8, [(7, 24)])]
    check_round_trip(cupy, table(four_dims))
    deep = [(0, 16, [(2, 8192), (2, 4096), (2, 2048), (2, 1024), (2, 512), (2, 256), (2, 64)])]
    check_round_trip(cupy, table(deep))  # more loops than a kernel argument holds: read from the device


@pytest.mark.parametrize("origin", [1, 2, 4, 8, 12])
def test_misaligned_origins_fall_back_to_narrower_words(cupy: Any, origin: int) -> None:
    from pycomm import _cuda

    flat = table(vector_rows(2, 20, 64, 128, 2560))
    plan = _cuda.PackPlan(flat)
    assert plan.vector_width(0x10000 + origin, 0x20000) == min(16, origin & -origin)
    check_round_trip(cupy, flat, origin=origin, slack=7)


def test_negative_and_zero_strides(cupy: Any) -> None:
    check_round_trip(cupy, table([(31 * 96, 24, [(32, -96)])]))
    check_round_trip(cupy, table([(4000, 8, [(3, -1000), (10, 40)])]))
    from pycomm.datatype import _gpu

    memory = np.arange(64, dtype=np.uint8)
    repeated = table([(16, 8, [(4, 0)])])  # the same block four times: pack only
    packed = _gpu.pack_gpu(cupy.asarray(memory), TableType(repeated), 1)
    np.testing.assert_array_equal(cupy.asnumpy(packed), np.tile(memory[16:24], 4))


def test_more_objects_than_a_grid_dimension_holds(cupy: Any) -> None:
    objects = 70_001  # past 65535: the grid size is not the object count
    check_round_trip(cupy, table(vector_rows(objects, 2, 4, 8, 24)))
    check_round_trip(cupy, table([(0, 1, [(objects, 3)])]))


def test_buffers_that_are_too_small_or_wrong(cupy: Any) -> None:
    from pycomm.datatype import _gpu

    t = TableType(table(vector_rows(2, 4, 8, 16, 64)))
    with pytest.raises(InvalidArgumentError, match="buffer is too small"):
        _gpu.pack_gpu(cupy.zeros(100, dtype=cupy.uint8), t, 1)
    with pytest.raises(InvalidArgumentError, match="out is too small"):
        _gpu.pack_gpu(cupy.zeros(128, dtype=cupy.uint8), t, 1, cupy.zeros(63, dtype=cupy.uint8))
    with pytest.raises(InvalidArgumentError, match="packed holds 10 bytes"):
        _gpu.unpack_gpu(cupy.zeros(10, dtype=cupy.uint8), cupy.zeros(128, dtype=cupy.uint8), t, 1)
    with pytest.raises(InvalidArgumentError, match="must be contiguous"):
        _gpu.pack_gpu(cupy.zeros((128, 2), dtype=cupy.uint8)[:, 0], t, 1)
    with pytest.raises(InvalidArgumentError, match="not GPU memory"):
        _gpu.pack_gpu(
            cupy.zeros(128, dtype=cupy.uint8),
            t,
            1,
            SimpleNamespace(
                __cuda_array_interface__={
                    "shape": (64,),
                    "typestr": "|u1",
                    "data": (np.zeros(64).ctypes.data, False),
                    "version": 3,
                }
            ),
        )


def test_buffers_on_different_gpus_are_refused(cupy: Any) -> None:
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    from pycomm.datatype import _gpu

    t = TableType(table(vector_rows(2, 4, 8, 16, 64)))
    with cupy.cuda.Device(1):
        out = cupy.zeros(64, dtype=cupy.uint8)
    with pytest.raises(InvalidArgumentError, match="same device"):
        _gpu.pack_gpu(cupy.zeros(128, dtype=cupy.uint8), t, 1, out)


def test_dlpack_only_buffers(cupy: Any) -> None:
    from pycomm.datatype import _gpu

    class DLPackOnly:
        def __init__(self, array: Any) -> None:
            self.array = array

        def __dlpack__(self, stream: Any = None) -> Any:
            return self.array.__dlpack__(stream=stream)

        def __dlpack_device__(self) -> Any:
            return self.array.__dlpack_device__()

    flat = table(vector_rows(4, 8, 16, 48, 400))
    host = np.random.default_rng(3).integers(0, 256, size=1600, dtype=np.uint8)
    source = DLPackOnly(cupy.asarray(host))
    assert _gpu.is_gpu_buffer(source)
    packed = _gpu.pack_gpu(source, TableType(flat), 1)
    np.testing.assert_array_equal(cupy.asnumpy(packed), reference_pack(flat, host, 0))


def test_one_shot_into_mapped_host_memory(cupy: Any) -> None:
    from pycomm import _cuda
    from pycomm.datatype import _gpu

    flat = table(vector_rows(3, 10, 32, 96, 1024))
    host = np.random.default_rng(5).integers(0, 256, size=3072, dtype=np.uint8)
    pinned = _cuda.PinnedHostBuffer(960)
    nbytes, stream = _gpu.pack_to_address(cupy.asarray(host), TableType(flat), 1, pinned.device_pointer, 960)
    _cuda.synchronize(stream)
    np.testing.assert_array_equal(np.frombuffer(pinned, np.uint8, nbytes), reference_pack(flat, host, 0))
    target = cupy.zeros(3072, dtype=cupy.uint8)
    _cuda.synchronize(_gpu.unpack_from_address(pinned.device_pointer, nbytes, target, TableType(flat), 1))
    np.testing.assert_array_equal(cupy.asnumpy(target), np.where(touched_mask(flat, 3072, 0), host, 0))


def test_public_api_on_gpu_matches_the_cpu(cupy: Any) -> None:
    datatype = pytest.importorskip("pycomm.datatype")
    if not hasattr(datatype, "subarray"):
        pytest.skip("pycomm.datatype has no constructors yet")
    face = datatype.subarray([32, 32, 32], [32, 32, 1], [0, 0, 7], datatype.FLOAT).commit()
    for count in (1, 2):
        memory = np.random.default_rng(count).random(count * 32**3, dtype=np.float32)
        expected = np.asarray(datatype.pack(memory, face, count))
        packed = datatype.pack(cupy.asarray(memory), face, count)
        np.testing.assert_array_equal(cupy.asnumpy(packed).view(np.uint8), expected.view(np.uint8))
        expected_target = np.zeros_like(memory)
        datatype.unpack(expected, expected_target, face, count)
        target = cupy.zeros_like(cupy.asarray(memory))
        datatype.unpack(packed, target, face, count)
        np.testing.assert_array_equal(cupy.asnumpy(target), expected_target)


class FakeComm:
    """Just enough of an mpi4py communicator to carry one message to itself."""

    def __init__(self, cupy: Any) -> None:
        self.cupy = cupy
        self.message: np.ndarray | None = None

    def Send(self, spec: Any, dest: int, tag: int) -> None:
        buffer, _ = spec
        self.message = (
            self.cupy.asnumpy(buffer) if hasattr(buffer, "__cuda_array_interface__") else np.array(buffer)
        )

    def Recv(self, spec: Any, source: int, tag: int, status: Any) -> None:
        buffer, _ = spec
        assert self.message is not None
        status.count = self.message.size
        if hasattr(buffer, "__cuda_array_interface__"):
            buffer[: self.message.size] = self.cupy.asarray(self.message)
        else:
            buffer[: self.message.size] = self.message


@pytest.mark.parametrize("method", ["device", "one_shot", "staged"])
def test_send_and_recv_by_each_method(cupy: Any, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pycomm.datatype import mpi_send

    class Status:
        count = 0

        def Get_count(self, _: Any) -> int:
            return self.count

    monkeypatch.setattr(mpi_send, "_mpi", lambda: SimpleNamespace(BYTE="BYTE", Status=Status))
    monkeypatch.setenv("PYCOMM_CUDA_AWARE_MPI", "1")
    flat = table(vector_rows(5, 16, 24, 64, 1024))
    host = np.random.default_rng(11).integers(0, 256, size=5120, dtype=np.uint8)
    comm = FakeComm(cupy)
    assert mpi_send.send(comm, cupy.asarray(host), TableType(flat), 1, method=method) == method
    np.testing.assert_array_equal(comm.message, reference_pack(flat, host, 0))
    target = cupy.zeros(5120, dtype=cupy.uint8)
    assert mpi_send.recv(comm, target, TableType(flat), 0, method=method) == method
    np.testing.assert_array_equal(cupy.asnumpy(target), np.where(touched_mask(flat, 5120, 0), host, 0))


def test_without_a_gpu_the_gpu_path_says_why() -> None:
    if CUDA_BUILT and pycomm.info()["cuda"].get("devices", 0) > 0:
        pytest.skip("a GPU is present")
    from pycomm.datatype import _gpu

    fake = SimpleNamespace(__cuda_array_interface__={"shape": (8,), "typestr": "|u1", "data": (4096, False)})
    with pytest.raises(NotSupportedError, match="CUDA"):
        _gpu.pack_gpu(fake, TableType(table([(0, 4, [])])), 1)
