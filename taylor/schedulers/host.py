"""What this host, or this batch job, lets us use: CPUs and memory.

Every figure a scheduler defaults to comes from here, so that "fit the job,
not the node" is decided in one place.  Each figure is the smallest of the
limits found, and :func:`describe` says which limit won:

* CPUs: the process's CPU affinity, capped by the cgroup CPU quota (v2
  ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``) and by what a
  batch system says the job has (``SLURM_CPUS_PER_TASK``, PBS/Torque
  ``NCPUS``/``PBS_NUM_PPN``, LSF ``LSB_DJOB_NUMPROC``, SGE ``NSLOTS``).
* memory: psutil's total, capped by the cgroup memory limit (v2
  ``memory.max``, v1 ``memory.limit_in_bytes``) and by Slurm's allocation
  (``SLURM_MEM_PER_NODE``, or ``SLURM_MEM_PER_CPU`` times the job's CPUs).

Discovery functions take ``root`` (where ``/proc`` and ``/sys`` are) and
``environ`` so that tests can fake a cgroup or a batch job.

Imports nothing of taylor: schedulers, the worker and the command line read the host from here, so
it stays at the bottom.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["process_cpus", "all_cpus", "usable_cpus", "usable_memory", "available_memory", "describe",
           "cpu_limits", "memory_limits", "cgroup_dirs"]

MIB = 2 ** 20
#: cgroup v1 writes a huge number (about 2**63 rounded to pages) for "no limit".
_V1_UNLIMITED = 2 ** 60

#: Environment variables of batch systems that give the job's CPU count.
CPU_VARIABLES = (
    ("SLURM_CPUS_PER_TASK", "Slurm"),
    ("NCPUS", "PBS/Torque"),
    ("PBS_NUM_PPN", "PBS/Torque"),
    ("LSB_DJOB_NUMPROC", "LSF"),
    ("NSLOTS", "Grid Engine"),
)


def all_cpus() -> List[int]:
    """Every logical CPU of the host, whatever this process may use."""
    import psutil  # imported when used: it adds 3 MiB to each process of a run

    return list(range(psutil.cpu_count(logical=True) or 1))


def process_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity calls (macOS)
        return all_cpus()


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_dirs(controller: str, root: str = "/") -> List[str]:
    """Directories of this process's cgroup for ``controller``, leaf first, then its ancestors.

    A limit set on any ancestor applies too.  cgroup v2 (unified) is tried
    first, then v1.  Inside a container the recorded path may not exist in
    the mounted hierarchy: the hierarchy's root (the container's own cgroup)
    is then used.
    """
    text = _read(os.path.join(root, "proc/self/cgroup")) or ""
    base = os.path.join(root, "sys/fs/cgroup")
    found: List[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            mount = base
        elif controller in controllers.split(","):
            mount = os.path.join(base, controllers)
            if not os.path.isdir(mount):
                mount = os.path.join(base, controller)
        else:
            continue
        path = path.strip("/")
        leaf = os.path.join(mount, path) if path else mount
        if not os.path.isdir(leaf):
            leaf = mount
        while True:
            found.append(leaf)
            if os.path.normpath(leaf) == os.path.normpath(mount):
                break
            leaf = os.path.dirname(leaf)
    return found


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def cpu_limits(root: str = "/", environ: Optional[Mapping[str, str]] = None,
               affinity: Optional[Sequence[int]] = None) -> List[Tuple[int, str]]:
    """Every CPU limit found, as ``(cpus, source)``; the smallest applies."""
    environ = os.environ if environ is None else environ
    affinity = process_cpus() if affinity is None else affinity
    limits = [(max(1, len(affinity)), "CPU affinity of this process")]
    for directory in cgroup_dirs("cpu", root):
        v2 = _read(os.path.join(directory, "cpu.max"))
        if v2 is not None:
            fields = v2.split()
            if len(fields) == 2 and fields[0] != "max":
                quota, period = _positive_int(fields[0]), _positive_int(fields[1])
                if quota and period:
                    limits.append((max(1, math.ceil(quota / period)), f"cgroup CPU quota ({directory}/cpu.max)"))
            continue
        quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
        period = _read(os.path.join(directory, "cpu.cfs_period_us"))
        quota_n, period_n = _positive_int(quota), _positive_int(period)
        if quota_n and period_n:  # -1 means no quota
            limits.append((max(1, math.ceil(quota_n / period_n)),
                           f"cgroup CPU quota ({directory}/cpu.cfs_quota_us)"))
    for variable, system in CPU_VARIABLES:
        number = _positive_int(environ.get(variable))
        if number:
            limits.append((number, f"{system} {variable}={number}"))
    return limits


def _job_cpus(root: str, environ: Mapping[str, str], affinity: Optional[Sequence[int]]) -> int:
    """CPUs of the job on this node, for Slurm's memory per CPU."""
    number = _positive_int(environ.get("SLURM_CPUS_ON_NODE"))
    return number or min(n for n, _ in cpu_limits(root, environ, affinity))


