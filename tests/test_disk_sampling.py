"""Sampling with the CSR on disk: read plans, per-window kernels, and identity with the in-memory sampler."""
import zlib

import numpy as np
import pytest

from diskgnn.dataset import Dataset
from diskgnn.disk_sampling import DiskCSR, batch_bytes_bound, sample_on_disk
from diskgnn.kernels.disk_sampling import check_window, plan_windows, sample_window
from diskgnn.kernels.sampling import count_missing_edges, sample_layer
from diskgnn.sampling import SampleConfig, Sampler, _jobs, presample
from diskgnn.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """2,999 nodes with ~12 in-edges each and three hubs of 1,100-2,600 (lists longer than the smallest window)."""
    from diskgnn.dataset import DatasetWriter
    n, f = 2999, 5
    rng = np.random.default_rng(6)
    deg = rng.integers(0, 25, n)
    deg[[7, 1500, 2998]] = [2600, 1100, 1900]
    lists = [np.sort(rng.choice(n, size=int(d), replace=False)) for d in deg]
    out = tmp_path_factory.mktemp("disk") / "ds"
    with DatasetWriter(out, num_nodes=n, feat_dim=f, feat_dtype="fp32", num_classes=3, source={"kind": "test"},
                       config={}) as w:
        w.write_array("indptr", np.concatenate([[0], np.cumsum(deg)]).astype(np.int64))
        w.write_array("indices", np.concatenate(lists).astype(np.int32))
        w.write_array("features", rng.standard_normal((n, f)).astype(np.float32))
        w.write_array("labels", rng.integers(0, 3, n).astype(np.int64))
        order = rng.permutation(n)
        for name, part in (("train", order[:1200]), ("val", order[1200:1500]), ("test", order[1500:1800])):
            w.write_array(f"{name}_idx", np.sort(part).astype(np.int64))
        ds = w.finish()
    return ds


def _plan(starts, ends, itemsize, gap, window):
    u = len(starts)
    out = [np.empty(u, np.int64), np.empty(u, np.int64), np.empty(u, np.int64), np.empty(u + 1, np.int64),
           np.empty(u + 1, np.int64)]
    nw = plan_windows(np.asarray(starts, np.int64), np.asarray(ends, np.int64), itemsize, gap, window, *out)
    return nw, out


