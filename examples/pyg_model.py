"""Train a hand-written PyTorch Geometric model on diskgnn's out-of-core pipeline.

    diskgnn synth --scale tiny --out data/tiny                # or any dataset directory
    python examples/pyg_model.py data/tiny --workdir work/pyg --epochs 5

The model below is plain PyG code: each layer gets PyG's bipartite input
(``x=(h_src, h_dst)``, ``edge_index``, ``size``) from a
:class:`diskgnn.interop.pyg.PyGBlock`. diskgnn presamples the minibatches,
packs their features on disk and feeds them through its pipeline (read >
assemble > compute) to :class:`diskgnn.train.Trainer`, which takes any module
``model(blocks, x)``; :class:`~diskgnn.interop.pyg.PyGModel` turns the
trainer's blocks into PyGBlocks.

A convolution without bipartite support (``GCNConv``) can run on a block's
sources as one node set, since destination ``i`` is source ``i``:
``conv(h, block.edge_index)[:block.num_dst]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_geometric.nn import GATv2Conv, SAGEConv

from diskgnn.interop.pyg import PyGModel
from diskgnn.packing import PackConfig, pack
from diskgnn.sampling import SampleConfig, presample
from diskgnn.store import FeatureStore
from diskgnn.loader import resolve_device
from diskgnn.train import Trainer, TrainConfig


class SageThenAttention(torch.nn.Module):
    """GraphSAGE (mean) on the outer hop, GATv2 attention (heads averaged) on the inner one."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, heads: int = 2, dropout: float = 0.2):
        super().__init__()
        self.conv1 = SAGEConv(in_dim, hidden)
        self.conv2 = GATv2Conv(hidden, num_classes, heads=heads, concat=False)
        self.dropout = dropout

    def forward(self, blocks, x):
        outer, inner = blocks                                   # PyGBlocks, outermost first
        h = self.conv1((x, x[:outer.num_dst]), outer.edge_index, size=outer.size).relu()
        h = F.dropout(h, self.dropout, self.training)
        return self.conv2((h, h[:inner.num_dst]), inner.edge_index)   # one row per seed


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a diskgnn dataset directory (diskgnn synth / diskgnn prepare)")
    p.add_argument("--workdir", required=True, help="where the samples and the packed features go")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--fanouts", default="10,5", help="two sampling fanouts, outermost first (the model has 2 layers)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    fanouts = tuple(int(f) for f in args.fanouts.split(","))
    if len(fanouts) != 2:
        p.error(f"--fanouts needs two values for this 2-layer model, got {args.fanouts!r}")
    work = Path(args.workdir)

    samples = presample(args.dataset, work / "samples", SampleConfig(fanouts=fanouts, batch_size=args.batch_size),
                        overwrite=True)
    packed = pack(samples.path, work / "packed", PackConfig(host_cache="20%"), overwrite=True)
    device = resolve_device(args.device)
    dataset = packed.dataset
    torch.manual_seed(0)
    model = PyGModel(SageThenAttention(dataset.feat_dim, args.hidden, dataset.num_classes))
    cfg = TrainConfig(epochs=args.epochs, lr=5e-3, device=str(device))
    with FeatureStore(packed, device) as store:
        report = Trainer(packed.samples, dataset, store, cfg, device=device, model=model).fit()
    print(json.dumps({k: report[k] for k in ("best_val_acc", "test_acc", "best_epoch", "epoch_time_s")}))
    return report


if __name__ == "__main__":
    main()
