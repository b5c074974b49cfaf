"""``pycomm bench`` and the benchmark harness: output structure, derived figures, errors.

Timings are machine noise here: no test asserts a speed, only that every reported figure is
consistent with the raw timings it was derived from, and that the anchors compute what pycomm does.
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pycomm import benchmarks, kernels
from pycomm.cli import main
from pycomm.errors import InvalidArgumentError

suite = benchmarks.reduce
numpy_anchors = benchmarks.numpy_anchors
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    path = tmp_path_factory.mktemp("bench") / "reduce.json"
    status, stdout, _ = run_cli("bench", "reduce", "--quick", "--json", str(path))
    assert status == 0
    return json.loads(path.read_text(encoding="utf-8")), stdout


def expected_cases(sizes: tuple[int, ...]) -> set[tuple[str, str, int]]:
    names: set[tuple[str, str]] = {
        (f"reduce_into {op}", dtype) for op in suite.QUICK_OPS for dtype in suite.QUICK_DTYPES
    }
    names |= {
        (f"{kind} (block {suite.BLOCK_SIZE})", scheme)
        for kind in ("quantize", "dequantize")
        for scheme in kernels.QUANT_SCHEMES
    }
    names |= {("cast from float32", "bfloat16"), ("cast from float32", "float16"), ("hash64", "bytes")}
    return {(name, series, size) for name, series in names for size in sizes}


def check_measurement(entry: dict[str, Any], repeat: int) -> None:
    times = entry["seconds_per_call"]
    assert len(times) == repeat
    assert all(t > 0 and math.isfinite(t) for t in times)
    assert entry["median_s"] == pytest.approx(statistics.median(times), rel=1e-12)
    assert entry["min_s"] <= entry["q1_s"] <= entry["median_s"] <= entry["q3_s"] <= entry["max_s"]
    assert entry["min_s"] == min(times) and entry["max_s"] == max(times)
    assert entry["gbps"] == pytest.approx(entry["bus_bytes"] / entry["median_s"] / 1e9, rel=1e-12)
    assert entry["calls_per_repeat"] >= 1


def test_quick_json_has_every_case_and_machine_info(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    assert report["benchmark"] == "reduce"
    assert {"cpu_model", "cores", "numpy", "date", "build", "kernel_threads"} <= set(report["machine"])
    assert report["machine"]["build"]["kernel_isa_active"] == kernels.isa()
    assert report["settings"]["repeat"] >= 1
    assert {"size_bytes", "bus_bytes", "gbps", "ratio", "of_bound"} <= set(report["definitions"])
    found = {(c["name"], c["series"], c["size_bytes"]) for c in report["cases"]}
    assert found == expected_cases(suite.QUICK_SIZES)
    assert sorted(b["size_bytes"] for b in report["bounds"]) == sorted(suite.QUICK_SIZES)


def test_quick_json_figures_follow_from_the_medians(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    repeat = report["settings"]["repeat"]
    bound_rates: dict[int, list[float]] = {}
    for case in report["cases"]:
        pycomm, bound = case["pycomm"], case["bound"]
        check_measurement(pycomm, repeat)
        check_measurement(bound, repeat)
        assert bound["bus_bytes"] == 2 * case["size_bytes"]
        bound_rates.setdefault(case["size_bytes"], []).append(bound["gbps"])
        assert case["of_bound"] == pytest.approx(pycomm["gbps"] / bound["gbps"], rel=1e-9)
        assert case["anchors"], case["name"]
        for anchor in case["anchors"]:
            check_measurement(anchor, repeat)
            recomputed = (pycomm["bus_bytes"] / pycomm["median_s"]) / (
                anchor["bus_bytes"] / anchor["median_s"]
            )
            assert anchor["ratio"] > 0 and math.isfinite(anchor["ratio"])
            assert anchor["ratio"] == pytest.approx(recomputed, rel=1e-9)
    for summary in report["bounds"]:
        rates = bound_rates[summary["size_bytes"]]
        assert summary["cases"] == len(rates)
        assert summary["gbps_median"] == pytest.approx(statistics.median(rates), rel=1e-12)
        assert summary["gbps_min"] == min(rates) and summary["gbps_max"] == max(rates)


def test_quick_json_declares_bus_bytes(quick_run: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_run
    for case in report["cases"]:
        size, kind = case["size_bytes"], case["params"]["kernel"]
        count = size // 4
        scales = count // suite.BLOCK_SIZE * 4
        quantized = {"int8": count + scales, "int4": count // 2 + scales, "uint8": count + 2 * scales}
        expected = {
            "reduce": 3 * size,
            "cast": size + size // 2,
            "hash": size,
            "quantize": size + quantized.get(case["series"], 0),
            "dequantize": size + quantized.get(case["series"], 0),
        }[kind]
        assert case["pycomm"]["bus_bytes"] == expected, (case["name"], case["series"])
        assert all(anchor["bus_bytes"] == expected for anchor in case["anchors"])


def test_quick_table_names_columns_and_anchors(quick_run: tuple[dict[str, Any], str]) -> None:
    _, stdout = quick_run
    for text in (
        "pycomm GB/s",
        "anchor GB/s",
        "ratio",
        "of bound",
        "memcpy (np.copyto)",
        "zlib.crc32",
        "numpy np.add(out=) float32",
        "bus/size",
    ):
        assert text in stdout


def test_threads_option_is_recorded_and_undone(tmp_path: Path) -> None:
    before = kernels.threads()
    path = tmp_path / "one-thread.json"
    status, _, _ = run_cli(
        "bench",
        "reduce",
        "--quick",
        "--sizes",
        "4KiB",
        "--kernels",
        "hash",
        "--threads",
        "1",
        "--json",
        str(path),
    )
    assert status == 0
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["machine"]["kernel_threads"] == 1 and report["options"]["threads"] == 1
    assert kernels.threads() == before


def test_subprocess_writes_json_to_stdout(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pycomm", "bench", "reduce", "--quick", "--sizes", "4KiB", "--json"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {(c["name"], c["series"], c["size_bytes"]) for c in report["cases"]} == expected_cases((4096,))


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install 'pycomm[plot]')")
def test_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    status, _, _ = run_cli(
        "bench",
        "reduce",
        "--quick",
        "--sizes",
        "4KiB,8KiB",
        "--kernels",
        "reduce,hash",
        "--dtypes",
        "float32",
        "--ops",
        "sum",
        "--plot",
        str(path),
    )
    assert status == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_before_measuring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    status, stdout, stderr = run_cli("bench", "reduce", "--quick", "--plot", str(tmp_path / "x.png"))
    assert status == 2
    assert 'pip install "pycomm[plot]"' in stderr
    assert "measuring" not in stderr and stdout == ""


def test_reduce_refuses_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "reduce", "--quick", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "1000"], "multiple of 1024"),
        (["--sizes", "4KB"], "cannot read the size"),
        (["--dtypes", "complex64"], "unsupported dtype complex64"),
        (["--ops", "avg"], "unsupported op avg"),
        (["--kernels", "fft"], "unsupported kernel group fft"),
        (["--repeat", "0"], "repeat must be at least 1"),
    ],
)
def test_bad_options_are_refused(argv: list[str], message: str) -> None:
    status, _, stderr = run_cli("bench", "reduce", "--quick", *argv)
    assert status == 2
    assert message in stderr


def test_parse_sizes_reads_binary_units() -> None:
    assert benchmarks.parse_size("4KiB") == 4096
    assert benchmarks.parse_size("64M") == 64 << 20
    assert benchmarks.parse_size("12") == 12
    assert benchmarks.parse_sizes("1MiB, 4k,4096") == [4096, 1 << 20]
    with pytest.raises(InvalidArgumentError):
        benchmarks.parse_size("0")


def test_repetitions_are_interleaved_in_rotating_order() -> None:
    calls: list[str] = []

    def slow(label: str) -> None:
        calls.append(label)
        time.sleep(0.002)  # longer than min_time_s: one call a repetition, whatever the machine

    settings = benchmarks.Settings(repeat=3, warmup=1, min_time_s=0.001)
    measured = benchmarks.measure_interleaved(
        [benchmarks.Timed("a", lambda: slow("a"), 1), benchmarks.Timed("b", lambda: slow("b"), 1)], settings
    )
    assert [m.calls_per_repeat for m in measured] == [1, 1]
    assert [len(m.seconds_per_call) for m in measured] == [3, 3]
    # Calibration runs "a" then "b" once each; then 4 rounds (1 warm-up), alternating who goes first.
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]


@pytest.mark.parametrize("scheme", kernels.QUANT_SCHEMES)
def test_numpy_anchors_compute_pycomm_bytes(scheme: str) -> None:
    x = np.random.default_rng(7).standard_normal(4 * suite.BLOCK_SIZE, dtype=np.float32)
    x[: suite.BLOCK_SIZE] = 0  # a block of zeros: scale 0
    x[suite.BLOCK_SIZE : 2 * suite.BLOCK_SIZE] = 3.5  # one repeated value
    q = kernels.quantize(x, scheme, suite.BLOCK_SIZE)
    data, scales, *zero_points = getattr(numpy_anchors, f"quantize_{scheme}")(x, suite.BLOCK_SIZE)
    assert np.array_equal(data.view(np.uint8), q.data.view(np.uint8))
    assert np.array_equal(scales, q.scales)
    if q.zero_points is not None:
        assert np.array_equal(zero_points[0], q.zero_points)
    out = np.empty_like(x)
    extra = () if q.zero_points is None else (q.zero_points,)
    getattr(numpy_anchors, f"dequantize_{scheme}")(q.data, q.scales, *extra, out)
    assert np.array_equal(out, kernels.dequantize(q))


def test_numpy_bfloat16_anchor_rounds_like_cast() -> None:
    x = np.random.default_rng(3).standard_normal(4096, dtype=np.float32) * np.float32(1e3)
    out = np.empty(x.size, np.uint16)
    assert np.array_equal(numpy_anchors.float32_to_bfloat16_bits(x, out), kernels.cast(x, "bfloat16"))
