"""The training-recipe sweep behind diskgnn's defaults (docs/RECIPE.md).

Trains diskgnn's own models (``sage``, ``gcn``, ``gat``) through the real
out-of-core path (presampled, packed with a 10 % host tier, read back through
the feature store) on several graphs, for several *variants* of the recipe
(initialisation, dropout, learning rate, warm-up, schedule) and seeds, and
records every epoch's validation and test accuracy. Since a constant schedule
with a warm-up does not depend on the number of epochs, one 30-epoch run gives
the accuracy a 2-, 5- or 10-epoch run reaches: the test accuracy of the
best-validation epoch among the first k (:func:`acc_at`). A cosine schedule
does depend on it: its runs are only read at their last epoch.

Graphs (``--graphs``): ``s`` (scale s, fanouts 10,15), ``s-3layer`` (scale s,
fanouts 5,10,15), and two generated with other degree and feature
distributions: ``dense`` (mean in-degree ~25, Pareto exponent 2.1, hot hubs,
homophily 0.7) and ``sparse`` (mean in-degree ~4, exponent 3, 128-d weak
features with separation 0.6, 16 classes, homophily 0.9).

Variants are ``name`` or ``key=value,...`` with keys ``init``, ``dropout``,
``lr``, ``schedule``, ``warmup``; ``current`` is the recipe before this sweep
(sage/gat Xavier with the ReLU gain, gcn torch's default, no dropout, lr 1e-3,
constant) and ``default`` is whatever :class:`diskgnn.train.TrainConfig`
defaults to now. ``dgl-online`` trains DGL's own layers (``SAGEConv``,
``GraphConv`` norm=right, ``GATConv``: DGL's initialisation) on DGL's online
``NeighborSampler`` with the same fanouts, batch size, width, Adam 1e-3 and no
dropout (reference stack only). Every run is appended to ``--out`` as soon as
it ends, and a run already there is skipped, so a stopped sweep resumes::

    python -m diskgnn.bench.recipe sweep --graphs s,s-3layer,dense,sparse --models sage,gcn,gat \\
        --variants init=torch,init=xavier,init=xavier-relu --seeds 0,1,2 --epochs 30
    python -m diskgnn.bench.recipe report --out bench/results/recipe-sweep.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("diskgnn.bench.recipe")


@dataclass(frozen=True)
class GraphSpec:
    """A graph of the sweep: a dataset (given, or generated with ``synth`` options) and the fanouts."""
    fanouts: tuple[int, ...]
    synth: dict | None = None
    """SynthConfig fields of a generated graph; None = the scale-s dataset (``--dataset-s``)."""
    note: str = ""


GRAPHS = {
    "s": GraphSpec((10, 15), note="scale s: 200k nodes, mean in-degree 10, 64-d, 8 classes"),
    "s-3layer": GraphSpec((5, 10, 15), note="scale s, 3 layers, fanouts 5,10,15"),
    "dense": GraphSpec((10, 15), synth=dict(nodes=200_000, avg_degree=30, degree_exponent=2.1,
                                            popularity_exponent=1.6, dim=64, classes=8, homophily=0.7, seed=1),
                       note="mean in-degree ~25, degree exponent 2.1, hot hubs (popularity 1.6), homophily 0.7"),
    "sparse": GraphSpec((10, 15), synth=dict(nodes=200_000, avg_degree=4, degree_exponent=3.0, dim=128,
                                             classes=16, separation=0.6, homophily=0.9, seed=2),
                        note="mean in-degree ~4, degree exponent 3, 128-d weak features (separation 0.6), "
                             "16 classes, homophily 0.9"),
}

RECIPE_KEYS = {"init": "init", "dropout": "dropout", "lr": "lr", "schedule": "lr_schedule",
               "warmup": "warmup_epochs"}
CURRENT_INIT = {"sage": "xavier-relu", "gat": "xavier-relu", "gcn": "torch"}
"""The initialisation each model had before this sweep (gcn's nn.Linear kept torch's default)."""
CHECKPOINT_EPOCHS = (1, 2, 3, 5, 10, 20, 30)


BASELINE = {"dropout": 0.0, "lr": 1e-3, "lr_schedule": "constant", "warmup_epochs": 0.0}
"""The recipe before this sweep, besides the init (:data:`CURRENT_INIT`): what a variant's unnamed keys keep."""


