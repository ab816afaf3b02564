"""Per-type packing and stores: tiers across types, exact assembly, resume, and training through them."""
import json

import numpy as np
import pytest

from diskgnn.dataset import convert_features
from diskgnn.errors import ConfigError, MemoryBudgetError, MismatchError
from diskgnn.hetero import hetero_scale_config, synthesize_hetero
from diskgnn.hetero_packing import HeteroPacked, pack_hetero, split_cache, tier_rows, verify_hetero_packed
from diskgnn.hetero_samples import HeteroSampleConfig, presample_hetero
from diskgnn.hetero_train import HeteroTrainConfig, train_hetero
from diskgnn.packing import PackConfig
from diskgnn.store import FeatureStore


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthesize_hetero(hetero_scale_config("tiny", author_dim=5), tmp_path_factory.mktemp("h") / "ds")


@pytest.fixture(scope="module")
def samples(ds, tmp_path_factory):
    return presample_hetero(ds, tmp_path_factory.mktemp("s") / "s",
                            HeteroSampleConfig(fanouts="4,3", batch_size=97, epochs=2))


@pytest.fixture(scope="module")
def packed(samples, tmp_path_factory):
    return pack_hetero(samples, tmp_path_factory.mktemp("p") / "p", PackConfig(host_cache="9%", pinned_cache="2%"))


def test_cache_takes_rows_by_accesses_per_byte_across_types():
    counts = {"a": np.array([5, 5, 1, 0]), "b": np.array([9, 3])}
    rb = {"a": 8, "b": 16}
    # a's 5-access rows (0.625 per byte) first, then b's 9-access row (0.5625), then a's 1-access row
    assert split_cache(counts, rb, 16) == {"a": 2, "b": 0}
    assert split_cache(counts, rb, 31) == {"a": 2, "b": 0}  # b's row does not fit: stop, hottest first
    assert split_cache(counts, rb, 32) == {"a": 2, "b": 1}
    assert split_cache(counts, rb, 1000) == {"a": 3, "b": 2}  # never-read rows are never cached
    tiers = tier_rows(counts, rb, {"device": 16, "pinned": 16, "host": 8})
    # the host tier's 8 bytes: b's 3-access row (0.19 per byte) comes next and does not fit, so nothing colder
    assert tiers == {"a": {"device": 2, "pinned": 0, "host": 0}, "b": {"device": 0, "pinned": 1, "host": 0}}
    tiers = tier_rows(counts, rb, {"device": 16, "pinned": 16, "host": 24})
    assert tiers == {"a": {"device": 2, "pinned": 0, "host": 1}, "b": {"device": 0, "pinned": 1, "host": 1}}


def test_every_batch_of_every_type_assembles_to_its_rows(ds, samples, packed):
    assert set(packed.types) == {"paper", "author", "field"}
    stats = packed.manifest["tier_bytes"]
    cached = sum(r["row_bytes"] * sum(r["tier_rows"].values()) for r in packed.type_recs.values())
    assert cached <= stats["pinned"] + stats["host"] + stats["device"]
    for t, p in packed.types.items():
        feats = np.asarray(ds.features(t))
        with FeatureStore(p) as st:
            for part in samples.parts:
                for i in range(samples.num_batches(part)):
                    ids = samples.type_view(t).input_nodes(part, i)
                    got = st.assemble(part, i).numpy()
                    assert np.array_equal(got.view(np.uint32), feats[ids].view(np.uint32))
    assert set(verify_hetero_packed(packed)) == set(packed.types)


def test_store_dtype_applies_to_every_type(ds, samples, tmp_path):
    p = pack_hetero(samples, tmp_path / "p16", PackConfig(host_cache="5%", store_dtype="fp16"))
    for t, tp in p.types.items():
        assert tp.store_dtype == "fp16" and p.type_recs[t]["row_bytes"] == ds.node_types[t].feat_dim * 2
        ids = samples.type_view(t).input_nodes("train/1", 2)
        with FeatureStore(tp) as st:
            got = st.assemble("train/1", 2).numpy()
        want = convert_features(np.asarray(ds.features(t))[ids], "fp16").astype(np.float32)
        assert np.array_equal(got, want)


def test_packed_training_equals_online_training(ds, packed):
    """Same seed: the presampled batches are the online sampler's and the rows are the same bits, so every
    epoch's loss and accuracy agree exactly."""
    cfg = HeteroTrainConfig(fanouts="4,3", batch_size=97, epochs=2, hidden=16, threads=1)
    a = train_hetero(packed.path, cfg)
    b = train_hetero(ds.path, cfg)
    assert a["path"] == "packed" and b["path"] == "online"
    for ra, rb in zip(a["history"], b["history"]):
        assert (ra["loss"], ra["val_acc"], ra["test_acc"]) == (rb["loss"], rb["val_acc"], rb["test_acc"])


def test_training_refuses_a_budget_its_plan_does_not_fit(packed):
    with pytest.raises(MemoryBudgetError, match="re-pack with a smaller --host-cache"):
        train_hetero(packed.path, HeteroTrainConfig(epochs=1, hidden=16, memory_budget="300M"))


def test_an_interrupted_pack_keeps_finished_types(samples, packed, tmp_path, caplog):
    import shutil
    out = tmp_path / "p"
    shutil.copytree(packed.path, out)
    (out / "manifest.json").unlink()  # killed after the types, before the manifest
    (out / ".diskgnn-partial").write_text("x")
    shutil.rmtree(out / "types" / "paper")
    with caplog.at_level("INFO"):
        again = pack_hetero(samples, out, PackConfig(host_cache="9%", pinned_cache="2%"))
    assert "kept the finished pack" in caplog.text
    for t in packed.types:
        for name in ("packed", "maps", "cache_nodes"):
            assert (out / "types" / t / f"{name}.bin").read_bytes() == \
                (packed.path / "types" / t / f"{name}.bin").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["types"] == packed.manifest["types"]
    assert set(again.types) == set(packed.types)


def test_bad_inputs(ds, samples, packed, tmp_path):
    with pytest.raises(ConfigError, match="--disk-budget"):
        pack_hetero(samples, tmp_path / "x", PackConfig(disk_budget="3x"))
    other = synthesize_hetero(hetero_scale_config("tiny", seed=4, author_dim=5), tmp_path / "other")
    with pytest.raises(MismatchError):
        pack_hetero(samples, tmp_path / "y", PackConfig(), dataset=other)
    with pytest.raises(MismatchError):
        HeteroPacked.open(packed.path, dataset=other)
    assert not (tmp_path / "y" / "manifest.json").exists()
