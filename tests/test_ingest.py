"""``diskgnn prepare``: the parse/CSR kernels against numpy twins, every input format, and bad input."""
import dataclasses
import errno
import gzip
import os
import subprocess

import numpy as np
import pytest

from conftest import HAS_DGL, requires_dgl
from diskgnn import ingest
from diskgnn.dataset import Dataset, convert_features, verify_dataset
from diskgnn.errors import (ConfigError, DiskFullError, InputFormatError, InputNotFoundError, MismatchError,
                            OutputExistsError)
from diskgnn.ingest import PrepareConfig, prepare
from diskgnn.kernels.csr import (choose_ranges, compact_segments_inplace, count_in_degrees,
                                 counting_sort_by_destination, group_by_range, sort_segments)
from diskgnn.kernels.parse import format_edge_lines, parse_edge_lines
from diskgnn.tools.cli import main

N, E, F, C = 311, 2077, 5, 4


# --- numpy twins ---------------------------------------------------------------------------------------

def reference_csr(src, dst, n, undirected=False, drop_self_loops=True, drop_duplicates=True):
    """The in-edge CSR the importer must produce, built with plain numpy."""
    s, d = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if undirected:
        loop = s == d
        s, d = np.concatenate([s, d[~loop]]), np.concatenate([d, s[~loop]])
    if drop_self_loops:
        keep = s != d
        s, d = s[keep], d[keep]
    order = np.lexsort((s, d))
    s, d = s[order], d[order]
    if drop_duplicates and s.size:
        first = np.ones(s.size, bool)
        first[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
        s, d = s[first], d[first]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(d, minlength=n), out=indptr[1:])
    return indptr, s


def parse_twin(text: bytes):
    src, dst = [], []
    for line in text.split(b"\n"):
        line = line.strip()
        if not line or line[:1] in (b"#", b"%"):
            continue
        a, b = line.replace(b",", b" ").split()[:2]
        src.append(int(a))
        dst.append(int(b))
    return np.array(src, np.int64), np.array(dst, np.int64)


def ranges_twin(counts, cap):
    bounds, held = [0], 0
    for v, c in enumerate(counts):
        if held and held + c > cap:
            bounds.append(v)
            held = 0
        held += c
    return np.array(bounds + [len(counts)])


# --- kernels ---------------------------------------------------------------------------------------------

def test_parse_edge_lines_matches_twin():
    text = (b"# a comment\n% another\n0 1\n2\t3\r\n  4 , 5\n6,7,0.25\n\n8 9 extra columns\n"
            b"10     11\n12 13")
    out_s, out_d = np.empty(64, np.int64), np.empty(64, np.int64)
    k, err, pos = parse_edge_lines(np.frombuffer(text, np.uint8), out_s, out_d)
    s, d = parse_twin(text)
    assert err == 0 and pos == -1 and k == s.size == 7
    assert np.array_equal(out_s[:k], s) and np.array_equal(out_d[:k], d)


def test_format_edge_lines_round_trips():
    rng = np.random.default_rng(4)
    s, d = rng.integers(0, 10**12, 203), rng.integers(0, 5, 203)
    s[:3] = [0, 9, 10]
    out = np.empty(40 * 203, np.uint8)
    k = format_edge_lines(s, d, out)
    text = out[:k].tobytes()
    assert text == "".join(f"{a} {b}\n" for a, b in zip(s, d)).encode()
    back_s, back_d = np.empty(203, np.int64), np.empty(203, np.int64)
    assert parse_edge_lines(out[:k], back_s, back_d) == (203, 0, -1)
    assert np.array_equal(back_s, s) and np.array_equal(back_d, d)


@pytest.mark.parametrize("text,code,token", [
    (b"0 1\n2.5 3\n", 1, b"2.5"), (b"0 1\n2 -3\n", 2, b"-3"), (b"0 1\n7\n", 3, b"7"),
    (b"0 1\n4 x\n", 1, b"x"), (b"1 99999999999999999999\n", 4, b"99999999999999999999"), (b"1e3 2\n", 1, b"1e3")])
def test_parse_edge_lines_errors(text, code, token):
    out = np.empty(16, np.int64)
    k, err, pos = parse_edge_lines(np.frombuffer(text, np.uint8), out, out.copy())
    assert err == code
    assert text[pos:].startswith(token)


