"""``pycomm bench torch``: a quick run at 2 ranks has every row, positive figures that follow from the
raw timings, and every all_reduce checked; bad options are refused before any job starts.

Timings are machine noise here and never asserted, nor are the ratios or which backend won.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from pycomm.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_run import run_bench

pytest.importorskip("torch")
pytest.importorskip("mpi4py")

QUICK_DEADLINE_S = 120
SIZES = (4096, 65536 + 12)
WIDTH = 32
REPEAT = 3


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    return run_bench(
        [
            "torch",
            "--quick",
            "--ranks",
            "2",
            "--sizes",
            ",".join(map(str, SIZES)),
            "--width",
            str(WIDTH),
            "--repeat",
            str(REPEAT),
        ],
        tmp_path_factory.mktemp("bench-torch"),
        QUICK_DEADLINE_S,
    )


@pytest.mark.mpi
@pytest.mark.slow
def test_quick_run_has_every_row(quick_run: tuple[dict[str, Any], str]) -> None:
    document, stdout = quick_run
    assert document["benchmark"] == "torch"
    assert {"cpu_model", "usable_cores", "pycomm", "date"} <= set(document["machine"])
    assert document["options"]["ranks"] == [2] and document["options"]["quick"] is True
    assert document["versions"]["torch"] and document["versions"]["torch_threads"] == 1
    rows = [(row["ranks"], row["size_bytes"]) for row in document["all_reduce"]]
    assert rows == [(2, size) for size in SIZES]
    assert [row["ranks"] for row in document["ddp"]] == [2]
    assert "pycomm/gloo" in stdout and "faster" in stdout


@pytest.mark.mpi
@pytest.mark.slow
def test_quick_all_reduce_figures_are_positive_and_checked(quick_run: tuple[dict[str, Any], str]) -> None:
    document, _ = quick_run
    for row in document["all_reduce"]:
        size = row["size_bytes"]
        assert row["elements"] * 4 == size
        assert row["bus_bytes"] == pytest.approx(size)  # 2 (n - 1) / n = 1 at 2 ranks
        for name in ("pycomm", "gloo"):
            entry = row["results"][name]
            times = entry["seconds_per_call"]
            assert len(times) == REPEAT and all(t > 0 for t in times)
            assert entry["median_s"] == statistics.median(times)
            assert entry["latency_us"] == pytest.approx(entry["median_s"] * 1e6)
            assert entry["gbps"] == pytest.approx(row["bus_bytes"] / entry["median_s"] / 1e9)
            assert entry["gbps"] > 0 and entry["calls_per_repeat"] >= 1
            # Calibration, warm-up and the measured repetitions were all checked.
            assert entry["verified"]["ok"] is True
            assert entry["verified"]["checked_calls"] >= 1 + (REPEAT + 1) * entry["calls_per_repeat"]
        ratio = row["ratio_pycomm_over_gloo"]
        assert ratio == pytest.approx(row["results"]["pycomm"]["gbps"] / row["results"]["gloo"]["gbps"])
        assert row["faster"] in ("pycomm", "gloo", "tie")


@pytest.mark.mpi
@pytest.mark.slow
def test_quick_ddp_steps_are_positive_and_ranks_agree(quick_run: tuple[dict[str, Any], str]) -> None:
    document, _ = quick_run
    (row,) = document["ddp"]
    assert row["model"]["width"] == WIDTH and row["model"]["layers"] == 3
    assert row["model"]["parameters"] == 3 * (WIDTH * WIDTH + WIDTH)
    for name in ("pycomm", "gloo"):
        entry = row["results"][name]
        assert len(entry["seconds_per_call"]) == REPEAT
        assert entry["median_s"] == statistics.median(entry["seconds_per_call"])
        assert row["same_parameters_on_every_rank"][name] is True
    assert row["steps"] >= 1 + (REPEAT + 1) * row["results"]["pycomm"]["calls_per_repeat"]
    assert row["ratio_pycomm_over_gloo"] > 0 and row["faster"] in ("pycomm", "gloo", "tie")
    # At 2 ranks a sum of two gradients has one order: both copies train to the same bits.
    assert row["max_abs_difference"] == 0


@pytest.mark.parametrize(
    "argv",
    [["--ranks", "1"], ["--ranks", "two"], ["--sizes", "6"], ["--width", "0"], ["--repeat", "0"]],
)
def test_bad_options_are_refused_before_any_job(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["bench", "torch", *argv]) == 2
    assert "pycomm bench: error:" in err.getvalue()
