"""The multi-process test harness (``pycomm.testing``): MPI jobs, local peers, ports, cleanup.

The functions above the tests run in child processes (the harness loads this file there by path).
Every check is about behaviour: what each child printed, returned and how it ended, and that no
process survives its launch. Nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import pycomm
from pycomm.errors import CommTimeout, InvalidArgumentError, MissingDependencyError
from pycomm.testing import (
    Code,
    JobFailed,
    JobTimeout,
    LocalCluster,
    Module,
    Script,
    announce,
    announce_port,
    child_environment,
    find_mpiexec,
    pid_alive,
    process_index,
    run_mpi,
    spawn_process,
)
from pycomm.testing import environment as harness_environment
from pycomm.testing.ft import on_all, wait_until
from pycomm.testing.mpi import mpich_segments

CHECKOUT = Path(__file__).resolve().parent.parent

# ----- code that runs in the children -----


def mpi_allreduce_report(offset: int, lines: int) -> dict[str, int]:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.rank + offset)
    print(f"rank {comm.rank} of {comm.size} total {total}")
    for line in range(lines):
        print(f"rank {comm.rank} line {line}")
    print(f"rank {comm.rank} on stderr", file=sys.stderr)
    return {"rank": comm.rank, "size": comm.size, "total": total}


def mpi_fail_on_rank(failing_rank: int) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    # Printed before the barrier, so every rank has printed before any rank can fail.
    print(f"rank {comm.rank} reached the barrier", flush=True)
    comm.Barrier()
    if comm.rank == failing_rank:
        raise ValueError(f"rank {failing_rank} is broken")
    comm.Barrier()


def mpi_hang(escapee_pid_file: str) -> None:
    """Rank 0 sleeps; the others wait for it in a barrier. Rank 1 also starts a process in a session of
    its own, as a daemon would, which only the launch token ties to the job."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    print(f"rank {comm.rank} pid {os.getpid()} proxy {os.getppid()}", flush=True)
    if comm.rank == 1:
        escapee = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
        )
        Path(escapee_pid_file).write_text(str(escapee.pid))
    if comm.rank == 0:
        time.sleep(300)
    comm.Barrier()


def environment_report() -> dict[str, Any]:
    return {
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "pycomm": pycomm.__file__,
        "index": process_index(),
    }


def ticker(counter_file: str, stop_file: str) -> int:
    """Append a line to ``counter_file`` every few milliseconds until ``stop_file`` appears."""
    announce("ready", os.getpid())
    ticks = 0
    while not os.path.exists(stop_file):
        with open(counter_file, "a") as counter:
            counter.write("tick\n")
        ticks += 1
        time.sleep(0.005)
    return ticks


def sleeper_with_grandchild() -> None:
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    announce("helper", helper.pid)
    time.sleep(300)


def peer_that_fails(index_to_fail: int) -> None:
    me = process_index()
    print(f"peer {me} started", flush=True)
    if me == index_to_fail:
        raise RuntimeError(f"peer {me} gave up")
    print(f"peer {me} waits for a peer that never answers", flush=True)
    time.sleep(300)


def echo_server() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        announce_port(server.getsockname()[1])
        print(f"PORT {server.getsockname()[1]}", flush=True)
        connection, _ = server.accept()
        with connection:
            message = connection.recv(1024)
            connection.sendall(b"echo: " + message)


def sleep_forever() -> None:
    print("going to sleep", flush=True)
    time.sleep(300)


# ----- helpers -----