def test_count_in_degrees_matches_bincount():
    rng = np.random.default_rng(1)
    s, d = rng.integers(0, 37, 301), rng.integers(0, 37, 301)
    for undirected in (False, True):
        counts = np.zeros(37, np.int64)
        assert count_in_degrees(s, d, 37, True, undirected, counts) == -1
        keep = s != d
        want = np.bincount(d[keep], minlength=37)
        if undirected:
            want += np.bincount(s[keep], minlength=37)
        assert np.array_equal(counts, want)
    d[200] = 37
    assert count_in_degrees(s, d, 37, True, False, np.zeros(37, np.int64)) == 200
    s[50] = -1
    assert count_in_degrees(s, d, 37, True, False, np.zeros(37, np.int64)) == 50


def test_choose_ranges_matches_twin():
    counts = np.random.default_rng(2).integers(0, 9, 103)
    counts[40] = 50  # a node larger than the cap gets a range of its own
    for cap in (1, 7, 20, 10_000):
        bounds = choose_ranges(counts, cap)
        assert np.array_equal(bounds, ranges_twin(counts, cap))
        sizes = np.add.reduceat(counts, bounds[:-1])
        busy_nodes = np.add.reduceat((counts > 0).astype(int), bounds[:-1])
        assert ((sizes <= cap) | (busy_nodes == 1)).all()


def test_group_and_build_match_twin():
    rng = np.random.default_rng(3)
    n = 53
    s, d = rng.integers(0, n, 409), rng.integers(0, n, 409)
    bounds = np.array([0, 11, 12, 40, n])
    for undirected in (False, True):
        out_l, out_s, starts = np.empty(2 * 409, np.int32), np.empty(2 * 409, np.int32), np.zeros(5, np.int64)
        total = group_by_range(s, d, bounds, True, undirected, out_l, out_s, starts)
        ref_ptr, ref_idx = reference_csr(s, d, n, undirected, drop_duplicates=False)
        assert total == ref_ptr[-1] and starts[-1] == total
        for r in range(4):
            lo, hi = starts[r], starts[r + 1]
            assert hi - lo == ref_ptr[bounds[r + 1]] - ref_ptr[bounds[r]]
            num_dst = bounds[r + 1] - bounds[r]
            indptr, idx = np.empty(num_dst + 1, np.int64), np.empty(hi - lo, np.int32)
            counting_sort_by_destination(out_l[lo:hi], out_s[lo:hi], num_dst, indptr, idx)
            order = np.argsort(out_l[lo:hi], kind="stable")
            assert np.array_equal(idx, out_s[lo:hi][order])
            kept = np.empty(num_dst, np.int64)
            sort_segments(indptr, idx, True, kept)
            stored = compact_segments_inplace(indptr, idx, kept)
            u_ptr, u_idx = reference_csr(s, d, n, undirected)
            seg = slice(u_ptr[bounds[r]], u_ptr[bounds[r + 1]])
            assert np.array_equal(idx[:stored], u_idx[seg])
            assert np.array_equal(indptr, u_ptr[bounds[r]:bounds[r + 1] + 1] - u_ptr[bounds[r]])


# --- inputs --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(7)
    src, dst = rng.integers(0, N, E), rng.integers(0, N, E)
    src[:40], dst[:40] = src[40:80], dst[40:80]  # duplicates
    dst[80:90] = src[80:90]  # self-loops
    feat = rng.standard_normal((N, F)).astype(np.float32)
    label = rng.integers(0, C, N)
    label[::17] = -1
    labelled = np.flatnonzero(label >= 0)
    perm = rng.permutation(labelled)
    return dict(src=src, dst=dst, feat=feat, label=label,
                train_idx=np.sort(perm[:60]), val_idx=perm[60:80], test_idx=perm[80:101])


def write_npz(path, g, compressed=False, **override):
    arrays = dict(edge_index=np.stack([g["src"], g["dst"]]), feat=g["feat"], label=g["label"],
                  train_idx=g["train_idx"], val_idx=g["val_idx"], test_idx=g["test_idx"])
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def write_edgelist(path, g, sep=" ", header=None, extra=""):
    lines = [header] if header else []
    lines += ["# made by test_ingest", "% a matrix-market style comment"]
    lines += [f"{a}{sep}{b}{extra}" for a, b in zip(g["src"], g["dst"])]
    path.write_text("\n".join(lines) + "\n")
    return path


