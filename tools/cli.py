"""The ``diskgnn`` command line: parse arguments, call the library, print results.

Each subcommand only parses and calls into :mod:`diskgnn`; errors the user can
fix (:class:`diskgnn.errors.DiskGNNError`) print one paragraph and exit 2
(traceback only with ``-v``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

from diskgnn.errors import ConfigError, DiskGNNError

log = logging.getLogger("diskgnn")


class TqdmProgress:
    """A progress function (see :mod:`diskgnn.progress`) that draws one tqdm bar per task."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars = {}

    def __call__(self, task: str, advance: int, total=None) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(task)
        if bar is None:
            from tqdm import tqdm
            bar = self.bars[task] = tqdm(total=total, desc=task, unit_scale=True, leave=False,
                                         dynamic_ncols=True, mininterval=0.5)
        elif total is not None and bar.total != total:
            bar.total = total
            bar.refresh()
        if advance:
            bar.update(advance)
        if bar.total is not None and bar.n >= bar.total:
            bar.close()
            del self.bars[task]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output; -v also shows tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")


def _sample_args(p: argparse.ArgumentParser, required: bool = True, epochs_flag: str = "--epochs") -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--fanouts", default="10,15",
                   help="neighbours per layer, input side first as in DGL's NeighborSampler; -1 = all (default 10,15)")
    g.add_argument("--eval-fanouts", default=None,
                   help="neighbours per layer of the presampled validation and test batches, one per layer of "
                        "--fanouts; -1 = all, e.g. -1,-1 for full-neighbour evaluation (default: --fanouts)")
    g.add_argument("--batch-size", type=int, default=1024, help="seeds per minibatch (default 1024)")
    g.add_argument(epochs_flag, dest="sample_epochs", type=int, default=None,
                   help="presampled training epochs K, cycled during training (default 1)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g = p.add_argument_group("link prediction (--task link)")
    g.add_argument("--task", choices=["node", "link"], default=None,
                   help="node: batches of seed nodes (default); link: batches of positive training edges with "
                        "negatives, the batch's own edges (and reverses, undirected) excluded from message passing")
    g.add_argument("--negatives", type=int, default=None, help="negative destinations per positive edge (default 1)")
    g.add_argument("--negative-sampler", choices=["uniform", "degree"], default=None,
                   help="uniform over nodes (default), or degree: probability ~ degree^0.75")
    g.add_argument("--eval-batch-size", type=int, default=None,
                   help="held-out edges per evaluation batch (default: about a training batch's endpoints)")


def _link_split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("link prediction datasets")
    g.add_argument("--edge-split", default=None,
                   help="make a link-prediction dataset: train,val,test shares of the edges, e.g. 0.90,0.05,0.05 "
                        "(seeded); held-out edges (and reverses, --undirected) leave the message-passing graph")
    g.add_argument("--eval-negatives", type=int, default=None,
                   help="candidate destinations drawn per held-out edge (default 100)")


def _pack_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("packing and caches")
    g.add_argument("--device-cache", default="0",
                   help="rows kept on the training device (GPU memory, or host memory without CUDA): "
                        "bytes (512M, 2G) or %% of feature bytes (default 0)")
    g.add_argument("--pinned-cache", default="0", help="rows kept in pinned host memory (default 0)")
    g.add_argument("--host-cache", default="10%", help="rows kept in host memory (default 10%%)")
    g.add_argument("--disk-budget", default=None,
                   help="cap on packed bytes as a multiple of the feature bytes, e.g. 2x: batches are grouped in "
                        "segments that store each row once and are read once per epoch (default: no cap, unless "
                        "the plain layout would not fit the free disk space: then the budget that fits)")
    g.add_argument("--segment-memory", default=None,
                   help="largest segment under --disk-budget (training keeps one in memory and reads the next "
                        "beside it); longer segments share more rows (default: a quarter of --memory-budget)")
    g.add_argument("--store-dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="precision of packed rows (default: the dataset's)")
    g.add_argument("--chunk-size", default=None,
                   help="feature bytes streamed per chunk in the groups write mode (default: from "
                        "--memory-budget, at most 256M)")
    g.add_argument("--write-mode", choices=["auto", "stream", "groups"], default=None,
                   help="stream: read features.bin once in blocks and write each block's rows of every batch "
                        "at once (bounded memory, resumable); groups: fill output buffers as large as the "
                        "budget allows, one pass each; auto (default): stream when it fits and its writes "
                        "are large. Same output either way")
    g.add_argument("--order-block", default=None,
                   help="bytes of features.bin per block of the row order and of streaming (default: sized so "
                        "each batch gets ~256 KiB per block, 64M-1G)")
    g.add_argument("--belady", action="store_true",
                   help="also compute the Belady (optimal offline) hit rate of the same cache size, a bound for "
                        "the report, on the other core beside the writes; the pack waits for it (at scale m with "
                        "3 layers it took 35 s, three times the writes), so it is off unless asked for")


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--model", default="sage",
                   help="sage, gat or gcn (default sage), or a stack of another library's convolution, as deep as "
                        "the fanouts: pyg:<Conv> (PyTorch Geometric, e.g. pyg:SAGEConv, pyg:GATConv) or dgl:<Conv>")
    g.add_argument("--epochs", dest="train_epochs", type=int, default=None, help="training epochs (default 10)")
    g.add_argument("--hidden", type=int, default=None,
                   help="hidden units (default 128; GAT and multi-head pyg:/dgl: convolutions: 32 per head)")
    g.add_argument("--heads", type=int, default=4,
                   help="attention heads of gat and of pyg:/dgl: attention convolutions (default 4)")
    _recipe_args(g)
    g.add_argument("--train-seed", type=int, default=0, help="seed of weights and batch order (default 0)")
    g.add_argument("--metrics", default=None, help="append per-epoch metrics as JSON lines to this file")
    g.add_argument("--checkpoint", default=None, help="directory for per-epoch checkpoints")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint directory's last epoch")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    g.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (default 1)")
    g.add_argument("--memory-budget", default=None,
                   help="memory this machine may use for feature tiers and buffers, e.g. 8G, divided among its "
                        "--nproc processes (default: available memory)")
    g.add_argument("--threads", type=int, default=None,
                   help="compute threads per process: torch's intra-op threads and the message-passing kernels' "
                        "(default: every core this process may use; with --nproc N, its share)")
    g.add_argument("--io-depth", type=int, default=None,
                   help="read requests in flight (default 8; a disk with a long latency, e.g. network "
                        "storage, may want 16-32)")
    g.add_argument("--io-request", default=None, help="bytes per read request (default 1M)")
    g.add_argument("--recheck-reads", action="store_true",
                   help="check the crc32 of every packed read, not only the first read of each run (costs about "
                        "1 s of CPU per 5 GiB read)")
    g.add_argument("--assemble-threads", type=int, default=None,
                   help="threads that assemble each batch's feature matrix while the previous batch computes "
                        "(default: the same as --threads)")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (default 1)")
    g.add_argument("--decoder", choices=["dot", "mlp", "distmult"], default=None,
                   help="link prediction's edge decoder (default dot)")
    g.add_argument("--eval-mode", choices=["sampled", "layerwise"], default=None,
                   help="sampled: the presampled validation/test batches (their fanouts: sample --eval-fanouts); "
                        "layerwise: every node with all its neighbours, layer by layer out of core (sage, gcn, "
                        "gat; reads the input once per destination range) (default sampled)")
    g.add_argument("--eval-scratch", default=None,
                   help="directory for layer-wise evaluation's layer files, N x hidden x 4 bytes each (default: "
                        "<checkpoint>/layerwise, else beside the samples)")


def _recipe_args(g) -> None:
    """The training recipe's flags (defaults measured in docs/RECIPE.md; None = the library's default)."""
    from diskgnn.recipe_defaults import (DEFAULT_DROPOUT, DEFAULT_INIT, DEFAULT_LR, DEFAULT_LR_SCHEDULE,
                                         DEFAULT_WARMUP_EPOCHS, INITS, LR_SCHEDULES)  # torch-free
    g.add_argument("--init", choices=INITS, default=None,
                   help=f"weight initialisation of sage/gat/gcn: torch (nn.Linear's default, as PyG), xavier "
                        f"(gain 1) or xavier-relu (ReLU gain, as DGL) (default {DEFAULT_INIT}; pyg:/dgl: models "
                        f"keep their library's)")
    g.add_argument("--dropout", type=float, default=None, help=f"dropout between layers (default {DEFAULT_DROPOUT:g})")
    g.add_argument("--lr", type=float, default=None, help=f"peak Adam learning rate (default {DEFAULT_LR:g})")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help=f"learning rate after the warm-up: constant, or cosine decay to 0 at the last epoch "
                        f"(default {DEFAULT_LR_SCHEDULE})")
    g.add_argument("--warmup-epochs", type=float, default=None,
                   help=f"epochs (may be fractional) of linear learning-rate warm-up, step by step "
                        f"(default {DEFAULT_WARMUP_EPOCHS:g})")


def _train_task_arg(p: argparse.ArgumentParser) -> None:
    """``--task`` of diskgnn train (in ``run`` the sampling group's ``--task`` serves both)."""
    p.add_argument("--task", choices=["node", "link"], default=None,
                   help="node or link; default: the task the samples were made for (a mismatch is an error)")


def _add_commands(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic dataset",
                       description="Generate a realistic synthetic graph (power-law degrees, homophilous "
                                   "communities, class-dependent noisy features) straight into the dataset "
                                   "format. Deterministic for a given seed.")
    p.add_argument("--scale", choices=["tiny", "s", "m", "l"], default="tiny",
                   help="named scale from bench/BENCH (tiny 10k nodes, s 200k, m 8M, l 64M with 2.3 billion "
                        "edges: about 19 GB); other flags override it")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--nodes", type=int, default=None)
    p.add_argument("--avg-degree", type=float, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--homophily", type=float, default=None, help="share of edges inside a community (0..1)")
    p.add_argument("--separation", type=float, default=None,
                   help="class-mean distance in noise units; lower makes features alone less useful")
    p.add_argument("--degree-exponent", type=float, default=None,
                   help="Pareto exponent of the in-degrees (> 2, default 2.5); lower = heavier tail")
    p.add_argument("--popularity-exponent", type=float, default=None,
                   help="Pareto exponent of how often a node is a source (> 1, default 2.1); lower = hotter hubs")
    p.add_argument("--communities-per-class", type=int, default=None,
                   help="communities per class (default 4); homophilous edges stay inside one")
    p.add_argument("--train-fraction", type=float, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--test-fraction", type=float, default=None)
    p.add_argument("--task", choices=["node", "link"], default="node",
                   help="link: a link-prediction dataset with the scale's default --edge-split (tiny 0.5,0.05,0.05; "
                        "s 0.1,0.005,0.005; m 0.0015,0.00002,0.00002)")
    _link_split_args(p)
    p.add_argument("--chunk-nodes", type=int, default=1 << 18,
                   help="nodes generated per chunk (default 262144); a killed run resumes after its last chunk. "
                        "Feature noise is drawn per chunk, so another value gives other features")
    p.add_argument("--hetero", action="store_true",
                   help="a MAG-like heterogeneous graph instead (paper, author, institution, field; scales tiny, "
                        "s, m; see docs/HETERO.md); --seed, --classes, --dtype and the split fractions apply")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    _common(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="import a graph into the dataset format",
                       description="Import a graph (npz / directory of .npy, text edge list, OGB raw "
                                   "directory, DGL .bin) into a dataset directory, streaming with bounded memory.")
    p.add_argument("input", help="input file or directory")
    p.add_argument("--format", required=True,
                   choices=["npz", "edgelist", "ogb", "dgl", "hetero-dir", "hetero-ogb", "hetero-dgl"],
                   help="hetero-*: a heterogeneous graph (docs/HETERO.md): hetero-dir a directory of .npy files "
                        "(meta.json, feat/<type>.npy, edges/<src>__<relation>__<dst>.npy, label.npy, *_idx.npy), "
                        "hetero-ogb an OGB heterogeneous dataset directory (ogbn-mag), hetero-dgl a heterograph "
                        "file from dgl.save_graphs")
    p.add_argument("--add-reverse", action="store_true",
                   help="hetero-dir: add <dst>__rev_<relation>__<src> for every relation")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--undirected", action="store_true", help="add the reverse of every edge")
    p.add_argument("--keep-self-loops", action="store_true", help="keep self-loops (dropped by default)")
    p.add_argument("--keep-duplicates", action="store_true", help="keep duplicate edges (dropped by default)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="stored feature dtype")
    p.add_argument("--memory-budget", default=None, help="memory to use, e.g. 2G (default: available memory)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf in features")
    p.add_argument("--features", default=None, help="edgelist: features .npy (N x F)")
    p.add_argument("--labels", default=None, help="edgelist: labels .npy (N)")
    p.add_argument("--splits", default=None, help="edgelist: .npz with train_idx, val_idx, test_idx")
    p.add_argument("--num-nodes", type=int, default=None, help="edgelist: node count (default: max id + 1)")
    p.add_argument("--dataset-name", default=None, help="ogb: split name under split/ (default: the only one)")
    _link_split_args(p)
    p.add_argument("--split-seed", type=int, default=0, help="seed of --edge-split and the drawn candidates")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    _common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("info", help="summarise a dataset, samples or packed directory")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("verify", help="check every invariant and checksum of a diskgnn directory",
                       description="Check a dataset, samples or packed directory; exit non-zero naming the "
                                   "first problem found.")
    p.add_argument("dir")
    p.add_argument("--no-checksums", action="store_true", help="skip crc32 checks (faster)")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sample", help="presample minibatches for training and evaluation",
                       description="Presample K epochs of training minibatches and one pass over the "
                                   "validation and test nodes, storing blocks, input nodes and access counts.")
    p.add_argument("dataset", help="dataset directory")
    p.add_argument("--out", required=True, help="samples directory to write")
    _sample_args(p)
    p.add_argument("--mmap-topology", choices=["auto", "yes", "no"], default="auto",
                   help="read the CSR through a memory map instead of loading it (auto: when it does not fit "
                        "the memory budget)")
    p.add_argument("--memory-budget", default=None, help="memory to use, e.g. 2G (default: available memory)")
    p.add_argument("--threads", type=int, default=None, help="sampling threads (default: all cores)")
    p.add_argument("--num-shards", type=int, default=1, help="split the batches into this many shards")
    p.add_argument("--shard", type=int, default=0, help="which shard this process writes (0-based)")
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("pack", help="choose cache tiers and lay minibatch features out contiguously",
                       description="Read features.bin sequentially (once, in the stream write mode) and write "
                                   "every minibatch's uncached rows contiguously (4 KiB-aligned) plus the cache "
                                   "tier contents. A killed streamed pack resumes when the same command is run "
                                   "again.")
    p.add_argument("samples", help="samples directory")
    p.add_argument("--out", required=True, help="packed directory to write")
    p.add_argument("--dataset", default=None, help="dataset directory (default: the one the samples came from)")
    _pack_args(p)
    p.add_argument("--memory-budget", default=None, help="memory to use, e.g. 2G (default: available memory)")
    p.add_argument("--journal-every", default=None,
                   help="stream mode: bytes of features.bin between resume journals (default 1G)")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("train", help="train a GNN from a packed directory",
                       description="Pipelined out-of-core training: load batch > read packed extents > "
                                   "assemble features > forward/backward. Evaluates on presampled "
                                   "validation/test batches every epoch.")
    p.add_argument("packed", help="packed directory")
    _train_args(p)
    _train_task_arg(p)
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-hetero", help="train rsage or rgcn on a heterogeneous graph (packed or online)",
                       description="Train relation-wise GraphSAGE (rsage) or RGCN on the target type of a "
                                   "heterogeneous graph. Given a packed directory (diskgnn sample, then diskgnn pack "
                                   "on the heterogeneous dataset), batches are the presampled ones and every "
                                   "featured type's rows come from its packed store (memory tiers + O_DIRECT "
                                   "extents), read ahead on a background thread: the out-of-core path. Given the "
                                   "dataset itself, batches are sampled online and rows read from the feature "
                                   "files (--fanouts and --batch-size apply only then). docs/HETERO.md.")
    p.add_argument("source", metavar="PACKED_OR_DATASET",
                   help="heterogeneous packed directory (out of core) or dataset directory (online sampling)")
    p.add_argument("--model", choices=["rsage", "rgcn"], default="rsage")
    p.add_argument("--fanouts", default="10,15",
                   help="online only: per layer, outermost first, one count for every relation or "
                        "'rel=count|...|*=count' (default 10,15; a packed directory uses its samples' fanouts)")
    p.add_argument("--eval-fanouts", default=None, help="fanouts of validation and test (default: --fanouts)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embed-lr", type=float, default=1e-2, help="learning rate of featureless types' embeddings")
    p.add_argument("--num-bases", type=int, default=None, help="rgcn: basis decomposition with this many bases")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--metrics", default=None, help="append per-epoch metrics as JSON lines to this file")
    p.add_argument("--memory-budget", default=None,
                   help="memory to use, e.g. 2G (default: available memory); featureless types' embeddings must "
                        "fit half of it")
    _common(p)
    p.set_defaults(func=cmd_train_hetero)

    p = sub.add_parser("embed", help="every node's embeddings from a trained model, layer by layer out of core",
                       description="Run a trained sage/gcn/gat checkpoint over every node with all its "
                                   "neighbours, one layer at a time (each layer's rows for all nodes written "
                                   "to disk, the next layer streaming them back with direct I/O), into a new "
                                   "directory: layer-<l>.bin (float32 [N, width], row v = node v) and "
                                   "manifest.json, written last.")
    p.add_argument("packed", help="the packed directory the model was trained on (its dataset and depth)")
    p.add_argument("--checkpoint", required=True, help="the --checkpoint directory of diskgnn train")
    p.add_argument("--out", required=True, help="embeddings directory to write (new or empty)")
    p.add_argument("--layers", choices=["last", "all"], default="last",
                   help="keep the model's output only (last, default) or every layer's rows (all)")
    p.add_argument("--memory-budget", default=None, help="memory to use, e.g. 2G (default: available memory)")
    p.add_argument("--block-size", default="64M", help="bytes of the previous layer read per block (default 64M)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    _common(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("run", help="synth/prepare > sample > pack > train in one command",
                       description="Run the whole pipeline, reusing a step's output when its manifest says it "
                                   "was made from the same inputs and config.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scale", choices=["tiny", "s", "m", "l"], help="generate a synthetic dataset of this scale")
    src.add_argument("--dataset", help="an existing dataset directory")
    p.add_argument("--workdir", required=True, help="directory for the dataset, samples, packed data and metrics")
    p.add_argument("--edge-split", default=None,
                   help="--scale with --task link: train,val,test shares of the edges (default: the scale's)")
    _sample_args(p, epochs_flag="--sample-epochs")  # --epochs is the training epochs here
    _pack_args(p)
    _train_args(p)
    _common(p)
    p.set_defaults(func=cmd_run)

    from diskgnn.bench.harness import WORKLOADS
    p = sub.add_parser("bench", help="benchmarks: disk limits, loaders, training, cache policies, report",
                       description="Measure diskgnn against baselines, side by side in one run, under a memory "
                                   "cgroup; see bench/README.md.")
    p.add_argument("what", choices=["io", "loader", "train", "compute", "cache", "sample", "report"])
    p.add_argument("--file", default=None, help="io: test file path (default: in --workdir); compute, cache, "
                                                "sample: the samples (compute, cache) or dataset (sample) directory")
    p.add_argument("--size", default="2G", help="io: test file size (default 2G)")
    p.add_argument("--scale", choices=["tiny", "s", "m"], default="s")
    p.add_argument("--workdir", default="bench/work", help="where generated data goes (deleted afterwards "
                                                           "unless --keep)")
    p.add_argument("--memory-cap", default=None, help="cgroup memory limit per system (default 2G at m)")
    p.add_argument("--systems", default=None, help="comma-separated subset of systems")
    p.add_argument("--epochs", type=int, default=3, help="measured epochs per system (after 1 warm-up)")
    p.add_argument("--slow-batches", type=int, default=0,
                   help="measure slow systems (mmap, pread, dgl-online) on this many "
                        "batches per epoch and scale up; the result says so (default 0 = all batches)")
    p.add_argument("--dataset", default=None, help="use this dataset directory instead of generating --scale")
    p.add_argument("--keep", action="store_true", help="keep generated data")
    p.add_argument("--model", default="sage", choices=["sage", "gcn", "gat"], help="train: the model (default sage)")
    p.add_argument("--fanouts", default=None, help="loader, train: sampling fanouts, DGL order (default 10,15, "
                                                   "or the --workload's)")
    p.add_argument("--batch-size", type=int, default=None, help="loader, train: seeds per batch (default 1024, or "
                                                                "the --workload's)")
    p.add_argument("--workload", default=None, choices=sorted(WORKLOADS),
                   help="loader, train: a named configuration: " + "; ".join(
                       f"{k}: {v['note']}" for k, v in sorted(WORKLOADS.items()))
                   + ". --fanouts and --batch-size override it")
    p.add_argument("--disk-budget", default=None, help="loader, train: pack the diskgnn systems with this disk budget "
                                                       "(e.g. 2x: segments, each read once per epoch)")
    p.add_argument("--segment-memory", default=None, help="loader, train: largest segment (default: a quarter of "
                                                          "--memory-cap)")
    p.add_argument("--task", choices=["node", "link"], default="node",
                   help="loader, train: link = link-prediction batches of a link dataset (generated with "
                        "synth --task link unless --dataset is given); default systems diskgnn-10%%, in-memory, "
                        "dgl-online, dgl-inmem")
    p.add_argument("--negatives", type=int, default=1, help="loader, train --task link: negatives per positive")
    p.add_argument("--decoder", choices=["dot", "mlp", "distmult"], default="dot",
                   help="train --task link: the edge decoder (default dot)")
    p.add_argument("--models", default="sage,gcn,gat", help="compute: models to time (default sage,gcn,gat)")
    p.add_argument("--batches", type=int, default=20, help="compute: timed batches per model (after 3 warm-up)")
    p.add_argument("--threads", type=int, default=2, help="compute: torch threads (default 2)")
    p.add_argument("--results", default="bench/results", help="results directory")
    p.add_argument("--out", default=None, help="result JSON path")
    _common(p)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diskgnn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Out-of-core GNN training that is both fast and exact.

            A typical run:
              diskgnn synth --scale s --out data/s          # or: diskgnn prepare ...
              diskgnn sample data/s --out data/s.samples --fanouts 10,15 --batch-size 1024
              diskgnn pack data/s.samples --out data/s.packed --host-cache 10%
              diskgnn train data/s.packed --model sage --epochs 10 --metrics m.jsonl
            or all at once:
              diskgnn run --scale s --workdir work/"""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_commands(sub)
    return parser


def _rank() -> int | None:
    """This process's rank when it is one of several (torchrun sets RANK and WORLD_SIZE), else None."""
    import os
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    except (KeyError, ValueError):
        return None


def _setup_logging(args) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    rank = _rank()
    if rank:  # only rank 0 of a multi-process run narrates; the others report problems
        level = max(level, logging.WARNING) if not args.verbose else level
    where = "" if rank is None else f"[rank {rank}] "
    logging.basicConfig(level=level, format=f"%(levelname)s {where}%(name)s: %(message)s", stream=sys.stderr)


_LIST_FLAGS = ("--fanouts", "--eval-fanouts")
"""Flags whose value may start with a minus (``-1,-1``), which argparse would take for an option."""


def _join_list_values(argv: list[str]) -> list[str]:
    """``--eval-fanouts -1,-1`` -> ``--eval-fanouts=-1,-1`` (argparse reads ``-1,-1`` as an unknown option)."""
    import re
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _LIST_FLAGS and i + 1 < len(argv) and re.match(r"-\d", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_args(build_parser().parse_args(_join_list_values([str(a) for a in argv])))


def run_args(args) -> int:
    """Run the parsed command ``args`` (with ``func`` and ``command``): logging, progress, error paragraphs."""
    _setup_logging(args)
    progress = TqdmProgress(enabled=not args.quiet and sys.stderr.isatty() and not _rank())
    try:
        return int(args.func(args, progress) or 0)
    except DiskGNNError as exc:
        progress.close()
        if args.verbose:
            log.exception("failed")
        print(f"diskgnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print(f"diskgnn {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        progress.close()


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- subcommands -------------------------------------------------------------------------------

def cmd_synth(args, progress) -> int:
    if args.hetero:
        return _synth_hetero(args, progress)
    from diskgnn.synth import scale_config, synthesize
    from diskgnn.dataset import summary
    cfg = scale_config(args.scale, task=args.task, seed=args.seed, nodes=args.nodes, avg_degree=args.avg_degree,
                       dim=args.dim, dtype=args.dtype, classes=args.classes, homophily=args.homophily,
                       separation=args.separation, degree_exponent=args.degree_exponent,
                       popularity_exponent=args.popularity_exponent,
                       communities_per_class=args.communities_per_class, train_fraction=args.train_fraction,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                       edge_split=args.edge_split, eval_negatives=args.eval_negatives)
    ds = synthesize(cfg, args.out, overwrite=args.overwrite, chunk_nodes=args.chunk_nodes, progress=progress)
    if not args.quiet:
        _print_summary(summary(ds))
    return 0


def _synth_hetero(args, progress) -> int:
    from diskgnn.hetero import hetero_scale_config, hetero_summary, synthesize_hetero
    unused = [f for f, v in (("--nodes", args.nodes), ("--avg-degree", args.avg_degree), ("--dim", args.dim),
                             ("--homophily", args.homophily), ("--separation", args.separation),
                             ("--degree-exponent", args.degree_exponent),
                             ("--popularity-exponent", args.popularity_exponent),
                             ("--communities-per-class", args.communities_per_class),
                             ("--edge-split", args.edge_split)) if v is not None]
    if unused or args.task != "node" or args.scale == "l":
        raise ConfigError(f"synth --hetero takes --scale tiny, s or m, --seed, --classes, --dtype and the split "
                          f"fractions; not {', '.join(unused) or ('--task link' if args.task != 'node' else '--scale l')}")
    overrides = {k: v for k, v in (("seed", args.seed), ("classes", args.classes), ("dtype", args.dtype),
                                   ("train_fraction", args.train_fraction), ("val_fraction", args.val_fraction),
                                   ("test_fraction", args.test_fraction)) if v is not None}
    ds = synthesize_hetero(hetero_scale_config(args.scale, **overrides), args.out, overwrite=args.overwrite,
                           progress=progress)
    if not args.quiet:
        _print_summary(hetero_summary(ds))
    return 0


def cmd_train_hetero(args, progress) -> int:
    from diskgnn.hetero_train import HeteroTrainConfig, train_hetero
    cfg = HeteroTrainConfig(model=args.model, fanouts=args.fanouts, eval_fanouts=args.eval_fanouts,
                            batch_size=args.batch_size, epochs=args.epochs, hidden=args.hidden, lr=args.lr,
                            embed_lr=args.embed_lr, num_bases=args.num_bases, dropout=args.dropout,
                            seed=args.train_seed, threads=args.threads, memory_budget=args.memory_budget)

    def on_epoch(rec):
        if args.metrics:
            with open(args.metrics, "a") as f:
                f.write(json.dumps({"event": "epoch", **rec}) + "\n")
        if not args.quiet:
            print(f"epoch {rec['epoch']}: loss {rec['loss']:.4f}, val {rec['val_acc']:.4f}, "
                  f"test {rec['test_acc']:.4f} ({rec['epoch_time_s']:.1f} s)")

    result = train_hetero(args.source, cfg, on_epoch=on_epoch)
    if not args.quiet:
        print(f"best epoch {result['best_epoch']}: val {result['val_acc']:.4f}, test {result['test_acc']:.4f}")
    return 0


def cmd_prepare(args, progress) -> int:
    if args.format.startswith("hetero-"):
        from diskgnn import hetero
        from diskgnn.memory import resolve_memory_budget
        common = dict(add_reverse=args.add_reverse, dtype=args.dtype, overwrite=args.overwrite, progress=progress,
                      memory_budget=resolve_memory_budget(args.memory_budget, fraction=0.5))
        if args.format == "hetero-dir":
            ds = hetero.import_hetero_dir(args.input, args.out, **common)
        elif args.format == "hetero-ogb":
            ds = hetero.import_hetero_ogb(args.input, args.out, split_name=args.dataset_name, **common)
        else:
            ds = hetero.import_hetero_dgl(args.input, args.out, **common)
        hetero_summary = hetero.hetero_summary
        if not args.quiet:
            _print_summary(hetero_summary(ds))
        return 0
    if args.add_reverse:
        raise ConfigError("--add-reverse applies to the hetero-* formats; for a homogeneous graph use --undirected")
    from diskgnn.ingest import PrepareConfig, prepare
    from diskgnn.dataset import summary
    cfg = PrepareConfig(format=args.format, input=args.input, undirected=args.undirected,
                        drop_self_loops=not args.keep_self_loops, drop_duplicates=not args.keep_duplicates,
                        dtype=args.dtype, memory_budget=args.memory_budget, allow_nonfinite=args.allow_nonfinite,
                        features=args.features, labels=args.labels, splits=args.splits,
                        num_nodes=args.num_nodes, split_name=args.dataset_name, edge_split=args.edge_split,
                        eval_negatives=args.eval_negatives, split_seed=args.split_seed)
    ds = prepare(cfg, args.out, overwrite=args.overwrite, progress=progress)
    if not args.quiet:
        _print_summary(summary(ds))
    return 0


def _print_summary(s: dict, indent: str = "") -> None:
    for key, value in s.items():
        if isinstance(value, dict) and key not in ("config",):
            print(f"{indent}{key}:")
            _print_summary(value, indent + "  ")
        else:
            if isinstance(value, int) and key.endswith("bytes"):
                from diskgnn.sizes import format_bytes
                value = f"{value} ({format_bytes(value)})"
            elif isinstance(value, float):
                value = f"{value:.4g}"
            print(f"{indent}{key}: {value}")


def _manifest_format(directory) -> str | None:
    try:
        return json.loads((Path(directory) / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def cmd_info(args, progress) -> int:
    from diskgnn.inspect import describe
    info = describe(args.dir)
    _print_json(info) if args.json else _print_summary(info)
    return 0


def cmd_verify(args, progress) -> int:
    from diskgnn.inspect import verify
    kind = verify(args.dir, check_crc=not args.no_checksums, progress=progress)
    if not args.quiet:
        print(f"{args.dir}: {kind} OK")
    return 0


def _sample_hetero(args, progress) -> int:
    from diskgnn.hetero_samples import HeteroSampleConfig, presample_hetero
    if args.task == "link":
        raise ConfigError("--task link is not available for heterogeneous datasets yet; sample node "
                          "classification batches of the target type")
    if args.num_shards != 1:
        raise ConfigError("--num-shards is not available for heterogeneous datasets yet; sample in one process")
    cfg = HeteroSampleConfig(fanouts=args.fanouts, eval_fanouts=args.eval_fanouts, batch_size=args.batch_size,
                             epochs=args.sample_epochs or 1, seed=args.seed)
    samples = presample_hetero(args.dataset, args.out, cfg, overwrite=args.overwrite, progress=progress)
    if not args.quiet:
        _print_summary(samples.summary())
    return 0


def cmd_sample(args, progress) -> int:
    from diskgnn.dataset import is_hetero
    if is_hetero(args.dataset):
        return _sample_hetero(args, progress)
    from diskgnn.sampling import SampleConfig, presample
    cfg = SampleConfig.from_cli(args)
    samples = presample(args.dataset, args.out, cfg, overwrite=args.overwrite, progress=progress,
                        mmap_topology=args.mmap_topology, memory_budget=args.memory_budget,
                        threads=args.threads, num_shards=args.num_shards, shard=args.shard)
    if not args.quiet:
        _print_summary(samples.summary())
    return 0


def cmd_pack(args, progress) -> int:
    from diskgnn.packing import PackConfig, pack
    cfg = PackConfig.from_cli(args)
    if _manifest_format(args.samples) == "diskgnn.hetero-samples":
        from diskgnn.hetero_packing import pack_hetero
        if args.num_shards != 1:
            raise ConfigError("--num-shards is not available for heterogeneous samples yet; pack in one process")
        packed = pack_hetero(args.samples, args.out, cfg, overwrite=args.overwrite, progress=progress,
                             memory_budget=args.memory_budget, dataset=args.dataset)
        if not args.quiet:
            _print_summary(packed.summary())
        return 0
    packed = pack(args.samples, args.out, cfg, dataset=args.dataset, overwrite=args.overwrite,
                  progress=progress, memory_budget=args.memory_budget,
                  num_shards=args.num_shards, shard=args.shard, journal_every=args.journal_every)
    if not args.quiet:
        _print_summary(packed.summary())
    return 0


def cmd_train(args, progress) -> int:
    if _manifest_format(args.packed) == "diskgnn.hetero-packed":
        raise ConfigError(f"{args.packed} packs a heterogeneous graph (typed nodes and relations); train it with "
                          f"diskgnn train-hetero {args.packed} (docs/HETERO.md)")
    from diskgnn.launch import train_cli
    from diskgnn.train import TrainConfig
    cfg = TrainConfig.from_cli(args)
    report = train_cli(args.packed, cfg, args=args, progress=progress)
    if not args.quiet and report is not None:
        _print_summary(report)
    return 0


def cmd_embed(args, progress) -> int:
    from diskgnn.embed import embed
    from diskgnn.inference import LayerwiseConfig
    from diskgnn.sizes import parse_size
    cfg = LayerwiseConfig(memory_budget=args.memory_budget, threads=args.threads,
                          block_bytes=parse_size(args.block_size, name="--block-size"))
    emb = embed(args.packed, args.checkpoint, args.out, cfg=cfg, keep=args.layers, overwrite=args.overwrite,
                progress=progress)
    if not args.quiet:
        _print_summary(emb.summary())
    return 0


def cmd_run(args, progress) -> int:
    from diskgnn.runner import run_cli
    report = run_cli(args, progress=progress)
    if not args.quiet and report is not None:
        _print_summary(report)
    return 0


def cmd_bench(args, progress) -> int:
    from diskgnn.bench.cli import bench_cli
    return bench_cli(args, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
