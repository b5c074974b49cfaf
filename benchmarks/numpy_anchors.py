"""Straightforward numpy versions of pycomm's quantizers and of the float32 -> bfloat16 cast.

They are the anchors pycomm's kernels are compared with: the code a user would write without
pycomm, computing the same thing the same way (one float32 scale per block, ``x / scale`` rounded to
nearest even, clamped), so a ratio measures the implementation, not a different algorithm. They
require the element count to be a multiple of the block size (every benchmark size is).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dequantize_int4",
    "dequantize_int8",
    "dequantize_uint8",
    "float32_to_bfloat16_bits",
    "quantize_int4",
    "quantize_int8",
    "quantize_uint8",
]


def _blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    if x.size % block_size != 0:
        raise ValueError(f"{x.size} elements are not a whole number of blocks of {block_size}")
    return x.reshape(-1, block_size)


def _nonzero(scale: np.ndarray) -> np.ndarray:
    # A block of zeros (or of one repeated value) has scale 0; dividing by 1 instead yields q = 0.
    return np.where(scale == 0, np.float32(1), scale)


def _symmetric(x: np.ndarray, block_size: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = _blocks(x, block_size)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(levels)
    q = np.clip(np.rint(blocks / _nonzero(scale)), -levels, levels).astype(np.int8)
    return q, scale.reshape(-1)


def quantize_int8(x: np.ndarray, block_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales): ``scale = absmax / 127`` a block."""
    q, scales = _symmetric(x, block_size, 127)
    return q.reshape(-1), scales


def quantize_int4(x: np.ndarray, block_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8, float32 scales): ``scale = absmax / 7``; element 2i in the low nibble."""
    q, scales = _symmetric(x, block_size, 7)
    nibbles = q.reshape(-1).view(np.uint8) & np.uint8(0x0F)
    packed = nibbles[0::2] | (nibbles[1::2] << np.uint8(4))
    return packed, scales


def quantize_uint8(x: np.ndarray, block_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 values, float32 scales, float32 zero points): ``scale = (max - min) / 255``, zero = min."""
    blocks = _blocks(x, block_size)
    low = blocks.min(axis=1, keepdims=True)
    scale = (blocks.max(axis=1, keepdims=True) - low) / np.float32(255)
    q = np.clip(np.rint((blocks - low) / _nonzero(scale)), 0, 255).astype(np.uint8)
    return q.reshape(-1), scale.reshape(-1), low.reshape(-1)


def dequantize_int8(data: np.ndarray, scales: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = data * scale`` block by block (``out`` float32, one element per value)."""
    block_size = data.size // scales.size
    np.multiply(data.reshape(-1, block_size), scales[:, None], out=out.reshape(-1, block_size))
    return out


def dequantize_int4(data: np.ndarray, scales: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Unpacks two's-complement nibbles (low first), then ``out = value * scale``."""
    values = np.empty(2 * data.size, np.int8)
    # (nibble ^ 8) - 8 sign-extends a 4-bit two's-complement value.
    values[0::2] = ((data & np.uint8(0x0F)) ^ np.uint8(8)).view(np.int8) - np.int8(8)
    values[1::2] = ((data >> np.uint8(4)) ^ np.uint8(8)).view(np.int8) - np.int8(8)
    return dequantize_int8(values, scales, out)


def dequantize_uint8(
    data: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """``out = data * scale + zero_point`` block by block."""
    block_size = data.size // scales.size
    shaped = out.reshape(-1, block_size)
    np.multiply(data.reshape(-1, block_size), scales[:, None], out=shaped)
    shaped += zero_points[:, None]
    return out


def float32_to_bfloat16_bits(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 ``x``, rounded to nearest even (NaNs not special-cased)."""
    bits = x.view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    np.right_shift(rounded, np.uint32(16), out=out, casting="unsafe")
    return out
