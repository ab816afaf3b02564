"""Heterogeneous datasets: the directory import, the MAG-like generator, the CSR per relation, bad input."""
import json

import numpy as np
import pytest

from diskgnn.errors import InputFormatError, InputNotFoundError, IntegrityError
from diskgnn.hetero import (HeteroDataset, build_relation_csr, hetero_scale_config, hetero_summary, import_hetero_dir,
                            is_hetero, synthesize_hetero, verify_hetero)

N = {"paper": 611, "author": 407, "venue": 13}


def _write_dir(root, *, seed=0, edges=None, feat=None, meta=None, labels=None):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "edges").mkdir(exist_ok=True)
    (root / "feat").mkdir(exist_ok=True)
    (root / "meta.json").write_text(json.dumps(meta or {"num_nodes": N, "target": "paper"}))
    if edges is None:
        edges = {
            "paper__cites__paper": np.stack([rng.integers(0, 611, 3001), rng.integers(0, 611, 3001)]),
            "author__writes__paper": np.stack([rng.integers(0, 407, 1777), rng.integers(0, 611, 1777)]),
            "paper__in__venue": np.stack([np.arange(611), rng.integers(0, 13, 611)]),
        }
    for name, e in edges.items():
        np.save(root / "edges" / f"{name}.npy", e)
    if feat is None:
        feat = {"paper": rng.standard_normal((611, 7)).astype(np.float32),
                "venue": rng.standard_normal((13, 5)).astype(np.float32)}
    for t, f in feat.items():
        np.save(root / "feat" / f"{t}.npy", f)
    lab = rng.integers(0, 5, 611) if labels is None else labels
    if labels is not False:
        np.save(root / "label.npy", lab)
    perm = rng.permutation(611)
    np.save(root / "train_idx.npy", perm[:301])
    np.save(root / "val_idx.npy", perm[301:401])
    np.save(root / "test_idx.npy", perm[401:503])
    return edges, feat, lab


def _csr_pairs(ds, name):
    indptr, indices = np.asarray(ds.indptr(name)), np.asarray(ds.indices(name))
    dst = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    return set(zip(indices.tolist(), dst.tolist()))


def test_import_builds_one_sorted_deduplicated_csr_per_relation(tmp_path):
    edges, feat, lab = _write_dir(tmp_path / "in")
    ds = import_hetero_dir(tmp_path / "in", tmp_path / "out", add_reverse=True)
    assert is_hetero(tmp_path / "out") and ds.target == "paper" and ds.num_classes == 5
    assert set(ds.relations) == {"paper__cites__paper", "author__writes__paper", "paper__in__venue",
                                 "paper__rev_cites__paper", "paper__rev_writes__author", "venue__rev_in__paper"}
    for name, e in edges.items():
        assert _csr_pairs(ds, name) == set(zip(e[0].tolist(), e[1].tolist()))
        s, r, d = name.split("__")
        assert _csr_pairs(ds, f"{d}__rev_{r}__{s}") == set(zip(e[1].tolist(), e[0].tolist()))
    for name in ds.relations:
        indptr, indices = np.asarray(ds.indptr(name)), np.asarray(ds.indices(name))
        for v in range(indptr.size - 1):  # sorted, no duplicates
            assert np.all(np.diff(indices[indptr[v]:indptr[v + 1]]) > 0)
    assert np.array_equal(ds.features("paper"), feat["paper"]) and ds.node_types["author"].features is None
    assert ds.features("venue").shape == (13, 5) and np.array_equal(ds.labels, lab)
    assert verify_hetero(ds)["ok"]
    s = hetero_summary(ds)
    assert s["node_types"]["author"]["feat_dim"] == 0 and s["splits"] == {"train": 301, "val": 100, "test": 102}
    assert (tmp_path / "out" / "features" / "paper.bin").stat().st_size == 611 * 7 * 4


def test_a_small_budget_builds_the_same_files_in_many_ranges(tmp_path):
    _write_dir(tmp_path / "in", seed=3)
    a = import_hetero_dir(tmp_path / "in", tmp_path / "big")
    b = import_hetero_dir(tmp_path / "in", tmp_path / "small", memory_budget=32 * 97)
    assert b.manifest["stats"]["relations"]["paper__cites__paper"]["ranges"] > 10
    assert a.manifest["stats"]["relations"]["paper__cites__paper"]["ranges"] == 1
    for name in a.relations:
        assert a.relations[name].indices.crc32 == b.relations[name].indices.crc32
        assert a.relations[name].indptr.crc32 == b.relations[name].indptr.crc32


