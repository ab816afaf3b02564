"""A realistic synthetic graph, written straight to the dataset format.

The generator streams: topology and features are produced in chunks of
destination nodes and appended to the output files, so memory stays at a few
arrays of length N whatever the edge count. The graph has

* power-law in-degrees (Pareto tail) and power-law popularity of sources, so
  some rows are hot, as in real graphs;
* communities (several per class) with homophily: an edge stays inside its
  community with probability ``homophily``;
* features ``x = class_mean + community_offset + noise`` where the class means
  are only ``separation`` noise-standard-deviations apart, so one node's
  features are a weak signal and averaging neighbours (what a GNN does) helps.

Everything is deterministic for a given config (seed included), whatever the
number of threads.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

from diskgnn.dataset import FORMAT as DATASET_FORMAT, VERSION as DATASET_VERSION
from diskgnn.dataset import Dataset, DatasetWriter, convert_features, node_id_dtype, FEATURE_DTYPES
from diskgnn.errors import ConfigError, IntegrityError
from diskgnn.manifest import RESUME_JOURNAL
from diskgnn.progress import ProgressFn, no_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthConfig:
    """Parameters of a synthetic graph."""
    nodes: int
    """Number of nodes N."""
    avg_degree: float
    """Mean in-degree before de-duplication."""
    dim: int
    """Feature columns F."""
    classes: int
    """Number of label classes."""
    dtype: str = "fp32"
    """Stored feature precision: fp32, fp16 or bf16."""
    communities_per_class: int = 4
    """Communities per class; homophilous edges stay inside a community."""
    homophily: float = 0.8
    """Probability that an edge joins two nodes of one community."""
    separation: float = 1.2
    """Distance between class means in units of the per-row noise (lower = harder features)."""
    degree_exponent: float = 2.5
    """Pareto exponent of the in-degree distribution (> 2)."""
    popularity_exponent: float = 2.1
    """Pareto exponent of how often a node is picked as a source (> 1); lower = hotter hubs."""
    max_popularity: float = 2000.0
    """Cap on a node's popularity relative to the smallest (bounds the biggest hub)."""
    train_fraction: float = 0.10
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    """Seed of every random choice."""
    edge_split: tuple[float, float, float] | None = None
    """Link prediction: train, validation and test shares of the edges (None: a node-classification dataset)."""
    eval_negatives: int = 100
    """Link prediction: candidate destinations drawn per held-out edge."""

    def __post_init__(self):
        if self.nodes < 2:
            raise ConfigError(f"nodes must be at least 2, got {self.nodes}")
        if self.nodes >= 2**40:
            raise ConfigError(f"nodes must be below 2**40, got {self.nodes}")
        if not self.avg_degree > 0:
            raise ConfigError(f"avg_degree must be positive, got {self.avg_degree}")
        if self.dim < 1:
            raise ConfigError(f"dim must be at least 1, got {self.dim}")
        if self.classes < 2:
            raise ConfigError(f"classes must be at least 2, got {self.classes}")
        if self.dtype not in FEATURE_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.dtype!r}")
        if self.communities_per_class < 1:
            raise ConfigError(f"communities_per_class must be >= 1, got {self.communities_per_class}")
        if not 0.0 <= self.homophily <= 1.0:
            raise ConfigError(f"homophily must lie in [0, 1], got {self.homophily}")
        if self.separation < 0:
            raise ConfigError(f"separation must be >= 0, got {self.separation}")
        if not self.degree_exponent > 2.0:
            raise ConfigError(f"degree_exponent must be > 2, got {self.degree_exponent}")
        if not self.popularity_exponent > 1.0:
            raise ConfigError(f"popularity_exponent must be > 1, got {self.popularity_exponent}")
        fr = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(f < 0 for f in fr) or sum(fr) > 1.0 + 1e-9 or self.train_fraction <= 0:
            raise ConfigError(f"split fractions must be >= 0, train > 0 and sum to at most 1, got {fr}")
        if self.edge_split is not None:
            from diskgnn.link import check_eval_negatives, parse_edge_split
            object.__setattr__(self, "edge_split", parse_edge_split(self.edge_split))
            object.__setattr__(self, "eval_negatives", check_eval_negatives(self.eval_negatives))

    def to_json(self) -> dict:
        """The config as saved in the manifest (the link fields only for a link dataset, so node-classification
        datasets made before they existed compare equal)."""
        out = asdict(self)
        if self.edge_split is None:
            del out["edge_split"], out["eval_negatives"]
        else:
            out["edge_split"] = list(self.edge_split)
        return out


