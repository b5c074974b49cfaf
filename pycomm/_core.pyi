"""Type stub of pycomm's private native module (csrc/bindings). Use the pycomm package instead."""

from collections.abc import Sequence
from typing import Any

import numpy as np

def build_info() -> dict[str, Any]: ...

class kernels:  # a submodule: pycomm._core.kernels
    HASH_VERSION: int
    HASH_LEAF_BYTES: int
    @staticmethod
    def isa() -> str: ...
    @staticmethod
    def runnable_isas() -> str: ...
    @staticmethod
    def threads() -> int: ...
    @staticmethod
    def set_threads(threads: int) -> None: ...
    @staticmethod
    def accumulator_dtype(dtype: str, op: str) -> str: ...
    @staticmethod
    def reduce_into(dst: np.ndarray, src: np.ndarray, op: str, dtype: str) -> None: ...
    @staticmethod
    def reduce(out: np.ndarray, inputs: Sequence[np.ndarray], op: str, dtype: str) -> None: ...
    @staticmethod
    def widen(acc: np.ndarray, src: np.ndarray, op: str, dtype: str) -> None: ...
    @staticmethod
    def accumulate(acc: np.ndarray, src: np.ndarray, op: str, dtype: str) -> None: ...
    @staticmethod
    def finalize(out: np.ndarray, acc: np.ndarray, op: str, dtype: str, contributions: int) -> None: ...
    @staticmethod
    def quantize(
        src: np.ndarray,
        dtype: str,
        data: np.ndarray,
        scales: np.ndarray,
        zero_points: np.ndarray | None,
        scheme: str,
        block_size: int,
        rounding: str,
        seed: int,
    ) -> None: ...
    @staticmethod
    def dequantize(
        data: np.ndarray,
        scales: np.ndarray,
        zero_points: np.ndarray | None,
        scheme: str,
        block_size: int,
        out: np.ndarray,
        out_dtype: str,
        accumulate: bool,
    ) -> None: ...
    @staticmethod
    def cast(dst: np.ndarray, dst_dtype: str, src: np.ndarray, src_dtype: str) -> None: ...
    @staticmethod
    def hash64(data: Any, seed: int) -> int: ...

class transport:  # a submodule: pycomm._core.transport
    PROTOCOL_VERSION: int
    HEADER_BYTES: int
    DEFAULT_MAX_PAYLOAD: int
    @staticmethod
    def encode_frame(type: int, payload: bytes) -> bytes: ...
    @staticmethod
    def decode_frame(data: bytes, max_payload: int = ...) -> tuple[int, int, bytes]: ...
    @staticmethod
    def decode_header(data: bytes, max_payload: int = ...) -> tuple[int, int, int]: ...
    class Connection:
        open: bool
        drop_reason: str
        max_payload: int
        def send_frame(self, type: int, payload: Any, timeout: float) -> None: ...
        def recv_frame(self, timeout: float) -> tuple[int, int, bytes]: ...
        def fileno(self) -> int: ...
        def close(self) -> None: ...

    class Listener:
        port: int
        def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None: ...
        def accept(
            self, timeout: float, max_payload: int = ..., user_timeout_ms: int = ...
        ) -> transport.Connection: ...
        def close(self) -> None: ...

    @staticmethod
    def connect(
        host: str, port: int, timeout: float, max_payload: int = ..., user_timeout_ms: int = ...
    ) -> transport.Connection: ...

class ft:  # a submodule: pycomm._core.ft, the ring engine of pycomm.ft
    DATA_HEADER_BYTES: int
    @staticmethod
    def decode_data_header(data: bytes) -> dict[str, Any]: ...
    @staticmethod
    def encode_data_header(
        phase: int,
        collective: str,
        dtype: str,
        op: str,
        root: int,
        step: int,
        tag: int,
        sequence: int,
        count: int,
        segment: int,
        length: int,
    ) -> bytes: ...

    class RingOp:
        status: str  # "running", "completed" or "failed"
        has_result: bool
        error: str
        sequence: int
        tag: int
        result_bytes: int
        held_at: float | None  # time.monotonic() when this peer held the whole result
        finished_at: float | None  # time.monotonic() when it completed or failed
        def wait(self, timeout: float) -> str: ...
        def describe(self) -> str: ...
        def copy_result(self, out: np.ndarray) -> None: ...
        def restore_input(self) -> None: ...

    class RingEngine:
        failed: bool
        failure: str
        rank: int
        world: int
        bytes_sent: int
        bytes_received: int
        bytes_sent_per_connection: list[int]
        connections: int
        def __init__(
            self,
            next_fds: list[int],
            prev_fds: list[int],
            rank: int,
            world: int,
            segment_bytes: int = ...,
            max_early_bytes: int = ...,
            spin_microseconds: int = ...,
            shared_memory_names: list[str] = ...,
        ) -> None: ...
        def submit(
            self, collective: str, input: np.ndarray, dtype: str, op: str, count: int, root: int, tag: int
        ) -> ft.RingOp: ...
        def abort(self, reason: str) -> None: ...
        def tag_states(self) -> list[tuple[int, int, int, bool]]: ...

