"""Backend "pycomm" for ``torch.distributed``.

``import pycomm.torch`` registers the backend; a script written for gloo then runs on it by naming
it: ``dist.init_process_group("pycomm")``. Two engines serve it:

- **MPI** (under ``mpiexec``): ranks, world size and the rendezvous come from MPI. When the
  environment lacks torch's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), importing this module under an MPI launcher sets them from
  MPI (rank 0 picks a free port for torch's store), so the default ``env://`` init works unchanged.
  Operations run on mpi4py communicators; where the group's topology has more than one level
  (several nodes, or ``Options(topology=...)``), all-reduce, all-gather and reduce-scatter are
  hierarchical (:class:`pycomm.hier.HierComm`).
- **Fault-tolerant** (``init_method="pycomm://HOST:PORT"``, the address of a ``pycomm master``): the
  group is one epoch of a :class:`pycomm.ft.Communicator`. When a peer fails, the operation raises
  ``torch.distributed.DistBackendError`` on every survivor (tensor restored); the training loop
  catches it and calls :func:`reform` to go on with the survivors. Newcomers wait until the members
  admit them (``communicator().pending_peers()`` / ``update_topology()``, then :func:`reform`).

CUDA tensors are staged through host memory. The group's ``timeout`` bounds every operation.
"""

from __future__ import annotations

import datetime
import os
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pycomm._deps import require_mpi4py, require_torch

require_torch("pycomm.torch")

import torch.distributed as dist  # noqa: E402

from pycomm.torch._group import BackendArgumentError, ProcessGroup, Work  # noqa: E402

__all__ = [
    "BackendArgumentError",
    "Options",
    "ProcessGroup",
    "Work",
    "communicator",
    "reform",
]

BACKEND = "pycomm"
ENGINES = ("auto", "mpi", "ft")

# Variables by which launchers tell a process it is one rank of an MPI job.
_MPI_LAUNCH_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID")


@dataclass
class Options:
    """Backend options, passed as ``pg_options`` to ``init_process_group`` or ``new_group``.

    ``engine``: "auto" (fault-tolerant when a pycomm communicator made the rendezvous, else MPI),
    "mpi" or "ft". ``topology`` (MPI engine): a :class:`pycomm.hier.Topology` for the group's
    ranks, "detect" (from MPI: nodes and ranks per node) or None for flat collectives.
    ``communicator`` (fault-tolerant engine): a connected :class:`pycomm.ft.Communicator`; by
    default the one the ``pycomm://`` rendezvous connected.
    """

    engine: str = "auto"
    topology: Any = "detect"
    communicator: Any = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise BackendArgumentError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")


# The communicator of the fault-tolerant engine, connected by the pycomm:// rendezvous or by reform().
_communicator: Any = None


def communicator() -> Any:
    """The :class:`pycomm.ft.Communicator` of the fault-tolerant engine (None before one connected)."""
    return _communicator


def launched_by_mpi() -> bool:
    return any(variable in os.environ for variable in _MPI_LAUNCH_VARIABLES)


def _create(backend_options: Any, pg_options: Any) -> ProcessGroup:
    options = pg_options if isinstance(pg_options, Options) else Options()
    if pg_options is not None and not isinstance(pg_options, Options):
        raise BackendArgumentError(
            f"pg_options for backend 'pycomm' must be pycomm.torch.Options, got {type(pg_options).__name__}"
        )
    rank, size = backend_options.group_rank, backend_options.group_size
    timeout = backend_options.timeout
    name = str(backend_options.group_id)
    engine_name = options.engine
    ft_comm = options.communicator or _communicator
    if engine_name == "auto":
        engine_name = "ft" if ft_comm is not None else "mpi"
    if engine_name == "ft":
        return _create_ft(ft_comm, rank, size, timeout, name, list(backend_options.global_ranks_in_group))
    if not launched_by_mpi() and size > 1:
        raise BackendArgumentError(
            "backend 'pycomm' found neither an MPI launch (run the script under mpiexec) nor a "
            "fault-tolerant rendezvous (init_method='pycomm://HOST:PORT' of a `pycomm master`)"
        )
    require_mpi4py("backend 'pycomm' (MPI engine)")
    from pycomm.torch._mpi_engine import MpiEngine, detect_topology, world_communicator

    comm = world_communicator(rank, size, list(backend_options.global_ranks_in_group))
    topology = options.topology
    if isinstance(topology, str):
        if topology != "detect":
            raise BackendArgumentError(f"topology must be a Topology, 'detect' or None, got {topology!r}")
        topology = detect_topology(comm)
    return ProcessGroup(MpiEngine(comm, topology), rank, size, timeout, name)


