"""The offline sampler: stored batches, their invariants, determinism, sharding, errors and the CLI."""
import json
import shutil

import numba
import numpy as np
import pytest

from conftest import requires_dgl
from diskgnn.dataset import Dataset
from diskgnn.errors import (ConfigError, IntegrityError, ManifestNotFoundError, OutputExistsError)
from diskgnn.keys import batch_key
from diskgnn.sampling import (MiniBatch, SampleConfig, Sampler, Samples, iter_batches, parse_fanouts,
                              part_seeds, presample, verify_samples)
from diskgnn.tools.cli import main

CFG = SampleConfig(fanouts=(4, 3), batch_size=97, epochs=2, seed=5)


@pytest.fixture(scope="module")
def samples(tiny_dataset, tmp_path_factory):
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("s") / "samples", CFG)


def _dir_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "manifest.json"}


def _graph_sets(ds):
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    return [set(indices[indptr[v]:indptr[v + 1]].tolist()) for v in range(ds.num_nodes)], np.diff(indptr)


def test_batches_are_valid_subgraphs(samples, tiny_dataset):
    in_nbrs, deg = _graph_sets(tiny_dataset)
    assert samples.parts == ["train/0", "train/1", "val", "test"]
    checked_edges = 0
    for part in samples.parts:
        for mb in samples.batches(part):
            assert isinstance(mb, MiniBatch) and mb.part == part
            assert np.array_equal(mb.input_nodes[:mb.batch_size], mb.seeds)
            assert np.unique(mb.input_nodes).size == mb.input_nodes.size
            assert mb.blocks[0].num_src == mb.input_nodes.size and mb.blocks[-1].num_dst == mb.batch_size
            for layer, b in enumerate(mb.blocks):
                if layer + 1 < len(mb.blocks):
                    assert b.num_dst == mb.blocks[layer + 1].num_src
                assert b.num_dst <= b.num_src
                assert b.indptr.dtype == np.int64 and b.indices.dtype == np.int32
                fanout = CFG.fanouts[layer]
                for j in range(b.num_dst):
                    v = int(mb.input_nodes[j])  # destination j is source j: a prefix
                    local = b.indices[b.indptr[j]:b.indptr[j + 1]]
                    assert (local < b.num_src).all()
                    nbrs = mb.input_nodes[local].tolist()
                    assert len(set(nbrs)) == len(nbrs), "a neighbour repeated within one node's sample"
                    assert set(nbrs) <= in_nbrs[v], "a sampled edge that is not in the graph"
                    assert len(nbrs) == min(deg[v], fanout)
                    if deg[v] <= fanout:
                        assert set(nbrs) == in_nbrs[v]
                    checked_edges += len(nbrs)
    assert checked_edges == samples.summary()["sampled_edges"] > 0


def test_parts_cover_their_seeds(samples, tiny_dataset):
    train = np.sort(np.asarray(tiny_dataset.split("train")))
    orders = []
    for part in samples.train_parts:
        seeds = np.concatenate([mb.seeds for mb in samples.batches(part)])
        assert np.array_equal(np.sort(seeds), train)
        orders.append(seeds)
        sizes = [samples.batch(part, i).batch_size for i in range(samples.num_batches(part))]
        assert sizes[:-1] == [97] * (len(sizes) - 1) and 0 < sizes[-1] <= 97
    assert not np.array_equal(orders[0], orders[1]), "each epoch must reshuffle the training nodes"
    for part in ("val", "test"):
        seeds = np.concatenate([mb.seeds for mb in samples.batches(part)])
        assert np.array_equal(seeds, np.sort(np.asarray(tiny_dataset.split(part))))


def test_access_counts_and_offsets(samples):
    counts = np.zeros(samples.num_nodes, dtype=np.int64)
    for part in samples.parts:
        off = samples.input_offsets(part)
        allnodes = samples.all_input_nodes(part)
        assert off.shape == (samples.num_batches(part) + 1,) and off[-1] == allnodes.shape[0]
        for i in range(samples.num_batches(part)):
            nodes = samples.input_nodes(part, i)
            assert np.array_equal(nodes, allnodes[off[i]:off[i + 1]])
            counts[nodes] += 1
    assert np.array_equal(counts, samples.access_counts)
    assert samples.access_counts.sum() == samples.summary()["input_nodes"]


