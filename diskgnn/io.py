"""Aligned direct I/O: the reader and writer behind packing and training, and the disk-limit probes.

Reads and writes bypass the page cache with ``O_DIRECT`` where the filesystem
allows it (tmpfs does not: then buffered I/O is used and a warning logged
once). O_DIRECT needs 4096-aligned memory, offsets and lengths, so:

* buffers come from :func:`aligned_empty` (a numpy array over-allocated and
  sliced to a 4096-aligned start);
* a read of ``length`` bytes at an aligned offset asks for ``align_up(length)``
  bytes; the file may end earlier (last partial page), which is fine as long as
  the bytes the caller needs are there, otherwise the file is truncated and
  :class:`~diskgnn.errors.IntegrityError` is raised;
* writes are padded to 4096 bytes with zeros and the file is cut back to its
  logical size at the end.

Large transfers are split into requests (1 MiB by default) issued by a thread
pool, so several are in flight; ``os.preadv``/``os.pwritev`` release the GIL.
"""
from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import mmap
import os
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from diskgnn.errors import ConfigError, IntegrityError, InputNotFoundError
from diskgnn.manifest import raise_if_disk_full

log = logging.getLogger(__name__)

ALIGN = 4096
REQUEST_SIZE = 1 << 20
IO_DEPTH = 8
_warned_buffered: set[str] = set()


def align_up(n: int, alignment: int = ALIGN) -> int:
    """The smallest multiple of ``alignment`` that is >= ``n``."""
    return -(-int(n) // alignment) * alignment


def align_down(n: int, alignment: int = ALIGN) -> int:
    """The largest multiple of ``alignment`` that is <= ``n``."""
    return int(n) // alignment * alignment


HUGE_BUFFER = 32 << 20


def pread_elements(path, dtype, lo: int, hi: int, *, fix: str = "run diskgnn sample again",
                   direct: bool = False) -> np.ndarray:
    """Elements lo..hi-1 of a raw array file, read with ``pread`` into a new array (not mapped).

    The file is read without readahead (POSIX_FADV_RANDOM): batches are read in a shuffled order,
    and the kernel's readahead (8 MiB on the disks measured here) would read the neighbouring
    batches' bytes too, which a tight memory cap evicts before they are used. ``direct`` reads
    the aligned pages around the range with O_DIRECT (buffered where the filesystem refuses
    it) and returns a view into them: nothing enters the page cache, where under a tight memory
    cap these bytes would push out the pages of the program's own code, to be read again.
    ``fix`` ends the error for a file shorter than the range.
    """
    dtype = np.dtype(dtype)
    lo, hi = int(lo), max(int(hi), int(lo))
    if hi == lo:
        return np.empty(0, dtype=dtype)
    if direct:  # buffered where the filesystem refuses O_DIRECT
        fd, direct = _open(path, os.O_RDONLY, None)
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        if direct:
            first, stop = lo * dtype.itemsize, hi * dtype.itemsize
            start = align_down(first)
            buf = aligned_empty(align_up(stop) - start)
            out = buf[first - start:stop - start].view(dtype)
            view, offset, need = memoryview(buf), start, stop - start  # the last page may end at the file's end
        else:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            out = np.empty(hi - lo, dtype=dtype)
            view, offset, need = memoryview(out).cast("B"), lo * dtype.itemsize, out.nbytes
        done = 0
        while done < need:
            got = os.preadv(fd, [view[done:]], offset + done) if not (direct and done % ALIGN) else 0
            if got <= 0:  # (O_DIRECT stops short of a page only at the end of the file)
                raise IntegrityError(f"{path} ends before byte {hi * dtype.itemsize}; {fix}")
            done += got
    finally:
        os.close(fd)
    return out


def aligned_empty(nbytes: int, alignment: int = ALIGN, *, huge_pages: bool = False) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes`` whose data starts on an ``alignment`` boundary.

    Buffers of 32 MiB and more are anonymous mappings advised *not* to use transparent huge
    pages: numpy asks for huge pages on large arrays, and faulting them in with direct
    compaction was measured here at 7 s of system time for a 3 GiB buffer, against 1 s
    with 4 KiB pages. ``huge_pages`` asks for them instead, for long-lived buffers read at
    random rows (cache tiers, held segments): there every row read on 4 KiB pages is also a
    TLB miss, and huge pages made the assembly of a 3-layer epoch at m from 1.6 GiB segments
    1.5x faster (the fault cost is paid once, as the buffer is reused).
    """
    nbytes = int(nbytes)
    if nbytes >= HUGE_BUFFER and alignment <= mmap.PAGESIZE:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            try:
                region.madvise(mmap.MADV_HUGEPAGE if huge_pages else mmap.MADV_NOHUGEPAGE)
            except OSError:
                pass
        return np.frombuffer(region, dtype=np.uint8)
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    shift = (-raw.ctypes.data) % alignment
    return raw[shift:shift + nbytes]


_MADV_POPULATE_WRITE = 23  # Linux 5.14+


def prefault(buf: np.ndarray, step: int = 64 << 20) -> bool:
    """Map every page of ``buf`` now (madvise MADV_POPULATE_WRITE), without changing its content.

    Called through ctypes, so the GIL is released: a thread can prefault an output buffer while
    another fills it. Done ``step`` bytes at a time: populating holds the process's mmap lock, and
    one call over gigabytes stalled every allocation of the other threads for seconds. Returns
    False where the kernel does not support it (then pages fault on use).
    """
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    base, total = buf.ctypes.data, buf.nbytes
    for lo in range(0, total, step):
        if libc.madvise(ctypes.c_void_p(base + lo), ctypes.c_size_t(min(step, total - lo)),
                        _MADV_POPULATE_WRITE) != 0:
            return False
    return True


def is_aligned(buf: np.ndarray, alignment: int = ALIGN) -> bool:
    """Whether ``buf``'s data starts on an ``alignment`` boundary (an empty array always does)."""
    return buf.size == 0 or buf.ctypes.data % alignment == 0


def _open(path: str | os.PathLike, flags: int, direct: bool | None, mode: int = 0o644) -> tuple[int, bool]:
    """Open with O_DIRECT when asked (None = when possible); returns (fd, direct)."""
    path = os.fspath(path)
    if direct is not False and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, mode), True
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            if direct:
                raise ConfigError(f"{path}: the filesystem does not support O_DIRECT ({exc.strerror}); "
                                  f"put the file on a disk-backed filesystem or allow buffered I/O") from None
    _warn_buffered(path)
    return os.open(path, flags, mode), False