SCALES = {
    "tiny": SynthConfig(nodes=10_000, avg_degree=8, dim=16, classes=4),
    "s": SynthConfig(nodes=200_000, avg_degree=10, dim=64, classes=8),
    "m": SynthConfig(nodes=8_000_000, avg_degree=16, dim=128, classes=16,
                     train_fraction=0.025, val_fraction=0.005, test_fraction=0.01),
    # past 2**31 edges (about 2.3 billion), topology (~9.7 GB) and features (8.2 GB) both beyond a 4 GiB cap
    "l": SynthConfig(nodes=64_000_000, avg_degree=36, dim=64, classes=16, dtype="fp16",
                     train_fraction=0.01, val_fraction=0.002, test_fraction=0.002),
}


def scale_config(scale: str, *, task: str = "node", **overrides) -> SynthConfig:
    """The config of a named scale (tiny, s, m, l) with fields replaced by ``overrides``.

    ``task="link"`` makes a link-prediction dataset with the scale's default
    ``edge_split`` (:data:`diskgnn.link.LINK_SPLITS`) unless one is given.
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if task not in ("node", "link"):
        raise ConfigError(f"--task must be node or link, got {task!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if task == "node" and "edge_split" not in overrides and "eval_negatives" in overrides:
        raise ConfigError("--eval-negatives applies to link-prediction datasets; add --task link or --edge-split")
    if task == "link" and "edge_split" not in overrides:
        from diskgnn.link import LINK_SPLITS
        if scale not in LINK_SPLITS:
            raise ConfigError(f"scale {scale} has no default --edge-split for --task link (defaults: "
                              f"{', '.join(LINK_SPLITS)}); give one, e.g. --edge-split 0.0003,0.000001,0.000001")
        overrides["edge_split"] = LINK_SPLITS[scale]
    try:
        return replace(SCALES[scale], **overrides)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _pareto(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    u = rng.random(n)
    return (1.0 - u) ** (-1.0 / (exponent - 1.0))


SETUP_CHUNK = 1 << 22
"""Nodes per piece of the per-node arrays' set-up: no temporary is larger than a few of these, so
the generator's memory is its per-node arrays (about 26 bytes a node) whatever N."""


def _index_dtype(limit: int) -> np.dtype:
    return np.dtype(np.int32) if limit < 2**31 else np.dtype(np.int64)


def in_degrees(cfg: SynthConfig, rng: np.random.Generator, chunk: int = SETUP_CHUNK) -> np.ndarray:
    """Power-law in-degrees with mean ``avg_degree`` (capped so that no node exceeds N-1); int32 while the cap allows.

    The draws and the means are those of an all-at-once computation (numpy's own mean over one
    reused buffer), the rest runs in pieces of ``chunk`` nodes: the result does not depend on
    ``chunk`` and memory is two float64 arrays of N beside the result.
    """
    n = cfg.nodes
    raw = np.empty(n, dtype=np.float64)
    for lo in range(0, n, chunk):
        raw[lo:lo + chunk] = _pareto(rng, min(chunk, n - lo), cfg.degree_exponent)
    cap = float(min(n - 1, max(50.0 * cfg.avg_degree, 10.0)))
    capped = np.minimum(raw, cap)
    scale = cfg.avg_degree / capped.mean()
    for _ in range(3):  # re-fit the scale after capping
        np.multiply(raw, scale, out=capped)
        np.minimum(capped, cap, out=capped)
        scale *= cfg.avg_degree / max(capped.mean(), 1e-12)
    del capped
    degree = np.empty(n, dtype=_index_dtype(int(cap) + 1))
    for lo in range(0, n, chunk):
        piece = raw[lo:lo + chunk] * scale
        piece += rng.random(piece.shape[0])  # the jitter, drawn after every raw value as one draw of n would be
        np.floor(piece, out=piece)
        np.minimum(piece, cap, out=piece)
        degree[lo:lo + chunk] = piece
    return degree


class NodeArrays(NamedTuple):
    """The per-node arrays every chunk of the generator reads (about 26 bytes a node with int32 ids)."""
    community: np.ndarray
    """int32 [N] community of each node (class = community % classes)."""
    degree: np.ndarray
    """int32 (int64 for huge caps) [N] in-degree drawn before de-duplication."""
    comm_start: np.ndarray
    """int64 [C+1] where each community's nodes start in ``by_community``."""
    by_community: np.ndarray
    """int32 (int64 beyond 2**31 nodes) [N] node ids grouped by community, ascending inside one."""
    cum_in_community: np.ndarray
    """float64 [N] cumulative popularity along ``by_community``."""
    cum_global: np.ndarray
    """float64 [N] cumulative popularity by node id."""
    centers: np.ndarray
    """float32 [C, F] feature centre of each community."""
    splits: dict
    """int64 node ids of the train, val and test splits."""