def edgelist_inputs(tmp_path, g, **kw):
    np.save(tmp_path / "feat.npy", g["feat"])
    np.save(tmp_path / "label.npy", g["label"])
    np.savez(tmp_path / "splits.npz", train_idx=g["train_idx"], val_idx=g["val_idx"], test_idx=g["test_idx"])
    edges = write_edgelist(tmp_path / "edges.txt", g, **kw)
    return dict(format="edgelist", input=str(edges), features=str(tmp_path / "feat.npy"),
                labels=str(tmp_path / "label.npy"), splits=str(tmp_path / "splits.npz"))


def assert_matches(ds, g, undirected=False, drop_self_loops=True, drop_duplicates=True, dtype="fp32"):
    verify_dataset(ds)
    indptr, indices = reference_csr(g["src"], g["dst"], N, undirected, drop_self_loops, drop_duplicates)
    assert np.array_equal(np.asarray(ds.indptr), indptr)
    assert np.array_equal(np.asarray(ds.indices), indices)
    assert ds.indices.dtype == np.int32
    assert np.array_equal(np.asarray(ds.features), convert_features(g["feat"], dtype))
    assert np.array_equal(np.asarray(ds.labels), g["label"])
    assert ds.num_classes == C and ds.feat_dtype == dtype
    for s in ("train", "val", "test"):
        assert np.array_equal(np.asarray(ds.split(s)), g[f"{s}_idx"])


def assert_no_dataset(out):
    assert not (out / "manifest.json").exists()
    assert not (out / ingest.SCRATCH).exists()
    if out.exists():
        assert not any(p.suffix == ".bin" for p in out.iterdir())


# --- the formats --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["npz", "npz-compressed", "npy-dir"])
def test_npz_layouts(tmp_path, graph, layout):
    if layout == "npy-dir":
        src = tmp_path / "arrays"
        src.mkdir()
        for k, v in dict(edge_index=np.stack([graph["src"], graph["dst"]]), feat=graph["feat"],
                         label=graph["label"], train_idx=graph["train_idx"], val_idx=graph["val_idx"],
                         test_idx=graph["test_idx"]).items():
            np.save(src / f"{k}.npy", v)
    else:
        src = write_npz(tmp_path / "g.npz", graph, compressed=layout == "npz-compressed")
    ds = prepare(PrepareConfig(format="npz", input=src), tmp_path / "out")  # a Path works as well as a str
    assert_matches(ds, graph)
    assert ds.manifest["config"]["input"] == str(src)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["manifest.json", "indptr.bin", "indices.bin", "features.bin", "labels.bin", "train_idx.bin",
         "val_idx.bin", "test_idx.bin"])
    assert ds.manifest["source"]["format"] == "npz"
    assert ds.manifest["stats"]["self_loops"] == int((graph["src"] == graph["dst"]).sum()) >= 10


def test_fortran_ordered_arrays(tmp_path, graph):
    src = tmp_path / "arrays"
    src.mkdir()
    np.save(src / "edge_index.npy", np.asfortranarray(np.stack([graph["src"], graph["dst"]])))
    np.save(src / "feat.npy", np.asfortranarray(graph["feat"]))
    for k in ("label", "train_idx", "val_idx", "test_idx"):
        np.save(src / f"{k}.npy", graph[k])
    assert np.load(src / "feat.npy", mmap_mode="r").flags.f_contiguous
    assert_matches(prepare(PrepareConfig(format="npz", input=str(src)), tmp_path / "out"), graph)


@pytest.mark.parametrize("undirected,loops,dups", [(True, True, True), (False, False, True), (False, True, False),
                                                   (True, False, False)])
def test_edge_options(tmp_path, graph, undirected, loops, dups):
    cfg = PrepareConfig(format="npz", input=str(write_npz(tmp_path / "g.npz", graph)), undirected=undirected,
                        drop_self_loops=loops, drop_duplicates=dups)
    assert_matches(prepare(cfg, tmp_path / "out"), graph, undirected, loops, dups)


