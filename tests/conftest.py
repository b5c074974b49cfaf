"""Shared test configuration: the multi-process fixtures (``mpi_run``, ``local_cluster``, ``free_port``)
come from :mod:`pycomm.testing.pytest_plugin`."""

pytest_plugins = ["pycomm.testing.pytest_plugin"]
