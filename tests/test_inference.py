"""Layer-wise inference and ``diskgnn embed``: kernels against numpy, results against full-neighbour minibatch
inference, block and range sizes, the embeddings directory, layer-wise evaluation, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from diskgnn.dtypes import to_float32
from diskgnn.errors import ConfigError, MemoryBudgetError, MismatchError, OutputExistsError
from diskgnn.embed import Embeddings, embed, model_from_checkpoint
from diskgnn.inference import LayerwiseConfig, layer_ops, layerwise_inference, plan_ranges
from diskgnn.kernels import layerwise as kernels
from diskgnn.models import build_model, to_torch_blocks
from diskgnn.sampling import SampleConfig, presample

MODELS = ("sage", "gcn", "gat")


# --- kernels against plain numpy -------------------------------------------------------------------

def random_range(rng, nd, num_src, max_degree=7):
    degree = rng.integers(0, max_degree + 1, nd)
    indptr = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
    indices = rng.integers(0, num_src, int(indptr[-1])).astype(np.int32)
    return indptr, indices


def numpy_buckets(indptr, indices, block_rows, num_blocks):
    dst = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    block = indices // block_rows
    order = np.argsort(block, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(block, minlength=num_blocks))])
    return offsets, dst[order], (indices - block * block_rows)[order]


def test_bucket_by_source_matches_a_stable_sort():
    rng = np.random.default_rng(0)
    indptr, indices = random_range(rng, 37, 211)
    block_rows = 23
    num_blocks = -(-211 // block_rows)
    offsets = np.empty(num_blocks + 1, dtype=np.int64)
    dst = np.empty(indices.size, dtype=np.int32)
    src = np.empty(indices.size, dtype=np.int32)
    kernels.bucket_by_source(indptr, indices, block_rows, offsets, dst, src)
    want = numpy_buckets(indptr, indices, block_rows, num_blocks)
    for got, expected in zip((offsets, dst, src), want):
        assert np.array_equal(got, expected)
    for b in range(num_blocks):  # inside a bucket the destinations do not decrease
        assert (np.diff(dst[offsets[b]:offsets[b + 1]]) >= 0).all()


@pytest.mark.parametrize("pieces", [1, 3, 64])
def test_accumulate_rows_matches_add_at(pieces):
    rng = np.random.default_rng(1)
    indptr, indices = random_range(rng, 29, 19, max_degree=40)  # hubs: pieces cut inside long runs
    dst = np.repeat(np.arange(29), np.diff(indptr)).astype(np.int32)
    rows = rng.standard_normal((19, 5))
    acc = rng.standard_normal((29, 5))
    want = acc.copy()
    lo, hi = 3, indices.size - 2
    np.add.at(want, dst[lo:hi], rows[indices[lo:hi]])
    kernels.accumulate_rows(dst, indices, rows, lo, hi, pieces, acc)
    np.testing.assert_allclose(acc, want, rtol=1e-12)


def numpy_gat(dst, src, feat, el, er, slope, nd):
    out = np.zeros((nd, *feat.shape[1:]))
    for v in range(nd):
        edges = np.flatnonzero(dst == v)
        if edges.size:
            s = el[src[edges]] + er[v]
            s = np.where(s < 0, s * slope, s)
            alpha = np.exp(s - s.max(0))
            alpha /= alpha.sum(0)
            out[v] = (alpha[:, :, None] * feat[src[edges]]).sum(0)
    return out


def test_gat_accumulate_online_softmax_matches_numpy():
    rng = np.random.default_rng(2)
    nd, heads, width = 17, 3, 4
    indptr, indices = random_range(rng, nd, 41, max_degree=9)
    dst = np.repeat(np.arange(nd), np.diff(indptr)).astype(np.int32)
    feat = rng.standard_normal((41, heads, width))
    el, er = 4 * rng.standard_normal((41, heads)), 4 * rng.standard_normal((nd, heads))  # large: checks rescaling
    peak = np.full((nd, heads), -np.inf)
    denom = np.zeros((nd, heads))
    acc = np.zeros((nd, heads, width))
    cut = indices.size // 2  # two blocks: the second raises some peaks after the first was folded in
    for lo, hi in ((0, cut), (cut, indices.size)):
        kernels.gat_accumulate(dst, indices.astype(np.int32), feat, el, er, 0.2, lo, hi, 8, peak, denom, acc)
    got = np.where(denom[:, :, None] > 0, acc / np.where(denom > 0, denom, 1)[:, :, None], 0.0)
    np.testing.assert_allclose(got, numpy_gat(dst, indices, feat, el, er, 0.2, nd), rtol=1e-10, atol=1e-12)


# --- layer-wise inference against full-neighbour minibatches ---------------------------------------

@pytest.fixture(scope="module")
def full_samples(tiny_dataset, tmp_path_factory):
    """Every node of val and test with all its neighbours, 2 layers (the reference)."""
    cfg = SampleConfig(fanouts=(3, 2), batch_size=71, seed=2, eval_fanouts=(-1, -1))
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("full") / "s", cfg)


def minibatch_outputs(model, samples, dataset, parts=("val", "test")):
    feats = torch.from_numpy(to_float32(np.asarray(dataset.features), dataset.feat_dtype))
    ids, outs = [], []
    with torch.inference_mode():
        for part in parts:
            for mb in samples.batches(part):
                outs.append(model(to_torch_blocks(mb.blocks), feats[mb.input_nodes]).numpy())
                ids.append(mb.seeds)
    ids, outs = np.concatenate(ids), np.concatenate(outs)
    order = np.argsort(ids)
    return ids[order], outs[order]


def make_model(name, dataset, layers=2, seed=0):
    torch.manual_seed(seed)
    return build_model(name, in_dim=dataset.feat_dim, num_classes=dataset.num_classes, num_layers=layers,
                       hidden=9, heads=3).eval()


@pytest.mark.parametrize("name", MODELS)
def test_layerwise_equals_full_neighbour_minibatches(name, tiny_dataset, full_samples, tmp_path):
    model = make_model(name, tiny_dataset)
    ids, want = minibatch_outputs(model, full_samples, tiny_dataset)
    result = layerwise_inference(model, tiny_dataset, tmp_path, LayerwiseConfig(block_bytes=4096),
                                 keep="last", collect=ids)
    np.testing.assert_allclose(result.collected, want, rtol=1e-5, atol=1e-6)
    on_disk = np.fromfile(tmp_path / "layer-2.bin", dtype=np.float32).reshape(tiny_dataset.num_nodes, -1)
    assert np.array_equal(on_disk[ids], result.collected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer-2.bin"]  # the hidden layer's file is gone
    assert result.files[2]["shape"] == [tiny_dataset.num_nodes, tiny_dataset.num_classes]


@pytest.mark.parametrize("name", MODELS)
def test_block_and_range_sizes_do_not_change_the_result(name, tiny_dataset, tmp_path):
    model = make_model(name, tiny_dataset, layers=3, seed=4)
    runs = {}
    for block, cap in ((4096, None), (3 * 4096, 97), (1 << 20, 1), (4096, 400)):
        out = tmp_path / f"{block}-{cap}"
        out.mkdir()
        result = layerwise_inference(model, tiny_dataset, out, LayerwiseConfig(block_bytes=block, max_range_nodes=cap),
                                     keep="all")
        assert [s.ranges for s in result.stats][0] == (1 if cap is None else -(-tiny_dataset.num_nodes // cap))
        runs[(block, cap)] = [np.fromfile(out / f"layer-{k}.bin", dtype=np.float32) for k in (1, 2, 3)]
    first = next(iter(runs.values()))
    for layers in runs.values():
        for a, b in zip(first, layers):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_half_precision_features_are_widened_like_the_store(tmp_path):
    from diskgnn.synth import SynthConfig, synthesize
    ds = synthesize(SynthConfig(nodes=523, avg_degree=5, dim=11, classes=3, seed=9, dtype="bf16"), tmp_path / "ds")
    samples = presample(ds.path, tmp_path / "s", SampleConfig(fanouts=(-1, -1), batch_size=61))
    model = make_model("sage", ds)
    ids, want = minibatch_outputs(model, samples, ds)
    got = layerwise_inference(model, ds, tmp_path, LayerwiseConfig(block_bytes=4096), keep="none", collect=ids)
    np.testing.assert_allclose(got.collected, want, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("layer-*.bin"))  # keep="none": nothing left behind


def test_ranges_fit_the_memory_they_are_given(tiny_dataset):
    op = layer_ops(make_model("sage", tiny_dataset))[0]
    indptr = np.asarray(tiny_dataset.indptr)
    kw = dict(op=op, in_width=tiny_dataset.feat_dim, in_row_bytes=tiny_dataset.row_bytes, index_itemsize=4)
    big = plan_ranges(indptr, cfg=LayerwiseConfig(block_bytes=4096), budget_room=1 << 30, **kw)
    assert big.bounds.tolist() == [0, tiny_dataset.num_nodes]
    small = plan_ranges(indptr, cfg=LayerwiseConfig(block_bytes=4096), budget_room=big.fixed_bytes + (80 << 10), **kw)
    assert small.bounds[0] == 0 and small.bounds[-1] == tiny_dataset.num_nodes and len(small.bounds) > 3
    per_node, per_edge = op.range_bytes_per_node() + 20, 12
    for lo, hi in zip(small.bounds[:-1], small.bounds[1:]):
        need = (hi - lo) * per_node + (indptr[hi] - indptr[lo]) * per_edge
        assert need <= small.room_bytes or hi - lo == 1
    with pytest.raises(MemoryBudgetError, match="raise --memory-budget"):
        plan_ranges(indptr, cfg=LayerwiseConfig(block_bytes=4096), budget_room=big.fixed_bytes, **kw)


def test_foreign_models_and_bad_arguments_are_refused(tiny_dataset, tmp_path):
    from diskgnn.models import MLP
    with pytest.raises(ConfigError, match="diskgnn's own models"):
        layerwise_inference(MLP(tiny_dataset.feat_dim, 5), tiny_dataset, tmp_path)
    with pytest.raises(ConfigError, match="increasing order"):
        layerwise_inference(make_model("gcn", tiny_dataset), tiny_dataset, tmp_path, collect=np.array([5, 2]))
    with pytest.raises(MismatchError, match="13-wide features"):
        layerwise_inference(build_model("sage", in_dim=7, num_classes=5, num_layers=2), tiny_dataset, tmp_path)
    with pytest.raises(ConfigError, match="block_bytes"):
        LayerwiseConfig(block_bytes=100)


# --- embed and layer-wise evaluation through a trained checkpoint --------------------------------

@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A packed directory with full-neighbour val/test batches and a gcn checkpoint trained on it."""
    from diskgnn.packing import PackConfig, pack
    from diskgnn.launch import train
    from diskgnn.train import TrainConfig
    root = tmp_path_factory.mktemp("trained")
    samples = presample(tiny_dataset.path, root / "samples",
                        SampleConfig(fanouts=(4, 3), batch_size=67, seed=5, eval_fanouts=(-1, -1)))
    packed = pack(samples.path, root / "packed", PackConfig(host_cache="20%"))
    report = train(packed, TrainConfig(model="gcn", epochs=2, hidden=10, lr=1e-2, threads=1, device="cpu",
                                       checkpoint=str(root / "ck"), metrics=str(root / "m.jsonl")))
    return root, packed, report


