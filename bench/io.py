"""``diskgnn bench io``: the disk's own limits, measured with the project's reader and writer."""
from __future__ import annotations

import os
import time
from pathlib import Path

from diskgnn.cgroup import drop_page_cache


def buffered_read_GBps(path: Path, chunk: int = 8 << 20) -> float:
    """Sequential read through the page cache (cold: the cache is dropped first when permitted)."""
    drop_page_cache()
    t0 = time.perf_counter()
    done = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = f.readinto(view)
            if not n:
                break
            done += n
    return done / (time.perf_counter() - t0) / 1e9


def disk_limits(directory, *, size: int = 1 << 30, path=None, random_seconds: float = 2.0) -> dict:
    """O_DIRECT sequential read/write GB/s (1 MiB requests, several in flight), 4 KiB random read IOPS at
    queue depth 1 and 64, and a buffered read for comparison. The test file is removed afterwards."""
    from diskgnn.io import measure_disk
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = Path(path) if path else directory / ".diskgnn-io-probe.bin"
    limits = measure_disk(probe.parent, size, random_seconds=random_seconds, keep=True)
    out = limits.to_json()
    try:
        out["buffered_read_GBps"] = buffered_read_GBps(probe.parent / ".diskgnn-io-probe.bin")
    finally:
        try:
            os.unlink(probe.parent / ".diskgnn-io-probe.bin")
        except OSError:
            pass
    out["directory"] = str(directory)
    return out