def line_count(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


# ----- MPI jobs -----


@pytest.mark.parametrize("nprocs", [1, 2, 4, 8])
def test_mpi_job_returns_each_ranks_output_separately(mpi_run: Callable[..., Any], nprocs: int) -> None:
    result = mpi_run(mpi_allreduce_report, nprocs, args=(10,), kwargs={"lines": 50})
    total = sum(rank + 10 for rank in range(nprocs))
    assert result.ok and result.returncode == 0
    assert len(result.ranks) == nprocs
    for rank, outcome in enumerate(result.ranks):
        expected = [f"rank {rank} of {nprocs} total {total}"] + [f"rank {rank} line {i}" for i in range(50)]
        assert outcome.name == f"rank-{rank}"
        assert outcome.stdout.splitlines() == expected
        assert outcome.stderr == f"rank {rank} on stderr\n"
        assert outcome.returncode == 0
        assert outcome.value == {"rank": rank, "size": nprocs, "total": total}
    assert result.values == [ranked.value for ranked in result.ranks]


def test_mpi_script_runs_in_an_empty_directory_with_the_installed_package(
    mpi_run: Callable[..., Any], tmp_path: Path
) -> None:
    script = tmp_path / "report.py"
    script.write_text(
        "import json, os, sys\n"
        "import pycomm\n"
        "from mpi4py import MPI\n"
        "report = [MPI.COMM_WORLD.rank, sys.argv[1:], os.getcwd(), os.listdir('.'), pycomm.__file__]\n"
        "print(json.dumps(report))\n"
    )
    result = mpi_run(Script(script, "--alpha", "2"), 2)
    for rank, outcome in enumerate(result.ranks):
        printed_rank, argv, cwd, listing, package = json.loads(outcome.stdout)
        assert (printed_rank, argv, listing) == (rank, ["--alpha", "2"], [])
        assert Path(cwd).resolve() != CHECKOUT
        assert not Path(package).resolve().is_relative_to(CHECKOUT / "pycomm")


def test_mpi_module_and_code_targets(mpi_run: Callable[..., Any]) -> None:
    result = mpi_run(Module("calendar", "2024", "2"), 2)
    assert all("February 2024" in stdout for stdout in result.stdouts)
    code = "import sys; from mpi4py import MPI; print(MPI.COMM_WORLD.rank, sys.argv)"
    result = mpi_run(Code(code, "x"), 2)
    assert result.stdouts == ["0 ['-c', 'x']\n", "1 ['-c', 'x']\n"]
    # The same target given as python's own arguments.
    assert mpi_run(["-c", code, "x"], 2).stdouts == result.stdouts


def test_mpi_failing_rank_raises_with_every_ranks_output(mpi_run: Callable[..., Any]) -> None:
    segments = mpich_segments()
    with pytest.raises(JobFailed) as raised:
        mpi_run(mpi_fail_on_rank, 3, args=(1,))
    # MPICH's shared-memory segment of the aborted job does not stay in /dev/shm.
    assert mpich_segments() - segments == set()
    error = raised.value
    # The failing rank aborts the job: it ends at once, not at its timeout.
    assert not isinstance(error, JobTimeout)
    message = str(error)
    assert "ValueError: rank 1 is broken" in message
    for rank in range(3):
        assert f"rank {rank} reached the barrier" in message
        assert f"===== rank-{rank}" in message
    assert "mpiexec" in message and " -n 3 " in message
    assert error.mpi is not None and error.mpi.ranks[1].returncode == 1
    assert error.results[1].stderr.rstrip().splitlines()[0] == "Traceback (most recent call last):"


def test_mpi_exit_status_is_reported_per_rank(mpi_run: Callable[..., Any]) -> None:
    code = Code("import sys; from mpi4py import MPI; sys.exit(3 if MPI.COMM_WORLD.rank == 0 else 0)")
    result = mpi_run(code, 2, check=False)
    assert not result.ok and result.returncode != 0
    assert result.ranks[0].returncode == 3
    assert "exit status 3" in result.ranks[0].status()


def test_mpi_hang_times_out_and_leaves_no_process(mpi_run: Callable[..., Any], tmp_path: Path) -> None:
    escapee_file = tmp_path / "escapee.pid"
    with pytest.raises(JobTimeout) as raised:
        mpi_run(mpi_hang, 2, args=(str(escapee_file),), timeout=3)
    error = raised.value
    message = str(error)
    assert "timed out" in message
    assert "mpiexec" in message and " -n 2 " in message
    assert error.mpi is not None
    pids = [error.mpi.launcher_pid]
    for rank, outcome in enumerate(error.results):
        assert outcome.timed_out
        printed = outcome.stdout.split()
        assert printed[:2] == ["rank", str(rank)]
        pids += [int(printed[3]), int(printed[5])]  # the rank and its hydra proxy
        # Each hung rank printed where it was stuck before it was killed.
        assert "most recent call first" in outcome.stderr and "mpi_hang" in outcome.stderr
    pids.append(int(escapee_file.read_text()))
    assert [pid for pid in pids if pid_alive(pid)] == []


def test_find_mpiexec_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No mpiexec beside the interpreter and none on PATH.
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *args, **kwargs: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError) as raised:
        find_mpiexec("a test")
    assert "pip install" in str(raised.value)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(MissingDependencyError) as raised:
        run_mpi(Code("pass"), 1, timeout=5)
    assert "mpi4py" in str(raised.value) and "pip install" in str(raised.value)