def variant_recipe(variant: str, model: str) -> dict:
    """The full recipe (TrainConfig fields) of a variant: ``current``, ``default`` (TrainConfig's defaults now)
    or ``key=value,...`` (keys of RECIPE_KEYS) over the pre-sweep recipe, so a name means the same whatever
    the defaults are when it runs."""
    from diskgnn.errors import ConfigError
    from diskgnn.train import TrainConfig
    if variant == "default":
        cfg = TrainConfig(model=model)
        return {"init": cfg.init, "dropout": cfg.dropout, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule,
                "warmup_epochs": cfg.warmup_epochs}
    out = {"init": CURRENT_INIT[model], **BASELINE}
    if variant == "current":
        return out
    for item in variant.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in RECIPE_KEYS:
            raise ConfigError(f"variant {variant!r}: {item!r} is not key=value with a key of "
                              f"{', '.join(RECIPE_KEYS)}")
        field = RECIPE_KEYS[key]
        out[field] = value if field in ("init", "lr_schedule") else float(value)
    return out


def recipe_id(recipe: dict) -> str:
    """A canonical name of a full recipe (runs are keyed by it, so two names for one recipe share runs)."""
    if recipe.get("library") == "dgl":
        return "dgl-online"
    return (f"init={recipe['init']},dropout={float(recipe['dropout']):g},lr={float(recipe['lr']):g},"
            f"schedule={recipe['lr_schedule']},warmup={float(recipe['warmup_epochs']):g}")


def acc_at(history: list[dict], k: int) -> float | None:
    """Test accuracy of the best-validation epoch among the first ``k`` (what a k-epoch run reports)."""
    best = None
    for h in history[:k]:
        if h.get("val_acc") is not None and (best is None or h["val_acc"] > best["val_acc"]):
            best = h
    return None if best is None or len(history) < k else best["test_acc"]


# --- data ----------------------------------------------------------------------------------------

def graph_dataset(name: str, workdir: Path, dataset_s: str):
    """The dataset of graph ``name`` (generated into ``workdir`` once, deterministic by seed)."""
    from diskgnn.dataset import Dataset
    from diskgnn.synth import scale_config, synthesize
    spec = GRAPHS[name]
    if spec.synth is None:
        if not (Path(dataset_s) / "manifest.json").exists():
            synthesize(scale_config("s"), dataset_s)
        return Dataset.open(dataset_s)
    out = workdir / f"graph-{name}"
    cfg = scale_config("s", **spec.synth)
    if (out / "manifest.json").exists():
        ds = Dataset.open(out)
        if ds.manifest.get("source", {}).get("config") == json.loads(json.dumps(asdict(cfg))):
            return ds
    return synthesize(cfg, out, overwrite=True)


def packed_for(ds, fanouts, seed: int, workdir: Path, tag: str):
    """Presampled (``seed``) and packed (10 % host tier) data for one graph and seed, made once."""
    from diskgnn.errors import DiskGNNError
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, Samples, presample
    from diskgnn.store import Packed
    cfg = SampleConfig(fanouts=tuple(fanouts), batch_size=1024, seed=seed)
    sdir, pdir = workdir / f"{tag}-s{seed}.samples", workdir / f"{tag}-s{seed}.packed"
    try:
        samples = Samples.open(sdir)
        if samples.config != cfg or samples.dataset_fingerprint != ds.fingerprint:
            raise DiskGNNError("other samples")
        return Packed.open(pdir, samples=samples, dataset=ds)
    except DiskGNNError:
        pass
    samples = presample(ds.path, sdir, cfg, overwrite=True)
    return pack(samples.path, pdir, PackConfig(host_cache="10%"), overwrite=True)


# --- training ------------------------------------------------------------------------------------

