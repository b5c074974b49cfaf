"""One peer of ``pycomm stress``: a training-like loop whose every result is checked.

Each step: admit waiting peers, sync the shared state (a float64 vector ``w`` and the revision),
run several concurrent all-reduces whose exact results are known (integer-valued inputs that
depend on the revision, tag, rank and world size), and update ``w`` from the results with exact
integer arithmetic. An operation that raises Aborted is retried in the new epoch; an eviction
(after a stall) makes the peer rejoin as a newcomer.

Each step prints one JSON line: revision, epoch, world size, the hash of ``w`` after the update,
bytes the sync had to fetch, and counters. Results that differ from the exact sums are printed as
mismatches; the orchestrator compares the hashes across peers.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
import time

import numpy as np

from pycomm import kernels
from pycomm.errors import Aborted, CommError, Evicted
from pycomm.ft import Communicator, SharedState

# (dtype, op, value range): integer-valued inputs whose sums are exact in the dtype for up to
# `max_world` peers.
OPERATIONS = (
    ("float32", "sum", 97),
    ("int64", "sum", 1000),
    ("bfloat16", "sum", 8),
    ("float64", "max", 1000),
)
STATE_ELEMENTS = 4096


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def make_input(revision: int, tag: int, rank: int, size: int) -> np.ndarray:
    dtype, _, span = OPERATIONS[tag % len(OPERATIONS)]
    values = (np.arange(size, dtype=np.int64) + revision * 31 + tag * 7 + rank * 13) % span
    if dtype == "bfloat16":
        bits = values.astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16)
    return values.astype(dtype)


def expected_result(revision: int, tag: int, world: int, size: int) -> np.ndarray:
    dtype, op, span = OPERATIONS[tag % len(OPERATIONS)]
    stacked = np.stack(
        [(np.arange(size, dtype=np.int64) + revision * 31 + tag * 7 + r * 13) % span for r in range(world)]
    )
    exact = stacked.sum(axis=0) if op == "sum" else stacked.max(axis=0)
    if dtype == "bfloat16":
        return (exact.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return exact.astype(dtype)


def run_step(
    comm: Communicator, revision: int, size: int, concurrency: int, counters: dict, skew: int = 0
) -> list[np.ndarray]:
    """The step's all-reduces, retried until they succeed in one epoch; returns their results."""
    while True:
        world, rank = comm.world_size, comm.rank
        buffers = [make_input(revision, tag, rank, size) for tag in range(concurrency)]
        works = []
        aborted = False
        try:
            for tag in range(concurrency):
                kind = OPERATIONS[tag % len(OPERATIONS)]
                works.append(comm.all_reduce_async(buffers[tag], op=kind[1], tag=tag, dtype=kind[0]))
        except Aborted as error:
            aborted = True  # the group changed since this peer's last operation
            counters["aborts"] += 1
            _emit({"aborted": f"submitting the step, epoch {comm.epoch}: {str(error)[:300]}"})
        for tag, work in enumerate(works):
            try:
                work.wait()
                counters["ops"] += 1
            except Aborted:
                aborted = True
                counters["aborts"] += 1
                # The buffer must hold the input again, bit for bit.
                if not np.array_equal(buffers[tag], make_input(revision, tag, rank, size)):
                    counters["mismatches"] += 1
                    _emit({"mismatch": f"tag {tag}: buffer not restored after Aborted"})
        if aborted:
            continue
        for tag in range(concurrency):
            expected = expected_result(revision, tag, world, size)
            if skew and tag == 0:
                expected = expected + skew
            if not np.array_equal(buffers[tag], expected):
                counters["mismatches"] += 1
                _emit({"mismatch": f"revision {revision} tag {tag}: result differs from the exact sum"})
        return buffers


def peer_session(args: argparse.Namespace, counters: dict, joined_before: bool) -> None:
    comm = Communicator(
        args.master,
        timeout=args.timeout,
        secret=args.secret,
        host=args.host,
        shared_memory=not args.no_shared_memory,
    )
    try:
        comm.connect(timeout=args.timeout)
        _emit(
            {"joined": comm.epoch, "world": comm.world_size, "peer_id": comm.peer_id, "rejoin": joined_before}
        )
        state = SharedState({"w": np.zeros(STATE_ELEMENTS, np.float64)}, revision=0)
        fresh = True
        while True:
            try:
                if comm.pending_peers():
                    comm.update_topology()
                info = comm.sync_shared_state(state)
            except Aborted as error:
                counters["aborts"] += 1
                _emit({"aborted": f"before the step, epoch {comm.epoch}: {str(error)[:300]}"})
                continue
            fetched = info.bytes_received
            skew = 1 if args.check_the_checks else 0
            results = run_step(comm, state.revision, args.size, args.concurrency, counters, skew)
            w = state.arrays["w"]
            np.add(w, results[0][:STATE_ELEMENTS].astype(np.float64), out=w, casting="unsafe")
            np.mod(w, 1000.0, out=w)
            _emit(
                {
                    "revision": state.revision,
                    "epoch": comm.epoch,
                    "world": comm.world_size,
                    "rank": comm.rank,
                    "hash": f"{kernels.hash64(w):016x}",
                    "fetched": fetched,
                    "fresh": fresh,
                    **counters,
                }
            )
            fresh = False
            state.revision += 1
            if args.step_delay:
                time.sleep(args.step_delay)
    finally:
        comm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pycomm.ft._stress_peer")
    parser.add_argument("--master", required=True)
    parser.add_argument("--secret", default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address this peer listens on for its neighbours")
    parser.add_argument("--no-shared-memory", action="store_true", help="all-reduces on TCP even on one host")
    parser.add_argument("--size", type=int, default=1 << 16)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--step-delay", type=float, default=0.0)
    # Expects wrong sums on purpose: shows that a run with wrong results fails.
    parser.add_argument("--check-the-checks", action="store_true")
    args = parser.parse_args(argv)
    # `kill -USR1` prints every thread's stack to stderr: how a hang is diagnosed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    counters = {"ops": 0, "aborts": 0, "mismatches": 0, "evictions": 0}
    joined_before = False
    while True:
        try:
            peer_session(args, counters, joined_before)
        except Evicted as error:
            counters["evictions"] += 1
            _emit({"evicted": str(error)[:200]})
        except CommError as error:
            _emit({"error": f"{type(error).__name__}: {error}"[:500]})
            return 1
        joined_before = True


if __name__ == "__main__":
    sys.exit(main())
