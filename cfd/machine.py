"""This machine's share of it: the cores this process may use (CPU affinity and
the cgroup CPU quota) and how many worker processes that makes by default; and
handing freed heap memory back to it after a run (``return_free_memory``).
A leaf module: it imports nothing from cfd, so ``cfd.settings`` and
``cfd.workers`` both read it without importing each other.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
from pathlib import Path

MAX_DEFAULT_WORKERS = 8    # a cap: each worker holds its own torch and guidance (memory: docs/performance.md, "CPU choices")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """Cores the cgroup CPU quota allows this process, rounded up (None: no
    quota): cgroup v2 ``cpu.max`` ("quota period" or "max ...") of this
    process's cgroup and its ancestors, and cgroup v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``; the smallest."""
    limits = []
    rel = "/"
    for line in (_read(self_cgroup) or "").splitlines():
        if line.startswith("0::"):
            rel = line[3:] or "/"
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    for depth in range(len(parts), -1, -1):   # this cgroup, then each ancestor up to the root
        fields = (_read(root.joinpath(*parts[:depth]) / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                limits.append(math.ceil(int(fields[0]) / int(fields[1])))
            except (ValueError, ZeroDivisionError):
                pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        try:
            if quota is not None and period is not None and int(quota) > 0:
                limits.append(math.ceil(int(quota) / int(period)))
        except (ValueError, ZeroDivisionError):
            pass
    return max(1, min(limits)) if limits else None


def usable_cores(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """The cores this process may run on: its CPU affinity, or its cgroup CPU
    quota if smaller (``os.cpu_count()`` counts the host's cores in a container)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota(root, self_cgroup)
    return max(1, min(cores, quota) if quota is not None else cores)


def default_worker_count(cap: int = MAX_DEFAULT_WORKERS, root: Path = CGROUP_ROOT,
                         self_cgroup: Path = SELF_CGROUP) -> int:
    """Compare's worker processes when $CFD_WORKERS is unset: ``usable_cores``, at most ``cap``."""
    return max(1, min(cap, usable_cores(root, self_cgroup)))


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def return_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc's ``malloc_trim(0)``; a
    no-op elsewhere). A run frees hundreds of MB of small tensors that glibc's
    arenas otherwise keep, so a server's RSS would ratchet up run after run."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
