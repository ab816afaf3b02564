"""Heterogeneous parity: diskgnn's relation-wise SAGE and RGCN against DGL's ``HeteroGraphConv`` of ``SAGEConv``.

``python -m diskgnn.bench.hetero_parity --scale s --seeds 0,1,2 --epochs 5`` makes the MAG-like
synthetic graph (:func:`diskgnn.hetero.synthesize_hetero`), then trains, per seed, with the same
fanouts, batch size, hidden width, learning rates and epochs:

* ``dgl``: DGL's online ``NeighborSampler`` over a ``dgl.heterograph`` of the same relations, a
  per-type input projection (featureless types: ``nn.Embedding`` rows, sparse Adam), and two
  ``HeteroGraphConv({relation: SAGEConv(mean)}, aggregate='sum')`` layers (reference stack), their linear
  layers drawn with torch's default initialisation as diskgnn's (``dgl-dglinit``: SAGEConv's own Xavier);
* ``diskgnn-rsage`` and ``diskgnn-rgcn``: :func:`diskgnn.hetero_train.train_hetero`.

It records every epoch's validation and test accuracy and the test accuracy of the best
validation epoch, and writes ``bench/results/hetero-parity-<scale>.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from diskgnn.errors import ConfigError
from diskgnn.hetero import HeteroDataset, hetero_scale_config, synthesize_hetero
from diskgnn.hetero_train import best_epoch, make_optimizers, optimizer_step

log = logging.getLogger(__name__)


def dgl_heterograph(ds: HeteroDataset, *, idtype=torch.int64, csc_only: bool = False):
    """The dataset's relations as a DGL heterograph: from edge lists, or (``csc_only``) straight from each
    relation's in-edge CSR with only the CSC format allowed (no COO or CSR copy is ever made: what a run under
    a memory cap can afford)."""
    import dgl
    data = {}
    np_id = np.int32 if idtype == torch.int32 else np.int64
    for name, r in ds.relations.items():
        indptr = np.asarray(ds.indptr(name))
        if csc_only:
            data[(r.src, r.rel, r.dst)] = ("csc", (torch.from_numpy(indptr.astype(np_id)),
                                                   torch.from_numpy(np.asarray(ds.indices(name)).astype(np_id)),
                                                   torch.zeros(0, dtype=idtype)))
            continue
        dst = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
        src = np.asarray(ds.indices(name), dtype=np.int64)
        data[(r.src, r.rel, r.dst)] = (torch.from_numpy(src.astype(np_id)), torch.from_numpy(dst.astype(np_id)))
    g = dgl.heterograph(data, num_nodes_dict={t: n.num_nodes for t, n in ds.node_types.items()}, idtype=idtype)
    if not csc_only:
        return g
    g = g.formats("csc")
    # DGL's graph index may share these tensors' memory without holding them: keep them alive with the graph
    # (without this, a run at scale m corrupted the heap in its second batch)
    g._diskgnn_csc_tensors = [t for v in data.values() for t in v[1]]
    return g


def dgl_model(ds: HeteroDataset, feats: dict, *, hidden: int, num_layers: int, init: str = "torch"):
    """Per-type input projections (featureless types: sparse embeddings) and ``num_layers``
    ``HeteroGraphConv({relation: SAGEConv(mean)}, aggregate='sum')`` layers; ``forward(blocks, input_nodes)``
    gathers each type's rows from ``feats`` (in-memory tensors or memory maps)."""
    import dgl.nn as dglnn
    target = ds.target
    rels = [r.rel for r in ds.relations.values()]
    if len(set(rels)) != len(rels):
        raise ConfigError("the DGL baseline names relations by their middle part; they must be distinct")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.ModuleDict({t: torch.nn.Linear(f.shape[1], hidden) for t, f in feats.items()})
            self.embed = torch.nn.ModuleDict({t: torch.nn.Embedding(x.num_nodes, hidden, sparse=True)
                                              for t, x in ds.node_types.items() if x.features is None})
            for e in self.embed.values():
                torch.nn.init.normal_(e.weight, std=1.0 / hidden ** 0.5)
            dims = [hidden] * num_layers + [ds.num_classes]
            self.layers = torch.nn.ModuleList(
                dglnn.HeteroGraphConv({r: dglnn.SAGEConv(dims[i], dims[i + 1], "mean") for r in rels},
                                      aggregate="sum") for i in range(num_layers))

        def forward(self, blocks, input_nodes):
            h = {}
            for t, ids in input_nodes.items():
                if ids.numel() == 0:
                    continue
                h[t] = self.proj[t](feats[t][ids]) if t in self.proj else self.embed[t](ids)
            for i, (layer, block) in enumerate(zip(self.layers, blocks)):
                h = layer(block, h)
                if i < len(self.layers) - 1:
                    h = {k: torch.relu(v) for k, v in h.items()}
            return h[target]

    net = Net()
    if init == "torch":
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, dglnn.SAGEConv):
                    m.fc_self.reset_parameters()  # weight and bias (DGL 2.1 keeps the bias in fc_self)
                    m.fc_neigh.reset_parameters()
    return net