def small_chunks(monkeypatch, edges=97):
    real_plan = ingest._plan
    monkeypatch.setattr(ingest, "_plan", lambda *a: dataclasses.replace(real_plan(*a), chunk_edges=edges,
                                                                        feature_chunk_bytes=4096))


@pytest.mark.parametrize("undirected", [False, True])
def test_external_sort_gives_identical_files(tmp_path, graph, monkeypatch, undirected):
    """Many destination ranges and small input chunks (the out-of-memory path) change nothing."""
    cfg = PrepareConfig(undirected=undirected, **edgelist_inputs(tmp_path, graph))
    whole = prepare(cfg, tmp_path / "whole")
    small_chunks(monkeypatch)
    split = prepare(cfg, tmp_path / "split", max_range_edges=101)
    assert split.manifest["stats"]["destination_ranges"] > 10
    assert_matches(split, graph, undirected)
    for name in ("indptr", "indices", "features"):
        assert (tmp_path / "whole" / f"{name}.bin").read_bytes() == (tmp_path / "split" / f"{name}.bin").read_bytes()
    assert whole.fingerprint == split.fingerprint


@pytest.mark.parametrize("sep,header,extra", [(" ", None, ""), (",", "src,dst", ""), ("\t", "# src dst", " 0.5"),
                                              (" , ", "source target weight", " 1.0")])
def test_edgelist_variants(tmp_path, graph, sep, header, extra):
    cfg = PrepareConfig(**edgelist_inputs(tmp_path, graph, sep=sep, header=header, extra=extra))
    assert_matches(prepare(cfg, tmp_path / "out"), graph)


def test_edgelist_crlf_and_no_final_newline(tmp_path, graph):
    inputs = edgelist_inputs(tmp_path, graph)
    text = "\r\n".join(f"{a} {b}" for a, b in zip(graph["src"], graph["dst"]))
    (tmp_path / "edges.txt").write_bytes(text.encode())
    assert_matches(prepare(PrepareConfig(**inputs), tmp_path / "out"), graph)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_feature_dtype_conversion(tmp_path, graph, dtype):
    cfg = PrepareConfig(format="npz", input=str(write_npz(tmp_path / "g.npz", graph)), dtype=dtype)
    ds = prepare(cfg, tmp_path / "out")
    assert_matches(ds, graph, dtype=dtype)
    assert ds.features.dtype.itemsize == 2


def test_float64_features_become_fp32(tmp_path, graph):
    src = write_npz(tmp_path / "g.npz", graph, feat=graph["feat"].astype(np.float64))
    ds = prepare(PrepareConfig(format="npz", input=str(src)), tmp_path / "out")
    assert ds.feat_dtype == "fp32" and np.array_equal(np.asarray(ds.features), graph["feat"])


def write_ogb(root, g, splits=("time",), label_nan=True):
    raw = root / "raw"
    raw.mkdir(parents=True)

    def gz(path, lines):
        with gzip.open(path, "wt") as f:
            f.write("\n".join(lines) + "\n")
    gz(raw / "edge.csv.gz", [f"{a},{b}" for a, b in zip(g["src"], g["dst"])])
    gz(raw / "num-node-list.csv.gz", [str(N)])
    gz(raw / "num-edge-list.csv.gz", [str(E)])
    gz(raw / "node-feat.csv.gz", [",".join(repr(float(v)) for v in row) for row in g["feat"]])
    gz(raw / "node-label.csv.gz", ["nan" if (v < 0 and label_nan) else f"{float(v)}" for v in g["label"]])
    for name in splits:
        d = root / "split" / name
        d.mkdir(parents=True)
        for part, key in (("train", "train_idx"), ("valid", "val_idx"), ("test", "test_idx")):
            gz(d / f"{part}.csv.gz", [str(v) for v in g[key]])
    return root


def test_ogb_raw_directory(tmp_path, graph):
    root = write_ogb(tmp_path / "ogbn_fake", graph)
    ds = prepare(PrepareConfig(format="ogb", input=str(root)), tmp_path / "out")
    assert_matches(ds, graph)
    assert ds.manifest["source"]["format"] == "ogb"


