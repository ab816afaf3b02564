"""Sampling throughput: diskgnn's sampler against DGL's, side by side in one run.

Both sample the same minibatches (the seeds of the first training epoch, in the
same order) with the same fanouts over the same in-edge CSR, end to end: DGL
runs ``dgl.sampling.sample_neighbors`` + ``dgl.to_block`` per layer (what its
NeighborSampler does) on an int64 graph; diskgnn runs its kernels including
relabelling and block construction. Each system runs in its own fresh process
(so numba's and DGL's OpenMP threads do not spin against each other), the
processes alternate between the systems, and the median pass time over all
repeats is reported with the raw times, as sampled edges per second.

    python -m diskgnn.bench.sampling --dataset DIR [--fanouts 10,15] [--batch-size 1024]
        [--batches 200] [--repeats 3] [--passes 3] [--threads 2] [--out FILE.json]
    python -m diskgnn.bench.sampling --task link --dataset LINK_DIR [--negatives 1] [--negative-sampler uniform]

With ``--task link`` both sample link batches of the first training epoch's
positive edges: diskgnn's presampler (negatives, endpoint seeds, the batch's
edges excluded during sampling) against DGL's ``as_edge_prediction_sampler``
with the same fanouts, negatives and exclusion (:mod:`diskgnn.bench.dgl_link`);
sampled edges count every block edge plus the negative edges drawn.

Without ``--dataset`` a dataset of ``--scale`` is generated in a temporary
directory and removed afterwards. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diskgnn.bench.harness import git_commit


def _batches(seeds: np.ndarray, batch_size: int, limit: int | None) -> list[np.ndarray]:
    out = [seeds[i:i + batch_size] for i in range(0, seeds.shape[0], batch_size)]
    return out[:limit] if limit else out


def run_diskgnn(sampler, cfg, batches) -> tuple[float, int]:
    """Seconds and sampled edges for sampling every batch with diskgnn's kernels (MiniBatch objects included)."""
    from diskgnn.keys import batch_key
    edges = 0
    t0 = time.perf_counter()
    for i, seeds in enumerate(batches):
        mb = sampler.sample(seeds, batch_key(cfg.seed, "train/0", i), part="train/0", index=i, check=False)
        edges += mb.num_edges
    return time.perf_counter() - t0, edges


def dgl_graph(indptr: np.ndarray, indices: np.ndarray):
    """An int64 DGL graph whose in-edges are the dataset's CSR (CSC in DGL's terms)."""
    import dgl
    import torch
    ptr = torch.from_numpy(np.asarray(indptr, dtype=np.int64))
    idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    g = dgl.graph(("csc", (ptr, idx, torch.empty(0, dtype=torch.int64))), idtype=torch.int64)
    return g.formats(["csc"])


def run_dgl(g, fanouts, batches) -> tuple[float, int]:
    """Seconds and sampled edges for DGL's sample_neighbors + to_block per layer, seeds layer first."""
    import dgl
    import torch
    torch_batches = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.int64)) for b in batches]
    edges = 0
    t0 = time.perf_counter()
    for seeds in torch_batches:
        nodes = seeds
        for fanout in reversed(fanouts):
            frontier = dgl.sampling.sample_neighbors(g, nodes, fanout, replace=False)
            block = dgl.to_block(frontier, nodes)
            nodes = block.srcdata[dgl.NID]
            edges += block.num_edges()
    return time.perf_counter() - t0, edges


def run_diskgnn_link(sampler, cfg, batches) -> tuple[float, int]:
    """Seconds and sampled edges (block edges plus the negative edges drawn) of diskgnn's link batches."""
    from diskgnn.keys import batch_key
    from diskgnn.sampling import _make_batch
    edges = 0
    t0 = time.perf_counter()
    for i, pos in enumerate(batches):
        raw = sampler.sample_raw(pos, None, batch_key(cfg.seed, "train/0", i), exclude=True)
        mb = _make_batch("train/0", i, *raw)
        edges += mb.num_edges + mb.pairs.shape[0] * cfg.negatives
    return time.perf_counter() - t0, edges


def run_dgl_link(g, sampler, batches) -> tuple[float, int]:
    """Seconds and sampled edges of DGL's edge-prediction sampler (block edges plus negative edges)."""
    import torch
    torch_batches = [torch.from_numpy(b) for b in batches]
    edges = 0
    t0 = time.perf_counter()
    for eids in torch_batches:
        _, _, neg_graph, blocks = sampler.sample(g, eids)
        edges += sum(int(b.num_edges()) for b in blocks) + int(neg_graph.num_edges())
    return time.perf_counter() - t0, edges