def train_dgl(ds: HeteroDataset, *, fanouts: list[int], batch_size: int, epochs: int, hidden: int, lr: float,
              embed_lr: float, seed: int, init: str = "torch") -> dict:
    """``init``: ``dgl`` keeps SAGEConv's Xavier (ReLU gain) initialisation; ``torch`` re-draws its linear
    layers with torch's default, as diskgnn's models (the same recipe on both sides)."""
    try:
        import dgl
    except ImportError:
        raise ConfigError("the DGL baseline needs DGL (the reference stack)") from None
    torch.manual_seed(seed)
    dgl.seed(seed)
    g = dgl_heterograph(ds)
    feats = {t: torch.from_numpy(np.array(ds.features(t), dtype=np.float32))
             for t, x in ds.node_types.items() if x.features is not None}
    labels = torch.from_numpy(np.array(ds.labels, dtype=np.int64))
    target = ds.target
    net = dgl_model(ds, feats, hidden=hidden, num_layers=len(fanouts), init=init)
    optimizers = make_optimizers([p for n, p in net.named_parameters() if not n.startswith("embed.")],
                                 [p for n, p in net.named_parameters() if n.startswith("embed.")], lr, embed_lr)
    sampler = dgl.dataloading.NeighborSampler(fanouts)

    def loader(ids, shuffle):
        return dgl.dataloading.DataLoader(g, {target: torch.from_numpy(np.asarray(ids, dtype=np.int64))}, sampler,
                                          batch_size=batch_size, shuffle=shuffle, drop_last=False)

    def accuracy(ids) -> float:
        net.eval()
        correct = 0
        with torch.no_grad():
            for input_nodes, output_nodes, blocks in loader(ids, False):
                pred = net(blocks, input_nodes).argmax(1)
                correct += int((pred == labels[output_nodes[target]]).sum())
        return correct / max(len(ids), 1)

    train, val, test = (np.asarray(ds.split(s)) for s in ("train", "val", "test"))
    history = []
    for epoch in range(epochs):
        net.train()
        t0 = time.perf_counter()
        for input_nodes, output_nodes, blocks in loader(train, True):
            optimizer_step(torch.nn.functional.cross_entropy(net(blocks, input_nodes), labels[output_nodes[target]]),
                           optimizers)
        history.append({"epoch": epoch + 1, "epoch_time_s": time.perf_counter() - t0, "val_acc": accuracy(val),
                        "test_acc": accuracy(test)})
    best = best_epoch(history)
    return {"history": history, "val_acc": best["val_acc"], "test_acc": best["test_acc"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.hetero_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="s", choices=("tiny", "s", "m"))
    p.add_argument("--dataset", type=Path, default=None, help="an existing heterogeneous dataset (default: made)")
    p.add_argument("--workdir", type=Path, default=Path("bench-hetero"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embed-lr", type=float, default=1e-2)
    p.add_argument("--systems", default="dgl,diskgnn-rsage,diskgnn-rgcn")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)  # the machine facts measure its filesystem
    if args.dataset is None:
        path = args.workdir / f"hetero-{args.scale}"
        ds = HeteroDataset.open(path) if (path / "manifest.json").exists() else \
            synthesize_hetero(hetero_scale_config(args.scale), path)
    else:
        ds = HeteroDataset.open(args.dataset)
    from diskgnn.bench.harness import git_commit, machine_facts
    from diskgnn.hetero_train import HeteroTrainConfig, train_hetero
    out = args.out or Path("bench/results") / f"hetero-parity-{args.scale}.json"
    result = {"kind": "hetero-parity", "scale": args.scale, "commit": git_commit(), "date":
              time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_facts(args.workdir), "dataset": str(ds.path),
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": []}
    fanouts = [int(x) for x in args.fanouts.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        for system in args.systems.split(","):
            t0 = time.perf_counter()
            if system in ("dgl", "dgl-dglinit"):
                r = train_dgl(ds, fanouts=fanouts, batch_size=args.batch_size, epochs=args.epochs,
                              hidden=args.hidden, lr=args.lr, embed_lr=args.embed_lr, seed=seed,
                              init="torch" if system == "dgl" else "dgl")
            else:
                r = train_hetero(ds, HeteroTrainConfig(model=system.split("-", 1)[1], fanouts=args.fanouts,
                                                       batch_size=args.batch_size, epochs=args.epochs,
                                                       hidden=args.hidden, lr=args.lr, embed_lr=args.embed_lr,
                                                       seed=seed))
                r.pop("model")
            run = {"system": system, "seed": seed, "seconds": time.perf_counter() - t0, **r}
            log.info("%s seed %d: test %.4f (best val %.4f), %.0f s", system, seed, r["test_acc"], r["val_acc"],
                     run["seconds"])
            result["runs"].append(run)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, default=float))
    summary = {}
    for system in args.systems.split(","):
        accs = [r["test_acc"] for r in result["runs"] if r["system"] == system]
        summary[system] = {"mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                           "n": len(accs)}
    result["summary"] = summary
    out.write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
