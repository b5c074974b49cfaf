"""pycomm.datatype against MPICH: for thousands of random nested types of every constructor, the
bounds MPI reports, the bytes MPI_Pack writes (whole and in pieces) and what MPI_Unpack leaves in a
buffer must be exactly pycomm's. The comparisons run in one MPI process launched by mpiexec, so
the test process itself never initialises MPI."""

from __future__ import annotations

import os
import sys

import pytest

from pycomm.testing import run_mpi

pytestmark = pytest.mark.mpi

sys.path.insert(0, os.path.dirname(__file__))


def compare_random_types(examples: int) -> int:
    import numpy as np
    from _datatype_recipes import build_mpi, build_pycomm, crashes_mpich_pack, recipes
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from mpi4py import MPI

    from pycomm import datatype as dt

    checked = []
    same_padding = []

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(recipe=recipes, count=st.integers(0, 3), seed=st.integers(0, 2**32 - 1), split=st.floats(0, 1))
    def check(recipe: tuple, count: int, seed: int, split: float) -> None:
        reference = build_mpi(MPI, recipe).Commit()
        try:
            mine = build_pycomm(recipe).commit()
            decoded = dt.from_mpi(reference)
            lb, extent = reference.Get_extent()
            true_lb, true_extent = reference.Get_true_extent()
            expected = (reference.Get_size(), lb, extent, true_lb, true_extent)
            bounds = (decoded.size, decoded.lb, decoded.extent, decoded.true_lb, decoded.true_extent)
            assert bounds == expected, (recipe, expected, decoded.describe_layout())
            # pycomm's own constructors pad structs by MPICH's rule where it is known; where MPICH's
            # padding differs the layouts may differ, and the draw is counted, not compared.
            if (mine.size, mine.lb, mine.extent, mine.true_lb, mine.true_extent) == expected:
                assert mine.describe_layout() == decoded.describe_layout(), recipe
                same_padding.append(1)
            mine = decoded

            begin, end = mine._native.span(count)
            if end - begin > 1 << 20 or crashes_mpich_pack(recipe):
                return
            shift = max(0, -begin)
            rng = np.random.default_rng(seed)
            buffer = rng.integers(0, 256, shift + max(end, 0) + 1, dtype=np.uint8)
            # mpi4py's Datatype.Pack takes its count from the buffer length over the extent: pack one
            # object of a type holding `count` of them, resized to extent 1, from a 1-byte view.
            many = reference.Create_contiguous(count)
            objects = many.Create_resized(0, 1).Commit()
            many.Free()
            packed_mpi = np.zeros(objects.Pack_size(1, MPI.COMM_SELF), np.uint8)
            position = objects.Pack(buffer[shift : shift + 1], packed_mpi, 0, MPI.COMM_SELF)
            assert position == count * mine.size
            packed = dt.pack(buffer, mine, count, offset=shift)
            assert packed.tobytes() == packed_mpi[:position].tobytes(), (
                recipe,
                count,
                mine.describe_layout(),
            )

            # The same stream in two pieces, cut anywhere (inside a block too).
            cut = int(split * position)
            head = dt.pack(buffer, mine, count, offset=shift, max_bytes=cut)
            tail = dt.pack(buffer, mine, count, offset=shift, first=cut)
            assert head.tobytes() + tail.tobytes() == packed.tobytes()

            # Unpack over the same starting bytes: every byte, touched or not, must match MPI_Unpack's.
            target_mpi = rng.integers(0, 256, buffer.size, dtype=np.uint8)
            target = target_mpi.copy()
            scrambled = rng.integers(0, 256, position, dtype=np.uint8)
            objects.Unpack(scrambled, 0, target_mpi[shift : shift + 1], MPI.COMM_SELF)
            objects.Free()
            consumed = dt.unpack(scrambled, target, mine, count, offset=shift)
            assert consumed == position
            assert target.tobytes() == target_mpi.tobytes(), (recipe, count, mine.describe_layout())
            checked.append(1)
        finally:
            if not reference.is_predefined:
                reference.Free()

    check()
    return len(checked), len(same_padding)


def test_pack_unpack_and_bounds_match_mpich_for_random_nested_types() -> None:
    result = run_mpi(compare_random_types, 1, args=(5000,), timeout=600)
    compared, same_padding = result.values[0]
    # Most draws are packed and compared; only types spanning over 1 MiB are measured and skipped.
    assert compared >= 4000, result.values
    # pycomm's constructors agree with MPICH's extents on nearly every draw (struct padding is an
    # implementation choice; from_mpi always takes MPICH's).
    assert same_padding >= 0.9 * compared, result.values


def send_and_receive_a_column() -> list[float]:
    import numpy as np
    from mpi4py import MPI

    from pycomm import datatype as dt

    comm = MPI.COMM_WORLD
    column = dt.vector(6, 1, 4, dt.DOUBLE).commit()
    if comm.rank == 0:
        matrix = np.arange(24, dtype=np.float64).reshape(6, 4)
        assert dt.send(comm, matrix, column, dest=1, tag=7) == "host"
        return []
    # The receiver gets the column into column 2 of its own matrix, the rest untouched.
    matrix = np.full((6, 4), -1.0)
    assert dt.recv(comm, matrix.reshape(-1)[2:], column, 0, tag=7) == "host"
    return matrix.reshape(-1).tolist()


def test_send_and_recv_move_packed_bytes_between_ranks() -> None:
    result = run_mpi(send_and_receive_a_column, 2, timeout=120)
    received = result.values[1]
    expected = [-1.0] * 24
    for row in range(6):
        expected[row * 4 + 2] = float(row * 4)
    assert received == expected


def decode_edge_cases() -> dict:
    from mpi4py import MPI

    from pycomm import InvalidArgumentError
    from pycomm import datatype as dt

    outcome = {}
    vector = MPI.DOUBLE.Create_vector(3, 1, 4)
    vector.Free()  # mpi4py sets the handle to MPI_DATATYPE_NULL
    for name, value in (("freed", vector), ("not a datatype", "MPI_DOUBLE")):
        try:
            dt.from_mpi(value)
        except InvalidArgumentError as error:
            outcome[name] = str(error)
    # Named types of every kind decode to their size and extent, pairs with their holes.
    for name in ("INT", "DOUBLE", "C_DOUBLE_COMPLEX", "SHORT_INT", "LONG_DOUBLE_INT", "TWOINT", "WCHAR"):
        mpi = getattr(MPI, name)
        t = dt.from_mpi(mpi)
        outcome[name] = (t.size, t.extent) == (mpi.Get_size(), mpi.Get_extent()[1])
    real = MPI.Datatype.Create_f90_real(6, 30)
    outcome["F90_REAL"] = dt.from_mpi(real).size == real.Get_size()
    return outcome


def test_from_mpi_rejects_freed_types_and_decodes_named_ones() -> None:
    outcome = run_mpi(decode_edge_cases, 1, timeout=120).values[0]
    assert "MPI_DATATYPE_NULL" in outcome["freed"]
    assert "mpi4py.MPI.Datatype" in outcome["not a datatype"]
    assert all(outcome[name] for name in outcome if name not in ("freed", "not a datatype")), outcome
