"""The named (predefined) MPI types, as IR nodes with this platform's sizes and alignments.

Sizes come from the C types they stand for (numpy and ctypes know them), so the table holds on any
platform numpy runs on. The "pair" types of MPI_MINLOC/MAXLOC (MPI_SHORT_INT and friends) are
predefined in MPI but have holes, so they are structs here, laid out as a C compiler lays them out.
"""

from __future__ import annotations

import ctypes

from pycomm._native import core

_datatype = core.datatype

# name -> (size, alignment). Complex types align like their real component.
_LONG_DOUBLE = ctypes.sizeof(ctypes.c_longdouble)
_LONG_DOUBLE_ALIGNMENT = ctypes.alignment(ctypes.c_longdouble)
_SCALARS: dict[str, tuple[int, int]] = {
    "BYTE": (1, 1),
    "PACKED": (1, 1),
    "CHAR": (1, 1),
    "SIGNED_CHAR": (1, 1),
    "UNSIGNED_CHAR": (1, 1),
    "WCHAR": (ctypes.sizeof(ctypes.c_wchar), ctypes.alignment(ctypes.c_wchar)),
    "SHORT": (ctypes.sizeof(ctypes.c_short), ctypes.alignment(ctypes.c_short)),
    "UNSIGNED_SHORT": (ctypes.sizeof(ctypes.c_ushort), ctypes.alignment(ctypes.c_ushort)),
    "INT": (ctypes.sizeof(ctypes.c_int), ctypes.alignment(ctypes.c_int)),
    "UNSIGNED": (ctypes.sizeof(ctypes.c_uint), ctypes.alignment(ctypes.c_uint)),
    "LONG": (ctypes.sizeof(ctypes.c_long), ctypes.alignment(ctypes.c_long)),
    "UNSIGNED_LONG": (ctypes.sizeof(ctypes.c_ulong), ctypes.alignment(ctypes.c_ulong)),
    "LONG_LONG": (ctypes.sizeof(ctypes.c_longlong), ctypes.alignment(ctypes.c_longlong)),
    "UNSIGNED_LONG_LONG": (ctypes.sizeof(ctypes.c_ulonglong), ctypes.alignment(ctypes.c_ulonglong)),
    "FLOAT": (ctypes.sizeof(ctypes.c_float), ctypes.alignment(ctypes.c_float)),
    "DOUBLE": (ctypes.sizeof(ctypes.c_double), ctypes.alignment(ctypes.c_double)),
    "LONG_DOUBLE": (_LONG_DOUBLE, _LONG_DOUBLE_ALIGNMENT),
    "C_BOOL": (ctypes.sizeof(ctypes.c_bool), ctypes.alignment(ctypes.c_bool)),
    "INT8_T": (1, 1),
    "INT16_T": (2, 2),
    "INT32_T": (4, 4),
    "INT64_T": (8, 8),
    "UINT8_T": (1, 1),
    "UINT16_T": (2, 2),
    "UINT32_T": (4, 4),
    "UINT64_T": (8, 8),
    "AINT": (ctypes.sizeof(ctypes.c_ssize_t), ctypes.alignment(ctypes.c_ssize_t)),
    "OFFSET": (8, 8),
    "COUNT": (8, 8),
    "C_FLOAT_COMPLEX": (2 * ctypes.sizeof(ctypes.c_float), ctypes.alignment(ctypes.c_float)),
    "C_DOUBLE_COMPLEX": (2 * ctypes.sizeof(ctypes.c_double), ctypes.alignment(ctypes.c_double)),
    "C_LONG_DOUBLE_COMPLEX": (2 * _LONG_DOUBLE, _LONG_DOUBLE_ALIGNMENT),
    "CXX_BOOL": (1, 1),
    "CXX_FLOAT_COMPLEX": (2 * ctypes.sizeof(ctypes.c_float), ctypes.alignment(ctypes.c_float)),
    "CXX_DOUBLE_COMPLEX": (2 * ctypes.sizeof(ctypes.c_double), ctypes.alignment(ctypes.c_double)),
    "CXX_LONG_DOUBLE_COMPLEX": (2 * _LONG_DOUBLE, _LONG_DOUBLE_ALIGNMENT),
}
# The value-and-index pairs of MPI_MINLOC/MAXLOC: name -> value type; the int index follows the value
# at the next offset aligned for an int.
_PAIRS: dict[str, str] = {
    "FLOAT_INT": "FLOAT",
    "DOUBLE_INT": "DOUBLE",
    "LONG_INT": "LONG",
    "SHORT_INT": "SHORT",
    "TWOINT": "INT",
    "LONG_DOUBLE_INT": "LONG_DOUBLE",
}


def _element_kind(name: str, size: int) -> str:
    """MPICH's class of a named type's elements: integers of one width share one, whatever their
    sign (it decides whether a struct of them is padded)."""
    if "COMPLEX" in name:
        return f"complex{8 * size}"
    if name in ("FLOAT", "DOUBLE", "LONG_DOUBLE"):
        return f"float{8 * size}"
    if name in ("C_BOOL", "CXX_BOOL"):
        return "bool"
    return f"fixed{8 * size}"


def build_named() -> dict[str, object]:
    """name -> IR node of every named type (scalars first; pairs built from them)."""
    nodes: dict[str, object] = {
        name: _datatype.named(name, size, alignment, _element_kind(name, size))
        for name, (size, alignment) in _SCALARS.items()
    }
    for name, value in _PAIRS.items():
        nodes[name] = _datatype.named_pair(name, nodes[value], nodes["INT"])
    return nodes


NAMED = build_named()