@pytest.mark.parametrize("gap,window", [(0, 3 * 4096), (64 << 10, 5 * 4096), (1 << 30, 1 << 20)])
def test_read_plan_puts_every_range_where_it_says(gap, window):
    """Reading the planned runs of a file (simulated from memory) gives each range's items at its position."""
    rng = np.random.default_rng(gap % 7 + window)
    nodes = np.unique(rng.integers(0, 20_000, 3000))
    lengths = rng.integers(0, 40, nodes.size)
    lengths[::97] = 9000  # some lists longer than the smallest window: read apart (-1)
    starts = np.cumsum(np.concatenate([[0], lengths]))[:-1] * 3  # sorted, with gaps between them
    ends = starts + lengths
    items = rng.integers(0, 2**31 - 1, int(ends[-1]) + 5).astype("<i4")
    data = items.view(np.uint8)
    nw, (run_offset, run_length, range_pos, window_ranges, window_runs) = _plan(starts, ends, 4, gap, window)
    assert window_ranges[0] == 0 and window_ranges[nw] == nodes.size and (np.diff(window_ranges[:nw + 1]) > 0).all()
    long_ranges = 0
    for w in range(nw):
        r0, r1 = window_runs[w], window_runs[w + 1]
        assert (run_offset[r0:r1] % 4096 == 0).all()
        spans = -(-run_length[r0:r1] // 4096) * 4096
        assert spans.sum() <= window
        buf = np.concatenate([np.pad(data[o:o + n], (0, s - n)) for o, n, s in
                              zip(run_offset[r0:r1], run_length[r0:r1], spans)] or [np.zeros(0, np.uint8)])
        ids = buf.view("<i4")
        for j in range(window_ranges[w], window_ranges[w + 1]):
            if range_pos[j] < 0:
                assert window_ranges[w + 1] == j + 1 and r1 == r0 and (ends[j] - starts[j]) * 4 > window - 8192
                long_ranges += 1
                continue
            assert np.array_equal(ids[range_pos[j]:range_pos[j] + lengths[j]], items[starts[j]:ends[j]])
    assert (long_ranges > 0) == (window < 9000 * 4)
    runs = window_runs[nw]
    assert (run_length[:runs] > 0).all()
    read = int((-(-run_length[:runs] // 4096) * 4096).sum())
    pages = int(sum(-(-(b * 4) // 4096) * 4096 - a * 4 // 4096 * 4096 for a, b in zip(starts, ends)
                    if b > a and (b - a) * 4 <= window - 8192))
    if gap == 0:  # nothing read across a gap: at most the ranges' own pages
        assert read <= pages
    else:  # gaps read through: fewer, longer runs
        assert runs < np.count_nonzero(lengths)


def test_sample_window_equals_sample_layer(graph):
    """The per-window kernel draws what sample_layer draws, pair by pair (its numpy-free twin)."""
    ds = Dataset.open(graph.path)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    rng = np.random.default_rng(2)
    pair_nodes = rng.integers(0, ds.num_nodes, 700).astype(np.int64)
    keys = rng.integers(0, 2**63, 3, dtype=np.uint64)
    pair_keys = keys[rng.integers(0, 3, 700)]
    for fanout in (3, -1, 40):
        deg = np.diff(indptr)[pair_nodes]
        k = deg if fanout < 0 else np.minimum(deg, fanout)
        offsets = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
        want = np.empty(offsets[-1], np.int64)
        for key in keys:  # sample_layer takes one key: compare the pairs of each key
            mine = np.flatnonzero(pair_keys == key)
            sub_off = np.concatenate([[0], np.cumsum(k[mine])]).astype(np.int64)
            got = np.empty(sub_off[-1], np.int64)
            sample_layer(indptr, indices, pair_nodes[mine], fanout, key, sub_off, got)
            for t, p in enumerate(mine):
                want[offsets[p]:offsets[p + 1]] = got[sub_off[t]:sub_off[t + 1]]
        order = np.argsort(pair_nodes, kind="stable")
        uniq, first = np.unique(pair_nodes[order], return_index=True)
        pair_start = np.append(first, 700).astype(np.int64)
        out = np.full(offsets[-1], -7, np.int64)
        window = np.asarray(indices)  # the whole file as one window
        sample_window(window, indptr[uniq].astype(np.int64), indptr[uniq], np.diff(indptr)[uniq], 0, uniq.size,
                      pair_start, order, pair_nodes, pair_keys, offsets, out)
        assert np.array_equal(out, want)


def test_check_window_counts_what_count_missing_edges_counts(graph):
    ds = Dataset.open(graph.path)
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    rng = np.random.default_rng(4)
    nodes = np.unique(rng.integers(0, ds.num_nodes, 50))
    nbrs, offs = [], [0]
    for v in nodes:
        own = indices[indptr[v]:indptr[v + 1]].astype(np.int64)[:3]
        nbrs.append(np.concatenate([own, rng.integers(0, ds.num_nodes, int(v) % 2)]))  # odd nodes: one stranger
        offs.append(offs[-1] + nbrs[-1].size)
    neighbors = np.concatenate(nbrs)
    offsets = np.asarray(offs, np.int64)
    pair_start = np.arange(nodes.size + 1, dtype=np.int64)
    bad_count = np.zeros(nodes.size, np.bool_)
    missing = np.zeros(nodes.size, np.int64)
    check_window(indices, indptr[nodes].astype(np.int64), np.diff(indptr)[nodes], 0, nodes.size, pair_start,
                 np.arange(nodes.size, dtype=np.int64), np.full(nodes.size, 3, np.int64), offsets, neighbors,
                 bad_count, missing)
    for p, v in enumerate(nodes):  # the reference: count_missing_edges on a one-destination block
        local_nodes = np.concatenate([[v], nbrs[p]])
        ref = count_missing_edges(indptr, indices, local_nodes, np.array([0, nbrs[p].size], np.int64),
                                  np.arange(1, nbrs[p].size + 1, dtype=np.int32))
        assert missing[p] == ref
        assert bad_count[p] == (nbrs[p].size != min(indptr[v + 1] - indptr[v], 3))
    assert missing.sum() > 0 and bad_count.any()


def _raw(sampler, ds, cfg, parts=("train/0", "val", "test")):
    return list(sampler.raw_batches(_jobs(ds, cfg, list(parts), sampler, 1, 0)))


@pytest.mark.parametrize("fanouts", [(10, 15), (-1, 4), (3, 2, 5)])
@pytest.mark.parametrize("window,gap,group", [(64 << 20, 64 << 10, "all"), (3 * 4096, 0, "few"),
                                              (6 * 4096, 1 << 14, "one")])
def test_on_disk_groups_sample_what_the_in_memory_sampler_samples(graph, fanouts, window, gap, group, monkeypatch):
    """Any window size (lists longer than a window included), gap and group size: identical raw batches."""
    import diskgnn.disk_sampling as dsamp
    ds = Dataset.open(graph.path)
    cfg = SampleConfig(fanouts=fanouts, batch_size=97, epochs=1, seed=9)
    want = _raw(Sampler(ds, fanouts, mmap_topology="no"), ds, cfg)
    monkeypatch.setattr(dsamp, "WINDOW_BYTES", window)
    monkeypatch.setattr(dsamp, "GAP_BYTES", gap)
    on_disk = Sampler(ds, fanouts, mmap_topology="yes")
    bound = batch_bytes_bound(97, np.asarray(fanouts), ds.num_nodes, ds.num_edges / ds.num_nodes)
    group_bytes = {"all": 1 << 40, "few": 4 * bound, "one": 1}[group]
    real = dsamp.sample_on_disk
    monkeypatch.setattr(dsamp, "sample_on_disk", lambda *a, **kw: real(*a[:4], group_bytes, **kw))
    got = _raw(on_disk, ds, cfg)
    assert len(got) == len(want) > 10
    for a, b in zip(want, got):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    stats = on_disk.disk_stats
    if group == "few":  # the first group by the bound (4 batches), the next ones by what it used
        assert 1 < stats["groups"] <= -(-len(want) // 4)
    else:
        assert stats["groups"] == {"all": 1, "one": len(want)}[group]
    assert (stats["long_lists"] > 0) == (window == 3 * 4096)  # hubs: lists longer than 4 KiB of ids
    assert stats["bytes_read"] > 0 and stats["windows"] > 0


def test_groups_respect_their_byte_budget(graph):
    ds = Dataset.open(graph.path)
    cfg = SampleConfig(fanouts=(5, 5), batch_size=40, epochs=1, seed=1)
    sizes = []
    sampler = Sampler(ds, cfg.fanouts, mmap_topology="yes")
    jobs = list(_jobs(ds, cfg, ["train/0"], sampler, 1, 0))
    bound = batch_bytes_bound(40, np.array([5, 5]), ds.num_nodes, ds.num_edges / ds.num_nodes)
    with DiskCSR(ds) as csr:
        out = list(sample_on_disk(csr, jobs, np.array([5, 5]), sampler._node_map, 3 * bound,
                                  avg_degree=ds.num_edges / ds.num_nodes,
                                  on_group=lambda batches, used: sizes.append((batches, used))))
    assert len(out) == len(jobs) and sum(b for b, _ in sizes) == len(jobs)
    assert sizes[0][0] == 3  # the first group by the bound; later ones by what the first one used
    assert max(b for b, _ in sizes) >= 3 and all(used <= 3 * bound * 1.3 for _, used in sizes)


def test_presample_from_disk_writes_the_same_files(graph, tmp_path):
    cfg = SampleConfig(fanouts=(6, -1), batch_size=77, epochs=2, seed=3)
    a = presample(graph.path, tmp_path / "mem", cfg, mmap_topology="no")
    b = presample(graph.path, tmp_path / "disk", cfg, mmap_topology="yes", memory_budget="64M")
    crc = {p.name: zlib.crc32(p.read_bytes()) for p in sorted(a.path.iterdir()) if p.name != "manifest.json"}
    assert crc == {p.name: zlib.crc32(p.read_bytes()) for p in sorted(b.path.iterdir()) if p.name != "manifest.json"}
    reads = b.manifest["stats"]["topology_reads"]
    assert reads["groups"] >= 1 and reads["bytes_read"] > 0
    assert "topology_reads" not in a.manifest["stats"]


@pytest.mark.parametrize("window", [64 << 20, 3 * 4096])
def test_edge_check_passes_good_blocks_and_names_the_first_bad_one(graph, tmp_path, window, monkeypatch):
    """Sampled blocks checked against the CSR on disk (lists longer than a window included), in small groups."""
    import diskgnn.disk_sampling as dsamp
    from diskgnn.disk_sampling import EdgeCheck
    from diskgnn.errors import IntegrityError
    monkeypatch.setattr(dsamp, "WINDOW_BYTES", window)
    cfg = SampleConfig(fanouts=(-1, 5), batch_size=101, epochs=1, seed=2)
    samples = presample(graph.path, tmp_path / "s", cfg)
    ds = Dataset.open(graph.path)
    indptr = np.asarray(ds.indptr)
    blocks = [(f"batch {p}/{i}", layer, cfg.fanouts[layer], mb.input_nodes[:b.num_dst], b.indptr,
               mb.input_nodes[b.indices])
              for p in samples.parts for i, mb in enumerate(samples.batches(p)) for layer, b in enumerate(mb.blocks)]
    hub_block = next(k for k, blk in enumerate(blocks) if blk[1] == 0 and 7 in blk[3].tolist())

    def check(edited):
        with DiskCSR(ds) as csr:
            ec = EdgeCheck(csr, 1)  # every block flushed on its own
            for blk in edited:
                ec.add(*blk)
            ec.flush()
            return ec.groups

    assert check(blocks) == len(blocks)
    # the hub (node 7, 2,600 in-edges, fanout -1): one of its sources replaced by a node that is not one
    what, layer, fanout, dst, ptr, src = blocks[hub_block]
    j = dst.tolist().index(7)
    stranger = int(np.setdiff1d(np.arange(ds.num_nodes), np.asarray(ds.indices[indptr[7]:indptr[8]]))[0])
    bad_src = src.copy()
    bad_src[ptr[j]] = stranger
    edited = list(blocks)
    edited[hub_block] = (what, layer, fanout, dst, ptr, bad_src)
    with pytest.raises(IntegrityError, match=f"{what} block 0: 1 sampled edges are not edges of the graph"):
        check(edited)
    # a destination with one source too few: named with its degree, before any later block
    k = next(k for k, blk in enumerate(blocks) if blk[1] == 1 and (np.diff(blk[4]) == 5).any())
    what, layer, fanout, dst, ptr, src = blocks[k]
    j = int(np.flatnonzero(np.diff(ptr) == 5)[0])
    short_ptr = ptr.copy()
    short_ptr[j + 1:] -= 1
    edited = list(blocks)
    edited[k] = (what, layer, fanout, dst, short_ptr, np.delete(src, ptr[j]))
    with pytest.raises(IntegrityError, match=rf"{what} block 1: node {int(dst[j])} has 4 sampled neighbours, "
                                             rf"expected min\(degree {int(indptr[dst[j] + 1] - indptr[dst[j]])}, "
                                             rf"fanout 5\)"):
        check(edited)


def test_edge_check_allows_a_repeat_only_where_the_graph_repeats_it(graph):
    from diskgnn.disk_sampling import EdgeCheck
    from diskgnn.errors import IntegrityError
    ds = Dataset.open(graph.path)
    with DiskCSR(ds) as csr:
        ec = EdgeCheck(csr, 1 << 30)
        ec.add_repeat("batch x", 0, 3, 7, np.array([5, 9, 5]))  # node 7's in-edges are distinct: damage
        with pytest.raises(IntegrityError, match="batch x block 0: destination 3 has a repeated neighbour"):
            ec.flush()
    # a multigraph: node 0 takes source 4 three times and 6 twice
    from diskgnn.dataset import DatasetWriter
    multi = graph.path.parent / "multi"
    with DatasetWriter(multi, num_nodes=9, feat_dim=2, feat_dtype="fp32", num_classes=2, source={}, config={}) as w:
        w.write_array("indptr", np.array([0, 7] + [7] * 8, np.int64))
        w.write_array("indices", np.array([1, 4, 4, 6, 4, 6, 8], np.int32))
        w.write_array("features", np.zeros((9, 2), np.float32))
        w.write_array("labels", np.zeros(9, np.int64))
        for name in ("train", "val", "test"):
            w.write_array(f"{name}_idx", np.array([{"train": 0, "val": 1, "test": 2}[name]], np.int64))
        mds = w.finish()
    with DiskCSR(mds, window_bytes=3 * 4096) as csr:
        ec = EdgeCheck(csr, 1 << 30)
        ec.add_repeat("b", 1, 0, 0, np.array([4, 6, 4, 4, 6]))
        ec.flush()  # the graph repeats them as often
        ec.add_repeat("b", 1, 0, 0, np.array([4, 6, 4, 6, 6]))
        with pytest.raises(IntegrityError, match="destination 0 has a repeated neighbour"):
            ec.flush()  # 6 three times, the graph has it twice


def test_eval_fanouts_from_disk_sample_what_the_in_memory_sampler_samples(graph, tmp_path, monkeypatch):
    """val/test sampled with eval_fanouts: the on-disk groups take each part's fanouts (a group never mixes
    them), the same raw batches and files as the in-memory sampler, and verify counts against them."""
    import diskgnn.disk_sampling as dsamp
    from diskgnn.sampling import verify_samples
    ds = Dataset.open(graph.path)
    cfg = SampleConfig(fanouts=(3, 2), batch_size=83, epochs=1, seed=4, eval_fanouts=(-1, 5))
    want = _raw(Sampler(ds, cfg.fanouts, mmap_topology="no"), ds, cfg)
    on_disk = Sampler(ds, cfg.fanouts, mmap_topology="yes")
    groups = []
    real = dsamp._sample_group
    monkeypatch.setattr(dsamp, "_sample_group",
                        lambda csr, group, fanouts, node_map: (groups.append(tuple(fanouts.tolist())),
                                                               real(csr, group, fanouts, node_map))[1])
    got = _raw(on_disk, ds, cfg)
    assert len(got) == len(want)
    for a, b in zip(want, got):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    assert groups[0] == (3, 2) and groups[-1] == (-1, 5)  # train, then val/test in groups of their own
    # the val batches really are sampled with eval_fanouts: their seeds' layer takes up to 5, the next all
    n_train = -(-1200 // 83)
    val = want[n_train]
    seeds_layer = val[2][val[1][1] + 1:]  # block_indptr of the last block (after the first block's num_dst + 1)
    assert int(np.diff(seeds_layer).max()) == 5
    monkeypatch.setattr(dsamp, "_sample_group", real)
    mem = presample(graph.path, tmp_path / "mem", cfg, mmap_topology="no")
    disk = presample(graph.path, tmp_path / "disk", cfg, mmap_topology="yes", memory_budget="64M")
    crc = {p.name: zlib.crc32(p.read_bytes()) for p in sorted(mem.path.iterdir()) if p.name != "manifest.json"}
    assert crc == {p.name: zlib.crc32(p.read_bytes()) for p in sorted(disk.path.iterdir())
                   if p.name != "manifest.json"}
    verify_samples(disk)


def test_edge_check_owes_a_link_batch_its_degree_minus_the_excluded_edges(graph):
    """A destination whose in-edges a batch excluded is owed min(degree - excluded, fanout) neighbours."""
    from diskgnn.disk_sampling import EdgeCheck
    from diskgnn.errors import IntegrityError
    ds = Dataset.open(graph.path)
    indptr = np.asarray(ds.indptr)
    deg = np.diff(indptr)
    v = int(np.flatnonzero((deg >= 4) & (deg <= 20))[0])
    lst = np.asarray(ds.indices[indptr[v]:indptr[v + 1]]).astype(np.int64)
    kept = lst[2:]  # two of its in-edges excluded, all the others sampled (fanout -1)

    def check(fanout, sources, excluded):
        with DiskCSR(ds) as csr:
            ec = EdgeCheck(csr, 1 << 30)
            ec.add("batch e", 0, fanout, np.array([v]), np.array([0, sources.size], np.int64), sources, excluded)
            ec.flush()

    check(-1, kept, np.array([2]))
    check(kept.size, kept, np.array([2]))  # fanout >= degree - excluded: all that is left
    check(3, kept[:3], np.array([2]))
    with pytest.raises(IntegrityError, match=rf"node {v} has {kept.size} sampled neighbours, expected "
                                             rf"min\(degree {lst.size}, fanout -1\)"):
        check(-1, kept, None)  # without the exclusion the whole list is owed
    with pytest.raises(IntegrityError, match=rf"expected min\(degree {kept.size - 1} \({lst.size} in the graph, "
                                             rf"3 excluded by the batch\), fanout -1\)"):
        check(-1, kept, np.array([3]))


def test_link_samples_with_the_topology_on_disk(tmp_path):
    """--task link with the CSR not loaded: link batches are sampled through the memory map (the same files
    as in memory) and verify checks them against the CSR on disk, exclusions included."""
    import numba
    from diskgnn.sampling import verify_samples
    numba.get_num_threads()  # numba's thread pool first (see tests/test_link.py)
    ds = synthesize(SynthConfig(nodes=900, avg_degree=7, dim=4, classes=3, seed=8, edge_split=(0.6, 0.05, 0.05),
                                eval_negatives=9), tmp_path / "link")
    cfg = SampleConfig(fanouts=(4, -1), batch_size=61, epochs=1, seed=2, task="link", negatives=2)
    mem = presample(ds.path, tmp_path / "mem", cfg, mmap_topology="no")
    disk = presample(ds.path, tmp_path / "disk", cfg, mmap_topology="yes")
    assert disk.manifest["stats"]["mmap_topology"] is True and mem.manifest["stats"]["mmap_topology"] is False
    crc = {p.name: zlib.crc32(p.read_bytes()) for p in sorted(mem.path.iterdir()) if p.name != "manifest.json"}
    assert crc == {p.name: zlib.crc32(p.read_bytes()) for p in sorted(disk.path.iterdir())
                   if p.name != "manifest.json"}
    verify_samples(disk)
