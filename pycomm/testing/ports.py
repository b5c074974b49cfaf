"""Ephemeral loopback ports for tests.

Two ways to give a child a port:

- **Race-free (preferred):** the child binds port 0 itself, asks the socket which port the kernel
  chose, and announces it with :func:`pycomm.testing.announce_port`; the parent waits for it with
  :meth:`LocalProcess.wait_for_port`. Nothing can take the port in between, because it is never free::

      # in the child                                   # in the test
      server = socket.create_server(("127.0.0.1", 0))  peer = cluster.spawn(serve)
      announce_port(server.getsockname()[1])           port = peer.wait_for_port(timeout=10)

- **Pre-picked:** :func:`free_port` binds port 0, reads the port and closes the socket; the caller then
  hands the number to a child. Another process may take it before the child binds it, so use this only
  for programs that cannot bind port 0 themselves, and expect a rare ``EADDRINUSE``.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (see the module docstring for the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
