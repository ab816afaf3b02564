"""The aligned O_DIRECT reader and writer: alignment edge cases, truncation, fallback, disk probes."""
import logging
import os
import zlib

import numpy as np
import pytest

from diskgnn.errors import ConfigError, IntegrityError
from diskgnn.io import (ALIGN, AlignedReader, AlignedWriter, align_down, align_up, aligned_empty, is_aligned,
                        measure_disk, measure_random_read, measure_seq_read, measure_seq_write, pread_elements)

SIZES = [1, 4095, 4096, 4097, 3 * 4096 + 5, (1 << 20) + 123]


def _file(tmp_path, size, name="f.bin", seed=0):
    data = np.random.default_rng(seed + size).integers(0, 256, size, dtype=np.uint8)
    path = tmp_path / name
    path.write_bytes(data.tobytes())
    return path, data


def test_align_helpers():
    assert align_up(0) == 0 and align_up(1) == ALIGN and align_up(ALIGN) == ALIGN and align_up(ALIGN + 1) == 2 * ALIGN
    assert align_down(ALIGN - 1) == 0 and align_down(2 * ALIGN + 7) == 2 * ALIGN
    for n in (0, 1, 4095, 4096, 12345):
        buf = aligned_empty(n)
        assert buf.size == n and buf.dtype == np.uint8 and is_aligned(buf)


@pytest.mark.parametrize("size", SIZES)
def test_read_whole_file_and_ranges(tmp_path, size):
    path, data = _file(tmp_path, size)
    with AlignedReader(path, request_size=8192, depth=3) as r:
        assert r.size == size
        assert np.array_equal(r.read_file(), data)
        rng = np.random.default_rng(size)
        for _ in range(20):
            off = int(rng.integers(0, size))
            length = int(rng.integers(0, size - off + 1))
            assert np.array_equal(r.read(off, length), data[off:off + length])


@pytest.mark.parametrize("size", [4097, 5 * 4096 + 77])
def test_read_runs_lands_runs_back_to_back(tmp_path, size):
    path, data = _file(tmp_path, size)
    runs = [(0, 100), (4096, size - 4096)]
    out = aligned_empty(sum(align_up(n) for _, n in runs))
    with AlignedReader(path, request_size=4096, depth=4) as r:
        got = r.read_runs(runs, out)
        assert r.requests == 1 + align_up(size - 4096) // 4096
    assert got >= 100 + size - 4096
    assert np.array_equal(out[:100], data[:100])
    assert np.array_equal(out[4096:4096 + size - 4096], data[4096:])


def test_stream_covers_file_with_partial_last_chunk(tmp_path):
    size = 10 * 4096 + 999
    path, data = _file(tmp_path, size)
    with AlignedReader(path) as r:
        pieces = [(off, np.array(buf)) for off, buf in r.stream(3 * 4096)]
        assert [off for off, _ in pieces] == [0, 3 * 4096, 6 * 4096, 9 * 4096]
        assert np.array_equal(np.concatenate([b for _, b in pieces]), data)
        middle = [np.array(b) for _, b in r.stream(4096, 4096, 3 * 4096, prefetch=False)]
        assert np.array_equal(np.concatenate(middle), data[4096:3 * 4096])
        with pytest.raises(ConfigError):
            list(r.stream(1000))


def test_truncated_file_is_an_integrity_error(tmp_path):
    path, _ = _file(tmp_path, 3 * 4096)
    with AlignedReader(path) as r:
        out = aligned_empty(4 * 4096)
        with pytest.raises(IntegrityError, match="truncated"):
            r.read_runs([(0, 4 * 4096)], out)
        with pytest.raises(IntegrityError, match="truncated"):
            r.read(2 * 4096, 4096 + 1)


def test_bad_requests(tmp_path):
    path, _ = _file(tmp_path, 8192)
    with AlignedReader(path) as r:
        with pytest.raises(ConfigError, match="multiple of 4096"):
            r.read_runs([(100, 10)], aligned_empty(4096))
        with pytest.raises(ConfigError, match="too small"):
            r.read_runs([(0, 8192)], aligned_empty(4096))
    with pytest.raises(ConfigError):
        AlignedReader(path, request_size=1000)