def _link_worker(system: str, ds, cfg, batches, info: dict):
    """The timed function of one system sampling link batches (the first training epoch's positive edges)."""
    from diskgnn.link import LinkSampler, link_part_edges
    from diskgnn.sampling import Sampler
    edges, _ = link_part_edges(ds, cfg, "train/0")
    work = _batches(edges, cfg.batch_size, batches)
    info["positive_edges"] = int(sum(b.shape[0] for b in work))
    t0 = time.perf_counter()
    base = Sampler(ds, cfg.fanouts, mmap_topology="no")
    info["topology_load_seconds"] = round(time.perf_counter() - t0, 3)
    if system == "diskgnn":
        sampler = LinkSampler(base, cfg, ds)
        run_diskgnn_link(sampler, cfg, work[:1])
        return lambda: run_diskgnn_link(sampler, cfg, work), work
    import dgl
    import torch
    from diskgnn.bench.dgl_link import dgl_graph as link_graph, edge_ids, edge_sampler
    torch.set_num_threads(info["threads"])
    t0 = time.perf_counter()
    g = link_graph(ds)  # every sparse format: the edge-prediction sampler takes edge subgraphs
    eid_batches = [edge_ids(ds, b) for b in work]
    info.update(graph_build_seconds=round(time.perf_counter() - t0, 3), dgl_version=dgl.__version__,
                torch_version=torch.__version__)
    sampler = edge_sampler(ds, cfg.fanouts, cfg.negatives, cfg.negative_sampler)
    dgl.seed(cfg.seed)
    run_dgl_link(g, sampler, eid_batches[:1])
    return lambda: run_dgl_link(g, sampler, eid_batches), work


def _worker(system: str, dataset_dir, cfg, batches, passes: int, threads: int) -> dict:
    """Load one system, warm it up, then time ``passes`` passes over ``batches`` (runs in its own process)."""
    import numba
    from diskgnn.dataset import Dataset
    from diskgnn.sampling import Sampler, part_seeds
    numba.set_num_threads(threads)
    ds = Dataset.open(dataset_dir)
    if cfg.is_link:
        if system not in ("diskgnn", "dgl"):
            raise SystemExit(f"unknown system {system!r}; choose diskgnn or dgl")
        info = {"threads": threads}
        fn, work = _link_worker(system, ds, cfg, batches, info)
        seconds = []
        for _ in range(passes):
            t, edges = fn()
            seconds.append(t)
        info.update(seconds=seconds, sampled_edges=int(edges), batches=len(work))
        return info
    work = _batches(part_seeds(ds, cfg, "train/0"), cfg.batch_size, batches)
    info = {}
    t0 = time.perf_counter()
    sampler = Sampler(ds, cfg.fanouts, mmap_topology="no")
    info["topology_load_seconds"] = round(time.perf_counter() - t0, 3)
    if system == "diskgnn":
        run_diskgnn(sampler, cfg, work[:1])  # warm-up (kernels compiled or loaded from cache)
        fn = lambda: run_diskgnn(sampler, cfg, work)  # noqa: E731
    elif system == "dgl":
        import dgl
        import torch
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        g = dgl_graph(sampler.indptr, sampler.indices)
        info.update(graph_build_seconds=round(time.perf_counter() - t0, 3), dgl_version=dgl.__version__,
                    torch_version=torch.__version__)
        dgl.seed(cfg.seed)
        run_dgl(g, cfg.fanouts, work[:1])
        fn = lambda: run_dgl(g, cfg.fanouts, work)  # noqa: E731
    else:
        raise SystemExit(f"unknown system {system!r}; choose diskgnn or dgl")
    seconds = []
    for _ in range(passes):
        t, edges = fn()
        seconds.append(t)
    info.update(seconds=seconds, sampled_edges=int(edges), batches=len(work),
                seeds=int(sum(b.shape[0] for b in work)))
    return info