def test_lazy_api_matches_stored(samples, tiny_dataset):
    for part in ("train/1", "test"):
        lazy = list(iter_batches(tiny_dataset, CFG, part))
        assert len(lazy) == samples.num_batches(part)
        for mb in lazy:
            stored = samples.batch(part, mb.index)
            assert np.array_equal(mb.input_nodes, stored.input_nodes)
            for a, b in zip(mb.blocks, stored.blocks):
                assert (a.num_src, a.num_dst) == (b.num_src, b.num_dst)
                assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


def test_batch_without_input_nodes_reads_the_seeds_and_the_same_blocks(samples):
    for part in ("train/0", "val"):
        for i in range(samples.num_batches(part)):
            full, lean = samples.batch(part, i), samples.batch(part, i, input_nodes=False)
            assert lean.input_nodes is None and np.array_equal(lean.seeds, full.seeds)
            assert lean.seeds.dtype == np.int64 and lean.seeds.size == full.blocks[-1].num_dst
            for a, b in zip(full.blocks, lean.blocks):
                assert (a.num_src, a.num_dst) == (b.num_src, b.num_dst)
                assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            assert np.array_equal(samples.input_nodes(part, i), full.input_nodes)


def test_batch_without_input_nodes_still_checks_the_seeds(samples, tmp_path):
    idx = samples.index("train/0")
    first_seed = int(idx[1, 0])  # batch 1's first input node is its first seed

    def bad_seed(data):
        data[8 * first_seed:8 * first_seed + 8] = (samples.num_nodes + 3).to_bytes(8, "little")
    bad = _corrupt_copy(samples, tmp_path, "train-0.input_nodes.bin", bad_seed)
    with pytest.raises(IntegrityError, match="input node ids outside"):
        bad.batch("train/0", 1, input_nodes=False)
    bad.batch("train/0", 0, input_nodes=False)  # the other batches are untouched


def test_verify_accepts_good_output(samples):
    verify_samples(samples)
    verify_samples(samples, check_crc=False, check_graph=False)


def test_same_seed_is_byte_identical_and_other_seed_differs(samples, tiny_dataset, tmp_path):
    again = presample(tiny_dataset.path, tmp_path / "again", CFG)
    assert _dir_bytes(again.path) == _dir_bytes(samples.path)
    assert again.fingerprint == samples.fingerprint
    other = presample(tiny_dataset.path, tmp_path / "other", SampleConfig((4, 3), 97, epochs=2, seed=6))
    assert _dir_bytes(other.path)["train-0.input_nodes.bin"] != _dir_bytes(samples.path)["train-0.input_nodes.bin"]
    assert other.fingerprint != samples.fingerprint


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_thread_count_and_mmap_do_not_change_output(samples, tiny_dataset, tmp_path):
    before = numba.get_num_threads()  # what an earlier test in this process left
    one = presample(tiny_dataset.path, tmp_path / "one", CFG, threads=1, mmap_topology="yes")
    two = presample(tiny_dataset.path, tmp_path / "two", CFG, threads=2, mmap_topology="no")
    assert one.summary()["mmap_topology"] is True and two.summary()["mmap_topology"] is False
    assert _dir_bytes(one.path) == _dir_bytes(two.path) == _dir_bytes(samples.path)
    assert numba.get_num_threads() == before, "presample must restore the thread count"


def test_shards_partition_the_batches(samples, tiny_dataset, tmp_path):
    shards = [presample(tiny_dataset.path, tmp_path / f"shard{s}", CFG, num_shards=3, shard=s) for s in range(3)]
    for part in samples.parts:
        assert sum(sh.num_batches(part) for sh in shards) == samples.num_batches(part)
        for sh in shards:
            for i in range(sh.num_batches(part)):
                g = sh.global_index(part, i)
                assert g % 3 == sh.shard
                assert np.array_equal(sh.input_nodes(part, i), samples.input_nodes(part, g))
    total = sum(np.asarray(sh.access_counts) for sh in shards)
    assert np.array_equal(total, samples.access_counts)
    verify_samples(shards[2])