# ----- local processes -----


def test_child_environment_is_explicit_and_clean(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYCOMM_TEST_LEAKED_VARIABLE", "1")
    monkeypatch.setenv("PYTHONPATH", str(CHECKOUT))
    monkeypatch.setenv("PYCOMM_TEST_PASSED_ON", "2")
    monkeypatch.setenv("PYCOMM_TESTING_PASS_ENV", "SOMETHING_ELSE, PYCOMM_TEST_PASSED_*")
    first = local_cluster.spawn(environment_report, env={"PYCOMM_TEST_GIVEN": "yes"})
    second = local_cluster.spawn(environment_report)
    reports = [process.wait().value for process in (first, second)]
    assert [report["index"] for report in reports] == [0, 1]
    environ = reports[0]["environ"]
    assert environ["PYCOMM_TEST_GIVEN"] == "yes"
    assert "PYCOMM_TEST_LEAKED_VARIABLE" not in environ and "PYTHONPATH" not in environ
    assert environ["PYCOMM_TEST_PASSED_ON"] == "2"
    assert environ["PYTHONUNBUFFERED"] == "1" and environ["OMP_NUM_THREADS"] == "1"
    assert environ["PATH"].split(os.pathsep)[0] == harness_environment.scripts_directory()
    assert Path(reports[0]["cwd"]).resolve() != CHECKOUT
    assert not Path(reports[0]["pycomm"]).resolve().is_relative_to(CHECKOUT / "pycomm")
    assert child_environment({"OMP_NUM_THREADS": None}).get("OMP_NUM_THREADS") is None


def test_kill_one_peer_survivors_keep_running(local_cluster: LocalCluster, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    counters = [tmp_path / f"counter-{index}" for index in range(3)]
    peers = [local_cluster.spawn(ticker, args=(str(counters[i]), str(stop))) for i in range(3)]
    for peer in peers:
        peer.wait_for_announcement("ready", timeout=10)
    peers[1].kill()
    killed = peers[1].wait()
    assert killed.signal == signal.SIGKILL and killed.killed_by_harness
    assert "SIGKILL" in killed.status()
    before = [line_count(counters[0]), line_count(counters[2])]
    wait_until(
        lambda: line_count(counters[0]) > before[0] + 5 and line_count(counters[2]) > before[1] + 5,
        "the surviving peers tick on",
    )
    assert peers[0].running and peers[2].running
    stop.touch()
    results = local_cluster.wait_all(timeout=20)
    assert [result.returncode for result in results] == [0, -signal.SIGKILL, 0]
    assert results[0].value == line_count(counters[0]) and results[2].value == line_count(counters[2])


def test_stalled_peer_makes_no_progress_until_resumed(local_cluster: LocalCluster, tmp_path: Path) -> None:
    counter, stop = tmp_path / "counter", tmp_path / "stop"
    peer = local_cluster.spawn(ticker, args=(str(counter), str(stop)))
    peer.wait_for_announcement("ready", timeout=10)
    wait_until(lambda: line_count(counter) > 3, "the peer ticks")
    peer.stall()
    assert peer.stalled and peer.running
    stalled_at = line_count(counter)
    time.sleep(0.3)
    assert line_count(counter) == stalled_at
    peer.resume()
    wait_until(lambda: line_count(counter) > stalled_at + 3, "the resumed peer ticks again")
    assert not peer.stalled
    stop.touch()
    assert peer.wait(timeout=20).returncode == 0


def test_failing_peer_raises_with_every_peers_output(local_cluster: LocalCluster) -> None:
    peers = local_cluster.spawn_many(3, peer_that_fails, args=(2,))
    for peer in peers[:2]:
        peer.wait_for_line(r"^peer \d waits", timeout=10)
    with pytest.raises(JobFailed) as raised:
        local_cluster.wait_all(timeout=20)
    assert not isinstance(raised.value, JobTimeout)
    message = str(raised.value)
    assert "RuntimeError: peer 2 gave up" in message
    assert "peer 0 waits for a peer that never answers" in message
    assert "peer 1 waits for a peer that never answers" in message
    # The peers left waiting were stopped (with their stacks printed), not left to their timeout.
    results = raised.value.results
    assert [result.returncode for result in results] == [-signal.SIGKILL, -signal.SIGKILL, 1]
    assert "most recent call first" in results[0].stderr
    assert not any(pid_alive(peer.pid) for peer in peers)


def test_process_timeout_kills_it_and_reports_its_stack() -> None:
    with spawn_process(sleep_forever, timeout=1.5) as process:
        process.wait_for_line("going to sleep")
        with pytest.raises(JobTimeout) as raised:
            process.wait()
        assert not pid_alive(process.pid)
    message = str(raised.value)
    assert "killed at its timeout" in message
    assert "going to sleep" in message
    assert "sleep_forever" in message  # from the stack dump
    assert "command: " in message and "_child.py" in message


def test_leaving_the_cluster_on_an_exception_kills_every_descendant(tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt), LocalCluster(timeout=60, workdir=tmp_path) as cluster:
        for peer in cluster.spawn_many(2, sleeper_with_grandchild):
            pids += [peer.pid, int(peer.wait_for_announcement("helper", timeout=10))]
        assert all(pid_alive(pid) for pid in pids)
        raise KeyboardInterrupt
    assert [pid for pid in pids if pid_alive(pid)] == []


def test_children_bind_port_zero_and_announce_it(local_cluster: LocalCluster) -> None:
    server = local_cluster.spawn(echo_server)
    port = server.wait_for_port(timeout=10)
    assert int(server.wait_for_line(r"^PORT (\d+)$").group(1)) == port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"hello")
        assert connection.recv(1024) == b"echo: hello"
    assert server.wait(timeout=10).returncode == 0


def test_free_port_is_bindable(free_port: int) -> None:
    assert 0 < free_port < 65536
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", free_port))


def test_script_and_code_targets_run_locally(local_cluster: LocalCluster, tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello', *sys.argv[1:])\n")
    hello = local_cluster.spawn(Script(script, "a", "b"))
    hello_again = local_cluster.spawn([str(script), "c"])
    failing = local_cluster.spawn(Code("import sys; print('bye', file=sys.stderr); sys.exit(4)"))
    assert hello.wait(timeout=20).stdout == "hello a b\n"
    assert hello_again.wait(timeout=20).stdout == "hello c\n"
    outcome = failing.wait(timeout=20, check=False)
    assert (outcome.returncode, outcome.stderr) == (4, "bye\n")
    with pytest.raises(JobFailed, match="exit status 4"):
        failing.wait()


def test_wait_for_a_line_that_never_comes_fails_fast(local_cluster: LocalCluster) -> None:
    process = local_cluster.spawn(Code("print('nothing to see')"))
    with pytest.raises(JobFailed, match="ended without a line matching") as raised:
        process.wait_for_line("^PORT", timeout=20)
    assert "nothing to see" in str(raised.value)


def test_unusable_targets_are_rejected(local_cluster: LocalCluster) -> None:
    def nested() -> None:
        pass

    with pytest.raises(InvalidArgumentError, match="module level"):
        local_cluster.spawn(nested)
    with pytest.raises(InvalidArgumentError, match="module level"):
        local_cluster.spawn(lambda: None)
    with pytest.raises(InvalidArgumentError, match="argv"):
        local_cluster.spawn(Code("pass"), args=(1,))
    with pytest.raises(InvalidArgumentError, match="interpreter option"):
        local_cluster.spawn(["-X", "dev", "-c", "pass"])
    with pytest.raises(InvalidArgumentError, match="name"):
        local_cluster.spawn(sleep_forever, name="../escape")


def test_on_all_names_the_peer_that_did_not_finish_and_where_it_waits() -> None:
    import threading
    from types import SimpleNamespace

    release = threading.Event()

    def step(comm: Any) -> int:
        if comm.rank == 1:
            release.wait(30)  # the one that hangs
        elif comm.rank == 2:
            raise ValueError("peer 2 gave up")
        return comm.rank

    comms = [SimpleNamespace(rank=rank, epoch=7) for rank in range(3)]
    try:
        with pytest.raises(CommTimeout) as raised:
            on_all(comms, step, timeout=0.5)
    finally:
        release.set()
    message = str(raised.value)
    assert "peer(s) [1] did not finish within 0.5 s" in message
    assert "peer 1 (epoch 7) waits in:" in message and "release.wait(30)" in message
    assert "peer 0 (epoch 7) ended with None" in message
    assert "peer 2 (epoch 7) ended with ValueError('peer 2 gave up')" in message
