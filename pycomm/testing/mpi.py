"""``mpiexec -n N`` jobs launched from a test, with per-rank output and a hard deadline.

Each rank runs the harness entry point (:mod:`pycomm.testing._child`), which points the rank's file
descriptors 1 and 2 at its own files before the target starts, so ranks' outputs are never
interleaved and MPICH's own C-level messages land in the right rank's file. What ``mpiexec`` itself
prints (hydra's "BAD TERMINATION" banner, or a rank that could not even start Python) is kept
separately as the launcher's output.

On failure :func:`run_mpi` raises :class:`JobFailed` with every rank's output, the launcher's output
and the command line; when the deadline passes, it asks every rank for its Python stacks, kills
``mpiexec``, its proxies and every rank, and raises :class:`JobTimeout`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pycomm.errors import InvalidArgumentError
from pycomm.testing._child import RECORDS_VARIABLE
from pycomm.testing.environment import child_environment, find_mpiexec, scaled_timeout
from pycomm.testing.process_tree import TOKEN_VARIABLE, dump_python_stacks, kill_tree, wait_gone
from pycomm.testing.results import (
    JobFailed,
    JobTimeout,
    MpiResult,
    ProcessResult,
    format_launcher,
    format_outputs,
)
from pycomm.testing.targets import Target, describe, make_spec
from pycomm.testing.workspace import CHILD_ENTRY_POINT, Workspace, read_text, start_process

DEFAULT_TIMEOUT = 60.0

# Single-host options for MPICH's hydra. "-launcher fork" starts the proxy directly: no ssh, and no
# asking Slurm/PBS for nodes when the test runs inside a batch allocation. "-hosts localhost" puts
# every rank here and makes the proxy call back to "localhost" rather than to the machine's hostname,
# which need not resolve inside a container. Hydra binds no ranks to cores unless asked, so
# oversubscribing (more ranks than cores) needs no flag.
_HYDRA_SINGLE_HOST = ("-launcher", "fork", "-hosts", "localhost")
_SHM_DIRECTORY = "/dev/shm"
_MPICH_SEGMENT_PREFIX = "mpich_shm_"


def run_mpi(
    target: Target,
    nprocs: int,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str | None] | None = None,
    mpiexec_args: Sequence[str] = (),
    workdir: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> MpiResult:
    """Run ``target`` on ``nprocs`` MPI ranks and return each rank's output, exit status and value.

    ``target`` is a module-level function (called on every rank with ``args`` and ``kwargs``; its
    return value comes back in :attr:`MpiResult.values`), or a :class:`Script`, :class:`Code` or
    :class:`Module`. ``timeout`` bounds the whole job (scaled by ``$PYCOMM_TESTING_TIMEOUT_SCALE``);
    ``env`` is applied over :func:`child_environment`; ``mpiexec_args`` go before the program.
    With ``check`` a failed job raises :class:`JobFailed` (:class:`JobTimeout` past the deadline);
    without it the result reports the failure. Raises :class:`~pycomm.errors.MissingDependencyError`
    where mpi4py or MPICH's ``mpiexec`` is not installed.
    """
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise InvalidArgumentError(f"nprocs must be a positive int, got {nprocs!r}")
    mpiexec = find_mpiexec("pycomm.testing.run_mpi")
    spec = {**make_spec(target, args, kwargs), "mpi": True}
    workspace = Workspace(workdir, "mpi")
    try:
        spec_path = workspace.write_spec("job", spec)
        program = [sys.executable, CHILD_ENTRY_POINT, spec_path]
        command = [mpiexec, *_HYDRA_SINGLE_HOST, "-n", str(nprocs), *mpiexec_args, *program]
        limit = scaled_timeout(timeout)
        result = _launch(command, nprocs, workspace, env, limit)
        if check and not result.ok:
            raise _failure(result, describe(spec), limit)
        return result
    finally:
        workspace.cleanup()


def _launch(
    command: list[str], nprocs: int, workspace: Workspace, env: Mapping[str, str | None] | None, limit: float
) -> MpiResult:
    token = uuid.uuid4().hex
    environment = child_environment(
        {**(env or {}), RECORDS_VARIABLE: workspace.records, TOKEN_VARIABLE: token}
    )
    timed_out = False
    segments_before = mpich_segments()
    started = time.monotonic()
    launcher_out, launcher_err = workspace.path("mpiexec", "out"), workspace.path("mpiexec", "err")
    launcher = start_process(command, workspace.cwd, environment, launcher_out, launcher_err)
    try:
        returncode: int | None = launcher.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        dump_python_stacks(
            [(pid, workspace.path(f"rank-{rank}", "err")) for rank, pid in _rank_pids(workspace, nprocs)]
        )
        returncode = None
    finally:
        # Also on success and on KeyboardInterrupt: hydra's proxy and ranks sit in sessions of their own,
        # so only the token finds a rank (or a helper a rank forked) that the launcher left behind.
        unreaped = launcher.returncode is None
        killed = kill_tree(
            launcher.pid if unreaped else None, token, session=launcher.pid if unreaped else None
        )
        launcher.wait()
        wait_gone(killed, timeout=10.0)
        _remove_orphaned_segments(segments_before)
    elapsed = time.monotonic() - started
    return MpiResult(
        command=command,
        launcher_pid=launcher.pid,
        returncode=returncode,
        ranks=[_rank_result(workspace, rank, returncode, elapsed, timed_out) for rank in range(nprocs)],
        launcher_stdout=read_text(workspace.path("mpiexec", "out")),
        launcher_stderr=read_text(workspace.path("mpiexec", "err")),
        elapsed=elapsed,
        timed_out=timed_out,
    )


def mpich_segments() -> set[str]:
    """Names of MPICH's shared-memory segments in /dev/shm."""
    try:
        return {name for name in os.listdir(_SHM_DIRECTORY) if name.startswith(_MPICH_SEGMENT_PREFIX)}
    except OSError:
        return set()


