"""Entry point of every harness child, and the files through which it reports to its parent.

The parent runs ``python /path/to/_child.py SPEC`` (by path, not ``-m``, so that the child does not
import ``pycomm`` before the code under test does: a harness must not change what it observes). Hence
this file uses the standard library only; the parent imports its constants and helpers from here.

Every launch has a *records* directory. A child named ``peer-1`` (or ``rank-1`` under MPI) writes:

- ``peer-1.out`` / ``peer-1.err``: its standard output and error, never interleaved with another's
  (an MPI rank redirects its own file descriptors 1 and 2 there before the target starts);
- ``peer-1.pid``: its pid, so the parent can signal an MPI rank that ``mpiexec`` started;
- ``peer-1.exit``: its exit status, written just before it exits (absent if it was killed);
- ``peer-1.value``: the pickled return value of a function target;
- ``peer-1.announce.KEY``: a value it announced (see :func:`pycomm.testing.announce`).

Files are written whole and renamed into place, so the parent never reads half a value.

A failing MPI rank calls ``MPI_Abort`` once its traceback is printed: otherwise mpi4py's ``atexit``
``MPI_Finalize`` waits for ranks that wait for it, and the job hangs until its timeout.
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import os
import pickle
import runpy
import signal
import sys
import traceback
import types
from typing import Any

RECORDS_VARIABLE = "PYCOMM_TESTING_RECORDS"
NAME_VARIABLE = "PYCOMM_TESTING_NAME"
INDEX_VARIABLE = "PYCOMM_TESTING_INDEX"

# Rank variables set by MPICH's hydra (PMI_RANK) and, for completeness, by PMIx and Open MPI launchers.
_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")

# The signal on which a child prints every thread's Python stack to its standard error.
STACK_DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)


def record_path(records: str, name: str, suffix: str) -> str:
    return os.path.join(records, f"{name}.{suffix}")


def announce_suffix(key: str) -> str:
    return f"announce.{key}"


def write_atomically(path: str, data: bytes) -> None:
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def _mpi_rank() -> int:
    for variable in _RANK_VARIABLES:
        value = os.environ.get(variable)
        if value is not None:
            return int(value)
    raise RuntimeError(f"an MPI child was started without a rank ({', '.join(_RANK_VARIABLES)} unset)")


def _redirect_output(records: str, name: str) -> None:
    """Point file descriptors 1 and 2 (Python's and C's output alike) at this child's own files."""
    sys.stdout.flush()
    sys.stderr.flush()
    for descriptor, suffix in ((1, "out"), (2, "err")):
        target = os.open(record_path(records, name, suffix), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, descriptor)
        os.close(target)


def _import_target_module(name: str, file: str | None) -> types.ModuleType:
    """The module defining a function target: imported by name where that finds ``file``, else loaded
    from ``file`` (with stand-in parent packages, so pickles that name it resolve as in the parent)."""
    if name != "__main__":
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if file is None or not (name == missing or name.startswith(missing + ".")):
                raise
        else:
            found = getattr(module, "__file__", None)
            if file is None or (found and os.path.realpath(found) == os.path.realpath(file)):
                return module
            # Another module of that name shadows the target's file; load the file under a private name.
            name = "__main__"
    if file is None:
        raise ImportError(f"cannot import module {name!r} in the child and its source file is unknown")
    if name == "__main__":
        name = "_pycomm_testing_target_" + os.path.splitext(os.path.basename(file))[0]
    directory = os.path.dirname(file)
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        if parent not in sys.modules:
            package = types.ModuleType(parent)
            package.__path__ = [directory]
            sys.modules[parent] = package
        directory = os.path.dirname(directory)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _run_function(spec: dict[str, Any]) -> Any:
    target: Any = _import_target_module(spec["module"], spec["file"])
    for part in spec["qualname"].split("."):
        target = getattr(target, part)
    args, kwargs = pickle.loads(spec["arguments"])
    sys.argv = [spec["file"] or spec["module"]]
    return target(*args, **kwargs)


def _run_target(spec: dict[str, Any]) -> Any:
    kind = spec["kind"]
    if kind == "function":
        return _run_function(spec)
    if kind == "script":
        sys.argv = [spec["path"], *spec["argv"]]
        sys.path.insert(0, os.path.dirname(spec["path"]))
        runpy.run_path(spec["path"], run_name="__main__")
    elif kind == "code":
        sys.argv = ["-c", *spec["argv"]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(spec["source"], "<string>", "exec"), main.__dict__)
    elif kind == "module":
        sys.argv = [spec["name"], *spec["argv"]]
        runpy.run_module(spec["name"], run_name="__main__", alter_sys=True)
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    return None


def _print_traceback() -> None:
    """The current exception's traceback from the target's own code down: the entry point's and
    runpy's frames say nothing about the failure (unless the failure is in them)."""
    kind, error, frames = sys.exc_info()
    trimmed = frames
    harness = (globals(), vars(runpy))
    while trimmed is not None and any(trimmed.tb_frame.f_globals is space for space in harness):
        trimmed = trimmed.tb_next
    traceback.print_exception(kind, error, trimmed if trimmed is not None else frames)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _abort_mpi(status: int) -> None:
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None:
        return
    try:
        if mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.COMM_WORLD.Abort(status)
    except Exception:
        # Aborting is best effort: the exit status already tells the launcher that this rank failed.
        pass


def main(argv: list[str]) -> int:
    # Running by path put this file's directory first on sys.path; the harness's own modules there
    # (environment.py, targets.py ...) must not shadow the target's imports.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]
    with open(argv[1], "rb") as handle:
        spec = pickle.load(handle)
    records = os.environ[RECORDS_VARIABLE]
    if spec["mpi"]:
        rank = _mpi_rank()
        name = f"rank-{rank}"
        os.environ[NAME_VARIABLE] = name
        os.environ[INDEX_VARIABLE] = str(rank)
        _redirect_output(records, name)
    else:
        name = os.environ[NAME_VARIABLE]
    write_atomically(record_path(records, name, "pid"), str(os.getpid()).encode())
    if STACK_DUMP_SIGNAL is not None:
        faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True)

    status = 0
    try:
        value = _run_target(spec)
        if spec["kind"] == "function":
            write_atomically(
                record_path(records, name, "value"), pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            )
    except SystemExit as exit_request:
        status = _exit_status(exit_request.code)
    except BaseException:
        _print_traceback()
        status = 1
    if STACK_DUMP_SIGNAL is not None:
        # The target is done: a late request for stacks (a sibling failed meanwhile) would only show
        # interpreter shutdown, and SIGUSR1's default action would turn this exit into a kill.
        faulthandler.unregister(STACK_DUMP_SIGNAL)
        signal.signal(STACK_DUMP_SIGNAL, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    write_atomically(record_path(records, name, "exit"), str(status).encode())
    if status != 0 and spec["mpi"]:
        _abort_mpi(status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