def test_ogb_several_splits_need_a_name(tmp_path, graph):
    root = write_ogb(tmp_path / "ogbn_fake", graph, splits=("time", "random"))
    with pytest.raises(ConfigError, match="--dataset-name"):
        prepare(PrepareConfig(format="ogb", input=str(root)), tmp_path / "out")
    assert_no_dataset(tmp_path / "out")
    ds = prepare(PrepareConfig(format="ogb", input=str(root), split_name="random"), tmp_path / "out")
    assert np.array_equal(np.asarray(ds.split("val")), graph["val_idx"])


@requires_dgl
def test_dgl_graph_file(tmp_path, graph):
    import dgl
    import torch
    g = dgl.graph((torch.from_numpy(graph["src"]), torch.from_numpy(graph["dst"])), num_nodes=N)
    g.ndata["feat"] = torch.from_numpy(graph["feat"])
    g.ndata["label"] = torch.from_numpy(graph["label"])
    for s in ("train", "val", "test"):
        mask = torch.zeros(N, dtype=torch.bool)
        mask[torch.from_numpy(graph[f"{s}_idx"])] = True
        g.ndata[f"{s}_mask"] = mask
    dgl.save_graphs(str(tmp_path / "g.bin"), [g])
    ds = prepare(PrepareConfig(format="dgl", input=str(tmp_path / "g.bin")), tmp_path / "out")
    sorted_graph = dict(graph, val_idx=np.sort(graph["val_idx"]), test_idx=np.sort(graph["test_idx"]))
    assert_matches(ds, sorted_graph)


@pytest.mark.skipif(HAS_DGL, reason="checks the message shown when DGL is absent")
def test_dgl_format_without_dgl_says_how_to_install(tmp_path):
    (tmp_path / "g.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"diskgnn\[dgl\]"):
        prepare(PrepareConfig(format="dgl", input=str(tmp_path / "g.bin")), tmp_path / "out")


def test_cli_prepare(tmp_path, graph, capsys):
    inputs = edgelist_inputs(tmp_path, graph)
    rc = main(["prepare", inputs["input"], "--format", "edgelist", "--out", str(tmp_path / "out"),
               "--features", inputs["features"], "--labels", inputs["labels"], "--splits", inputs["splits"],
               "--memory-budget", "64M", "--dtype", "fp16"])
    assert rc == 0
    assert f"nodes: {N}" in capsys.readouterr().out
    ds = Dataset.open(tmp_path / "out")
    assert_matches(ds, graph, dtype="fp16")
    assert ds.manifest["config"]["memory_budget_bytes"] == 64 << 20


# --- bad input -------------------------------------------------------------------------------------------------

def run_bad(tmp_path, cfg_kwargs, exc, match, **prepare_kw):
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        prepare(PrepareConfig(**cfg_kwargs), out, **prepare_kw)
    assert_no_dataset(out)
    return out


def test_missing_files(tmp_path, graph):
    inputs = edgelist_inputs(tmp_path, graph)
    run_bad(tmp_path, dict(inputs, input=str(tmp_path / "nope.txt")), InputNotFoundError, "nope.txt does not exist")
    run_bad(tmp_path, dict(inputs, features=str(tmp_path / "nofeat.npy")), InputNotFoundError, "nofeat.npy")
    run_bad(tmp_path, dict(inputs, features=None), ConfigError, "needs --features")
    src = write_npz(tmp_path / "g.npz", graph, feat=None)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputNotFoundError, r"'feat'.*missing")
    run_bad(tmp_path, dict(format="ogb", input=str(tmp_path)), InputNotFoundError, "raw")


def test_truncated_features_file(tmp_path, graph):
    inputs = edgelist_inputs(tmp_path, graph)
    path = tmp_path / "feat.npy"
    path.write_bytes(path.read_bytes()[:-100])
    run_bad(tmp_path, inputs, InputFormatError, r"feat.npy is truncated.*copy it again")


def test_truncated_ogb_features(tmp_path, graph):
    root = write_ogb(tmp_path / "ogbn_fake", graph)
    with gzip.open(root / "raw" / "node-feat.csv.gz", "wt") as f:
        f.write("\n".join(",".join(map(str, row)) for row in graph["feat"][:N - 3]) + "\n")
    run_bad(tmp_path, dict(format="ogb", input=str(root)), InputFormatError, r"node-feat.csv.gz is truncated")


