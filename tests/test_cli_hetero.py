"""The command line on heterogeneous datasets: synth --hetero, prepare --format hetero-dir, info, verify,
train-hetero, and a clear refusal from the homogeneous steps."""
import json

import numpy as np
import pytest

from diskgnn.tools.cli import main


def test_synth_info_verify_train(tmp_path, capsys):
    out = tmp_path / "mag"
    assert main(["synth", "--hetero", "--scale", "tiny", "--classes", "3", "--out", str(out), "-q"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "heterogeneous dataset" and info["num_classes"] == 3
    assert set(info["node_types"]) == {"paper", "author", "institution", "field"}
    assert main(["verify", str(out)]) == 0
    assert "heterogeneous dataset OK" in capsys.readouterr().out
    metrics = tmp_path / "m.jsonl"
    assert main(["train-hetero", str(out), "--model", "rgcn", "--num-bases", "2", "--fanouts", "writes=2|*=3,4",
                 "--batch-size", "128", "--epochs", "1", "--hidden", "16", "--threads", "1",
                 "--metrics", str(metrics)]) == 0
    rec = json.loads(metrics.read_text().splitlines()[-1])
    assert rec["event"] == "epoch" and rec["epoch"] == 1 and 0 <= rec["test_acc"] <= 1
    # presample > verify > pack > verify > train out of core
    samples, packed = tmp_path / "s", tmp_path / "p"
    assert main(["sample", str(out), "--out", str(samples), "--fanouts", "cites=2|*=3,4", "--batch-size", "97",
                 "--epochs", "2", "-q"]) == 0
    assert main(["verify", str(samples)]) == 0
    assert "heterogeneous samples OK" in capsys.readouterr().out
    assert main(["pack", str(samples), "--out", str(packed), "--host-cache", "7%", "-q"]) == 0
    assert main(["verify", str(packed)]) == 0
    assert "heterogeneous packed OK" in capsys.readouterr().out
    assert main(["info", str(packed), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "heterogeneous packed" and set(info["types"]) == {"paper", "field"}
    assert info["featureless_types"] == ["author", "institution"]
    metrics2 = tmp_path / "m2.jsonl"
    assert main(["train-hetero", str(packed), "--epochs", "2", "--hidden", "16", "--threads", "1",
                 "--metrics", str(metrics2), "-q"]) == 0
    assert len(metrics2.read_text().splitlines()) == 2
    # the homogeneous steps refuse heterogeneous inputs in one paragraph
    assert main(["train", str(packed), "-q"]) == 2
    err = capsys.readouterr().err
    assert "heterogeneous" in err and "train-hetero" in err
    assert main(["sample", str(out), "--out", str(tmp_path / "s2"), "--task", "link", "-q"]) == 2
    assert "not available for heterogeneous" in capsys.readouterr().err
    assert main(["synth", "--hetero", "--scale", "tiny", "--nodes", "5", "--out", str(tmp_path / "x")]) == 2
    assert "--nodes" in capsys.readouterr().err


def test_prepare_hetero_dir(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "edges").mkdir(parents=True)
    (src / "feat").mkdir()
    rng = np.random.default_rng(0)
    (src / "meta.json").write_text(json.dumps({"num_nodes": {"user": 53, "item": 31}, "target": "user"}))
    np.save(src / "edges" / "user__buys__item.npy", np.stack([rng.integers(0, 53, 211), rng.integers(0, 31, 211)]))
    np.save(src / "feat" / "item.npy", rng.standard_normal((31, 4)).astype(np.float32))
    np.save(src / "label.npy", rng.integers(0, 2, 53))
    for name, ids in (("train", range(0, 30)), ("val", range(30, 40)), ("test", range(40, 50))):
        np.save(src / f"{name}_idx.npy", np.array(list(ids)))
    out = tmp_path / "out"
    assert main(["prepare", "--format", "hetero-dir", str(src), "--out", str(out), "--add-reverse", "-q"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["relations"]["user__buys__item"] == info["relations"]["item__rev_buys__user"] > 0
    assert info["node_types"]["user"]["feat_dim"] == 0 and info["node_types"]["item"]["feat_dim"] == 4
    assert main(["prepare", "--format", "npz", str(src), "--out", str(tmp_path / "o2"), "--add-reverse"]) == 2
    assert "--add-reverse applies to the hetero-* formats" in capsys.readouterr().err


def _shop(src, *, tag_edges: bool, features: bool):
    """A small typed graph of another shape: user (target, featureless), item (fp16 features), tag (fp32
    features; with ``tag_edges=False`` no relation touches it, so no batch ever reads a tag row)."""
    (src / "edges").mkdir(parents=True)
    (src / "feat").mkdir()
    rng = np.random.default_rng(0)
    (src / "meta.json").write_text(json.dumps({"num_nodes": {"user": 53, "item": 31, "tag": 7}, "target": "user"}))
    np.save(src / "edges" / "user__buys__item.npy", np.stack([rng.integers(0, 53, 211), rng.integers(0, 31, 211)]))
    if tag_edges:
        np.save(src / "edges" / "item__has__tag.npy", np.stack([rng.integers(0, 31, 40), rng.integers(0, 7, 40)]))
    if features:
        np.save(src / "feat" / "item.npy", rng.standard_normal((31, 4)).astype(np.float16))
        np.save(src / "feat" / "tag.npy", rng.standard_normal((7, 3)).astype(np.float32))
    np.save(src / "label.npy", rng.integers(0, 2, 53))
    for name, ids in (("train", range(0, 30)), ("val", range(30, 40)), ("test", range(40, 50))):
        np.save(src / f"{name}_idx.npy", np.array(list(ids)))



@pytest.mark.parametrize("tag_edges, features", [(True, True), (False, True), (True, False)])
def test_other_shapes_run_the_whole_pipeline(tmp_path, capsys, tag_edges, features):
    _shop(tmp_path / "in", tag_edges=tag_edges, features=features)
    ds, s, p = tmp_path / "ds", tmp_path / "s", tmp_path / "p"
    assert main(["prepare", "--format", "hetero-dir", str(tmp_path / "in"), "--out", str(ds), "--add-reverse",
                 "-q"]) == 0
    assert main(["sample", str(ds), "--out", str(s), "--fanouts", "3,3", "--batch-size", "8", "-q"]) == 0
    assert main(["pack", str(s), "--out", str(p), "--host-cache", "20%", "-q"]) == 0
    assert main(["verify", str(p)]) == 0
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("OK\n", 1)[1])
    assert set(info["types"]) == ({"item", "tag"} if features else set())
    assert main(["train-hetero", str(p), "--epochs", "1", "--hidden", "8", "--threads", "1", "-q"]) == 0


def test_rsage_refuses_a_target_no_relation_leads_into(tmp_path, capsys):
    _shop(tmp_path / "in", tag_edges=True, features=True)
    ds = tmp_path / "ds"
    assert main(["prepare", "--format", "hetero-dir", str(tmp_path / "in"), "--out", str(ds), "-q"]) == 0
    assert main(["train-hetero", str(ds), "--fanouts", "2,2", "--epochs", "1", "-q"]) == 2
    assert "--add-reverse" in capsys.readouterr().err
    assert main(["train-hetero", str(ds), "--model", "rgcn", "--fanouts", "2,2", "--epochs", "1", "--hidden", "8",
                 "-q"]) == 0
