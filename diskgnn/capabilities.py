"""Hardware and OS capability checks, run lazily (never at import)."""
from __future__ import annotations

import functools
import os
import tempfile


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install means: no CUDA
        return False


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil), capped by our cgroup limit if any."""
    import psutil
    avail = int(psutil.virtual_memory().available)
    limit = cgroup_memory_limit()
    if limit is not None:
        # the page cache charged to the cgroup is reclaimed before anything is killed: it is available
        used = max((cgroup_memory_usage() or 0) - cgroup_file_cache(), 0)
        avail = min(avail, max(limit - used, 0))
    return avail


def _own_cgroup_paths() -> list[str]:
    paths = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                parts = line.strip().split(":", 2)
                if len(parts) != 3:
                    continue
                _, controllers, rel = parts
                if controllers == "":
                    paths.append(os.path.join("/sys/fs/cgroup", rel.lstrip("/")))
                elif "memory" in controllers.split(","):
                    paths.append(os.path.join("/sys/fs/cgroup/memory", rel.lstrip("/")))
    except OSError:
        pass
    return paths


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_memory_limit() -> int | None:
    """The memory limit of this process's cgroup (v1 or v2), or None when unlimited."""
    for base in _own_cgroup_paths():
        for name in ("memory.max", "memory.limit_in_bytes"):
            value = _read_int(os.path.join(base, name))
            if value is not None and value < (1 << 60):
                return value
    return None


def cgroup_memory_usage() -> int | None:
    for base in _own_cgroup_paths():
        for name in ("memory.current", "memory.usage_in_bytes"):
            value = _read_int(os.path.join(base, name))
            if value is not None:
                return value
    return None


def cgroup_file_cache() -> int:
    """Reclaimable page cache charged to this process's memory cgroup (active + inactive file pages), or 0."""
    for base in _own_cgroup_paths():
        try:
            with open(os.path.join(base, "memory.stat")) as f:
                stat = dict(line.split()[:2] for line in f if len(line.split()) >= 2)
        except OSError:
            continue
        for prefix in ("total_", ""):  # v1 reports the hierarchy's totals with a prefix; v2 has no prefix
            keys = (f"{prefix}inactive_file", f"{prefix}active_file")
            if all(k in stat for k in keys):
                try:
                    return sum(int(stat[k]) for k in keys)
                except ValueError:
                    return 0
    return 0


@functools.lru_cache(maxsize=None)
def supports_o_direct(directory: str) -> bool:
    """Whether files in ``directory`` can be opened with O_DIRECT (tmpfs cannot)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd, path = tempfile.mkstemp(dir=directory, prefix=".odirect-probe-")
    except OSError:
        return False
    try:
        os.close(fd)
        try:
            fd2 = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            return False
        os.close(fd2)
        return True
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
