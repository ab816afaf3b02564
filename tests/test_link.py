"""Link prediction's data side: the edge split, held-out edges, negatives and presampled link batches.

The kernels are checked against plain-Python twins (same counter-based RNG), the
samples against the graph minus each batch's excluded edges, and every bad
input against its error.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numba
import numpy as np
import pytest

from diskgnn.dataset import Dataset, verify_dataset
from diskgnn.errors import ConfigError, InputFormatError, IntegrityError, MismatchError
from diskgnn.kernels.link import (GRAPH, TEST, TRAIN, VAL, assign_edges, count_excluded_edges, sample_link_batch,
                                  uniform_candidates, weighted_candidates)
from diskgnn.kernels.rng import mix_key, uniform01
from diskgnn.link import LinkSplitConfig, parse_edge_split
from diskgnn.keys import batch_key
from diskgnn.sampling import SampleConfig, Samples, presample, verify_samples
from diskgnn.synth import SynthConfig, synthesize

from conftest import run_cli, run_killed
from test_sampling_kernels import _draw, _mix_key, _ref_positions, odd_graph

# numba's thread pool first: a cached kernel that reaches a parallel one through another cached kernel
# (sample_link_batch > sample_blocks_excluding > sample_layer_excluding) does not start it when loaded
numba.get_num_threads()

LINK_SYNTH = SynthConfig(nodes=1237, avg_degree=6, dim=13, classes=5, seed=3, train_fraction=0.3,
                         val_fraction=0.1, test_fraction=0.1, edge_split=(0.6, 0.05, 0.07), eval_negatives=17)


@pytest.fixture(scope="module")
def link_dataset(tmp_path_factory):
    """1,237 nodes, 13-d features, 60/5/7 % of the edges train/val/test, 17 candidates per held-out edge."""
    return synthesize(LINK_SYNTH, tmp_path_factory.mktemp("link") / "ds")


LINK_SAMPLE = SampleConfig(fanouts=(4, 3), batch_size=97, epochs=2, seed=5, task="link", negatives=3)


@pytest.fixture(scope="module")
def link_samples(link_dataset, tmp_path_factory):
    return presample(link_dataset.path, tmp_path_factory.mktemp("ls") / "s", LINK_SAMPLE)


# --- plain-Python twins --------------------------------------------------------------------------

def _uniform01(key, counter):
    return (_draw(key, counter) >> 11) * (1.0 / 9007199254740992.0)


def ref_link_batch(indptr, indices, pos, cand, fanouts, key, exclude, reverse):
    """What sample_link_batch must return: endpoints as seeds, then sampling on the graph minus excluded edges."""
    nodes, local = [], {}

    def lid(v):
        if v not in local:
            local[v] = len(nodes)
            nodes.append(v)
        return local[v]
    pairs = [[0] * (2 + len(cand[0])) for _ in pos]
    for i, (s, _) in enumerate(pos):
        pairs[i][0] = lid(int(s))
    for i, (_, d) in enumerate(pos):
        pairs[i][1] = lid(int(d))
    for i, row in enumerate(cand):
        for j, c in enumerate(row):
            pairs[i][2 + j] = lid(int(c))
    excluded = set()
    if exclude:
        for s, d in pos:
            excluded.add((int(s), int(d)))
            if reverse:
                excluded.add((int(d), int(s)))
    sizes = [0] * len(fanouts) + [len(nodes)]
    blocks = [None] * len(fanouts)
    for layer in range(len(fanouts) - 1, -1, -1):
        layer_key = _mix_key(key, layer)
        ptr, idx = [0], []
        for v in list(nodes):
            lo, hi = int(indptr[v]), int(indptr[v + 1])
            kept = [int(indices[e]) for e in range(lo, hi) if (int(indices[e]), v) not in excluded]
            f = fanouts[layer]
            if f < 0 or len(kept) <= f:
                picked = kept
            else:
                picked = [kept[p] for p in _ref_positions(_mix_key(layer_key, v), len(kept), f)]
            for u in picked:
                idx.append(lid(u))
            ptr.append(len(idx))
        sizes[layer] = len(nodes)
        blocks[layer] = (ptr, idx)
    return nodes, sizes, [p for b in blocks for p in b[0]], [i for b in blocks for i in b[1]], pairs


@pytest.mark.parametrize("fanouts", [(3,), (2, 3), (-1, 2), (5, 40, 1)])
@pytest.mark.parametrize("exclude,reverse", [(True, False), (True, True), (False, False)])
def test_link_batch_kernel_matches_reference(fanouts, exclude, reverse):
    indptr, indices = odd_graph()
    n = indptr.shape[0] - 1
    rng = np.random.default_rng(11)
    edges = [(int(indices[e]), v) for v in range(n) for e in range(indptr[v], indptr[v + 1])]
    node_map = np.full(n, -1, dtype=np.int32)
    excl = np.full(n, -1, dtype=np.int32)
    for trial, key in enumerate((0, 98765, 2**63 + 11)):
        pick = rng.choice(len(edges), 5 + trial, replace=False)
        pos = np.array([edges[i] for i in pick], dtype=np.int64)
        pos[0] = (1, 1)  # a self-loop positive: its reverse is itself
        cand = rng.integers(0, n, (pos.shape[0], 2))
        got = sample_link_batch(indptr, indices, np.ascontiguousarray(pos[:, 0]), np.ascontiguousarray(pos[:, 1]),
                                cand, np.array(fanouts, dtype=np.int64), np.uint64(key), node_map, excl, exclude,
                                reverse)
        want = ref_link_batch(indptr, indices, pos.tolist(), cand.tolist(), fanouts, key, exclude, reverse)
        for g, w in zip(got, want):
            assert np.asarray(g).tolist() == w
        assert got[4].dtype == np.int32 and got[3].dtype == np.int32
        assert (node_map == -1).all() and (excl == -1).all(), "the maps must be restored for the next batch"


def test_exclusion_removes_edges_that_sampling_would_take():
    """Without exclusion the hub's batch samples its own positive edges; with it, never (so the check can fail)."""
    indptr, indices = odd_graph()
    n = indptr.shape[0] - 1
    hub_sources = np.unique(indices[indptr[0]:indptr[1]])[:6]
    pos = np.stack([hub_sources, np.zeros_like(hub_sources)], axis=1).astype(np.int64)
    cand = np.full((pos.shape[0], 1), 4, dtype=np.int64)
    fan = np.array([-1], dtype=np.int64)
    maps = np.full(n, -1, dtype=np.int32), np.full(n, -1, dtype=np.int32)
    for exclude, expect_bad in ((False, True), (True, False)):
        nodes, sizes, bptr, bidx, _ = sample_link_batch(indptr, indices, pos[:, 0].copy(), pos[:, 1].copy(), cand,
                                                        fan, np.uint64(1), *maps, exclude, True)
        bad = count_excluded_edges(nodes, bptr, bidx, pos[:, 0].copy(), pos[:, 1].copy(), True)
        assert (bad > 0) == expect_bad


