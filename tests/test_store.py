"""The feature store: one shared suite every tier passes against an in-memory reference, and the store."""
import threading

import numpy as np
import pytest

from diskgnn.errors import ConfigError, IntegrityError, MemoryBudgetError
from diskgnn.io import ALIGN, aligned_empty
from diskgnn.packing import PackConfig, convert_rows, pack
from diskgnn.sampling import SampleConfig, presample
from diskgnn.store import (DeviceTier, ExtentRead, ExtentTier, FeatureStore, HostTier, Packed, PinnedTier,
                           to_float32)

F = 11  # odd width: fp16/bf16 rows of 22 bytes straddle pages


def _reference(dtype_name, rows=257, seed=0):
    """Stored rows and their float32 values (the in-memory reference)."""
    x = np.random.default_rng(seed).standard_normal((rows, F)).astype(np.float32)
    stored = convert_rows(x, "fp32", dtype_name)
    return stored, to_float32(stored, dtype_name)


class TierContract:
    """Every tier: ``lookup(rows)`` and ``gather_into(rows, positions, out)`` equal the reference exactly."""

    def make(self, stored: np.ndarray, dtype_name: str):
        raise NotImplementedError

    @pytest.fixture(params=["fp32", "fp16", "bf16"])
    def tier_and_ref(self, request):
        stored, ref = _reference(request.param)
        return self.make(stored, request.param), ref

    def test_lookup_equals_reference(self, tier_and_ref):
        tier, ref = tier_and_ref
        rows = np.random.default_rng(1).integers(0, ref.shape[0], 100)
        got = tier.lookup(rows)
        assert got.dtype == np.float32 and np.array_equal(got, ref[rows])

    def test_gather_into_positions(self, tier_and_ref):
        tier, ref = tier_and_ref
        rows = np.array([5, 0, 256, 5], dtype=np.int64)
        pos = np.array([3, 0, 6, 1], dtype=np.int64)
        out = np.full((7, F), -1.0, np.float32)
        tier.gather_into(rows, pos, out)
        want = np.full((7, F), -1.0, np.float32)
        want[pos] = ref[rows]
        assert np.array_equal(out, want)

    def test_empty_lookup(self, tier_and_ref):
        tier, _ = tier_and_ref
        assert tier.lookup(np.zeros(0, np.int64)).shape == (0, F)

    def test_row_outside_tier_is_an_error(self, tier_and_ref):
        tier, ref = tier_and_ref
        with pytest.raises(IntegrityError):
            tier.lookup(np.array([ref.shape[0] + 5000]))


class TestHostTier(TierContract):
    def make(self, stored, dtype_name):
        return HostTier(stored, dtype_name)


class TestPinnedTier(TierContract):
    def make(self, stored, dtype_name):
        return PinnedTier(stored, dtype_name, pin=False)  # pinning needs CUDA; the interface is the same


class TestDeviceTier(TierContract):
    def make(self, stored, dtype_name):
        return DeviceTier(stored, dtype_name, device=None)


