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
