"""Model compute per minibatch: diskgnn's layers against DGL's on the very same presampled blocks.

For each model (``sage``, ``gcn``, ``gat``) one train step (forward, backward,
Adam) is timed on the same batches, features and labels, for diskgnn's model
(:mod:`diskgnn.models`, fused CSR kernels on CPU) and for the DGL stack of the
same shape (``SAGEConv`` mean, ``GraphConv`` with ``norm='right'``, ``GATConv``
with ``allow_zero_in_degree=True``; ReLU between layers, ELU and flattened
heads for GAT, heads averaged at the output). Blocks are converted before the
clock starts for both, so only model compute is timed. The systems alternate
batch by batch, so a drift of the machine's speed hits both alike. Also timed:
diskgnn's forward pass under ``torch.inference_mode`` (evaluation).

DGL needs the reference stack; without it only diskgnn is measured::

    diskgnn bench compute --file SAMPLES_DIR [--models sage,gcn,gat] [--batches 20] [--threads 2]
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diskgnn.errors import ConfigError

log = logging.getLogger(__name__)

MODELS = ("sage", "gcn", "gat")


def dgl_available() -> bool:
    try:
        import dgl  # noqa: F401
    except ImportError:
        return False
    return True


class DGLStack(torch.nn.Module):
    """The DGL counterpart of :func:`diskgnn.models.build_model` (same widths and activations)."""

    def __init__(self, kind: str, in_dim: int, num_classes: int, num_layers: int, hidden: int, heads: int):
        super().__init__()
        import dgl.nn as dglnn
        self.kind = kind
        self.layers = torch.nn.ModuleList()
        width = in_dim
        for i in range(num_layers):
            out = num_classes if i == num_layers - 1 else hidden
            if kind == "sage":
                self.layers.append(dglnn.SAGEConv(width, out, "mean"))
                width = out
            elif kind == "gcn":
                self.layers.append(dglnn.GraphConv(width, out, norm="right", allow_zero_in_degree=True))
                width = out
            else:
                self.layers.append(dglnn.GATConv(width, out, heads, allow_zero_in_degree=True))
                width = out * heads

    def forward(self, blocks, x):
        h = x
        last = len(self.layers) - 1
        for i, (layer, block) in enumerate(zip(self.layers, blocks)):
            h = layer(block, h)
            if self.kind == "gat":
                h = h.mean(1) if i == last else F.elu(h.flatten(1))
            elif i != last:
                h = F.relu(h)
        return h


def _time_step(model, opt, blocks, x, y) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(blocks, x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def _time_eval(model, blocks, x) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(blocks, x)
    return time.perf_counter() - t0


def measure(samples_dir, *, models=MODELS, batches: int = 20, warmup: int = 3, threads: int | None = 2,
            hidden: int | None = None, heads: int = 4, feat_dim: int | None = None, seed: int = 0,
            with_dgl: bool | None = None) -> dict:
    """Median train-step time per model and system on the first ``batches`` training batches."""
    from diskgnn.dataset import Dataset
    from diskgnn.models import TorchBlock, build_model
    from diskgnn.sampling import Samples
    if threads:
        torch.set_num_threads(threads)
    with_dgl = dgl_available() if with_dgl is None else with_dgl
    samples = Samples.open(samples_dir)
    part = samples.train_parts[0]
    n = min(batches + warmup, samples.num_batches(part))
    if n <= warmup:
        raise ConfigError(f"{samples_dir} has only {samples.num_batches(part)} training batches; "
                          f"bench compute needs more than --warmup {warmup}")
    try:
        ds = Dataset.open(samples.dataset_path)
        in_dim, classes = ds.feat_dim, ds.num_classes
    except Exception:  # noqa: BLE001 - the dataset only supplies widths; synthetic features stand in
        in_dim, classes = feat_dim or 128, 16
    in_dim = feat_dim or in_dim
    rng = np.random.default_rng(seed)
    minibatches = [samples.batch(part, i) for i in range(n)]
    xs = [torch.from_numpy(rng.standard_normal((mb.blocks[0].num_src, in_dim), dtype=np.float32))
          for mb in minibatches]
    ys = [torch.from_numpy(rng.integers(0, classes, mb.blocks[-1].num_dst)) for mb in minibatches]
    ours = [[TorchBlock.from_block(b) for b in mb.blocks] for mb in minibatches]
    theirs = None
    if with_dgl:
        from diskgnn.interop.dgl import to_dgl_blocks
        theirs = [to_dgl_blocks(mb) for mb in minibatches]
    layers = samples.config.num_layers
    shape = {"batches": n - warmup, "warmup": warmup, "layers": layers, "fanouts": list(samples.config.fanouts),
             "batch_size": samples.config.batch_size, "in_dim": in_dim, "classes": classes,
             "input_nodes_mean": float(np.mean([mb.blocks[0].num_src for mb in minibatches])),
             "edges_mean": float(np.mean([sum(len(b.indices) for b in mb.blocks) for mb in minibatches])),
             "threads": torch.get_num_threads()}
    results = []
    for kind in models:
        torch.manual_seed(seed)
        model = build_model(kind, in_dim=in_dim, num_classes=classes, num_layers=layers, hidden=hidden, heads=heads)
        width = hidden or (32 if kind == "gat" else 128)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        systems = {"diskgnn": (model, opt, ours)}
        if theirs is not None:
            torch.manual_seed(seed)
            ref = DGLStack(kind, in_dim, classes, layers, width, heads)
            systems["dgl"] = (ref, torch.optim.Adam(ref.parameters(), lr=1e-3), theirs)
        times: dict[str, list[float]] = {name: [] for name in systems}
        names = list(systems)
        for i in range(n):
            # interleave batch by batch, first one system then the other: drift and cache order hit both alike
            for name in (names if i % 2 == 0 else names[::-1]):
                m, o, blocks = systems[name]
                for b in (blocks[i] if name == "diskgnn" else ()):
                    b.cache.clear()  # a batch is seen once per epoch in training: no cached transposes
                t = _time_step(m, o, blocks[i], xs[i], ys[i])
                if i >= warmup:
                    times[name].append(t)
        model.eval()
        eval_times = [_time_eval(model, ours[i], xs[i]) for i in range(n)][warmup:]
        row = {"model": kind, "hidden": width, "heads": heads if kind == "gat" else None,
               "eval_step_ms": 1000 * statistics.median(eval_times)}
        for name, ts in times.items():
            row[f"{name}_step_ms"] = 1000 * statistics.median(ts)
            row[f"{name}_step_ms_min"] = 1000 * min(ts)
            row[f"{name}_step_ms_max"] = 1000 * max(ts)
        if "dgl" in times:
            row["diskgnn_over_dgl"] = row["diskgnn_step_ms"] / row["dgl_step_ms"]
            paired = [a / b for a, b in zip(times["diskgnn"], times["dgl"])]
            row["paired_ratio_median"] = statistics.median(paired)
            row["paired_ratio_quartiles"] = [float(q) for q in np.percentile(paired, [25, 75])]
        results.append(row)
        log.info("%s: %s", kind, ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)))
    return {"kind": "compute", "samples": str(samples_dir), "shape": shape, "models": results,
            "torch": torch.__version__}


def markdown(result: dict) -> str:
    s = result["shape"]
    lines = [f"**Model compute per train step** (forward + backward + Adam), {s['layers']} layers, fanouts "
             f"{s['fanouts']}, batch {s['batch_size']}, {s['input_nodes_mean']:.0f} input nodes and "
             f"{s['edges_mean']:.0f} edges per batch on average, {s['in_dim']}-d input, {s['threads']} threads, "
             f"torch {result['torch']}; median of {s['batches']} batches (min-max).", "",
             "| model | diskgnn (ms) | DGL (ms) | diskgnn / DGL | per-batch ratio, median (quartiles) | diskgnn eval (ms) |",
             "|---|---|---|---|---|---|"]
    for r in result["models"]:
        ours = f"{r['diskgnn_step_ms']:.1f} ({r['diskgnn_step_ms_min']:.1f}-{r['diskgnn_step_ms_max']:.1f})"
        theirs = (f"{r['dgl_step_ms']:.1f} ({r['dgl_step_ms_min']:.1f}-{r['dgl_step_ms_max']:.1f})"
                  if "dgl_step_ms" in r else "n/a")
        ratio = f"{r['diskgnn_over_dgl']:.2f}x" if "diskgnn_over_dgl" in r else "n/a"
        paired = (f"{r['paired_ratio_median']:.2f}x ({r['paired_ratio_quartiles'][0]:.2f}-"
                  f"{r['paired_ratio_quartiles'][1]:.2f})" if "paired_ratio_median" in r else "n/a")
        lines.append(f"| {r['model']} | {ours} | {theirs} | {ratio} | {paired} | {r['eval_step_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def write(result: dict, results_dir: Path, out: Path | None, tag: str) -> Path:
    from diskgnn.bench.harness import git_commit, machine_facts
    results_dir.mkdir(parents=True, exist_ok=True)
    result.setdefault("commit", git_commit())
    result.setdefault("date", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    result.setdefault("machine", machine_facts(results_dir))
    path = out or results_dir / f"compute-{tag}-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    path.with_suffix(".md").write_text(markdown(result))
    return path