class TestExtentTier(TierContract):
    """A batch's extent read into an aligned buffer."""

    def make(self, stored, dtype_name):
        raw = np.ascontiguousarray(stored).view(np.uint8).ravel()
        rb = stored.shape[1] * stored.dtype.itemsize
        pages = -(-raw.size // ALIGN)
        image = np.zeros(pages * ALIGN, np.uint8)
        image[:raw.size] = raw
        buf = aligned_empty(pages * ALIGN)
        buf[:] = image
        read = ExtentRead(part="train/0", index=0, buffer=buf, run_pages=np.array([0], np.int64),
                          run_npages=np.array([pages], np.int64), run_buf_pages=np.array([0], np.int64),
                          bytes_read=buf.size)
        return ExtentTier(read, rb, stored.shape[1], dtype_name)

    def test_runs_with_a_hole(self):
        """A segment read: pages 0-1 and 4-6 of the extent land back to back; rows map across the hole."""
        stored, ref = _reference("fp32", rows=600)  # 44-byte rows, 7 pages
        raw = np.zeros(7 * ALIGN, np.uint8)
        raw[:stored.nbytes] = stored.view(np.uint8).ravel()
        buf = aligned_empty(5 * ALIGN)
        buf[:2 * ALIGN] = raw[:2 * ALIGN]
        buf[2 * ALIGN:] = raw[4 * ALIGN:7 * ALIGN]
        read = ExtentRead(part="p", index=0, buffer=buf, run_pages=np.array([0, 4], np.int64),
                          run_npages=np.array([2, 3], np.int64), run_buf_pages=np.array([0, 2], np.int64),
                          bytes_read=buf.size)
        tier = ExtentTier(read, 44, F, "fp32")
        rows = np.array([0, 185, 373, 500, 599])  # pages 0, 1 (ends in 1), 4, 5, 6
        assert np.array_equal(tier.lookup(rows), ref[rows])
        with pytest.raises(IntegrityError, match="outside the pages read"):
            tier.lookup(np.array([200]))  # page 2: in the hole
        with pytest.raises(IntegrityError, match="outside the pages read"):
            tier.lookup(np.array([186]))  # starts in page 1, ends in page 2


# --- the store --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    s = presample(tiny_dataset.path, root / "samples", SampleConfig(fanouts=(5, 2), batch_size=113, epochs=1, seed=2))
    return pack(s.path, root / "packed", PackConfig(device_cache="2%", pinned_cache="3%", host_cache="4%",
                                                    store_dtype="bf16"))


def test_store_stats_and_buffer_reuse(packed):
    s = packed.samples
    with FeatureStore(packed, "cpu") as store:
        reads = [store.read("train/0", i) for i in range(2)]
        assert all(r.buffer.ctypes.data % ALIGN == 0 for r in reads)
        first = reads[0]._pooled
        store.assemble("train/0", 0, reads[0])
        again = store.read("train/0", 3)
        assert again._pooled is first, "an assembled batch's buffer is reused"
        store.assemble("train/0", 1, reads[1])
        store.assemble("train/0", 3, again)
        st = store.stats()
        n_in = sum(s.input_nodes("train/0", i).size for i in (0, 1, 3))
        assert st["batches"] == 3 and sum(st["hits"].values()) == n_in
        assert all(st["hits"][t] > 0 for t in ("device", "pinned", "host", "disk"))
        assert st["bytes_read"] == sum(r.bytes_read for r in (*reads, again)) >= st["bytes_useful"] > 0
        assert st["read_amplification"] == st["bytes_read"] / st["bytes_useful"]
        store.reset_stats()
        assert store.stats()["bytes_read"] == 0


def test_threads_overlap_and_agree(packed):
    s = packed.samples
    ds = packed.dataset
    results = {}
    with FeatureStore(packed, "cpu", io_depth=3, request_size=ALIGN) as store:
        def work(part):
            for i in range(s.num_batches(part)):
                results[(part, i)] = store.assemble(part, i, store.read(part, i)).numpy()
        threads = [threading.Thread(target=work, args=(p,)) for p in s.parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == sum(s.num_batches(p) for p in s.parts)
    for (part, i), got in results.items():
        want = to_float32(convert_rows(np.asarray(ds.features[s.input_nodes(part, i)]), "fp32", "bf16"), "bf16")
        assert np.array_equal(got, want)


def test_store_bad_requests(packed):
    with FeatureStore(packed, "cpu") as store:
        with pytest.raises(ConfigError, match="no part"):
            store.read("train/7", 0)
        with pytest.raises(ConfigError, match="does not exist"):
            store.read("val", 10_000)
        r = store.read("val", 0)
        with pytest.raises(ConfigError, match="was given the read"):
            store.assemble("test", 0, r)
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        FeatureStore(packed, "cpu", memory_budget=1024)


def test_summary_reports_tiers_and_bound(packed):
    sm = Packed.open(packed.path).summary()
    assert set(sm["tiers"]) == {"device", "pinned", "host"}
    assert sm["tiers"]["device"]["rows"] > 0 and 0 < sm["tiers"]["host"]["hit_rate"] < 1
    assert sm["belady_hit_rate"] >= sm["cache_hit_rate"] > 0
    assert sm["packed_bytes"] > 0 and sm["footprint"] > sm["blowup"] > 0 and sm["read_amplification"] >= 1


# --- the disk-budget layout: segments read once --------------------------------------------------

@pytest.fixture(scope="module")
def segmented(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    s = presample(tiny_dataset.path, root / "samples", SampleConfig(fanouts=(4, 3), batch_size=41, epochs=1, seed=4))
    packed = pack(s.path, root / "packed", PackConfig(host_cache="2%", disk_budget="3x"), memory_budget="64M")
    assert packed.layout == "segments" and packed.manifest["segment_batches"] > 1
    return packed


def _segment_bytes(store, part):
    first, _ = store.packed._part(part)
    keys = {tuple(int(x) for x in store.batches[first + g[0], 2:5]) for g in store.segments(part)}
    return sum(int(store.runs[lo:hi, 1].sum()) * ALIGN for lo, hi, _ in keys)


@pytest.mark.parametrize("order", ["epoch", "interleaved"])
def test_segments_are_read_once_per_pass(segmented, order):
    from diskgnn.loader import epoch_permutation
    s, ds = segmented.samples, segmented.dataset
    part = "train/0"
    with FeatureStore(segmented, "cpu") as store:
        groups = store.segments(part)
        assert groups is not None and len(groups) > 1 and sum(len(g) for g in groups) == s.num_batches(part)
        if order == "epoch":
            idx = epoch_permutation(7, 3, s.num_batches(part), groups)
            seen = [next(k for k, g in enumerate(groups) if i in g) for i in idx]
            assert seen == sorted(seen, key=seen.index), "each segment's batches come one after the other"
            assert sorted(idx.tolist()) == list(range(s.num_batches(part)))
        else:  # batches of two segments alternate: both are held, still exact
            a, b = groups[0], groups[1]
            idx = np.array([x for pair in zip(a, b) for x in pair] + list(a[len(b):]) + list(b[len(a):]))
        keys = [(part, int(i)) for i in idx]
        store.plan_reads(keys)
        reads = []
        for p, i in keys:  # a pipeline reads ahead of assembly: keep two reads in flight
            reads.append((i, store.read(p, i)))
            if len(reads) > 2:
                j, r = reads.pop(0)
                got = store.assemble(p, j, r).numpy()
                assert np.array_equal(got, np.asarray(ds.features[s.input_nodes(p, j)]))
        for j, r in reads:
            assert np.array_equal(store.assemble(part, j, r).numpy(), np.asarray(ds.features[s.input_nodes(part, j)]))
        st = store.stats()
        if order == "epoch":
            assert st["bytes_read"] == _segment_bytes(store, part), "every segment read exactly once"
        else:
            assert st["bytes_read"] == sum(int(store.runs[lo:hi, 1].sum()) * ALIGN for lo, hi, _ in
                                           {tuple(int(x) for x in store.batches[g[0], 2:5]) for g in (a, b)})
        assert st["bytes_read"] < st["bytes_useful"], "rows shared by a segment's batches are read once"
        assert not any(seg.refs for seg in store._held.values()), "every batch released its segment"


def test_training_on_segments_reads_each_once_and_learns(segmented, tmp_path):
    from diskgnn.train import TrainConfig, Trainer, packed_data_id
    with FeatureStore(segmented, "cpu") as store:
        tr = Trainer(segmented.samples, segmented.dataset, store, TrainConfig(epochs=2, threads=1, lr=1e-2),
                     data_id=packed_data_id(segmented))
        report = tr.fit()
        for h in tr.history:
            assert h["bytes_read"] == _segment_bytes(store, h["part"])
        assert report["final_train_acc"] > 0.3


def test_a_budget_without_room_for_a_segment_names_the_sizes(segmented, monkeypatch):
    import diskgnn.store
    from diskgnn.memory import TrainingMemory
    monkeypatch.setattr(diskgnn.store, "process_anon_bytes", lambda: 100 << 20)  # the same in every plan
    with FeatureStore(segmented, "cpu", memory_budget=1 << 40) as store:
        plan = store.memory_plan(training=TrainingMemory(queue_depth=2, model_bytes=0))
        seg = store.max_segment_bytes
    assert seg > 0 and plan.segment_buffers == 2 * seg
    rest = plan.total - plan.segment_buffers
    # room for one segment: it works, one at a time (no read-ahead of the next segment)
    one = FeatureStore(segmented, "cpu", memory_budget=rest + seg + seg // 2,
                       training=TrainingMemory(queue_depth=2, model_bytes=0))
    assert one.held_segments == 1
    one.close()
    with pytest.raises(MemoryBudgetError, match=r"segments take up to .*--segment-memory"):
        FeatureStore(segmented, "cpu", memory_budget=rest + seg // 2, training=TrainingMemory(queue_depth=2,
                                                                                              model_bytes=0))


def test_a_tight_budget_reads_maps_and_blocks_with_o_direct_and_stays_exact(segmented, monkeypatch):
    import torch

    import diskgnn.sampling
    import diskgnn.store
    from diskgnn.io import pread_elements
    from diskgnn.loader import BatchStages
    from diskgnn.memory import TrainingMemory
    monkeypatch.setattr(diskgnn.store, "process_anon_bytes", lambda: 100 << 20)  # the same in every plan
    training = TrainingMemory(queue_depth=2, model_bytes=0)
    with FeatureStore(segmented, "cpu", memory_budget=1 << 40, training=training) as roomy:
        assert not roomy.direct_index_reads, "room for the page cache: buffered reads"
        assert not BatchStages(segmented.samples, segmented.dataset.labels, roomy, torch.device("cpu")).direct
        total = roomy.memory_plan(training=training).total
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("direct", False))
        return pread_elements(*args, **kwargs)
    monkeypatch.setattr(diskgnn.sampling, "pread_elements", counted)
    monkeypatch.setattr(diskgnn.store, "pread_elements", counted)
    s, ds = segmented.samples, segmented.dataset
    with FeatureStore(segmented, "cpu", memory_budget=total, training=training) as tight:
        assert tight.direct_index_reads, "no room beside the plan: the maps and blocks bypass the page cache"
        stages = BatchStages(s, ds.labels, tight, torch.device("cpu"))
        assert stages.direct
        for i in range(s.num_batches("train/0")):
            calls.clear()
            batch = stages.assemble(stages.read(stages.load(("train/0", i))))
            assert len(calls) >= 4 and all(calls), "the blocks and the map went around the page cache"
            want = s.batch("train/0", i)
            assert np.array_equal(batch.seeds, want.seeds)
            assert np.array_equal(batch.x.numpy(), np.asarray(ds.features[want.input_nodes]))
            for got, ref in zip(batch.blocks, want.blocks):
                assert torch.equal(got.indptr, torch.from_numpy(np.asarray(ref.indptr)))


def _flip_first_read_byte(store, packed_dir, part="train/0", index=0, keep_time=False):
    """Flip one byte of the first run ``part/index`` reads, in place; optionally keep the file's times."""
    g = store.packed.batch_id(part, index)
    _, _, run_lo, _, base = (int(x) for x in store.batches[g])
    offset = base + int(store.runs[run_lo, 0]) * ALIGN + 3
    path = packed_dir / "packed.bin"
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))
    if keep_time:
        import os
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_reads_check_each_run_once_and_again_when_the_file_changes(tiny_dataset, tmp_path):
    s = presample(tiny_dataset.path, tmp_path / "samples", SampleConfig(fanouts=(3, 2), batch_size=97, epochs=1, seed=4))
    packed = pack(s.path, tmp_path / "packed", PackConfig(host_cache="0"))
    with FeatureStore(packed, "cpu") as store:
        first = store.read("train/0", 0)
        assert first._crcs is not None, "a run's first read computes its crc32"
        store.assemble("train/0", 0, first)
        again = store.read("train/0", 0)
        assert again._crcs is None, "a run already checked is not checked again while the file is unchanged"
        store.assemble("train/0", 0, again)
        _flip_first_read_byte(store, tmp_path / "packed")  # a new modification time: every run is checked again
        with pytest.raises(IntegrityError, match=r"packed.bin: batch train/0/0 .* checksum does not match"):
            store.read("train/0", 0)
    _flip_first_read_byte(store, tmp_path / "packed")  # repaired
    with FeatureStore(packed, "cpu", recheck_reads=True) as store:
        store.assemble("train/0", 0, store.read("train/0", 0))
        _flip_first_read_byte(store, tmp_path / "packed", keep_time=True)  # a change the file's times hide
        with pytest.raises(IntegrityError, match="checksum does not match"):
            store.read("train/0", 0)
    with FeatureStore(packed, "cpu") as store:  # a new store checks a run on its first read
        with pytest.raises(IntegrityError, match="checksum does not match"):
            store.read("train/0", 0)