@pytest.mark.parametrize("direct", [None, False])
def test_writer_round_trip_and_crc(tmp_path, direct):
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in (5, 4091, 70000, 3)]
    path = tmp_path / "w.bin"
    w = AlignedWriter(path, direct=direct, request_size=8192, staging_bytes=16384)
    for p in pieces:
        w.write(p)
    w.pad_to(ALIGN)
    block = aligned_empty(3 * 4096)
    block[:] = rng.integers(0, 256, block.size, dtype=np.uint8)
    w.write_aligned(block).wait()
    w.write(b"tail")
    info = w.close()
    data = np.concatenate(pieces)
    expect = np.concatenate([data, np.zeros(align_up(data.size) - data.size, np.uint8), block,
                             np.frombuffer(b"tail", np.uint8)])
    assert path.read_bytes() == expect.tobytes()
    assert info == {"bytes": expect.size, "crc32": zlib.crc32(expect.tobytes())}


def test_writer_keep_padding(tmp_path):
    path = tmp_path / "k.bin"
    w = AlignedWriter(path)
    w.write(b"x" * 10)
    info = w.close(keep_padding=True)
    assert os.path.getsize(path) == 4096 == info["bytes"]
    assert info["crc32"] == zlib.crc32(b"x" * 10)


def test_buffered_fallback_when_o_direct_is_refused(tmp_path, monkeypatch, caplog):
    """tmpfs (on older kernels) refuses O_DIRECT with EINVAL: read and write buffered, warn once."""
    import errno
    import diskgnn.io as dio
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(dio, "_warned_buffered", set())
    path, data = _file(tmp_path, 5000)
    with caplog.at_level(logging.WARNING, logger="diskgnn.io"):
        with AlignedReader(path) as r:
            assert not r.direct
            assert np.array_equal(r.read_file(), data)
            assert np.array_equal(r.read(4000, 1000), data[4000:])
        w = AlignedWriter(tmp_path / "b.bin")
        assert not w.direct
        w.write(b"xyz")
        assert w.close()["bytes"] == 3
    assert (tmp_path / "b.bin").read_bytes() == b"xyz"
    assert sum("O_DIRECT is not supported" in rec.message for rec in caplog.records) == 1
    with pytest.raises(ConfigError, match="does not support O_DIRECT"):
        AlignedReader(path, direct=True)


def test_disk_probes_return_rates(tmp_path):
    path = tmp_path / "probe.bin"
    assert measure_seq_write(path, 1 << 20) > 0
    assert os.path.getsize(path) == 1 << 20
    assert measure_seq_read(path) > 0
    assert measure_random_read(path, depth=2, seconds=0.05) > 0
    limits = measure_disk(tmp_path / "d", 1 << 20, random_seconds=0.05)
    assert limits.seq_read_GBps > 0 and limits.rand4k_iops_qd64 > 0 and limits.file_bytes == 1 << 20
    assert not (tmp_path / "d" / ".diskgnn-io-probe.bin").exists()
    assert set(limits.to_json()) >= {"seq_read_GBps", "seq_write_GBps", "rand4k_iops_qd1", "rand4k_iops_qd64"}


def test_many_small_runs_and_checksums(tmp_path):
    """Short runs are batched per worker, long ones split into requests; data and crc32 per run are exact."""
    path, data = _file(tmp_path, 700 * 4096 + 10)
    rng = np.random.default_rng(4)
    pages = np.sort(rng.choice(600, 300, replace=False))
    runs = [(int(p) * 4096, int(rng.integers(1, 4097))) for p in pages] + [(600 * 4096, 100 * 4096 + 10)]
    runs = [r for r in runs if r[0] + r[1] <= data.size]
    out = aligned_empty(sum(align_up(n) for _, n in runs))
    crcs = []
    with AlignedReader(path, request_size=16384, depth=4) as r:
        r.read_runs(runs, out, checksums=crcs)
    pos = 0
    for (off, n), crc in zip(runs, crcs):
        assert np.array_equal(out[pos:pos + n], data[off:off + n])
        assert crc == zlib.crc32(data[off:off + n].tobytes())
        pos += align_up(n)


