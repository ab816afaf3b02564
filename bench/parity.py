"""Accuracy parity: diskgnn's presampled out-of-core training vs DGL's online sampling.

Same data, model (from :mod:`diskgnn.models`, same initial weights per seed),
hyperparameters and number of epochs; the only difference is where the
minibatches come from:

* ``dgl-online``: DGL ``NeighborSampler`` + ``DataLoader`` (int64 graph), new
  samples every epoch, validation/test sampled online with the same fanouts;
* ``diskgnn-K<k>``: ``k`` presampled training epochs cycled with the batch order
  reshuffled, presampled val/test batches, features through the packed
  out-of-core store;
* ``mlp``: a features-only MLP on the same presampled batches (shows that the
  graph matters).

Reports, per system, the mean and spread (sample std, min, max) over seeds of
the best-validation epoch's test accuracy, and the smallest K whose mean is
within ``--tolerance`` points of DGL's. Reference stack only (needs DGL)::

    python -m diskgnn.bench.parity --dataset /work/data/s --epochs 10 --seeds 0,1,2 --ks 1,2,4
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("diskgnn.bench.parity")


def _dgl_blocks_to_torch(blocks):
    from diskgnn.models import TorchBlock
    out = []
    for b in blocks:
        indptr, indices, _ = b.adj_tensors("csc")
        out.append(TorchBlock.from_csr(indptr.numpy(), indices.numpy(), b.num_src_nodes(), b.num_dst_nodes()))
    return out


def dgl_online(ds, *, fanouts, batch_size, epochs, seed, model, hidden, lr, features, init=None) -> dict:
    """Train with DGL's online NeighborSampler; returns best-val test accuracy and epoch times."""
    import dgl
    from diskgnn.models import build_model
    indptr = torch.from_numpy(np.array(ds.indptr, dtype=np.int64))
    indices = torch.from_numpy(np.asarray(ds.indices).astype(np.int64))
    graph = dgl.graph(("csc", (indptr, indices, torch.empty(0, dtype=torch.int64))), num_nodes=ds.num_nodes,
                      idtype=torch.int64)
    labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
    splits = {s: torch.from_numpy(np.asarray(ds.split(s), dtype=np.int64)) for s in ("train", "val", "test")}
    dgl.seed(seed)
    torch.manual_seed(seed)
    net = build_model(model, in_dim=ds.feat_dim, num_classes=ds.num_classes, num_layers=len(fanouts),
                      hidden=hidden, init=init)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sampler = dgl.dataloading.NeighborSampler(list(fanouts))

    def loader(split, shuffle):
        return dgl.dataloading.DataLoader(graph, splits[split], sampler, batch_size=batch_size, shuffle=shuffle,
                                          drop_last=False, num_workers=0)

    best = (-1.0, None, 0)
    times, history = [], []
    for epoch in range(epochs):
        net.train()
        t0 = time.perf_counter()
        for input_nodes, seeds, blocks in loader("train", True):
            x = features[input_nodes]
            loss = F.cross_entropy(net(_dgl_blocks_to_torch(blocks), x), labels[seeds])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
        net.eval()
        acc = {}
        with torch.no_grad():
            for split in ("val", "test"):
                correct = total = 0
                for input_nodes, seeds, blocks in loader(split, False):
                    pred = net(_dgl_blocks_to_torch(blocks), features[input_nodes]).argmax(1)
                    correct += int((pred == labels[seeds]).sum())
                    total += int(seeds.shape[0])
                acc[split] = correct / total
        history.append(acc)
        if acc["val"] > best[0]:
            best = (acc["val"], acc["test"], epoch + 1)
    return {"best_val_acc": best[0], "test_acc": best[1], "best_epoch": best[2],
            "epoch_time_s": statistics.median(times), "history": history}


def diskgnn_presampled(ds, workdir: Path, *, k, fanouts, batch_size, epochs, seed, model, hidden, lr,
                       features: str, mlp: bool = False, disk_budget: str | None = None, init=None) -> dict:
    """Presample ``k`` epochs (seeded), pack, and train through the out-of-core pipeline."""
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.train import DatasetFeatures, TrainConfig, Trainer, packed_data_id
    samples_dir = workdir / f"samples-k{k}-s{seed}"
    samples = presample(ds.path, samples_dir, SampleConfig(fanouts=tuple(fanouts), batch_size=batch_size,
                                                           epochs=k, seed=seed), overwrite=True)
    # the recipe of dgl_online's loop: constant lr, no warm-up, no dropout (only the minibatches differ)
    cfg = TrainConfig(model=model, epochs=epochs, hidden=hidden, lr=lr, seed=seed, device="cpu", init=init,
                      dropout=0.0, lr_schedule="constant", warmup_epochs=0.0)
    packed_dir = workdir / f"packed-k{k}-s{seed}"
    try:
        if features == "store":
            from diskgnn.packing import PackConfig, pack
            from diskgnn.store import FeatureStore
            pack_args = argparse.Namespace(device_cache="0", pinned_cache="0", host_cache="10%", disk_budget=disk_budget,
                                           store_dtype=None, chunk_size="256M")
            packed = pack(samples_dir, packed_dir, PackConfig.from_cli(pack_args), overwrite=True)
            source = FeatureStore(packed, torch.device("cpu"))
            data_id = packed_data_id(packed)
        else:
            source = DatasetFeatures(samples, ds)
            data_id = None
        net = None
        if mlp:
            from diskgnn.models import MLP
            torch.manual_seed(seed)
            net = MLP(ds.feat_dim, ds.num_classes, hidden=hidden or 128, num_layers=len(fanouts))
        trainer = Trainer(samples, ds, source, cfg, device=torch.device("cpu"), data_id=data_id, model=net)
        report = trainer.fit()
        report["history"] = [{"val": h.get("val_acc"), "test": h.get("test_acc")} for h in trainer.history]
        return report
    finally:
        shutil.rmtree(samples_dir, ignore_errors=True)
        shutil.rmtree(packed_dir, ignore_errors=True)


