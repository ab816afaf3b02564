"""Link prediction's data: held-out edges, their evaluation candidates, and presampled link batches.

A *link dataset* (see :mod:`diskgnn.dataset`) holds a message-passing graph
(the CSR), its training positive edges (``train_pos``), held-out validation and
test edges that are not in the graph (``val_pos``, ``test_pos``) and K candidate
destinations per held-out edge (``val_neg``, ``test_neg``). ``prepare`` and
``synth`` make one either from held-out edges given in the input or with a
seeded ``--edge-split``: every edge draws its fate from a key of its endpoints
(unordered for an undirected graph, so an edge and its reverse share it), so the
split is the same whatever the chunking and a resumed run ends in the same
files. Held-out edges (and, for an undirected graph, their reverses) are
removed from the message-passing graph.

A *link batch* (``diskgnn sample --task link``) is ``batch_size`` positive
edges ``(s, d)`` with ``k`` negative destinations each (``(s, n_j)``, uniform or
proportional to degree^0.75), its seeds the distinct endpoints, sampled with the
batch's own positive edges (and their reverses, undirected) removed from the
graph at every layer, so the model cannot read the answer. An evaluation batch
holds held-out edges with their K candidates (nothing to exclude: they are not
in the graph). ``pairs`` [P, 2 + k] gives each positive's seed positions
(source, destination, then the negatives or candidates).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from diskgnn.errors import ConfigError, InputFormatError, MismatchError

log = logging.getLogger(__name__)

DEFAULT_EVAL_NEGATIVES = 100
SPLIT_TAG = 0x5B117
CANDIDATE_TAG = 0xCA4D1D
ORDER_TAG = 0x11CE
DEGREE_POWER = 0.75
NEGATIVE_SAMPLERS = ("uniform", "degree")

LINK_SPLITS = {"tiny": (0.5, 0.05, 0.05), "s": (0.1, 0.005, 0.005), "m": (0.0015, 0.00002, 0.00002)}
"""The ``--edge-split`` a synthetic scale gets with ``--task link`` when none is given: the training edges of an
epoch about match the training nodes of node classification at that scale (s: ~184 batches of 1024, m: ~186).
Held-out edges cost 2 + K seeds each (K = 100 candidates), so m holds out ~2,500 per part: its evaluation
batches then take about as many packed rows as its training epoch."""


def parse_edge_split(text, flag: str = "--edge-split") -> tuple[float, float, float]:
    """``"0.9,0.05,0.05"`` (or a 3-sequence) as checked fractions (train > 0, each >= 0, sum <= 1)."""
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
    else:
        try:
            items = list(text)
        except TypeError:
            items = [text]
    try:
        values = tuple(float(t) for t in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {text!r} is not three comma-separated fractions; use e.g. {flag} "
                          f"0.90,0.05,0.05 (train, validation, test shares of the edges)") from None
    if len(values) != 3:
        raise ConfigError(f"{flag} {text!r} has {len(values)} values; give three fractions train,val,test, e.g. "
                          f"{flag} 0.90,0.05,0.05")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) > 1.0 + 1e-9:
        raise ConfigError(f"{flag} {text!r}: each share must be a number >= 0 and together at most 1 (the rest of "
                          f"the edges stay in the graph without being training targets)")
    if values[0] <= 0:
        raise ConfigError(f"{flag} {text!r} leaves no training edges; give the training share first and above 0, "
                          f"e.g. {flag} 0.90,0.05,0.05")
    if values[1] <= 0 and values[2] <= 0:
        raise ConfigError(f"{flag} {text!r} holds out no edges; give validation and test shares above 0, e.g. "
                          f"{flag} 0.90,0.05,0.05")
    return values


def check_eval_negatives(k, flag: str = "--eval-negatives") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"{flag} must be an integer >= 1 (candidates per held-out edge), got {k!r}")
    return int(k)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSplitConfig:
    """How ``prepare``/``synth`` make a link dataset."""
    edge_split: tuple[float, float, float] | None = None
    """Train, validation and test shares of the edges; None: the input gives val_pos/test_pos."""
    eval_negatives: int = DEFAULT_EVAL_NEGATIVES
    """Candidates drawn per held-out edge (when the input gives none)."""
    seed: int = 0
    """Seed of the split and of the candidates."""

    def __post_init__(self):
        if self.edge_split is not None:
            object.__setattr__(self, "edge_split", parse_edge_split(self.edge_split))
        object.__setattr__(self, "eval_negatives", check_eval_negatives(self.eval_negatives))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"the split seed must be an integer in 0 .. 2**63-1, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    def to_json(self) -> dict:
        return {"edge_split": None if self.edge_split is None else list(self.edge_split),
                "eval_negatives": self.eval_negatives, "seed": self.seed}


def _key(*parts: int) -> np.uint64:
    from diskgnn.kernels.rng import mix_key
    key = np.uint64(parts[0])
    for p in parts[1:]:
        key = np.uint64(mix_key(key, np.uint64(p)))
    return key


# --- held-out edges given by the input ------------------------------------------------------------

@dataclass
class GivenHeldOut:
    """Held-out edges and candidates read from the input (npz keys), checked."""
    pos: dict
    """``{"val": int64 [E, 2], "test": ...}``."""
    neg: dict
    """``{"val": int64 [E, K] or None, ...}`` (None: drawn with --eval-negatives)."""

    def removal_keys(self, num_nodes: int, undirected: bool) -> np.ndarray:
        """Sorted ``dst * N + src`` of every held-out edge (and reverse, undirected): removed from the graph."""
        parts = []
        for edges in self.pos.values():
            src, dst = edges[:, 0], edges[:, 1]
            parts.append(dst * num_nodes + src)
            if undirected:
                parts.append(src * num_nodes + dst)
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.unique(keys.astype(np.int64))


def check_given(raw_pos: dict, raw_neg: dict, num_nodes: int, where: dict) -> GivenHeldOut:
    """Check held-out edges (2 x E, like edge_index) and candidates (E x K) from the input; clear errors."""
    pos, neg = {}, {}
    for part in ("val", "test"):
        w = where.get(f"{part}_pos", f"{part}_pos")
        arr = raw_pos.get(part)
        if arr is None:
            if raw_neg.get(part) is not None:
                raise InputFormatError(f"{where.get(f'{part}_neg')} is given without {part}_pos; give the held-out "
                                       f"edges {part}_pos (2 x E) that the candidates belong to")
            log.warning("%s is missing: there are no %s edges", w, part)
            pos[part] = np.zeros((0, 2), dtype=np.int64)
            neg[part] = None
            continue
        arr = np.asarray(arr)
        if arr.dtype.kind not in "iu":
            raise InputFormatError(f"{w} has dtype {arr.dtype}; held-out edges hold integer node ids, e.g. "
                                   f"{part}_pos.astype(numpy.int64)")
        if arr.ndim != 2 or arr.shape[0] != 2:
            hint = " (it looks transposed: save it as .T)" if arr.ndim == 2 and arr.shape[1] == 2 else ""
            raise InputFormatError(f"{w} has shape {list(arr.shape)}; held-out edges must be 2 x E (source row, "
                                   f"then destination row, like edge_index){hint}")
        edges = np.ascontiguousarray(arr.T.astype(np.int64))
        bad = (edges < 0) | (edges >= num_nodes)
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
            bad |= (arr.T > np.iinfo(np.int64).max)
        if bad.any():
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise InputFormatError(f"{w}: edge {i} ({arr[0, i]} -> {arr[1, i]}) has a node id outside "
                                   f"0..{num_nodes - 1}; held-out edges must join nodes of this graph (one per "
                                   f"feature row)")
        pos[part] = edges
        cand = raw_neg.get(part)
        wn = where.get(f"{part}_neg", f"{part}_neg")
        if cand is None:
            neg[part] = None
            continue
        cand = np.asarray(cand)
        if cand.dtype.kind not in "iu":
            raise InputFormatError(f"{wn} has dtype {cand.dtype}; candidates are integer node ids")
        if cand.ndim == 1 and edges.shape[0] == 1:
            cand = cand.reshape(1, -1)
        if cand.ndim != 2 or cand.shape[0] != edges.shape[0]:
            rows = cand.shape[0] if cand.ndim else 0
            raise MismatchError(f"{wn} has {rows} rows (shape {list(cand.shape)}) but {w} holds {edges.shape[0]} "
                                f"edges; give one row of K candidate destinations per held-out edge "
                                f"({part}_neg is E x K, the OGB convention)")
        if cand.shape[1] < 1:
            raise InputFormatError(f"{wn} has no columns; give K >= 1 candidates per held-out edge, or leave it out "
                                   f"to draw --eval-negatives of them")
        cbad = (cand < 0) | (cand >= num_nodes)
        if cbad.any():
            i, j = (int(x[0]) for x in np.nonzero(cbad))
            raise InputFormatError(f"{wn}: row {i}, column {j} is node {cand[i, j]}, outside 0..{num_nodes - 1}; "
                                   f"candidates must be node ids of this graph")
        neg[part] = np.ascontiguousarray(cand.astype(np.int64))
    if not sum(e.shape[0] for e in pos.values()):
        raise InputFormatError(f"{where.get('val_pos')} and {where.get('test_pos')} hold no edges; give held-out "
                               f"edges, or use --edge-split to draw them")
    return GivenHeldOut(pos=pos, neg=neg)


# --- the split, range by range ---------------------------------------------------------------------

class LinkEdgeWriter:
    """Splits a graph's edges while its CSR is written, one destination range at a time (prepare, synth).

    :meth:`filter` takes a range's CSR, records its training (and, with an
    edge split, held-out) edges and returns the CSR without the held-out ones;
    :meth:`finish` closes the files, writes the candidates and returns the
    manifest's ``link`` section. Its growing files are :meth:`writers` (journal
    them with the CSR's so a resumed run continues them).
    """

    def __init__(self, w, cfg: LinkSplitConfig, *, num_nodes: int, undirected: bool,
                 given: GivenHeldOut | None = None, open_files: bool = True):
        if (given is None) == (cfg.edge_split is None):
            raise ConfigError("give either held-out edges in the input (val_pos, test_pos) or --edge-split, not "
                              "both" if given is not None else "a link dataset needs --edge-split or held-out edges")
        self.w, self.cfg, self.num_nodes, self.undirected, self.given = w, cfg, int(num_nodes), undirected, given
        # open_files=False: a resumed run whose edge files were finished (their specs are already in ``w``)
        self.train = w.writer("train_pos", np.int64, (2,), resume=True) if open_files else None
        self.held = {} if given is not None or not open_files else {
            p: w.writer(f"{p}_pos", np.int64, (2,), resume=True) for p in ("val", "test")}
        self.removed_keys = (given.removal_keys(num_nodes, undirected) if given is not None
                             else np.zeros(0, dtype=np.int64))
        cuts = np.cumsum(cfg.edge_split) if cfg.edge_split else np.zeros(3)
        self.cuts = tuple(float(c) for c in cuts)
        self.split_key = _key(cfg.seed, SPLIT_TAG)
        self.removed = 0

    def writers(self) -> tuple:
        """The growing files (to journal with the CSR's)."""
        return (self.train, *self.held.values()) if self.train is not None else ()

    def close_edges(self) -> dict:
        """Close the edge files written by :meth:`filter`; returns their specs (also added to the writer)."""
        specs = {"train_pos": self.train.close()}
        for part, writer in self.held.items():
            specs[f"{part}_pos"] = writer.close()
        for name, spec in specs.items():
            self.w.add(spec, name)
        self.train, self.held = None, {}
        return specs

    def filter(self, first_node: int, indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split the in-edges of destinations ``first_node ..`` (local CSR); returns the CSR that stays."""
        from diskgnn.kernels.link import TEST, TRAIN, VAL, assign_edges
        indptr = np.asarray(indptr, dtype=np.int64)
        n = indptr.shape[0] - 1
        nnz = int(indptr[-1])
        indices = indices[:nnz]
        code = np.empty(nnz, dtype=np.int8)
        assign_edges(indptr, indices, np.int64(first_node), np.int64(self.num_nodes), self.split_key,
                     *self.cuts, self.undirected, self.removed_keys, code)
        deg = np.diff(indptr)
        dst = np.repeat(np.arange(first_node, first_node + n, dtype=np.int64), deg)
        src = indices.astype(np.int64)
        once = src <= dst if self.undirected else np.ones(nnz, dtype=bool)  # an undirected edge is recorded once
        for value, writer in ((TRAIN, self.train), (VAL, self.held.get("val")), (TEST, self.held.get("test"))):
            if writer is None:
                continue
            m = (code == value) & once
            if m.any():
                writer.write(np.stack([src[m], dst[m]], axis=1))
        keep = code <= TRAIN
        self.removed += int(nnz - np.count_nonzero(keep))
        if keep.all():
            return indptr, indices
        kept = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(dst[keep] - first_node, minlength=n), out=kept[1:])
        return kept, indices[keep]

    def finish(self, progress=None, where: str = "") -> tuple[dict, dict]:
        """Close the edge files, write the held-out edges (given) and the candidates.

        Returns ``(link section, stats)``; raises when no training edge is left.
        """
        w = self.w
        if self.train is not None:
            self.close_edges()
        specs = {"train_pos": w.specs["train_pos"]}
        if not specs["train_pos"].shape[0]:
            what = (f"--edge-split {','.join(f'{x:g}' for x in self.cfg.edge_split)}" if self.cfg.edge_split
                    else "the held-out edges")
            raise InputFormatError(f"{what} leaves no training edges in {where or 'the graph'} "
                                   f"({self.removed} edges removed from it); give a larger training share, a graph "
                                   f"with more edges, or fewer held-out edges")
        for part in ("val", "test"):
            if self.given is None:
                specs[f"{part}_pos"] = w.specs[f"{part}_pos"]
            else:
                specs[f"{part}_pos"] = w.write_array(f"{part}_pos", self.given.pos[part])
        counts = {}
        for part in ("val", "test"):
            rows = specs[f"{part}_pos"].shape[0]
            given = None if self.given is None else self.given.neg.get(part)
            if given is not None:
                w.write_array(f"{part}_neg", given)
            else:
                self._draw_candidates(part, rows)
            counts[part] = rows
        ks = {p: int(w.specs[f"{p}_neg"].shape[1]) for p in ("val", "test")}
        section = {"undirected": bool(self.undirected), "held_out": "given" if self.given is not None else "split",
                   "edge_split": None if self.cfg.edge_split is None else list(self.cfg.edge_split),
                   "eval_negatives": ks, "seed": self.cfg.seed,
                   "candidates": {p: ("given" if self.given is not None and self.given.neg.get(p) is not None
                                      else "uniform") for p in ("val", "test")}}
        stats = {"train_edges": int(specs["train_pos"].shape[0]), "val_edges": counts["val"],
                 "test_edges": counts["test"], "held_out_removed_from_graph": int(self.removed)}
        log.info("link split: %d training, %d validation, %d test edges (%d edges removed from the graph)",
                 stats["train_edges"], counts["val"], counts["test"], self.removed)
        return section, stats

    def _draw_candidates(self, part: str, rows: int, chunk_rows: int = 1 << 16) -> None:
        from diskgnn.kernels.link import uniform_candidates
        k = self.cfg.eval_negatives
        writer = self.w.writer(f"{part}_neg", np.int64, (k,))
        key = candidate_key(self.cfg.seed, part)
        for lo in range(0, rows, chunk_rows):
            out = np.empty((min(chunk_rows, rows - lo), k), dtype=np.int64)
            uniform_candidates(key, np.int64(lo), np.int64(self.num_nodes), out)
            writer.write(out)
        self.w.add(writer.close(), f"{part}_neg")


def candidate_key(seed: int, part: str) -> np.uint64:
    """The key of the evaluation candidates of ``part`` (val, test) drawn by a split with ``seed``."""
    return _key(seed, CANDIDATE_TAG, ("val", "test").index(part))


# --- presampling link batches ----------------------------------------------------------------------

def link_part_edges(dataset, cfg, part: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The positive edges of ``part`` in batch order (int64 [E, 2]) and, for val/test, their candidates.

    Training epoch e shuffles the training edges (seeded by ``(cfg.seed, e)``);
    val and test keep the dataset's order.
    """
    from diskgnn.keys import part_code
    if part.startswith("train/"):
        edges = np.asarray(dataset.link_array("train_pos"))
        rng = np.random.default_rng([cfg.seed, ORDER_TAG, part_code(part)])
        return np.ascontiguousarray(edges[rng.permutation(edges.shape[0])]), None
    return dataset.link_array(f"{part}_pos"), dataset.link_array(f"{part}_neg")


def eval_candidates(dataset, part: str) -> int:
    """K, the candidates per held-out edge of ``part`` (val, test)."""
    return int(dataset.specs[f"{part}_neg"].shape[1])


def eval_batch_size(cfg, dataset) -> int:
    """Held-out edges per evaluation batch: ``cfg.eval_batch_size``, or as many as give about the endpoints of
    a training batch (``batch_size * (2 + negatives) / (2 + K)``)."""
    if cfg.eval_batch_size is not None:
        return cfg.eval_batch_size
    k = max(eval_candidates(dataset, "val"), eval_candidates(dataset, "test"))
    return max(1, cfg.batch_size * (2 + cfg.negatives) // (2 + k))


def check_link_dataset(dataset, flag: str = "--task link") -> None:
    """A clear error when ``dataset`` cannot be sampled for link prediction."""
    if not dataset.has_link:
        raise ConfigError(f"{flag}: {dataset.path} holds no link-prediction edges (no train_pos/val_pos/test_pos); "
                          f"make it with `diskgnn prepare ... --edge-split 0.90,0.05,0.05` (or val_pos/test_pos "
                          f"keys in the input) or `diskgnn synth --task link`")


def degree_weights(indptr, indices, chunk: int = 1 << 24) -> np.ndarray:
    """Running sum (float64 [N]) of ``(in-degree + out-degree) ** 0.75`` over nodes: the ``degree`` sampler."""
    n = int(indptr.shape[0]) - 1
    deg = np.diff(np.asarray(indptr, dtype=np.int64)).astype(np.float64)
    for lo in range(0, int(indices.shape[0]), chunk):
        deg += np.bincount(np.asarray(indices[lo:lo + chunk]), minlength=n)[:n]
    weights = np.power(deg, DEGREE_POWER)
    cum = np.cumsum(weights)
    if n == 0 or cum[-1] <= 0:
        raise ConfigError("--negative-sampler degree: the graph has no edges, so no degree to draw by; use "
                          "--negative-sampler uniform")
    return cum


class LinkSampler:
    """Samples link batches from one dataset (one per thread: it reuses two maps of size N)."""

    def __init__(self, sampler, cfg, dataset):
        import numba
        # launches numba's thread pool first: a cached kernel that reaches a parallel one through another
        # cached kernel does not start it on its own when loaded from the cache (and would crash)
        numba.get_num_threads()
        check_link_dataset(dataset)
        self.sampler, self.cfg, self.dataset = sampler, cfg, dataset
        self.excl_group = np.full(dataset.num_nodes, -1, dtype=np.int32)
        self.reverse = dataset.undirected
        self.cum_weights = (degree_weights(sampler.indptr, sampler.indices)
                            if cfg.negative_sampler == "degree" else None)

    def negatives(self, key, num_positives: int) -> np.ndarray:
        """int64 [P, k]: the negative destinations of a training batch with key ``key``."""
        from diskgnn.kernels.link import NEGATIVE_TAG, uniform_candidates, weighted_candidates
        from diskgnn.kernels.rng import mix_key
        out = np.empty((num_positives, self.cfg.negatives), dtype=np.int64)
        nkey = np.uint64(mix_key(np.uint64(key), np.uint64(NEGATIVE_TAG)))
        if self.cum_weights is None:
            uniform_candidates(nkey, np.int64(0), np.int64(self.dataset.num_nodes), out)
        else:
            weighted_candidates(nkey, np.int64(0), self.cum_weights, out)
        return out

    def sample_raw(self, edges: np.ndarray, candidates: np.ndarray | None, key, *, exclude: bool):
        """The kernel's output ``(input_nodes, layer_sizes, block_indptr, block_indices, pairs)`` of one batch."""
        from diskgnn.kernels.link import sample_link_batch
        edges = np.asarray(edges, dtype=np.int64)
        src = np.ascontiguousarray(edges[:, 0])
        dst = np.ascontiguousarray(edges[:, 1])
        if candidates is None:
            candidates = self.negatives(key, edges.shape[0])
        s = self.sampler
        return sample_link_batch(s.indptr, s.indices, src, dst, np.ascontiguousarray(candidates, dtype=np.int64),
                                 s.fanouts, np.uint64(key), s._node_map, self.excl_group, exclude, self.reverse)


def iter_link_raw(dataset, cfg, part: str, sampler: LinkSampler, num_shards: int, shard: int) -> Iterator[tuple]:
    """Raw link batches of ``part`` that shard ``shard`` of ``num_shards`` holds (see :meth:`LinkSampler.sample_raw`)."""
    from diskgnn.keys import batch_key
    edges, candidates = link_part_edges(dataset, cfg, part)
    train = part.startswith("train/")
    size = cfg.batch_size if train else eval_batch_size(cfg, dataset)
    total = -(-edges.shape[0] // size)
    for i in range(shard, total, num_shards):
        lo, hi = i * size, min((i + 1) * size, edges.shape[0])
        cand = None if train else np.asarray(candidates[lo:hi])
        yield sampler.sample_raw(np.asarray(edges[lo:hi]), cand, batch_key(cfg.seed, part, i), exclude=train)


class LinkBatchCheck:
    """What :func:`diskgnn.sampling.verify_samples` checks of the link batches of one part, against the dataset."""

    def __init__(self, dataset, cfg, part: str):
        self.dataset, self.cfg, self.part = dataset, cfg, part
        self.train = part.startswith("train/")
        self.edges, self.candidates = link_part_edges(dataset, cfg, part)
        self.size = cfg.batch_size if self.train else eval_batch_size(cfg, dataset)
        self.reverse = dataset.undirected
        self.excl_group = np.full(dataset.num_nodes, -1, dtype=np.int32)
        self.cum_weights = (degree_weights(dataset.indptr, dataset.indices)
                            if self.train and cfg.negative_sampler == "degree" else None)

    def _positives(self, mb) -> np.ndarray:
        return np.stack([mb.input_nodes[mb.pairs[:, 0]], mb.input_nodes[mb.pairs[:, 1]]], axis=1)

    def excluded_in_degree(self, mb, dst: np.ndarray) -> np.ndarray:
        """int64 [len(dst)]: in-edges of each node that the batch excluded (0 for evaluation batches)."""
        out = np.zeros(dst.shape[0], dtype=np.int64)
        if not self.train:
            return out
        from diskgnn.kernels.link import clear_groups, exclusion_groups
        pos = self._positives(mb)
        ds = self.dataset
        nodes, _, _, counts = exclusion_groups(ds.indptr, ds.indices, np.ascontiguousarray(pos[:, 0]),
                                               np.ascontiguousarray(pos[:, 1]), self.reverse, self.excl_group)
        try:
            g = self.excl_group[dst]
            out[g >= 0] = counts[g[g >= 0]]
        finally:
            clear_groups(self.excl_group, nodes)
        return out

    def check(self, mb, g: int, what: str) -> None:
        """Raise :class:`IntegrityError` unless batch ``mb`` (global number ``g``) is exactly what sampling owes."""
        from diskgnn.errors import IntegrityError
        from diskgnn.kernels.link import NEGATIVE_TAG, count_excluded_edges, uniform_candidates, weighted_candidates
        from diskgnn.kernels.rng import mix_key
        from diskgnn.keys import batch_key
        pairs = mb.pairs
        lo, hi = g * self.size, min((g + 1) * self.size, self.edges.shape[0])
        if pairs is None or pairs.shape[0] != hi - lo:
            raise IntegrityError(f"{what}: holds {0 if pairs is None else pairs.shape[0]} positive edges, the part's "
                                 f"edge order gives it {hi - lo}")
        if np.unique(pairs).size != mb.batch_size:
            raise IntegrityError(f"{what}: its seeds must be exactly the distinct endpoints of its pairs")
        pos = self._positives(mb)
        if not np.array_equal(pos, np.asarray(self.edges[lo:hi])):
            raise IntegrityError(f"{what}: its positive edges differ from the part's edge order (config "
                                 f"{self.cfg.to_json()}); the samples do not match the dataset")
        cand = mb.input_nodes[pairs[:, 2:]]
        if self.train:
            want = np.empty((hi - lo, self.cfg.negatives), dtype=np.int64)
            key = np.uint64(mix_key(np.uint64(batch_key(self.cfg.seed, self.part, g)), np.uint64(NEGATIVE_TAG)))
            if self.cum_weights is None:
                uniform_candidates(key, np.int64(0), np.int64(self.dataset.num_nodes), want)
            else:
                weighted_candidates(key, np.int64(0), self.cum_weights, want)
        else:
            want = np.asarray(self.candidates[lo:hi])
        if not np.array_equal(cand, want):
            raise IntegrityError(f"{what}: its {'negative' if self.train else 'candidate'} destinations differ from "
                                 f"the ones the config and dataset give")
        if self.train:
            src, dst = np.ascontiguousarray(pos[:, 0]), np.ascontiguousarray(pos[:, 1])
            for layer, b in enumerate(mb.blocks):
                bad = count_excluded_edges(mb.input_nodes, b.indptr, b.indices, src, dst, self.reverse)
                if bad:
                    raise IntegrityError(f"{what} block {layer}: {bad} sampled edges are the batch's own positive "
                                         f"edges{' or their reverses' if self.reverse else ''}, which must be "
                                         f"excluded from its message passing")
