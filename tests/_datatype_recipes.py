"""Random nested MPI datatypes for the datatype tests: hypothesis strategies that draw a *recipe*
(plain tuples), and builders that turn one recipe into an mpi4py datatype and into a
pycomm.datatype.Type by the same constructors, so the two can be compared byte for byte."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Not LONG_DOUBLE: MPICH packs x86's 80-bit long double through the FPU and writes zeros for its 6
# padding bytes, where pycomm copies all 16 (the values agree; see the datatype docs).
LEAVES = ("BYTE", "SHORT", "INT", "FLOAT", "DOUBLE", "SHORT_INT", "DOUBLE_INT", "C_DOUBLE_COMPLEX")

small_count = st.integers(0, 4)
positive_count = st.integers(1, 4)
element_stride = st.integers(-6, 6)
byte_offset = st.integers(-48, 96)


def _lists(element: st.SearchStrategy[Any], size: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(element, min_size=size, max_size=size)


@st.composite
def _indexed(draw: Any, child: st.SearchStrategy[Any], kind: str) -> tuple[Any, ...]:
    n = draw(st.integers(1, 4))
    displacement = element_stride if kind in ("indexed", "indexed_block") else byte_offset
    displacements = draw(_lists(displacement, n))
    if kind.endswith("_block"):
        return (kind, draw(small_count), displacements, draw(child))
    return (kind, draw(_lists(small_count, n)), displacements, draw(child))


@st.composite
def _struct(draw: Any, child: st.SearchStrategy[Any]) -> tuple[Any, ...]:
    n = draw(st.integers(1, 3))
    return ("struct", draw(_lists(small_count, n)), draw(_lists(byte_offset, n)), draw(_lists(child, n)))


@st.composite
def _subarray(draw: Any, child: st.SearchStrategy[Any]) -> tuple[Any, ...]:
    ndims = draw(st.integers(1, 3))
    sizes = draw(_lists(st.integers(1, 5), ndims))
    subsizes = [draw(st.integers(1, size)) for size in sizes]
    starts = [draw(st.integers(0, size - sub)) for size, sub in zip(sizes, subsizes)]
    return ("subarray", sizes, subsizes, starts, draw(st.sampled_from("CF")), draw(child))


@st.composite
def _darray(draw: Any, child: st.SearchStrategy[Any]) -> tuple[Any, ...]:
    ndims = draw(st.integers(1, 3))
    gsizes = draw(_lists(st.integers(1, 6), ndims))
    distribs = draw(_lists(st.sampled_from(["block", "cyclic", "none"]), ndims))
    psizes = [1 if kind == "none" else draw(st.integers(1, 3)) for kind in distribs]
    dargs = []
    for kind, gsize, psize in zip(distribs, gsizes, psizes):
        if kind == "block":
            minimum = -(-gsize // psize)
            dargs.append(draw(st.sampled_from([-1, minimum, minimum + 1])))
        elif kind == "cyclic":
            dargs.append(draw(st.sampled_from([-1, 1, 2, 3])))
        else:
            dargs.append(-1)
    size = 1
    for psize in psizes:
        size *= psize
    rank = draw(st.integers(0, size - 1))
    return ("darray", size, rank, gsizes, distribs, dargs, psizes, draw(st.sampled_from("CF")), draw(child))


def _extend(child: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.tuples(st.just("contiguous"), small_count, child),
        st.tuples(st.just("vector"), small_count, small_count, element_stride, child),
        st.tuples(st.just("hvector"), small_count, small_count, byte_offset, child),
        _indexed(child, "indexed"),
        _indexed(child, "hindexed"),
        _indexed(child, "indexed_block"),
        _indexed(child, "hindexed_block"),
        _struct(child),
        _subarray(child),
        _darray(child),
        st.tuples(st.just("resized"), byte_offset, st.integers(0, 96), child),
        st.tuples(st.just("dup"), child),
    )


recipes = st.recursive(st.tuples(st.just("named"), st.sampled_from(LEAVES)), _extend, max_leaves=5)


def build_mpi(MPI: Any, recipe: tuple[Any, ...]) -> Any:
    """The mpi4py datatype of a recipe (uncommitted; intermediate types are freed)."""
    kind = recipe[0]
    if kind == "named":
        return getattr(MPI, recipe[1])
    if kind == "struct":
        _, blocklengths, displacements, children = recipe
        built = [build_mpi(MPI, child) for child in children]
        result = MPI.Datatype.Create_struct(blocklengths, displacements, built)
        for child in built:
            _free(child)
        return result
    old = build_mpi(MPI, recipe[-1])
    args = recipe[1:-1]
    if kind == "contiguous":
        result = old.Create_contiguous(*args)
    elif kind == "vector":
        result = old.Create_vector(*args)
    elif kind == "hvector":
        result = old.Create_hvector(*args)
    elif kind == "indexed":
        result = old.Create_indexed(*args)
    elif kind == "hindexed":
        result = old.Create_hindexed(*args)
    elif kind == "indexed_block":
        result = old.Create_indexed_block(*args)
    elif kind == "hindexed_block":
        result = old.Create_hindexed_block(*args)
    elif kind == "subarray":
        sizes, subsizes, starts, order = args
        result = old.Create_subarray(
            sizes, subsizes, starts, MPI.ORDER_C if order == "C" else MPI.ORDER_FORTRAN
        )
    elif kind == "darray":
        size, rank, gsizes, distribs, dargs, psizes, order = args
        kinds = {"block": MPI.DISTRIBUTE_BLOCK, "cyclic": MPI.DISTRIBUTE_CYCLIC, "none": MPI.DISTRIBUTE_NONE}
        result = old.Create_darray(
            size,
            rank,
            gsizes,
            [kinds[d] for d in distribs],
            [MPI.DISTRIBUTE_DFLT_DARG if d == -1 else d for d in dargs],
            psizes,
            MPI.ORDER_C if order == "C" else MPI.ORDER_FORTRAN,
        )
    elif kind == "resized":
        result = old.Create_resized(*args)
    elif kind == "dup":
        result = old.Dup()
    else:
        raise AssertionError(kind)
    _free(old)
    return result


def _free(datatype: Any) -> None:
    if not datatype.is_predefined:
        datatype.Free()


def build_pycomm(recipe: tuple[Any, ...]) -> Any:
    """The pycomm.datatype.Type of a recipe, built with pycomm's own constructors (uncommitted)."""
    from pycomm import datatype as dt

    kind = recipe[0]
    if kind == "named":
        return getattr(dt, recipe[1])
    if kind == "struct":
        _, blocklengths, displacements, children = recipe
        return dt.struct(blocklengths, displacements, [build_pycomm(child) for child in children])
    old = build_pycomm(recipe[-1])
    args = recipe[1:-1]
    if kind == "subarray":
        sizes, subsizes, starts, order = args
        return dt.subarray(sizes, subsizes, starts, old, order=order)
    if kind == "darray":
        size, rank, gsizes, distribs, dargs, psizes, order = args
        return dt.darray(size, rank, gsizes, distribs, dargs, psizes, old, order=order)
    if kind == "resized":
        return dt.resized(old, *args)
    if kind == "dup":
        return dt.dup(old)
    return getattr(dt, kind)(*args, old)


def crashes_mpich_pack(recipe: tuple[Any, ...]) -> bool:
    """Whether MPICH 5.0.2's MPI_Pack dies of SIGFPE on this type: it does on a struct holding a block of
    a type that has no data but is not MPI's zero-length type (a vector or indexed_block of
    blocklength 0 over a derived type, say). Such types are compared by their bounds only."""
    kind = recipe[0]
    if kind == "named":
        return False
    if kind == "struct":
        _, blocklengths, _, children = recipe
        for blocklength, child in zip(blocklengths, children):
            if blocklength and _has_no_data_but_bounds(child):
                return True
        return any(crashes_mpich_pack(child) for child in children)
    return crashes_mpich_pack(recipe[-1])


def _has_no_data_but_bounds(recipe: tuple[Any, ...]) -> bool:
    t = build_pycomm(recipe)
    return t.size == 0 and (t.lb, t.ub, t.true_lb, t.true_extent) != (0, 0, 0, 0)
