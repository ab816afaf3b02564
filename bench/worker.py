"""One benchmarked system, run in its own process (and memory cgroup) by the harness.

Prints one line ``RESULT {json}`` with epoch times, per-stage busy/wait,
bytes read from disk (/proc/self/io read_bytes), bytes useful, hit rates and
peak RSS.

Systems (all on the same presampled minibatches and the same threaded
pipeline load > read > assemble > compute, except dgl-online):
  in-memory       all features in RAM (the ceiling; the harness runs it uncapped)
  mmap            numpy.memmap of features.bin, sorted row ids, MADV_RANDOM
  mmap-readahead  the same with the kernel's default readahead
  pread           per-row O_DIRECT reads of uncached rows, same memory tiers as diskgnn
  diskgnn         the packed extents through diskgnn's FeatureStore
  dgl-online      DGL NeighborSampler + DataLoader over an int64 graph, memmap features
  dgl-inmem       the same with every feature in RAM (torch tensor, index_select) and DGL's own layers
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from diskgnn.cgroup import self_io_bytes


PIPELINE_DEPTH = 2
"""Batches queued between the pipeline's stages in every packed system's training epoch (the trainer's
default ``queue_depth``)."""
LOADER_DEPTH = 1
"""The same for a loader epoch: its consumer takes each batch at once, so a deeper queue only holds one more
assembled matrix (155 MiB for a 3-layer batch at scale m) without overlapping anything more."""


def _epoch(stages, keys, step, depth: int = PIPELINE_DEPTH) -> dict:
    pipe = stages.pipeline(keys, depth, name="bench")
    with pipe:
        for batch in pipe:
            step(batch)
    return pipe.stats()


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
    p.add_argument("--assemble-threads", type=int, default=None)
    p.add_argument("--task", choices=["node", "link"], default="node",
                   help="link: the samples are link batches; train steps score pairs with --decoder")
    p.add_argument("--decoder", default="dot")
    args = p.parse_args(argv)
    if args.threads:
        from diskgnn.loader import set_numba_threads
        torch.set_num_threads(args.threads)
        set_numba_threads(args.threads)  # the compute thread's fused kernels

    from diskgnn.dataset import Dataset
    from diskgnn.sampling import Samples
    samples = Samples.open(args.samples)
    ds = Dataset.open(samples.dataset_path)
    part = samples.train_parts[0]
    nb = samples.num_batches(part)
    measured = min(nb, args.max_batches) if args.max_batches else nb
    hit_rate = None

    link = args.task == "link"
    if link and args.system in ("dgl-online", "dgl-inmem"):
        from diskgnn.bench.dgl_link import DGLLinkRunner
        from diskgnn.bench.packed_systems import _widen
        from diskgnn.bench.worker_clock import StageClock
        cfg = samples.config
        if args.system == "dgl-inmem":  # every feature in RAM, DGL's own layers: what a user with the RAM runs
            feats = torch.from_numpy(_widen(np.array(ds.features), ds.feat_dtype))
        else:
            import mmap as _mmap
            feats = np.memmap(ds.features_path, dtype=ds.features.dtype, mode="r", shape=(ds.num_nodes, ds.feat_dim))
            feats._mmap.madvise(_mmap.MADV_RANDOM)
        runner = DGLLinkRunner(ds, fanouts=cfg.fanouts, batch_size=cfg.batch_size, negatives=cfg.negatives,
                               negative_sampler=cfg.negative_sampler, model=args.model, hidden=args.hidden,
                               decoder=args.decoder, features=feats, dgl_layers=args.system == "dgl-inmem")
        clocks = []

        def run_epoch(e):
            clock = StageClock()
            if args.kind == "train":
                runner.train_epoch(measured, clock)
            else:
                runner.load_epoch(measured, clock)
            clocks.append(clock.report())
            return clocks[-1]
        useful_fn = lambda: runner.rows * runner.row_bytes  # noqa: E731
        feature_read_fn = lambda: runner.read  # noqa: E731
    elif args.system in ("dgl-online", "dgl-inmem"):
        from diskgnn.bench.dgl_online import DGLOnline
        from diskgnn.bench.worker_clock import StageClock
        runner = DGLOnline(ds, samples.config, kind=args.kind, model=args.model, hidden=args.hidden,
                           in_memory=args.system == "dgl-inmem")
        clocks = []

        def run_epoch(e):
            clock = StageClock()
            runner.epoch(measured, clock)
            clocks.append(clock.report())
            return clocks[-1]
        useful_fn = runner.bytes_useful
        feature_read_fn = runner.bytes_read
    else:
        from diskgnn.bench.packed_systems import make_features
        from diskgnn.loader import BatchStages, epoch_permutation
        from diskgnn.memory import TrainingMemory
        model = None
        if args.kind == "train" and link:
            from diskgnn.decoders import build_link_model
            torch.manual_seed(0)
            model = build_link_model(args.model, in_dim=ds.feat_dim, num_layers=samples.config.num_layers,
                                     hidden=args.hidden, decoder=args.decoder)
        elif args.kind == "train":
            from diskgnn.models import build_model
            torch.manual_seed(0)
            model = build_model(args.model, in_dim=ds.feat_dim, num_classes=ds.num_classes,
                                num_layers=samples.config.num_layers, hidden=args.hidden)
        # what this process holds beside the store, as a trainer would count it: the pipeline's assembled
        # matrices (depth + 2), and for training the model (weights, gradients, Adam) and its temporaries
        model_bytes = 0 if model is None else 4 * sum(q.numel() * q.element_size() for q in model.parameters())
        depth = PIPELINE_DEPTH if args.kind == "train" else LOADER_DEPTH
        training = TrainingMemory(queue_depth=depth, model_bytes=int(model_bytes),
                                  activation_batches=6 if model is not None else 0)
        features = make_features(args.system, samples, ds, args.packed, training=training)
        stages = BatchStages(samples, ds.labels, features, torch.device("cpu"),
                             assemble_threads=args.assemble_threads)
        # the batch order of a training epoch: under a disk budget, segment by segment (each read once)
        segments = features.segments(part) if hasattr(features, "segments") else None
        if args.kind == "train" and link:
            from diskgnn.decoders import link_loss
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(batch):
                opt.zero_grad(set_to_none=True)
                link_loss(model(batch.blocks, batch.x, batch.pairs)).backward()
                opt.step()
        elif args.kind == "train":
            import torch.nn.functional as F
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(batch):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(batch.blocks, batch.x), batch.y).backward()
                opt.step()
        else:
            def step(batch):
                if batch.x.shape[0] != batch.blocks[0].num_src:
                    raise RuntimeError("assembled a wrong number of rows")

        def run_epoch(e):
            order = (epoch_permutation(7, e, nb, segments) if segments
                     else np.random.default_rng([7, e]).permutation(nb))[:measured]
            return _epoch(stages, [(part, int(i)) for i in order], step, depth)
        useful_fn = lambda: int(features.stats().get("bytes_useful", 0))  # noqa: E731
        feature_read_fn = lambda: int(features.stats().get("bytes_read", 0))  # noqa: E731

    epoch_times, stage_reports = [], []
    io0 = useful0 = fread0 = 0
    for e in range(args.warmup + args.epochs):
        if e == args.warmup:
            io0 = self_io_bytes().get("read_bytes", 0)
            useful0, fread0 = useful_fn(), feature_read_fn()
        t0 = time.perf_counter()
        stats = run_epoch(e)
        dt = time.perf_counter() - t0
        if e >= args.warmup:
            epoch_times.append(dt)
            stage_reports.append(stats)
    epochs = max(args.epochs, 1)
    read_bytes = self_io_bytes().get("read_bytes", 0) - io0
    useful = useful_fn() - useful0
    feature_read = feature_read_fn() - fread0
    if args.system not in ("dgl-online", "dgl-inmem"):
        fs = features.stats()
        hit_rate = fs.get("hit_rate")
    scale = nb / measured
    stages_avg = {}
    for rep in stage_reports:
        for name, st in rep.items():
            acc = stages_avg.setdefault(name, {"busy_s": 0.0, "wait_s": 0.0})
            acc["busy_s"] += st.get("busy_s", 0.0) / epochs * scale
            acc["wait_s"] += st.get("wait_s", 0.0) / epochs * scale
    times = [t * scale for t in epoch_times]
    result = {
        "name": args.system, "kind": args.kind,
        "epoch_time_s": float(np.median(times)), "epoch_times_s": times,
        "measured_batches_per_epoch": measured, "batches_per_epoch": nb, "extrapolated": measured < nb,
        "bytes_read": int(read_bytes / epochs * scale),
        "feature_bytes_read": int(feature_read / epochs * scale),
        "bytes_useful": int(useful / epochs * scale),
        "read_amplification": (feature_read / useful) if useful else None,
        # the float32 input matrices a full epoch of the presampled batches assembles (the memory side)
        "assembled_bytes": int(np.asarray(samples.input_offsets(part))[-1]) * int(ds.feat_dim) * 4,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "stages": stages_avg, "hit_rate": hit_rate, "test_acc": None,
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