def summarize(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    vals = [r["best_val_acc"] for r in runs]
    return {"test_acc_mean": statistics.fmean(accs), "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_acc_min": min(accs), "test_acc_max": max(accs), "best_val_acc_mean": statistics.fmean(vals),
            "epoch_time_s_median": statistics.median(r["epoch_time_s"] for r in runs),
            "runs": [{k: v for k, v in r.items() if k in ("seed", "test_acc", "best_val_acc", "best_epoch",
                                                          "epoch_time_s", "history")} for r in runs]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="/work/data/s", help="dataset directory (made with synth --scale s if missing)")
    p.add_argument("--workdir", default="bench/work/parity", help="scratch space for samples and packed data")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ks", default="1,2,4", help="presampled epoch counts K to try, smallest first")
    p.add_argument("--all-ks", action="store_true", help="try every K even after one reaches parity")
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--model", default="sage")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init", default=None, help="weight init of both systems (default: diskgnn's default; "
                                                "xavier-relu for the figures measured before the recipe)")
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy points (default 0.5)")
    p.add_argument("--features", choices=["store", "memory"], default="store",
                   help="diskgnn's feature path: the packed out-of-core store (default) or dataset rows")
    p.add_argument("--no-mlp", action="store_true")
    p.add_argument("--disk-budget", default=None, help="pack diskgnn's batches with this --disk-budget: segments, "
                                                       "visited in a shuffled order, batches shuffled within each")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench/results/parity.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("diskgnn.train").setLevel(logging.WARNING)
    logging.getLogger("diskgnn.sampling").setLevel(logging.WARNING)
    logging.getLogger("diskgnn.packing").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Import every stage now: a long run should not pick up half-edited sources later.
    import diskgnn.packing, diskgnn.sampling, diskgnn.store, diskgnn.train, diskgnn.models  # noqa: F401,E401

    from diskgnn.dataset import Dataset, bf16_bits_to_float32
    if not (Path(args.dataset) / "manifest.json").exists():
        from diskgnn.synth import scale_config, synthesize
        log.info("creating %s (scale s)", args.dataset)
        synthesize(scale_config("s"), args.dataset)
    ds = Dataset.open(args.dataset)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    common = dict(fanouts=fanouts, batch_size=args.batch_size, epochs=args.epochs, model=args.model,
                  hidden=args.hidden, lr=args.lr, init=args.init)
    t_start = time.time()
    systems = {}
    parity_k = None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> Path:  # after every system, so a crash keeps what was measured
        result = {"bench": "parity", "dataset": str(ds.path), "fingerprint": ds.fingerprint,
                  "config": {**common, "seeds": seeds, "ks": ks, "tolerance_points": args.tolerance,
                             "features": args.features, "disk_budget": args.disk_budget},
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "seconds": round(time.time() - t_start, 1), "systems": systems, "parity_k": parity_k}
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out)
        return out

    feats = np.array(ds.features)
    features = torch.from_numpy(bf16_bits_to_float32(feats) if ds.feat_dtype == "bf16" else feats.astype(np.float32))
    runs = []
    for seed in seeds:
        r = dgl_online(ds, seed=seed, features=features, **common)
        r["seed"] = seed
        log.info("dgl-online seed %d: test %.4f (val %.4f, epoch %d), %.2f s/epoch", seed, r["test_acc"],
                 r["best_val_acc"], r["best_epoch"], r["epoch_time_s"])
        runs.append(r)
    del features, feats
    systems["dgl-online"] = summarize(runs)
    save()
    reference = systems["dgl-online"]["test_acc_mean"]

    for k in ks:
        runs = []
        for seed in seeds:
            r = diskgnn_presampled(ds, workdir, k=k, seed=seed, features=args.features,
                                   disk_budget=args.disk_budget, **common)
            r["seed"] = seed
            log.info("diskgnn-K%d seed %d: test %.4f (val %.4f, epoch %s), %.2f s/epoch", k, seed, r["test_acc"],
                     r["best_val_acc"], r["best_epoch"], r["epoch_time_s"])
            runs.append(r)
        name = f"diskgnn-K{k}" + (f"-segments{args.disk_budget}" if args.disk_budget else "")
        systems[name] = s = summarize(runs)
        s["gap_points"] = 100 * (s["test_acc_mean"] - reference)
        save()
        if parity_k is None and abs(s["gap_points"]) <= args.tolerance:
            parity_k = k
            if not args.all_ks:
                break
    if not args.no_mlp:
        runs = []
        for seed in seeds:
            r = diskgnn_presampled(ds, workdir, k=1, seed=seed, features="memory", mlp=True, **common)
            r["seed"] = seed
            runs.append(r)
        systems["mlp"] = s = summarize(runs)
        s["gap_points"] = 100 * (s["test_acc_mean"] - reference)

    out = save()
    print(f"accuracy parity on {ds.path} ({args.epochs} epochs, seeds {seeds}); best-val epoch's test accuracy:")
    print("| system | mean | std | min | max | gap to dgl (points) | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for name, s in systems.items():
        gap = s.get("gap_points")
        print(f"| {name} | {100 * s['test_acc_mean']:.2f} | {100 * s['test_acc_std']:.2f} | "
              f"{100 * s['test_acc_min']:.2f} | {100 * s['test_acc_max']:.2f} | "
              f"{'—' if gap is None else f'{gap:+.2f}'} | {s['epoch_time_s_median']:.2f} |")
    print(f"smallest K within {args.tolerance} points of dgl-online: {parity_k}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
