"""The named (predefined) MPI types, from the core's table of them (csrc/datatype/named.cc): this
platform's C sizes and alignments, and the value-and-index pairs of MPI_MINLOC/MAXLOC (MPI_SHORT_INT
and friends) as structs with their holes. Names are mpi4py's: ``TWOINT`` for ``MPI_2INT``.
"""

from __future__ import annotations

from pycomm._native import core

_datatype = core.datatype

# mpi4py spells the one MPI name that is not an identifier differently.
_PYTHON_NAMES = {"2INT": "TWOINT"}

NAMED: dict[str, object] = {
    _PYTHON_NAMES.get(name, name): _datatype.named_type(name) for name in _datatype.named_type_names()
}
