"""The order of a ring from measured peer-to-peer bandwidths: an asymmetric travelling-salesman
problem whose cost is the ring's speed.

A ring all-reduce moves the same bytes over every hop at once, so it runs at the pace of its slowest
hop: the best ring maximises the smallest bandwidth along it (a bottleneck tour), and among rings
with the same bottleneck prefers the one with the least total time per byte (the sum of 1 /
bandwidth over its hops). ``bandwidth[i][j]`` is the rate from peer i to peer j (links may differ
by direction); the diagonal is ignored.

Small groups are solved exactly (every ring through peer 0, up to ``EXACT_LIMIT`` peers); larger
ones by a bottleneck-first nearest-neighbour start from every peer, improved by moving single peers
and reversing segments (2-opt, re-scored on the directed links) until nothing helps. The result is
a pure function of the matrix, so peers holding the same matrix pick the same ring.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from pycomm.errors import InvalidArgumentError

EXACT_LIMIT = 8


def _checked(bandwidth: Sequence[Sequence[float]]) -> list[list[float]]:
    rows = [list(map(float, row)) for row in bandwidth]
    n = len(rows)
    if n == 0 or any(len(row) != n for row in rows):
        raise InvalidArgumentError(
            f"bandwidth must be a square matrix, got {n} row(s) of lengths "
            f"{sorted({len(row) for row in rows})}"
        )
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if i != j and not (value > 0 and math.isfinite(value)):
                raise InvalidArgumentError(f"bandwidth[{i}][{j}] must be a positive number, got {value!r}")
    return rows


def score(order: Sequence[int], bandwidth: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(bottleneck bandwidth, seconds per byte summed over the hops) of the ring ``order``."""
    hops = [(order[k], order[(k + 1) % len(order)]) for k in range(len(order))]
    if len(order) == 1:
        return math.inf, 0.0
    return min(bandwidth[i][j] for i, j in hops), sum(1.0 / bandwidth[i][j] for i, j in hops)


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """A faster ring: a larger bottleneck, or the same bottleneck (to 1e-9) and less total time."""
    if a[0] > b[0] * (1 + 1e-9):
        return True
    return a[0] >= b[0] * (1 - 1e-9) and a[1] < b[1] * (1 - 1e-12)


def best_ring(bandwidth: Sequence[Sequence[float]]) -> list[int]:
    """The ring order (a permutation of range(n), starting at 0) that runs fastest on ``bandwidth``."""
    rows = _checked(bandwidth)
    n = len(rows)
    if n <= EXACT_LIMIT:
        return _pick(([0, *rest] for rest in itertools.permutations(range(1, n))), rows)
    return _heuristic(rows)


def _pick(candidates, rows: list[list[float]]) -> list[int]:
    best, best_score = None, (-math.inf, math.inf)
    for order in candidates:
        current = score(order, rows)
        if best is None or _better(current, best_score):
            best, best_score = list(order), current
    return best


def _rotated(order: list[int]) -> list[int]:
    start = order.index(0)
    return order[start:] + order[:start]


def _heuristic(rows: list[list[float]]) -> list[int]:
    n = len(rows)
    best, best_score = None, (-math.inf, math.inf)
    for start in range(n):
        order = [start]
        left = set(range(n)) - {start}
        while left:
            here = order[-1]
            order.append(max(sorted(left), key=lambda j: rows[here][j]))
            left.remove(order[-1])
        order = _improve(order, rows)
        current = score(order, rows)
        if best is None or _better(current, best_score):
            best, best_score = order, current
    return _rotated(best)


def _improve(order: list[int], rows: list[list[float]]) -> list[int]:
    """Local search: move one peer elsewhere, or reverse a segment, while the ring gets faster."""
    n = len(order)
    current = score(order, rows)
    improved = True
    while improved:
        improved = False
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                moved = order[:i] + order[i + 1 :]
                moved.insert(j, order[i])
                candidate = score(moved, rows)
                if _better(candidate, current):
                    order, current, improved = moved, candidate, True
        for i in range(n - 1):
            for j in range(i + 2, n + 1):
                reversed_segment = order[:i] + order[i:j][::-1] + order[j:]
                candidate = score(reversed_segment, rows)
                if _better(candidate, current):
                    order, current, improved = reversed_segment, candidate, True
    return order
