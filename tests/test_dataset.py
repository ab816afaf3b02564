"""The dataset format: writer, reader, verify, and the ``diskgnn info`` / ``diskgnn verify`` commands."""
import json
import shutil

import numpy as np
import pytest

from diskgnn.dataset import (ALIGN, Dataset, DatasetWriter, bf16_bits_to_float32, float32_to_bf16_bits,
                             summary, verify_dataset)
from diskgnn.errors import (InputFormatError, IntegrityError, ManifestError, ManifestNotFoundError,
                            OutputExistsError)
from diskgnn.tools.cli import main

N, F, C = 97, 6, 3


def write_small(out, *, overwrite=False, fail_after=None, labels=None, splits=None, indices=None):
    """A hand-made 97-node ring (in-edges from v-1 and v+1) through DatasetWriter."""
    rng = np.random.default_rng(5)
    v = np.arange(N)
    src = np.sort(np.stack([(v - 1) % N, (v + 1) % N], 1), axis=1).reshape(-1)
    indptr = np.arange(0, 2 * N + 1, 2, dtype=np.int64)
    feats = rng.standard_normal((N, F)).astype(np.float32)
    labels = (v % C) if labels is None else labels
    splits = splits or {"train": np.arange(0, 30), "val": np.arange(30, 40), "test": np.arange(40, 50)}
    with DatasetWriter(out, num_nodes=N, feat_dim=F, feat_dtype="fp32", num_classes=C, source={"kind": "test"},
                       config={"made_by": "test_dataset"}, overwrite=overwrite) as w:
        w.write_array("indptr", indptr)
        w.write_array("indices", (src if indices is None else indices).astype(np.int32))
        fw = w.features_writer()
        fw.write(feats[:50])
        if fail_after == "features":
            raise RuntimeError("interrupted")
        fw.write(feats[50:])
        w.add(fw.close(), "features")
        w.write_array("labels", np.asarray(labels, dtype=np.int64))
        for name, idx in splits.items():
            w.write_array(f"{name}_idx", np.asarray(idx, dtype=np.int64))
        ds = w.finish()
    return ds, feats, src


def test_round_trip(tmp_path):
    ds, feats, src = write_small(tmp_path / "ds")
    again = Dataset.open(tmp_path / "ds")
    verify_dataset(again)
    assert (again.num_nodes, again.num_edges, again.feat_dim, again.num_classes) == (N, 2 * N, F, C)
    assert np.array_equal(again.features, feats) and np.array_equal(again.indices, src)
    assert again.indptr.dtype == np.int64 and again.indices.dtype == np.int32
    assert again.row_bytes == F * 4 and again.feature_bytes == N * F * 4
    assert again.fingerprint == ds.fingerprint
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["format"] == "diskgnn.dataset" and m["version"] == 1
    assert m["files"]["features"]["offset"] % ALIGN == 0 and m["files"]["features"]["bytes"] == N * F * 4
    assert m["config"] == {"made_by": "test_dataset"} and m["source"] == {"kind": "test"}
    assert not (tmp_path / "ds" / ".diskgnn-partial").exists()


def test_bf16_bits_round_trip():
    x = np.array([1.0, -2.5, 3.140625, 1e-3, np.inf], dtype=np.float32)
    back = bf16_bits_to_float32(float32_to_bf16_bits(x))
    assert np.array_equal(back[[0, 1, 2, 4]], x[[0, 1, 2, 4]])
    assert abs(back[3] - 1e-3) < 1e-5
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


def test_interrupted_writer_leaves_no_dataset(tmp_path):
    with pytest.raises(RuntimeError):
        write_small(tmp_path / "ds", fail_after="features")
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert not list((tmp_path / "ds").glob("*.bin"))
    with pytest.raises(ManifestNotFoundError, match="not a complete"):
        Dataset.open(tmp_path / "ds")
    write_small(tmp_path / "ds")  # an unfinished directory is ours to reuse without --overwrite
    assert Dataset.open(tmp_path / "ds").num_nodes == N