def test_embeddings_on_disk_equal_the_models_output(trained, tiny_dataset):
    root, packed, _ = trained
    emb = embed(packed, root / "ck", root / "emb", cfg=LayerwiseConfig(block_bytes=8192, max_range_nodes=300),
                keep="all")
    model, fields = model_from_checkpoint(root / "ck", tiny_dataset, 2)
    assert fields["model"] == "gcn" and fields["init"] == "torch" and fields["epoch"] == 2
    ids, want = minibatch_outputs(model, packed.samples, tiny_dataset)
    assert emb.layers == [1, 2] and emb.layer().shape == (tiny_dataset.num_nodes, tiny_dataset.num_classes)
    np.testing.assert_allclose(np.asarray(emb.layer())[ids], want, rtol=1e-5, atol=1e-6)
    assert emb.layer(1).shape == (tiny_dataset.num_nodes, 10) and (np.asarray(emb.layer(1)) >= 0).all()  # ReLU
    manifest = json.loads((root / "emb" / "manifest.json").read_text())
    assert manifest["format"] == "diskgnn.embeddings" and manifest["output_layer"] == 2
    assert manifest["stats"]["layers"][0]["ranges"] == -(-tiny_dataset.num_nodes // 300)
    assert run_cli("verify", root / "emb")[0] == 0
    with open(root / "emb" / "layer-1.bin", "r+b") as f:  # a flipped byte is found
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    rc, err = run_cli("verify", root / "emb")
    assert rc == 2 and "checksum mismatch" in err


def test_cli_embed_keeps_the_output_layer(trained, tiny_dataset):
    root, packed, _ = trained
    out = root / "emb-cli"
    rc, err = run_cli("embed", packed.path, "--checkpoint", root / "ck", "--out", out, "--block-size", "4K")
    assert rc == 0, err
    emb = Embeddings.open(out)
    assert emb.layers == [2] and sorted(p.name for p in out.iterdir()) == ["layer-2.bin", "manifest.json"]
    with pytest.raises(ConfigError, match="--layers all"):
        emb.layer(1)


def test_embed_refuses_a_directory_that_holds_something_else(trained):
    root, packed, _ = trained
    foreign = root / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    rc, err = run_cli("embed", packed.path, "--checkpoint", root / "ck", "--out", foreign)
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "already holds files that diskgnn did not write" in err and "--overwrite" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(OutputExistsError):
        embed(packed, root / "ck", foreign)
    done = root / "emb-done"
    embed(packed, root / "ck", done)
    rc, err = run_cli("embed", packed.path, "--checkpoint", root / "ck", "--out", done)
    assert rc == 2 and "already holds a finished diskgnn output" in err
    rc, err = run_cli("embed", packed.path, "--checkpoint", root / "ck", "--out", packed.path / "emb")
    assert rc == 2 and "inside the packed directory" in err and not (packed.path / "emb").exists()


def test_a_failed_embed_leaves_nothing_that_looks_finished(trained, monkeypatch):
    import diskgnn.inference as inference
    root, packed, _ = trained
    out = root / "emb-fail"
    real = inference._one_range
    calls = {"n": 0}

    def fail_late(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(5, "simulated I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "_one_range", fail_late)
    with pytest.raises(OSError, match="simulated"):
        embed(packed, root / "ck", out, cfg=LayerwiseConfig(block_bytes=4096, max_range_nodes=200), keep="all")
    assert not (out / "manifest.json").exists() and not list(out.glob("layer-*"))
    monkeypatch.setattr(inference, "_one_range", real)
    assert embed(packed, root / "ck", out).layers == [2]  # the partial directory is taken over, no --overwrite


def test_embed_with_a_checkpoint_of_other_data(trained, tiny_dataset, tmp_path):
    from diskgnn.packing import PackConfig, pack
    from diskgnn.synth import SynthConfig, synthesize
    root, _, _ = trained
    other = synthesize(SynthConfig(nodes=401, avg_degree=4, dim=13, classes=5, seed=11), tmp_path / "ds")
    samples = presample(other.path, tmp_path / "s", SampleConfig(fanouts=(4, 3), batch_size=50))
    packed = pack(samples.path, tmp_path / "p", PackConfig(host_cache="0"))
    with pytest.raises(MismatchError, match="trained on dataset"):
        embed(packed, root / "ck", tmp_path / "emb")
    assert not (tmp_path / "emb").exists()


def test_layerwise_evaluation_equals_full_neighbour_sampled_evaluation(trained, tiny_dataset):
    from diskgnn.store import FeatureStore
    from diskgnn.train import TrainConfig, Trainer, load_checkpoint
    root, packed, report = trained
    assert report["eval_fanouts"] == [-1, -1]
    with FeatureStore(packed, "cpu") as store:
        trainer = Trainer(packed.samples, tiny_dataset, store,
                          TrainConfig(model="gcn", hidden=10, lr=1e-2, threads=1, device="cpu",
                                      eval_mode="layerwise", eval_scratch=str(root / "scratch")))
        trainer.model.load_state_dict(load_checkpoint(root / "ck")["model"])
        layerwise = trainer.evaluate()
        trainer.cfg = TrainConfig(model="gcn", hidden=10, lr=1e-2, threads=1, device="cpu")
        sampled = trainer.evaluate()
    assert layerwise["eval_mode"] == "layerwise" and "eval_mode" not in sampled
    for part in ("val", "test"):
        assert layerwise[f"{part}_seeds"] == sampled[f"{part}_seeds"] == len(tiny_dataset.split(part))
        assert layerwise[f"{part}_acc"] == pytest.approx(sampled[f"{part}_acc"], abs=1.5 / sampled[f"{part}_seeds"])
        assert layerwise[f"{part}_loss"] == pytest.approx(sampled[f"{part}_loss"], rel=1e-5)
    assert list((root / "scratch").iterdir()) == []  # no layer file is left behind


def test_train_with_layerwise_evaluation(tiny_dataset, trained, tmp_path):
    from diskgnn.launch import train
    from diskgnn.train import TrainConfig
    _, packed, _ = trained
    report = train(packed, TrainConfig(model="sage", epochs=1, hidden=8, threads=1, device="cpu",
                                       eval_mode="layerwise", metrics=str(tmp_path / "m.jsonl")))
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines[0]["eval_mode"] == "layerwise" and lines[0]["eval_layers"][0]["ranges"] >= 1
    assert report["eval_mode"] == "layerwise" and 0 <= report["test_acc"] <= 1
    assert not list(packed.samples.path.parent.glob(".diskgnn-layerwise-*"))  # its scratch is removed
    with pytest.raises(ConfigError, match="one process"):
        TrainConfig(model="sage", eval_mode="layerwise", nproc=2)
    with pytest.raises(ConfigError, match="--eval-mode"):
        TrainConfig(model="sage", eval_mode="full")


def test_the_default_budget_in_a_cgroup_leaves_out_what_the_process_maps(monkeypatch):
    """Without --memory-budget in a memory cgroup, the room is at most the limit less this process's RSS: the
    cgroup's page cache counts as available, but the pages this process maps are in use (at scale m under
    2 GiB the former plan took 1.36 GiB beside a 0.94 GiB process and was OOM-killed)."""
    import diskgnn.capabilities as caps
    import diskgnn.inference as inference
    monkeypatch.setattr(caps, "cgroup_memory_limit", lambda: 2 << 30)
    monkeypatch.setattr(caps, "available_memory", lambda: 1500 << 20)
    monkeypatch.setattr(inference, "process_rss_bytes", lambda: 1000 << 20)
    assert inference._budget_room(None) == (2 << 30) - (1000 << 20)
    monkeypatch.setattr(inference, "process_rss_bytes", lambda: 100 << 20)
    assert inference._budget_room(None) == 1500 << 20
    monkeypatch.setattr(caps, "cgroup_memory_limit", lambda: None)
    monkeypatch.setattr(inference, "process_rss_bytes", lambda: 1900 << 20)
    assert inference._budget_room(None) == 1500 << 20
