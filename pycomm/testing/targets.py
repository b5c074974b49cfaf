"""What a harness child runs: a module-level function, a script, ``-c`` code or a module.

A target is a function, a :class:`Script`, :class:`Code` or :class:`Module`, or the arguments one would
give ``python`` for them as a list: ``["-c", source, *argv]``, ``["-m", module, *argv]`` or
``[path, *argv]``.

A target becomes a picklable *spec* that the child entry point (:mod:`pycomm.testing._child`) reads
from a file. A function is referred to by module name and source file rather than pickled by value, so
functions defined in test files work: the child imports the module by name when it can and loads it
from its file otherwise (test modules are usually not importable from the child's empty working
directory). The function's arguments are pickled separately and unpickled only after that module is
loaded, so they may be instances of classes defined beside the function.
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union

from pycomm.errors import InvalidArgumentError


@dataclass(frozen=True)
class Script:
    """Run a Python file as ``__main__`` with ``sys.argv = [path, *argv]``, like ``python path argv...``."""

    path: str | os.PathLike[str]
    argv: Sequence[str] = ()

    def __init__(self, path: str | os.PathLike[str], *argv: str) -> None:
        object.__setattr__(self, "path", os.fspath(path))
        object.__setattr__(self, "argv", tuple(str(arg) for arg in argv))


@dataclass(frozen=True)
class Code:
    """Run source text as ``__main__``, like ``python -c source argv...``."""

    source: str
    argv: Sequence[str] = ()

    def __init__(self, source: str, *argv: str) -> None:
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "argv", tuple(str(arg) for arg in argv))


@dataclass(frozen=True)
class Module:
    """Run an importable module as ``__main__``, like ``python -m name argv...``."""

    name: str
    argv: Sequence[str] = ()

    def __init__(self, name: str, *argv: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "argv", tuple(str(arg) for arg in argv))


Target = Union[Callable[..., Any], Script, Code, Module, Sequence[str]]


def from_python_arguments(arguments: Sequence[str]) -> Script | Code | Module:
    """The target that ``python *arguments`` would run (``-c``, ``-m`` or a script path, then its argv)."""
    if not arguments:
        raise InvalidArgumentError(
            "an empty argument list names no program; give ['-c', source], ['-m', module] or [path]"
        )
    first, rest = arguments[0], list(arguments[1:])
    if first in ("-c", "-m"):
        if not rest:
            raise InvalidArgumentError(f"python {first} needs an argument after it: {list(arguments)!r}")
        return Code(*rest) if first == "-c" else Module(*rest)
    if first.startswith("-"):
        raise InvalidArgumentError(
            f"interpreter option {first!r} is not supported; give ['-c', source], ['-m', module] or "
            "[path, ...], and interpreter settings through env (PYTHONWARNINGS, PYTHONDEVMODE, ...)"
        )
    return Script(first, *rest)


def make_spec(
    target: Target, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The picklable description of ``target`` that the child entry point runs."""
    if isinstance(target, (list, tuple)) and all(isinstance(argument, str) for argument in target):
        target = from_python_arguments(target)
    if isinstance(target, (Script, Code, Module)):
        if args or kwargs:
            raise InvalidArgumentError(
                f"args and kwargs apply to function targets only; give a {type(target).__name__}'s "
                "arguments as its argv strings"
            )
        if isinstance(target, Script):
            path = os.path.abspath(target.path)
            if not os.path.isfile(path):
                raise InvalidArgumentError(f"script {path} does not exist")
            return {"kind": "script", "path": path, "argv": list(target.argv)}
        if isinstance(target, Code):
            return {"kind": "code", "source": target.source, "argv": list(target.argv)}
        return {"kind": "module", "name": target.name, "argv": list(target.argv)}
    if callable(target):
        return _function_spec(target, args, kwargs or {})
    raise InvalidArgumentError(
        "a target is a module-level function, a Script, Code or Module, or python's arguments as a list "
        f"of strings (['-c', source], ['-m', module], [path]); got {target!r}"
    )


def _function_spec(
    function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    qualname = getattr(function, "__qualname__", None)
    module = getattr(function, "__module__", None)
    if not inspect.isfunction(function) or qualname is None or module is None or "<" in qualname:
        raise InvalidArgumentError(
            f"{function!r} cannot run in a child process: give a function defined at module level "
            "(not a lambda, a nested function, a bound method or a functools.partial)"
        )
    source_file = inspect.getsourcefile(function)
    try:
        arguments = pickle.dumps((tuple(args), dict(kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise InvalidArgumentError(f"the arguments for {qualname} cannot be pickled: {error}") from error
    return {
        "kind": "function",
        "module": module,
        "file": os.path.abspath(source_file) if source_file else None,
        "qualname": qualname,
        "arguments": arguments,
    }


def describe(spec: Mapping[str, Any]) -> str:
    """One line naming what a spec runs, for error messages."""
    kind = spec["kind"]
    if kind == "function":
        where = spec["file"] or spec["module"]
        return f"function {spec['qualname']} from {where}"
    if kind == "script":
        return " ".join(["script", spec["path"], *spec["argv"]])
    if kind == "code":
        first = spec["source"].strip().splitlines()[0] if spec["source"].strip() else ""
        return f"code {first[:80]!r}{' ...' if len(spec['source'].strip().splitlines()) > 1 else ''}"
    return " ".join(["module", spec["name"], *spec["argv"]])
