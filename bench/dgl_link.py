"""The reference stack's link prediction: DGL's edge-prediction sampler over the same data (reference stack only).

What a DGL user writes for out-of-the-box link prediction, set up to match
diskgnn's presampled link batches:

* ``dgl.dataloading.as_edge_prediction_sampler`` around a ``NeighborSampler``
  with the same fanouts, over an int64 graph built from the dataset's in-edge
  CSR (so DGL's edge ids are CSR positions);
* the same training positive edges (the dataset's ``train_pos``, as edge ids),
  ``batch_size`` of them per batch, reshuffled every epoch;
* the same negatives: ``k`` per positive, its source kept and the destination
  drawn uniformly (``negative_sampler.Uniform``) or proportionally to
  degree^0.75 (a ``degree`` sampler written like DGL's own);
* the batch's positive edges excluded from message passing (``exclude='self'``),
  and their reverses too for an undirected graph (a callable that finds each
  positive's reverse edge id, which costs no E-sized array, unlike
  ``reverse_eids``). DGL samples first and then drops excluded edges, where
  diskgnn samples from the remaining in-edges: a node whose excluded edge was
  drawn ends up with one neighbour fewer in DGL;
* evaluation on the same held-out edges against the same K candidates: the
  seeds (sources, destinations, candidates) are sampled with the same
  ``NeighborSampler`` and ranked with the same metric code.

The model is diskgnn's (same encoder, decoder and initial weights per seed) on
DGL's blocks converted to :class:`diskgnn.models.TorchBlock`, or, for the
in-memory speed baseline, DGL's own layers (:class:`diskgnn.bench.compute.DGLStack`).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from diskgnn.errors import ConfigError


def _require_dgl():
    try:
        import dgl
    except ImportError:
        raise ConfigError("the DGL link baseline needs DGL (the reference stack: pip install '.[dgl]')") from None
    return dgl


def dgl_graph(dataset):
    """An int64 DGL graph of the dataset's in-edge CSR; edge ids are CSR positions."""
    dgl = _require_dgl()
    indptr = torch.from_numpy(np.array(dataset.indptr, dtype=np.int64))
    indices = torch.from_numpy(np.asarray(dataset.indices).astype(np.int64))
    g = dgl.graph(("csc", (indptr, indices, torch.empty(0, dtype=torch.int64))), num_nodes=dataset.num_nodes,
                  idtype=torch.int64)
    return g


def edge_ids(dataset, edges: np.ndarray) -> np.ndarray:
    """CSR positions (DGL edge ids) of ``edges`` (int64 [m, 2], source then destination); all must exist."""
    from diskgnn.kernels.link import find_edge_ids
    edges = np.asarray(edges, dtype=np.int64)
    out = np.empty(edges.shape[0], dtype=np.int64)
    find_edge_ids(np.asarray(dataset.indptr), np.asarray(dataset.indices), np.ascontiguousarray(edges[:, 0]),
                  np.ascontiguousarray(edges[:, 1]), out)
    if (out < 0).any():
        i = int(np.flatnonzero(out < 0)[0])
        raise ConfigError(f"{dataset.path}: training edge {edges[i].tolist()} is not in the graph")
    return out


class DegreeNegatives:
    """``k`` negatives per edge: the edge's source and a destination drawn proportionally to degree^0.75."""

    def __init__(self, k: int, dataset):
        from diskgnn.link import DEGREE_POWER
        deg = np.diff(np.asarray(dataset.indptr, dtype=np.int64)).astype(np.float64)
        deg += np.bincount(np.asarray(dataset.indices), minlength=dataset.num_nodes)[:dataset.num_nodes]
        self.k = k
        self.weights = torch.from_numpy(np.power(deg, DEGREE_POWER))

    def __call__(self, g, eids):
        src, _ = g.find_edges(eids)
        src = src.repeat_interleave(self.k)
        dst = torch.multinomial(self.weights, src.shape[0], replacement=True)
        return src, dst