def test_too_many_threads_are_capped(tiny_dataset, tmp_path):
    s = presample(tiny_dataset.path, tmp_path / "t", CFG, threads=10_000)
    assert s.summary()["threads"] == numba.config.NUMBA_NUM_THREADS


def test_memory_budget_picks_mmap(tiny_dataset, tmp_path):
    small = presample(tiny_dataset.path, tmp_path / "small", CFG, memory_budget=4096)
    assert small.summary()["mmap_topology"] is True
    big = presample(tiny_dataset.path, tmp_path / "big", CFG, memory_budget="1G")
    assert big.summary()["mmap_topology"] is False


def test_summary_and_manifest(samples, tiny_dataset):
    s = samples.summary()
    assert s["batches"] == {p: samples.num_batches(p) for p in samples.parts}
    assert s["disk_bytes"] == sum(p.stat().st_size for p in samples.path.iterdir() if p.name != "manifest.json")
    assert s["footprint_of_features"] == pytest.approx(s["disk_bytes"] / tiny_dataset.feature_bytes, rel=1e-3)
    assert s["edges_per_second"] > 0 and s["seconds"] > 0
    m = json.loads((samples.path / "manifest.json").read_text())
    assert m["format"] == "diskgnn.samples" and m["version"] == 1
    assert m["dataset"]["fingerprint"] == tiny_dataset.fingerprint
    assert m["config"] == CFG.to_json()
    assert not (samples.path / ".diskgnn-partial").exists()


def _corrupt_copy(samples, tmp_path, name, edit):
    dst = tmp_path / "bad"
    shutil.copytree(samples.path, dst)
    data = bytearray((dst / name).read_bytes())
    edit(data)
    (dst / name).write_bytes(bytes(data))
    return Samples.open(dst)


def test_verify_detects_corruption(samples, tmp_path):
    def flip(data):
        data[40] ^= 0xFF
    bad = _corrupt_copy(samples, tmp_path, "train-1.block_indices.bin", flip)
    with pytest.raises(IntegrityError, match="checksum"):
        verify_samples(bad)
    with pytest.raises(IntegrityError, match="block"):
        verify_samples(bad, check_crc=False)


def test_verify_detects_edges_not_in_graph(samples, tiny_dataset, tmp_path):
    in_nbrs, _ = _graph_sets(tiny_dataset)
    mb = samples.batch("val", 0)
    b = mb.blocks[0]
    j = int(np.flatnonzero(np.diff(b.indptr) > 0)[0])
    v = int(mb.input_nodes[j])
    stranger = next(u for u in range(b.num_src) if int(mb.input_nodes[u]) not in in_nbrs[v])

    def swap_neighbour(data):
        idx = np.frombuffer(data, dtype=np.int32).copy()
        idx[b.indptr[j]] = stranger  # batch 0, block 0 start the file
        data[:] = idx.tobytes()
    bad = _corrupt_copy(samples, tmp_path, "val.block_indices.bin", swap_neighbour)
    with pytest.raises(IntegrityError, match="not edges of the graph"):
        verify_samples(bad, check_crc=False)


def test_truncated_file_is_reported(samples, tmp_path):
    bad = _corrupt_copy(samples, tmp_path, "test.input_nodes.bin", lambda d: d.__delitem__(slice(-8, None)))
    with pytest.raises(IntegrityError, match="truncated"):
        verify_samples(bad)


def test_interrupted_run_leaves_no_manifest(tiny_dataset, tmp_path):
    calls = []

    def progress(task, advance, total):
        calls.append(task)
        if len(calls) > 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        presample(tiny_dataset.path, tmp_path / "cut", CFG, progress=progress)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    with pytest.raises(ManifestNotFoundError):
        Samples.open(tmp_path / "cut")
    presample(tiny_dataset.path, tmp_path / "cut", CFG)  # a partial directory is replaced without --overwrite
    with pytest.raises(OutputExistsError):
        presample(tiny_dataset.path, tmp_path / "cut", CFG)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fanouts=()), "empty"), (dict(fanouts=(10, 0)), "fanout 0"), (dict(fanouts=(-2,)), "fanout -2"),
    (dict(fanouts=(2.5,)), "integers"), (dict(batch_size=0), "batch_size"), (dict(batch_size=-4), "batch_size"),
    (dict(epochs=0), "epochs"), (dict(seed=-1), "seed")])
