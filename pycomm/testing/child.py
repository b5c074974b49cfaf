"""What code running inside a harness child can call: who am I, and telling the parent a value.

Announcements are files in the launch's records directory (see :mod:`pycomm.testing._child`), so they
never mix with the child's own output, and the parent reads each one whole. Outside the harness (a
script run by hand) :func:`announce` prints ``KEY value`` instead (``PORT 41234`` for a port), which a
parent can also match with :meth:`LocalProcess.wait_for_line`.
"""

from __future__ import annotations

import os

from pycomm.errors import InvalidArgumentError
from pycomm.testing._child import (
    INDEX_VARIABLE,
    NAME_VARIABLE,
    RECORDS_VARIABLE,
    announce_suffix,
    record_path,
    write_atomically,
)


def check_key(key: str) -> str:
    if not key or not all(character.isalnum() or character in "_-" for character in key):
        raise InvalidArgumentError(f"announcement key {key!r} must be letters, digits, '_' or '-'")
    return key


def announce(key: str, value: object) -> None:
    """Tell the parent ``key = str(value)``; it waits with :meth:`LocalProcess.wait_for_announcement`."""
    check_key(key)
    records = os.environ.get(RECORDS_VARIABLE)
    name = os.environ.get(NAME_VARIABLE)
    if records is None or name is None:
        print(f"{key.upper()} {value}", flush=True)
        return
    write_atomically(record_path(records, name, announce_suffix(key)), str(value).encode())


def announce_port(port: int, key: str = "port") -> None:
    """Announce the port this child bound (``sock.getsockname()[1]`` after binding port 0)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgumentError(f"port must be an int in 1..65535, got {port!r}")
    announce(key, port)


def process_index() -> int | None:
    """This child's index in its cluster (its rank under MPI); None outside the harness."""
    value = os.environ.get(INDEX_VARIABLE)
    return None if value is None else int(value)


def process_name() -> str | None:
    """This child's name in its launch (``peer-0``, ``rank-1``, ...); None outside the harness."""
    return os.environ.get(NAME_VARIABLE)
