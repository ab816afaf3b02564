"""Training on a heterogeneous dataset (first path: online per-relation sampling, features gathered from the
per-type feature files).

This is the heterogeneous counterpart of the homogeneous pipeline's training
loop *without* presampling and packing yet: every batch is sampled with
:class:`~diskgnn.hetero_sampling.HeteroSampler` and its input rows are read
from ``features/<type>.bin`` through a memory map. It fixes the model, the
sampling and the accuracy a heterogeneous run must reach; the packed per-type
store replaces the gather (same rows, bit for bit) once it exists.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from diskgnn.errors import ConfigError, MemoryBudgetError
from diskgnn.hetero import HeteroDataset
from diskgnn.hetero_models import HeteroGNN, hetero_blocks
from diskgnn.hetero_sampling import HeteroSampler
from diskgnn.kernels.rng import mix_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeteroTrainConfig:
    model: str = "rsage"
    fanouts: str = "10,15"
    eval_fanouts: str | None = None
    batch_size: int = 1024
    epochs: int = 3
    hidden: int = 128
    lr: float = 1e-3
    embed_lr: float = 1e-2
    dropout: float = 0.0
    num_bases: int | None = None
    seed: int = 0
    threads: int | None = None
    memory_budget: str | int | None = None
    """Memory the run may use (default: the available memory); the featureless types' embeddings must fit."""

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1 or self.hidden < 1:
            raise ConfigError("batch size, epochs and hidden width must be positive")
        if not self.lr > 0 or not self.embed_lr > 0:
            raise ConfigError("learning rates must be positive")


def batch_key(*parts: int) -> np.uint64:
    """A uint64 key mixed from ``parts`` (the samplers' counter-based RNG)."""
    key = np.uint64(parts[0])
    for p in parts[1:]:
        key = np.uint64(mix_key(key, np.uint64(p)))
    return key


