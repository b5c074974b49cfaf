"""pycomm's exception tree.

Every error pycomm raises is a :class:`PycommError`; each also derives from the built-in exception a
Python user would catch for that situation (``ValueError`` for bad arguments, ``ImportError`` for a
missing optional dependency, ``ConnectionError`` for a lost peer), so generic handlers keep working.
The C++ core raises these same classes (translated in ``csrc/bindings/errors.cc``).
"""

from __future__ import annotations


class PycommError(Exception):
    """Base class of every pycomm error."""


class InvalidArgumentError(PycommError, ValueError):
    """An argument has the wrong type, dtype, size or value."""


class NotSupportedError(PycommError, NotImplementedError):
    """The feature is not available in this build or on this machine; the message says why."""


class MissingDependencyError(PycommError, ImportError):
    """An optional dependency is not installed; the message names the install command."""

    def __init__(self, feature: str, package: str, install: str) -> None:
        super().__init__(f"{feature} needs {package}, which is not installed; install it with: {install}")
        self.feature = feature
        self.package = package
        self.install = install


class CommError(PycommError, ConnectionError):
    """A peer vanished, a connection broke or a peer broke the protocol."""


class ProtocolError(CommError):
    """A peer sent bytes that break the wire protocol; the connection that carried them is dropped."""


class CommTimeout(CommError, TimeoutError):
    """An operation passed its deadline."""


class Aborted(CommError):
    """A peer failed during a collective: the operation was abandoned on every survivor and the
    caller's buffer holds its input again, bit for bit. Retry it: the group has a new epoch."""


class Evicted(CommError):
    """The group removed this peer (it stalled, lost its master connection for too long, or was
    refused on re-registration). This communicator is unusable; connect a new one to rejoin."""


class AuthenticationError(CommError):
    """A peer or master did not prove knowledge of the group secret (or demanded one this side lacks)."""