def test_build_relation_csr_checks_ids_per_type(tmp_path):
    chunks = lambda: [(np.array([0, 4]), np.array([1, 2]))]  # noqa: E731
    with pytest.raises(InputFormatError, match=r"source id 4 is outside 0..3"):
        build_relation_csr(tmp_path, "r", chunks, 4, 9, budget=1 << 20, where="x.npy")


def test_corruption_is_found_by_verify(tmp_path):
    _write_dir(tmp_path / "in")
    ds = import_hetero_dir(tmp_path / "in", tmp_path / "out")
    path = tmp_path / "out" / ds.relations["author__writes__paper"].indices.path
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="crc32"):
        verify_hetero(HeteroDataset.open(tmp_path / "out"))


@pytest.mark.parametrize("case, error, match", [
    ("unknown type", InputFormatError, r"paper__cites__journal.npy: the destination type 'journal'"),
    ("out of range", InputFormatError, r"author__writes__paper.npy: source id 407 is outside 0..406"),
    ("feature rows", InputFormatError, r"feat/paper.npy: 610 rows for the 611 nodes"),
    ("no labels", InputNotFoundError, r"label.npy is missing"),
    ("unlabelled", InputFormatError, r"no target node is labelled"),
    ("collision", InputFormatError, r"--add-reverse would add paper__rev_cites__paper"),
    ("bad name", InputFormatError, r"relation name 'cit es'|'paper__cit es__paper' is not|not allowed"),
    ("unknown feature type", InputFormatError, r"feat/journal.npy: 'journal' is not a node type"),
    ("target", InputFormatError, r"target type 'journal' is not in num_nodes"),
])
def test_bad_input_is_one_clear_error_and_leaves_nothing(tmp_path, case, error, match):
    rng = np.random.default_rng(1)
    kw = {}
    pp = np.stack([rng.integers(0, 611, 50), rng.integers(0, 611, 50)])
    if case == "unknown type":
        kw["edges"] = {"paper__cites__journal": pp}
    elif case == "out of range":
        kw["edges"] = {"author__writes__paper": np.array([[0, 407], [1, 2]])}
    elif case == "feature rows":
        kw["feat"] = {"paper": np.zeros((610, 3), np.float32)}
    elif case == "no labels":
        kw["labels"] = False
    elif case == "unlabelled":
        kw["labels"] = np.full(611, -1)
    elif case == "collision":
        kw["edges"] = {"paper__cites__paper": pp, "paper__rev_cites__paper": pp}
    elif case == "bad name":
        kw["edges"] = {"paper__cit es__paper": pp}
    elif case == "unknown feature type":
        kw["feat"] = {"journal": np.zeros((5, 3), np.float32)}
    elif case == "target":
        kw["meta"] = {"num_nodes": N, "target": "journal"}
    _write_dir(tmp_path / "in", **kw)
    with pytest.raises(error, match=match):
        import_hetero_dir(tmp_path / "in", tmp_path / "out", add_reverse=case == "collision")
    assert not (tmp_path / "out" / "manifest.json").exists()
    left = sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert left in ([], [".diskgnn-partial"]), left


def test_synth_is_deterministic_and_its_labels_follow_the_typed_neighbourhood(tmp_path):
    cfg = hetero_scale_config("tiny")
    a = synthesize_hetero(cfg, tmp_path / "a")
    b = synthesize_hetero(cfg, tmp_path / "b", chunk=97)  # chunking changes the draws, not the format
    assert verify_hetero(a)["ok"] and verify_hetero(b)["ok"]
    c = synthesize_hetero(cfg, tmp_path / "c")
    assert a.fingerprint == c.fingerprint
    assert {t: x.feat_dim for t, x in a.node_types.items()} == {"paper": 16, "author": 0, "institution": 0,
                                                                   "field": 8}
    assert len(a.relations) == 8
    # a paper's fields mostly share its class (id mod classes): the neighbourhood carries the label
    name = "field__rev_has_topic__paper"
    indptr, indices = np.asarray(a.indptr(name)), np.asarray(a.indices(name))
    dst = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    same = np.mean(indices % cfg.classes == dst % cfg.classes)
    assert same > 0.7, same
    # while a nearest-class-mean guess from the paper's own features is weak
    x, y = np.asarray(a.features("paper")), np.asarray(a.labels)
    means = np.stack([x[y == k].mean(0) for k in range(cfg.classes)])
    own = np.mean(np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), 1) == y)
    assert own < 0.6, own


def _gz(path, lines):
    import gzip
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("".join(line + "\n" for line in lines))


