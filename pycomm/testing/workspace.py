"""The directories of one launch: where its children run and where they leave their records.

Children run in ``cwd/``, an empty directory, never in the caller's working directory: from a source
checkout, ``pycomm/`` there (which has no compiled core) would shadow the installed package. Their
records (see :mod:`pycomm.testing._child`) go to ``records/``, beside it, so a child that writes files
into its working directory cannot clobber them.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import tempfile
from typing import Any

from pycomm.errors import InvalidArgumentError
from pycomm.testing._child import record_path

CHILD_ENTRY_POINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")


def read_text(path: str) -> str:
    """A child's output file as text ("" while it does not exist yet); undecodable bytes replaced."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def start_process(
    command: list[str], cwd: str, environment: dict[str, str], stdout_path: str, stderr_path: str
) -> subprocess.Popen[bytes]:
    """Starts ``command`` in a session of its own (so its whole tree can be signalled), stdin
    closed, stdout and stderr written to files (a pipe could fill up and stall the child)."""
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


class Workspace:
    """A fresh directory per launch: inside ``parent`` when given (kept afterwards, for example under
    pytest's ``tmp_path``), else a temporary directory removed by :meth:`cleanup`."""

    def __init__(self, parent: str | os.PathLike[str] | None, prefix: str) -> None:
        self._owned = parent is None
        if parent is not None:
            os.makedirs(parent, exist_ok=True)
        self.root = tempfile.mkdtemp(
            prefix=f"pycomm-{prefix}-", dir=None if parent is None else os.fspath(parent)
        )
        self.records = os.path.join(self.root, "records")
        self.cwd = os.path.join(self.root, "cwd")
        os.mkdir(self.records)
        os.mkdir(self.cwd)

    def path(self, name: str, suffix: str) -> str:
        return record_path(self.records, name, suffix)

    def write_spec(self, name: str, spec: dict[str, Any]) -> str:
        path = self.path(name, "spec")
        with open(path, "wb") as handle:
            pickle.dump(spec, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def read_value(self, name: str) -> Any:
        """The return value a function target of child ``name`` recorded (None if it recorded none)."""
        try:
            with open(self.path(name, "value"), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        try:
            return pickle.loads(data)
        except Exception as error:
            raise InvalidArgumentError(
                f"{name} returned a value that cannot be unpickled in the parent ({error!r}); return "
                "plain data (numbers, strings, lists, dicts, numpy arrays) from a child"
            ) from error

    def location(self) -> list[str]:
        """A line naming the records directory for an error message, if it outlives the launch."""
        return [] if self._owned else [f"records: {self.records}"]

    def cleanup(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