def test_row_count_mismatch(tmp_path, graph):
    inputs = edgelist_inputs(tmp_path, graph)
    np.save(tmp_path / "label.npy", graph["label"][:-1])
    run_bad(tmp_path, inputs, MismatchError, rf"label.npy has {N - 1} labels but the graph has {N} nodes")
    np.save(tmp_path / "label.npy", graph["label"])
    run_bad(tmp_path, dict(inputs, num_nodes=N + 5), MismatchError, rf"--num-nodes {N + 5}.*feat.npy")


@pytest.mark.parametrize("bad_line,match", [
    (f"3 {N}", rf"line 5: edge \(3, {N}\) has destination node {N}, which is >= {N}"),
    ("-1 4", r"line 5: '-1' is a negative node id"),
    ("2.0 4", r"line 5: '2.0' is not a non-negative integer"),
    ("12", r"line 5: has only one column"),
])
def test_bad_edge_lines(tmp_path, graph, bad_line, match):
    inputs = edgelist_inputs(tmp_path, graph)
    lines = (tmp_path / "edges.txt").read_text().split("\n")
    lines.insert(4, bad_line)  # line 5 of the file (after 2 comments and 2 edges)
    (tmp_path / "edges.txt").write_text("\n".join(lines))
    out = run_bad(tmp_path, inputs, InputFormatError, "edges.txt, " + match)
    assert out.exists()  # the run started writing, then cleaned up


def test_bad_edge_line_far_into_the_file(tmp_path, graph, monkeypatch):
    """Line numbers stay right across the parser's blocks (small blocks force many)."""
    small_chunks(monkeypatch)
    inputs = edgelist_inputs(tmp_path, graph)
    lines = (tmp_path / "edges.txt").read_text().split("\n")
    lines[1499] = f"{N + 7} 1"
    (tmp_path / "edges.txt").write_text("\n".join(lines))
    run_bad(tmp_path, inputs, InputFormatError, rf"edges.txt, line 1500: edge \({N + 7}, 1\) has source node")
    lines[1499] = "1 2"
    lines[1799] = "1 2 # trailing\t-5"
    lines[1800] = "4 x5"
    (tmp_path / "edges.txt").write_text("\n".join(lines))
    run_bad(tmp_path, inputs, InputFormatError, r"edges.txt, line 1801: 'x5' is not a non-negative integer")


def test_bad_edge_ids_in_arrays(tmp_path, graph):
    ei = np.stack([graph["src"], graph["dst"]])
    ei[0, 123] = -4
    src = write_npz(tmp_path / "g.npz", graph, edge_index=ei)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"column 123: edge \(-4, .*negative")
    src = write_npz(tmp_path / "g.npz", graph, edge_index=ei.astype(np.float64))
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"dtype float64; node ids must be integers")
    src = write_npz(tmp_path / "g.npz", graph, edge_index=np.stack([graph["src"], graph["dst"]], 1))
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"2 x E.*transposed")


def test_nonfinite_features(tmp_path, graph):
    feat = graph["feat"].copy()
    feat[200, 3] = np.nan
    feat[250, 0] = np.inf
    src = write_npz(tmp_path / "g.npz", graph, feat=feat)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError,
            r"row 200 holds NaN or inf.*--allow-nonfinite")
    ds = prepare(PrepareConfig(format="npz", input=str(src), allow_nonfinite=True), tmp_path / "out")
    verify_dataset(ds)
    assert np.isnan(ds.features[200, 3]) and ds.manifest["stats"]["nonfinite_feature_rows"] == 2


def test_fp16_overflow_is_refused(tmp_path, graph):
    feat = graph["feat"].copy()
    feat[9, 1] = 1e6
    src = write_npz(tmp_path / "g.npz", graph, feat=feat)
    run_bad(tmp_path, dict(format="npz", input=str(src), dtype="fp16"), InputFormatError, r"row 9 .*fp16 range")


def test_wrong_feature_and_label_dtypes(tmp_path, graph):
    src = write_npz(tmp_path / "g.npz", graph, feat=(graph["feat"] * 10).astype(np.int64))
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"'feat'.*dtype int64; features must be float")
    src = write_npz(tmp_path / "g.npz", graph, label=graph["label"] + 0.5)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"not a whole number")


