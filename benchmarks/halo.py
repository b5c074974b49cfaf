"""A 3-D halo exchange with MPI subarray datatypes: 26 neighbours (faces, edges, corners) on a periodic
Cartesian grid of ranks.

Each rank owns an ``nz x ny x nx`` block of a global float64 field, stored with ``width`` halo cells on
every side. One exchange fills every halo cell from the neighbour that owns it, sending each of the 26
interior slabs as one subarray datatype, either with ``Isend``/``Irecv``/``Waitall`` (one message per
neighbour, the direction in the tag) or with one ``Neighbor_alltoallw`` over a graph topology of the 26
directions. The types are non-contiguous, so an MPI datatype engine (MPICH's own, or pycomm's
interposer when preloaded) does all the packing: the same program measures both, and the interposer's
tests use it to check that preloading changes no byte.

The field holds a function of the global cell index, so the result is checked exactly: after an
exchange every cell, halo included, must equal the value of the global cell it stands for (periodic
wrap). Works at any number of ranks, including 1 and 2 (where a rank is its own neighbour).

Run under ``mpiexec`` (``mpiexec -n 4 python -m pycomm.benchmarks.halo --size 64``), or call
:func:`run_halo` from an MPI process.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("isend", "neighbor")

# The 26 directions (dz, dy, dx), in one fixed order that every rank shares.
DIRECTIONS: tuple[tuple[int, int, int], ...] = tuple(
    direction for direction in itertools.product((-1, 0, 1), repeat=3) if direction != (0, 0, 0)
)


def _opposite(direction: tuple[int, int, int]) -> tuple[int, int, int]:
    return (-direction[0], -direction[1], -direction[2])


def _interior_slab(
    direction: Sequence[int], interior: Sequence[int], width: int
) -> tuple[list[int], list[int]]:
    """Subsizes and starts of the interior cells a neighbour in ``direction`` needs."""
    subsizes, starts = [], []
    for step, size in zip(direction, interior):
        subsizes.append(size if step == 0 else width)
        starts.append(width if step <= 0 else size)  # -1: the first `width` interior cells; +1: the last
    return subsizes, starts


def _halo_slab(direction: Sequence[int], interior: Sequence[int], width: int) -> tuple[list[int], list[int]]:
    """Subsizes and starts of the halo cells filled from the neighbour in ``direction``."""
    subsizes, starts = [], []
    for step, size in zip(direction, interior):
        subsizes.append(size if step == 0 else width)
        starts.append({-1: 0, 0: width, 1: width + size}[step])
    return subsizes, starts


def global_values(
    coordinates: Sequence[int], dims: Sequence[int], interior: Sequence[int], width: int
) -> np.ndarray:
    """The exact field a rank holds after an exchange: each cell's value is its global index, encoded
    as ``z * 2**20 + y * 2**10 + x`` (exact in float64), halo cells wrapped periodically."""
    axes = []
    for coordinate, ranks, size in zip(coordinates, dims, interior):
        local = np.arange(-width, size + width)
        axes.append((coordinate * size + local) % (ranks * size))
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return (z * 2.0**20 + y * 2.0**10 + x).astype(np.float64)


class HaloExchange:
    """The datatypes, neighbours and topology of one rank's exchange, built once and reused."""

    def __init__(self, comm: Any, interior: Sequence[int], width: int, method: str = "isend") -> None:
        from mpi4py import MPI

        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if width < 1 or any(size < width for size in interior):
            raise ValueError(
                f"halo width {width} must be >= 1 and at most every interior size {list(interior)}"
            )
        self.interior = [int(size) for size in interior]
        self.width = width
        self.method = method
        self.shape = [size + 2 * width for size in self.interior]
        self.dims = MPI.Compute_dims(comm.Get_size(), 3)
        self.cart = comm.Create_cart(self.dims, periods=[True, True, True], reorder=False)
        self.coordinates = self.cart.Get_coords(self.cart.Get_rank())
        self.neighbours = [self._rank_at(direction) for direction in DIRECTIONS]
        self.send_types = [self._subarray(*_interior_slab(d, self.interior, width)) for d in DIRECTIONS]
        self.receive_types = [self._subarray(*_halo_slab(d, self.interior, width)) for d in DIRECTIONS]
        self.graph = None
        if method == "neighbor":
            # Block k goes to the neighbour at +d_k and arrives from the one at -d_k into the halo on
            # the -d_k side: with this order, blocks between one pair of ranks match in posting order
            # even when the pair is joined by several directions (small grids).
            sources = [self._rank_at(_opposite(d)) for d in DIRECTIONS]
            self.graph = self.cart.Create_dist_graph_adjacent(sources, self.neighbours, reorder=False)
            self.graph_receive_types = [
                self._subarray(*_halo_slab(_opposite(d), self.interior, width)) for d in DIRECTIONS
            ]

    def _rank_at(self, direction: Sequence[int]) -> int:
        coordinates = [(c + d) % n for c, d, n in zip(self.coordinates, direction, self.dims)]
        return self.cart.Get_cart_rank(coordinates)

    def _subarray(self, subsizes: list[int], starts: list[int]) -> Any:
        from mpi4py import MPI

        return MPI.DOUBLE.Create_subarray(self.shape, subsizes, starts, order=MPI.ORDER_C).Commit()

    def new_field(self) -> np.ndarray:
        """This rank's block with its interior set and every halo cell NaN (so a missed one shows)."""
        field = np.full(self.shape, np.nan)
        w = self.width
        inner = global_values(self.coordinates, self.dims, self.interior, 0)
        field[w:-w, w:-w, w:-w] = inner
        return field

    def expected(self) -> np.ndarray:
        return global_values(self.coordinates, self.dims, self.interior, self.width)

    def exchange(self, field: np.ndarray) -> None:
        from mpi4py import MPI

        if self.method == "isend":
            requests = []
            for index, (direction, neighbour) in enumerate(zip(DIRECTIONS, self.neighbours)):
                # The message to the neighbour at +d carries tag d; the one from there was sent toward -d.
                requests.append(
                    self.cart.Irecv(
                        [field, 1, self.receive_types[index]],
                        neighbour,
                        DIRECTIONS.index(_opposite(direction)),
                    )
                )
            for index, neighbour in enumerate(self.neighbours):
                requests.append(self.cart.Isend([field, 1, self.send_types[index]], neighbour, index))
            MPI.Request.Waitall(requests)
        else:
            # Separate send and receive buffers: MPI forbids aliasing them in a collective.
            source = field.copy()
            blocks = len(DIRECTIONS)
            ones, zeros = [1] * blocks, [0] * blocks
            self.graph.Neighbor_alltoallw(
                [source, (ones, zeros), self.send_types], [field, (ones, zeros), self.graph_receive_types]
            )

    def free(self) -> None:
        for datatype in self.send_types + self.receive_types + getattr(self, "graph_receive_types", []):
            datatype.Free()
        if self.graph is not None:
            self.graph.Free()
        self.cart.Free()


