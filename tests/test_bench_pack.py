"""``pycomm bench pack``: every shape is there in both directions, its bytes were checked against MPI_Pack
and numpy before timing, every figure follows from the raw timings, and the targets follow from the
ratios.

Timings are machine noise here and never asserted. One ``--quick`` run serves most tests; it runs as a
subprocess (importing ``mpi4py.MPI`` initialises MPI, which this test process should not do) with a
deadline, so a hang fails the test instead of stalling the suite. The in-process runs below block
mpi4py or replace the MPI loader, so they never initialise MPI either.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycomm.benchmarks import Settings
from pycomm.benchmarks import pack as suite

from pycomm._native import core
from pycomm.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_run import run_bench

QUICK_DEADLINE_S = 120
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
ROW_FIELDS = {
    "group",
    "title",
    "shape",
    "direction",
    "layout",
    "block",
    "packed_bytes",
    "buffer_bytes",
    "bytes_check",
    "pycomm",
    "mpi",
    "numpy",
    "memcpy",
    "pycomm_over_mpi",
    "pycomm_over_numpy",
    "of_memcpy",
    "targets",
}
SYSTEMS = ("pycomm", "mpi", "numpy", "memcpy")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    return run_bench(["pack", "--quick"], tmp_path_factory.mktemp("bench-pack"), QUICK_DEADLINE_S)


@pytest.fixture
def no_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs without MPI: mpi4py cannot be imported, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)


def test_quick_json_has_both_directions_of_every_shape(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    assert report["benchmark"] == "pack"
    assert report["options"]["quick"] is True
    assert report["failures"] == []
    assert {"cpu_model", "usable_cores", "numpy", "pycomm", "date"} <= set(report["machine"])
    assert {"gbps", "pycomm_over_mpi", "of_memcpy", "targets", "bytes_check"} <= set(report["definitions"])
    expected = [
        (shape.title, shape.label, direction)
        for shape in suite.pack_shapes(quick=True)
        for direction in ("pack", "unpack")
    ]
    assert [(row["title"], row["shape"], row["direction"]) for row in report["rows"]] == expected
    assert {row["group"] for row in report["rows"]} == set(suite.GROUPS)


def test_quick_rows_were_bytes_checked_and_have_every_field(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    mpi_ran = report["mpi"]["available"]
    assert mpi_ran == HAVE_MPI4PY, report["mpi"]
    for row in report["rows"]:
        assert set(row) >= ROW_FIELDS, row["shape"]
        assert row["bytes_check"]["passed"] is True, row
        assert ("MPI_Pack/MPI_Unpack" in row["bytes_check"]["compared_with"]) == mpi_ran
        assert row["layout"].startswith("[@")
        assert row["packed_bytes"] % row["block"] == 0
        for system in SYSTEMS:
            if system == "mpi" and not mpi_ran:
                assert row["mpi"] is None and row["pycomm_over_mpi"] is None
                continue
            assert row[system]["bus_bytes"] == row["packed_bytes"], (row["shape"], system)


def test_quick_figures_follow_from_the_raw_timings(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    repeat = report["settings"]["repeat"]
    for row in report["rows"]:
        for system in SYSTEMS:
            entry = row[system]
            if entry is None:
                continue
            times = entry["seconds_per_call"]
            assert len(times) == repeat
            assert all(t > 0 and math.isfinite(t) for t in times)
            assert entry["median_s"] == pytest.approx(statistics.median(times), rel=1e-12)
            assert entry["min_s"] <= entry["q1_s"] <= entry["median_s"] <= entry["q3_s"] <= entry["max_s"]
            assert entry["gbps"] == pytest.approx(row["packed_bytes"] / entry["median_s"] / 1e9, rel=1e-12)
        pycomm = row["pycomm"]["median_s"]
        # Same packed bytes on every side: a bandwidth ratio is the inverse ratio of median times.
        assert row["pycomm_over_numpy"] == pytest.approx(row["numpy"]["median_s"] / pycomm, rel=1e-9)
        assert row["of_memcpy"] == pytest.approx(row["memcpy"]["median_s"] / pycomm, rel=1e-9)
        if row["mpi"] is not None:
            assert row["pycomm_over_mpi"] == pytest.approx(row["mpi"]["median_s"] / pycomm, rel=1e-9)


def test_quick_targets_follow_from_the_ratios(quick_run: tuple[dict[str, Any], str]) -> None:
    report, stdout = quick_run
    for row in report["rows"]:
        targets = {target["target"]: target for target in row["targets"]}
        expected = {">=1x MPI"}
        if row["title"].endswith("cube face") and "rows" in row["shape"]:
            expected.add(">=3x MPI")
        if row["block"] >= suite.TARGET_MEMCPY_MIN_BLOCK:
            expected.add(">=0.7 memcpy")
        assert set(targets) == expected, row["shape"]
        for target in targets.values():
            source = row["of_memcpy"] if "memcpy" in target["target"] else row["pycomm_over_mpi"]
            assert target["value"] == source
            assert target["met"] == (None if source is None else source >= target["threshold"])
    assert "PASS" in stdout or "MISS" in stdout
    for text in ("pycomm GB/s", "MPI GB/s", "numpy GB/s", "memcpy GB/s", "x MPI", "of memcpy", "targets"):
        assert text in stdout


def test_quick_commit_times(quick_run: tuple[dict[str, Any], str]) -> None:
    report, stdout = quick_run
    assert [entry["type"] for entry in report["commit"]] == [kind.name for kind in suite.commit_types()]
    for entry in report["commit"]:
        for system in ("pycomm", "mpi"):
            measured = entry[system]
            if measured is None:
                assert system == "mpi" and not report["mpi"]["available"]
                continue
            assert len(measured["commit_s"]) == report["settings"]["repeat"]
            assert measured["commit_median_s"] == pytest.approx(statistics.median(measured["commit_s"]))
            assert measured["types_per_repeat"] >= 3
    assert "type commit" in stdout


def test_without_mpi4py_the_mpi_column_says_why(no_mpi: None, tmp_path: Path) -> None:
    path = tmp_path / "pack.json"
    status, stdout, _ = run_cli("bench", "pack", "--quick", "--groups", "cube", "--json", str(path))
    assert status == 0
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["mpi"]["available"] is False
    assert 'pip install "pycomm[mpi]"' in report["mpi"]["reason"]
    assert "MPI: not run" in stdout and "n/a" in stdout
    for row in report["rows"]:
        assert row["bytes_check"]["passed"] and row["bytes_check"]["compared_with"] == ["numpy"]
        assert row["mpi"] is None and all(t["met"] is None for t in row["targets"] if "MPI" in t["target"])
    assert all(entry["mpi"] is None for entry in report["commit"])


def test_bytes_check_catches_a_misplaced_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = suite.pack_shapes(quick=True, groups=["blocks64"])[0]
    original = suite._strided_view

    def reversed_rows(buffer: np.ndarray, shape: suite.PackShape) -> np.ndarray:
        # The right bytes in the wrong order: numpy now packs other bytes than MPI_Pack would.
        return original(buffer, shape)[::-1]

    monkeypatch.setattr(suite, "_strided_view", reversed_rows)
    with pytest.raises(suite.BytesCheckFailed, match="numpy packs other bytes than pycomm"):
        suite.measure_shape(shape, None, Settings(repeat=1, min_time_s=0.001))


def test_failed_bytes_check_is_loud_and_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def disagree(shape: suite.PackShape, mpi: Any, settings: Settings) -> list[dict[str, Any]]:
        raise suite.BytesCheckFailed(f"{shape.label}: MPI_Pack packs other bytes than pycomm")

    monkeypatch.setattr(suite, "load_mpi", lambda: (None, "not in this test"))
    monkeypatch.setattr(suite, "measure_shape", disagree)
    status, stdout, stderr = run_cli("bench", "pack", "--quick", "--groups", "cube")
    assert status == 1
    assert "bytes check failed" in stderr
    assert "BYTES CHECK FAILED" in stdout and "FAILED: bytes check failed" in stdout


def test_gpu_option_without_a_gpu_says_why(no_mpi: None) -> None:
    if core.build_info()["cuda"]:
        pytest.skip("this build has the CUDA part: --gpu would run the GPU benchmark")
    result = suite.run_gpu(quick=True)
    if "results" in result:
        pytest.skip("a GPU is present")
    assert result.get("skipped")
    status, stdout, _ = run_cli("bench", "pack", "--quick", "--groups", "cube", "--gpu")
    assert status == 0
    assert "GPU pack: skipped:" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--groups", "sphere"], "unsupported shape group sphere"),
        (["--repeat", "0"], "repeat must be at least 1"),
        (["--interposer", "/nowhere.so"], "--interposer is used by --halo only"),
    ],
)
def test_bad_options_are_refused_before_measuring(argv: list[str], message: str) -> None:
    status, stdout, stderr = run_cli("bench", "pack", "--quick", *argv)
    assert status == 2
    assert message in stderr and stdout == ""


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.skipif(not HAVE_MPI4PY, reason='mpi4py is not installed (pip install "pycomm[mpi]")')
def test_halo_runs_under_mpiexec(tmp_path: Path) -> None:
    path = tmp_path / "halo.json"
    command = ["bench", "pack", "--quick", "--groups", "cube", "--halo", "--json", str(path)]
    completed = subprocess.run(
        [sys.executable, "-m", "pycomm", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=QUICK_DEADLINE_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    halo = json.loads(path.read_text(encoding="utf-8"))["halo"]
    assert set(halo["methods"]) == set(suite.HALO_METHODS)
    for method, entry in halo["methods"].items():
        assert "failed" not in entry, entry
        assert entry["mpi"]["correct"] is True and entry["mpi"]["median_s"] > 0, method
        if halo["interposer"] is None:
            assert halo["interposer_missing"]
        else:
            assert entry["interposer"]["correct"] is True and entry["same_bytes"] is True
    assert "halo exchange" in completed.stdout