def _cumsum_pieces(values: np.ndarray, order: np.ndarray | None, chunk: int) -> np.ndarray:
    """``np.cumsum(values[order])`` (or of ``values``) bit for bit, built in pieces of ``chunk`` (no N-sized temporary)."""
    n = values.shape[0]
    out = np.empty(n, dtype=np.float64)
    carry = 0.0
    for lo in range(0, n, chunk):
        piece = values[order[lo:lo + chunk]] if order is not None else values[lo:lo + chunk].copy()
        piece[0] += carry  # summed first, as the running sum of one cumsum over everything would
        np.cumsum(piece, out=out[lo:lo + piece.shape[0]])
        carry = float(out[lo + piece.shape[0] - 1])
    return out


def node_arrays(cfg: SynthConfig, chunk: int = SETUP_CHUNK) -> NodeArrays:
    """Draw the per-node arrays of ``cfg``'s graph in pieces of ``chunk`` nodes (the same arrays for any ``chunk``).

    Every random draw comes from one generator in a fixed order, so the arrays (and the graph)
    are those of computing each array at once, without its temporaries: the peak is the arrays
    themselves plus two float64 arrays of N while the popularity is summed up.
    """
    from diskgnn.kernels.synth import group_by_community
    n = cfg.nodes
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    num_comm = cfg.classes * cfg.communities_per_class
    community = rng.integers(0, num_comm, n, dtype=np.int32)
    degree = in_degrees(cfg, rng, chunk)
    popularity = np.empty(n, dtype=np.float64)
    for lo in range(0, n, chunk):
        piece = popularity[lo:lo + chunk]
        piece[:] = _pareto(rng, piece.shape[0], cfg.popularity_exponent)
        np.minimum(piece, cfg.max_popularity, out=piece)
    comm_start = np.zeros(num_comm + 1, dtype=np.int64)
    np.cumsum(np.bincount(community, minlength=num_comm), out=comm_start[1:])
    by_community = np.empty(n, dtype=_index_dtype(n))
    group_by_community(community, comm_start, by_community)  # np.argsort(community, kind="stable")
    cum_in_community = _cumsum_pieces(popularity, by_community, chunk)
    cum_global = _cumsum_pieces(popularity, None, chunk)
    del popularity

    # Class means at distance `separation` (in noise units) apart; communities add a smaller offset.
    means = rng.standard_normal((cfg.classes, cfg.dim))
    means *= cfg.separation / np.sqrt(2.0) / np.linalg.norm(means, axis=1, keepdims=True)
    offsets = rng.standard_normal((num_comm, cfg.dim)) * (0.5 * cfg.separation / np.sqrt(2 * cfg.dim))
    centers = (means[np.arange(num_comm) % cfg.classes] + offsets).astype(np.float32)

    f_tr, f_va, f_te = cfg.train_fraction, cfg.val_fraction, cfg.test_fraction
    picked: dict[str, list] = {"train": [], "val": [], "test": []}
    for lo in range(0, n, chunk):
        u = rng.random(min(chunk, n - lo))
        picked["train"].append(np.flatnonzero(u < f_tr) + lo)
        picked["val"].append(np.flatnonzero((u >= f_tr) & (u < f_tr + f_va)) + lo)
        picked["test"].append(np.flatnonzero((u >= f_tr + f_va) & (u < f_tr + f_va + f_te)) + lo)
    splits = {k: np.concatenate(v).astype(np.int64, copy=False) for k, v in picked.items()}
    return NodeArrays(community=community, degree=degree, comm_start=comm_start, by_community=by_community,
                      cum_in_community=cum_in_community, cum_global=cum_global, centers=centers, splits=splits)


DEFAULT_CHUNK_NODES = 1 << 18