def _create_ft(
    comm: Any, rank: int, size: int, timeout: datetime.timedelta, name: str, ranks: list
) -> ProcessGroup:
    from pycomm.torch._ft_engine import FtEngine

    if comm is None:
        raise BackendArgumentError(
            "the fault-tolerant engine needs a pycomm.ft.Communicator: init_process_group('pycomm', "
            "init_method='pycomm://HOST:PORT') or pg_options=pycomm.torch.Options(communicator=...)"
        )
    if ranks and list(ranks) != list(range(comm.world_size)):
        raise BackendArgumentError("the fault-tolerant engine serves the whole epoch only, not subgroups")
    if (rank, size) != (comm.rank, comm.world_size):
        raise BackendArgumentError(
            f"torch says rank {rank} of {size} but the fault-tolerant group's epoch {comm.epoch} has this "
            f"peer at rank {comm.rank} of {comm.world_size}; use pycomm.torch.reform()"
        )
    return ProcessGroup(FtEngine(comm), rank, size, timeout, name)


def _pycomm_rendezvous(url: str, timeout: datetime.timedelta = datetime.timedelta(minutes=30), **kwargs: Any):
    """``pycomm://HOST:PORT[?peer_group=N]``: connects this process to the master (secret from
    ``PYCOMM_SECRET``) and yields a process-local store with the rank and size of its first epoch."""
    global _communicator
    from pycomm.ft import Communicator

    parsed = urllib.parse.urlparse(url)
    query = dict(urllib.parse.parse_qsl(parsed.query))
    peer_group = int(query.get("peer_group", "0"))
    comm = Communicator(
        parsed.netloc,
        peer_group=peer_group,
        secret=os.environ.get("PYCOMM_SECRET") or None,
        timeout=timeout.total_seconds(),
    )
    comm.connect(timeout=timeout.total_seconds())
    if _communicator is not None:
        _communicator.close()  # a new rendezvous leaves the previous group
    _communicator = comm
    yield (dist.HashStore(), comm.rank, comm.world_size)


def reform(timeout: datetime.timedelta | None = None) -> None:
    """Replaces the default group by one for the fault-tolerant communicator's current epoch (after a
    failure raised ``DistBackendError``, or after ``update_topology()`` admitted newcomers).
    ``timeout`` becomes the new group's timeout and the communicator's deadline per operation."""
    comm = _communicator
    if comm is None:
        raise BackendArgumentError(
            "reform() needs the fault-tolerant engine (init_method='pycomm://HOST:PORT')"
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    kwargs = {}
    if timeout is not None:
        kwargs["timeout"] = timeout
        comm.timeout = timeout.total_seconds()  # the communicator's deadline per operation too
    dist.init_process_group(
        BACKEND,
        store=dist.HashStore(),
        rank=comm.rank,
        world_size=comm.world_size,
        pg_options=Options(engine="ft", communicator=comm),
        **kwargs,
    )


def _fill_environment_from_mpi() -> None:
    """Sets torch's rendezvous variables from MPI when an MPI launcher started this process and
    the variables are missing (collective: every rank imports pycomm.torch)."""
    if not launched_by_mpi() or all(
        variable in os.environ for variable in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    ):
        return
    require_mpi4py("backend 'pycomm' under mpiexec")
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        local_rank, local_size = node.Get_rank(), node.Get_size()
    finally:
        node.Free()
    address = None
    if rank == 0:
        # A port free now for rank 0's store; the store binds it moments later.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("", 0))
            address = (socket.gethostname(), probe.getsockname()[1])
    host, port = world.bcast(address, root=0)
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world.Get_size()))
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(local_size))
    os.environ.setdefault("MASTER_ADDR", host)
    os.environ.setdefault("MASTER_PORT", str(port))


if BACKEND not in dist.Backend.backend_list:
    dist.Backend.register_backend(BACKEND, _create, extended_api=True, devices=["cpu", "cuda"])
    dist.register_rendezvous_handler("pycomm", _pycomm_rendezvous)
_fill_environment_from_mpi()
