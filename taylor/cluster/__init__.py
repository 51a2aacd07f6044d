"""Running taylor tasks on a Dask distributed cluster (``pip install 'taylor[dask]'``).

One role per module:

* :mod:`~taylor.cluster.connection`: what ``cluster=`` may be, and connecting to it;
* :mod:`~taylor.cluster.capacity`: the cluster's workers, threads and memory, and placement;
* :mod:`~taylor.cluster.pickling`: how Worker classes (even the caller script's) travel;
* :mod:`~taylor.cluster.forker`: the clean per-host process that forks task processes;
* :mod:`~taylor.cluster.remote`: what runs on a Dask worker;
* :mod:`~taylor.cluster.launcher`: :class:`DaskLauncher`, the boss's side.

``import taylor`` never imports this package, nor Dask.
"""

from .connection import ClusterError, connect

__all__ = ["ClusterError", "connect", "DaskLauncher", "ClusterCapacity"]


def __getattr__(name: str):  # the launcher pulls in distributed: only when asked for
    if name == "DaskLauncher":
        from .launcher import DaskLauncher

        return DaskLauncher
    if name == "ClusterCapacity":
        from .capacity import ClusterCapacity

        return ClusterCapacity
    raise AttributeError(name)