def test_aligned_writer_checkpoint_and_resume_equal_one_write(tmp_path):
    """A writer checkpointed midway and continued by a new one (as a resumed pack does) writes the same file."""
    rng = np.random.default_rng(5)
    pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in (5000, 12288, 777, 9000, 40000, 3)]
    with AlignedWriter(tmp_path / "one.bin", staging_bytes=8192) as w:
        for p in pieces:
            w.write(p)
        whole = w.close()
    w = AlignedWriter(tmp_path / "two.bin", staging_bytes=8192)
    for p in pieces[:4]:
        w.write(p)
    info, staged = w.checkpoint()
    assert info["bytes"] % 4096 == 0 and info["bytes"] + len(staged) == sum(p.size for p in pieces[:4])
    w.write(rng.integers(0, 256, 10000, dtype=np.uint8))  # written after the checkpoint: a killed run's tail
    w.abort()
    w = AlignedWriter(tmp_path / "two.bin", staging_bytes=8192, resume=info)
    w.write(np.frombuffer(staged, dtype=np.uint8))
    for p in pieces[4:]:
        w.write(p)
    again = w.close()
    assert again == whole
    assert (tmp_path / "two.bin").read_bytes() == (tmp_path / "one.bin").read_bytes()


def test_submitted_reads_overlap_and_finish_in_any_order(tmp_path):
    """Reads submitted back to back share the request pool; each lands and checksums exactly, whatever
    order they are waited for in, and is counted once."""
    path, data = _file(tmp_path, 300 * 4096 + 77)
    plans = [[(0, 90 * 4096 + 5)], [(100 * 4096, 4096), (120 * 4096, 60 * 4096)], [(200 * 4096, 100 * 4096 + 77)]]
    with AlignedReader(path, request_size=8192, depth=3) as r:
        outs = [aligned_empty(sum(align_up(n) for _, n in runs)) for runs in plans]
        crcs = [[] for _ in plans]
        pending = [r.submit_runs(runs, out, checksums=c) for runs, out, c in zip(plans, outs, crcs)]
        for p in reversed(pending):
            p.wait()
        assert pending[0].wait() == pending[0].wait()
        total = sum(p.wait() for p in pending)
        assert r.bytes_read == total, "every read is counted once"
    for runs, out, c in zip(plans, outs, crcs):
        pos = 0
        for (off, n), crc in zip(runs, c):
            assert np.array_equal(out[pos:pos + n], data[off:off + n])
            assert crc == zlib.crc32(data[off:off + n].tobytes())
            pos += align_up(n)


def test_submitted_read_of_a_truncated_file_fails_on_wait(tmp_path):
    path, _ = _file(tmp_path, 10 * 4096)
    with AlignedReader(path, request_size=4096, depth=2) as r:
        pending = r.submit_runs([(0, 20 * 4096)], aligned_empty(20 * 4096))
        with pytest.raises(IntegrityError, match="truncated"):
            pending.wait()


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
@pytest.mark.parametrize("dtype", ["<i8", "<i4"])
def test_pread_elements_reads_exact_ranges(tmp_path, direct, dtype):
    rng = np.random.default_rng(11)
    n = 3 * ALIGN // np.dtype(dtype).itemsize + 37  # the file ends mid-page
    data = rng.integers(-2**31, 2**31 - 1, size=n).astype(dtype)
    path = tmp_path / "a.bin"
    data.tofile(path)
    ranges = [(0, n), (0, 1), (n - 1, n), (5, 5), (ALIGN // data.itemsize - 3, ALIGN // data.itemsize + 3)]
    ranges += [tuple(sorted(rng.integers(0, n + 1, size=2))) for _ in range(20)]
    for lo, hi in ranges:
        got = pread_elements(path, dtype, lo, hi, direct=direct)
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, data[lo:hi]), (lo, hi)
    got = pread_elements(path, dtype, 0, n, direct=direct)
    got[:] = 0  # a new array (or a view of its own buffer), never the file's pages
    assert np.array_equal(pread_elements(path, dtype, 0, n, direct=direct), data)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_pread_elements_past_the_end_names_the_file_and_the_fix(tmp_path, direct):
    path = tmp_path / "short.bin"
    np.arange(ALIGN // 8 + 5, dtype="<i8").tofile(path)
    with pytest.raises(IntegrityError, match=r"short\.bin ends before byte .*; re-run it"):
        pread_elements(path, "<i8", 3, ALIGN // 8 + 6, fix="re-run it", direct=direct)
    with pytest.raises(IntegrityError, match="ends before"):
        pread_elements(path, "<i8", 2 * ALIGN // 8, 2 * ALIGN // 8 + 1, direct=direct)