def train_diskgnn(packed, model: str, recipe: dict, *, seed: int, epochs: int, threads: int | None) -> dict:
    """Train through the out-of-core store; every epoch's metrics and the final report."""
    from diskgnn.store import FeatureStore
    from diskgnn.train import TrainConfig, Trainer, packed_data_id
    from diskgnn.errors import TrainingDivergedError
    cfg = TrainConfig(model=model, epochs=epochs, seed=seed, device="cpu", threads=threads, **recipe)
    t0 = time.perf_counter()
    with FeatureStore(packed, "cpu") as store:
        trainer = Trainer(packed.samples, packed.dataset, store, cfg, device=torch.device("cpu"),
                          data_id=packed_data_id(packed))
        try:
            report = trainer.fit()
        except TrainingDivergedError as exc:  # a recipe that diverges is a result too
            report = {"epoch_time_s": None, "test_acc": None, "best_val_acc": None, "best_epoch": None,
                      "error": str(exc)}
    history = [{k: h.get(k) for k in ("epoch", "val_acc", "test_acc", "loss", "train_acc", "epoch_time_s",
                                      "eval_time_s", "lr")} for h in trainer.history]
    if "error" in report:
        return {"recipe": cfg.recipe(), "history": history, "error": report["error"], "epoch_time_s": None,
                "test_acc": None, "seconds": round(time.perf_counter() - t0, 1)}
    return {"recipe": cfg.recipe(), "history": history, "epoch_time_s": report["epoch_time_s"],
            "test_acc": report["test_acc"], "best_val_acc": report["best_val_acc"],
            "best_epoch": report["best_epoch"], "seconds": round(time.perf_counter() - t0, 1)}