def bench(dataset_dir, *, fanouts=(10, 15), batch_size=1024, batches=None, repeats=3, passes=3, threads=None,
          systems=("diskgnn", "dgl"), seed=0, task="node", negatives=None, negative_sampler=None) -> dict:
    """Run each system ``repeats`` times, alternating, each time in a fresh process doing ``passes`` timed passes.

    Separate processes keep the two OpenMP runtimes (numba's, DGL's) from
    spinning against each other on the same cores.
    """
    import numba
    from diskgnn.dataset import Dataset
    from diskgnn.sampling import SampleConfig
    ds = Dataset.open(dataset_dir)
    cfg = SampleConfig(fanouts=tuple(fanouts), batch_size=batch_size, seed=seed, task=task, negatives=negatives,
                       negative_sampler=negative_sampler)
    threads = threads or numba.config.NUMBA_NUM_THREADS
    result = {"bench": "sampling", "commit": git_commit(), "dataset": str(ds.path), "nodes": ds.num_nodes,
              "edges": ds.num_edges, "fanouts": list(cfg.fanouts), "batch_size": batch_size, "task": task,
              **({"negatives": cfg.negatives, "negative_sampler": cfg.negative_sampler,
                  "sampled_edges_counts": "block edges of every batch (the neighbourhoods of positive and negative "
                                          "endpoints) plus the negative edges drawn"} if cfg.is_link else {}),
              "repeats": repeats, "passes_per_repeat": passes, "threads": threads,
              "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "systems": {}}
    runs = {name: [] for name in systems}
    for _ in range(repeats):
        for name in systems:  # alternate so drifting machine load hits both alike
            cmd = [sys.executable, "-m", "diskgnn.bench.sampling", "--worker", name, "--dataset", str(ds.path),
                   "--fanouts", ",".join(map(str, cfg.fanouts)), "--batch-size", str(batch_size),
                   "--passes", str(passes), "--threads", str(threads), "--seed", str(seed), "--task", task]
            if cfg.is_link:
                cmd += ["--negatives", str(cfg.negatives), "--negative-sampler", cfg.negative_sampler]
            if batches:
                cmd += ["--batches", str(batches)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-4000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for name, infos in runs.items():
        seconds = [t for info in infos for t in info["seconds"]]
        med = statistics.median(seconds)
        edges = infos[0]["sampled_edges"]
        entry = {k: v for k, v in infos[0].items() if k not in ("seconds",)}
        entry.update(seconds=[round(t, 4) for t in seconds], median_seconds=round(med, 4),
                     edges_per_second=round(edges / med, 1))
        result["systems"][name] = entry
    if "diskgnn" in runs and "dgl" in runs:
        result["ratio_edges_per_second"] = round(result["systems"]["diskgnn"]["edges_per_second"]
                                                 / result["systems"]["dgl"]["edges_per_second"], 3)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.sampling", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None, help="dataset directory (default: generate --scale in a temp dir)")
    p.add_argument("--scale", default="s", choices=["tiny", "s", "m"])
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=None, help="batches per repeat (default: one whole epoch)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per system, alternating (default 3)")
    p.add_argument("--passes", type=int, default=3, help="timed passes per process (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help="threads for both systems (default: all)")
    p.add_argument("--systems", default="diskgnn,dgl")
    p.add_argument("--task", default="node", choices=["node", "link"],
                   help="link: sample link batches (positive edges, negatives, exclusion) against DGL's "
                        "as_edge_prediction_sampler; needs a link dataset (made with --task link when generated)")
    p.add_argument("--negatives", type=int, default=None, help="link: negatives per positive (default 1)")
    p.add_argument("--negative-sampler", default=None, choices=["uniform", "degree"])
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from diskgnn.sampling import SampleConfig, parse_fanouts
    fanouts = parse_fanouts(args.fanouts)
    link = dict(task=args.task, negatives=args.negatives, negative_sampler=args.negative_sampler)
    if args.worker:
        cfg = SampleConfig(fanouts=fanouts, batch_size=args.batch_size, seed=args.seed, **link)
        print(json.dumps(_worker(args.worker, args.dataset, cfg, args.batches, args.passes, args.threads)))
        return 0
    systems = tuple(s.strip() for s in args.systems.split(","))
    with tempfile.TemporaryDirectory(prefix="diskgnn-bench-sampling-") as tmp:
        dataset = args.dataset
        if dataset is None:
            from diskgnn.synth import scale_config, synthesize
            dataset = str(Path(tmp) / args.scale)
            synthesize(scale_config(args.scale, task=args.task), dataset)
        result = bench(dataset, fanouts=fanouts, batch_size=args.batch_size, batches=args.batches,
                       repeats=args.repeats, passes=args.passes, threads=args.threads, systems=systems,
                       seed=args.seed, **link)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