class ReverseExcluder:
    """``exclude`` callable of an undirected graph: the seed edges and their reverse edges."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.indptr = np.asarray(dataset.indptr)
        self.indices = np.asarray(dataset.indices)

    def __call__(self, eids):
        from diskgnn.kernels.link import find_edge_ids
        e = eids.numpy()
        dst = np.searchsorted(self.indptr, e, side="right") - 1
        src = self.indices[e].astype(np.int64)
        rev = np.empty(e.shape[0], dtype=np.int64)
        find_edge_ids(self.indptr, self.indices, dst.astype(np.int64), src, rev)
        return torch.cat([eids, torch.from_numpy(rev[rev >= 0])])


def edge_sampler(dataset, fanouts, negatives: int, negative_sampler: str = "uniform"):
    """DGL's edge-prediction sampler set up like diskgnn's ``sample --task link``."""
    dgl = _require_dgl()
    neg = (dgl.dataloading.negative_sampler.Uniform(negatives) if negative_sampler == "uniform"
           else DegreeNegatives(negatives, dataset))
    exclude = ReverseExcluder(dataset) if dataset.undirected else "self"
    return dgl.dataloading.as_edge_prediction_sampler(dgl.dataloading.NeighborSampler(list(fanouts)),
                                                      exclude=exclude, negative_sampler=neg)


def pair_scores(h: torch.Tensor, decoder, pair_graph, neg_graph, negatives: int) -> torch.Tensor:
    """Scores [P, 1 + k] of a DGL batch (positives' source repeated k times in the negative graph)."""
    from diskgnn.decoders import score_pairs
    ps, pd = pair_graph.edges()
    ns, nd = neg_graph.edges()
    p = ps.shape[0]
    # Uniform/degree negatives keep the positive's source and its order: k rows per positive, in order
    pairs = torch.cat([ps.view(p, 1), pd.view(p, 1), nd.view(p, negatives)], dim=1)
    if not torch.equal(ns.view(p, negatives)[:, 0], ps):
        raise RuntimeError("DGL's negative graph does not list k negatives per positive in order")
    return score_pairs(decoder, h, pairs)


def to_torch_blocks(blocks):
    from diskgnn.models import TorchBlock
    out = []
    for b in blocks:
        indptr, indices, _ = b.adj_tensors("csc")
        out.append(TorchBlock.from_csr(indptr.numpy(), indices.numpy(), b.num_src_nodes(), b.num_dst_nodes()))
    return out


class DGLLinkRunner:
    """Train and evaluate a link model on DGL's online edge-prediction batches.

    ``features`` is a float32 tensor of every row (in RAM) or a ``numpy.memmap``
    of features.bin (rows gathered in sorted order, under the memory cap).
    ``dgl_layers``: DGL's own layers as the encoder instead of diskgnn's.
    """

    def __init__(self, dataset, *, fanouts, batch_size: int, negatives: int = 1, negative_sampler: str = "uniform",
                 eval_batch_size: int | None = None, model: str = "sage", hidden: int | None = None,
                 decoder: str = "dot", lr: float = 1e-3, seed: int = 0, features=None, dgl_layers: bool = False):
        dgl = _require_dgl()
        from diskgnn.decoders import build_decoder, build_link_model
        from diskgnn.link import check_link_dataset
        check_link_dataset(dataset)
        self.dgl, self.dataset = dgl, dataset
        self.fanouts, self.batch_size, self.negatives = list(fanouts), batch_size, negatives
        self.eval_batch_size = eval_batch_size
        self.graph = dgl_graph(dataset)
        self.train_eids = torch.from_numpy(edge_ids(dataset, dataset.link_array("train_pos")))
        self.sampler = edge_sampler(dataset, fanouts, negatives, negative_sampler)
        self.eval_sampler = dgl.dataloading.NeighborSampler(list(fanouts))
        self.features = features
        self.feat_dtype = dataset.feat_dtype
        self.row_bytes = dataset.row_bytes
        dgl.seed(seed)
        torch.manual_seed(seed)
        hidden = hidden or (32 if model == "gat" else 128)
        if dgl_layers:
            from diskgnn.bench.compute import DGLStack
            from diskgnn.decoders import LinkModel
            self.model = LinkModel(DGLStack(model, dataset.feat_dim, hidden, len(fanouts), hidden, 4),
                                   build_decoder(decoder, hidden))
        else:
            self.model = build_link_model(model, in_dim=dataset.feat_dim, num_layers=len(fanouts), hidden=hidden,
                                          decoder=decoder)
        self.dgl_layers = dgl_layers
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.rows = 0
        self.read = 0

    def _x(self, input_nodes: torch.Tensor) -> torch.Tensor:
        self.rows += int(input_nodes.shape[0])
        if isinstance(self.features, torch.Tensor):
            return self.features.index_select(0, input_nodes)
        from diskgnn.bench.packed_systems import gather_memmap
        x, read = gather_memmap(self.features, input_nodes.numpy(), self.feat_dtype)
        self.read += read
        return x

    def _blocks(self, blocks):
        return blocks if self.dgl_layers else to_torch_blocks(blocks)

    def loader(self):
        return self.dgl.dataloading.DataLoader(self.graph, self.train_eids, self.sampler, batch_size=self.batch_size,
                                               shuffle=True, drop_last=False, num_workers=0)

    def train_epoch(self, max_batches: int | None = None, clock=None) -> float:
        """One epoch (or its first ``max_batches`` batches); returns the mean loss."""
        from diskgnn.decoders import link_loss
        self.model.train()
        total, n = 0.0, 0
        it = iter(self.loader())
        while max_batches is None or n < max_batches:
            t0 = time.perf_counter()
            try:
                input_nodes, pair_graph, neg_graph, blocks = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            x = self._x(input_nodes)
            t2 = time.perf_counter()
            h = self.model.encoder(self._blocks(blocks), x)
            loss = link_loss(pair_scores(h, self.model.decoder, pair_graph, neg_graph, self.negatives))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += float(loss)
            n += 1
            if clock is not None:
                clock.add("sample", busy=t1 - t0)
                clock.add("fetch", busy=t2 - t1)
                clock.add("compute", busy=time.perf_counter() - t2)
        return total / max(n, 1)

    def load_epoch(self, max_batches: int | None = None, clock=None) -> int:
        """Sample and fetch the features of one epoch's batches without a model (the loader benchmark)."""
        n = 0
        it = iter(self.loader())
        while max_batches is None or n < max_batches:
            t0 = time.perf_counter()
            try:
                input_nodes, _, _, _ = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            self._x(input_nodes)
            n += 1
            if clock is not None:
                clock.add("sample", busy=t1 - t0)
                clock.add("fetch", busy=time.perf_counter() - t1)
        return n

    @torch.no_grad()
    def evaluate(self, parts=("val", "test")) -> dict:
        """MRR and Hits@K of every held-out edge against its candidates (the dataset's), sampled online."""
        from diskgnn.decoders import RankingMetrics, score_pairs
        from diskgnn.kernels.link import endpoint_seeds
        from diskgnn.link import eval_candidates
        self.model.eval()
        node_map = np.full(self.dataset.num_nodes, -1, dtype=np.int32)
        out = {}
        for part in parts:
            edges = np.asarray(self.dataset.link_array(f"{part}_pos"))
            cands = self.dataset.link_array(f"{part}_neg")
            size = self.eval_batch_size or max(1, self.batch_size * (2 + self.negatives)
                                               // (2 + eval_candidates(self.dataset, part)))
            metrics = RankingMetrics()
            for lo in range(0, edges.shape[0], size):
                e = edges[lo:lo + size]
                seeds, pairs = endpoint_seeds(np.ascontiguousarray(e[:, 0]), np.ascontiguousarray(e[:, 1]),
                                              np.ascontiguousarray(cands[lo:lo + size], dtype=np.int64), node_map)
                input_nodes, output_nodes, blocks = self.eval_sampler.sample_blocks(self.graph,
                                                                                    torch.from_numpy(seeds))
                h = self.model.encoder(self._blocks(blocks), self._x(input_nodes))
                metrics.add(score_pairs(self.model.decoder, h, torch.from_numpy(pairs.astype(np.int64))))
            out.update(metrics.result(part))
        return out
