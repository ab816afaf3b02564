"""One benchmarked system, run in its own process (and memory cgroup) by the harness.

Prints one line ``RESULT {json}`` with epoch times, per-stage busy/wait,
bytes read from disk (/proc/self/io), bytes useful, hit rates and peak RSS.

Systems (all on the same presampled minibatches, except dgl-online):
  in-memory       all features in RAM (the ceiling)
  mmap            numpy.memmap of features.bin, sorted row ids, MADV_RANDOM
  mmap-readahead  the same with the kernel's default readahead
  pread           per-row O_DIRECT reads of uncached rows, same memory tiers as diskgnn
  diskgnn         the packed extents through FeatureStore (read and assemble threads)
  dgl-online      DGL NeighborSampler + DataLoader over an int64 graph, memmap features
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import queue
import resource
import sys
import threading
import time

import numpy as np
import torch

from diskgnn.cgroup import self_io_bytes
from diskgnn.dataset import Dataset, bf16_bits_to_float32


class StageClock:
    """Busy seconds per named stage."""

    def __init__(self):
        self.busy: dict[str, float] = {}
        self.wait: dict[str, float] = {}

    def add(self, stage: str, busy: float = 0.0, wait: float = 0.0) -> None:
        self.busy[stage] = self.busy.get(stage, 0.0) + busy
        self.wait[stage] = self.wait.get(stage, 0.0) + wait

    def report(self) -> dict:
        return {s: {"busy_s": round(self.busy.get(s, 0.0), 4), "wait_s": round(self.wait.get(s, 0.0), 4)}
                for s in sorted(set(self.busy) | set(self.wait))}


def _as_float32(rows: np.ndarray, dtype_name: str) -> torch.Tensor:
    if dtype_name == "bf16":
        rows = bf16_bits_to_float32(rows)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


class MemoryGather:
    name = "in-memory"

    def __init__(self, ds: Dataset):
        self.dtype = ds.feat_dtype
        self.feats = np.fromfile(ds.features_path, dtype=ds.features.dtype).reshape(ds.num_nodes, ds.feat_dim)

    def __call__(self, ids: np.ndarray) -> torch.Tensor:
        return _as_float32(self.feats[ids], self.dtype)


class MmapGather:
    def __init__(self, ds: Dataset, random_advice: bool = True):
        self.name = "mmap" if random_advice else "mmap-readahead"
        self.dtype = ds.feat_dtype
        self.feats = np.memmap(ds.features_path, dtype=ds.features.dtype, mode="r",
                               shape=(ds.num_nodes, ds.feat_dim))
        if random_advice and hasattr(self.feats, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
            self.feats._mmap.madvise(mmap.MADV_RANDOM)

    def __call__(self, ids: np.ndarray) -> torch.Tensor:
        order = np.argsort(ids, kind="stable")
        rows = self.feats[ids[order]]  # sorted ids: page faults in file order
        out = np.empty_like(rows)
        out[order] = rows
        return _as_float32(out, self.dtype)


def _run_batches(batches, fetch, step, clock: StageClock, prefetch: bool):
    """Run one epoch: ``fetch(batch) -> x`` then ``step(batch, x)``; fetch in a thread when ``prefetch``."""
    if not prefetch:
        for b in batches:
            t0 = time.perf_counter()
            x = fetch(b)
            t1 = time.perf_counter()
            step(b, x)
            clock.add("fetch", busy=t1 - t0)
            clock.add("compute", busy=time.perf_counter() - t1)
        return
    q: queue.Queue = queue.Queue(maxsize=2)
    err = []

    def producer():
        try:
            for b in batches:
                t0 = time.perf_counter()
                x = fetch(b)
                t1 = time.perf_counter()
                q.put((b, x))
                clock.add("fetch", busy=t1 - t0, wait=time.perf_counter() - t1)
        except BaseException as exc:  # surfaced in the consumer
            err.append(exc)
        finally:
            q.put(None)

    th = threading.Thread(target=producer, daemon=True)
    th.start()
    while True:
        t0 = time.perf_counter()
        item = q.get()
        t1 = time.perf_counter()
        clock.add("compute", wait=t1 - t0)
        if item is None:
            break
        step(*item)
        clock.add("compute", busy=time.perf_counter() - t1)
    th.join()
    if err:
        raise err[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", required=True)
    p.add_argument("--kind", choices=["loader", "train"], default="loader")
    p.add_argument("--samples", required=True)
    p.add_argument("--packed", default=None, help="packed dir (diskgnn and pread systems)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=0, help="measure only this many batches per epoch (0 = all)")
    p.add_argument("--model", default="sage")
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from diskgnn.sampling import Samples
    samples = Samples.open(args.samples)
    ds = Dataset.open(samples.dataset_path)
    part = samples.train_parts[0]
    nb = samples.num_batches(part)
    measured = min(nb, args.max_batches) if args.max_batches else nb
    clock = StageClock()
    hit_rate = None
    useful_row_bytes = ds.row_bytes

    if args.system == "dgl-online":
        from diskgnn.bench.dgl_online import DGLOnline
        runner = DGLOnline(ds, samples.config, kind=args.kind, model=args.model, hidden=args.hidden)
        epoch_fn = lambda: runner.epoch(measured, clock)  # noqa: E731
        io_bytes_useful = runner.bytes_useful
    else:
        if args.system.startswith("diskgnn") or args.system == "pread":
            from diskgnn.bench.packed_systems import make_packed_system
            system = make_packed_system(args.system, args.packed, samples)
            fetch = system.fetch
            prefetch = system.prefetch
            hit_rate = system.hit_rate
        else:
            gather = MemoryGather(ds) if args.system == "in-memory" else \
                MmapGather(ds, random_advice=(args.system == "mmap"))
            fetch = lambda b: gather(np.asarray(b.input_nodes))  # noqa: E731
            prefetch = False
        labels = np.asarray(ds.labels)
        if args.kind == "train":
            from diskgnn.models import build_model, to_torch_blocks
            import torch.nn.functional as F
            model = build_model(args.model, in_dim=ds.feat_dim, num_classes=ds.num_classes,
                                num_layers=len(samples.config.fanouts), hidden=args.hidden)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(b, x):
                blocks = to_torch_blocks(b.blocks)
                y = torch.from_numpy(labels[np.asarray(b.seeds)])
                loss = F.cross_entropy(model(blocks, x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        else:
            def step(b, x):
                if x.shape[0] != len(b.input_nodes):
                    raise RuntimeError("wrong number of rows")
        counter = {"rows": 0}

        def epoch_fn():
            order = np.random.default_rng(len(epoch_times)).permutation(nb)[:measured]
            batches = (samples.batch(part, int(i)) for i in order)

            def fetch_counted(b):
                counter["rows"] += len(b.input_nodes)
                return fetch(b)
            _run_batches(batches, fetch_counted, step, clock, prefetch)
        io_bytes_useful = lambda: counter["rows"] * useful_row_bytes  # noqa: E731

    epoch_times = []
    for e in range(args.warmup + args.epochs):
        if e == args.warmup:
            io0 = self_io_bytes().get("read_bytes", 0)
            useful0 = io_bytes_useful()
            clock = StageClock() if args.system != "dgl-online" else clock
            if args.system == "dgl-online":
                clock.busy.clear()
                clock.wait.clear()
        t0 = time.perf_counter()
        epoch_fn()
        dt = time.perf_counter() - t0
        if e >= args.warmup:
            epoch_times.append(dt)
    read_bytes = self_io_bytes().get("read_bytes", 0) - io0
    useful = io_bytes_useful() - useful0
    scale = nb / measured
    times = [t * scale for t in epoch_times]
    result = {
        "name": args.system, "kind": args.kind,
        "epoch_time_s": float(np.median(times)), "epoch_times_s": times,
        "measured_batches_per_epoch": measured, "batches_per_epoch": nb,
        "extrapolated": measured < nb,
        "bytes_read": int(read_bytes / max(args.epochs, 1) * scale),
        "bytes_useful": int(useful / max(args.epochs, 1) * scale),
        "read_amplification": (read_bytes / useful) if useful else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "stages": {k: {"busy_s": v["busy_s"] / max(args.epochs, 1) * scale,
                       "wait_s": v["wait_s"] / max(args.epochs, 1) * scale} for k, v in clock.report().items()},
        "hit_rate": hit_rate, "test_acc": None,
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