class datatype:  # a submodule: pycomm._core.datatype, the type IR and CPU pack/unpack
    DEFAULT_DISTRIBUTION_ARGUMENT: int

    class Type:
        combiner: str
        name: str
        element_kind: str
        size: int
        lb: int
        ub: int
        extent: int
        true_lb: int
        true_extent: int
        alignment: int
        depth: int
        integers: list[int]
        children: list[datatype.Type]
        def commit(self) -> None: ...
        def strided(self) -> dict[str, Any] | None: ...
        def describe_layout(self) -> str: ...
        def layout_stats(self) -> dict[str, Any]: ...
        def flat_table(self, count: int = 1, max_rows: int = ...) -> np.ndarray: ...
        def span(self, count: int = 1) -> tuple[int, int]: ...

    @staticmethod
    def named(name: str, size: int, alignment: int, kind: str) -> datatype.Type: ...
    @staticmethod
    def named_pair(name: str, value: datatype.Type, index: datatype.Type) -> datatype.Type: ...
    @staticmethod
    def named_type_names() -> list[str]: ...
    @staticmethod
    def address(type: datatype.Type) -> int: ...
    @staticmethod
    def install_fast_path(
        pack: Any, unpack: Any, attribute: str, pack_doc: str, unpack_doc: str
    ) -> tuple[Any, Any]: ...
    @staticmethod
    def named_type(name: str) -> datatype.Type: ...
    @staticmethod
    def contiguous(count: int, old: datatype.Type) -> datatype.Type: ...
    @staticmethod
    def vector(count: int, blocklength: int, stride: int, old: datatype.Type) -> datatype.Type: ...
    @staticmethod
    def hvector(count: int, blocklength: int, stride: int, old: datatype.Type) -> datatype.Type: ...
    @staticmethod
    def indexed(
        blocklengths: Sequence[int], displacements: Sequence[int], old: datatype.Type
    ) -> datatype.Type: ...
    @staticmethod
    def hindexed(
        blocklengths: Sequence[int], displacements: Sequence[int], old: datatype.Type
    ) -> datatype.Type: ...
    @staticmethod
    def indexed_block(
        blocklength: int, displacements: Sequence[int], old: datatype.Type
    ) -> datatype.Type: ...
    @staticmethod
    def hindexed_block(
        blocklength: int, displacements: Sequence[int], old: datatype.Type
    ) -> datatype.Type: ...
    @staticmethod
    def struct(
        blocklengths: Sequence[int], displacements: Sequence[int], types: Sequence[datatype.Type]
    ) -> datatype.Type: ...
    @staticmethod
    def subarray(
        sizes: Sequence[int], subsizes: Sequence[int], starts: Sequence[int], order: str, old: datatype.Type
    ) -> datatype.Type: ...
    @staticmethod
    def darray(
        size: int,
        rank: int,
        global_sizes: Sequence[int],
        distributions: Sequence[str],
        arguments: Sequence[int],
        process_grid: Sequence[int],
        order: str,
        old: datatype.Type,
    ) -> datatype.Type: ...
    @staticmethod
    def resized(lb: int, extent: int, old: datatype.Type) -> datatype.Type: ...
    @staticmethod
    def dup(old: datatype.Type) -> datatype.Type: ...
    @staticmethod
    def pack(
        type: datatype.Type,
        source: Any,
        count: int,
        out: Any,
        origin_offset: int = 0,
        first: int = 0,
        max_bytes: int = -1,
    ) -> int: ...
    @staticmethod
    def unpack(
        type: datatype.Type,
        packed: Any,
        target: Any,
        count: int,
        origin_offset: int = 0,
        first: int = 0,
        max_bytes: int = -1,
    ) -> int: ...
