"""Connecting to a Dask cluster: what ``cluster=`` may be, and a clear error when it cannot be reached.

``cluster`` is one of:

* a scheduler address, ``tcp://host:8786`` (``tls://`` with a ``security``
  object; any scheme distributed knows, or a bare ``host:port``);
* the path of a Dask scheduler file (``dask scheduler --scheduler-file``,
  ``dask worker --scheduler-file``: what a Slurm job script shares);
* a ``distributed.Client`` the caller already holds (left open at the end).

The connection waits ``timeout`` seconds at most: a scheduler that is not
there is a :class:`ClusterError` naming the address and what to check, never
a hang.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Tuple

from ..errors import TaylorError

__all__ = ["ClusterError", "connect", "describe_target", "portable", "require_distributed"]

_ADDRESS = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/\s]+:\d+$")

#: Seconds to wait for the scheduler by default.
CONNECT_TIMEOUT = 10.0


class ClusterError(TaylorError):
    """The Dask cluster cannot be used: unreachable scheduler, bad scheduler file, no workers...

    ``cluster`` is what the caller passed.
    """


def require_distributed() -> Any:
    """The ``distributed`` module, or an error that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError("running on a Dask cluster needs Dask distributed: pip install 'taylor[dask]'",
                           cluster=None) from exc
    return distributed


def describe_target(cluster: Any) -> str:
    """How ``cluster`` is named in messages."""
    if isinstance(cluster, (str, os.PathLike)):
        text = os.fspath(cluster)
        return f"the scheduler at {text}" if _ADDRESS.search(text) else f"the scheduler file {text}"
    return f"the Dask client {cluster!r}"


def _scheduler_file_address(path: str) -> str:
    try:
        with open(path) as f:
            return json.load(f)["address"]
    except OSError as exc:
        raise ClusterError(
            f"cluster={path!r} is neither a scheduler address (tcp://host:8786) nor a readable Dask scheduler "
            f"file ({exc.strerror}); pass the address, or the path given to dask scheduler --scheduler-file",
            cluster=path) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"the scheduler file {path} holds no scheduler address ({type(exc).__name__}: {exc}); is it the file "
            "written by dask scheduler --scheduler-file, and was the scheduler done writing it?",
            cluster=path) from exc


def portable(cluster: Any) -> Any:
    """What another process may connect with: a ``distributed.Client`` becomes its scheduler
    address, or (address, security) when it has TLS settings; other values stay as they are.

    A Client cannot cross a fork (its event loop runs in a thread the child
    does not have): the boss process, forked from the caller, connects anew
    with this.
    """
    try:
        import distributed
    except ImportError:
        return cluster
    if not isinstance(cluster, distributed.Client):
        return cluster
    address = cluster.scheduler.address
    security = getattr(cluster, "security", None)
    return (address, security) if address.startswith("tls://") and security is not None else address


def _tls_configured() -> bool:
    """Whether Dask's configuration holds TLS client settings (the client then uses them)."""
    try:
        import dask

        return bool(dask.config.get("distributed.comm.tls.ca-file", None))
    except Exception:  # noqa: BLE001 - no configuration: none
        return False


def connect(cluster: Any, security: Any = None, timeout: float = CONNECT_TIMEOUT) -> Tuple[Any, bool, str]:
    """Connect to ``cluster``; return (client, owned, scheduler address).

    ``owned`` is True when the client was made here (the launcher closes it
    at its end), False for a client the caller passed.  ``security`` (a
    ``distributed.security.Security``, for TLS) goes to the client as it is.
    """
    distributed = require_distributed()
    if isinstance(cluster, tuple) and len(cluster) == 2:  # from portable(): (address, security)
        cluster, security = cluster
    if isinstance(cluster, distributed.Client):
        return cluster, False, getattr(cluster.scheduler, "address", None) or str(cluster)
    if not isinstance(cluster, (str, os.PathLike)):
        raise ClusterError(f"cluster must be a scheduler address, a scheduler file path or a distributed.Client, "
                           f"got {type(cluster).__name__} {cluster!r}", cluster=cluster)
    target = os.fspath(cluster)
    address = target if _ADDRESS.search(target) else _scheduler_file_address(target)
    where = target if address == target else f"{address} (from the scheduler file {target})"
    if address.startswith("tls://") and security is None and not _tls_configured():
        raise ClusterError(
            f"the Dask scheduler at {where} speaks TLS, and no security settings were given: pass "
            "security=distributed.security.Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=...), "
            "or set them in Dask's configuration (distributed.comm.tls)", cluster=target)
    try:
        client = distributed.Client(address, security=security, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        tls = " and that the security (TLS) settings match the scheduler's" if address.startswith("tls") \
            or security is not None else ""
        raise ClusterError(
            f"could not reach the Dask scheduler at {where} within {timeout:g} s ({type(exc).__name__}: {exc}). "
            f"Check that the scheduler is running, that this host can reach its address and port{tls}.",
            cluster=target) from exc
    except TypeError as exc:  # TLS without a usable context, among others
        raise ClusterError(f"could not connect to the Dask scheduler at {where}: {exc}; check the security (TLS) "
                           "settings", cluster=target) from exc
    except ValueError as exc:  # a malformed address
        raise ClusterError(f"cluster={target!r} is not a usable scheduler address: {exc}", cluster=target) from exc
    return client, True, address
