"""PyG interop: a PyG ``SAGEConv`` stack trained through diskgnn against diskgnn's own GraphSAGE.

For each seed: presample (fanouts, batch size, seed) and pack (10 % host
tier) once, then train on the very same presampled batches, through the same
out-of-core pipeline, with the same hidden width, lr, epochs and seed:

* ``sage``: diskgnn's GraphSAGE with ``--sage-init`` (default ``torch``, today's default; ``xavier-relu``,
  Xavier-uniform weights with ReLU gain and zero bias, was its initialisation before the measured recipe,
  docs/RECIPE.md);
* ``pyg:SAGEConv``: the PyG stack as ``--model pyg:SAGEConv`` builds it (PyG's
  own initialisation: torch's default Kaiming-uniform);
* ``pyg:SAGEConv@sage-init``: the same PyG stack started from the weights of
  ``sage`` (``lin_r`` = ``fc_self``, ``lin_l`` = ``fc_neigh`` + bias), so that
  only the message-passing code differs.

Reports each system's best-validation test accuracy (mean, sample std, min,
max over seeds) and its gap to ``sage`` in points.

Then the train-step time (forward, backward, Adam) of both models on the same
blocks, features and labels: the first ``--batches`` training batches after
``--warmup``, the models alternating batch by batch (so a drift of the
machine's speed hits both alike), median per model and the median of the
per-batch ratios. Needs torch-geometric, not DGL::

    python -m diskgnn.bench.pyg_parity --dataset /work/scratch-pyg/s --epochs 10 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("diskgnn.bench.pyg_parity")

MODELS = ("sage", "pyg:SAGEConv")
SYSTEMS = ("sage", "pyg:SAGEConv", "pyg:SAGEConv@sage-init")


def copy_sage_weights(pyg_stack, sage) -> None:
    """Give a ``pyg:SAGEConv`` stack the weights of diskgnn's ``sage`` of the same shape (the same function:
    ``lin_r(h_dst) + lin_l(mean h_src)`` = ``fc_self(h_dst) + fc_neigh(mean h_src) + bias``)."""
    with torch.no_grad():
        for conv, layer in zip(pyg_stack.convs, sage.layers):
            conv.lin_r.weight.copy_(layer.fc_self.weight)
            conv.lin_l.weight.copy_(layer.fc_neigh.weight)
            conv.lin_l.bias.copy_(layer.bias)


def train_both(ds, workdir: Path, *, seed: int, fanouts, batch_size: int, epochs: int, hidden: int, lr: float,
               threads: int | None, sage_init: str = "torch") -> dict:
    """Presample and pack once for ``seed``; train every system of :data:`SYSTEMS` on it; their final reports."""
    from diskgnn.models import build_model
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.store import FeatureStore
    from diskgnn.train import TrainConfig, Trainer, packed_data_id
    samples_dir, packed_dir = workdir / f"samples-s{seed}", workdir / f"packed-s{seed}"
    try:
        samples = presample(ds.path, samples_dir, SampleConfig(fanouts=tuple(fanouts), batch_size=batch_size,
                                                               seed=seed), overwrite=True)
        packed = pack(samples.path, packed_dir, PackConfig(host_cache="10%"), overwrite=True)
        out = {}
        for system in SYSTEMS:
            model, _, init = system.partition("@")
            cfg = TrainConfig(model=model, epochs=epochs, hidden=hidden, lr=lr, seed=seed, device="cpu",
                              init=sage_init if model == "sage" else None,
                              dropout=0.0, lr_schedule="constant", warmup_epochs=0.0,
                              threads=threads)
            net = None
            if init:
                shape = dict(in_dim=ds.feat_dim, num_classes=ds.num_classes, num_layers=len(fanouts), hidden=hidden)
                torch.manual_seed(seed)  # as the Trainer seeds before it builds sage
                sage = build_model("sage", init=sage_init, **shape)
                net = build_model(model, **shape)
                copy_sage_weights(net, sage)
            with FeatureStore(packed, "cpu") as store:
                report = Trainer(samples, ds, store, cfg, device=torch.device("cpu"),
                                 data_id=packed_data_id(packed), model=net).fit()
            report["seed"] = seed
            log.info("%s seed %d: test %.4f (val %.4f, epoch %s), %.2f s/epoch", system, seed, report["test_acc"],
                     report["best_val_acc"], report["best_epoch"], report["epoch_time_s"])
            out[system] = report
        return out
    finally:
        shutil.rmtree(samples_dir, ignore_errors=True)
        shutil.rmtree(packed_dir, ignore_errors=True)


def step_times(ds, workdir: Path, *, fanouts, batch_size: int, hidden: int, batches: int, warmup: int,
               seed: int = 0) -> dict:
    """Median train-step time of each model on the same first ``warmup + batches`` presampled batches."""
    from diskgnn.models import build_model, to_torch_blocks
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.store import to_float32
    samples_dir = workdir / "samples-steps"
    try:
        per_epoch = math.ceil(len(ds.split("train")) / batch_size)
        samples = presample(ds.path, samples_dir, SampleConfig(fanouts=tuple(fanouts), batch_size=batch_size,
                                                               epochs=math.ceil((warmup + batches) / per_epoch),
                                                               seed=seed), overwrite=True)
        keys = [(p, i) for p in samples.train_parts for i in range(samples.num_batches(p))]
        n = min(warmup + batches, len(keys))
        mbs = [samples.batch(p, i) for p, i in keys[:n]]
        xs = [torch.from_numpy(to_float32(np.asarray(ds.features[mb.input_nodes]), ds.feat_dtype)) for mb in mbs]
        ys = [torch.from_numpy(np.asarray(ds.labels[mb.seeds], dtype=np.int64)) for mb in mbs]
        blocks = {m: [to_torch_blocks(mb.blocks) for mb in mbs] for m in MODELS}
        nets, opts = {}, {}
        for m in MODELS:
            torch.manual_seed(seed)
            nets[m] = build_model(m, in_dim=ds.feat_dim, num_classes=ds.num_classes, num_layers=len(fanouts),
                                  hidden=hidden)
            opts[m] = torch.optim.Adam(nets[m].parameters(), lr=1e-3)
        times: dict[str, list[float]] = {m: [] for m in MODELS}
        for i in range(n):
            for m in (MODELS if i % 2 == 0 else MODELS[::-1]):
                t0 = time.perf_counter()
                opts[m].zero_grad(set_to_none=True)
                F.cross_entropy(nets[m](blocks[m][i], xs[i]), ys[i]).backward()
                opts[m].step()
                if i >= warmup:
                    times[m].append(time.perf_counter() - t0)
        a, b = MODELS
        ratios = [y / x for x, y in zip(times[a], times[b])]
        shape = {"batches": n - warmup, "warmup": warmup, "input_nodes_mean": float(np.mean([len(mb.input_nodes)
                 for mb in mbs])), "edges_mean": float(np.mean([mb.num_edges for mb in mbs])),
                 "threads": torch.get_num_threads()}
        return {"shape": shape, **{f"{m}_step_ms": 1000 * statistics.median(times[m]) for m in MODELS},
                **{f"{m}_step_ms_quartiles": [1000 * float(q) for q in np.percentile(times[m], [25, 75])]
                   for m in MODELS},
                "pyg_over_sage_median_ratio": statistics.median(ratios),
                "pyg_over_sage_ratio_quartiles": [float(q) for q in np.percentile(ratios, [25, 75])]}
    finally:
        shutil.rmtree(samples_dir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.pyg_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="dataset directory (diskgnn synth --scale s --out DIR)")
    p.add_argument("--workdir", default="bench/work/pyg_parity", help="scratch space for samples and packed data")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: every core)")
    p.add_argument("--sage-init", default="torch", choices=["torch", "xavier", "xavier-relu"],
                   help="initialisation of diskgnn's sage (and of the PyG stack started from its weights); "
                        "default torch (the default recipe); xavier-relu reproduces the figures before it")
    p.add_argument("--batches", type=int, default=20, help="timed batches per model (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps-only", action="store_true", help="only the train-step timing, no accuracy runs")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/pyg-parity-<date>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("diskgnn.train", "diskgnn.sampling", "diskgnn.packing", "diskgnn.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch_geometric  # fail now, not after the first seed, when PyG is missing
    from diskgnn.bench.parity import summarize
    from diskgnn.dataset import Dataset
    ds = Dataset.open(args.dataset)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    runs: dict[str, list[dict]] = {m: [] for m in SYSTEMS}
    for seed in ([] if args.steps_only else seeds):
        for m, r in train_both(ds, workdir, seed=seed, fanouts=fanouts, batch_size=args.batch_size,
                               epochs=args.epochs, hidden=args.hidden, lr=args.lr, threads=args.threads,
                               sage_init=args.sage_init).items():
            runs[m].append(r)
    systems = {m: summarize(rs) for m, rs in runs.items() if rs}
    for s in systems.values():
        s["gap_points"] = 100 * (s["test_acc_mean"] - systems["sage"]["test_acc_mean"])
    load_before = os.getloadavg()
    steps = step_times(ds, workdir, fanouts=fanouts, batch_size=args.batch_size, hidden=args.hidden,
                       batches=args.batches, warmup=args.warmup)
    steps["loadavg_1min_before_after"] = [load_before[0], os.getloadavg()[0]]  # the machine is shared
    from diskgnn.bench.harness import git_commit
    result = {"bench": "pyg-parity", "dataset": str(ds.path), "fingerprint": ds.fingerprint,
              "config": {"fanouts": fanouts, "batch_size": args.batch_size, "epochs": args.epochs,
                         "hidden": args.hidden, "lr": args.lr, "seeds": seeds, "features": "store (10 % host tier)",
                         "sage_init": args.sage_init},
              "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
              "dgl_installed": "dgl" in sys.modules or _has("dgl"), "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "seconds": round(time.time() - t_start, 1), "systems": systems,
              "step_time": steps}
    out = Path(args.out) if args.out else Path("bench/results") / f"pyg-parity-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{ds.path}: {args.epochs} epochs, seeds {seeds}, torch {torch.__version__}, torch-geometric "
          f"{torch_geometric.__version__}; best-validation epoch's test accuracy:")
    print("| system | mean | std | min | max | gap to sage (points) | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for name, s in systems.items():
        print(f"| {name} | {100 * s['test_acc_mean']:.2f} | {100 * s['test_acc_std']:.2f} | "
              f"{100 * s['test_acc_min']:.2f} | {100 * s['test_acc_max']:.2f} | {s['gap_points']:+.2f} | "
              f"{s['epoch_time_s_median']:.2f} |")
    sh = steps["shape"]
    print(f"train step on the same {sh['batches']} batches ({sh['input_nodes_mean']:.0f} input nodes, "
          f"{sh['edges_mean']:.0f} edges on average, {sh['threads']} threads), median: sage "
          f"{steps['sage_step_ms']:.1f} ms, pyg:SAGEConv {steps['pyg:SAGEConv_step_ms']:.1f} ms, per-batch ratio "
          f"{steps['pyg_over_sage_median_ratio']:.2f}x (quartiles {steps['pyg_over_sage_ratio_quartiles'][0]:.2f}-"
          f"{steps['pyg_over_sage_ratio_quartiles'][1]:.2f})")
    print(f"wrote {out}")
    return 0


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