def test_labels_out_of_range(tmp_path, graph):
    label = graph["label"].copy()
    label[77] = -3
    src = write_npz(tmp_path / "g.npz", graph, label=label)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"node 77 has label -3, out of range")
    label[77] = 1 << 20
    src = write_npz(tmp_path / "g.npz", graph, label=label)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, r"node 77 has label 1048576")


def test_bad_splits(tmp_path, graph):
    val = graph["val_idx"].copy()
    val[3] = graph["train_idx"][5]
    src = write_npz(tmp_path / "g.npz", graph, val_idx=val)
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError,
            rf"splits overlap: node {val[3]} is in train .* and in val")
    src = write_npz(tmp_path / "g.npz", graph, test_idx=np.array([0, N]))
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, rf"'test_idx'.*node {N}, outside")
    unlabelled = int(np.flatnonzero(graph["label"] < 0)[0])
    src = write_npz(tmp_path / "g.npz", graph, test_idx=np.array([unlabelled]))
    run_bad(tmp_path, dict(format="npz", input=str(src)), InputFormatError, "has no label")


def test_output_path_is_a_file(tmp_path, graph):
    src = write_npz(tmp_path / "g.npz", graph)
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        prepare(PrepareConfig(format="npz", input=str(src)), tmp_path / "out")
    assert (tmp_path / "out").read_text() == "not a directory"


def test_output_may_not_hold_the_input(tmp_path, graph):
    inputs = edgelist_inputs(tmp_path, graph)
    with pytest.raises(ConfigError, match="would delete it"):
        prepare(PrepareConfig(**inputs), tmp_path, overwrite=True)
    assert (tmp_path / "edges.txt").exists() and (tmp_path / "feat.npy").exists()


def test_output_holds_another_dataset(tmp_path, graph, tiny_dataset):
    import shutil
    src = write_npz(tmp_path / "g.npz", graph)
    out = tmp_path / "out"
    shutil.copytree(tiny_dataset.path, out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(PrepareConfig(format="npz", input=str(src)), out)
    assert Dataset.open(out).num_nodes == tiny_dataset.num_nodes  # untouched
    assert_matches(prepare(PrepareConfig(format="npz", input=str(src)), out, overwrite=True), graph)


def test_disk_full_while_writing(tmp_path, graph, monkeypatch):
    from diskgnn import manifest
    src = write_npz(tmp_path / "g.npz", graph)
    real_init = manifest.Crc32Writer.__init__

    class FullFile:
        """A file whose writes fail as on a full disk."""
        def __init__(self, f):
            self.f, self.closed = f, False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()
            self.closed = True

    def init(self, path):
        real_init(self, path)
        if self.path.name == "features.bin":
            self._f = FullFile(self._f)
    monkeypatch.setattr(manifest.Crc32Writer, "__init__", init)
    run_bad(tmp_path, dict(format="npz", input=str(src)), DiskFullError, r"is full.*choose another --out")


def test_disk_full_on_a_small_tmpfs(tmp_path, graph):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = write_npz(tmp_path / "g.npz", graph)  # ~20 KB of edges, features and scratch do not fit
        run_bad(mnt, dict(format="npz", input=str(src)), DiskFullError, "is full")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_bad_config():
    with pytest.raises(ConfigError, match="--format"):
        PrepareConfig(format="csv", input="x")
    with pytest.raises(ConfigError, match="--dtype"):
        PrepareConfig(format="npz", input="x", dtype="int8")
    with pytest.raises(ConfigError, match="memory-budget"):
        PrepareConfig(format="npz", input="x", memory_budget="1M")
    with pytest.raises(ConfigError, match="only applies to --format edgelist"):
        PrepareConfig(format="npz", input="x", features="f.npy")


def test_cli_bad_input_exits_nonzero(tmp_path, graph, capsys):
    inputs = edgelist_inputs(tmp_path, graph)
    np.save(tmp_path / "label.npy", graph["label"][:7])
    rc = main(["prepare", inputs["input"], "--format", "edgelist", "--out", str(tmp_path / "out"), "-q",
               "--features", inputs["features"], "--labels", inputs["labels"]])
    err = capsys.readouterr().err
    assert rc == 2 and "label.npy has 7 labels" in err and "Traceback" not in err
