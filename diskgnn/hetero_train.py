"""Training on a heterogeneous dataset: relation-wise SAGE or RGCN on the target type.

Two paths feed the same loop (the same model, batches and order):

* **packed** (``train-hetero PACKED``): batches presampled by ``diskgnn sample``
  (:mod:`diskgnn.hetero_samples`), every featured type's rows assembled from its
  packed store (:mod:`diskgnn.hetero_packing`: memory tiers plus contiguous
  O_DIRECT extents). A background thread reads and assembles the next batches
  while the current one is computed.
* **online** (``train-hetero DATASET``): every batch is sampled with
  :class:`~diskgnn.hetero_sampling.HeteroSampler` and its rows read from
  ``features/<type>.bin`` with ``pread``.

With the same seed both see the same batches and the same rows bit for bit, so
they train the same model (tested).
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
from diskgnn.hetero_sampling import HeteroSampler, inputs_by_type

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


class _OnlineBatches:
    """Batches sampled as they are needed; rows read from the feature files."""

    def __init__(self, ds: HeteroDataset, cfg: HeteroTrainConfig):
        self.ds = ds
        self.sampler = HeteroSampler(ds, cfg.fanouts)
        self.eval_sampler = HeteroSampler(ds, cfg.eval_fanouts) if cfg.eval_fanouts else self.sampler
        if len(self.eval_sampler.fanouts) != len(self.sampler.fanouts):
            raise ConfigError(f"--eval-fanouts has {len(self.eval_sampler.fanouts)} layers, --fanouts "
                              f"{len(self.sampler.fanouts)}; give both the same number of layers")
        from diskgnn.hetero_samples import eval_jobs
        self._cfg = cfg
        self._eval = eval_jobs(ds, cfg.batch_size)
        self._rng = np.random.default_rng(cfg.seed)
        self._train = np.asarray(ds.split("train"))
        self.num_layers = len(self.sampler.fanouts)

    def part(self, part: str, epoch: int = 0):
        from diskgnn.hetero_samples import train_jobs
        if part.startswith("train/"):  # the presampler's order and keys (part_seeds)
            jobs = train_jobs(self._rng.permutation(self._train), self._cfg.batch_size, self._cfg.seed, epoch)
            smp = self.sampler
        else:
            jobs, smp = self._eval[part], self.eval_sampler
        for seeds, key in jobs:
            mb = smp.sample(seeds, key)
            by_type = smp.inputs_by_type(mb)
            yield seeds, mb, by_type, _features(self.ds, by_type)

    def close(self) -> None:
        pass


ACTIVATION_MATRICES = 8
"""float32 [input nodes, hidden] matrices the model's forward and backward hold at their peak (see
:meth:`_PackedBatches.activation_bytes`)."""


class _PackedBatches:
    """Presampled batches; each featured type's rows from its feature store, read and assembled ahead on a
    background thread (``lookahead`` batches)."""

    def __init__(self, packed, cfg: HeteroTrainConfig, budget: int, lookahead: int = 1):
        from diskgnn.hetero_packing import HeteroPacked
        from diskgnn.store import FeatureStore
        self.packed = packed if isinstance(packed, HeteroPacked) else HeteroPacked.open(packed)
        self.ds = self.packed.dataset
        self.samples = self.packed.samples
        self.num_layers = self.samples.num_layers
        self.lookahead = lookahead
        self.target_offset = self.samples.type_offsets[self.ds.target]
        # one loader thread reads and assembles batch after batch: one pooled buffer per store, plus the read
        # of the next batch submitted ahead (plan_reads)
        self.stores = {t: FeatureStore(p, memory_budget=budget, pool_size=1) for t, p in self.packed.types.items()}
        self.train_parts = [p for p in self.samples.parts if p.startswith("train/")]
        if cfg.epochs > len(self.train_parts):
            log.warning("%s holds %d sampled epochs; epochs beyond them reuse them in turn (sample more epochs "
                        "for fresh batches)", self.samples.path, len(self.train_parts))
        self._pool = None
        self.stats = {"wait_s": 0.0}
        self.max_inputs = max(int(np.diff(self.samples.index(p)[:, 0]).max(initial=0)) for p in self.samples.parts)

    def memory_bytes(self) -> int:
        """Host bytes of the stores: tiers, read buffers, and every type's assembled matrices alive at once (the
        ``lookahead`` batches, the one computed and one kept for reuse)."""
        total = 0
        for st in self.stores.values():
            plan = st.memory_plan(pool_size=1)
            total += plan.tiers + plan.read_buffers + (self.lookahead + 2) * plan.batch_bytes
        return total

    def activation_bytes(self, hidden: int) -> int:
        """The model's temporaries on the largest batch, in float32 [inputs, hidden] matrices: the input
        projections and their scatter, and in the backward pass one gradient of that size per relation's
        gather and aggregation before they are summed (measured: about eight at scale m, 8 relations)."""
        return ACTIVATION_MATRICES * self.max_inputs * hidden * 4

    def _load(self, part: str, i: int):
        mb = self.samples.batch(part, i)
        by_type = inputs_by_type(mb.input_nodes, self.samples.type_offsets,
                                 {t: nt.num_nodes for t, nt in self.ds.node_types.items()})
        feats = {}
        for t, st in self.stores.items():
            if by_type[t][0].size:
                feats[t] = st.assemble(part, i)
        seeds = mb.input_nodes[:int(mb.layer_sizes[-1])] - self.target_offset
        return seeds, mb, by_type, feats

    def part(self, part: str, epoch: int = 0):
        import concurrent.futures as cf
        if part.startswith("train/"):
            part = self.train_parts[epoch % len(self.train_parts)]
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskgnn-hetero-load")
        nb = self.samples.num_batches(part)
        for st in self.stores.values():
            st.plan_reads([(part, i) for i in range(nb)])
        futures = {}
        for i in range(min(self.lookahead, nb)):
            futures[i] = self._pool.submit(self._load, part, i)
        for i in range(nb):
            t0 = time.perf_counter()
            item = futures.pop(i).result()
            self.stats["wait_s"] += time.perf_counter() - t0
            if i + self.lookahead < nb:
                futures[i + self.lookahead] = self._pool.submit(self._load, part, i + self.lookahead)
            yield item

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for st in self.stores.values():
            st.close()


def _forward(model, mb, by_type: dict, feats: dict, num_relations: int) -> torch.Tensor:
    tens = {t: (torch.from_numpy(p), torch.from_numpy(lo)) for t, (p, lo) in by_type.items()}
    if getattr(model, "takes_minibatch", False):  # e.g. diskgnn.interop.dgl.DGLHeteroModel
        return model(mb, tens, feats)
    return model(hetero_blocks(mb, num_relations), tens, feats)


def _evaluate(model, source, part: str, labels: torch.Tensor, num_relations: int) -> float:
    correct = total = 0
    model.eval()
    with torch.inference_mode():
        for seeds, mb, by_type, feats in source.part(part):
            logits = _forward(model, mb, by_type, feats, num_relations)
            want = labels[torch.from_numpy(np.array(seeds, dtype=np.int64))]
            correct += int((logits[:seeds.size].argmax(1) == want).sum())
            total += seeds.size
    return correct / total if total else float("nan")


def train_hetero(source, cfg: HeteroTrainConfig, *, on_epoch=None, model: torch.nn.Module | None = None) -> dict:
    """Train ``cfg.model`` on the target type's training nodes; returns the history and final accuracies.

    ``source`` is a heterogeneous packed directory (presampled batches, packed per-type stores: the
    out-of-core path) or a heterogeneous dataset (online sampling; ``cfg.fanouts`` and ``batch_size`` apply).
    ``model`` replaces ``cfg.model`` with the caller's module, e.g. a DGL ``HeteroGraphConv`` stack wrapped in
    :class:`diskgnn.interop.dgl.DGLHeteroModel`; its ``nn.Embedding(sparse=True)`` weights are trained with
    SparseAdam at ``cfg.embed_lr``, the rest with Adam.
    """
    from diskgnn.dataset import is_hetero
    from diskgnn.memory import process_anon_bytes, resolve_memory_budget
    from diskgnn.sizes import format_bytes
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    budget = resolve_memory_budget(cfg.memory_budget)
    runtimes = process_anon_bytes()  # before the stores load their tiers (the plan counts those itself)
    if isinstance(source, HeteroDataset) or is_hetero(source):
        batches = _OnlineBatches(source if isinstance(source, HeteroDataset) else HeteroDataset.open(source), cfg)
    else:
        batches = _PackedBatches(source, cfg, budget)
    try:
        ds = batches.ds
        num_relations = len(ds.relations)
        if model is None:
            if cfg.model == "rsage" and not any(r.dst == ds.target for r in ds.relations.values()):
                raise ConfigError(
                    f"no relation of {ds.path} leads into the target type {ds.target!r}, so rsage (which sums "
                    f"messages over the relations into a node) cannot compute anything for its nodes; import the "
                    f"graph with --add-reverse (a reverse relation for every relation), or use --model rgcn (its "
                    f"self-loop sees the target's own features)")
            check_embedding_memory(ds, cfg)
            model = HeteroGNN(cfg.model, ds.node_types, num_relations, ds.num_classes, batches.num_layers,
                              hidden=cfg.hidden, num_bases=cfg.num_bases, dropout=cfg.dropout)
            dense, sparse = model.dense_parameters(), model.sparse_parameters()
        else:
            sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse}
            dense = [p for p in model.parameters() if id(p) not in sparse_ids]
            sparse = [p for p in model.parameters() if id(p) in sparse_ids]
        if isinstance(batches, _PackedBatches):
            model_bytes = 4 * sum(p.numel() for p in model.parameters()) * (EMBEDDING_COPIES + 1)  # + gradients
            stores, acts = batches.memory_bytes(), batches.activation_bytes(cfg.hidden)
            need = stores + acts + model_bytes + runtimes
            parts = (f"feature stores with their reads and batches in flight {format_bytes(stores)}, the model's "
                     f"temporaries {format_bytes(acts)}, the model with its optimizer state (embeddings included) "
                     f"{format_bytes(model_bytes)}, the runtimes {format_bytes(runtimes)}")
            log.info("memory plan: %s of the %s budget (%s)", format_bytes(need), format_bytes(budget), parts)
            if need > budget:
                raise MemoryBudgetError(
                    f"training {batches.packed.path} needs {format_bytes(need)} of memory ({parts}), more than the "
                    f"{format_bytes(budget)} budget; re-pack with a smaller --host-cache, sample smaller batches "
                    f"(--batch-size, --fanouts), lower --hidden, or raise --memory-budget")
        optimizers = make_optimizers(dense, sparse, cfg.lr, cfg.embed_lr)
        labels = torch.from_numpy(np.array(ds.labels, dtype=np.int64))
        history = []
        for epoch in range(cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            total_loss, n = 0.0, 0
            for seeds, mb, by_type, feats in batches.part(f"train/{epoch}", epoch):
                logits = _forward(model, mb, by_type, feats, num_relations)
                loss = torch.nn.functional.cross_entropy(logits[:seeds.size], labels[torch.from_numpy(seeds)])
                optimizer_step(loss, optimizers)
                total_loss += float(loss) * seeds.size
                n += seeds.size
            train_s = time.perf_counter() - t0
            val_acc = _evaluate(model, batches, "val", labels, num_relations)
            test_acc = _evaluate(model, batches, "test", labels, num_relations)
            rec = {"epoch": epoch + 1, "loss": total_loss / max(n, 1), "epoch_time_s": train_s, "val_acc": val_acc,
                   "test_acc": test_acc}
            if isinstance(batches, _PackedBatches):
                rec["load_wait_s"] = round(batches.stats["wait_s"], 3)
                batches.stats["wait_s"] = 0.0
            history.append(rec)
            log.info("epoch %d: loss %.4f, val %.4f, test %.4f, %.1f s", epoch + 1, rec["loss"], val_acc, test_acc,
                     train_s)
            if on_epoch:
                on_epoch(rec)
    finally:
        batches.close()
    best = best_epoch(history)
    return {"config": asdict(cfg), "path": "packed" if isinstance(batches, _PackedBatches) else "online",
            "history": history, "best_epoch": best["epoch"], "val_acc": best["val_acc"],
            "test_acc": best["test_acc"], "model": model}
