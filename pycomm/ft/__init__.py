"""Fault-tolerant collectives with peer churn over TCP (pillar 1).

A :class:`Master` admits peers into groups and numbers each membership an epoch; each
:class:`Communicator` runs collectives on a ring of TCP links inside an epoch without talking to
the master, survives peers that die or stall (:class:`Aborted` with the buffer restored, then the
next epoch), and keeps a :class:`SharedState` bit-identical across members.

    master = Master()                                   # or `pycomm master`
    comm = Communicator(master.address); comm.connect()
    comm.all_reduce(x)                                  # numpy array or torch CPU tensor, in place
"""

from pycomm.errors import Aborted, AuthenticationError, CommError, CommTimeout, Evicted, ProtocolError
from pycomm.ft.communicator import Communicator, OpInfo, RingPlan, Work
from pycomm.ft.master import Master
from pycomm.ft.shared_state import SharedState, SyncInfo

__all__ = [
    "Aborted",
    "AuthenticationError",
    "CommError",
    "CommTimeout",
    "Communicator",
    "Evicted",
    "Master",
    "OpInfo",
    "ProtocolError",
    "RingPlan",
    "SharedState",
    "SyncInfo",
    "Work",
]
