"""Speed and peak memory of ``diskgnn prepare --format edgelist`` on a large text edge list.

Turns an existing dataset (default ``/work/data/m``: 8M nodes, ~127M edges,
128-d fp32) into what a user brings: a text edge list with one ``src dst``
line per edge in random order (written from the dataset's in-edge CSR),
features as ``.npy``, labels as ``.npy`` and splits as ``.npz``. Then it runs

    diskgnn prepare EDGES --format edgelist --features F.npy --labels L.npy --splits S.npz
                    --memory-budget 2G --out OUT

in a fresh process under ``/usr/bin/time -v`` (peak RSS, wall time), checks that
the imported CSR equals the source CSR without its self-loops and that the
features are byte-identical, and writes one JSON object. Generated files are
deleted afterwards unless ``--keep``.

    python -m diskgnn.bench.prepare [--dataset /work/data/m] [--workdir /work/data/prepare-bench]
        [--memory-budget 2G] [--feature-dim K] [--keep] [--out bench/results/prepare.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from diskgnn.bench.harness import git_commit


def write_inputs(ds, work: Path, feature_dim: int | None, seed: int = 0, chunk: int = 1 << 22) -> dict:
    """Write the text edge list (random line order), features .npy, labels .npy, splits .npz."""
    from diskgnn.kernels.parse import format_edge_lines
    t0 = time.perf_counter()
    n, e = ds.num_nodes, ds.num_edges
    indptr = np.asarray(ds.indptr)
    dst = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr).astype(np.int64))
    src = np.asarray(ds.indices, dtype=np.int32)
    order = np.random.default_rng(seed).permutation(e)
    buf = np.empty(40 * chunk, dtype=np.uint8)
    edges_path = work / "edges.txt"
    with open(edges_path, "wb") as f:
        f.write(b"# src dst, one edge per line, made by diskgnn.bench.prepare\n")
        for lo in range(0, e, chunk):
            sel = order[lo:lo + chunk]
            k = format_edge_lines(src[sel], dst[sel], buf)
            f.write(memoryview(buf)[:k])
    del dst, src, order, buf
    t_edges = time.perf_counter()
    dim = ds.feat_dim if feature_dim is None else min(feature_dim, ds.feat_dim)
    feats = ds.features
    feat_path = work / "feat.npy"
    with open(feat_path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(feats.dtype),
                                                 "fortran_order": False, "shape": (n, dim)})
        rows = max(1, (64 << 20) // (ds.row_bytes))
        for lo in range(0, n, rows):
            f.write(np.ascontiguousarray(feats[lo:lo + rows, :dim]).tobytes())
    np.save(work / "label.npy", np.asarray(ds.labels))
    np.savez(work / "splits.npz", train_idx=ds.split("train"), val_idx=ds.split("val"), test_idx=ds.split("test"))
    return {"edges": str(edges_path), "features": str(feat_path), "labels": str(work / "label.npy"),
            "splits": str(work / "splits.npz"), "text_bytes": edges_path.stat().st_size, "feature_dim": dim,
            "edges_seconds": round(t_edges - t0, 1), "write_seconds": round(time.perf_counter() - t0, 1)}


def _time_v(stderr: str) -> dict:
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", stderr)
    seconds = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    user = re.search(r"User time \(seconds\): ([\d.]+)", stderr)
    sys_t = re.search(r"System time \(seconds\): ([\d.]+)", stderr)
    return {"peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None, "wall_s": seconds,
            "user_s": float(user.group(1)) if user else None, "sys_s": float(sys_t.group(1)) if sys_t else None}


def check_output(src_ds, out_ds, feature_dim: int, chunk: int = 1 << 20) -> dict:
    """Compare the imported dataset with the source (self-loops dropped), chunk by chunk."""
    n = src_ds.num_nodes
    s_ptr, o_ptr = src_ds.indptr, out_ds.indptr
    loops = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        ptr = np.asarray(s_ptr[lo:hi + 1])
        idx = np.asarray(src_ds.indices[ptr[0]:ptr[-1]])
        dst = np.repeat(np.arange(lo, hi), np.diff(ptr))
        keep = idx != dst
        loops += int((~keep).sum())
        want_ptr = np.concatenate([[0], np.cumsum(np.add.reduceat(keep, ptr[:-1] - ptr[0])
                                                  if idx.size else np.zeros(hi - lo, np.int64))])
        optr = np.asarray(o_ptr[lo:hi + 1])
        if not np.array_equal(optr - optr[0], want_ptr[:hi - lo + 1]):
            return {"identical": False, "first_bad_chunk": lo}
        if not np.array_equal(np.asarray(out_ds.indices[optr[0]:optr[-1]]), idx[keep]):
            return {"identical": False, "first_bad_chunk": lo}
    rows = max(1, (64 << 20) // src_ds.row_bytes)
    for lo in range(0, n, rows):
        if not np.array_equal(np.asarray(out_ds.features[lo:lo + rows]),
                              np.asarray(src_ds.features[lo:lo + rows, :feature_dim])):
            return {"identical": False, "features_differ_from_row": lo}
    return {"identical": True, "self_loops_dropped": loops}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="/work/data/m")
    p.add_argument("--workdir", default=None, help="where inputs and output go (default: DATASET.prepare-bench)")
    p.add_argument("--memory-budget", default="2G")
    p.add_argument("--feature-dim", type=int, default=None, help="write only the first K feature columns")
    p.add_argument("--keep", action="store_true", help="keep the generated inputs and output")
    p.add_argument("--out", default=None, help="result JSON path")
    args = p.parse_args(argv)

    from diskgnn.dataset import Dataset
    from diskgnn.sizes import parse_size
    src_ds = Dataset.open(args.dataset)
    work = Path(args.workdir or f"{args.dataset.rstrip('/')}.prepare-bench")
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    try:
        inputs = write_inputs(src_ds, work, args.feature_dim)
        exe = Path(sys.executable).parent / "diskgnn"
        cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "diskgnn.tools.cli"]) + [
            "prepare", inputs["edges"], "--format", "edgelist", "--features", inputs["features"],
            "--labels", inputs["labels"], "--splits", inputs["splits"], "--memory-budget", args.memory_budget,
            "--out", str(out), "--overwrite", "-q"]
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        measured = _time_v(proc.stderr)
        out_ds = Dataset.open(out)
        check = check_output(src_ds, out_ds, inputs["feature_dim"])
        budget = parse_size(args.memory_budget)
        result = {
            "bench": "prepare", "commit": git_commit(), "command": " ".join(cmd),
            "machine": {"cores": os.cpu_count(), "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                        "python": platform.python_version()},
            "dataset": str(args.dataset), "nodes": src_ds.num_nodes, "input_edges": src_ds.num_edges,
            "text_bytes": inputs["text_bytes"], "feature_dim": inputs["feature_dim"],
            "feature_bytes": out_ds.feature_bytes, "memory_budget_bytes": budget,
            "rss_limit_bytes": budget + (1 << 30), **measured,
            "within_limit": measured["peak_rss_bytes"] is not None and measured["peak_rss_bytes"] < budget + (1 << 30),
            "edges_per_s": round(src_ds.num_edges / measured["wall_s"]) if measured["wall_s"] else None,
            "stats": out_ds.manifest.get("stats"), "check": check, "input_generation": inputs,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if check.get("identical") and result["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
