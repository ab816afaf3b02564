"""Link-prediction parity: diskgnn's presampled out-of-core training vs DGL's online edge-prediction sampler.

Same link dataset (training edges, held-out edges, candidates), model (diskgnn's
encoder and decoder, same initial weights per seed), hyperparameters and
number of epochs; the only difference is where the batches come from:

* ``dgl-online``: ``dgl.dataloading.as_edge_prediction_sampler`` around a
  ``NeighborSampler`` with the same fanouts, the same negatives per positive,
  the batch's edges (and reverses, undirected) excluded, new samples every
  epoch; evaluation samples the same held-out edges and candidates online
  (:mod:`diskgnn.bench.dgl_link`), features in RAM;
* ``diskgnn``: ``--sample-epochs`` presampled epochs (default: as many as
  trained, so every epoch has fresh neighbourhoods and fresh negatives as
  online sampling has; with fewer, epochs cycle through them with the batch
  order reshuffled), presampled val/test batches, features through the packed
  out-of-core store (10 % host tier);
* ``mlp``: a features-only encoder on the same presampled batches (shows that
  the graph matters).

Reports, per system, the mean and spread over seeds of the best-validation
epoch's test MRR and Hits@K, and the gap to DGL in points. Reference stack only::

    python -m diskgnn.bench.link_parity --scale s --epochs 5 --seeds 0,1,2
    python -m diskgnn.bench.link_parity --dataset data/lastfm --epochs 20 --batch-size 256
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

log = logging.getLogger("diskgnn.bench.link_parity")

KEYS = ("test_mrr", "test_hits@1", "test_hits@10", "test_hits@50", "best_val_mrr")


def dgl_online(ds, *, seed, epochs, fanouts, batch_size, negatives, negative_sampler, eval_batch_size, model,
               hidden, decoder, lr, features) -> dict:
    from diskgnn.bench.dgl_link import DGLLinkRunner
    runner = DGLLinkRunner(ds, fanouts=fanouts, batch_size=batch_size, negatives=negatives,
                           negative_sampler=negative_sampler, eval_batch_size=eval_batch_size, model=model,
                           hidden=hidden, decoder=decoder, lr=lr, seed=seed, features=features)
    best, times, history = None, [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        loss = runner.train_epoch()
        times.append(time.perf_counter() - t0)
        ev = runner.evaluate()
        history.append({"val": ev["val_mrr"], "test": ev["test_mrr"], "loss": loss})
        if best is None or ev["val_mrr"] > best["best_val_mrr"]:
            best = {"best_val_mrr": ev["val_mrr"], **{k: ev[k] for k in KEYS if k.startswith("test")},
                    "best_epoch": epoch + 1}
    return {**best, "epoch_time_s": statistics.median(times), "history": history}


def diskgnn_presampled(ds, workdir: Path, *, seed, epochs, fanouts, batch_size, negatives, negative_sampler,
                       eval_batch_size, model, hidden, decoder, lr, mlp: bool = False, sample_epochs: int = 1) -> dict:
    """Presample one epoch (seeded), pack it, and train through the out-of-core store."""
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.store import FeatureStore
    from diskgnn.train import TrainConfig, Trainer, packed_data_id
    tag = f"{'mlp' if mlp else 'gnn'}-s{seed}"
    samples_dir, packed_dir = workdir / f"samples-{tag}", workdir / f"packed-{tag}"
    try:
        cfg = SampleConfig(fanouts=tuple(fanouts), batch_size=batch_size, seed=seed, task="link", epochs=sample_epochs,
                           negatives=negatives, negative_sampler=negative_sampler, eval_batch_size=eval_batch_size)
        samples = presample(ds.path, samples_dir, cfg, overwrite=True)
        packed = pack(samples_dir, packed_dir, PackConfig(host_cache="10%"), overwrite=True)
        net = None
        if mlp:
            from diskgnn.decoders import LinkModel, build_decoder
            from diskgnn.models import MLP
            torch.manual_seed(seed)
            net = LinkModel(MLP(ds.feat_dim, hidden, hidden=hidden, num_layers=len(fanouts)),
                            build_decoder(decoder, hidden))
        tcfg = TrainConfig(model=model, epochs=epochs, hidden=hidden, lr=lr, seed=seed, device="cpu",
                           decoder=decoder)
        trainer = Trainer(samples, ds, FeatureStore(packed, torch.device("cpu")), tcfg, device=torch.device("cpu"),
                          data_id=packed_data_id(packed), model=net)
        report = trainer.fit()
        report["history"] = [{"val": h.get("val_mrr"), "test": h.get("test_mrr"), "loss": h.get("loss")}
                             for h in trainer.history]
        return report
    finally:
        shutil.rmtree(samples_dir, ignore_errors=True)
        shutil.rmtree(packed_dir, ignore_errors=True)


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in KEYS:
        values = [r[key] for r in runs]
        out[f"{key}_mean"] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["epoch_time_s_median"] = statistics.median(r["epoch_time_s"] for r in runs)
    out["runs"] = [{k: r.get(k) for k in ("seed", *KEYS, "best_epoch", "epoch_time_s", "history")} for r in runs]
    return out


def make_dataset(path: Path, scale: str) -> None:
    from diskgnn.synth import scale_config, synthesize
    log.info("creating %s (scale %s, link prediction)", path, scale)
    synthesize(scale_config(scale, task="link"), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.link_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None, help="link dataset directory (default: bench/work/<scale>-link, made "
                                                   "with `diskgnn synth --scale SCALE --task link` if missing)")
    p.add_argument("--scale", default="s", choices=["tiny", "s", "m"])
    p.add_argument("--workdir", default="bench/work/link-parity", help="scratch space for samples and packed data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--negative-sampler", default="uniform", choices=["uniform", "degree"])
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--model", default="sage")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--decoder", default="mlp", choices=["dot", "mlp", "distmult"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--systems", default="dgl-online,diskgnn,mlp")
    p.add_argument("--sample-epochs", type=int, default=None,
                   help="presampled training epochs of diskgnn and mlp (default: --epochs)")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --out that were made with the same dataset and config")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="result JSON (default bench/results/link-parity-<name>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("diskgnn.train", "diskgnn.sampling", "diskgnn.packing", "diskgnn.store", "diskgnn.link"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    import diskgnn.packing, diskgnn.sampling, diskgnn.store, diskgnn.train, diskgnn.decoders  # noqa: F401,E401

    from diskgnn.dataset import Dataset, bf16_bits_to_float32
    from diskgnn.link import eval_batch_size as default_eval_batch_size
    from diskgnn.sampling import SampleConfig, parse_fanouts
    dataset = Path(args.dataset) if args.dataset else Path("bench/work") / f"{args.scale}-link"
    if not (dataset / "manifest.json").exists():
        if args.dataset:
            raise SystemExit(f"{dataset} is not a dataset directory")
        make_dataset(dataset, args.scale)
    ds = Dataset.open(dataset)
    fanouts = list(parse_fanouts(args.fanouts))
    seeds = [int(s) for s in args.seeds.split(",")]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    ebs = args.eval_batch_size or default_eval_batch_size(
        SampleConfig(fanouts=tuple(fanouts), batch_size=args.batch_size, task="link", negatives=args.negatives), ds)
    common = dict(epochs=args.epochs, fanouts=fanouts, batch_size=args.batch_size, negatives=args.negatives,
                  negative_sampler=args.negative_sampler, eval_batch_size=ebs, model=args.model, hidden=args.hidden,
                  decoder=args.decoder, lr=args.lr)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else Path("bench/results") / f"link-parity-{dataset.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results: dict = {}
    sample_epochs = args.sample_epochs or args.epochs
    done: dict = {}
    if args.resume and out.exists():
        try:
            old = json.loads(out.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") == ds.fingerprint and \
                {k: v for k, v in old.get("config", {}).items() if k not in ("seeds", "sample_epochs")} == \
                json.loads(json.dumps(common)):
            for name, s in old.get("systems", {}).items():
                if name != "dgl-online" and old["config"].get("sample_epochs") != sample_epochs:
                    continue
                done[name] = {r["seed"]: r for r in s.get("runs", []) if r.get("seed") in seeds}
            log.info("resuming: keeping %s", {k: sorted(v) for k, v in done.items()})

    def save() -> None:  # after every run, so a crash keeps what was measured
        from diskgnn.bench.harness import git_commit
        ref = results.get("dgl-online", {}).get("test_mrr_mean")
        for name, s in results.items():
            if ref is not None and name != "dgl-online":
                s["gap_points"] = 100 * (s["test_mrr_mean"] - ref)
        doc = {"bench": "link-parity", "dataset": str(ds.path), "fingerprint": ds.fingerprint,
               "link": ds.manifest.get("link"), "nodes": ds.num_nodes, "edges": ds.num_edges,
               "train_edges": int(ds.specs["train_pos"].shape[0]), "val_edges": int(ds.specs["val_pos"].shape[0]),
               "test_edges": int(ds.specs["test_pos"].shape[0]),
               "config": {**common, "seeds": seeds, "sample_epochs": sample_epochs},
               "commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpus": os.cpu_count(), "seconds": round(time.time() - t_start, 1), "systems": results,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, out)

    if "dgl-online" in systems:
        feats = np.array(ds.features)
        features = torch.from_numpy(bf16_bits_to_float32(feats) if ds.feat_dtype == "bf16"
                                    else feats.astype(np.float32))
        runs = []
        for seed in seeds:
            if seed in done.get("dgl-online", {}):
                runs.append(done["dgl-online"][seed])
                results["dgl-online"] = summarize(runs)
                continue
            r = dgl_online(ds, seed=seed, features=features, **common)
            r["seed"] = seed
            log.info("dgl-online seed %d: test MRR %.4f (val %.4f, epoch %d), %.1f s/epoch", seed, r["test_mrr"],
                     r["best_val_mrr"], r["best_epoch"], r["epoch_time_s"])
            runs.append(r)
            results["dgl-online"] = summarize(runs)
            save()
        del features, feats
    for name in ("diskgnn", "mlp"):
        if name not in systems:
            continue
        runs = []
        for seed in seeds:
            if seed in done.get(name, {}):
                runs.append(done[name][seed])
                results[name] = summarize(runs)
                continue
            r = diskgnn_presampled(ds, workdir, seed=seed, mlp=name == "mlp", sample_epochs=sample_epochs, **common)
            r["seed"] = seed
            log.info("%s seed %d: test MRR %.4f (val %.4f, epoch %s), %.1f s/epoch", name, seed, r["test_mrr"],
                     r["best_val_mrr"], r["best_epoch"], r["epoch_time_s"])
            runs.append(r)
            results[name] = summarize(runs)
            save()
    save()
    print(f"link-prediction parity on {ds.path} ({args.epochs} epochs, {sample_epochs} presampled, seeds {seeds}, "
          f"decoder {args.decoder}); "
          f"best-validation epoch's test figures:")
    print("| system | test MRR | std | Hits@1 | Hits@10 | Hits@50 | gap to dgl (MRR points) | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in results.items():
        gap = s.get("gap_points")
        print(f"| {name} | {100 * s['test_mrr_mean']:.2f} | {100 * s['test_mrr_std']:.2f} | "
              f"{100 * s['test_hits@1_mean']:.2f} | {100 * s['test_hits@10_mean']:.2f} | "
              f"{100 * s['test_hits@50_mean']:.2f} | {'—' if gap is None else f'{gap:+.2f}'} | "
              f"{s['epoch_time_s_median']:.2f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