def _pwrite_all(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Write all of ``view`` at ``offset`` (short writes continued); a full disk raises DiskFullError."""
    done = 0
    while done < len(view):
        try:
            done += os.pwritev(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise_if_disk_full(exc, path.parent)
            raise


def _warn_buffered(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in _warned_buffered:
        _warned_buffered.add(directory)
        log.warning("O_DIRECT is not supported under %s (tmpfs?); using buffered I/O, so reads go through "
                    "the page cache and I/O figures there do not measure the disk", directory)


class _Closing:
    """``with`` support and a last-resort ``close()`` when garbage-collected, for classes with a ``close``."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class AlignedReader(_Closing):
    """Reads byte ranges of one file into aligned buffers with several requests in flight.

    Thread-safe: several threads may call :meth:`read_runs` at once (they share
    the request pool). ``direct=None`` uses O_DIRECT when the filesystem allows.
    """

    def __init__(self, path: str | os.PathLike, *, direct: bool | None = None,
                 request_size: int = REQUEST_SIZE, depth: int = IO_DEPTH):
        self.path = Path(path)
        if request_size <= 0 or request_size % ALIGN:
            raise ConfigError(f"request_size must be a positive multiple of {ALIGN}, got {request_size}")
        if depth < 1:
            raise ConfigError(f"I/O depth must be at least 1, got {depth}")
        try:
            self.fd, self.direct = _open(self.path, os.O_RDONLY, direct)
        except FileNotFoundError:
            raise InputNotFoundError(f"{self.path} does not exist") from None
        self.request_size = int(request_size)
        self.depth = int(depth)
        self._pool = cf.ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="diskgnn-read")
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.requests = 0

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            self._pool.shutdown(wait=True)
            os.close(self.fd)
            self.fd = -1

    def _read_one(self, view: memoryview, offset: int, need: int) -> int:
        """Fill ``view`` from ``offset``; return bytes read. Fewer than ``need`` means the file ended."""
        got = 0
        total = len(view)
        while got < total:
            try:
                n = os.preadv(self.fd, [view[got:]], offset + got)
            except OSError as exc:
                if exc.errno == errno.EINVAL and self.direct:
                    raise ConfigError(f"{self.path}: O_DIRECT read refused at offset {offset + got} "
                                      f"({exc.strerror}); the buffer or offset is not aligned") from None
                raise
            if n == 0:
                break
            got += n
            if self.direct and got % ALIGN:
                break  # O_DIRECT returns a partial page only at the end of the file
        return got

    def read_runs(self, runs, out: np.ndarray, *, need: list[int] | None = None,
                  checksums: list | None = None) -> int:
        """Read byte ranges ``runs`` = [(offset, length), ...] back to back into ``out``.

        Offsets must be multiples of 4096. Run k lands at ``sum(align_up(length))``
        of the runs before it, so every run starts aligned in ``out``; ``out``
        must be aligned and hold the sum of the aligned lengths. ``need[k]``
        (default: the run's length) is how many of a run's bytes must exist in
        the file; fewer raises :class:`IntegrityError` (truncated file).
        ``checksums``, when a list, receives the crc32 of each run's ``length``
        bytes, computed request by request while later requests are in flight.
        Returns the bytes transferred.
        """
        return self.submit_runs(runs, out, need=need, checksums=checksums).wait()

    def submit_runs(self, runs, out: np.ndarray, *, need: list[int] | None = None,
                    checksums: list | None = None) -> "PendingRead":
        """Start :meth:`read_runs` and return at once; :meth:`PendingRead.wait` finishes it.

        The requests queue behind those already submitted (``depth`` run at a time), so a
        caller that submits the next read before waiting for the current one keeps the disk
        busy across reads. ``out`` and ``checksums`` must not be touched before ``wait()``.
        The crc32 of a run is extended piece by piece, in file order, by the I/O threads as
        the pieces arrive.
        """
        if self.direct and not is_aligned(out):
            raise ConfigError("read buffer is not 4096-aligned; allocate it with diskgnn.io.aligned_empty")
        view = memoryview(out).cast("B")
        big, small = [], []   # big: one request of a long run; small: a list of short runs read by one worker
        batch, batch_bytes = [], 0
        pos = 0
        for k, (offset, length) in enumerate(runs):
            offset, length = int(offset), int(length)
            if offset % ALIGN:
                raise ConfigError(f"read offset {offset} in {self.path} is not a multiple of {ALIGN}")
            span = align_up(length)
            if pos + span > len(view):
                raise ConfigError(f"read buffer of {len(view)} bytes is too small for {pos + span} bytes")
            must = length if need is None else int(need[k])
            if span > self.request_size:
                for lo in range(0, span, self.request_size):
                    size = min(self.request_size, span - lo)
                    big.append((pos + lo, offset + lo, size, min(size, max(must - lo, 0)), k,
                                min(size, max(length - lo, 0))))
            elif span:
                batch.append((pos, offset, span, min(span, must), k, length))
                batch_bytes += span
                if batch_bytes >= self.request_size or len(batch) >= 256:
                    small.append(batch)
                    batch, batch_bytes = [], 0
            pos += span
        if batch:
            small.append(batch)
        crcs = _RunCrcs(view, len(runs), big) if checksums is not None else None
        pending = PendingRead(self, crcs, checksums, len(big) + sum(len(b) for b in small))
        if len(big) + len(small) == 1:  # one job: no thread hop
            job = (lambda: self._read_big(view, big[0], crcs)) if big else (
                lambda: self._read_small(view, small[0], crcs))
            pending._finish_inline(job)
            return pending
        pending.futures = [self._pool.submit(self._read_big, view, job, crcs) for job in big]
        pending.futures += [self._pool.submit(self._read_small, view, b, crcs) for b in small]
        return pending

    def _read_big(self, view: memoryview, job, crcs: "_RunCrcs | None") -> int:
        got = self._check(job, self._read_one(view[job[0]:job[0] + job[2]], job[1], job[3]))
        if crcs is not None:
            crcs.piece_done(job)
        return got

    def _read_small(self, view: memoryview, jobs, crcs: "_RunCrcs | None") -> int:
        """Read a list of short runs one after the other (one pool task: little Python per request)."""
        total = 0
        for job in jobs:
            total += self._check(job, self._read_one(view[job[0]:job[0] + job[2]], job[1], job[3]))
            if crcs is not None:
                crcs.whole_run(job)
        return total

    def _check(self, job, got: int) -> int:
        offset, want = job[1], job[3]
        if got < want:
            raise IntegrityError(f"{self.path} is truncated: wanted {want} bytes at offset {offset}, the file "
                                 f"ends at {self.size}; re-create the directory that holds it")
        return got

    def read(self, offset: int, length: int, out: np.ndarray | None = None, *,
             huge_pages: bool = False) -> np.ndarray:
        """``length`` bytes at ``offset`` (any offset) as a uint8 array (a view of ``out`` when given;
        ``huge_pages``: see :func:`aligned_empty`)."""
        lo = align_down(offset)
        skip = int(offset) - lo
        span = align_up(skip + int(length))
        if out is None or len(out) < span or not is_aligned(out):
            out = aligned_empty(span, huge_pages=huge_pages)
        self.read_runs([(lo, skip + int(length))], out[:span])
        return out[skip:skip + int(length)]

    def read_file(self, expected: int | None = None, *, huge_pages: bool = False) -> np.ndarray:
        """The whole file (or its first ``expected`` bytes, which must exist) as a uint8 array."""
        size = self.size if expected is None else int(expected)
        if size == 0:
            return np.zeros(0, dtype=np.uint8)
        return self.read(0, size, huge_pages=huge_pages)

    def stream(self, chunk_bytes: int, start: int = 0, end: int | None = None, *,
               prefetch: bool = True) -> "ChunkStream":
        """An iterator of ``(offset, uint8 array)`` chunks of ``[start, end)`` in order, reading one chunk ahead.

        With ``prefetch`` the first chunk is requested at once, so the caller can do other
        work while it arrives. ``start`` and ``chunk_bytes`` must be multiples of 4096; two
        buffers are reused, so a chunk is only valid until the next one is requested. Close
        the stream (or exhaust it, or use it in a ``with``) to stop reading early.
        """
        end = self.size if end is None else int(end)
        if start % ALIGN or chunk_bytes % ALIGN or chunk_bytes <= 0:
            raise ConfigError(f"stream start {start} and chunk size {chunk_bytes} must be multiples of {ALIGN}")
        return ChunkStream(self, int(chunk_bytes), int(start), end, prefetch)


