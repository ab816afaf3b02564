"""Memory cgroups and page-cache control for honest out-of-core measurements.

Each benchmarked system runs in its own memory cgroup (v1 or v2, as root)
whose limit counts the page cache too, after the page cache was dropped, so a
memmap baseline cannot quietly keep the feature file in RAM.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from diskgnn.errors import DiskGNNError

log = logging.getLogger(__name__)

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


class CgroupError(DiskGNNError, OSError):
    """A memory cgroup could not be created or used."""


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the page cache; False when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError as exc:
        log.warning("cannot drop the page cache (%s); cold-cache figures will be optimistic", exc)
        return False


def _v2_root() -> Path | None:
    for root in V2_ROOTS:
        if (root / "cgroup.controllers").exists():
            try:
                if "memory" in (root / "cgroup.controllers").read_text().split():
                    return root
            except OSError:
                continue
    return None


class MemoryCgroup:
    """A memory cgroup with a hard limit; created on enter, removed on exit."""

    def __init__(self, limit_bytes: int, name: str | None = None):
        self.limit = int(limit_bytes)
        self.name = name or f"diskgnn-{uuid.uuid4().hex[:8]}"
        self.path: Path | None = None
        self.version = 0

    def create(self) -> "MemoryCgroup":
        errors = []
        if V1_ROOT.is_dir() and (V1_ROOT / "memory.limit_in_bytes").exists():
            path = V1_ROOT / self.name
            try:
                path.mkdir(exist_ok=True)
                (path / "memory.limit_in_bytes").write_text(str(self.limit))
                try:  # no swap escape hatch where memsw accounting exists
                    (path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
                except OSError:
                    pass
                self.path, self.version = path, 1
                return self
            except OSError as exc:
                errors.append(f"v1 {path}: {exc}")
                self._rmdir(path)
        root = _v2_root()
        if root is not None:
            path = root / self.name
            try:
                try:
                    (root / "cgroup.subtree_control").write_text("+memory")
                except OSError:
                    pass
                path.mkdir(exist_ok=True)
                (path / "memory.max").write_text(str(self.limit))
                try:
                    (path / "memory.swap.max").write_text("0")
                except OSError:
                    pass
                self.path, self.version = path, 2
                return self
            except OSError as exc:
                errors.append(f"v2 {path}: {exc}")
                self._rmdir(path)
        raise CgroupError(f"cannot create a memory cgroup ({'; '.join(errors) or 'no cgroup filesystem'}); "
                          f"run as root on a machine with cgroup v1 or v2 memory control")

    def procs_file(self) -> Path:
        if self.path is None:
            raise CgroupError(f"cgroup {self.name} was not created; call create() (or use it as a context manager)")
        return self.path / "cgroup.procs"

    def add(self, pid: int) -> None:
        self.procs_file().write_text(str(pid))

    def peak_bytes(self) -> int | None:
        if self.path is None:
            return None
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.path / name).read_text().strip())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        if self.path is None:
            return 0
        try:
            if self.version == 1:
                for line in (self.path / "memory.oom_control").read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
                return int((self.path / "memory.failcnt").read_text().strip()) and 0
            for line in (self.path / "memory.events").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    @staticmethod
    def _rmdir(path: Path) -> None:
        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def remove(self) -> None:
        if self.path is not None:
            if self.version == 1:
                try:
                    (self.path / "memory.force_empty").write_text("0")
                except OSError:
                    pass
            self._rmdir(self.path)
            self.path = None

    def __enter__(self) -> "MemoryCgroup":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass(frozen=True, slots=True)
class CappedRun:
    """The outcome of one command run under a memory cap."""
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_bytes: int | None
    """Peak memory of the cgroup (RSS plus page cache), as the kernel accounted it."""
    oom_killed: bool
    cgroup: bool
    """Whether the cap was really enforced by a cgroup."""


def run_capped(cmd: list[str], limit_bytes: int | None, *, timeout: float | None = None,
               drop_caches: bool = True, env: dict | None = None) -> CappedRun:
    """Run ``cmd`` in a fresh memory cgroup limited to ``limit_bytes`` (None: no cap)."""
    if drop_caches:
        drop_page_cache()
    group = None
    if limit_bytes:
        try:
            group = MemoryCgroup(limit_bytes).create()
        except CgroupError as exc:
            log.warning("%s; running without a cap", exc)
            group = None
    procs = str(group.procs_file()) if group else None

    def enter_cgroup():  # runs in the child before exec
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    t0 = time.perf_counter()
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=enter_cgroup if procs else None, env=env)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:  # subprocess.run has killed the child
            rc, out, err = -9, exc.stdout or "", (exc.stderr or "") + f"\ntimed out after {timeout} s"
            out = out.decode() if isinstance(out, bytes) else out
            err = err.decode() if isinstance(err, bytes) else err
        wall = time.perf_counter() - t0
        peak = group.peak_bytes() if group else None
        oom = bool(group and group.oom_kills() > 0) or rc == -9
    finally:  # also on Ctrl-C: never leave a cgroup behind
        if group:
            group.remove()
    return CappedRun(returncode=rc, stdout=out, stderr=err, wall_s=wall, peak_bytes=peak,
                     oom_killed=oom and rc != 0, cgroup=group is not None)


def python_module_cmd(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def self_io_bytes() -> dict:
    """This process's I/O counters from /proc/self/io (read_bytes = bytes really read from disk)."""
    out = {}
    try:
        with open("/proc/self/io") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key.strip()] = int(value)
    except (OSError, ValueError):
        pass
    return out


def thread_read_bytes() -> int:
    """Bytes the calling thread caused to be read from disk (/proc/thread-self/io read_bytes), 0 if unknown."""
    try:
        with open("/proc/thread-self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