def _fake_ogb_mag(root, rng):
    """The ogbn-mag raw layout at tiny size (author, paper, field; writes, cites, has_topic)."""
    n = {"author": 29, "paper": 41, "field": 7}
    _gz(root / "raw" / "num-node-dict.csv.gz", [",".join(n), ",".join(str(v) for v in n.values())])
    edges = {"author___writes___paper": (29, 41, 90), "paper___cites___paper": (41, 41, 120),
             "paper___has_topic___field": (41, 7, 60)}
    out = {}
    for name, (ns, nd, e) in edges.items():
        pairs = np.stack([rng.integers(0, ns, e), rng.integers(0, nd, e)], 1)
        _gz(root / "raw" / "relations" / name / "edge.csv.gz", [f"{a},{b}" for a, b in pairs])
        out[name.replace("___", "__")] = pairs
    feat = rng.standard_normal((41, 3)).round(4)
    _gz(root / "raw" / "node-feat" / "paper" / "node-feat.csv.gz", [",".join(map(str, r)) for r in feat])
    labels = rng.integers(0, 4, 41)
    _gz(root / "raw" / "node-label" / "paper" / "node-label.csv.gz", [str(v) for v in labels])
    perm = rng.permutation(41)
    for name, ids in (("train", perm[:20]), ("valid", perm[20:30]), ("test", perm[30:])):
        _gz(root / "split" / "time" / "paper" / f"{name}.csv.gz", [str(v) for v in ids])
    return n, out, feat, labels


def test_import_the_ogb_heterogeneous_layout(tmp_path):
    from diskgnn.hetero import import_hetero_ogb
    n, edges, feat, labels = _fake_ogb_mag(tmp_path / "mag", np.random.default_rng(5))
    ds = import_hetero_ogb(tmp_path / "mag", tmp_path / "out", add_reverse=True)
    assert ds.target == "paper" and {t: x.num_nodes for t, x in ds.node_types.items()} == n
    assert len(ds.relations) == 6 and verify_hetero(ds)["ok"]
    for name, pairs in edges.items():
        assert _csr_pairs(ds, name) == set(map(tuple, pairs.tolist()))
        s, r, d = name.split("__")
        assert _csr_pairs(ds, f"{d}__rev_{r}__{s}") == set((b, a) for a, b in pairs.tolist())
    assert np.allclose(ds.features("paper"), feat) and ds.node_types["author"].features is None
    assert np.array_equal(ds.labels, labels) and ds.split("train").size == 20
    _gz(tmp_path / "mag" / "raw" / "relations" / "paper___cites___journal" / "edge.csv.gz", ["0,1"])
    with pytest.raises(InputFormatError, match=r"paper___cites___journal: the destination type 'journal'"):
        import_hetero_ogb(tmp_path / "mag", tmp_path / "bad")
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_import_a_dgl_heterograph(tmp_path):
    dgl = pytest.importorskip("dgl", reason="the DGL import needs the reference stack")
    import torch
    from diskgnn.hetero import import_hetero_dgl
    rng = np.random.default_rng(2)
    g = dgl.heterograph({("user", "buys", "item"): (torch.tensor(rng.integers(0, 13, 40)),
                                                    torch.tensor(rng.integers(0, 11, 40))),
                         ("item", "similar", "item"): (torch.tensor(rng.integers(0, 11, 25)),
                                                       torch.tensor(rng.integers(0, 11, 25)))},
                        num_nodes_dict={"user": 13, "item": 11})
    g.nodes["item"].data["feat"] = torch.randn(11, 5)
    g.nodes["user"].data["label"] = torch.tensor(rng.integers(0, 3, 13))
    masks = np.zeros((3, 13), dtype=bool)
    masks[0, :7], masks[1, 7:10], masks[2, 10:] = True, True, True
    for name, m in zip(("train", "val", "test"), masks):
        g.nodes["user"].data[f"{name}_mask"] = torch.from_numpy(m)
    dgl.save_graphs(str(tmp_path / "g.bin"), [g])
    ds = import_hetero_dgl(tmp_path / "g.bin", tmp_path / "out", add_reverse=True)
    assert ds.target == "user" and set(ds.relations) == {"user__buys__item", "item__similar__item",
                                                         "item__rev_buys__user", "item__rev_similar__item"}
    src, dst = g.edges(etype="buys")
    assert _csr_pairs(ds, "user__buys__item") == set(zip(src.tolist(), dst.tolist()))
    assert np.allclose(ds.features("item"), g.nodes["item"].data["feat"].numpy())
    assert np.array_equal(ds.split("train"), np.arange(7)) and verify_hetero(ds)["ok"]