class _RunCrcs:
    """crc32 of each run of one :meth:`AlignedReader.submit_runs`, extended in file order as pieces arrive.

    A long run is read in several requests that complete in any order; the thread that
    completes the next piece in order extends the run's crc with it and with every
    following piece already there, so checksumming overlaps the requests still in flight
    and is spread over the I/O threads.
    """

    def __init__(self, view: memoryview, nruns: int, big: list):
        self.view = view
        self.values = [0] * nruns
        self._lock = threading.Lock()
        self._pieces: dict[int, list] = {}  # run -> its pieces (jobs) in file order
        for job in big:
            self._pieces.setdefault(job[4], []).append(job)
        self._next = {k: 0 for k in self._pieces}
        self._ready: dict[int, set] = {k: set() for k in self._pieces}
        self._busy: set[int] = set()

    def whole_run(self, job) -> None:
        self.values[job[4]] = zlib.crc32(self.view[job[0]:job[0] + job[5]])

    def piece_done(self, job) -> None:
        k = job[4]
        pieces = self._pieces[k]
        with self._lock:
            self._ready[k].add(job[0])
        while True:
            with self._lock:
                j = self._next[k]
                if k in self._busy or j >= len(pieces) or pieces[j][0] not in self._ready[k]:
                    return
                self._busy.add(k)
            piece = pieces[j]
            if piece[5]:
                self.values[k] = zlib.crc32(self.view[piece[0]:piece[0] + piece[5]], self.values[k])
            with self._lock:
                self._next[k] = j + 1
                self._busy.discard(k)