def test_bad_config(kwargs, match):
    args = dict(fanouts=(10, 15), batch_size=8)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        SampleConfig(**args)


@pytest.mark.parametrize("text", ["", "10,,15", "ten", "10;15"])
def test_bad_fanout_text(text):
    with pytest.raises(ConfigError):
        SampleConfig(fanouts=parse_fanouts(text), batch_size=1)


def test_fanout_text():
    assert SampleConfig(fanouts=parse_fanouts(" 10, -1 "), batch_size=1).fanouts == (10, -1)


def test_bad_inputs(tiny_dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestNotFoundError, match="manifest.json"):
        presample(tmp_path / "empty", tmp_path / "out", CFG)
    with pytest.raises(ManifestNotFoundError):
        presample(tmp_path / "missing", tmp_path / "out", CFG)
    with pytest.raises(ConfigError, match="inside the dataset"):
        presample(tiny_dataset.path, tiny_dataset.path / "samples", CFG)
    with pytest.raises(ConfigError, match="--threads"):
        presample(tiny_dataset.path, tmp_path / "out", CFG, threads=0)
    with pytest.raises(ConfigError, match="--shard"):
        presample(tiny_dataset.path, tmp_path / "out", CFG, num_shards=2, shard=2)
    with pytest.raises(ConfigError, match="mmap"):
        presample(tiny_dataset.path, tmp_path / "out", CFG, mmap_topology="maybe")
    sampler = Sampler(tiny_dataset, (3, 2))
    n = tiny_dataset.num_nodes
    with pytest.raises(ConfigError, match=f"seed node {n} is out of range"):
        sampler.sample([0, n], key=1)
    with pytest.raises(ConfigError, match="out of range"):
        sampler.sample([-1, 3], key=1)
    with pytest.raises(ConfigError, match="twice"):
        sampler.sample([3, 4, 3], key=1)
    with pytest.raises(ConfigError, match="unknown part"):
        part_seeds(tiny_dataset, CFG, "train/2")
    mb = sampler.sample([5, 3], key=1)
    assert mb.seeds.tolist() == [5, 3] and len(mb.blocks) == 2


def test_sampler_key_changes_the_sample(tiny_dataset):
    sampler = Sampler(tiny_dataset, (-1, 3))
    ds = Dataset.open(tiny_dataset.path)
    hub = int(np.argmax(np.diff(np.asarray(ds.indptr))))
    a = sampler.sample([hub], key=batch_key(0, "train/0", 0))
    b = sampler.sample([hub], key=batch_key(0, "train/0", 1))
    assert a.blocks[-1].num_edges == 3
    assert not np.array_equal(a.input_nodes, b.input_nodes)


