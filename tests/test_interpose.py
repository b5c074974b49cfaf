"""The MPI datatype interposer (libpycomm_interpose.so) under mpiexec: preloaded into a C program and
into mpi4py programs, on both ranks or on one, it must leave every received byte, packed byte, count
and position exactly as MPICH alone produces them, while its counters show that pycomm did the work
(including mpi4py 4's large-count MPI_X_c calls).

Reference results come from the same programs run without the interposer; the mpi4py program and
the halo exchange also check their data against values computed with numpy.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import pycomm
from pycomm.cli import main as cli_main
from pycomm.errors import MissingDependencyError, NotSupportedError
from pycomm.testing import child_environment, run_mpi

HERE = Path(__file__).resolve().parent
C_PROGRAM = HERE / "interpose" / "datatypes.c"

# Every wrapped function, by the name the counters use.
WRAPPED = [
    "MPI_Type_commit",
    "MPI_Type_free",
    *(
        f"MPI_{name}{suffix}"
        for name in (
            "Pack",
            "Unpack",
            "Pack_size",
            "Send",
            "Recv",
            "Isend",
            "Irecv",
            "Sendrecv",
            "Neighbor_alltoallw",
        )
        for suffix in ("", "_c")
    ),
    *(
        f"MPI_{name}"
        for name in (
            "Wait",
            "Waitall",
            "Waitany",
            "Waitsome",
            "Test",
            "Testall",
            "Testany",
            "Testsome",
            "Request_free",
            "Finalize",
        )
    ),
]


def _interposer() -> str:
    try:
        return pycomm.interposer_path()
    except NotSupportedError as error:
        pytest.skip(str(error))


def _mpiexec() -> str:
    try:
        from pycomm.testing import find_mpiexec

        return find_mpiexec("the interposer tests")
    except (MissingDependencyError, NotSupportedError) as error:
        pytest.skip(str(error))


# --- the library itself ----------------------------------------------------------------------------


def test_interposer_exports_every_wrapper_and_its_counters() -> None:
    library = ctypes.CDLL(_interposer())  # RTLD_LOCAL: loaded for inspection, interposes nothing here
    for name in WRAPPED:
        assert hasattr(library, name), name
    read = library.pycomm_interpose_counters
    read.restype = ctypes.c_size_t
    read.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    length = read(None, 0)
    text = ctypes.create_string_buffer(length + 1)
    assert read(text, length + 1) == length
    counters = json.loads(text.value)
    assert sorted(counters["functions"]) == sorted(WRAPPED)
    # A buffer that is too small gets a cut, NUL-terminated prefix and the full length.
    short = ctypes.create_string_buffer(8)
    assert read(short, 8) == length
    assert short.value == text.value[:7]


def test_interposer_is_built_against_headers_only() -> None:
    # The program brings its libmpi; the interposer must not pull one in (whose copy may differ).
    readelf = shutil.which("readelf") or shutil.which("objdump")
    if readelf is None:
        pytest.skip("neither readelf nor objdump is installed")
    flags = ["-d"] if readelf.endswith("readelf") else ["-p"]
    dynamic = subprocess.run(
        [readelf, *flags, _interposer()], capture_output=True, text=True, check=True
    ).stdout
    needed = [line for line in dynamic.splitlines() if "NEEDED" in line]
    assert needed and not any("libmpi" in line for line in needed), needed


def test_info_reports_the_interposer() -> None:
    assert pycomm.info()["interposer"] == {"available": True, "path": _interposer()}


def test_interposer_path_says_when_pycomm_was_built_without_mpi_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pycomm.info is also the name of a function on the package: fetch the module itself.
    info_module = importlib.import_module("pycomm.info")
    monkeypatch.setattr(info_module.os.path, "isfile", lambda path: False)
    monkeypatch.setattr(info_module, "core", SimpleNamespace(build_info=lambda: {"mpi_headers": False}))
    with pytest.raises(NotSupportedError, match="built without MPI headers"):
        pycomm.interposer_path()
    monkeypatch.setattr(info_module, "core", SimpleNamespace(build_info=lambda: {"mpi_headers": True}))
    with pytest.raises(NotSupportedError, match="is missing"):
        pycomm.interposer_path()


# --- the command line --------------------------------------------------------------------------------


def test_cli_preloads_before_an_existing_preload_and_returns_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _interposer()
    monkeypatch.setenv("LD_PRELOAD", "libm.so.6")
    show = (
        "import os, sys; print(os.environ['LD_PRELOAD']); print(os.environ['PYCOMM_INTERPOSE_PACK']); "
        "sys.exit(3)"
    )
    report = tmp_path / "report.json"
    status = cli_main(["interpose", "--no-pack", "--json", str(report), "--", sys.executable, "-c", show])
    assert status == 3
    printed = capfd.readouterr().out.splitlines()
    assert printed[:2] == [f"{path}:libm.so.6", "0"]
    written = json.loads(report.read_text())
    assert written["returncode"] == 3
    assert written["environment"]["PYCOMM_INTERPOSE_PACK"] == "0"
    assert written["counters"] == {}  # no MPI program, no counters


def test_cli_without_a_command_is_a_usage_error(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["interpose"]) == 2
    assert "no command given" in capfd.readouterr().err


def test_cli_reports_a_missing_command(capfd: pytest.CaptureFixture[str]) -> None:
    _interposer()
    assert cli_main(["interpose", "--", "/nonexistent/program"]) == 2
    assert "command not found" in capfd.readouterr().err


def test_cli_help_names_the_switches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["interpose", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--off", "--no-types", "--no-pack", "--no-send", "--min-bytes", "--counters", "--json"):
        assert option in text


# --- a C program, preloaded on both ranks or one -----------------------------------------------------


def exec_rank(program: str, arguments: list[str], preloaded_ranks: list[int], library: str) -> None:
    """Becomes ``program`` on this rank, with the interposer preloaded only on ``preloaded_ranks``.

    Hydra starts every rank with one environment; replacing the harness's Python rank by the C
    program (same process, same PMI connection, same output files) lets each rank choose its own.
    """
    environment = dict(os.environ)
    environment.pop("LD_PRELOAD", None)
    if int(os.environ["PMI_RANK"]) in preloaded_ranks:
        environment["LD_PRELOAD"] = library
    os.execve(program, [program, *arguments], environment)


@pytest.fixture(scope="module")
def c_program(tmp_path_factory: pytest.TempPathFactory) -> str:
    mpicc = Path(_mpiexec()).with_name("mpicc")
    if not mpicc.exists():
        pytest.skip(f"no mpicc beside {_mpiexec()}")
    binary = tmp_path_factory.mktemp("interpose-c") / "datatypes"
    compiled = subprocess.run(
        [str(mpicc), "-O1", "-Wall", "-o", str(binary), str(C_PROGRAM)], capture_output=True, text=True
    )
    if compiled.returncode != 0:
        pytest.skip(f"mpicc could not build the test program: {compiled.stderr.strip()[-500:]}")
    return str(binary)


def _run_c(
    program: str, directory: Path, preloaded_ranks: list[int], env: dict[str, str] | None = None
) -> None:
    directory.mkdir()
    run_mpi(
        exec_rank,
        2,
        args=(program, [str(directory)], preloaded_ranks, _interposer()),
        env={"PYCOMM_INTERPOSE_COUNTERS": str(directory / "counters-%r.json"), **(env or {})},
        timeout=90,
    )


@pytest.fixture(scope="module")
def c_reference(c_program: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("interpose-c-reference") / "out"
    _run_c(c_program, directory, preloaded_ranks=[])
    return directory


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("preloaded_ranks", [[0, 1], [0], [1]], ids=["both", "sender-only", "receiver-only"])
def test_c_program_receives_what_mpich_alone_delivers(
    c_program: str, c_reference: Path, tmp_path: Path, preloaded_ranks: list[int]
) -> None:
    directory = tmp_path / "out"
    _run_c(c_program, directory, preloaded_ranks)
    for rank in (0, 1):
        reference = (c_reference / f"rank-{rank}.txt").read_text().splitlines()
        produced = (directory / f"rank-{rank}.txt").read_text().splitlines()
        assert len(produced) == len(reference)
        different = [(want, got) for want, got in zip(reference, produced) if want != got]
        assert not different, f"rank {rank}: {len(different)} results differ, first: {different[0]}"
    # The reference itself moved data: the receiver's buffers are not left untouched.
    received = [line for line in reference if line.startswith("recv[")]
    assert received and all(line.split()[1].strip("e") for line in received)
    for rank in preloaded_ranks:
        counters = json.loads((directory / f"counters-{rank}.json").read_text())
        assert counters["events"]["types_cached"] == 7
        assert counters["events"]["fallbacks"] == 0
        assert counters["pending_requests"] == 0
        handled = {name: entry["handled"] for name, entry in counters["functions"].items()}
        assert handled["MPI_Pack"] > 0 and handled["MPI_Unpack"] > 0 and handled["MPI_Pack_c"] > 0
        assert handled["MPI_Sendrecv"] > 0 and handled["MPI_Neighbor_alltoallw"] > 0
        if rank == 0:
            assert handled["MPI_Send"] > 0 and handled["MPI_Isend"] > 0
        else:
            assert handled["MPI_Recv"] > 0 and handled["MPI_Irecv"] > 0
            for completion in ("MPI_Wait", "MPI_Waitall", "MPI_Waitany", "MPI_Waitsome", "MPI_Testall"):
                assert handled[completion] > 0, completion
    for rank in {0, 1} - set(preloaded_ranks):
        assert not (directory / f"counters-{rank}.json").exists()


# --- mpi4py programs ---------------------------------------------------------------------------------

OBJECTS = 3
UNTOUCHED = 0xEE


def _type_cases(mpi: Any) -> list[tuple[str, Any, list[tuple[int, int]]]]:
    """(name, committed datatype, its data blocks (offset, length) in MPI's typemap order)."""
    return [
        ("vector", mpi.INT.Create_vector(7, 3, 5), [(j * 20, 12) for j in range(7)]),
        (
            "subarray_c",
            mpi.DOUBLE.Create_subarray([6, 5, 4], [3, 2, 3], [1, 2, 1]),
            [(((z * 5 + y) * 4 + 1) * 8, 24) for z in range(1, 4) for y in range(2, 4)],
        ),
        (
            "subarray_fortran",
            mpi.FLOAT.Create_subarray([5, 7], [3, 4], [2, 1], order=mpi.ORDER_FORTRAN),
            [((column * 5 + 2) * 4, 12) for column in range(1, 5)],
        ),
        (
            "indexed",
            mpi.INT.Create_indexed([2, 1, 3, 1], [9, 0, 4, 14]),
            [(36, 8), (0, 4), (16, 12), (56, 4)],
        ),
        (
            "struct",
            mpi.Datatype.Create_struct([1, 2, 1], [0, 8, 24], [mpi.INT, mpi.DOUBLE, mpi.CHAR]),
            [(0, 4), (8, 16), (24, 1)],
        ),
        ("hindexed", mpi.DOUBLE.Create_hindexed([1, 2], [24, 0]), [(24, 8), (0, 16)]),
    ]


def _expected(pattern: Any, blocks: list[tuple[int, int]], extent: int) -> tuple[Any, bytes]:
    """What a receive of OBJECTS objects leaves in an untouched buffer, and MPI_Pack's bytes."""
    import numpy as np

    received = np.full_like(pattern, UNTOUCHED)
    packed = bytearray()
    for index in range(OBJECTS):
        for offset, length in blocks:
            start = index * extent + offset
            received[start : start + length] = pattern[start : start + length]
            packed += pattern[start : start + length].tobytes()
    return received, bytes(packed)


def _read_counters() -> dict[str, Any] | None:
    try:
        read = ctypes.CDLL(None).pycomm_interpose_counters
    except AttributeError:
        return None  # not preloaded
    read.restype = ctypes.c_size_t
    read.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    length = read(None, 0)
    text = ctypes.create_string_buffer(length + 1)
    read(text, length + 1)
    return json.loads(text.value)


def datatype_exchange(disabled_ranks: list[int]) -> dict[str, Any]:
    """Moves each type between ranks 0 and 1 with Send/Recv, Isend/Irecv (Waitall, Wait, Test) and
    Sendrecv, and packs it with Pack/Unpack, checking every byte against numpy. Returns digests of
    what arrived and this rank's interposer counters (None without the interposer)."""
    if int(os.environ["PMI_RANK"]) in disabled_ranks:
        os.environ["PYCOMM_INTERPOSE"] = "0"  # read at the first MPI call, which is still to come
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    digests: dict[str, str] = {}

    def check(name: str, got: Any, want: Any) -> None:
        got_bytes = bytes(got)
        assert got_bytes == bytes(want), (
            f"{name}: {sum(a != b for a, b in zip(got_bytes, bytes(want)))} bytes differ"
        )
        digests[name] = hashlib.sha256(got_bytes).hexdigest()

    for case, (name, datatype, blocks) in enumerate(_type_cases(MPI)):
        datatype.Commit()
        lower_bound, extent = datatype.Get_extent()
        assert lower_bound == 0
        nbytes = OBJECTS * extent
        patterns = [((np.arange(nbytes) * 7 + 11 * seed + case) % 251).astype(np.uint8) for seed in (0, 1)]
        if rank == 0:
            comm.Send([patterns[0], OBJECTS, datatype], 1, 10 * case)
            requests = [comm.Isend([patterns[0], OBJECTS, datatype], 1, 10 * case + k) for k in (1, 2, 3)]
            MPI.Request.Waitall(requests)
        elif rank == 1:
            want, _ = _expected(patterns[0], blocks, extent)
            received = np.full(nbytes, UNTOUCHED, np.uint8)
            status = MPI.Status()
            comm.Recv([received, OBJECTS, datatype], 0, 10 * case, status)
            check(f"{name}.recv", received, want)
            assert status.Get_count(datatype) == OBJECTS
            assert status.Get_source() == 0
            buffers = [np.full(nbytes, UNTOUCHED, np.uint8) for _ in range(3)]
            requests = [comm.Irecv([buffers[k - 1], OBJECTS, datatype], 0, 10 * case + k) for k in (1, 2, 3)]
            statuses = [MPI.Status() for _ in requests]
            MPI.Request.Waitall(requests[:1], statuses[:1])
            requests[1].Wait()
            while not requests[2].Test():
                pass
            for k, buffer in enumerate(buffers):
                check(f"{name}.irecv{k}", buffer, want)
            assert statuses[0].Get_count(datatype) == OBJECTS
        if rank < 2:
            peer = 1 - rank
            want, _ = _expected(patterns[peer], blocks, extent)
            received = np.full(nbytes, UNTOUCHED, np.uint8)
            comm.Sendrecv(
                [patterns[rank], OBJECTS, datatype],
                peer,
                100 + case,
                [received, OBJECTS, datatype],
                peer,
                100 + case,
            )
            check(f"{name}.sendrecv{rank}", received, want)
        want, want_packed = _expected(patterns[0], blocks, extent)
        packed = np.full(datatype.Pack_size(OBJECTS, comm) + 5, UNTOUCHED, np.uint8)
        position = datatype.Pack(patterns[0], packed[5:], 0, comm)
        assert position == len(want_packed)
        check(f"{name}.pack", packed[5 : 5 + position], want_packed)
        unpacked = np.full(nbytes, UNTOUCHED, np.uint8)
        assert datatype.Unpack(packed[5:], 0, unpacked, comm) == position
        check(f"{name}.unpack", unpacked, want)
        datatype.Free()
    return {"digests": digests, "counters": _read_counters()}


def _run_exchange(env: dict[str, str], disabled_ranks: list[int] = ()) -> list[dict[str, Any]]:
    return run_mpi(datatype_exchange, 2, args=(list(disabled_ranks),), env=env, timeout=90).values


@pytest.fixture(scope="module")
def exchange_reference() -> list[dict[str, Any]]:
    values = _run_exchange({})
    assert all(value["counters"] is None for value in values)
    return values


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("disabled_ranks", [[], [1], [0]], ids=["both", "sender-only", "receiver-only"])
def test_mpi4py_types_arrive_exactly_and_the_large_count_calls_are_caught(
    exchange_reference: list[dict[str, Any]], disabled_ranks: list[int]
) -> None:
    values = _run_exchange({"LD_PRELOAD": _interposer()}, disabled_ranks)
    for rank, (value, reference) in enumerate(zip(values, exchange_reference)):
        assert value["digests"] == reference["digests"]
        counters = value["counters"]
        assert counters is not None, "the interposer was not preloaded"
        handled = {name: entry["handled"] for name, entry in counters["functions"].items()}
        calls = {name: entry["calls"] for name, entry in counters["functions"].items()}
        assert calls["MPI_Pack_c"] == calls["MPI_Unpack_c"] == 6  # mpi4py 4 calls the large-count forms
        assert calls["MPI_Sendrecv_c"] == 6
        if rank in disabled_ranks:
            assert counters["settings"]["enabled"] is False
            assert not any(handled.values()), handled
            assert counters["types_in_cache"] == 0
            continue
        assert counters["events"]["fallbacks"] == 0
        assert handled["MPI_Pack_c"] == handled["MPI_Unpack_c"] == handled["MPI_Sendrecv_c"] == 6
        assert handled["MPI_Type_commit"] == 6
        if rank == 0:
            assert handled["MPI_Send_c"] == 6 and handled["MPI_Isend_c"] == 18
        else:
            assert handled["MPI_Recv_c"] == 6 and handled["MPI_Irecv_c"] == 18
            # Each nonblocking receive was finished by the call that completed it.
            assert handled["MPI_Waitall"] + handled["MPI_Wait"] + handled["MPI_Test"] == 18


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize(
    ("switch", "still_handled", "left_to_mpi"),
    [
        ("PYCOMM_INTERPOSE", [], ["MPI_Type_commit", "MPI_Pack_c", "MPI_Send_c", "MPI_Recv_c"]),
        ("PYCOMM_INTERPOSE_TYPES", [], ["MPI_Type_commit", "MPI_Pack_c", "MPI_Send_c", "MPI_Recv_c"]),
        ("PYCOMM_INTERPOSE_PACK", ["MPI_Sendrecv_c"], ["MPI_Pack_c", "MPI_Unpack_c"]),
        (
            "PYCOMM_INTERPOSE_SEND",
            ["MPI_Pack_c", "MPI_Unpack_c"],
            ["MPI_Sendrecv_c", "MPI_Isend_c", "MPI_Irecv_c"],
        ),
    ],
)
def test_switches_turn_their_part_off(
    exchange_reference: list[dict[str, Any]], switch: str, still_handled: list[str], left_to_mpi: list[str]
) -> None:
    values = _run_exchange({"LD_PRELOAD": _interposer(), switch: "0"})
    for value, reference in zip(values, exchange_reference):
        assert value["digests"] == reference["digests"]
        functions = value["counters"]["functions"]
        for name in left_to_mpi:
            assert functions[name]["handled"] == 0, name
        for name in still_handled:
            assert functions[name]["handled"] > 0, name
        if switch == "PYCOMM_INTERPOSE":
            assert not any(entry["handled"] for entry in functions.values())
            assert functions["MPI_Send_c"]["calls"] + functions["MPI_Recv_c"]["calls"] == 6


# --- the 3-D halo exchange ---------------------------------------------------------------------------


def _halo(method: str, env: dict[str, str]) -> list[dict[str, Any]]:
    from pycomm.benchmarks.halo import run_halo

    return run_mpi(run_halo, 2, args=((6, 5, 4), 2, method, 2), env=env, timeout=90).values


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("method", ["isend", "neighbor"])
def test_halo_exchange_is_identical_with_the_interposer(tmp_path: Path, method: str) -> None:
    reference = _halo(method, {})
    counters = tmp_path / "counters-%r.json"
    interposed = _halo(method, {"LD_PRELOAD": _interposer(), "PYCOMM_INTERPOSE_COUNTERS": str(counters)})
    for without, with_interposer in zip(reference, interposed):
        assert without["correct"] and without["wrong_cells"] == 0
        assert with_interposer["correct"] and with_interposer["wrong_cells"] == 0
        assert with_interposer["sha256"] == without["sha256"]
    for rank in (0, 1):
        written = json.loads((tmp_path / f"counters-{rank}.json").read_text())
        functions = written["functions"]
        assert written["events"]["fallbacks"] == 0
        if method == "isend":
            # 26 receives and 26 sends per exchange, 3 exchanges (one untimed).
            assert functions["MPI_Irecv_c"]["handled"] == functions["MPI_Isend_c"]["handled"] == 78
        else:
            assert functions["MPI_Neighbor_alltoallw_c"]["handled"] == 3


@pytest.mark.mpi
@pytest.mark.slow
def test_cli_runs_an_mpi_program_and_gathers_every_rank_s_counters(tmp_path: Path) -> None:
    mpiexec = _mpiexec()
    _interposer()
    from pycomm.benchmarks import halo

    report = tmp_path / "report.json"
    program = [mpiexec, "-launcher", "fork", "-hosts", "localhost", "-n", "2", sys.executable, halo.__file__]
    completed = subprocess.run(
        [sys.executable, "-m", "pycomm", "interpose", "--json", str(report), "--", *program, "--size", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=child_environment(),
    )
    assert completed.returncode == 0, completed.stderr
    assert "correct" in completed.stdout
    written = json.loads(report.read_text())
    assert sorted(written["counters"]) == ["0", "1"]
    for counters in written["counters"].values():
        # One untimed exchange and the default ten timed ones, 26 neighbours each.
        assert counters["functions"]["MPI_Isend_c"]["handled"] == 26 * 11


def threaded_exchange(threads: int, rounds: int) -> dict[str, Any]:
    """Each of `threads` threads on both ranks commits its own types, moves them with Isend/Irecv and
    Sendrecv on its own tags, packs and unpacks them and frees them, `rounds` times, all at once:
    the interposer's type cache and request table are shared by the threads."""
    import threading

    import numpy as np
    from mpi4py import MPI

    assert MPI.Query_thread() == MPI.THREAD_MULTIPLE
    comm = MPI.COMM_WORLD
    peer = 1 - comm.Get_rank()
    failures: list[str] = []

    def work(thread: int) -> None:
        try:
            for round_ in range(rounds):
                for case, (name, datatype, blocks) in enumerate(_type_cases(MPI)):
                    datatype.Commit()
                    extent = datatype.Get_extent()[1]
                    pattern = ((np.arange(OBJECTS * extent) * 13 + thread + round_ + case) % 251).astype(
                        np.uint8
                    )
                    want, want_packed = _expected(pattern, blocks, extent)
                    tag = (thread * 100 + case) * 2
                    received = np.full_like(pattern, UNTOUCHED)
                    requests = [
                        comm.Irecv([received, OBJECTS, datatype], peer, tag),
                        comm.Isend([pattern, OBJECTS, datatype], peer, tag),
                    ]
                    MPI.Request.Waitall(requests)
                    swapped = np.full_like(pattern, UNTOUCHED)
                    comm.Sendrecv(
                        [pattern, OBJECTS, datatype],
                        peer,
                        tag + 1,
                        [swapped, OBJECTS, datatype],
                        peer,
                        tag + 1,
                    )
                    packed = np.empty(datatype.Pack_size(OBJECTS, comm), np.uint8)
                    position = datatype.Pack(pattern, packed, 0, comm)
                    unpacked = np.full_like(pattern, UNTOUCHED)
                    datatype.Unpack(packed[:position], 0, unpacked, comm)
                    datatype.Free()
                    # Both ranks send the same pattern, so each receives what it would have sent.
                    for what, got, expected in (
                        ("irecv", received, want),
                        ("sendrecv", swapped, want),
                        ("pack", packed[:position], np.frombuffer(want_packed, np.uint8)),
                        ("unpack", unpacked, want),
                    ):
                        if bytes(got) != bytes(expected):
                            failures.append(f"thread {thread} round {round_} {name} {what}")
        except Exception as error:  # reported below, on the main thread
            failures.append(f"thread {thread}: {error!r}")

    workers = [threading.Thread(target=work, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"failures": failures, "counters": _read_counters()}


@pytest.mark.mpi
@pytest.mark.slow
def test_threads_share_the_interposer_safely() -> None:
    values = run_mpi(threaded_exchange, 2, args=(4, 5), env={"LD_PRELOAD": _interposer()}, timeout=120).values
    for value in values:
        assert value["failures"] == []
        counters = value["counters"]
        handled = {name: entry["handled"] for name, entry in counters["functions"].items()}
        assert counters["events"]["fallbacks"] == 0
        # 4 threads x 5 rounds x 6 types, every call handled by pycomm.
        assert handled["MPI_Type_commit"] == handled["MPI_Pack_c"] == handled["MPI_Isend_c"] == 120
        assert handled["MPI_Irecv_c"] == handled["MPI_Sendrecv_c"] == 120
        assert counters["types_in_cache"] == 0  # every type was freed