def train_dgl_online(ds, fanouts, model: str, *, seed: int, epochs: int, hidden: int | None = None,
                     heads: int = 4, lr: float = 1e-3, batch_size: int = 1024) -> dict:
    """DGL's own layers and init on DGL's online NeighborSampler (val/test sampled online alike)."""
    import dgl
    import torch.nn.functional as F
    from diskgnn.bench.compute import DGLStack
    from diskgnn.dataset import bf16_bits_to_float32
    t_start = time.perf_counter()
    indptr = torch.from_numpy(np.array(ds.indptr, dtype=np.int64))
    indices = torch.from_numpy(np.asarray(ds.indices).astype(np.int64))
    graph = dgl.graph(("csc", (indptr, indices, torch.empty(0, dtype=torch.int64))), num_nodes=ds.num_nodes,
                      idtype=torch.int64)
    feats = np.array(ds.features)
    features = torch.from_numpy(bf16_bits_to_float32(feats) if ds.feat_dtype == "bf16" else feats.astype(np.float32))
    labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
    splits = {s: torch.from_numpy(np.asarray(ds.split(s), dtype=np.int64)) for s in ("train", "val", "test")}
    dgl.seed(seed)
    torch.manual_seed(seed)
    hidden = hidden or (32 if model == "gat" else 128)
    net = DGLStack(model, ds.feat_dim, ds.num_classes, len(fanouts), hidden, heads)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sampler = dgl.dataloading.NeighborSampler(list(fanouts))

    def loader(split, shuffle):
        return dgl.dataloading.DataLoader(graph, splits[split], sampler, batch_size=batch_size, shuffle=shuffle,
                                          drop_last=False, num_workers=0)

    history = []
    for epoch in range(epochs):
        net.train()
        t0 = time.perf_counter()
        for input_nodes, seeds, blocks in loader("train", True):
            loss = F.cross_entropy(net(blocks, features[input_nodes]), labels[seeds])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        net.eval()
        acc = {}
        with torch.no_grad():
            for split in ("val", "test"):
                correct = total = 0
                for input_nodes, seeds, blocks in loader(split, False):
                    pred = net(blocks, features[input_nodes]).argmax(1)
                    correct += int((pred == labels[seeds]).sum())
                    total += int(seeds.shape[0])
                acc[split] = correct / total
        history.append({"epoch": epoch + 1, "val_acc": acc["val"], "test_acc": acc["test"], "epoch_time_s": seconds})
    best = max(history, key=lambda h: h["val_acc"])  # first of equals, as the trainer
    return {"recipe": {"model": model, "library": "dgl", "init": "dgl", "dropout": 0.0, "optimizer": "adam",
                       "lr": lr, "lr_schedule": "constant", "warmup_epochs": 0.0, "epochs": epochs,
                       "hidden": hidden, "heads": heads, "seed": seed},
            "history": history, "epoch_time_s": statistics.median(h["epoch_time_s"] for h in history),
            "test_acc": best["test_acc"], "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "seconds": round(time.perf_counter() - t_start, 1)}


# --- results -------------------------------------------------------------------------------------

def run_key(graph: str, model: str, variant: str, seed: int, epochs: int) -> str:
    """The key of a run: ``variant`` resolved to its full recipe (:func:`recipe_id`)."""
    rid = "dgl-online" if variant == "dgl-online" else recipe_id(variant_recipe(variant, model))
    return f"{graph}|{model}|{rid}|{seed}|{epochs}"


def _commit() -> str | None:
    """The git commit of this code (``DISKGNN_COMMIT`` when run from a copy outside the repository)."""
    if os.environ.get("DISKGNN_COMMIT"):
        return os.environ["DISKGNN_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_results(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"bench": "recipe", "runs": {}, "graphs": {}}


def save_results(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, path)


def summarize(runs: list[dict], epochs=CHECKPOINT_EPOCHS) -> dict:
    """Mean, sample std and count over seeds of the accuracy at each of ``epochs`` (in %); diverged runs
    are counted apart (``diverged``)."""
    out = {"diverged": sum(1 for r in runs if r.get("error"))}
    runs = [r for r in runs if not r.get("error")]
    if not runs:
        out["epoch_time_s"] = float("nan")
        return out
    for k in epochs:
        cosine = any(r["recipe"].get("lr_schedule") == "cosine" for r in runs)
        vals = [acc_at(r["history"], k) for r in runs if not cosine or len(r["history"]) == k]
        vals = [100 * v for v in vals if v is not None]
        if vals:
            out[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      "n": len(vals)}
    out["epoch_time_s"] = statistics.median(r["epoch_time_s"] for r in runs)
    return out


def table(result: dict, graphs=None, models=None, variants=None, epochs=(2, 5, 10, 30)) -> str:
    """Markdown tables, one per graph and model: test accuracy (mean +- std over seeds) after k epochs.

    Rows are ``variants`` (names, resolved per model) in that order, or every recipe that ran."""
    groups: dict[tuple, dict[str, list]] = {}
    for rec in result["runs"].values():
        g, m = rec["graph"], rec["model"]
        if (graphs and g not in graphs) or (models and m not in models):
            continue
        groups.setdefault((g, m), {}).setdefault(recipe_id(rec["recipe"]), []).append(rec)
    lines = []
    for (g, m) in sorted(groups, key=lambda x: (list(GRAPHS).index(x[0]) if x[0] in GRAPHS else 99, x[1])):
        lines.append(f"\n**{g}, {m}** ({GRAPHS[g].note if g in GRAPHS else ''})\n")
        lines.append("| variant | seeds | " + " | ".join(f"{k} ep" for k in epochs) + " | s/epoch |")
        lines.append("|---|---|" + "---|" * len(epochs) + "---|")
        if variants:
            rows = [(v, "dgl-online" if v == "dgl-online" else recipe_id(variant_recipe(v, m))) for v in variants]
        else:
            rows = [(rid, rid) for rid in sorted(groups[(g, m)])]
        for label, rid in rows:
            runs = groups[(g, m)].get(rid)
            if not runs:
                continue
            s = summarize(runs, epochs)
            cells = [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" if k in s else "—" for k in epochs]
            seeds = f"{len(runs)}" + (f" ({s['diverged']} diverged)" if s["diverged"] else "")
            lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + f" | {s['epoch_time_s']:.2f} |")
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------

def cmd_sweep(args) -> int:
    # Import every stage now: a long sweep should not pick up half-edited sources later.
    import diskgnn.models, diskgnn.ops, diskgnn.packing, diskgnn.sampling, diskgnn.store, diskgnn.train  # noqa
    from diskgnn.kernels import gather, message, packing, sampling  # noqa: F401
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = load_results(out)
    result.setdefault("machine", {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "torch": torch.__version__})
    result.setdefault("commits", [])
    commit = _commit()
    if commit not in result["commits"]:
        result["commits"].append(commit)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    graphs = args.graphs.split(",")
    models = args.models.split(",")
    variants = [v for v in args.variants.split(";") if v]
    seeds = [int(s) for s in args.seeds.split(",")]
    for g in graphs:
        if g not in GRAPHS:
            raise SystemExit(f"unknown graph {g!r}; choose from {', '.join(GRAPHS)}")
    for m in models:
        for v in variants:
            if v != "dgl-online":
                variant_recipe(v, m)  # a typo fails before hours of training
    datasets = {}
    for g in graphs:
        spec = GRAPHS[g]
        datasets[g] = ds = graph_dataset(g, workdir, args.dataset_s)
        result["graphs"][g] = {"dataset": str(ds.path), "fingerprint": ds.fingerprint, "fanouts": list(spec.fanouts),
                               "synth": spec.synth, "note": spec.note, "nodes": ds.num_nodes, "edges": ds.num_edges}
    for seed in seeds:  # seed outermost: a first look at every graph comes early
        for g in graphs:
            spec, ds = GRAPHS[g], datasets[g]
            todo = [(m, v) for m in models for v in variants
                    if run_key(g, m, v, seed, args.epochs) not in result["runs"]]
            packed = None
            for m, v in todo:
                if run_key(g, m, v, seed, args.epochs) in result["runs"]:
                    continue  # another name for a recipe that just ran
                t0 = time.perf_counter()
                if v == "dgl-online":
                    rec = train_dgl_online(ds, spec.fanouts, m, seed=seed, epochs=args.epochs)
                else:
                    if packed is None:
                        packed = packed_for(ds, spec.fanouts, seed, workdir, g if spec.synth else
                                            f"s-{'-'.join(map(str, spec.fanouts))}")
                    rec = train_diskgnn(packed, m, variant_recipe(v, m), seed=seed, epochs=args.epochs,
                                        threads=args.threads)
                rec.update({"graph": g, "model": m, "variant": v, "seed": seed, "epochs": args.epochs,
                            "commit": commit})
                result["runs"][run_key(g, m, v, seed, args.epochs)] = rec
                save_results(out, result)
                log.info("%s %s %s seed %d: test@2 %.4f @5 %.4f @%d %.4f (%.0f s)%s", g, m, v, seed,
                         acc_at(rec["history"], 2) or 0, acc_at(rec["history"], 5) or 0, args.epochs,
                         rec["test_acc"] or 0, time.perf_counter() - t0, " DIVERGED" if rec.get("error") else "")
            if not args.keep:
                for p in [*workdir.glob("*.samples"), *workdir.glob("*.packed")]:
                    shutil.rmtree(p, ignore_errors=True)
    print(table(result, graphs, models, variants))
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    result = load_results(Path(args.out))
    graphs = args.graphs.split(",") if args.graphs else None
    models = args.models.split(",") if args.models else None
    variants = [v for v in args.variants.split(";") if v] if args.variants else None
    print(table(result, graphs, models, variants, tuple(int(k) for k in args.at.split(","))))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.recipe", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="train every graph x model x variant x seed (resumes)")
    s.add_argument("--graphs", default="s,s-3layer,dense,sparse")
    s.add_argument("--models", default="sage,gcn,gat")
    s.add_argument("--variants", default="current;default",
                   help="';'-separated: current, default, dgl-online, or key=value,... (init, dropout, lr, "
                        "schedule, warmup)")
    s.add_argument("--seeds", default="0,1,2")
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--dataset-s", default="/work/data/s", help="the scale-s dataset (made if missing)")
    s.add_argument("--workdir", default="bench/work/recipe", help="generated graphs, samples and packed data")
    s.add_argument("--keep", action="store_true", help="keep samples and packed data after each graph")
    s.add_argument("--out", default="bench/results/recipe-sweep.json")
    s.set_defaults(func=cmd_sweep)
    r = sub.add_parser("report", help="markdown tables of a sweep's results")
    r.add_argument("--out", default="bench/results/recipe-sweep.json")
    r.add_argument("--graphs", default=None)
    r.add_argument("--models", default=None)
    r.add_argument("--variants", default=None)
    r.add_argument("--at", default="2,5,10,30", help="epochs to report (default 2,5,10,30)")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("diskgnn.train", "diskgnn.sampling", "diskgnn.packing", "diskgnn.store", "diskgnn.synth"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
