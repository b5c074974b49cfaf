"""Decoding mpi4py datatypes into the type IR, through MPI's own description of each type
(``MPI_Type_get_envelope`` / ``MPI_Type_get_contents``, which mpi4py's ``Datatype.decode`` wraps).

Named types map to the table in :mod:`pycomm.datatype._named`; a named type outside it (a Fortran
type, say) is taken as a contiguous block of its size when MPI reports no holes in it.
"""

from __future__ import annotations

from typing import Any

from pycomm._deps import require_mpi4py
from pycomm._native import core
from pycomm.datatype._named import NAMED
from pycomm.errors import InvalidArgumentError, NotSupportedError

_datatype = core.datatype


def _named_by_handle(MPI: Any) -> dict[int, Any]:
    table = {}
    for name, node in NAMED.items():
        handle = getattr(MPI, name, None)
        if handle is not None and handle != MPI.DATATYPE_NULL:
            table[handle.py2f()] = node
    return table


def decode(datatype: Any) -> Any:
    require_mpi4py("pycomm.datatype.from_mpi")
    from mpi4py import MPI

    if not isinstance(datatype, MPI.Datatype):
        raise InvalidArgumentError(f"from_mpi needs an mpi4py.MPI.Datatype, got {type(datatype).__name__}")
    if datatype == MPI.DATATYPE_NULL:
        raise InvalidArgumentError("the MPI datatype is MPI_DATATYPE_NULL (freed, or never created)")
    return _decode(MPI, datatype, _named_by_handle(MPI))


def _decode(MPI: Any, datatype: Any, named: dict[int, Any]) -> Any:
    base, combiner, params = datatype.decode()
    if combiner == "NAMED" or combiner.startswith("F90_"):
        return _named(MPI, datatype, combiner, named)
    try:
        return _agree_with_mpi(datatype, _build(MPI, base, combiner, params, named))
    finally:
        # MPI_Type_get_contents hands out new handles for derived children: free them.
        children = params.get("datatypes", [base])
        for child in children:
            if child is not None and not child.is_predefined:
                child.Free()


def _agree_with_mpi(datatype: Any, node: Any) -> Any:
    """The node with the bounds this MPI reports. Only a struct's padding is the implementation's
    choice (MPI leaves it open); where it differs, the typemap is the same and a resized node states
    the implementation's extent, so consecutive objects sit where this MPI puts them."""
    size = datatype.Get_size()
    true_lb, true_extent = datatype.Get_true_extent()
    if node.size != size or (size and (node.true_lb, node.true_extent) != (true_lb, true_extent)):
        raise NotSupportedError(
            f"pycomm decodes this MPI datatype to a different typemap (size {node.size}, true bounds "
            f"{node.true_lb}+{node.true_extent}) than MPI reports (size {size}, true bounds "
            f"{true_lb}+{true_extent})"
        )
    lb, extent = datatype.Get_extent()
    if (node.lb, node.extent) != (lb, extent):
        node = _datatype.resized(lb, extent, node)
    return node


def _named(MPI: Any, datatype: Any, combiner: str, named: dict[int, Any]) -> Any:
    node = named.get(datatype.py2f())
    if node is not None:
        return node
    size = datatype.Get_size()
    lb, extent = datatype.Get_extent()
    true_lb, true_extent = datatype.Get_true_extent()
    if lb != 0 or true_lb != 0 or extent != size or true_extent != size:
        raise NotSupportedError(
            f"the named MPI datatype {datatype.Get_name() or combiner!r} has holes "
            f"(size {size}, extent {extent}) and is not in pycomm's table of named types"
        )
    alignment = 1
    while alignment < 16 and size % (alignment * 2) == 0:
        alignment *= 2
    return _datatype.named(datatype.Get_name() or combiner, size, alignment, f"{combiner.lower()}{8 * size}")


def _build(MPI: Any, base: Any, combiner: str, params: dict[str, Any], named: dict[int, Any]) -> Any:
    if combiner == "STRUCT":
        children = [_decode(MPI, child, named) for child in params["datatypes"]]
        return _datatype.struct(list(params["blocklengths"]), list(params["displacements"]), children)
    old = _decode(MPI, base, named)
    if combiner == "DUP":
        return _datatype.dup(old)
    if combiner == "CONTIGUOUS":
        return _datatype.contiguous(params["count"], old)
    if combiner == "VECTOR":
        return _datatype.vector(params["count"], params["blocklength"], params["stride"], old)
    if combiner == "HVECTOR":
        return _datatype.hvector(params["count"], params["blocklength"], params["stride"], old)
    if combiner == "INDEXED":
        return _datatype.indexed(list(params["blocklengths"]), list(params["displacements"]), old)
    if combiner == "HINDEXED":
        return _datatype.hindexed(list(params["blocklengths"]), list(params["displacements"]), old)
    if combiner == "INDEXED_BLOCK":
        return _datatype.indexed_block(params["blocklength"], list(params["displacements"]), old)
    if combiner == "HINDEXED_BLOCK":
        return _datatype.hindexed_block(params["blocklength"], list(params["displacements"]), old)
    if combiner == "RESIZED":
        return _datatype.resized(params["lb"], params["extent"], old)
    if combiner == "SUBARRAY":
        order = "C" if params["order"] == MPI.ORDER_C else "F"
        return _datatype.subarray(
            list(params["sizes"]), list(params["subsizes"]), list(params["starts"]), order, old
        )
    if combiner == "DARRAY":
        kinds = {MPI.DISTRIBUTE_BLOCK: "block", MPI.DISTRIBUTE_CYCLIC: "cyclic", MPI.DISTRIBUTE_NONE: "none"}
        arguments = [
            _datatype.DEFAULT_DISTRIBUTION_ARGUMENT if value == MPI.DISTRIBUTE_DFLT_DARG else value
            for value in params["dargs"]
        ]
        order = "C" if params["order"] == MPI.ORDER_C else "F"
        return _datatype.darray(
            params["size"],
            params["rank"],
            list(params["gsizes"]),
            [kinds[d] for d in params["distribs"]],
            arguments,
            list(params["psizes"]),
            order,
            old,
        )
    raise NotSupportedError(f"MPI datatype combiner {combiner} is not supported by pycomm.datatype")