class PendingRead:
    """The requests of one :meth:`AlignedReader.submit_runs` in flight."""

    def __init__(self, reader: AlignedReader, crcs: _RunCrcs | None, checksums: list | None, requests: int):
        self.reader, self._crcs, self._checksums, self._requests = reader, crcs, checksums, requests
        self.futures: list = []
        self._result: int | None = None
        self._error: BaseException | None = None
        self._counted = False

    def _finish_inline(self, job) -> None:
        try:
            self._result = job()
        except BaseException as exc:  # raised again by wait(), like a failed request in the pool
            self._error = exc

    def done(self) -> bool:
        return self._result is not None or self._error is not None or all(f.done() for f in self.futures)

    def wait(self) -> int:
        """Block until every request is done; return the bytes transferred (fills ``checksums``)."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            try:
                self._result = sum(fut.result() for fut in self.futures)
            except BaseException:
                for fut in self.futures:  # the buffer stays in use until no request writes to it
                    fut.cancel()
                cf.wait(self.futures)
                raise
        if not self._counted:
            self._counted = True
            with self.reader._lock:
                self.reader.bytes_read += self._result
                self.reader.requests += self._requests
        if self._checksums is not None and self._crcs is not None:
            self._checksums[:] = self._crcs.values
        return self._result


class ChunkStream(_Closing):
    """Chunks of one file region from an :class:`AlignedReader`; see :meth:`AlignedReader.stream`."""

    def __init__(self, reader: AlignedReader, chunk_bytes: int, start: int, end: int, prefetch: bool):
        self._reader, self._chunk, self._end = reader, chunk_bytes, end
        self._offsets = list(range(start, end, chunk_bytes))
        self._next = 0
        self._bufs = [aligned_empty(chunk_bytes) if self._offsets else None,
                      aligned_empty(chunk_bytes) if len(self._offsets) > 1 else None]
        self._ahead = None
        self._future = None
        if prefetch and self._offsets:
            self._ahead = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-prefetch")
            self._future = self._ahead.submit(self._load, 0)

    def _load(self, k: int) -> np.ndarray:
        off = self._offsets[k]
        length = min(self._chunk, self._end - off)
        buf = self._bufs[k % 2]
        self._reader.read_runs([(off, length)], buf[:align_up(length)])
        return buf[:length]

    def __iter__(self) -> "ChunkStream":
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        k = self._next
        if k >= len(self._offsets):
            self.close()
            raise StopIteration
        self._next = k + 1
        try:
            if self._ahead is None:
                return self._offsets[k], self._load(k)
            chunk = self._future.result()
            if k + 1 < len(self._offsets):
                self._future = self._ahead.submit(self._load, k + 1)
            return self._offsets[k], chunk
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading ahead (waits for a request in flight)."""
        if self._ahead is not None:
            self._ahead.shutdown(wait=True)
            self._ahead = None