def synthesize(cfg: SynthConfig, out, *, overwrite: bool = False, chunk_nodes: int = DEFAULT_CHUNK_NODES,
               progress: ProgressFn = no_progress) -> Dataset:
    """Generate the graph of ``cfg`` into the dataset directory ``out``.

    Progress is journaled after every chunk of ``chunk_nodes`` destination nodes:
    after a kill, the same call continues after the last finished chunk and ends
    in the same files as an uninterrupted run. The feature noise is drawn per
    chunk, so another ``chunk_nodes`` gives other features (it is then recorded
    in the manifest's config); the topology does not depend on it.
    """
    from diskgnn.kernels.synth import generate_in_edges, compact_segments

    if isinstance(chunk_nodes, bool) or not isinstance(chunk_nodes, (int, np.integer)) or chunk_nodes < 1:
        raise ConfigError(f"--chunk-nodes must be a positive integer, got {chunk_nodes!r}")

    t0 = time.perf_counter()
    n = cfg.nodes
    g = node_arrays(cfg)
    id_dtype = node_id_dtype(n)
    source = {"kind": "synth", "config": cfg.to_json()}
    # A rerun of the same command resumes after the last journaled chunk (the chunks are generated
    # independently, from the arrays above), so a kill never costs more than one chunk.
    resume_key = {"step": "synth", "format": DATASET_FORMAT, "version": DATASET_VERSION, "config": cfg.to_json(),
                  "chunk_nodes": int(chunk_nodes), "id_dtype": id_dtype.str}
    config = {"generator": "diskgnn.synth", **cfg.to_json()}
    if chunk_nodes != DEFAULT_CHUNK_NODES:  # the feature noise is drawn per chunk: part of what made the data
        config["chunk_nodes"] = int(chunk_nodes)
    with DatasetWriter(out, num_nodes=n, feat_dim=cfg.dim, feat_dtype=cfg.dtype, num_classes=cfg.classes,
                       source=source, config=config,
                       overwrite=overwrite, expected_edges=int(g.degree.sum()), resume_key=resume_key) as w:
        start, edges = (0, 0) if w.resumed is None else (int(w.resumed["next_node"]), int(w.resumed["edges"]))
        indptr_writer = w.writer("indptr", np.int64, resume=True)
        idx_writer = w.writer("indices", id_dtype, resume=True)
        feat_writer = w.features_writer(resume=True)
        link = None
        if cfg.edge_split is not None:
            from diskgnn.link import LinkEdgeWriter, LinkSplitConfig
            link = LinkEdgeWriter(w, LinkSplitConfig(edge_split=cfg.edge_split, eval_negatives=cfg.eval_negatives,
                                                     seed=cfg.seed), num_nodes=n, undirected=False)
        if w.resumed is None:
            indptr_writer.write(np.zeros(1, dtype=np.int64))
        else:
            if (indptr_writer.rows, idx_writer.rows, feat_writer.rows) != (start + 1, edges, start):
                raise IntegrityError(f"{w.out}/{RESUME_JOURNAL} does not agree with the files it lists; delete "
                                     f"{w.out} or pass --overwrite to generate the dataset from the start")
            log.info("resuming %s from node %d of %d", w.out, start, n)
        progress("synth", start, n)
        for lo in range(start, n, chunk_nodes):
            hi = min(n, lo + chunk_nodes)
            deg = g.degree[lo:hi]
            edge_offsets = np.zeros(hi - lo + 1, dtype=np.int64)
            np.cumsum(deg, out=edge_offsets[1:])
            sources = np.empty(int(edge_offsets[-1]), dtype=np.int64)
            counts = np.empty(hi - lo, dtype=np.int64)
            generate_in_edges(lo, hi, np.uint64(cfg.seed), g.degree, g.community, g.comm_start, g.by_community,
                              g.cum_in_community, g.cum_global, cfg.homophily, edge_offsets, sources, counts)
            unique = np.empty(int(counts.sum()), dtype=np.int64)
            compact_segments(sources, edge_offsets, counts, unique)
            if link is not None:  # held-out edges leave the graph here; training edges are recorded
                local = np.zeros(hi - lo + 1, dtype=np.int64)
                np.cumsum(counts, out=local[1:])
                local, unique = link.filter(lo, local, unique)
                counts = np.diff(local)
            indptr_writer.write(np.cumsum(counts) + edges)
            edges += int(unique.shape[0])
            idx_writer.write(unique.astype(id_dtype))
            del sources, unique

            frng = np.random.default_rng([cfg.seed, 0xFEA7, lo])
            feats = frng.standard_normal((hi - lo, cfg.dim), dtype=np.float32)
            feats += g.centers[g.community[lo:hi]]
            feat_writer.write(convert_features(feats, cfg.dtype))
            w.save_progress({"next_node": hi, "edges": edges},
                            (indptr_writer, idx_writer, feat_writer, *(link.writers() if link else ())))
            progress("synth", hi - lo, n)
        w.add(indptr_writer.close(), "indptr")
        w.add(idx_writer.close(), "indices")
        w.add(feat_writer.close(), "features")
        labels = w.writer("labels", np.int64)  # class = community % classes, written in pieces
        for lo in range(0, n, SETUP_CHUNK):
            labels.write(g.community[lo:lo + SETUP_CHUNK] % np.int32(cfg.classes))
        w.add(labels.close(), "labels")
        for name, idx in g.splits.items():
            w.write_array(f"{name}_idx", idx.astype(np.int64))
        extra = {}
        w.stats = {}
        if link is not None:
            extra["link"], link_stats = link.finish(where=str(w.out))
            w.stats.update(link_stats)
        w.stats["generate_seconds"] = round(time.perf_counter() - t0, 3)
        if start:
            w.stats["resumed_from_node"] = start
        ds = w.finish(extra=extra)
    log.info("synthesized %s in %.1f s", ds, time.perf_counter() - t0)
    return ds
