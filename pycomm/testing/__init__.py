"""A harness for tests that need more than one process: ``mpiexec`` jobs and local peer processes.

What it gives a test:

- :func:`run_mpi` runs a function, script, ``-c`` code or module on N MPI ranks under MPICH's
  ``mpiexec`` and returns each rank's stdout, stderr, exit status and return value separately;
- :class:`LocalCluster` / :func:`spawn_process` run local Python children that a test can SIGKILL,
  stall (SIGSTOP) and resume (SIGCONT) at will, to see what their peers observe;
- :func:`free_port`, and the race-free handshake in which a child binds port 0 and announces the port
  (:func:`announce_port` in the child, :meth:`LocalProcess.wait_for_port` in the parent);
- pytest fixtures (``mpi_run``, ``local_cluster``, ``free_port``) in :mod:`pycomm.testing.pytest_plugin`.

Guarantees: every launch has a deadline; a failure or timeout raises :class:`JobFailed` /
:class:`JobTimeout` whose message holds the command line and every child's labelled output (cut to
its last lines), with each hung child's Python stacks; no launched process, nor anything it started,
outlives the launch (see :mod:`pycomm.testing.process_tree` for how). Children run in an empty
temporary working directory, so a source checkout's ``pycomm/`` (which has no compiled core) never
shadows the installed package, with an explicit environment (:func:`child_environment`): an
allow-list of the parent's variables (``PATH``, ``HOME``, locale ...), this interpreter's scripts
directory first on ``PATH``, ``PYTHONUNBUFFERED=1``, ``PYTHONFAULTHANDLER=1`` and one OpenMP/BLAS
thread. Two variables tune the harness on a given machine: ``PYCOMM_TESTING_TIMEOUT_SCALE`` (e.g.
``3``) stretches every harness timeout, and ``PYCOMM_TESTING_PASS_ENV`` (e.g. ``"UCX_TLS,FI_*"``)
passes more of the parent's variables to children.

MPICH's hydra on one host, as found with the mpich 5 wheel in a sandboxed 2-core VM:

- ``mpiexec -launcher fork -hosts localhost -n N`` is all a single-host job needs. ``fork`` never uses
  ssh and ignores batch-system allocations; ``-hosts localhost`` makes the proxy connect back to
  ``localhost`` rather than to the hostname (which need not resolve in a container). Hydra binds no
  rank to a core unless asked, so oversubscription (``-n 8`` on 2 cores) works without flags; ranks
  busy-poll, which costs time, not correctness. No ``MPIR_CVAR_*`` or ``HYDRA_*`` setting was needed,
  and the child environment drops inherited ones (and ``SLURM_*``/``PBS_*``) so that a developer's
  shell cannot change what a test does.
- ``hydra_pmi_proxy`` and every rank call ``setsid()``: killing ``mpiexec``'s process group does not
  reach the ranks. The harness finds them through a per-launch token in their environment.
- Hydra forwards SIGINT/SIGTERM to the ranks, and a rank that ignores them keeps the job alive, so a
  timeout ends in SIGKILL. After a SIGKILL of ``mpiexec`` alone the proxy did kill its ranks, but the
  harness does not rely on that.
- A rank that raises after ``MPI_Init`` does not end the job: mpi4py's ``atexit`` ``MPI_Finalize``
  then waits for ranks that wait for it in a collective, until the timeout. The harness's entry point
  calls ``MPI_Abort`` after printing the traceback, so a failing rank fails the job at once.
- Hydra reports only its own exit status (the worst rank's) and a banner naming the first bad rank;
  per-rank statuses come from files the entry point writes (none for a rank the launcher killed: its
  ``returncode`` is None).
- The container's PID 1 need not reap orphans, so a killed rank whose proxy died first can linger
  as a zombie; :func:`pid_alive` treats a zombie as dead.
- The wheel's MPICH uses the ch4 device with UCX. Between ranks of one host, large messages go through
  CMA (``process_vm_readv``, seen with strace on a 128 MiB send), which worked here (root, no seccomp
  filter). Where a container forbids that system call (Docker's default seccomp profile without
  ``CAP_SYS_PTRACE``), set ``MPIR_CVAR_CH4_CMA_ENABLE=0`` (checked here: the large transfer then no
  longer uses CMA and stays correct), and ``UCX_TLS=^cma`` if UCX complains; pass them with ``env=``
  or ``PYCOMM_TESTING_PASS_ENV``.
"""

from __future__ import annotations

from pycomm.testing.child import announce, announce_port, process_index, process_name
from pycomm.testing.environment import child_environment, find_mpiexec
from pycomm.testing.local import LocalCluster, LocalProcess, spawn_process
from pycomm.testing.mpi import run_mpi
from pycomm.testing.ports import free_port
from pycomm.testing.process_tree import pid_alive
from pycomm.testing.results import JobFailed, JobTimeout, MpiResult, ProcessResult
from pycomm.testing.targets import Code, Module, Script

__all__ = [
    "Code",
    "JobFailed",
    "JobTimeout",
    "LocalCluster",
    "LocalProcess",
    "Module",
    "MpiResult",
    "ProcessResult",
    "Script",
    "announce",
    "announce_port",
    "child_environment",
    "find_mpiexec",
    "free_port",
    "pid_alive",
    "process_index",
    "process_name",
    "run_mpi",
    "spawn_process",
]