class AlignedWriter:
    """Appends to a new file sequentially with several aligned writes in flight, computing crc32.

    :meth:`write` copies into staging buffers; :meth:`write_aligned` writes a
    caller's aligned buffer in place and returns a handle whose ``wait()`` says
    when the buffer may be reused. :meth:`close` pads the last page, cuts the
    file back to its logical size (unless ``keep_padding``), fsyncs and returns
    ``{"bytes": logical size, "crc32": crc of those bytes}``.
    """

    def __init__(self, path: str | os.PathLike, *, direct: bool | None = None, request_size: int = 4 << 20,
                 depth: int = 4, staging_bytes: int = 16 << 20, resume: dict | None = None):
        self.path = Path(path)
        start = 0 if resume is None else int(resume["bytes"])
        if start % ALIGN:
            raise ConfigError(f"cannot resume {self.path} at {start} bytes: not a multiple of {ALIGN}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if resume is None else 0)
            self.fd, self.direct = _open(self.path, flags, direct)
            if resume is not None:
                os.ftruncate(self.fd, start)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise
        self.request_size = align_up(request_size)
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, depth), thread_name_prefix="diskgnn-write")
        self._crc_pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-crc")
        self.crc = 0 if resume is None else int(resume["crc32"])
        self.pos = start      # bytes handed to the file so far (a multiple of 4096 until close)
        self.logical = start  # bytes of data written by the caller
        self._staging_bytes = align_up(staging_bytes)
        self._staging = [aligned_empty(self._staging_bytes), aligned_empty(self._staging_bytes)]
        self._staging_handles: list = [None, None]
        self._cur = 0
        self._fill = 0
        self._pending: list[cf.Future] = []
        self._error: BaseException | None = None

    def _pwrite(self, view: memoryview, offset: int) -> None:
        _pwrite_all(self.fd, view, offset, self.path)

    def _crc(self, view: memoryview) -> None:
        self.crc = zlib.crc32(view, self.crc)

    def _submit(self, buf: np.ndarray, logical: int) -> "_WriteHandle":
        # ``buf`` is aligned with a length that is a multiple of 4096 unless this is the final write.
        view = memoryview(buf).cast("B")
        futures = [self._crc_pool.submit(self._crc, view[:logical])]
        for lo in range(0, len(view), self.request_size):
            part = view[lo:lo + self.request_size]
            futures.append(self._pool.submit(self._pwrite, part, self.pos + lo))
        self.pos += len(view)
        self.logical += logical
        self._pending.extend(futures)
        if len(self._pending) > 256:
            self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        return _WriteHandle(futures)

    def write_aligned(self, buf: np.ndarray) -> "_WriteHandle":
        """Write an aligned buffer whose length is a multiple of 4096, without copying."""
        self._flush_staging_if_any()
        if len(buf) % ALIGN or (self.direct and not is_aligned(buf)):
            raise ConfigError("write_aligned needs a 4096-aligned buffer of a multiple of 4096 bytes")
        return self._submit(buf, len(buf))

    def write(self, data) -> None:
        """Copy ``data`` into staging; full staging buffers are written in the background."""
        src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        while src.size:
            stage = self._staging[self._cur]
            if self._fill == 0 and self._staging_handles[self._cur] is not None:
                self._staging_handles[self._cur].wait()
                self._staging_handles[self._cur] = None
            take = min(src.size, self._staging_bytes - self._fill)
            stage[self._fill:self._fill + take] = src[:take]
            self._fill += take
            src = src[take:]
            if self._fill == self._staging_bytes:
                self._staging_handles[self._cur] = self._submit(stage, self._staging_bytes)
                self._cur ^= 1
                self._fill = 0

    def _flush_staging_if_any(self, final: bool = False) -> None:
        if self._fill == 0:
            return
        if self._fill % ALIGN and not final:
            raise ConfigError("write_aligned after a write() that did not end on a 4096 boundary")
        stage = self._staging[self._cur]
        span = align_up(self._fill)
        stage[self._fill:span] = 0
        self._staging_handles[self._cur] = self._submit(stage[:span], self._fill)
        self._cur ^= 1
        self._fill = 0

    def pad_to(self, alignment: int = ALIGN) -> None:
        """Append zeros up to the next multiple of ``alignment`` of the logical size."""
        rem = (self.logical + self._fill) % alignment
        if rem:
            self.write(np.zeros(alignment - rem, dtype=np.uint8))

    def wait(self) -> None:
        for fut in self._pending:
            fut.result()
        self._pending = []

    def checkpoint(self) -> tuple[dict, bytes]:
        """Wait for the writes in flight and fsync: ``({"bytes", "crc32"} on disk, bytes still staged)``.

        ``AlignedWriter(path, resume=info)`` followed by ``write(staged)`` continues the file as if
        it had never stopped.
        """
        for h in self._staging_handles:
            if h is not None:
                h.wait()
        self.wait()
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise
        staged = self._staging[self._cur][:self._fill].tobytes()
        return {"bytes": self.pos, "crc32": self.crc}, staged

    def close(self, *, keep_padding: bool = False) -> dict:
        try:
            self._flush_staging_if_any(final=True)
            self.wait()
            if not keep_padding and self.pos != self.logical:
                os.ftruncate(self.fd, self.logical)
            os.fsync(self.fd)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise
        finally:
            self.abort()
        return {"bytes": self.pos if keep_padding else self.logical, "crc32": self.crc}

    def abort(self) -> None:
        """Stop without publishing: wait for in-flight requests and close the file."""
        if self.fd < 0:
            return
        self._pool.shutdown(wait=True)
        self._crc_pool.shutdown(wait=True)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "AlignedWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()