def memory_limits(root: str = "/", environ: Optional[Mapping[str, str]] = None,
                  total: Optional[float] = None, affinity: Optional[Sequence[int]] = None
                  ) -> List[Tuple[float, str]]:
    """Every memory limit found, in MiB, as ``(mib, source)``; the smallest applies."""
    environ = os.environ if environ is None else environ
    if total is None:
        import psutil

        total = psutil.virtual_memory().total / MIB
    limits = [(float(total), "total memory of the host (psutil)")]
    for directory in cgroup_dirs("memory", root):
        v2 = _read(os.path.join(directory, "memory.max"))
        if v2 is not None:
            number = _positive_int(v2)  # "max" means no limit
            if number:
                limits.append((number / MIB, f"cgroup memory limit ({directory}/memory.max)"))
            continue
        number = _positive_int(_read(os.path.join(directory, "memory.limit_in_bytes")))
        if number and number < _V1_UNLIMITED:
            limits.append((number / MIB, f"cgroup memory limit ({directory}/memory.limit_in_bytes)"))
    per_node = _positive_int(environ.get("SLURM_MEM_PER_NODE"))
    if per_node:
        limits.append((float(per_node), f"Slurm SLURM_MEM_PER_NODE={per_node}"))
    per_cpu = _positive_int(environ.get("SLURM_MEM_PER_CPU"))
    if per_cpu:
        cpus = _job_cpus(root, environ, affinity)
        limits.append((float(per_cpu * cpus), f"Slurm SLURM_MEM_PER_CPU={per_cpu} x {cpus} CPUs"))
    return limits


def available_memory(root: str = "/") -> float:
    """Memory (MiB) that new processes may take now without swapping.

    psutil's ``available`` (the kernel's MemAvailable: free memory plus the
    cache it can reclaim), capped by the room left under this process's
    cgroup memory limit (limit minus current usage).
    """
    import psutil

    available = psutil.virtual_memory().available / MIB
    for directory in cgroup_dirs("memory", root):
        limit = _read(os.path.join(directory, "memory.max"))
        current = _read(os.path.join(directory, "memory.current"))
        if limit is None:
            limit = _read(os.path.join(directory, "memory.limit_in_bytes"))
            current = _read(os.path.join(directory, "memory.usage_in_bytes"))
        limit_n, current_n = _positive_int(limit), _positive_int(current) or 0
        if limit_n and limit_n < _V1_UNLIMITED:
            available = min(available, max(0.0, (limit_n - current_n) / MIB))
    return available


def _smallest(limits: List[Tuple[Any, str]]) -> Tuple[Any, str]:
    return min(limits, key=lambda limit: limit[0])


def usable_cpus(root: str = "/", environ: Optional[Mapping[str, str]] = None) -> int:
    """How many CPUs this job may keep busy at once."""
    return _smallest(cpu_limits(root, environ))[0]


def usable_memory(root: str = "/", environ: Optional[Mapping[str, str]] = None) -> float:
    """How much memory (MiB) this job may use."""
    return _smallest(memory_limits(root, environ))[0]


def describe(root: str = "/", environ: Optional[Mapping[str, str]] = None) -> Dict[str, Tuple[Any, str]]:
    """Each figure the schedulers default to, with where it came from.

    Keys: ``cpus`` (int) and ``memory_mib`` (float); values are
    ``(figure, source)`` pairs, the source a short human-readable phrase
    naming the limit that won.  ``available_mib`` is what the measured-memory
    option would see now (see :func:`available_memory`).
    """
    return {
        "cpus": _smallest(cpu_limits(root, environ)),
        "memory_mib": _smallest(memory_limits(root, environ)),
        "available_mib": (available_memory(root), "available memory now (psutil MemAvailable, cgroup room)"),
    }
