import os
import sys

import pytest

from diskgnn.cgroup import MemoryCgroup, CgroupError, run_capped, self_io_bytes

ROOT = os.geteuid() == 0


def _can_make_cgroup() -> bool:
    try:
        with MemoryCgroup(256 << 20):
            return True
    except CgroupError:
        return False


needs_cgroup = pytest.mark.skipif(not (ROOT and _can_make_cgroup()), reason="needs root and a memory cgroup")


@needs_cgroup
def test_cap_kills_a_process_that_exceeds_it():
    hog = "import numpy as np; a = np.ones(400 << 20, dtype=np.uint8); print(a.sum())"
    run = run_capped([sys.executable, "-c", hog], 128 << 20, drop_caches=False, timeout=60)
    assert run.cgroup
    assert run.returncode != 0 and run.oom_killed


@needs_cgroup
def test_cap_allows_a_small_process_and_reports_peak():
    small = "import numpy as np; a = np.ones(40 << 20, dtype=np.uint8); print(int(a.sum()))"
    run = run_capped([sys.executable, "-c", small], 512 << 20, drop_caches=False, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(40 << 20)
    assert run.peak_bytes is not None and run.peak_bytes >= 40 << 20


def test_self_io_counters():
    io = self_io_bytes()
    assert "read_bytes" in io or not os.path.exists("/proc/self/io")
