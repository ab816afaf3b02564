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


def gather_limits(row_bytes: int, *, table_bytes: int = 1 << 30, out_bytes: int = 128 << 20, repeats: int = 3,
                  seed: int = 0) -> dict:
    """The memory side of a loader's floor: how fast this machine gathers random float32 rows of
    ``row_bytes`` into a batch matrix, with every core and diskgnn's own gather kernel.

    A table of ``table_bytes`` on huge pages (as the store's tiers and segments), rows drawn
    uniformly at random, ``out_bytes`` of output per pass; the best of ``repeats`` passes. An
    epoch that assembles B bytes of input matrices cannot take less than B / ``gather_GBps``
    on this machine, however fast the disk.
    """
    import numpy as np

    from diskgnn.io import aligned_empty
    from diskgnn.kernels.gather import gather_rows
    f = max(int(row_bytes) // 4, 1)
    rows = max(int(table_bytes) // (4 * f), 1)
    table = aligned_empty(rows * f * 4, huge_pages=True).view(np.float32).reshape(rows, f)
    table[:] = 1.0  # fault the pages in before timing
    n = max(int(out_bytes) // (4 * f), 1)
    rng = np.random.default_rng(seed)
    out = np.zeros((n, f), dtype=np.float32)
    positions = np.arange(n, dtype=np.int64)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass compiles (or loads) the kernel
        ids = rng.integers(0, rows, size=n, dtype=np.int64)
        t0 = time.perf_counter()
        gather_rows(table, ids, positions, out)
        best = min(best, time.perf_counter() - t0)
    return {"gather_GBps": n * f * 4 / best / 1e9, "row_bytes": f * 4, "table_bytes": int(table.nbytes)}