def _remove_orphaned_segments(before: set[str]) -> None:
    """Removes the MPICH segments a job made and left behind: a rank that dies or exits without
    MPI_Finalize leaves its node's segment in /dev/shm, where it holds memory until the next boot.
    A segment that some process still maps belongs to a job that is running, and stays."""
    new = mpich_segments() - before
    if not new:
        return
    mapped = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if _SHM_DIRECTORY + "/" in line:
                    mapped.add(line.rsplit("/", 1)[-1].removesuffix(" (deleted)\n").strip())
    for name in new - mapped:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_SHM_DIRECTORY, name))


def _rank_pids(workspace: Workspace, nprocs: int) -> list[tuple[int, int]]:
    pids = []
    for rank in range(nprocs):
        text = read_text(workspace.path(f"rank-{rank}", "pid")).strip()
        if text:
            pids.append((rank, int(text)))
    return pids


def _rank_result(
    workspace: Workspace, rank: int, job_status: int | None, elapsed: float, timed_out: bool
) -> ProcessResult:
    name = f"rank-{rank}"
    pid_text = read_text(workspace.path(name, "pid")).strip()
    status_text = read_text(workspace.path(name, "exit")).strip()
    if status_text:
        returncode: int | None = int(status_text)
    else:
        # No record: the rank was killed, or ended through os._exit. Hydra exits 0 only when every
        # rank did, so a successful job vouches for the rank.
        returncode = 0 if job_status == 0 else None
    value = workspace.read_value(name) if returncode == 0 else None
    return ProcessResult(
        name=name,
        pid=int(pid_text) if pid_text else None,
        returncode=returncode,
        stdout=read_text(workspace.path(name, "out")),
        stderr=read_text(workspace.path(name, "err")),
        elapsed=elapsed,
        timed_out=timed_out and returncode is None,
        value=value,
    )


def _failure(result: MpiResult, target: str, limit: float) -> JobFailed:
    if result.timed_out:
        headline = (
            f"mpiexec job timed out after {limit:g} s; killed mpiexec and all {len(result.ranks)} ranks"
        )
    else:
        failed = [f"{rank.name} {rank.status()}" for rank in result.ranks if not rank.ok]
        headline = f"mpiexec job failed: mpiexec exit status {result.returncode}"
        if failed:
            headline += "; " + "; ".join(failed)
    message = "\n".join(
        [
            headline,
            f"command: {shlex.join(result.command)}",
            f"target: {target}",
            f"elapsed: {result.elapsed:.2f} s (timeout {limit:g} s)",
            format_outputs(result.ranks),
            format_launcher(result.launcher_stdout, result.launcher_stderr),
        ]
    )
    kind = JobTimeout if result.timed_out else JobFailed
    return kind(message, result.ranks, mpi=result)
