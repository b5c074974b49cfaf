"""Local peer processes: Python children that a test can kill, stall and resume at will.

A :class:`LocalCluster` starts children (each running a function, script, ``-c`` code or module in a
fresh interpreter), captures each one's output in its own files, and guarantees that none outlives
the cluster: leaving the ``with`` block, normally or by an exception (``KeyboardInterrupt``
included), kills and reaps every child and every process a child started. ::

    with LocalCluster(timeout=30) as cluster:
        peers = cluster.spawn_many(3, run_peer, args=(address,))
        peers[1].kill()                 # SIGKILL: a peer dies
        peers[2].stall(); peers[2].resume()   # SIGSTOP / SIGCONT: a peer hangs, then comes back
        results = cluster.wait_all()    # raises JobFailed, with every child's output, if one failed

Each child has a deadline: a watchdog thread per child kills it (after asking it for its Python
stacks) when it passes, even while the test is blocked elsewhere, for example reading from a socket
the child should have written to. Signals go to the child's process group, which is the peer and any
helper processes it forked; a deliberate :meth:`LocalProcess.kill` does not count as a failure.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, TypeVar

from pycomm.errors import InvalidArgumentError
from pycomm.testing._child import (
    INDEX_VARIABLE,
    NAME_VARIABLE,
    RECORDS_VARIABLE,
    announce_suffix,
)
from pycomm.testing.child import check_key
from pycomm.testing.environment import child_environment, scaled_timeout
from pycomm.testing.process_tree import (
    TOKEN_VARIABLE,
    dump_python_stacks,
    has_proc_filesystem,
    kill_tree,
    process_state,
    signal_group,
    wait_gone,
)
from pycomm.testing.results import JobFailed, JobTimeout, ProcessResult, format_outputs
from pycomm.testing.targets import Target, describe, make_spec
from pycomm.testing.workspace import CHILD_ENTRY_POINT, Workspace, read_text, start_process

DEFAULT_TIMEOUT = 60.0
_POLL_FIRST = 0.001
_POLL_MAX = 0.02
# How long a child gets to exit once SIGKILLed before the harness gives up on it (a process stuck in
# the kernel, state D, cannot die sooner).
_REAP_GRACE = 30.0
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_Found = TypeVar("_Found")


class LocalProcess:
    """One child of a :class:`LocalCluster` (create it with :meth:`LocalCluster.spawn`)."""

    def __init__(
        self,
        *,
        name: str,
        index: int,
        spec: dict[str, Any],
        workspace: Workspace,
        environment: Mapping[str, str],
        timeout: float,
        on_exit: threading.Event,
    ) -> None:
        self.name = name
        self.index = index
        self.timeout = timeout
        self._workspace = workspace
        self._description = describe(spec)
        self._token = uuid.uuid4().hex
        self._stdout_path = workspace.path(name, "out")
        self._stderr_path = workspace.path(name, "err")
        self.command: list[str] = [
            sys.executable,
            CHILD_ENTRY_POINT,
            workspace.write_spec(name, {**spec, "mpi": False}),
        ]
        environment = {
            **environment,
            RECORDS_VARIABLE: workspace.records,
            NAME_VARIABLE: name,
            INDEX_VARIABLE: str(index),
            TOKEN_VARIABLE: self._token,
        }
        # The lock orders reaping (poll) against signalling, so a signal never reaches a recycled pid.
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self._on_exit = on_exit
        self._timed_out = False
        self._killed = False
        self._closed = False
        self._result: ProcessResult | None = None
        # Set by spawn_process: the one-child cluster this process closes with itself.
        self._owner: LocalCluster | None = None
        self._watch_error: BaseException | None = None
        self._popen = start_process(
            self.command, workspace.cwd, environment, self._stdout_path, self._stderr_path
        )
        self.pid: int = self._popen.pid
        self._started = time.monotonic()
        self._ended: float | None = None
        self._deadline = self._started + timeout
        self._watchdog = threading.Thread(target=self._watch, name=f"pycomm-testing-{name}", daemon=True)
        self._watchdog.start()

    # ----- state -----

    @property
    def running(self) -> bool:
        """True until the child has exited and been reaped."""
        return not self._exited.is_set()

    @property
    def returncode(self) -> int | None:
        """As in :mod:`subprocess`: None while running, negative for a signal."""
        return self._popen.returncode if self._exited.is_set() else None

    @property
    def stalled(self) -> bool:
        """Whether the child is stopped (after :meth:`stall`). Needs ``/proc``."""
        return self.running and process_state(self.pid) in ("T", "t")

    def read_stdout(self) -> str:
        """Everything the child has printed to standard output so far."""
        return read_text(self._stdout_path)

    def read_stderr(self) -> str:
        return read_text(self._stderr_path)

    # ----- signals -----

    def send_signal(self, signum: int) -> bool:
        """Send ``signum`` to the child's process group; False if the child has already exited."""
        with self._lock:
            if self._popen.returncode is not None:
                return False
            return signal_group(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the child and everything it started (no-op once it has exited). Not a failure."""
        with self._lock:
            if self._popen.returncode is not None:
                return
            self._killed = True
        self._kill_tree()

    def stall(self, timeout: float = 10.0) -> None:
        """SIGSTOP the child's process group and return once the child is stopped: it runs no code, but
        its sockets stay open, like a hung peer."""
        if not self.send_signal(signal.SIGSTOP):
            raise self._failure(f"cannot stall {self.name}: it has already ended")
        if not has_proc_filesystem():
            return
        deadline = time.monotonic() + scaled_timeout(timeout)
        while self.running and process_state(self.pid) not in ("T", "t"):
            if time.monotonic() >= deadline:
                raise self._failure(f"{self.name} did not stop within {timeout:g} s of SIGSTOP", JobTimeout)
            time.sleep(_POLL_FIRST)

    def resume(self) -> None:
        """SIGCONT the child's process group after :meth:`stall`."""
        if not self.send_signal(signal.SIGCONT):
            raise self._failure(f"cannot resume {self.name}: it has already ended")

    def dump_stacks(self, wait: float = 1.0) -> None:
        """Make the child print every thread's Python stack to its standard error (best effort)."""
        if self.running:
            dump_python_stacks([(self.pid, self._stderr_path)], wait)

    # ----- waiting -----

    def wait(self, timeout: float | None = None, *, check: bool = True) -> ProcessResult:
        """Wait for the child to exit; after ``timeout`` seconds (default: its own deadline) it is killed
        and :class:`JobTimeout` raised. With ``check``, a failure raises :class:`JobFailed`."""
        if not self._exited.wait(None if timeout is None else scaled_timeout(timeout)):
            self._expire()
        result = self._final_result()
        if check and not result.ok:
            raise self._failure(
                f"local process {self.name} failed", JobTimeout if result.timed_out else JobFailed
            )
        return result

    def _final_result(self) -> ProcessResult:
        """The result of a child that has exited or is being killed (waits for the kill to land)."""
        if self._result is not None:
            return self._result
        if not self._exited.wait(_REAP_GRACE):
            raise JobFailed(f"{self.name} (pid {self.pid}) did not die within {_REAP_GRACE:g} s of SIGKILL")
        if self._watch_error is not None:
            raise JobFailed(f"watching {self.name} failed: {self._watch_error!r}") from self._watch_error
        self._result = self._snapshot()
        return self._result

    def wait_for_line(
        self, pattern: str | re.Pattern[str], *, timeout: float = 30.0, stream: str = "stdout"
    ) -> re.Match[str]:
        """The first complete line of ``stream`` ("stdout" or "stderr") that ``pattern`` matches (a
        regular expression, searched per line). Raises :class:`JobFailed` if the child ends first and
        :class:`JobTimeout` after ``timeout`` seconds."""
        if stream not in ("stdout", "stderr"):
            raise InvalidArgumentError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        path = self._stdout_path if stream == "stdout" else self._stderr_path

        def find() -> re.Match[str] | None:
            text = read_text(path)
            # Only whole lines: "PORT 12" must not match while "345\n" is still on its way.
            return regex.search(text[: text.rfind("\n") + 1])

        return self._poll(find, f"a line matching {regex.pattern!r} on {stream}", timeout)

    def wait_for_announcement(self, key: str, *, timeout: float = 30.0) -> str:
        """The value the child passed to :func:`pycomm.testing.announce` under ``key``."""
        path = self._workspace.path(self.name, announce_suffix(check_key(key)))

        def find() -> str | None:
            try:
                with open(path, encoding="utf-8") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None

        return self._poll(find, f"an announcement of {key!r}", timeout)

    def wait_for_port(self, key: str = "port", *, timeout: float = 30.0) -> int:
        """The port the child announced with :func:`pycomm.testing.announce_port` (the race-free way
        to learn the port a child bound; see :mod:`pycomm.testing.ports`)."""
        return int(self.wait_for_announcement(key, timeout=timeout))

    # ----- cleanup -----

    def close(self) -> None:
        """Kill the child and everything it started, and reap it. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._kill_tree()
        self._watchdog.join(_REAP_GRACE)
        if self._owner is not None:
            self._owner.close()

    def __enter__(self) -> LocalProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else f"returncode={self._popen.returncode}"
        return f"<LocalProcess {self.name} pid={self.pid} {state}>"

    # ----- internals -----

    def _watch(self) -> None:
        """The watchdog: the only code that reaps the child, and the one that enforces its deadline."""
        delay = _POLL_FIRST
        try:
            while True:
                with self._lock:
                    if self._popen.poll() is not None:
                        break
                if time.monotonic() >= self._deadline:
                    self._expire()
                time.sleep(delay)
                delay = min(2 * delay, _POLL_MAX)
        except Exception as error:
            self._watch_error = error
            self._popen.kill()
            self._popen.wait()
        self._ended = time.monotonic()
        self._exited.set()
        self._on_exit.set()

    def _expire(self, *, dump_stacks: bool = True) -> None:
        """Deadline passed: ask for stacks, then kill. Idempotent."""
        with self._lock:
            if self._popen.returncode is not None or self._timed_out:
                return
            self._timed_out = True
        if dump_stacks:
            self.dump_stacks()
        self._kill_tree()

    def _kill_tree(self) -> None:
        with self._lock:
            # Once reaped, the pid (and the group id equal to it) may belong to someone else: from then
            # on only the token finds what is left.
            alive = self._popen.returncode is None
            killed = kill_tree(self.pid if alive else None, self._token, session=self.pid if alive else None)
        # SIGKILL lands asynchronously; once this returns, nothing the child started runs any more.
        wait_gone(killed, _REAP_GRACE)

    def _snapshot(self) -> ProcessResult:
        running = self.running
        returncode = None if running else self._popen.returncode
        value = self._workspace.read_value(self.name) if returncode == 0 else None
        ended = self._ended if self._ended is not None else time.monotonic()
        return ProcessResult(
            name=self.name,
            pid=self.pid,
            returncode=returncode,
            stdout=self.read_stdout(),
            stderr=self.read_stderr(),
            elapsed=ended - self._started,
            timed_out=self._timed_out,
            # Only a death by our SIGKILL: a child that failed by itself just before kill() still failed.
            killed_by_harness=self._killed and not self._timed_out and returncode == -signal.SIGKILL,
            value=value,
            running=running,
        )

    def _failure(self, headline: str, kind: type[JobFailed] = JobFailed) -> JobFailed:
        result = self._result if self._result is not None else self._snapshot()
        message = "\n".join(
            [
                f"{headline}: {result.status()} after {result.elapsed:.2f} s (timeout {self.timeout:g} s)",
                f"command: {shlex.join(self.command)}",
                f"target: {self._description}",
                *self._workspace.location(),
                format_outputs([result]),
            ]
        )
        return kind(message, [result])

    def _poll(self, find: Callable[[], _Found | None], what: str, timeout: float) -> _Found:
        deadline = time.monotonic() + scaled_timeout(timeout)
        delay = _POLL_FIRST
        while True:
            ended = not self.running  # read before looking, so a last look after the exit sees everything
            found = find()
            if found is not None:
                return found
            if ended:
                raise self._failure(f"{self.name} ended without {what}")
            if time.monotonic() >= deadline:
                self.dump_stacks()
                raise self._failure(f"{self.name} gave no {what} within {timeout:g} s", JobTimeout)
            time.sleep(delay)
            delay = min(2 * delay, _POLL_MAX)


class LocalCluster:
    """A set of local child processes that are all killed and reaped when the cluster closes.

    ``timeout`` is each child's default deadline in seconds (scaled by
    ``$PYCOMM_TESTING_TIMEOUT_SCALE``). ``env`` is applied over :func:`child_environment`, which is
    built afresh at each spawn (a None value removes a variable). ``workdir`` keeps the children's
    files in a new directory inside it; by default they go to a temporary directory removed on close.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str | None] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        single_threaded: bool = True,
    ) -> None:
        self.timeout = timeout
        self._env = dict(env or {})
        self._single_threaded = single_threaded
        self._workspace = Workspace(workdir, "cluster")
        self._processes: list[LocalProcess] = []
        self._changed = threading.Event()
        self._closed = False
        _open_clusters.add(self)

    @property
    def workdir(self) -> str:
        """This cluster's directory: ``cwd/`` (the children's working directory) and ``records/``."""
        return self._workspace.root

    @property
    def processes(self) -> list[LocalProcess]:
        return list(self._processes)

    def __len__(self) -> int:
        return len(self._processes)

    def __iter__(self) -> Iterator[LocalProcess]:
        return iter(list(self._processes))

    def __getitem__(self, index: int) -> LocalProcess:
        return self._processes[index]

    def spawn(
        self,
        target: Target,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> LocalProcess:
        """Start one child running ``target`` (a module-level function called with ``args`` and
        ``kwargs``, or a :class:`Script`, :class:`Code` or :class:`Module`). Its index (see
        :func:`pycomm.testing.process_index`) is its position in the cluster; its name defaults to
        ``peer-<index>``."""
        if self._closed:
            raise InvalidArgumentError("this LocalCluster is closed")
        index = len(self._processes)
        name = f"peer-{index}" if name is None else name
        if not _NAME.fullmatch(name):
            raise InvalidArgumentError(f"process name {name!r} must be letters, digits, '_', '.' or '-'")
        if any(process.name == name for process in self._processes):
            raise InvalidArgumentError(f"this cluster already has a process named {name!r}")
        spec = make_spec(target, args, kwargs)
        environment = child_environment({**self._env, **(env or {})}, single_threaded=self._single_threaded)
        process = LocalProcess(
            name=name,
            index=index,
            spec=spec,
            workspace=self._workspace,
            environment=environment,
            timeout=scaled_timeout(self.timeout if timeout is None else timeout),
            on_exit=self._changed,
        )
        self._processes.append(process)
        return process

    def spawn_many(
        self,
        count: int,
        target: Target,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> list[LocalProcess]:
        """Start ``count`` children running the same target; each tells itself apart with
        :func:`pycomm.testing.process_index`."""
        if count < 1:
            raise InvalidArgumentError(f"count must be at least 1, got {count}")
        return [self.spawn(target, args, kwargs, timeout=timeout, env=env) for _ in range(count)]

    def wait_all(
        self, timeout: float | None = None, *, check: bool = True, fail_fast: bool = True
    ) -> list[ProcessResult]:
        """Wait for every child; returns their results in spawn order.

        After ``timeout`` seconds (default: each child's own deadline) the children still running are
        killed and :class:`JobTimeout` raised. With ``check``, a child that failed raises
        :class:`JobFailed` carrying every child's output; with ``fail_fast`` too, the first failure
        stops the others at once (their stacks are printed to their stderr first) rather than leaving
        them to wait for a peer that will never answer.
        """
        deadline = None if timeout is None else time.monotonic() + scaled_timeout(timeout)
        while True:
            self._changed.clear()
            running = [process for process in self._processes if process.running]
            if not running:
                break
            if check and fail_fast and any(not process._final_result().ok for process in self._finished()):
                self._stop(running, timed_out=False)
                break
            if deadline is not None and time.monotonic() >= deadline:
                self._stop(running, timed_out=True)
                break
            self._changed.wait(0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic())))
        results = [process._final_result() for process in self._processes]
        if check and not all(result.ok for result in results):
            raise self._failure(results)
        return results

    def kill_all(self) -> None:
        """SIGKILL every child that is still running (deliberately: not counted as failures)."""
        for process in self._processes:
            process.kill()

    def close(self) -> None:
        """Kill and reap every child and everything they started. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            for process in self._processes:
                process.close()
        finally:
            self._workspace.cleanup()
            _open_clusters.discard(self)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _finished(self) -> list[LocalProcess]:
        return [process for process in self._processes if not process.running]

    def _stop(self, running: Sequence[LocalProcess], *, timed_out: bool) -> None:
        dump_python_stacks([(process.pid, process._stderr_path) for process in running])
        for process in running:
            if timed_out:
                process._expire(dump_stacks=False)
            else:
                process.kill()

    def _failure(self, results: Sequence[ProcessResult]) -> JobFailed:
        failed = [result for result in results if not result.ok]
        headline = "; ".join(f"{result.name} {result.status()}" for result in failed)
        lines = [f"local cluster failed: {headline}", *self._workspace.location()]
        for process in self._processes:
            lines.append(f"{process.name}: {process._description}  (command: {shlex.join(process.command)})")
        lines.append(format_outputs(results))
        kind = JobTimeout if any(result.timed_out for result in failed) else JobFailed
        return kind("\n".join(lines), results)


def spawn_process(
    target: Target,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    name: str = "process",
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str | None] | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> LocalProcess:
    """Start one child in a cluster of its own; use it as a context manager so it is always reaped::

    with spawn_process(serve, args=(config,), timeout=20) as server:
        port = server.wait_for_port()
    """
    cluster = LocalCluster(timeout=timeout, env=env, workdir=workdir)
    try:
        process = cluster.spawn(target, args, kwargs, name=name)
    except BaseException:
        cluster.close()
        raise
    process._owner = cluster
    return process


_open_clusters: set[LocalCluster] = set()


@atexit.register
def _close_open_clusters() -> None:
    # Last line of defence for clusters used without ``with``: no child survives the interpreter.
    for cluster in list(_open_clusters):
        cluster.close()