def _features(ds: HeteroDataset, by_type: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, (_, local) in by_type.items():
        t = ds.node_types[name]
        if t.features is None or local.size == 0:
            continue
        rows = ds.feature_rows(name, local)
        if t.feat_dtype == "bf16":
            from diskgnn.dataset import bf16_bits_to_float32
            rows = bf16_bits_to_float32(rows)
        out[name] = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    return out


def _batch_inputs(sampler: HeteroSampler, mb):
    by_type = sampler.inputs_by_type(mb)
    return {t: (torch.from_numpy(p), torch.from_numpy(l)) for t, (p, l) in by_type.items()}, by_type


def evaluate(model: HeteroGNN, ds: HeteroDataset, sampler: HeteroSampler, ids: np.ndarray, batch_size: int,
             key: int) -> float:
    if ids.size == 0:
        return float("nan")
    labels = np.asarray(ds.labels)
    correct = 0
    model.eval()
    with torch.inference_mode():
        for i, lo in enumerate(range(0, ids.size, batch_size)):
            seeds = ids[lo:lo + batch_size]
            mb = sampler.sample(seeds, batch_key(key, i))
            tens, by_type = _batch_inputs(sampler, mb)
            logits = model(hetero_blocks(mb, len(sampler.relations)), tens, _features(ds, by_type))
            correct += int((logits[:seeds.size].argmax(1).numpy() == labels[seeds]).sum())
    return correct / ids.size


EMBEDDING_COPIES = 3
"""An embedding row is held three times: the weights and SparseAdam's two moment estimates."""


def embedding_bytes(ds: HeteroDataset, hidden: int) -> dict[str, int]:
    """Bytes of the learnable embeddings of every featureless type (weights and optimizer state)."""
    return {name: t.num_nodes * hidden * 4 * EMBEDDING_COPIES for name, t in ds.node_types.items()
            if t.features is None}


def check_embedding_memory(ds: HeteroDataset, cfg: HeteroTrainConfig) -> None:
    """Refuse, naming the types and sizes, when the featureless types' embeddings do not fit the budget (half of
    it: batches, features and the model's activations need the rest)."""
    from diskgnn.memory import resolve_memory_budget
    from diskgnn.sizes import format_bytes
    sizes = embedding_bytes(ds, cfg.hidden)
    need = sum(sizes.values())
    budget = resolve_memory_budget(cfg.memory_budget)
    if need > budget // 2:
        parts = ", ".join(f"{t} {format_bytes(b)}" for t, b in sizes.items())
        raise MemoryBudgetError(
            f"the learnable embeddings of the featureless node types need {format_bytes(need)} ({parts}: "
            f"{cfg.hidden} values per node, with the optimizer's two moments) but half of the "
            f"{format_bytes(budget)} memory budget is {format_bytes(budget // 2)}; lower --hidden, raise "
            f"--memory-budget, or give those types features")


def make_optimizers(dense_params, sparse_params, lr: float, embed_lr: float) -> list:
    """Adam over the dense parameters, SparseAdam over the embeddings (when there are any)."""
    opts = [torch.optim.Adam(dense_params, lr=lr)]
    if sparse_params:
        opts.append(torch.optim.SparseAdam(sparse_params, lr=embed_lr))
    return opts


def optimizer_step(loss: torch.Tensor, optimizers: list) -> None:
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()


def best_epoch(history: list[dict]) -> dict:
    """The epoch with the best validation accuracy (the earliest on a tie)."""
    return max(history, key=lambda r: (r["val_acc"], -r["epoch"]))


def train_hetero(dataset, cfg: HeteroTrainConfig, *, on_epoch=None) -> dict:
    """Train ``cfg.model`` on the target type's training nodes; returns the history and final accuracies."""
    ds = dataset if isinstance(dataset, HeteroDataset) else HeteroDataset.open(dataset)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    sampler = HeteroSampler(ds, cfg.fanouts)
    eval_sampler = HeteroSampler(ds, cfg.eval_fanouts) if cfg.eval_fanouts else sampler
    if len(eval_sampler.fanouts) != len(sampler.fanouts):
        raise ConfigError(f"--eval-fanouts has {len(eval_sampler.fanouts)} layers, --fanouts "
                          f"{len(sampler.fanouts)}; give both the same number of layers")
    check_embedding_memory(ds, cfg)
    model = HeteroGNN(cfg.model, ds.node_types, len(sampler.relations), ds.num_classes, len(sampler.fanouts),
                      hidden=cfg.hidden, num_bases=cfg.num_bases, dropout=cfg.dropout)
    optimizers = make_optimizers(model.dense_parameters(), model.sparse_parameters(), cfg.lr, cfg.embed_lr)
    labels = torch.from_numpy(np.array(ds.labels, dtype=np.int64))
    train, val, test = (np.asarray(ds.split(s)) for s in ("train", "val", "test"))
    rng = np.random.default_rng(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = rng.permutation(train)
        total_loss, n = 0.0, 0
        for i, lo in enumerate(range(0, perm.size, cfg.batch_size)):
            seeds = np.sort(perm[lo:lo + cfg.batch_size])
            mb = sampler.sample(seeds, batch_key(cfg.seed, epoch + 1, i))
            tens, by_type = _batch_inputs(sampler, mb)
            logits = model(hetero_blocks(mb, len(sampler.relations)), tens, _features(ds, by_type))
            loss = torch.nn.functional.cross_entropy(logits[:seeds.size], labels[torch.from_numpy(seeds)])
            optimizer_step(loss, optimizers)
            total_loss += float(loss) * seeds.size
            n += seeds.size
        train_s = time.perf_counter() - t0
        val_acc = evaluate(model, ds, eval_sampler, val, cfg.batch_size, key=1 << 40)
        test_acc = evaluate(model, ds, eval_sampler, test, cfg.batch_size, key=1 << 41)
        rec = {"epoch": epoch + 1, "loss": total_loss / max(n, 1), "epoch_time_s": train_s, "val_acc": val_acc,
               "test_acc": test_acc}
        history.append(rec)
        log.info("epoch %d: loss %.4f, val %.4f, test %.4f, %.1f s", epoch + 1, rec["loss"], val_acc, test_acc,
                 train_s)
        if on_epoch:
            on_epoch(rec)
    best = best_epoch(history)
    return {"config": asdict(cfg), "history": history, "best_epoch": best["epoch"], "val_acc": best["val_acc"],
            "test_acc": best["test_acc"], "model": model}