def test_candidate_kernels_match_their_twins():
    out = np.empty((7, 5), dtype=np.int64)
    key = np.uint64(424242)
    uniform_candidates(key, np.int64(3), np.int64(1000), out)
    want = [[_draw(424242, (3 + i) * 5 + j) % 1000 for j in range(5)] for i in range(7)]
    assert out.tolist() == want
    w = np.array([0.0, 2.0, 0.0, 1.0, 5.0])
    cum = np.cumsum(w)
    weighted_candidates(key, np.int64(0), cum, out)
    want = [[int(np.searchsorted(cum, _uniform01(424242, i * 5 + j) * cum[-1], side="right")) for j in range(5)]
            for i in range(7)]
    assert out.tolist() == want
    assert not np.isin(out, [0, 2]).any()  # zero-weight nodes are never drawn


def test_degree_sampler_follows_degree_to_the_power_075():
    from diskgnn.link import degree_weights
    indptr, indices = odd_graph()
    cum = degree_weights(indptr, indices)
    deg = np.diff(indptr) + np.bincount(indices, minlength=indptr.shape[0] - 1)
    p = deg ** 0.75 / (deg ** 0.75).sum()
    out = np.empty((40000, 5), dtype=np.int64)
    weighted_candidates(np.uint64(9), np.int64(0), cum, out)
    freq = np.bincount(out.ravel(), minlength=p.shape[0]) / out.size
    assert np.abs(freq - p).max() < 0.005  # 200k draws: the standard error is below 0.001
    assert freq[deg == 0].sum() == 0


