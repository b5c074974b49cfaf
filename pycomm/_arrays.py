"""Turns what users pass (numpy arrays, torch CPU tensors, ml_dtypes bfloat16 arrays) into numpy
views the core can read, and names each element type the way the core does.

No copies: a tensor is viewed, never converted. bfloat16 has no numpy type, so bfloat16 data travels
as ``uint16`` bit patterns (or as ml_dtypes' ``bfloat16`` when the caller used it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pycomm.errors import InvalidArgumentError

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
DTYPES = FLOAT_DTYPES + INTEGER_DTYPES


def _torch_to_numpy(tensor: Any, role: str) -> tuple[np.ndarray, str | None]:
    if tensor.device.type != "cpu":
        raise InvalidArgumentError(
            f"{role}: a {tensor.device.type} tensor was given; these kernels take CPU memory"
        )
    name = str(tensor.dtype).removeprefix("torch.")
    if name == "bfloat16":
        import torch

        return tensor.detach().view(torch.int16).numpy().view(np.uint16), "bfloat16"
    return tensor.detach().numpy(), None


# Native-order numpy dtypes of the pycomm dtypes: a dict lookup is far cheaper per call than
# dtype.name, and it also refuses byte-swapped arrays (their dtypes are different keys).
_NAME_OF_DTYPE = {np.dtype(name): name for name in DTYPES if name != "bfloat16"}


def _dtype_name(array: np.ndarray) -> str | None:
    """The pycomm name of a native-order array dtype (ml_dtypes' bfloat16 included), or None."""
    name = _NAME_OF_DTYPE.get(array.dtype)
    if name is None and array.dtype.isnative and array.dtype.name == "bfloat16":
        return "bfloat16"
    return name


def as_array(x: Any, role: str = "x", dtype: str | None = None) -> tuple[np.ndarray, str]:
    """Returns (numpy view of x, pycomm dtype name).

    ``dtype`` overrides the element type where numpy cannot say it (``"bfloat16"`` for uint16 bits).
    """
    declared = None
    if not isinstance(x, np.ndarray):
        if type(x).__module__.split(".")[0] == "torch":
            x, declared = _torch_to_numpy(x, role)
        elif hasattr(x, "__cuda_array_interface__"):
            raise InvalidArgumentError(f"{role}: a CUDA array was given; these kernels take host memory")
        else:
            x = np.asarray(x)
    found = _dtype_name(x)
    name = dtype or declared or found
    if name == found and name is not None:
        return x, name
    if not x.dtype.isnative:
        # The kernels read native-endian elements; a byte-swapped array would be silently misread.
        raise InvalidArgumentError(
            f"{role}: array has non-native byte order (dtype '{x.dtype.str}'); "
            "convert it with .astype(x.dtype.newbyteorder('='))"
        )
    if name not in DTYPES:
        given = x.dtype if dtype is None else dtype
        raise InvalidArgumentError(f"{role}: unsupported dtype '{given}'; supported: {', '.join(DTYPES)}")
    if name != "bfloat16":
        raise InvalidArgumentError(f"{role}: array has dtype {x.dtype}, not {name}")
    if not (x.itemsize == 2 and x.dtype.kind in "uiV"):
        raise InvalidArgumentError(
            f"{role}: bfloat16 data must be 2-byte elements (uint16 bits), got {x.dtype}"
        )
    return x, name


def as_output(x: Any, role: str = "out", dtype: str | None = None) -> tuple[np.ndarray, str]:
    """Like :func:`as_array`, for a buffer the kernels write: it must be a numpy array or a torch
    CPU tensor, because anything else (a list, say) would be copied and the result lost."""
    if not isinstance(x, np.ndarray) and type(x).__module__.split(".")[0] != "torch":
        kind = type(x).__name__
        raise InvalidArgumentError(f"{role}: must be a numpy array or a torch CPU tensor, got {kind}")
    return as_array(x, role, dtype)


def check_integer(value: Any, role: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; floats and bools are refused rather than truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InvalidArgumentError(f"{role} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype that stores pycomm dtype ``name`` (uint16 for bfloat16)."""
    if name not in DTYPES:
        raise InvalidArgumentError(f"unsupported dtype '{name}'; supported: {', '.join(DTYPES)}")
    return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def empty(shape: Any, name: str, like: np.ndarray | None = None) -> np.ndarray:
    """A new array for dtype ``name``; bfloat16 keeps the storage dtype of ``like`` when given."""
    if name == "bfloat16" and like is not None and like.dtype.itemsize == 2 and like.dtype.kind == "V":
        return np.empty(shape, like.dtype)
    return np.empty(shape, storage_dtype(name))
