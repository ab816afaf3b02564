"""Corrupted inputs: every command ends in success or diskgnn's own error, never a crash or a hang.

The random part runs ~100 cases through the worker of :mod:`diskgnn.bench.reliability`
(a segfault or hang is caught and attributed to its case); the targeted part
checks that specific corruptions are reported with a useful message.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diskgnn.bench.reliability import FuzzCase, apply_mutation, build_fixtures, run_fuzz

from conftest import run_cli


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("fuzz") / "fx", nodes=1409, dim=11)


def corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_random_corruptions_raise_only_our_errors(fx, tmp_path):
    result = run_fuzz(fx, 100, tmp_path / "fuzz", seed=20261126, case_timeout=60)
    summary = {k: result[k] for k in ("foreign_errors", "crashes", "hangs", "verify_missed", "other_exit")}
    assert summary == dict.fromkeys(summary, 0), json.dumps(result["failures"], indent=1, default=str)[:6000]
    assert result["outcomes"].get("own_error", 0) > 30  # the corruptions were really noticed
    assert result["cases"] == 100


@pytest.mark.parametrize("mutation", ["truncate", "flip1", "extend", "delete"])
@pytest.mark.parametrize("kind,target", [("dataset", "indices.bin"), ("dataset", "features.bin"),
                                         ("samples", "train-1.block_indices.bin"), ("samples", "access_counts.bin"),
                                         ("packed", "packed.bin"), ("packed", "maps.bin")])
def test_verify_rejects_every_damaged_data_file(fx, tmp_path, kind, target, mutation):
    d = corrupt_copy(getattr(fx, kind), tmp_path / kind)
    apply_mutation(d, FuzzCase(id=0, kind=kind, mutation=mutation, target=target, command="verify", seed=7,
                               data_file=True))
    rc, err = run_cli("verify", d)
    assert rc == 2, err
    assert target in err  # the message names the damaged file


def test_checksum_mismatch_is_named(fx, tmp_path):
    d = corrupt_copy(fx.dataset, tmp_path / "ds")
    feats = np.memmap(d / "features.bin", dtype=np.float32, mode="r+")
    feats[5] = -feats[5] + 1.0
    feats.flush()
    del feats
    rc, err = run_cli("verify", d)
    assert rc == 2 and "features.bin" in err and "checksum mismatch" in err


@pytest.mark.parametrize("text,match", [("{\"format\": \"diskgnn.dataset\", ", "not valid JSON"),
                                        ("[]", "JSON object"), ("", "not valid JSON"),
                                        ("\x00\xff junk", "not valid JSON")])
def test_junk_manifest(fx, tmp_path, text, match):
    d = corrupt_copy(fx.dataset, tmp_path / "ds")
    (d / "manifest.json").write_bytes(text.encode("latin-1"))
    for cmd in (("info", d), ("verify", d), ("sample", d, "--out", tmp_path / "s")):
        rc, err = run_cli(*cmd)
        assert rc == 2, (cmd, err)
    assert match in err
    assert not (tmp_path / "s" / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["dataset", "samples", "packed"])
def test_wrong_version_is_refused_first(fx, tmp_path, kind):
    d = corrupt_copy(getattr(fx, kind), tmp_path / kind)
    m = json.loads((d / "manifest.json").read_text())
    m["version"] = 99
    m.pop("files")  # a newer format may lay files out differently: the version must be checked first
    (d / "manifest.json").write_text(json.dumps(m))
    rc, err = run_cli("info", d)
    assert rc == 2 and "version 99" in err


def test_wrong_dtype_in_manifest(fx, tmp_path):
    d = corrupt_copy(fx.dataset, tmp_path / "ds")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["indices"]["dtype"] = "<f4"
    (d / "manifest.json").write_text(json.dumps(m))
    for cmd in (("verify", d), ("sample", d, "--out", tmp_path / "s", "--fanouts", "3")):
        rc, err = run_cli(*cmd)
        assert rc == 2 and "indices" in err, (cmd, err)


def test_corrupt_samples_index_never_reaches_the_kernels(fx, tmp_path):
    d = corrupt_copy(fx.samples, tmp_path / "samples")
    index = np.memmap(d / "val.index.bin", dtype=np.int64, mode="r+")
    index[1] = 1 << 40  # an offset far past the end of the files
    index.flush()
    del index
    for cmd in (("pack", d, "--out", tmp_path / "p"), ("verify", d)):
        rc, err = run_cli(*cmd)
        assert rc == 2 and "val" in err, (cmd, err)


def test_training_stops_on_a_corrupt_extent_naming_batch_and_file(fx, tmp_path):
    if fx.checkpoint is None:
        pytest.skip("the trainer is not available in this checkout")
    d = corrupt_copy(fx.packed, tmp_path / "packed")
    data = bytearray((d / "packed.bin").read_bytes())
    data[10] ^= 0x40  # inside the first extent: a train/0 batch, read in epoch 1
    (d / "packed.bin").write_bytes(bytes(data))
    rc, err = run_cli("train", d, *fx.train_args, "--epochs", "1")
    assert rc == 2, err
    assert "packed.bin" in err and "batch" in err


def test_truncated_extent_stops_training(fx, tmp_path):
    if fx.checkpoint is None:
        pytest.skip("the trainer is not available in this checkout")
    d = corrupt_copy(fx.packed, tmp_path / "packed")
    m = json.loads((d / "manifest.json").read_text())
    size = (d / "packed.bin").stat().st_size
    with open(d / "packed.bin", "r+b") as f:
        f.truncate(size // 3)
    m["files"]["packed"]["shape"] = [size // 3]  # a manifest that agrees: the reader itself must notice
    (d / "manifest.json").write_text(json.dumps(m))
    rc, err = run_cli("train", d, *fx.train_args, "--epochs", "1")
    assert rc == 2, err
    assert "packed.bin" in err


@pytest.mark.parametrize("edit", ["dataset_not_a_record", "tier_renamed"])
def test_mangled_packed_manifest(fx, tmp_path, edit):
    if fx.checkpoint is None:
        pytest.skip("the trainer is not available in this checkout")
    d = corrupt_copy(fx.packed, tmp_path / "packed")
    m = json.loads((d / "manifest.json").read_text())
    if edit == "dataset_not_a_record":
        m["dataset"] = 1.5
    else:
        m["tiers"][0]["name"] = "gpu"
    (d / "manifest.json").write_text(json.dumps(m))
    for cmd in (("verify", d), ("train", d, *fx.train_args, "--epochs", "1")):
        rc, err = run_cli(*cmd)
        assert rc == 2 and "manifest.json" in err, (cmd, err)


@pytest.mark.parametrize("target", ["batches.bin", "runs.bin", "maps.bin", "tier_host.bin"])
def test_training_checks_the_index_and_tiers_it_loads(fx, tmp_path, target):
    if fx.checkpoint is None:
        pytest.skip("the trainer is not available in this checkout")
    d = corrupt_copy(fx.packed, tmp_path / "packed")
    data = bytearray((d / target).read_bytes())
    data[len(data) // 3] ^= 0x01
    (d / target).write_bytes(bytes(data))
    rc, err = run_cli("train", d, *fx.train_args, "--epochs", "1")
    assert rc == 2 and target in err and "checksum" in err, err


def _edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("kind,edit,commands", [
    ("packed", lambda m: m["files"]["maps"].update(dtype="<f4"), ("verify", "train")),   # was a segfault
    ("packed", lambda m: m["tiers"][1].update(name=7), ("verify", "info")),              # was a TypeError
    ("packed", lambda m: m["files"]["runs"].update(crc32=[1, 2]), ("verify",)),           # was a TypeError
    ("samples", lambda m: m["parts"]["val"].update(files=None), ("info", "verify")),     # was an AttributeError
    ("dataset", lambda m: m["files"]["labels"].update(shape=[-3]), ("info", "verify")),
    ("samples", lambda m: m["parts"]["val"]["files"]["block_indices"].update(dtype="<f4"), ("verify",)),  # numba
    ("samples", lambda m: m["parts"]["test"]["files"]["index"].update(shape=[5]), ("pack",)),            # IndexError
    ("samples", lambda m: m["parts"]["train/0"].pop("num_edges"), ("info",)),                            # KeyError
    ("packed", lambda m: m["parts"][2].update(first_batch=1.5), ("train",)),                             # torch
])
def test_mangled_manifests_found_by_fuzzing(fx, tmp_path, kind, edit, commands):
    if getattr(fx, kind) is None:
        pytest.skip(f"no {kind} fixture in this checkout")
    d = corrupt_copy(getattr(fx, kind), tmp_path / kind)
    _edit_manifest(d, edit)
    for cmd in commands:
        argv = {"train": ["train", d, *fx.train_args, "--epochs", "1"],
                "pack": ["pack", d, "--out", tmp_path / "out"]}.get(cmd, [cmd, d])
        rc, err = run_cli(*argv)
        assert rc == 2 and "manifest.json" in err, (cmd, err)


def test_npy_with_a_zeroed_header_is_an_input_error(fx, tmp_path):
    raw = corrupt_copy(fx.raw, tmp_path / "raw")
    data = bytearray((raw / "test_idx.npy").read_bytes())
    data[20:60] = bytes(40)  # inside the header's dict text (numpy tokenizes it)
    (raw / "test_idx.npy").write_bytes(bytes(data))
    rc, err = run_cli("prepare", "--format", "npz", raw, "--out", tmp_path / "out")
    assert rc == 2 and "test_idx" in err, err
