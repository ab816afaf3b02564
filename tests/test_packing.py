"""The packer: kernels against numpy twins, exact round trips over random configs, bad input, the CLI."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from diskgnn.dataset import bf16_bits_to_float32
from diskgnn.errors import (ConfigError, IntegrityError, ManifestNotFoundError, MemoryBudgetError, MismatchError,
                            OutputExistsError)
from diskgnn.io import ALIGN
from diskgnn.kernels.gather import (extent_row_starts, gather_flat, gather_flat_lut, gather_rows, gather_rows_lut,
                                    scatter_bytes, scatter_words, split_map)
from diskgnn.kernels.packing import (belady_hits, bucket_rows, count_uncached, disk_bitmap, extent_dests, next_use,
                                     plain_maps, segment_block_maps, segment_row_counts, stage_block,
                                     tier_hits)
from diskgnn.packing import BUCKET_BYTES_PER_ROW, PackConfig, belady_hit_rate, convert_rows, pack, pack_memory, plan_pack
from diskgnn.sampling import SampleConfig, presample
from diskgnn.store import FeatureStore, Packed, to_float32, upcast_table, verify_packed
from diskgnn.synth import SynthConfig, synthesize
from diskgnn.tools.cli import main

SCFG = SampleConfig(fanouts=(4, 3), batch_size=97, epochs=2, seed=5)


@pytest.fixture(scope="module")
def samples(tiny_dataset, tmp_path_factory):
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("ps") / "samples", SCFG)


@pytest.fixture(scope="module")
def fp16_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("p16")
    ds = synthesize(SynthConfig(nodes=901, avg_degree=5, dim=7, classes=3, seed=9, dtype="fp16",
                                train_fraction=0.3, val_fraction=0.1, test_fraction=0.1), root / "ds")
    return presample(ds.path, root / "samples", SampleConfig(fanouts=(3, 5), batch_size=64, epochs=1, seed=1))


def _reference(ds, nodes, store_dtype):
    return to_float32(convert_rows(np.asarray(ds.features[np.asarray(nodes)]), ds.feat_dtype, store_dtype),
                      store_dtype)


def _check_all_batches(packed, samples, ds):
    with FeatureStore(packed, "cpu") as store:
        n_in = 0
        for part in samples.parts:
            for i in range(samples.num_batches(part)):
                got = store.assemble(part, i, store.read(part, i)).numpy()
                want = _reference(ds, samples.input_nodes(part, i), packed.store_dtype)
                assert got.dtype == np.float32 and got.shape == want.shape
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (part, i)
                n_in += want.shape[0]
        st = store.stats()
    assert sum(st["hits"].values()) == n_in
    assert st["bytes_useful"] == st["hits"]["disk"] * packed.row_bytes
    return st


# --- kernels against numpy twins ---------------------------------------------------------------

def _batches(rng, n=50, nb=6, dup=False):
    lens = rng.integers(0, 30, nb)
    parts = []
    for k in lens:
        b = rng.choice(n, size=min(k, n), replace=False)
        if dup and b.size > 2:
            b = np.concatenate([b, b[:2]])
        parts.append(b)
    inputs = np.concatenate(parts).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64)
    return inputs, offsets


@pytest.mark.parametrize("rb,words", [(12, False), (20, False), (4096 + 40, False), (40, True), (4096 + 40, True)])
def test_stage_block_builds_each_extent_piece_by_piece(rb, words):
    """Staging every block in turn and writing its pieces rebuilds every extent exactly (numpy twin: the extent)."""
    rng = np.random.default_rng(rb)
    n, block_rows, page = 61, 9, 4096
    nblocks = -(-n // block_rows)
    feats = rng.integers(0, 256, (n, rb), dtype=np.uint8)
    ext_nodes = [np.sort(rng.choice(n, k, replace=False)) for k in (0, 1, 5, 40, 61)]
    ext_nodes = [x[np.argsort(x // block_rows, kind="stable")] for x in ext_nodes]
    ext_rows = np.array([x.size for x in ext_nodes], dtype=np.int64)
    row_starts = np.concatenate([[0], np.cumsum(ext_rows)]).astype(np.int64)
    row_nodes = np.concatenate(ext_nodes).astype(np.int64)
    bs = np.array([np.concatenate([[0], np.cumsum(np.bincount(x // block_rows, minlength=nblocks))])
                   for x in ext_nodes], dtype=np.int64)
    files = [np.full(-(-x.size * rb // page) * page, 0xEE, dtype=np.uint8) for x in ext_nodes]
    carry = np.zeros((len(ext_nodes), page), dtype=np.uint8)
    for c in range(nblocks):
        chunk = feats[c * block_rows:(c + 1) * block_rows]
        lo, hi = bs[:, c], bs[:, c + 1]
        has = hi > lo
        first = lo * rb // page * page
        alloc = np.where(has, (hi * rb + page - 1) // page * page - first, 0)
        offs = np.where(has, np.cumsum(alloc) - alloc, -1)
        staging = np.full(max(int(alloc.sum()), 8), 0xAB, dtype=np.uint8)
        if words:  # the packer's fast path: the same copy over 8-byte words, offsets in words
            stage_block(np.ascontiguousarray(chunk).view(np.uint64), c * block_rows, row_nodes, row_starts, lo, hi,
                        ext_rows, np.where(has, offs // 8, -1), carry.view(np.uint64), staging.view(np.uint64))
        else:
            stage_block(chunk, c * block_rows, row_nodes, row_starts, lo, hi, ext_rows, offs, carry, staging)
        for e in np.flatnonzero(has):
            done = hi[e] == ext_rows[e]
            end = (hi[e] * rb + page - 1) // page * page if done else hi[e] * rb // page * page
            files[e][first[e]:end] = staging[offs[e]:offs[e] + end - first[e]]
    for e, x in enumerate(ext_nodes):
        want = np.zeros(files[e].size, dtype=np.uint8)
        want[:x.size * rb] = feats[x].reshape(-1)
        assert np.array_equal(files[e], want), e


def test_plan_kernels_match_numpy():
    rng = np.random.default_rng(0)
    n = 50
    inputs, offsets = _batches(rng, n, dup=True)
    slot = np.full(n, -1, dtype=np.int64)
    cached = rng.choice(n, 12, replace=False)
    slot[cached] = np.arange(12)
    nb = len(offsets) - 1
    counts = np.zeros(nb, dtype=np.int64)
    count_uncached(inputs, offsets, slot, counts)
    twin = [int((slot[inputs[offsets[b]:offsets[b + 1]]] < 0).sum()) for b in range(nb)]
    assert counts.tolist() == twin
    row_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    for block_rows in (n, 7, 1):  # input order, node blocks of 7, fully sorted by node
        nblocks = -(-n // block_rows)
        maps = np.empty(inputs.size, dtype=np.int32)
        row_nodes = np.full(inputs.size, -1, dtype=np.int64)
        starts = np.full((nb, nblocks + 1), -9, dtype=np.int64)
        coded = slot.copy()  # rows on disk carry -1 - their node block
        coded[slot < 0] = -1 - np.flatnonzero(slot < 0) // block_rows
        plain_maps(inputs, offsets, coded, 12, row_off, nblocks, maps, row_nodes, starts)
        assert np.all(row_nodes[row_off[-1]:] == -1)  # nothing written past the packed rows
        for b in range(nb):
            x = inputs[offsets[b]:offsets[b + 1]]
            unc = x[slot[x] < 0]
            order = np.argsort(unc // block_rows, kind="stable")  # by block, input order inside a block
            assert np.array_equal(row_nodes[row_off[b]:row_off[b + 1]], unc[order])
            m = maps[offsets[b]:offsets[b + 1]]
            assert np.array_equal(m[slot[x] >= 0], slot[x][slot[x] >= 0])
            rank = np.empty(unc.size, dtype=np.int64)
            rank[order] = np.arange(unc.size)
            assert np.array_equal(m[slot[x] < 0], 12 + rank)
            twin_starts = np.concatenate([[0], np.cumsum(np.bincount(unc // block_rows, minlength=nblocks))])
            assert np.array_equal(starts[b], twin_starts)
    bounds = np.array([0, 2, 5, nb], dtype=np.int64)
    got = segment_row_counts(inputs, offsets, disk_bitmap(slot), bounds)
    for s in range(3):
        x = inputs[offsets[bounds[s]]:offsets[bounds[s + 1]]]
        assert got[s] == np.unique(x[slot[x] < 0]).size
    hits = tier_hits(maps, np.array([0, 5, 5, 12], dtype=np.int64))
    assert hits.tolist() == [int((maps < 5).sum()), 0, int(((maps >= 5) & (maps < 12)).sum()), int((maps >= 12).sum())]


@pytest.mark.parametrize("group", [1, 2, 8])  # segments one at a time, in groups across a boundary, all at once
@pytest.mark.parametrize("block_rows", [40, 7])  # one block, several blocks
def test_segment_block_maps_match_numpy(block_rows, group):
    rng = np.random.default_rng(1)
    n = 130  # more than two bitmap words
    inputs, offsets = _batches(rng, n, nb=5)
    slot = np.full(n, -1, dtype=np.int64)
    slot[:5] = np.arange(5)
    nblocks = -(-n // block_rows)
    on_disk = slot < 0
    slot[on_disk] = -1 - np.flatnonzero(on_disk) // block_rows
    bounds = np.array([0, 1, 4, 5], dtype=np.int64)
    on_disk = disk_bitmap(slot)
    assert [bool(on_disk[v >> 6] >> np.uint64(v & 63) & np.uint64(1)) for v in range(n)] == (slot < 0).tolist()
    counts = segment_row_counts(inputs, offsets, on_disk, bounds)
    row_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    maps = np.full(inputs.size, -99, dtype=np.int64)
    nodes = np.empty(int(row_starts[-1]), dtype=np.int64)
    starts = np.empty((3, nblocks + 1), dtype=np.int64)
    segment_block_maps(inputs, offsets, bounds, slot, on_disk, 5, row_starts, maps, nodes, starts, group)
    for s in range(3):
        lo, hi = offsets[bounds[s]], offsets[bounds[s + 1]]
        x = inputs[lo:hi]
        want = np.unique(x[slot[x] < 0])
        mine = nodes[row_starts[s]:row_starts[s + 1]]
        assert counts[s] == want.size and np.array_equal(mine, want), "each uncached row once, by node id"
        m = maps[lo:hi]
        assert np.array_equal(m[slot[x] >= 0], slot[x][slot[x] >= 0])
        assert np.array_equal(mine[m[slot[x] < 0] - 5], x[slot[x] < 0]), "maps point at the row of that node"
        assert starts[s].tolist() == [int(np.searchsorted(want // block_rows, c)) for c in range(nblocks + 1)]


def test_bucket_rows_and_extent_dests():
    rng = np.random.default_rng(2)
    nodes = rng.integers(0, 100, 60).astype(np.int64)
    dests = rng.integers(0, 1 << 20, 60).astype(np.int64)
    starts, local, out = bucket_rows(nodes, dests, 0, 16, 7)
    assert starts[0] == 0 and starts[-1] == 60
    for c in range(7):
        sel = (nodes // 16) == c
        got = sorted(zip((local[starts[c]:starts[c + 1]] + 16 * c).tolist(), out[starts[c]:starts[c + 1]].tolist()))
        assert got == sorted(zip(nodes[sel].tolist(), dests[sel].tolist()))
    d = extent_dests(np.array([2, 0, 3]), np.array([4096, 8192, 12288]), 10, 4096)
    assert d.tolist() == [0, 10, 8192, 8202, 8212]


def test_gather_and_scatter_kernels_match_numpy():
    rng = np.random.default_rng(3)
    src = rng.standard_normal((20, 5)).astype(np.float32)
    rows = rng.integers(0, 20, 9).astype(np.int64)
    pos = rng.permutation(12)[:9].astype(np.int64)
    out = np.zeros((12, 5), np.float32)
    gather_rows(src, rows, pos, out)
    twin = np.zeros((12, 5), np.float32)
    twin[pos] = src[rows]
    assert np.array_equal(out, twin)
    for name in ("fp16", "bf16"):
        bits = convert_rows(src, "fp32", name).view(np.uint16)
        lut = upcast_table(name)
        out = np.zeros((12, 5), np.float32)
        gather_rows_lut(bits, rows, pos, lut, out)
        twin = np.zeros((12, 5), np.float32)
        twin[pos] = to_float32(convert_rows(src, "fp32", name)[rows], name)
        assert np.array_equal(out, twin)
        out2 = np.zeros((12, 5), np.float32)
        gather_flat_lut(bits.ravel(), rows * 5, pos, 5, lut, out2)
        assert np.array_equal(out2, twin)
    out = np.zeros((12, 5), np.float32)
    gather_flat(src.ravel(), rows * 5, pos, 5, out)
    twin = np.zeros((12, 5), np.float32)
    twin[pos] = src[rows]
    assert np.array_equal(out, twin)
    raw = rng.integers(0, 256, (6, 16), dtype=np.uint8)
    dst = np.zeros(200, np.uint8)
    scatter_bytes(raw, np.array([5, 0, 2]), dst, np.array([0, 40, 96]))
    dst_w = np.zeros(25, np.uint64)
    scatter_words(raw.view(np.uint64), np.array([5, 0, 2]), dst_w, np.array([0, 5, 12]))
    for r, o in ((5, 0), (0, 40), (2, 96)):
        assert np.array_equal(dst[o:o + 16], raw[r])
    assert np.array_equal(dst_w.view(np.uint8)[:200], dst)


def test_split_map_and_extent_row_starts():
    bounds = np.array([0, 3, 3, 8], dtype=np.int64)
    batch_map = np.array([9, 0, 4, 8, 2, 7, 12], dtype=np.int32)
    counts = np.zeros(4, np.int64)
    rows = np.empty((4, 7), np.int64)
    pos = np.empty((4, 7), np.int64)
    split_map(batch_map, bounds, 3, counts, rows, pos)
    assert counts.tolist() == [2, 0, 2, 3]
    assert rows[0, :2].tolist() == [0, 2] and pos[0, :2].tolist() == [1, 4]
    assert rows[2, :2].tolist() == [1, 4] and pos[2, :2].tolist() == [2, 5]
    assert rows[3, :3].tolist() == [1, 0, 4] and pos[3, :3].tolist() == [0, 3, 6]
    # rows of 1000 bytes; runs: pages 0-1 at buffer page 0, pages 5-6 at buffer page 2
    starts = extent_row_starts(np.array([0, 4, 21, 25, 9]), 1000, 4, np.array([0, 5]), np.array([2, 2]),
                               np.array([0, 2]), ALIGN)
    assert starts[:2].tolist() == [0, 1000]
    assert starts[2] == ((2 - 5) * 4096 + 21000) // 4 and starts[3] == ((2 - 5) * 4096 + 25000) // 4
    assert starts[4] == -1, "row 9 (page 2) was not read"
    assert extent_row_starts(np.array([8]), 1000, 4, np.array([0]), np.array([2]), np.array([0]), ALIGN)[0] == -1


def _belady_twin(trace, capacity):
    """Brute-force MIN with bypass, preloaded with the rows used first."""
    if capacity == 0:
        return 0
    first = {}
    for t, v in enumerate(trace):
        first.setdefault(v, t)
    cache = set(sorted(first, key=first.get)[:capacity])
    hits = 0
    for t, v in enumerate(trace):
        def nxt(x):
            for u in range(t + 1, len(trace)):
                if trace[u] == x:
                    return u
            return len(trace)
        if v in cache:
            hits += 1
            continue
        if len(cache) < capacity:
            cache.add(v)
            continue
        far = max(cache, key=nxt)
        if nxt(far) > nxt(v):
            cache.remove(far)
            cache.add(v)
    return hits


@pytest.mark.parametrize("capacity", [0, 1, 3, 7, 30])
def test_belady_matches_brute_force(capacity):
    rng = np.random.default_rng(capacity)
    trace = (rng.zipf(1.5, 300) % 25).astype(np.int64)
    assert belady_hit_rate(trace, 25, capacity) * trace.size == pytest.approx(_belady_twin(trace.tolist(), capacity))
    last = np.empty(25, np.int64)
    nxt = np.empty(trace.size, np.int64)
    next_use(trace, last, nxt)
    for t in range(0, 300, 37):
        later = np.flatnonzero(trace[t + 1:] == trace[t])
        assert nxt[t] == (t + 1 + later[0] if later.size else 300)


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [(dict(host_cache="-1G"), "negative"), (dict(device_cache="lots"), "parse"),
                                       (dict(pinned_cache="150%"), "100%"), (dict(disk_budget="0x"), "positive"),
                                       (dict(store_dtype="int8"), "store-dtype"), (dict(chunk_size="100"), "4K")])
def test_bad_pack_config(bad, match):
    with pytest.raises(ConfigError, match=match):
        PackConfig(**bad)


def test_from_cli_reads_flags():
    class Args:
        device_cache, pinned_cache, host_cache, disk_budget, store_dtype, chunk_size = "1M", "2%", "0", "3x", "bf16", "1M"
    cfg = PackConfig.from_cli(Args())
    assert (cfg.device_cache, cfg.pinned_cache, cfg.host_cache, cfg.disk_budget, cfg.store_dtype) == \
        ("1M", "2%", "0", "3x", "bf16")


# --- round trips ------------------------------------------------------------------------------

ROUND_TRIPS = [
    dict(host_cache="10%"),
    dict(host_cache="0", store_dtype="fp16"),
    dict(device_cache="3%", pinned_cache="2%", host_cache="5%", store_dtype="bf16", chunk_size="8K"),
    dict(host_cache="100%"),
    dict(host_cache="1%", disk_budget="3x", chunk_size="12K"),
    dict(device_cache="52", host_cache="0", disk_budget="2x", store_dtype="bf16"),
]


@pytest.mark.parametrize("kw", ROUND_TRIPS)
def test_round_trip_is_exact(samples, tiny_dataset, tmp_path, kw):
    cfg = PackConfig(**kw)
    packed = pack(samples.path, tmp_path / "p", cfg, memory_budget="200M")
    assert not (tmp_path / "p" / ".diskgnn-partial").exists()
    assert packed.store_dtype == (cfg.store_dtype or "fp32")
    st = _check_all_batches(packed, samples, tiny_dataset)
    stats = packed.stats
    assert st["read_amplification"] == pytest.approx(stats["read_amplification"])
    for t in ("device", "pinned", "host", "disk"):
        assert st["hit_rate"][t] == pytest.approx(stats["hit_rate"][t])
    assert stats["belady_hit_rate"] >= stats["cache_hit_rate"] - 1e-12
    if cfg.disk_budget:
        assert packed.layout == "segments"
        assert stats["packed_bytes"] <= float(cfg.disk_budget.rstrip("x")) * tiny_dataset.feature_bytes
    if kw.get("host_cache") == "100%":
        assert stats["packed_bytes"] == 0 and st["bytes_read"] == 0
    verify_packed(packed)


STREAMS = [
    dict(host_cache="10%", order_block="4K"),
    dict(host_cache="0", store_dtype="fp16", order_block="12K"),
    dict(device_cache="3%", pinned_cache="2%", host_cache="5%", store_dtype="bf16", order_block="8K"),
    dict(host_cache="1%", order_block="1G"),  # one block: whole extents at once
    dict(host_cache="100%", order_block="4K"),  # nothing on disk
]


@pytest.mark.parametrize("kw", STREAMS)
def test_stream_and_groups_write_the_same_bytes(samples, tiny_dataset, tmp_path, kw):
    """The stream write mode (one pass, each block's stretch of every extent written at once) is exact and
    writes byte for byte what the group mode writes; the packed file's checksums are the per-run ones."""
    streamed = pack(samples.path, tmp_path / "s", PackConfig(**kw, write_mode="stream"), memory_budget="200M")
    grouped = pack(samples.path, tmp_path / "g", PackConfig(**kw, write_mode="groups"), memory_budget="200M")
    assert streamed.stats["write_mode"] == ("stream" if streamed.stats["packed_bytes"] else "groups")
    assert grouped.stats["write_mode"] == "groups"
    assert streamed.stats["passes"] == 1
    _same_files(streamed, grouped)
    assert (tmp_path / "s" / "packed.bin").stat().st_size == streamed.stats["packed_bytes"]
    _check_all_batches(streamed, samples, tiny_dataset)
    verify_packed(streamed)
    verify_packed(grouped)
    size = (tmp_path / "s" / "packed.bin").stat().st_size
    if size:  # no whole-file crc: a flipped byte is caught by its run's checksum
        assert streamed.specs["packed"].crc32 is None
        with open(tmp_path / "s" / "packed.bin", "r+b") as fh:
            fh.seek(size // 2)
            byte = fh.read(1)
            fh.seek(size // 2)
            fh.write(bytes([byte[0] ^ 0x10]))
        with pytest.raises(IntegrityError, match="do not match their checksum"):
            verify_packed(Packed.open(tmp_path / "s"))


def test_stream_mode_stages_every_block(wide_samples, tmp_path, monkeypatch):
    """Many blocks, extents that take several blocks to fill a page, the smallest budget that streams."""
    import diskgnn.packing
    from diskgnn.packing import _stream_memory, plan_pack_memory
    monkeypatch.setattr(diskgnn.packing, "AUTO_CHUNK_MIN", ALIGN)  # the group mode may shrink its chunk
    ds = wide_samples.open_dataset()
    cfg = PackConfig(host_cache="4%", order_block="4K", write_mode="stream", belady=False)
    plan = plan_pack(wide_samples, cfg)
    assert plan.block_starts.shape[1] - 1 == -(-ds.feature_bytes // ALIGN)
    need = _stream_memory(plan, ds, cfg, 1 << 40).total_bytes
    packed = pack(wide_samples.path, tmp_path / "p", cfg, memory_budget=need)
    assert packed.stats["write_mode"] == "stream" and packed.stats["memory_plan_bytes"] <= need
    _check_all_batches(packed, wide_samples, ds)
    verify_packed(packed)
    with pytest.raises(MemoryBudgetError, match="streaming the packed rows needs"):
        plan_pack_memory(plan, ds, cfg, need - 1)
    # auto falls back to the group mode below that (same bytes)
    auto = pack(wide_samples.path, tmp_path / "a", replace(cfg, write_mode="auto"), memory_budget=need - 1)
    assert auto.stats["write_mode"] == "groups"
    _same_files(packed, auto)


def test_round_trip_fp16_dataset_many_passes(fp16_samples, tmp_path):
    ds = fp16_samples.open_dataset()
    for store in ("fp16", "fp32", "bf16"):
        cfg = PackConfig(host_cache="4%", store_dtype=store, chunk_size="8K")
        _, fixed, max_extent = pack_memory(plan_pack(fp16_samples, cfg), ds, cfg)
        packed = pack(fp16_samples.path, tmp_path / store, cfg, memory_budget=fixed + 2 * 2 * max_extent)
        assert packed.stats["passes"] > 2, "a small memory budget packs in several passes"
        _check_all_batches(packed, fp16_samples, ds)


@pytest.fixture(scope="module")
def wide_samples(tmp_path_factory):
    """64-d fp32 rows (one page holds 16): chunk sizes from one page to the whole file can be compared."""
    root = tmp_path_factory.mktemp("pw")
    ds = synthesize(SynthConfig(nodes=3001, avg_degree=5, dim=64, classes=3, seed=4,
                                train_fraction=0.3, val_fraction=0.1, test_fraction=0.1), root / "ds")
    return presample(ds.path, root / "samples", SampleConfig(fanouts=(3, 4), batch_size=83, epochs=1, seed=2))


def _same_files(a, b):
    for name in ("packed.bin", "tier_device.bin", "tier_pinned.bin", "tier_host.bin", "maps.bin", "runs.bin"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name


def test_small_budget_shrinks_the_chunk(wide_samples, tmp_path, monkeypatch, caplog):
    """Without --chunk-size a tight budget gets smaller chunks, the fewest passes, the same bytes."""
    import logging

    import diskgnn.packing
    monkeypatch.setattr(diskgnn.packing, "AUTO_CHUNK_MIN", ALIGN)  # the floor the tiny file allows
    ds = wide_samples.open_dataset()
    cfg = PackConfig(host_cache="4%", belady=False)  # the bound would otherwise be dropped to save a pass
    plan = plan_pack(wide_samples, cfg)
    top, fixed_top, max_extent = pack_memory(plan, ds, cfg)
    assert top >= ds.feature_bytes and top % ALIGN == 0
    _, fixed_page, _ = pack_memory(plan, ds, cfg, ALIGN)
    assert fixed_top - fixed_page == 3 * (top - ALIGN)
    # with one-page chunks the output buffers hold about a quarter of packed.bin; whole-file chunks leave no room
    budget = fixed_page + 2 * max(max_extent, plan.packed_bytes // 4)
    assert budget < fixed_top + 2 * max_extent
    with caplog.at_level(logging.INFO, logger="diskgnn.packing"):
        auto = pack(wide_samples.path, tmp_path / "auto", cfg, memory_budget=budget)
    st = auto.stats
    assert ALIGN <= st["chunk_bytes"] < top and st["chunk_bytes"] % ALIGN == 0
    assert 1 < st["passes"] <= 5
    assert st["bytes_read"] <= st["passes"] * ds.feature_bytes
    # what it holds (indexes and three chunk buffers, two output buffers) fits the budget
    _, fixed, _ = pack_memory(plan, ds, cfg, st["chunk_bytes"])
    assert max_extent <= st["group_bytes"] and fixed + 2 * st["group_bytes"] < st["memory_plan_bytes"] <= budget
    assert "chunk shrunk from" in caplog.text and f"{st['passes']} pass(es)" in caplog.text
    _check_all_batches(auto, wide_samples, ds)
    # one-page chunks (the most room for output) pass no fewer times: the chosen chunk is minimal in passes
    page = pack(wide_samples.path, tmp_path / "page", replace(cfg, chunk_size="4K"), memory_budget=budget)
    assert page.stats["passes"] == st["passes"] and page.stats["chunk_bytes"] == ALIGN
    _same_files(auto, page)
    # ... and it is the largest such chunk: one page more needs more passes or does not fit
    larger = replace(cfg, chunk_size=st["chunk_bytes"] + ALIGN)
    try:
        assert pack(wide_samples.path, tmp_path / "larger", larger, memory_budget=budget).stats["passes"] > st["passes"]
    except MemoryBudgetError as exc:
        assert "lower --chunk-size" in str(exc)
    # the old fixed chunk (the whole file here) cannot pack within this budget at all
    with pytest.raises(MemoryBudgetError, match="raise --memory-budget, lower --chunk-size"):
        pack(wide_samples.path, tmp_path / "top", replace(cfg, chunk_size=top), memory_budget=budget)


def test_roomy_budget_keeps_the_large_chunk_and_one_buffer(wide_samples, tmp_path):
    ds = wide_samples.open_dataset()
    cfg = PackConfig(host_cache="4%")
    plan = plan_pack(wide_samples, cfg)
    top, fixed, _ = pack_memory(plan, ds, cfg)
    # room for packed.bin once but not twice: one pass with one buffer (no second buffer to overlap with)
    one_group = fixed + plan.packed_bytes + BUCKET_BYTES_PER_ROW * int(plan.extent_rows.sum())
    packed = pack(wide_samples.path, tmp_path / "p", cfg, memory_budget=one_group)
    st = packed.stats
    assert st["chunk_bytes"] == top and st["passes"] == 1 and st["group_bytes"] == plan.packed_bytes
    assert st["memory_plan_bytes"] == one_group and "already give the fewest" in st["chunk_reason"]
    _check_all_batches(packed, wide_samples, ds)


def test_budget_below_the_smallest_chunk_explains(wide_samples, tmp_path, monkeypatch):
    import diskgnn.packing
    monkeypatch.setattr(diskgnn.packing, "AUTO_CHUNK_MIN", ALIGN)
    ds = wide_samples.open_dataset()
    cfg = PackConfig(host_cache="4%")
    _, fixed, max_extent = pack_memory(plan_pack(wide_samples, cfg), ds, cfg, ALIGN)
    with pytest.raises(MemoryBudgetError, match=r"the chunk is already down to 4\.00 KiB") as info:
        pack(wide_samples.path, tmp_path / "p", cfg, memory_budget=fixed + max_extent)
    assert "raise --memory-budget" in str(info.value)
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_repeated_nodes_inside_a_batch(samples, tiny_dataset, tmp_path):
    """Stand-in samples whose batches repeat input nodes still assemble exactly (plain and segments)."""

    class Repeating:
        path, manifest, num_nodes = samples.path, {"stand-in": 1}, samples.num_nodes
        dataset_path, dataset_fingerprint = samples.dataset_path, samples.dataset_fingerprint
        parts = ["train/0"]

        def _lists(self):
            off = samples.input_offsets("train/0")
            base = np.asarray(samples.all_input_nodes("train/0"))
            return [np.concatenate([base[off[i]:off[i + 1]], base[off[i]:off[i] + 5]]) for i in range(len(off) - 1)]

        def input_offsets(self, part):
            return np.concatenate([[0], np.cumsum([x.size for x in self._lists()])]).astype(np.int64)

        def all_input_nodes(self, part):
            return np.concatenate(self._lists())

        def input_nodes(self, part, i):
            return self._lists()[i]

        def num_batches(self, part):
            return len(self._lists())

        @property
        def access_counts(self):
            return np.bincount(self.all_input_nodes("train/0"), minlength=self.num_nodes)

    fake = Repeating()
    for kw in (dict(host_cache="3%"), dict(host_cache="0", disk_budget="4x")):
        packed = pack(fake, tmp_path / "r", PackConfig(**kw), overwrite=True)
        packed = Packed.open(tmp_path / "r", samples=fake)
        _check_all_batches(packed, fake, tiny_dataset)


def test_sharded_pack_holds_its_share(samples, tiny_dataset, tmp_path):
    packed = pack(samples.path, tmp_path / "s1", PackConfig(host_cache="5%"), num_shards=2, shard=1)
    verify_packed(packed)
    with FeatureStore(packed, "cpu") as store:
        for part in samples.parts:
            for i in range(samples.num_batches(part)):
                if i % 2 == 1:
                    want = _reference(tiny_dataset, samples.input_nodes(part, i), "fp32")
                    assert np.array_equal(store.assemble(part, i).numpy(), want)
                else:
                    with pytest.raises(ConfigError, match="belongs to shard 0 of 2"):
                        store.read(part, i)
    whole = pack(samples.path, tmp_path / "all", PackConfig(host_cache="5%"))
    assert packed.stats["packed_bytes"] < whole.stats["packed_bytes"]


# --- bad input --------------------------------------------------------------------------------

def test_cache_over_free_memory(samples, tmp_path, monkeypatch):
    import diskgnn.capabilities as caps
    monkeypatch.setattr(caps, "available_memory", lambda: 1000)
    with pytest.raises(MemoryBudgetError, match="--host-cache"):
        pack(samples.path, tmp_path / "p", PackConfig(host_cache="50%"))
    assert not (tmp_path / "p").exists(), "nothing is created before the inputs are checked"


def test_disk_budget_below_minimum_explains(samples, tmp_path):
    with pytest.raises(ConfigError, match=r"at least \d+\.\d\dx") as err:
        pack(samples.path, tmp_path / "p", PackConfig(host_cache="0", disk_budget="0.1x"))
    assert "once" in str(err.value) and "--host-cache" in str(err.value)


def test_samples_of_another_dataset(samples, fp16_samples, tmp_path):
    with pytest.raises(MismatchError, match="fingerprint"):
        pack(samples.path, tmp_path / "p", PackConfig(), dataset=fp16_samples.dataset_path)


def test_packed_refuses_other_samples(samples, fp16_samples, tmp_path):
    pack(samples.path, tmp_path / "p", PackConfig(host_cache="5%"))
    with pytest.raises(MismatchError, match="re-run diskgnn pack"):
        Packed.open(tmp_path / "p", samples=fp16_samples)


def test_truncated_packed_file_at_read_time(samples, tmp_path):
    packed = pack(samples.path, tmp_path / "p", PackConfig(host_cache="0"))
    store = FeatureStore(packed, "cpu")
    path = tmp_path / "p" / "packed.bin"
    os.truncate(path, os.path.getsize(path) // 2)
    last = samples.parts[-1]
    with pytest.raises(IntegrityError, match="truncated"):
        store.read(last, samples.num_batches(last) - 1)
    store.close()
    with pytest.raises(IntegrityError, match="truncated"):
        Packed.open(tmp_path / "p")


def test_corrupt_byte_fails_verify(samples, tmp_path):
    packed = pack(samples.path, tmp_path / "p", PackConfig(host_cache="0"))
    with open(tmp_path / "p" / "packed.bin", "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="checksum"):
        verify_packed(Packed.open(tmp_path / "p"))
    with pytest.raises(IntegrityError, match=r"packed.bin: batch train/0/0 .* checksum does not match"):
        verify_packed(Packed.open(tmp_path / "p"), check_crc=False)
    with FeatureStore(Packed.open(tmp_path / "p"), "cpu", check_crc=False) as store:
        got = store.assemble("train/0", 0)  # without the check the damage goes unnoticed...
    want = _reference(Packed.open(tmp_path / "p").dataset, samples.input_nodes("train/0", 0), "fp32")
    assert not np.array_equal(got.numpy(), want)  # ...which is why reads check by default


def test_existing_output_and_interrupted_pack(samples, tmp_path, monkeypatch):
    pack(samples.path, tmp_path / "p", PackConfig())
    with pytest.raises(OutputExistsError):
        pack(samples.path, tmp_path / "p", PackConfig())
    import diskgnn.packing as pk

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pk, "_write_rows", boom)
    with pytest.raises(KeyboardInterrupt):
        pack(samples.path, tmp_path / "p", PackConfig(), overwrite=True)
    assert (tmp_path / "p" / ".diskgnn-partial").exists()
    with pytest.raises(ManifestNotFoundError):
        Packed.open(tmp_path / "p")
    monkeypatch.undo()
    pack(samples.path, tmp_path / "p", PackConfig())  # a partial directory is simply replaced


def test_cli_pack_info_verify(samples, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["pack", str(samples.path), "--out", str(out), "--host-cache", "7%", "--store-dtype", "fp16",
                 "-q"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "packed" and info["store_dtype"] == "fp16" and info["tiers"]["host"]["rows"] > 0
    assert main(["verify", str(out)]) == 0
    assert main(["pack", str(samples.path), "--out", str(tmp_path / "x"), "--host-cache=-5%", "-q"]) == 2
    assert "negative" in capsys.readouterr().err
    assert main(["pack", str(samples.path), "--out", str(tmp_path / "y"), "--disk-budget", "0.05x", "-q"]) == 2
    assert "at least" in capsys.readouterr().err


# --- free disk space ----------------------------------------------------------------------------

def _free_space(monkeypatch, nbytes):
    import diskgnn.manifest
    monkeypatch.setattr(diskgnn.manifest, "_free_bytes", lambda directory: nbytes)


def test_pack_picks_a_disk_budget_that_fits_the_free_space(samples, tiny_dataset, tmp_path, monkeypatch, caplog):
    import logging
    from diskgnn.packing import FREE_SPACE_MARGIN_MIN, footprint_bytes, plan_pack
    plain = plan_pack(samples, PackConfig(host_cache="1%"))
    fixed = footprint_bytes(plain)["total"] - plain.packed_bytes
    room = fixed + int(plain.packed_bytes * 0.7)  # the plain layout does not fit, segments do
    _free_space(monkeypatch, FREE_SPACE_MARGIN_MIN + room)
    with caplog.at_level(logging.WARNING, logger="diskgnn.packing"):
        packed = pack(samples.path, tmp_path / "p", PackConfig(host_cache="1%"), memory_budget="200M")
    auto = packed.stats["disk_budget_auto"]
    assert packed.layout == "segments" and auto["budget_bytes"] == int(plain.packed_bytes * 0.7)
    assert packed.stats["packed_bytes"] <= auto["budget_bytes"] < plain.packed_bytes
    assert "disk budget" in caplog.text and "free" in caplog.text
    _check_all_batches(packed, samples, tiny_dataset)
    verify_packed(packed)


def test_pack_refuses_before_writing_when_nothing_fits(samples, tmp_path, monkeypatch):
    from diskgnn.errors import DiskFullError
    from diskgnn.packing import FREE_SPACE_MARGIN_MIN
    _free_space(monkeypatch, FREE_SPACE_MARGIN_MIN + 4096)
    with pytest.raises(DiskFullError, match=r"needs about .* free"):
        pack(samples.path, tmp_path / "p", PackConfig(host_cache="1%"), memory_budget="200M")
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_segments_too_large_for_the_segment_memory_explain_both_fixes(samples, tmp_path):
    with pytest.raises(MemoryBudgetError, match=r"--segment-memory.*raise --disk-budget to \d+\.\d\dx"):
        pack(samples.path, tmp_path / "p", PackConfig(host_cache="1%", disk_budget="3x", segment_memory="4K"),
             memory_budget="200M")
    assert not (tmp_path / "p").exists()


def test_the_belady_bound_is_left_out_when_it_would_not_fit(samples, tiny_dataset, tmp_path, monkeypatch, caplog):
    import logging
    import diskgnn.packing as pk
    monkeypatch.setattr(pk, "belady_memory", lambda *a: 1 << 40)  # pretend the bound needs a TiB
    with caplog.at_level(logging.WARNING, logger="diskgnn.packing"):
        packed = pack(samples.path, tmp_path / "p", PackConfig(host_cache="5%"), memory_budget="200M")
    assert "belady_hit_rate" not in packed.stats and "Belady bound" in caplog.text
    assert packed.stats["passes"] == 1
    _check_all_batches(packed, samples, tiny_dataset)


def test_assemble_map_takes_each_entry_from_its_tier_or_read_run():
    # 3 tiers of 2, 0 and 3 rows (fp32 and fp16), then an extent of 7 rows of 20 B (5 x fp32) of which two
    # runs were read: pages 0 and 2..3 of 1-page = 64 B toy pages, laid back to back in the buffer
    from diskgnn.kernels.gather import assemble_map, assemble_map_lut
    rng = np.random.default_rng(5)
    f, page = 5, 64
    tiers = [rng.standard_normal((k, f)).astype(np.float32) for k in (2, 0, 3)]
    bounds = np.array([0, 2, 2, 5], dtype=np.int64)
    extent = rng.standard_normal((7, f)).astype(np.float32)  # 140 B: pages 0, 1, 2
    raw = np.zeros(4 * page, np.uint8)
    raw[:140] = extent.view(np.uint8).ravel()
    run_pages, run_npages, run_buf_pages = np.array([0, 2]), np.array([1, 1]), np.array([0, 1])
    buf = np.concatenate([raw[0:page], raw[2 * page:3 * page]])
    # map entries 0..4 are tier slots, 5 + r extent row r. Rows 0..2 lie in page 0 (bytes 0..59); row 3 (60..79) crosses into
    # page 1, which was not read; row 6 (120..139) lies in page 1, not read either
    entries = [(5 + 0, extent[0]), (0, tiers[0][0]), (2, tiers[2][0]), (5 + 2, extent[2]), (4, tiers[2][2]),
               (1, tiers[0][1]), (5 + 1, extent[1])]
    batch_map = np.array([e for e, _ in entries], dtype=np.int32)
    want = np.stack([row for _, row in entries])
    out = np.full((len(entries), f), np.nan, np.float32)
    assert assemble_map(batch_map, bounds, *tiers, buf.view(np.float32), 20, run_pages, run_npages, run_buf_pages,
                        page, out) == 0
    assert np.array_equal(out, want)
    bad = np.array([5 + 3, -1, 0, 5 + 6], dtype=np.int64)  # crossing into an unread page, negative, ok, unread
    out = np.full((4, f), np.nan, np.float32)
    assert assemble_map(bad, bounds, *tiers, buf.view(np.float32), 20, run_pages, run_npages, run_buf_pages,
                        page, out) == 3
    assert np.array_equal(out[2], tiers[0][0]) and not out[[0, 1, 3]].any()
    # fp16 rows widened through the look-up table: the same rows, exactly
    lut = upcast_table("fp16")
    h_tiers = [t.astype(np.float16).view(np.uint16) for t in tiers]
    h_extent = extent.astype(np.float16)
    h_raw = np.zeros(4 * page, np.uint8)
    h_raw[:70] = h_extent.view(np.uint8).ravel()  # 10 B rows: pages 0 (rows 0..6)
    h_buf = h_raw[:page].copy()
    out = np.zeros((len(entries), f), np.float32)
    assert assemble_map_lut(batch_map, bounds, *h_tiers, h_buf.view(np.uint16), 10, np.array([0]), np.array([1]),
                            np.array([0]), page, lut, out) == 0
    h_want = np.stack([row.astype(np.float16).astype(np.float32) for _, row in entries])
    assert np.array_equal(out, h_want)


def test_reuse_histogram_gives_the_segment_row_counts_of_every_length():
    from diskgnn.kernels.packing import reuse_histogram, segment_row_counts, segment_rows_from_histogram
    rng = np.random.default_rng(11)
    for _ in range(20):
        n, nb = int(rng.integers(50, 700)), int(rng.integers(1, 30))
        lens = rng.integers(0, 25, size=nb)
        inputs = np.concatenate([rng.choice(n, size=int(k), replace=False) for k in lens] +
                                [np.zeros(0, np.int64)]).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        on_disk = disk_bitmap(np.where(rng.random(n) < 0.3, 1, -1).astype(np.int32))
        parts = np.unique(np.concatenate([[0, nb], rng.integers(0, nb + 1, size=3)])).astype(np.int64)
        longest = int(np.diff(parts).max())
        width = int(rng.integers(2, max(longest, 2) + 1))  # narrower than the longest part: exact up to width
        last = np.full(n, -1, np.int32)
        threads = int(rng.integers(1, 4))  # per-thread slices, each taking one of equal node ranges
        hist = np.zeros((threads, nb, width), np.int64)
        reuse_histogram(inputs, offsets, on_disk, parts, last, hist)
        hist = hist.sum(axis=0)
        uncached = np.zeros(nb, np.int64)
        count_uncached(inputs, offsets, np.where(np.unpackbits(on_disk.view(np.uint8), bitorder="little")[:n] > 0,
                                                 -1, 0).astype(np.int32), uncached)
        assert np.array_equal(hist.sum(axis=1), uncached)
        for g in range(1, width + 1):
            bounds = np.unique(np.concatenate([np.arange(parts[p], parts[p + 1], g) for p in range(len(parts) - 1)]
                                              + [parts[-1:]])).astype(np.int64)
            got = np.zeros(len(bounds) - 1, np.int64)
            segment_rows_from_histogram(hist, parts, bounds, got)
            assert np.array_equal(got, segment_row_counts(inputs, offsets, on_disk, bounds))
