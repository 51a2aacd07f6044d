"""Declared memory, enforced: each worker's processes kept to the memory it declared.

Memory schedulers built with ``enforce=True`` give every worker the hook
:class:`LimitMemory`, which runs in the worker's process before its task (so
it costs nothing when not asked for) and applies one of two limits:

* **cgroup v2** ``memory.max``, where this job's cgroup is delegated to it:
  the worker moves into a cgroup of its own, ``taylor-<boss pid>-<worker pid>``,
  made beside the boss's (or under it), with ``memory.max`` its declared
  memory, no swap and ``memory.oom.group`` set.  The whole process tree of the
  task (programs it starts included) counts together; over the limit the
  kernel kills that tree, and only it.  The boss reads the cgroup's
  ``memory.events`` when the worker ends, then removes the cgroup.
* **RLIMIT_AS** otherwise: the worker's address space may grow by its
  declared memory beyond its size at the start of its task (the interpreter
  it inherits from the boss counts for nothing).  An allocation past it fails
  (Python raises ``MemoryError``).  It limits each process on its own (a
  program the task starts gets the same limit, not a share of it) and counts
  virtual memory: each extra thread's stack and malloc arena, and every
  memory-mapped file, count in full whether touched or not.

Either way the worker's entry is a :class:`~taylor.errors.MemoryLimitError`
that says it exceeded its declared memory.

Like every scheduler module, imports nothing of taylor outside :mod:`taylor.schedulers` and
:mod:`taylor.errors`: never the boss loop, the Boss or a worker process's side.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, List, Optional, Tuple

from .host import MIB

__all__ = ["LimitMemory", "cgroup_parent", "cgroup_of", "limit_address_space"]

log = logging.getLogger("taylor.limits")

_PREFIX = "taylor-"


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _cgroup2_dir(proc_cgroup: str, mountinfo: str) -> Tuple[Optional[str], Optional[str]]:
    """The directory of this process's cgroup v2 and the mount point of its hierarchy, from the
    texts of /proc/self/cgroup and /proc/self/mountinfo; (None, None) without a cgroup v2."""
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if path is None:
        return None, None
    path = path.split(" (deleted)")[0]
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        if line.split(" - ", 1)[1].split()[:1] != ["cgroup2"]:
            continue
        root, mount = fields[3], fields[4]
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return os.path.join(mount, path[len(root.rstrip("/")):].lstrip("/")).rstrip("/") or "/", mount
    return None, None


def cgroup_parent(proc_cgroup: str = "/proc/self/cgroup",
                  mountinfo: str = "/proc/self/mountinfo") -> Tuple[Optional[str], str]:
    """Where workers' cgroups can be made with a memory controller, and why (or why not).

    The job's cgroup is delegated to it when this process may create cgroups
    that get the memory controller: its own cgroup, if memory is enabled for
    its children there (only the root of a hierarchy may hold processes and do
    so), else its parent (the processes of a delegated job usually sit in a
    leaf of the delegated cgroup: systemd's scopes, Slurm's task cgroups).
    Returns (directory, reason) with directory None where none is usable.
    """
    own, mount = _cgroup2_dir(_read(proc_cgroup) or "", _read(mountinfo) or "")
    if own is None:
        return None, "no cgroup v2 hierarchy here"
    for candidate in (own, os.path.dirname(own)) if own != mount.rstrip("/") else (own,):
        control = _read(os.path.join(candidate, "cgroup.subtree_control"))
        if control is None or "memory" not in control.split():
            continue
        if not os.access(candidate, os.W_OK) or not os.access(os.path.join(candidate, "cgroup.procs"), os.W_OK):
            return None, f"the cgroup {candidate} has a memory controller but is not writable by this job"
        return candidate, f"cgroup v2 memory.max under {candidate}"
    return None, f"the cgroup v2 {own} (or its parent) does not delegate the memory controller to this job"


def cgroup_of(parent: str, creator: int, pid: int) -> str:
    """The cgroup of worker ``pid``, made under ``parent`` for the run of boss ``creator``."""
    return os.path.join(parent, f"{_PREFIX}{creator}-{pid}")


def limit_address_space(mib: float) -> int:
    """Let this process's address space grow by ``mib`` MiB beyond its size now (RLIMIT_AS); return
    the limit in bytes.  A lower limit already in force stays."""
    import resource

    statm = _read("/proc/self/statm")
    size = int(statm.split()[0]) * os.sysconf("SC_PAGE_SIZE") if statm else 0
    if not size:  # no /proc: the size of a fresh interpreter with taylor, generously
        size = 512 * MIB
    limit = size + int(mib * MIB)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    for bound in (soft, hard):
        if bound != resource.RLIM_INFINITY:
            limit = min(limit, bound)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


class LimitMemory:
    """Worker hook: limit the worker's processes to its declared memory (see the module's notes).

    ``default`` (MiB) stands for a worker that declares no memory, as the
    scheduler counts it.  ``parent`` is where to make cgroups (None: use
    RLIMIT_AS), ``creator`` the pid of the boss that made this hook.  Built in
    the boss; called in each worker's process before its task; asked by the
    boss, through :meth:`ended`, how each worker's limit went.
    """

    def __init__(self, default: float, parent: Optional[str], creator: Optional[int] = None) -> None:
        self.default = float(default)
        self.parent = parent
        self.creator = os.getpid() if creator is None else creator
        self._leftover: List[str] = []  # cgroups still busy when their worker ended (boss side)

    def __getstate__(self) -> dict:
        return {"default": self.default, "parent": self.parent, "creator": self.creator}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _leftover=[])

    def __repr__(self) -> str:
        return f"LimitMemory(default={self.default:g}, parent={self.parent!r})"

    def mib(self, worker: Any) -> float:
        """The memory (MiB) ``worker`` (or its instructions) may use."""
        declared = getattr(worker, "memory", None)
        if declared is None and hasattr(worker, "get"):
            declared = worker.get("memory")
        return float(declared or 0.0) or self.default

    # ------------------------------------------------------------ in the worker
    def __call__(self, worker: Any) -> None:
        mib = self.mib(worker)
        if self.parent is not None and self._enter_cgroup(mib):
            return
        limit_address_space(mib)

    def _enter_cgroup(self, mib: float) -> bool:
        """Move this process into a cgroup of its own limited to ``mib``; False if it cannot."""
        path = cgroup_of(self.parent, self.creator, os.getpid())
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError:
            return False
        try:
            _write(os.path.join(path, "memory.max"), str(int(mib * MIB)))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                try:  # absent without swap accounting, or on older kernels: memory.max is what matters
                    _write(os.path.join(path, name), value)
                except OSError:
                    pass
            _write(os.path.join(path, "cgroup.procs"), str(os.getpid()))
        except OSError:
            try:
                os.rmdir(path)
            except OSError:
                pass
            return False
        return True

    # -------------------------------------------------------------- in the boss
    def ended(self, worker: Any, pid: Optional[int], raised: Optional[BaseException]) -> Optional[str]:
        """What to say of ``worker`` (process ``pid``), which ended having ``raised`` (or None), if its
        memory limit is what ended it; None otherwise.  Removes its cgroup, if it had one."""
        mib = self.mib(worker)
        over = None
        if self.parent is not None and pid is not None:
            path = cgroup_of(self.parent, self.creator, pid)
            events = _read(os.path.join(path, "memory.events"))
            if events is not None:
                counts = dict(line.split()[:2] for line in events.splitlines() if len(line.split()) >= 2)
                if int(counts.get("oom_kill", "0") or 0) > 0 or int(counts.get("oom_group_kill", "0") or 0) > 0:
                    over = (f"exceeded its declared memory of {mib:g} MiB: the kernel killed its processes "
                            f"in their cgroup ({path}, memory.max {mib:g} MiB)")
                self._remove(path)
        if over is None and isinstance(raised, MemoryError):
            what = f"{type(raised).__name__}: {raised}" if str(raised) else type(raised).__name__
            over = (f"exceeded its declared memory of {mib:g} MiB: an allocation failed ({what}) under the "
                    f"limit of its address space (RLIMIT_AS: its size at start plus {mib:g} MiB)")
        if over is not None:
            over += "; declare more memory for it, or make it use less"
        return over

    def _remove(self, path: str) -> None:
        """Remove the cgroup ``path`` and any left earlier; one still busy (its processes are
        being killed) is tried again at the next end."""
        left = []
        for one in [*self._leftover, path]:
            try:
                os.rmdir(one)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.EAGAIN):
                    left.append(one)
        self._leftover = left[-1024:]