# --- the edge split --------------------------------------------------------------------------------

def test_assign_edges_matches_its_twin_and_keeps_an_edge_with_its_reverse():
    indptr, indices = odd_graph()
    n = indptr.shape[0] - 1
    key = np.uint64(777)
    for undirected in (False, True):
        code = np.empty(indptr[-1], dtype=np.int8)
        assign_edges(indptr, indices, np.int64(0), np.int64(n), key, 0.5, 0.7, 0.9, undirected,
                     np.zeros(0, dtype=np.int64), code)
        for v in range(n):
            for e in range(indptr[v], indptr[v + 1]):
                u = int(indices[e])
                a, b = (min(u, v), max(u, v)) if undirected else (u, v)
                x = _uniform01(_mix_key(777, a), b)
                assert code[e] == (TRAIN if x < 0.5 else VAL if x < 0.7 else TEST if x < 0.9 else GRAPH)
    # given held-out keys: those edges are removed, every other edge trains
    keys = np.array(sorted([0 * n + int(indices[indptr[0]]), 7 * n + 8]), dtype=np.int64)
    code = np.empty(indptr[-1], dtype=np.int8)
    assign_edges(indptr, indices, np.int64(0), np.int64(n), key, 0.0, 0.0, 0.0, False, keys, code)
    removed = [(v, int(indices[e])) for v in range(n) for e in range(indptr[v], indptr[v + 1]) if code[e] == 4]
    assert set(removed) == {(0, int(indices[indptr[0]])), (7, 8)} and set(code.tolist()) == {TRAIN, 4}


def test_split_dataset_holds_out_edges_the_graph_no_longer_has(link_dataset):
    ds = link_dataset
    verify_dataset(ds)  # ids in range, train edges in the graph, held-out edges not
    train, val, test = (np.asarray(ds.link_array(f"{p}_pos")) for p in ("train", "val", "test"))
    graph = {(int(u), v) for v in range(ds.num_nodes) for u in ds.indices[ds.indptr[v]:ds.indptr[v + 1]]}
    assert all((int(s), int(d)) in graph for s, d in train)
    assert not any((int(s), int(d)) in graph for s, d in np.concatenate([val, test]))
    total = len(graph) + val.shape[0] + test.shape[0]
    assert abs(train.shape[0] / total - 0.6) < 0.03 and abs(val.shape[0] / total - 0.05) < 0.02
    assert ds.link_array("val_neg").shape == (val.shape[0], 17)
    assert ds.manifest["link"]["edge_split"] == [0.6, 0.05, 0.07] and not ds.undirected


def test_the_split_does_not_depend_on_the_chunking(link_dataset, tmp_path):
    other = synthesize(LINK_SYNTH, tmp_path / "ds", chunk_nodes=101)
    for name in ("train_pos", "val_pos", "test_pos", "val_neg", "test_neg", "indptr", "indices"):
        assert np.array_equal(np.asarray(other.array(name)), np.asarray(link_dataset.array(name))), name


def _write_npz(path, n=211, e=1400, seed=2, **extra):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, n, (2, e))
    arrays = dict(edge_index=ei, feat=rng.standard_normal((n, 5)).astype(np.float32), **extra)
    np.savez(path, **arrays)
    return ei


def test_prepare_undirected_split_removes_reverses(tmp_path):
    from diskgnn.ingest import PrepareConfig, prepare
    _write_npz(tmp_path / "g.npz")
    ds = prepare(PrepareConfig(format="npz", input=str(tmp_path / "g.npz"), undirected=True,
                               edge_split="0.7,0.1,0.1", eval_negatives=9, split_seed=4), tmp_path / "ds")
    verify_dataset(ds)
    graph = {(int(u), v) for v in range(ds.num_nodes) for u in ds.indices[ds.indptr[v]:ds.indptr[v + 1]]}
    assert all((v, u) in graph for u, v in graph)  # still undirected
    for part in ("val", "test"):
        held = np.asarray(ds.link_array(f"{part}_pos"))
        assert held.shape[0] > 0 and (held[:, 0] <= held[:, 1]).all()
        assert not any((int(s), int(d)) in graph or (int(d), int(s)) in graph for s, d in held)
    train = np.asarray(ds.link_array("train_pos"))
    assert (train[:, 0] <= train[:, 1]).all()  # each undirected edge once
    assert ds.undirected and ds.link_array("test_neg").shape[1] == 9