class PositionalWriter:
    """Writes aligned pieces of one buffer at given offsets of a new file of known size, several in flight.

    The file is created (truncated) and extended to ``size`` bytes up front (``posix_fallocate`` where
    the filesystem supports it, so a full disk shows at once). :meth:`write_pieces` hands the pieces to
    ``depth`` threads and returns a handle whose ``wait()`` says when the buffer may be reused.
    """

    def __init__(self, path: str | os.PathLike, size: int, *, direct: bool | None = None, depth: int = 8,
                 keep: bool = False):
        self.path = Path(path)
        self.size = int(size)
        try:  # ``keep``: go on writing a file of this size that an interrupted run began
            self.fd, self.direct = _open(self.path, os.O_WRONLY | os.O_CREAT | (0 if keep else os.O_TRUNC), direct)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise
        try:
            if self.size:
                try:
                    os.posix_fallocate(self.fd, 0, self.size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                    os.ftruncate(self.fd, self.size)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            raise_if_disk_full(exc, self.path.parent, self.size)
            raise
        self.depth = max(1, depth)
        self._pool = cf.ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="diskgnn-pwrite")
        self._pending: list[cf.Future] = []
        self.bytes_written = 0

    def _write_list(self, view: memoryview, pieces: list) -> None:
        for file_off, buf_off, length in pieces:
            _pwrite_all(self.fd, view[buf_off:buf_off + length], file_off, self.path)

    def write_pieces(self, buf: np.ndarray, file_offsets, buf_offsets, lengths) -> "_WriteHandle":
        """Write ``buf[buf_offsets[i]:+lengths[i]]`` at ``file_offsets[i]`` (all multiples of 4096)."""
        file_offsets, buf_offsets, lengths = (np.asarray(a, dtype=np.int64) for a in (file_offsets, buf_offsets,
                                                                                     lengths))
        if lengths.size and (int((file_offsets | buf_offsets | lengths).min()) < 0
                             or int(((file_offsets | buf_offsets | lengths) % ALIGN).max()) != 0
                             or int((file_offsets + lengths).max()) > self.size
                             or int((buf_offsets + lengths).max()) > len(buf)):
            raise ConfigError("write_pieces needs 4096-aligned pieces inside the buffer and the file")
        if self.direct and not is_aligned(buf):
            raise ConfigError("write_pieces needs a 4096-aligned buffer")
        view = memoryview(buf).cast("B")
        pieces = list(zip(file_offsets.tolist(), buf_offsets.tolist(), lengths.tolist()))
        self.bytes_written += int(lengths.sum())
        # pieces dealt round-robin so every thread gets a share of each region
        futures = [self._pool.submit(self._write_list, view, pieces[k::self.depth])
                   for k in range(min(self.depth, len(pieces)))]
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None] + futures
        return _WriteHandle(futures)

    def sync(self) -> None:
        """Wait for every piece written so far and fsync (raises the first write error)."""
        try:
            for fut in self._pending:
                fut.result()
            self._pending = []
            os.fsync(self.fd)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise

    def close(self) -> None:
        """Wait for every piece, fsync and close (raises the first write error)."""
        try:
            for fut in self._pending:
                fut.result()
            os.fsync(self.fd)
        except OSError as exc:
            raise_if_disk_full(exc, self.path.parent)
            raise
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop without publishing: wait for requests in flight and close the file."""
        if self.fd < 0:
            return
        self._pool.shutdown(wait=True)
        os.close(self.fd)
        self.fd = -1


class _WriteHandle:
    """Completion of one submitted write (crc and every request)."""

    __slots__ = ("_futures",)

    def __init__(self, futures):
        self._futures = futures

    def wait(self) -> None:
        for fut in self._futures:
            fut.result()


# --- disk limits -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DiskLimits:
    """The disk's own limits, measured with this module's reader and writer."""
    seq_read_GBps: float
    """O_DIRECT sequential read, 1 MiB requests, ``depth`` in flight (1e9 bytes per second)."""
    seq_write_GBps: float
    """O_DIRECT sequential write, 1 MiB requests, ``depth`` in flight."""
    rand4k_iops_qd1: float
    """4 KiB random reads per second, one at a time."""
    rand4k_iops_qd64: float
    """4 KiB random reads per second, 64 in flight (64 threads)."""
    direct: bool
    """Whether O_DIRECT was used (False on tmpfs: then these measure memory, not the disk)."""
    file_bytes: int
    """Size of the test file."""

    def to_json(self) -> dict:
        return asdict(self)


def measure_seq_write(path: str | os.PathLike, nbytes: int, *, request_size: int = REQUEST_SIZE,
                      depth: int = IO_DEPTH, direct: bool | None = None) -> float:
    """Write ``nbytes`` of random data to a new file at ``path``; GB/s including the final fsync."""
    nbytes = align_up(max(nbytes, ALIGN))
    block = aligned_empty(min(nbytes, 64 << 20))
    block[:] = np.random.default_rng(0).integers(0, 256, block.size, dtype=np.uint8)
    t0 = time.perf_counter()
    fd, _ = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, direct)
    view = memoryview(block)
    try:
        with cf.ThreadPoolExecutor(max_workers=depth) as pool:
            def put(off: int) -> None:
                size = min(request_size, nbytes - off)
                lo = off % block.size
                lo = lo if lo + size <= block.size else 0
                done = 0
                while done < size:
                    done += os.pwritev(fd, [view[lo + done:lo + size]], off + done)
            list(pool.map(put, range(0, nbytes, request_size)))
        os.fsync(fd)
    except OSError as exc:
        raise_if_disk_full(exc, Path(path).parent, nbytes)
        raise
    finally:
        os.close(fd)
    return nbytes / (time.perf_counter() - t0) / 1e9


def measure_seq_read(path: str | os.PathLike, nbytes: int | None = None, *, request_size: int = REQUEST_SIZE,
                     depth: int = IO_DEPTH, direct: bool | None = None, max_seconds: float | None = None) -> float:
    """Read the file (or its first ``nbytes``) sequentially; GB/s."""
    with AlignedReader(path, direct=direct, request_size=request_size, depth=depth) as reader:
        end = reader.size if nbytes is None else min(reader.size, int(nbytes))
        chunk = request_size * depth * 4
        t0 = time.perf_counter()
        done = 0
        for off, buf in reader.stream(chunk, 0, end):
            done += len(buf)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
        return done / (time.perf_counter() - t0) / 1e9


def measure_random_read(path: str | os.PathLike, *, depth: int = 1, seconds: float = 2.0, block: int = ALIGN,
                        direct: bool | None = None, seed: int = 0) -> float:
    """4 KiB (``block``) reads at random aligned offsets with ``depth`` threads; reads per second."""
    fd, _ = _open(path, os.O_RDONLY, direct)
    try:
        pages = os.fstat(fd).st_size // block
        if pages < 1:
            raise ConfigError(f"{path} is smaller than one {block}-byte block")
        stop = time.perf_counter() + seconds
        counts = [0] * depth

        def worker(k: int) -> None:
            buf = aligned_empty(block)
            view = memoryview(buf)
            offs = np.random.default_rng(seed + k).integers(0, pages, 1 << 16) * block
            i = 0
            while True:  # at least one round per thread, even when threads start late
                for _ in range(16):
                    os.preadv(fd, [view], int(offs[i & 0xFFFF]))
                    i += 1
                if time.perf_counter() >= stop:
                    break
            counts[k] = i

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(depth)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def measure_disk(directory: str | os.PathLike, nbytes: int = 1 << 30, *, read_file: str | os.PathLike | None = None,
                 random_seconds: float = 2.0, keep: bool = False) -> DiskLimits:
    """Measure sequential write/read and 4 KiB random read IOPS with a temporary file in ``directory``.

    ``read_file`` (e.g. features.bin) is read instead of the test file when given,
    so the read figure comes from the data the benchmark itself reads.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".diskgnn-io-probe.bin"
    try:
        write = measure_seq_write(path, nbytes)
        target = Path(read_file) if read_file is not None else path
        read = measure_seq_read(target, nbytes)
        qd1 = measure_random_read(target, depth=1, seconds=random_seconds)
        qd64 = measure_random_read(target, depth=64, seconds=random_seconds)
        with AlignedReader(target) as r:
            direct = r.direct
        return DiskLimits(seq_read_GBps=read, seq_write_GBps=write, rand4k_iops_qd1=qd1, rand4k_iops_qd64=qd64,
                          direct=direct, file_bytes=align_up(nbytes))
    finally:
        if not keep:
            try:
                os.unlink(path)
            except OSError:
                pass