def test_writer_refuses_finished_or_foreign_directories(tmp_path):
    write_small(tmp_path / "ds")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_small(tmp_path / "ds")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        write_small(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    write_small(tmp_path / "ds", overwrite=True)


def test_finish_checks_invariants(tmp_path):
    with pytest.raises(IntegrityError, match="splits overlap"):
        write_small(tmp_path / "a", splits={"train": [1, 2], "val": [2, 3], "test": [4]})
    assert not (tmp_path / "a" / "manifest.json").exists()
    with pytest.raises(IntegrityError, match="label 7"):
        write_small(tmp_path / "b", labels=np.full(N, 7))
    assert not (tmp_path / "b" / "manifest.json").exists()
    with pytest.raises(InputFormatError, match="missing arrays"):
        with DatasetWriter(tmp_path / "c", num_nodes=3, feat_dim=1, feat_dtype="fp32", num_classes=1,
                           source={}, config={}) as w:
            w.finish()


def edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_unknown_manifest_version_and_format(tmp_path):
    write_small(tmp_path / "ds")
    edit_manifest(tmp_path / "ds", version=99)
    with pytest.raises(ManifestError, match="version 99.*reads version 1"):
        Dataset.open(tmp_path / "ds")
    edit_manifest(tmp_path / "ds", version=1, format="diskgnn.samples")
    with pytest.raises(ManifestError, match="expected 'diskgnn.dataset'"):
        Dataset.open(tmp_path / "ds")
    (tmp_path / "ds" / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Dataset.open(tmp_path / "ds")


def test_truncated_array_is_refused_on_open(tmp_path):
    write_small(tmp_path / "ds")
    path = tmp_path / "ds" / "features.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(IntegrityError, match="features.bin is truncated"):
        Dataset.open(tmp_path / "ds")


def corrupt(ds_path, name, fn):
    arr = np.fromfile(ds_path / f"{name}.bin", dtype=np.int64 if name != "indices" else np.int32)
    fn(arr)
    arr.tofile(ds_path / f"{name}.bin")


@pytest.mark.parametrize("name,fn,match", [
    ("indptr", lambda a: a.__setitem__(50, a[49] - 1), "indptr.bin: offsets decrease at node 49"),
    ("indices", lambda a: a.__setitem__(11, N + 3), f"indices.bin: edge 11 has source node {N + 3}"),
    ("labels", lambda a: a.__setitem__(5, C), f"labels.bin: node 5 has label {C}"),
    ("val_idx", lambda a: a.__setitem__(0, 3), "splits overlap; node 3"),
    ("test_idx", lambda a: a.__setitem__(0, N), "test_idx.bin: node ids must lie in"),
])
def test_verify_names_the_broken_invariant(tmp_path, capsys, name, fn, match):
    write_small(tmp_path / "ds")
    corrupt(tmp_path / "ds", name, fn)
    with pytest.raises(IntegrityError, match=match):
        verify_dataset(Dataset.open(tmp_path / "ds"))
    assert main(["verify", str(tmp_path / "ds")]) == 2
    assert match.split(":")[0] in capsys.readouterr().err


def test_verify_catches_a_flipped_byte(tmp_path, capsys):
    write_small(tmp_path / "ds")
    path = tmp_path / "ds" / "features.bin"
    data = bytearray(path.read_bytes())
    data[1001] ^= 0x01  # a low mantissa bit: still a finite float, only the checksum notices
    path.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "features.bin: checksum mismatch" in err and "re-create" in err
    assert main(["verify", "--no-checksums", str(tmp_path / "ds")]) == 0


def test_verify_catches_nonfinite_features(tmp_path):
    write_small(tmp_path / "ds")
    path = tmp_path / "ds" / "features.bin"
    feats = np.fromfile(path, dtype=np.float32)
    feats[F * 20 + 2] = np.nan
    feats.tofile(path)
    with pytest.raises(IntegrityError, match="row 20 holds NaN"):
        verify_dataset(Dataset.open(tmp_path / "ds"), check_crc=False)


def test_cli_verify_and_info_on_a_good_dataset(tmp_path, capsys):
    write_small(tmp_path / "ds")
    assert main(["verify", str(tmp_path / "ds")]) == 0
    assert "dataset OK" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "ds")]) == 0
    text = capsys.readouterr().out
    for needle in (f"nodes: {N}", f"edges: {2 * N}", "format_version: 1", "train: 30", "dtype: fp32"):
        assert needle in text
    assert main(["info", "--json", str(tmp_path / "ds")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "dataset" and info["in_degree"]["max"] == 2 and info["splits"]["val"] == 10
    assert info == {**summary(Dataset.open(tmp_path / "ds")), "kind": "dataset"}


def test_cli_on_missing_or_unfinished_directories(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["verify", str(tmp_path / "half")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    write_small(tmp_path / "ds")
    edit_manifest(tmp_path / "ds", version=2)
    assert main(["verify", str(tmp_path / "ds")]) == 2
    assert "version 2" in capsys.readouterr().err


def test_missing_array_file(tmp_path):
    write_small(tmp_path / "ds")
    (tmp_path / "ds" / "labels.bin").unlink()
    with pytest.raises(IntegrityError, match="labels.bin is missing"):
        Dataset.open(tmp_path / "ds")


def test_prepared_with_allow_nonfinite_still_verifies(tmp_path):
    ds, _, _ = write_small(tmp_path / "ds")
    shutil.copytree(tmp_path / "ds", tmp_path / "nan")
    path = tmp_path / "nan" / "features.bin"
    feats = np.fromfile(path, dtype=np.float32)
    feats[3] = np.inf
    feats.tofile(path)
    edit_manifest(tmp_path / "nan", config={"allow_nonfinite": True})
    verify_dataset(Dataset.open(tmp_path / "nan"), check_crc=False)
    edit_manifest(tmp_path / "nan", config={"allow_nonfinite": False})
    with pytest.raises(IntegrityError, match="row 0 holds NaN or inf"):
        verify_dataset(Dataset.open(tmp_path / "nan"), check_crc=False)


def test_manifest_shape_beyond_any_file_size_is_an_integrity_error():
    """A corrupted shape whose product overflows int64 is the project's error, not an OverflowError."""
    from diskgnn.dataset import ArraySpec
    from diskgnn.errors import IntegrityError
    for shape in ([2**40, 2**40], [9223372036854775807], [2**62 // 8 + 1]):
        with pytest.raises(IntegrityError, match="malformed file entry"):
            ArraySpec.from_json({"path": "x.bin", "dtype": "<i8", "shape": shape}, "manifest.json")
    assert ArraySpec.from_json({"path": "x.bin", "dtype": "<i8", "shape": [3, 5]}, "m").nbytes == 120


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_feature_rows_read_any_ids_exactly(tmp_path, dtype):
    """Dataset.feature_rows (pread in id order, nearby rows in one request) equals indexing the rows."""
    from diskgnn.errors import ConfigError
    from diskgnn.synth import SynthConfig, synthesize
    ds = synthesize(SynthConfig(nodes=3001, avg_degree=4, dim=7, classes=3, dtype=dtype, seed=1), tmp_path / "d")
    rows = np.asarray(ds.features)
    rng = np.random.default_rng(0)
    for ids in (np.zeros(0, np.int64), np.array([3000]), np.array([7, 7, 0, 3000, 5, 6]),
                rng.integers(0, 3001, 997), np.arange(3001)[::-1]):
        for gap in (1, 64 << 10):
            got = ds.feature_rows(ids, gap_bytes=gap)
            assert got.dtype == rows.dtype and np.array_equal(got, rows[ids])
    with pytest.raises(ConfigError, match="0..3000"):
        ds.feature_rows([3001])