def test_prepare_given_held_out_edges_leave_the_graph(tmp_path):
    from diskgnn.ingest import PrepareConfig, prepare
    rng = np.random.default_rng(3)
    ei = _write_npz(tmp_path / "tmp.npz")
    val, test = ei[:, :40], ei[:, 40:90]
    val_neg = rng.integers(0, 211, (40, 6))
    _write_npz(tmp_path / "g.npz", val_pos=val, test_pos=test, val_neg=val_neg)
    ds = prepare(PrepareConfig(format="npz", input=str(tmp_path / "g.npz"), eval_negatives=4), tmp_path / "ds")
    verify_dataset(ds)
    assert np.array_equal(ds.link_array("val_pos"), val.T) and np.array_equal(ds.link_array("val_neg"), val_neg)
    assert ds.link_array("test_neg").shape == (50, 4)  # drawn: the input gave none
    graph = {(int(u), v) for v in range(ds.num_nodes) for u in ds.indices[ds.indptr[v]:ds.indptr[v + 1]]}
    assert not any((int(s), int(d)) in graph for s, d in np.concatenate([val.T, test.T]))
    assert ds.manifest["stats"]["held_out_removed_from_graph"] > 0
    assert ds.manifest["link"]["candidates"] == {"val": "given", "test": "uniform"}


def test_prepare_with_a_split_resumes_after_a_kill(tmp_path):
    """Killed in the middle of the CSR build: the rerun ends with the uninterrupted run's edges and split."""
    from diskgnn.bench.reliability import snapshot_dir
    from diskgnn.ingest import PrepareConfig, prepare
    _write_npz(tmp_path / "g.npz", n=503, e=4000)
    kw = dict(format="npz", input=str(tmp_path / "g.npz"), undirected=True, edge_split="0.8,0.07,0.05",
              memory_budget="64M")
    ref = prepare(PrepareConfig(**kw), tmp_path / "ref", max_range_edges=900)
    assert ref.manifest["stats"]["destination_ranges"] >= 4
    out = tmp_path / "out"
    run_killed(f"""
        import dataclasses
        import diskgnn.ingest as ingest
        real_plan = ingest._plan
        ingest._plan = lambda *a: dataclasses.replace(real_plan(*a), journal_bytes=1)
        ingest.prepare(ingest.PrepareConfig(**{kw!r}), {str(out)!r}, max_range_edges=900)
        """, 4)
    state = json.loads((out / "resume.json").read_text())
    assert state["state"]["phase"] == "build" and "train_pos.bin" in state["files"]
    ds = prepare(PrepareConfig(**kw), out, max_range_edges=900)
    assert ds.manifest["stats"]["resumed_from"].startswith("destination range")
    assert snapshot_dir(out) == snapshot_dir(ref.path)


def test_killed_link_synth_resumes_with_the_same_split(link_dataset, tmp_path):
    from diskgnn.bench.reliability import snapshot_dir
    ref = synthesize(LINK_SYNTH, tmp_path / "ref", chunk_nodes=300)
    out = tmp_path / "out"
    run_killed(f"""
        from diskgnn.synth import SynthConfig, synthesize
        synthesize(SynthConfig(**{dataclasses.asdict(LINK_SYNTH)!r}), {str(out)!r}, chunk_nodes=300)
        """, 2)
    assert "train_pos.bin" in json.loads((out / "resume.json").read_text())["files"]
    ds = synthesize(LINK_SYNTH, out, chunk_nodes=300)
    assert ds.manifest["stats"]["resumed_from_node"] == 600
    assert snapshot_dir(out) == snapshot_dir(ref.path)


# --- presampled link batches -----------------------------------------------------------------------