def run_halo(
    interior: Sequence[int] = (16, 12, 10), width: int = 1, method: str = "isend", iterations: int = 1
) -> dict[str, Any]:
    """Runs ``iterations`` exchanges on every rank of ``MPI.COMM_WORLD`` and checks the last one exactly.

    Returns this rank's result: whether every cell is right, a SHA-256 of the field's bytes (equal
    between runs that moved the same data), and the seconds per exchange.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    halo = HaloExchange(comm, interior, width, method)
    try:
        field = halo.new_field()
        halo.exchange(field)  # a first, untimed exchange also checks the result
        correct = bool(np.array_equal(field, halo.expected()))
        comm.Barrier()
        started = time.perf_counter()
        for _ in range(iterations):
            halo.exchange(field)
        elapsed = (time.perf_counter() - started) / max(iterations, 1)
        correct = correct and bool(np.array_equal(field, halo.expected()))
        wrong_cells = int(np.count_nonzero(field != halo.expected()))
        return {
            "rank": comm.Get_rank(),
            "dims": list(halo.dims),
            "method": method,
            "correct": correct,
            "wrong_cells": wrong_cells,
            "sha256": hashlib.sha256(field.tobytes()).hexdigest(),
            "seconds_per_exchange": elapsed,
            "halo_bytes": int(field.size * 8 - int(np.prod(halo.interior)) * 8),
        }
    finally:
        halo.free()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pycomm.benchmarks.halo",
        description="3-D halo exchange with subarray datatypes, 26 neighbours (run under mpiexec)",
    )
    parser.add_argument(
        "--size", type=int, nargs="+", default=[32], help="interior cells per axis (1 or 3 values)"
    )
    parser.add_argument("--width", type=int, default=1, help="halo width in cells (default 1)")
    parser.add_argument("--method", choices=METHODS, default="isend")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print rank 0's result as JSON")
    args = parser.parse_args(argv)
    interior = args.size * 3 if len(args.size) == 1 else args.size
    if len(interior) != 3:
        parser.error("--size takes one value or three")
    result = run_halo(interior, args.width, args.method, args.iterations)
    from mpi4py import MPI

    results = MPI.COMM_WORLD.gather(result, root=0)
    if MPI.COMM_WORLD.Get_rank() == 0:
        correct = all(entry["correct"] for entry in results)
        slowest = max(entry["seconds_per_exchange"] for entry in results)
        summary = {
            "interior": interior,
            "width": args.width,
            "method": args.method,
            "ranks": len(results),
            "correct": correct,
            "seconds_per_exchange": slowest,
            "ranks_results": results,
        }
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(
                f"halo {interior} width {args.width} {args.method} on {len(results)} ranks: "
                f"{slowest * 1e6:.1f} us per exchange, {'correct' if correct else 'WRONG'}"
            )
        return 0 if correct else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