def test_cli_sample_info_verify(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["sample", str(tiny_dataset.path), "--out", str(out), "--fanouts", "5,-1", "--batch-size", "128",
               "--epochs", "3", "--seed", "4", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "footprint_of_features" in printed and "edges_per_second" in printed
    s = Samples.open(out)
    assert s.config == SampleConfig((5, -1), 128, epochs=3, seed=4)
    assert s.train_parts == ["train/0", "train/1", "train/2"]
    assert main(["verify", str(out), "-q"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "samples" and info["batches"]["train/2"] == s.num_batches("train/2")


@pytest.mark.parametrize("argv,message", [
    (["--fanouts", "10,0"], "fanout 0"), (["--batch-size", "0"], "batch_size"), (["--fanouts", "a,b"], "--fanouts")])
def test_cli_bad_input_exits_2(tiny_dataset, tmp_path, capsys, argv, message):
    rc = main(["sample", str(tiny_dataset.path), "--out", str(tmp_path / "x"), *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert "diskgnn sample: error:" in err and message in err and "Traceback" not in err


def test_cli_missing_dataset(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("system", ["diskgnn", pytest.param("dgl", marks=requires_dgl)])
def test_bench_worker_samples_the_same_workload(tiny_dataset, system):
    from diskgnn.bench.sampling import _worker
    cfg = SampleConfig(fanouts=(4, 3), batch_size=97)
    import torch
    before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    try:
        info = _worker(system, tiny_dataset.path, cfg, 3, 2, 1)
    finally:
        numba.set_num_threads(before)
        torch.set_num_threads(torch_before)
    ours = sum(mb.num_edges for mb in iter_batches(tiny_dataset, cfg, "train/0"))
    first3 = sum(mb.num_edges for _, mb in zip(range(3), iter_batches(tiny_dataset, cfg, "train/0")))
    assert info["batches"] == 3 and len(info["seconds"]) == 2 and ours > first3
    if system == "diskgnn":
        assert info["sampled_edges"] == first3
    else:  # other random draws, same fanouts and seeds: edge counts agree closely
        assert abs(info["sampled_edges"] - first3) < 0.05 * first3


# --- evaluation fanouts ------------------------------------------------------------------------

def test_eval_fanouts_sample_val_and_test_with_their_own_fanouts(tiny_dataset, tmp_path):
    cfg = SampleConfig(fanouts=(2, 3), batch_size=89, seed=7, eval_fanouts=(-1, 4))
    s = presample(tiny_dataset.path, tmp_path / "ev", cfg)
    assert Samples.open(s.path).config == cfg and s.config.to_json()["eval_fanouts"] == [-1, 4]
    _, deg = _graph_sets(tiny_dataset)
    for part in s.parts:
        fanouts = (-1, 4) if part in ("val", "test") else (2, 3)
        for mb in s.batches(part):
            for layer, b in enumerate(mb.blocks):
                got = np.diff(b.indptr)
                dst_deg = deg[mb.input_nodes[:b.num_dst]]
                want = dst_deg if fanouts[layer] < 0 else np.minimum(dst_deg, fanouts[layer])
                assert np.array_equal(got, want), (part, layer)
    verify_samples(s)  # checks every block against the fanouts of its part
    # the training parts are the very batches of a run without eval fanouts
    plain = presample(tiny_dataset.path, tmp_path / "plain", SampleConfig(fanouts=(2, 3), batch_size=89, seed=7))
    for name in ("train-0.input_nodes.bin", "train-0.block_indices.bin"):
        assert (s.path / name).read_bytes() == (plain.path / name).read_bytes()
    assert (s.path / "val.block_indices.bin").read_bytes() != (plain.path / "val.block_indices.bin").read_bytes()


def test_eval_fanouts_equal_to_fanouts_are_the_default():
    a = SampleConfig(fanouts=(5, 3), batch_size=4, eval_fanouts=(5, 3))
    assert a.eval_fanouts is None and a == SampleConfig(fanouts=(5, 3), batch_size=4)
    assert "eval_fanouts" not in a.to_json()  # manifests of configs without them read as before
    b = SampleConfig.from_json({"fanouts": [5, 3], "batch_size": 4, "epochs": 1, "seed": 0, "eval_fanouts": [-1, 2]})
    assert b.part_fanouts("val") == (-1, 2) and b.part_fanouts("train/0") == (5, 3)
    assert SampleConfig.from_json(b.to_json()) == b


@pytest.mark.parametrize("eval_fanouts,match", [((-1,), "has 1 layer, but --fanouts 5,3 has 2"),
                                                ((-1, -1, -1), "has 3 layers"), ((0, 2), "fanout 0")])
def test_eval_fanouts_of_another_depth_are_refused(eval_fanouts, match):
    with pytest.raises(ConfigError, match=match):
        SampleConfig(fanouts=(5, 3), batch_size=4, eval_fanouts=eval_fanouts)


def test_cli_eval_fanouts_of_another_depth_is_one_paragraph_and_writes_nothing(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "x"
    rc = main(["sample", str(tiny_dataset.path), "--out", str(out), "--fanouts", "4,3", "--eval-fanouts", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "--eval-fanouts -1 has 1 layer" in err and "--eval-fanouts -1,-1" in err
    assert not out.exists()
    rc = main(["sample", str(tiny_dataset.path), "--out", str(out), "--fanouts", "4,3", "--eval-fanouts", "-1,x"])
    assert rc == 2 and "--eval-fanouts '-1,x' is not a comma-separated list" in capsys.readouterr().err
    assert main(["sample", str(tiny_dataset.path), "--out", str(out), "--fanouts", "4,3", "--eval-fanouts", "-1,-1",
                 "-q"]) == 0
    assert Samples.open(out).config.eval_fanouts == (-1, -1)