def test_link_samples_verify_and_hold_what_the_config_says(link_samples, link_dataset):
    s = link_samples
    verify_samples(s)  # seeds = endpoints, positives in part order, negatives re-drawn, no excluded edge sampled,
    # every destination with min(fanout, degree - its excluded in-edges) neighbours, every edge in the graph
    assert s.task == "link" and s.config.negatives == 3 and s.config.negative_sampler == "uniform"
    ds = link_dataset
    train = ds.link_array("train_pos")
    assert s.num_batches("train/0") == -(-train.shape[0] // 97)
    mb = s.batch("train/0", 0)
    assert mb.pairs.shape == (97, 5) and mb.pairs.dtype == np.int32
    assert np.array_equal(np.unique(mb.pairs), np.arange(mb.batch_size))
    ebs = s.manifest["link"]["eval_batch_size"]
    assert ebs == max(1, 97 * 5 // 19)
    val = s.batch("val", 1)
    assert val.pairs.shape == (ebs, 19)
    assert np.array_equal(val.input_nodes[val.pairs[:, 2:]], ds.link_array("val_neg")[ebs:2 * ebs])
    # the two presampled epochs shuffle the training edges differently
    e0 = s.batch("train/0", 0)
    e1 = s.batch("train/1", 0)
    assert not np.array_equal(e0.input_nodes[e0.pairs[:, :2]], e1.input_nodes[e1.pairs[:, :2]])


def test_every_sampled_edge_is_in_the_graph_minus_the_batch_positives(link_samples, link_dataset):
    """Independent of verify_samples: rebuild each block's edges globally and check them in numpy."""
    ds = link_dataset
    graph = {(int(u), v) for v in range(ds.num_nodes) for u in ds.indices[ds.indptr[v]:ds.indptr[v + 1]]}
    for i in range(link_samples.num_batches("train/0")):
        mb = link_samples.batch("train/0", i)
        nodes = mb.input_nodes
        pos = {(int(nodes[a]), int(nodes[b])) for a, b in mb.pairs[:, :2]}
        for b in mb.blocks:
            dst = np.repeat(nodes[:b.num_dst], np.diff(b.indptr))
            src = nodes[b.indices]
            edges = set(zip(src.tolist(), dst.tolist()))
            assert edges <= graph and not edges & pos


def test_negative_sampler_degree_and_a_given_eval_batch_size(link_dataset, tmp_path):
    cfg = dataclasses.replace(LINK_SAMPLE, epochs=1, negative_sampler="degree", eval_batch_size=40, negatives=1)
    s = presample(link_dataset.path, tmp_path / "s", cfg)
    verify_samples(s)
    assert s.batch("test", 0).pairs.shape == (40, 19) and s.batch("train/0", 0).pairs.shape[1] == 3


def test_link_samples_are_the_same_for_1_and_2_threads(link_dataset, link_samples, tmp_path):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    cfg = SampleConfig.from_json(link_samples.config.to_json())
    one = presample(link_dataset.path, tmp_path / "one", cfg, threads=1)
    assert one.fingerprint == link_samples.fingerprint  # the module fixture ran with every thread
    two = presample(link_dataset.path, tmp_path / "two", cfg, threads=2)
    assert two.fingerprint == one.fingerprint
    for spec in one.files():
        assert (tmp_path / "one" / spec.path).read_bytes() == (tmp_path / "two" / spec.path).read_bytes()


def test_sharded_link_samples_hold_the_unsharded_batches(link_dataset, link_samples, tmp_path):
    cfg = SampleConfig.from_json(link_samples.config.to_json())
    shard = presample(link_dataset.path, tmp_path / "sh", cfg, num_shards=3, shard=1)
    for part in ("train/1", "val"):
        for i in range(shard.num_batches(part)):
            a, b = shard.batch(part, i), link_samples.batch(part, 3 * i + 1)
            assert np.array_equal(a.input_nodes, b.input_nodes) and np.array_equal(a.pairs, b.pairs)


def test_node_classification_config_keeps_its_old_form():
    cfg = SampleConfig(fanouts=(10, 15), batch_size=1024)
    assert cfg.to_json() == {"fanouts": [10, 15], "batch_size": 1024, "epochs": 1, "seed": 0}
    assert SampleConfig.from_json(cfg.to_json()) == cfg
    link = SampleConfig.from_json(LINK_SAMPLE.to_json())
    assert link == LINK_SAMPLE and link.is_link


def test_corrupt_pairs_are_caught(link_samples, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(link_samples.path, out)
    path = out / "train-0.pairs.bin"
    pairs = np.fromfile(path, dtype="<i4")
    pairs[7] = 10**6
    pairs.tofile(path)
    with pytest.raises(IntegrityError, match="pairs"):
        Samples.open(out).batch("train/0", 0)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,match", [
    ("0.9,0.05", "has 2 values"), ("0.9,x,0.05", "not three comma-separated"), ("0.9,0.2,0.05", "at most 1"),
    ("0,0.5,0.5", "leaves no training edges"), ("0.9,0,0", "holds out no edges"), ("-0.1,0.5,0.5", ">= 0"),
])
def test_bad_edge_split_flags(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_edge_split(text)


@pytest.mark.parametrize("kw,match", [
    (dict(task="link", negatives=0), "--negatives must be an integer >= 1"),
    (dict(task="link", negative_sampler="zipf"), "--negative-sampler"),
    (dict(task="link", eval_batch_size=0), "--eval-batch-size"),
    (dict(negatives=2), "--negatives applies to link prediction only"),
    (dict(task="edge"), "--task must be node or link"),
])
def test_bad_link_sample_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        SampleConfig(fanouts=(3,), batch_size=8, **kw)


def _no_output(out: Path) -> None:
    assert not (out / "manifest.json").exists()


def test_cli_errors_for_bad_held_out_edges(tmp_path):
    rng = np.random.default_rng(1)
    n = 211
    cases = {
        "range": (dict(val_pos=np.array([[1, 2], [3, n + 5]]), test_pos=np.array([[4], [5]])),
                  "val_pos.*edge 1 \\(2 -> 216\\).*outside 0..210"),
        "rows": (dict(val_pos=np.array([[1, 2, 3], [3, 4, 5]]), val_neg=rng.integers(0, n, (2, 10))),
                 "val_neg.*2 rows.*val_pos.*holds 3 edges"),
        "shape": (dict(test_pos=np.array([[1, 2], [3, 4], [5, 6]])), "test_pos.*2 x E .*transposed"),
        "neg-range": (dict(val_pos=np.array([[1], [2]]), val_neg=np.array([[3, -1]])), "row 0, column 1 is node -1"),
    }
    for name, (extra, match) in cases.items():
        _write_npz(tmp_path / f"{name}.npz", n=n, **extra)
        out = tmp_path / f"out-{name}"
        rc, err = run_cli("prepare", "--format", "npz", tmp_path / f"{name}.npz", "--out", out)
        assert rc == 2 and "error:" in err, name
        import re
        assert re.search(match, err), (name, err)
        _no_output(out)
    _write_npz(tmp_path / "both.npz", n=n, val_pos=np.array([[1], [2]]))
    rc, err = run_cli("prepare", "--format", "npz", tmp_path / "both.npz", "--out", tmp_path / "o",
                      "--edge-split", "0.8,0.1,0.1")
    assert rc == 2 and "drop --edge-split" in err


def test_cli_errors_for_a_split_that_leaves_no_training_edges(tmp_path):
    _write_npz(tmp_path / "g.npz", n=31, e=20)
    out = tmp_path / "out"
    rc, err = run_cli("prepare", "--format", "npz", tmp_path / "g.npz", "--out", out, "--edge-split",
                      "0.0001,0.5,0.4999")
    assert rc == 2 and "leaves no training edges" in err and "--edge-split" in err
    _no_output(out)


def test_cli_error_for_a_featureless_graph(tmp_path):
    np.savez(tmp_path / "g.npz", edge_index=np.array([[0, 1], [1, 2]]))
    out = tmp_path / "out"
    rc, err = run_cli("prepare", "--format", "npz", tmp_path / "g.npz", "--out", out, "--edge-split", "0.8,0.1,0.1")
    assert rc == 2 and "has none" in err and "feat" in err
    assert not out.exists() or not (out / "manifest.json").exists()


def test_cli_errors_for_link_task_mismatches(tmp_path, link_dataset, tiny_dataset):
    rc, err = run_cli("sample", tiny_dataset.path, "--out", tmp_path / "s", "--task", "link")
    assert rc == 2 and "holds no link-prediction edges" in err and "--edge-split" in err
    _no_output(tmp_path / "s")
    rc, err = run_cli("sample", link_dataset.path, "--out", tmp_path / "s2", "--task", "link", "--negatives", "0")
    assert rc == 2 and "--negatives must be an integer >= 1" in err
    rc, err = run_cli("synth", "--scale", "tiny", "--out", tmp_path / "d", "--eval-negatives", "5")
    assert rc == 2 and "--eval-negatives applies to link-prediction" in err
