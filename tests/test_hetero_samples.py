"""Presampled heterogeneous batches on disk: the online sampler's batches, per-type streams, checks."""
import json

import numpy as np
import pytest

from diskgnn.errors import ConfigError, IntegrityError, ManifestNotFoundError, MismatchError
from diskgnn.hetero import hetero_scale_config, synthesize_hetero
from diskgnn.hetero_sampling import HeteroSampler
from diskgnn.hetero_samples import (HeteroSampleConfig, HeteroSamples, part_seeds, presample_hetero,
                                    verify_hetero_samples)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthesize_hetero(hetero_scale_config("tiny", author_dim=5), tmp_path_factory.mktemp("h") / "ds")


@pytest.fixture(scope="module")
def samples(ds, tmp_path_factory):
    return presample_hetero(ds, tmp_path_factory.mktemp("s") / "s",
                            HeteroSampleConfig(fanouts="cites=2|*=3,4", batch_size=97, epochs=2, seed=5))


def test_batches_are_the_online_samplers_and_streams_hold_each_types_rows(ds, samples):
    cfg = samples.config
    jobs = part_seeds(ds, cfg)
    sampler = HeteroSampler(ds, cfg.fanouts)
    assert samples.parts == ["train/0", "train/1", "val", "test"]
    offs = ds.type_offsets
    assert set(samples.featured) == {"paper", "author", "field"}  # institutions have no features
    for part in samples.parts:
        assert samples.num_batches(part) == len(jobs[part])
        for i, (seeds, key) in enumerate(jobs[part]):
            got, want = samples.batch(part, i), sampler.sample(seeds, key)
            assert np.array_equal(got.input_nodes, want.input_nodes)
            assert np.array_equal(got.layer_sizes, want.layer_sizes)
            for a, b in zip(got.block_indptr + got.block_indices + got.block_etypes,
                            want.block_indptr + want.block_indices + want.block_etypes):
                assert np.array_equal(a, b)
            for t, (off, n) in samples.featured.items():
                sel = got.input_nodes[(got.input_nodes >= off) & (got.input_nodes < off + n)] - off
                assert np.array_equal(samples.type_view(t).input_nodes(part, i), sel)
                assert off == offs[t]
    # every training epoch is a permutation of the training nodes; epochs differ
    seen = [np.sort(np.concatenate([s for s, _ in jobs[f"train/{e}"]])) for e in range(2)]
    assert np.array_equal(seen[0], np.sort(np.asarray(ds.split("train"))))
    assert not np.array_equal(jobs["train/0"][0][0], jobs["train/1"][0][0])
    assert verify_hetero_samples(samples)["batches"] == sum(samples.num_batches(p) for p in samples.parts)


def test_access_counts_count_batches_per_row(samples):
    for t in samples.featured:
        v = samples.type_view(t)
        counts = np.zeros(v.num_nodes, dtype=np.int64)
        for part in samples.parts:
            for i in range(samples.num_batches(part)):
                counts[v.input_nodes(part, i)] += 1
        assert np.array_equal(np.asarray(v.access_counts), counts)
        assert counts.max() <= sum(samples.num_batches(p) for p in samples.parts)


def test_damaged_samples_are_caught(ds, samples, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(samples.path, copy)
    s = HeteroSamples.open(copy)
    spec = s._specs["val"]["block_etypes"]
    arr = np.fromfile(copy / spec.path, dtype="<i2")
    arr[3] = 99  # a relation that does not exist
    arr.tofile(copy / spec.path)
    with pytest.raises(IntegrityError, match="relation"):
        HeteroSamples.open(copy).batch("val", 0)
    with pytest.raises(IntegrityError):
        verify_hetero_samples(HeteroSamples.open(copy), ds)
    # a truncated stream
    spec = s._type_specs["test"]["paper"]["input_nodes"]
    with open(copy / spec.path, "r+b") as f:
        f.truncate(8)
    with pytest.raises(IntegrityError, match="truncated"):
        verify_hetero_samples(HeteroSamples.open(copy), ds, check_crc=False)


def test_a_failed_run_leaves_nothing_that_looks_finished(ds, tmp_path):
    out = tmp_path / "s"

    def boom(what, k, n):
        if what == "sample val":
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        presample_hetero(ds, out, HeteroSampleConfig(fanouts="3,3", batch_size=200), progress=boom)
    assert not (out / "manifest.json").exists() and (out / ".diskgnn-partial").exists()
    with pytest.raises(ManifestNotFoundError):
        HeteroSamples.open(out)
    # the same command afterwards finishes
    presample_hetero(ds, out, HeteroSampleConfig(fanouts="3,3", batch_size=200))
    assert HeteroSamples.open(out).num_batches("train/0") > 0


def test_bad_configs_and_other_datasets(ds, samples, tmp_path):
    with pytest.raises(ConfigError, match="same number of layers"):
        presample_hetero(ds, tmp_path / "a", HeteroSampleConfig(fanouts="3,3", eval_fanouts="-1"))
    with pytest.raises(ConfigError, match="unknown relation"):
        presample_hetero(ds, tmp_path / "b", HeteroSampleConfig(fanouts="nosuch=3,3"))
    with pytest.raises(ConfigError, match="--batch-size"):
        HeteroSampleConfig(batch_size=0)
    with pytest.raises(ConfigError, match="inside the dataset"):
        presample_hetero(ds, ds.path / "s", HeteroSampleConfig())
    other = synthesize_hetero(hetero_scale_config("tiny", seed=3), tmp_path / "other")
    with pytest.raises(MismatchError, match="fingerprint"):
        verify_hetero_samples(samples, other)
    m = json.loads((samples.path / "manifest.json").read_text())
    assert m["format"] == "diskgnn.hetero-samples" and m["dataset"]["fingerprint"] == ds.fingerprint
