"""The Dask launcher over TLS: the caller's Security object reaches the connection."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")
pytest.importorskip("cryptography")  # Security.temporary() makes its certificates with it

from cluster_workers import collect, start  # noqa: E402
from dask_cluster import report_of  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from distributed.security import Security  # noqa: E402

from taylor.cluster import ClusterError  # noqa: E402
from taylor.cluster.connection import portable  # noqa: E402
from taylor.cluster.launcher import DaskLauncher  # noqa: E402


def test_tls_cluster_needs_and_takes_the_security_object():
    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=security, dashboard_address=None,
                      worker_dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with pytest.raises(ClusterError, match="security"):
            DaskLauncher(address, connect_timeout=2).open()
        with DaskLauncher(address, security=security) as launcher:
            start(launcher, where=True, name="over-tls")
            (entry,) = collect(launcher, 1)
        report_of(entry)  # it reported
        assert entry.where["worker"].startswith("tls://")
        # A Client given by the caller becomes what the boss process connects with, TLS settings included.
        with Client(address, security=security, set_as_default=False) as client:
            target = portable(client)
        assert target[0] == address and target[1] is not None
        with DaskLauncher(target) as launcher:
            assert launcher.capacity.describe()["workers"][0] == 1
