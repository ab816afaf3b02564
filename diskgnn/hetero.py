"""Heterogeneous datasets: typed nodes, one in-edge CSR per relation, per-type features.

A heterogeneous dataset is a dataset directory of format version 2 (version 1
directories are the homogeneous ones, still read by :class:`diskgnn.dataset.Dataset`).
Its manifest's ``"hetero"`` section names

* the node types, in a fixed order, each with its node count and either a
  feature file ``features/<type>.bin`` (row-major, its own width and dtype,
  4096-aligned at offset 0, O_DIRECT-readable) or none (a featureless type:
  the model learns an embedding for it);
* the relations ``(src_type, relation, dst_type)``, each an in-edge CSR over
  the destination type's local ids: ``relations/<src>__<rel>__<dst>/indptr.bin``
  (int64, ``num_nodes[dst] + 1``) and ``indices.bin`` (source local ids, int32
  below 2**31 sources), each list sorted, without duplicates;
* the target type, whose nodes carry ``labels.bin`` (int64, -1 = unlabelled)
  and the splits ``train_idx.bin``, ``val_idx.bin``, ``test_idx.bin``
  (local ids of the target type).

Every file has its dtype, shape, size and crc32 in the manifest, written last.

Importing (:func:`import_hetero_dir`) and generating (:func:`synthesize_hetero`)
build each relation's CSR from edge chunks in bounded memory: one pass counts
the in-degrees, then destination ranges whose edges fit the budget are filled
one at a time, each from one more pass over the edges.
"""
from __future__ import annotations

import json
import logging
import math
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from diskgnn.dataset import (ArraySpec, ArrayWriter, FORMAT, HETERO_VERSION, SPLITS, array_crc32,  # noqa: F401
                             convert_features, feature_dtype, is_hetero, node_id_dtype, open_array)
from diskgnn.errors import ConfigError, InputFormatError, InputNotFoundError, IntegrityError, ManifestError
from diskgnn.manifest import (abort_output_dir, check_free_space, finish_output_dir, prepare_output_dir,
                              read_manifest, write_manifest)
from diskgnn.progress import ProgressFn, no_progress

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SEP = "__"
EDGE_BYTES = 32
"""Memory per edge of a destination range while its CSR is built: local destination and source (int64), the
sorted sources and slack."""
DEFAULT_BUDGET = 512 << 20

EdgeChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A re-iterable source of ``(src, dst)`` local-id chunks of one relation (called once per pass)."""


def check_name(name: str, what: str, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or SEP in name:
        raise InputFormatError(f"{where}: {what} name {name!r} is not allowed: use letters, digits, '_', '.' and "
                               f"'-' (not '{SEP}', which separates the parts of a relation's file name)")
    return name


def canonical(src: str, rel: str, dst: str) -> str:
    """The file name of relation ``(src, rel, dst)``: ``src__rel__dst``."""
    return f"{src}{SEP}{rel}{SEP}{dst}"


def parse_canonical(name: str, where: str) -> tuple[str, str, str]:
    parts = name.split(SEP)
    if len(parts) != 3:
        raise InputFormatError(f"{where}: {name!r} is not '<source type>{SEP}<relation>{SEP}<destination type>'; "
                               f"rename the file")
    for p, what in zip(parts, ("source type", "relation", "destination type")):
        check_name(p, what, where)
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class NodeType:
    name: str
    num_nodes: int
    features: ArraySpec | None = None
    feat_dtype: str | None = None

    @property
    def feat_dim(self) -> int:
        return int(self.features.shape[1]) if self.features is not None else 0

    @property
    def row_bytes(self) -> int:
        return self.feat_dim * feature_dtype(self.feat_dtype).itemsize if self.features is not None else 0


@dataclass(frozen=True)
class Relation:
    src: str
    rel: str
    dst: str
    indptr: ArraySpec
    indices: ArraySpec

    @property
    def name(self) -> str:
        return canonical(self.src, self.rel, self.dst)

    @property
    def num_edges(self) -> int:
        return int(self.indices.shape[0])


# --- reading -----------------------------------------------------------------------------------------

class HeteroDataset:
    """A heterogeneous dataset directory (read-only)."""

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        where = str(self.path / "manifest.json")
        h = manifest.get("hetero")
        if not isinstance(h, dict):
            raise ManifestError(f"{where} has no 'hetero' section; it is not a heterogeneous dataset")
        try:
            self.node_types: dict[str, NodeType] = {}
            for t in h["node_types"]:
                name = check_name(t["name"], "node type", where)
                feats = ArraySpec.from_json(t["features"], where) if t.get("features") else None
                self.node_types[name] = NodeType(name, int(t["num_nodes"]), feats, t.get("feat_dtype"))
            self.relations: dict[str, Relation] = {}
            for r in h["relations"]:
                rel = Relation(r["src"], r["rel"], r["dst"], ArraySpec.from_json(r["indptr"], where),
                               ArraySpec.from_json(r["indices"], where))
                if rel.src not in self.node_types or rel.dst not in self.node_types:
                    raise ValueError(f"relation {rel.name} names an unknown node type")
                self.relations[rel.name] = rel
            self.target = str(h["target"])
            if self.target not in self.node_types:
                raise ValueError(f"target type {self.target!r} is not a node type")
            self.num_classes = int(manifest["num_classes"])
            self.specs = {n: ArraySpec.from_json(s, where) for n, s in manifest["files"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where}: malformed heterogeneous manifest ({exc}); re-create {self.path}") from None

    @classmethod
    def open(cls, path) -> "HeteroDataset":
        return cls(path, read_manifest(path, FORMAT, HETERO_VERSION))

    # node ids: each type's local ids 0..n-1; global ids put the types one after another, in manifest order
    @property
    def type_names(self) -> list[str]:
        return list(self.node_types)

    @property
    def type_offsets(self) -> dict[str, int]:
        out, pos = {}, 0
        for name, t in self.node_types.items():
            out[name] = pos
            pos += t.num_nodes
        return out

    @property
    def num_nodes(self) -> int:
        return sum(t.num_nodes for t in self.node_types.values())

    @property
    def num_edges(self) -> int:
        return sum(r.num_edges for r in self.relations.values())

    @property
    def feature_bytes(self) -> int:
        return sum(t.features.nbytes for t in self.node_types.values() if t.features is not None)

    def features(self, node_type: str) -> np.ndarray:
        t = self.node_types[node_type]
        if t.features is None:
            raise ConfigError(f"node type {node_type!r} of {self.path} has no features")
        return open_array(self.path, t.features)

    def feature_rows(self, node_type: str, ids) -> np.ndarray:
        """Rows ``ids`` of a type's features, read with ``pread`` in id order (:func:`diskgnn.dataset.read_rows`)."""
        from diskgnn.dataset import read_rows
        t = self.node_types[node_type]
        if t.features is None:
            raise ConfigError(f"node type {node_type!r} of {self.path} has no features")
        return read_rows(self.path / t.features.path, ids, num_rows=t.num_nodes, dim=t.feat_dim,
                         dtype=feature_dtype(t.feat_dtype), where=self.path)

    def indptr(self, relation: str) -> np.ndarray:
        return open_array(self.path, self.relations[relation].indptr)

    def indices(self, relation: str) -> np.ndarray:
        return open_array(self.path, self.relations[relation].indices)

    @property
    def labels(self) -> np.ndarray:
        return open_array(self.path, self.specs["labels"])

    def split(self, name: str) -> np.ndarray:
        return open_array(self.path, self.specs[f"{name}_idx"])

    def relations_into(self, node_type: str) -> list[str]:
        return [n for n, r in self.relations.items() if r.dst == node_type]

    @property
    def fingerprint(self) -> str:
        """A short id of the data (every file's checksum), stored by later steps to detect mix-ups."""
        crcs = [s.crc32 for s in self._all_specs()]
        return f"{zlib.crc32(json.dumps(crcs).encode()):08x}"

    def _all_specs(self) -> list[ArraySpec]:
        out = list(self.specs.values())
        for t in self.node_types.values():
            if t.features is not None:
                out.append(t.features)
        for r in self.relations.values():
            out += [r.indptr, r.indices]
        return out

    def __repr__(self) -> str:
        return (f"HeteroDataset({self.path}, {len(self.node_types)} node types, {len(self.relations)} relations, "
                f"{self.num_nodes} nodes, {self.num_edges} edges, target {self.target!r})")


def hetero_summary(ds: HeteroDataset) -> dict:
    labels = np.asarray(ds.labels)
    return {
        "path": str(ds.path), "kind": "heterogeneous dataset", "target": ds.target, "num_classes": ds.num_classes,
        "num_nodes": ds.num_nodes, "num_edges": ds.num_edges, "feature_bytes": ds.feature_bytes,
        "node_types": {n: {"num_nodes": t.num_nodes, "feat_dim": t.feat_dim, "feat_dtype": t.feat_dtype}
                       for n, t in ds.node_types.items()},
        "relations": {n: r.num_edges for n, r in ds.relations.items()},
        "labelled": int((labels >= 0).sum()),
        "splits": {s: int(ds.specs[f"{s}_idx"].shape[0]) for s in SPLITS},
    }


def verify_hetero(ds: HeteroDataset, *, check_crc: bool = True, piece: int = 1 << 22) -> dict:
    """Check every invariant of a heterogeneous dataset; raises :class:`IntegrityError` on the first problem."""
    def crc(spec: ArraySpec) -> None:
        open_array(ds.path, spec)  # exists with the promised size
        if check_crc and spec.crc32 is not None:
            got = array_crc32(open_array(ds.path, spec))
            if got != spec.crc32:
                raise IntegrityError(f"{ds.path / spec.path}: crc32 {got:08x} differs from the manifest's "
                                     f"{spec.crc32:08x}; the file is corrupt, re-create {ds.path}")

    for t in ds.node_types.values():
        if t.features is not None:
            if t.features.shape[0] != t.num_nodes or len(t.features.shape) != 2:
                raise IntegrityError(f"{ds.path / t.features.path}: {t.features.shape} features for "
                                     f"{t.num_nodes} nodes of type {t.name!r}; re-create {ds.path}")
            crc(t.features)
    for r in ds.relations.values():
        n_dst, n_src = ds.node_types[r.dst].num_nodes, ds.node_types[r.src].num_nodes
        if r.indptr.shape != (n_dst + 1,):
            raise IntegrityError(f"{ds.path / r.indptr.path}: shape {r.indptr.shape}, expected ({n_dst + 1},) for "
                                 f"{n_dst} {r.dst!r} nodes; re-create {ds.path}")
        crc(r.indptr)
        crc(r.indices)
        indptr, indices = ds.indptr(r.name), ds.indices(r.name)
        if int(indptr[0]) != 0 or int(indptr[-1]) != r.num_edges or np.any(np.diff(indptr) < 0):
            raise IntegrityError(f"{ds.path / r.indptr.path}: offsets are not monotone from 0 to {r.num_edges}; "
                                 f"re-create {ds.path}")
        for lo in range(0, r.num_edges, piece):
            chunk = np.asarray(indices[lo:lo + piece])
            if chunk.size and (int(chunk.min()) < 0 or int(chunk.max()) >= n_src):
                raise IntegrityError(f"{ds.path / r.indices.path}: source ids outside 0..{n_src - 1} of type "
                                     f"{r.src!r}; re-create {ds.path}")
    for name, spec in ds.specs.items():
        crc(spec)
    n = ds.node_types[ds.target].num_nodes
    labels = np.asarray(ds.labels)
    if labels.shape != (n,) or (labels.size and (int(labels.min()) < -1 or int(labels.max()) >= ds.num_classes)):
        raise IntegrityError(f"{ds.path / ds.specs['labels'].path}: labels must be {n} values in "
                             f"-1..{ds.num_classes - 1}; re-create {ds.path}")
    seen = np.zeros(n, dtype=bool)
    for s in SPLITS:
        idx = np.asarray(ds.split(s))
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n or np.any(seen[idx])
                         or np.any(labels[idx] < 0)):
            raise IntegrityError(f"{ds.path / ds.specs[f'{s}_idx'].path}: {s} ids must be distinct labelled "
                                 f"{ds.target!r} nodes in 0..{n - 1}, in no other split; re-create {ds.path}")
        seen[idx] = True
    return {"ok": True, "relations": len(ds.relations), "node_types": len(ds.node_types)}


# --- writing -----------------------------------------------------------------------------------------

def build_relation_csr(out: Path, name: str, chunks: EdgeChunks, num_src: int, num_dst: int, *, budget: int,
                       where: str, progress: ProgressFn = no_progress) -> tuple[ArraySpec, ArraySpec, dict]:
    """Write ``name``/indptr.bin and ``name``/indices.bin: the in-edge CSR of one relation from its edge chunks,
    each list sorted and without duplicates, in memory bounded by ``budget`` (plus the int64 in-degrees of the
    destination type)."""
    from diskgnn.kernels.csr import choose_ranges, compact_segments_inplace, counting_sort_by_destination, \
        sort_segments
    counts = np.zeros(num_dst, dtype=np.int64)
    total = 0
    for src, dst in chunks():
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        if src.shape != dst.shape:
            raise InputFormatError(f"{where}: sources and destinations differ in length")
        if src.size:
            for ids, n, what in ((src, num_src, "source"), (dst, num_dst, "destination")):
                lo, hi = int(ids.min()), int(ids.max())
                if lo < 0 or hi >= n:
                    raise InputFormatError(f"{where}: {what} id {lo if lo < 0 else hi} is outside 0..{n - 1} "
                                           f"(the type has {n} nodes); fix the ids or the type's node count")
            counts += np.bincount(dst, minlength=num_dst)
        total += int(src.size)
    max_edges = max(budget // EDGE_BYTES, 1)
    bounds = choose_ranges(counts, max_edges)
    id_dtype = node_id_dtype(num_src)
    (out / name).mkdir(parents=True, exist_ok=True)
    indptr_w = ArrayWriter(out, f"{name}/indptr", np.int64)
    indices_w = ArrayWriter(out, f"{name}/indices", id_dtype)
    indptr_w.write(np.zeros(1, dtype=np.int64))
    written = 0
    for r in range(len(bounds) - 1):
        a, b = int(bounds[r]), int(bounds[r + 1])
        size = int(counts[a:b].sum())
        local = np.empty(size, dtype=np.int64)
        srcs = np.empty(size, dtype=np.int64)
        pos = 0
        for src, dst in chunks():
            dst = np.asarray(dst, dtype=np.int64)
            keep = (dst >= a) & (dst < b) if len(bounds) > 2 else slice(None)
            d = dst[keep] - a
            if pos + d.size > size:
                raise InputFormatError(f"{where}: the edges changed between two passes over them; do not modify "
                                       f"the input while it is read")
            local[pos:pos + d.size] = d
            srcs[pos:pos + d.size] = np.asarray(src, dtype=np.int64)[keep]
            pos += d.size
        if pos != size:
            raise InputFormatError(f"{where}: the edges changed between two passes over them ({pos} vs {size} "
                                   f"into nodes {a}..{b - 1}); do not modify the input while it is read")
        indptr = np.empty(b - a + 1, dtype=np.int64)
        grouped = np.empty(size, dtype=np.int64)
        counting_sort_by_destination(local, srcs, b - a, indptr, grouped)
        del local, srcs
        kept = np.empty(b - a, dtype=np.int64)
        sort_segments(indptr, grouped, True, kept)
        m = compact_segments_inplace(indptr, grouped, kept)
        indices_w.write(grouped[:m].astype(id_dtype))
        indptr_w.write(indptr[1:] + written)
        written += int(m)
        progress(f"relation {name.split('/')[-1]}", b - a, num_dst)
    return indptr_w.close(), indices_w.close(), {"edges_in": total, "edges": written, "duplicates": total - written,
                                                 "ranges": len(bounds) - 1}


@dataclass
class _TypeSpec:
    num_nodes: int
    features: ArraySpec | None = None
    feat_dtype: str | None = None


class HeteroWriter:
    """Writes a heterogeneous dataset directory; the manifest is published by :meth:`finish` only (leaving the
    block with an exception removes everything written)."""

    def __init__(self, out, num_nodes: dict[str, int], target: str, num_classes: int, *, source: dict,
                 config: dict, overwrite: bool = False, memory_budget: int = DEFAULT_BUDGET, expected_bytes: int = 0,
                 where: str = "the input"):
        if not num_nodes:
            raise InputFormatError(f"{where}: no node types")
        for t, n in num_nodes.items():
            check_name(t, "node type", where)
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
                raise InputFormatError(f"{where}: node type {t!r} has {n!r} nodes; give a positive count")
        if target not in num_nodes:
            raise InputFormatError(f"{where}: the target type {target!r} is not one of the node types "
                                   f"({', '.join(num_nodes)}); name the type that carries the labels")
        if num_classes <= 0:
            raise InputFormatError(f"{where}: labels need at least one class, got {num_classes}")
        self.out = prepare_output_dir(out, overwrite=overwrite)
        check_free_space(self.out, expected_bytes, "the heterogeneous dataset")
        self.types = {t: _TypeSpec(int(n)) for t, n in num_nodes.items()}
        self.target, self.num_classes = target, int(num_classes)
        self.source, self.config = source, config
        self.budget = int(memory_budget)
        self.relations: dict[str, Relation] = {}
        self.specs: dict[str, ArraySpec] = {}
        self.stats: dict = {"relations": {}}

    def __enter__(self) -> "HeteroWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            abort_output_dir(self.out)

    def write_features(self, node_type: str, rows: Iterable[np.ndarray], dim: int, dtype: str,
                       where: str) -> ArraySpec:
        t = self.types[node_type]
        feature_dtype(dtype)
        (self.out / "features").mkdir(exist_ok=True)
        w = ArrayWriter(self.out, f"features/{node_type}", feature_dtype(dtype), (dim,))
        for chunk in rows:
            w.write(convert_features(np.asarray(chunk), dtype))
        spec = w.close()
        if spec.shape[0] != t.num_nodes:
            raise InputFormatError(f"{where}: {spec.shape[0]} feature rows for the {t.num_nodes} nodes of type "
                                   f"{node_type!r}; give one row per node (or fix the type's node count)")
        t.features, t.feat_dtype = spec, dtype
        return spec

    def add_relation(self, src: str, rel: str, dst: str, chunks: EdgeChunks, where: str,
                     progress: ProgressFn = no_progress) -> Relation:
        for t, what in ((src, "source"), (dst, "destination")):
            if t not in self.types:
                raise InputFormatError(f"{where}: {what} type {t!r} is not a node type "
                                       f"({', '.join(self.types)}); fix the name or add the type to num_nodes")
        check_name(rel, "relation", where)
        name = canonical(src, rel, dst)
        if name in self.relations:
            raise InputFormatError(f"{where}: relation {name} is given twice (or a reverse relation collides with "
                                   f"it); rename one of them")
        indptr, indices, stats = build_relation_csr(
            self.out, f"relations/{name}", chunks, self.types[src].num_nodes, self.types[dst].num_nodes,
            budget=self.budget, where=where, progress=progress)
        r = Relation(src, rel, dst, indptr, indices)
        self.relations[name] = r
        self.stats["relations"][name] = stats
        return r

    def write_array(self, name: str, array: np.ndarray, dtype) -> ArraySpec:
        w = ArrayWriter(self.out, name, dtype, tuple(array.shape[1:]))
        w.write(np.asarray(array))
        self.specs[name] = w.close()
        return self.specs[name]

    def finish(self, *, check: bool = True) -> HeteroDataset:
        missing = [n for n in ("labels", *(f"{s}_idx" for s in SPLITS)) if n not in self.specs]
        if missing:
            raise InputFormatError(f"the heterogeneous dataset is missing {', '.join(missing)}")
        if not self.relations:
            raise InputFormatError("a heterogeneous dataset needs at least one relation")
        body = {
            "hetero": {
                "node_types": [{"name": n, "num_nodes": t.num_nodes, "feat_dtype": t.feat_dtype,
                                "features": t.features.to_json() if t.features is not None else None}
                               for n, t in self.types.items()],
                "relations": [{"src": r.src, "rel": r.rel, "dst": r.dst, "num_edges": r.num_edges,
                               "indptr": r.indptr.to_json(), "indices": r.indices.to_json()}
                              for r in self.relations.values()],
                "target": self.target,
            },
            "num_nodes": sum(t.num_nodes for t in self.types.values()),
            "num_edges": sum(r.num_edges for r in self.relations.values()),
            "num_classes": self.num_classes,
            "files": {n: s.to_json() for n, s in sorted(self.specs.items())},
            "source": self.source, "config": self.config, "stats": self.stats,
        }
        ds = HeteroDataset(self.out, body)
        if check:
            verify_hetero(ds, check_crc=False)
        write_manifest(self.out, FORMAT, HETERO_VERSION, body)
        finish_output_dir(self.out)
        return HeteroDataset.open(self.out)


def clean_labels_and_splits(labels, splits: dict, num_nodes: int, num_classes: int | None,
                            where: dict) -> tuple[np.ndarray, dict, int]:
    """Target labels (int64, -1 unlabelled) and splits checked against the target type's node count."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (num_nodes,):
        raise InputFormatError(f"{where['labels']}: {labels.shape[0] if labels.ndim else 0} labels for the "
                               f"{num_nodes} nodes of the target type; give one label per target node "
                               f"(-1 or NaN for unlabelled)")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels)
        labels = np.where(bad, -1, labels)
        if np.any(labels != np.floor(labels)):
            raise InputFormatError(f"{where['labels']}: labels must be whole numbers")
    if labels.dtype.kind not in "iuf":
        raise InputFormatError(f"{where['labels']}: labels must be integers, not {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and int(labels.min()) < -1:
        raise InputFormatError(f"{where['labels']}: labels below -1 ({int(labels.min())}); use -1 for unlabelled")
    top = int(labels.max()) + 1 if labels.size else 0
    if top <= 0:
        raise InputFormatError(f"{where['labels']}: no target node is labelled; a node-classification dataset "
                               f"needs labels on the target type")
    classes = num_classes or top
    if top > classes:
        raise InputFormatError(f"{where['labels']}: label {top - 1} is outside 0..{classes - 1}")
    seen = np.zeros(num_nodes, dtype=bool)
    out = {}
    for s in SPLITS:
        idx = np.asarray(splits[s]).reshape(-1)
        if idx.dtype.kind not in "iu":
            raise InputFormatError(f"{where[s]}: split ids must be integers, not {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num_nodes):
            raise InputFormatError(f"{where[s]}: ids outside 0..{num_nodes - 1} of the target type")
        if np.unique(idx).size != idx.size or np.any(seen[idx]):
            raise InputFormatError(f"{where[s]}: repeated ids, or ids that are in another split too")
        if np.any(labels[idx] < 0):
            raise InputFormatError(f"{where[s]}: {int((labels[idx] < 0).sum())} ids have no label")
        seen[idx] = True
        out[s] = idx
    if out["train"].size == 0:
        raise InputFormatError(f"{where['train']}: no training nodes")
    return labels, out, classes


# --- import: a directory of .npy files ---------------------------------------------------------------

def _npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise InputNotFoundError(f"{path} is missing: {what}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputFormatError(f"{path} is not a readable .npy array ({exc}); write it with numpy.save") from None


def _edge_chunks(arr: np.ndarray, chunk: int = 1 << 22) -> EdgeChunks:
    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo in range(0, arr.shape[1], chunk):
            yield np.asarray(arr[0, lo:lo + chunk]), np.asarray(arr[1, lo:lo + chunk])
    return gen


def import_hetero_dir(src, out, *, add_reverse: bool = False, dtype: str | None = None,
                      memory_budget: int = DEFAULT_BUDGET, overwrite: bool = False,
                      progress: ProgressFn = no_progress) -> HeteroDataset:
    """Import the directory layout: ``meta.json`` (``{"num_nodes": {type: N}, "target": type}``, optionally
    ``"num_classes"``), ``feat/<type>.npy`` (types without a file are featureless),
    ``edges/<src>__<relation>__<dst>.npy`` (2 x E, source row then destination row, local ids of each type),
    ``label.npy`` and ``train_idx.npy``, ``val_idx.npy``, ``test_idx.npy`` (indexing the target type)."""
    src = Path(src)
    meta_path = src / "meta.json"
    if not meta_path.exists():
        raise InputNotFoundError(f"{meta_path} is missing: a heterogeneous input directory needs meta.json with "
                                 f'{{"num_nodes": {{"<type>": N, ...}}, "target": "<type>"}}')
    try:
        meta = json.loads(meta_path.read_text())
        num_nodes = {str(k): v for k, v in meta["num_nodes"].items()}
        target = str(meta["target"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputFormatError(f"{meta_path}: {exc!r}; it must hold "
                               f'{{"num_nodes": {{"<type>": N, ...}}, "target": "<type>"}}') from None
    for t in num_nodes:
        check_name(t, "node type", str(meta_path))
    if target not in num_nodes:
        raise InputFormatError(f"{meta_path}: the target type {target!r} is not in num_nodes "
                               f"({', '.join(num_nodes)})")
    edge_files = sorted((src / "edges").glob("*.npy")) if (src / "edges").is_dir() else []
    if not edge_files:
        raise InputNotFoundError(f"{src / 'edges'} holds no <src>{SEP}<relation>{SEP}<dst>.npy edge files")
    relations = []
    for f in edge_files:
        s, r, d = parse_canonical(f.stem, str(f))
        for t, what in ((s, "source"), (d, "destination")):
            if t not in num_nodes:
                raise InputFormatError(f"{f}: the {what} type {t!r} is not in {meta_path}'s num_nodes "
                                       f"({', '.join(num_nodes)}); rename the file or add the type")
        arr = _npy(f, "an edge file")
        if arr.ndim != 2 or arr.shape[0] != 2 or arr.dtype.kind not in "iu":
            raise InputFormatError(f"{f}: edges must be an integer 2 x E array (source row, destination row), "
                                   f"got {arr.dtype} {list(arr.shape)}")
        relations.append((s, r, d, arr, str(f)))
    feats = {}
    feat_dir = src / "feat"
    if feat_dir.is_dir():
        for f in sorted(feat_dir.glob("*.npy")):
            if f.stem not in num_nodes:
                raise InputFormatError(f"{f}: {f.stem!r} is not a node type of {meta_path} "
                                       f"({', '.join(num_nodes)}); rename the file")
            arr = _npy(f, "a feature file")
            if arr.ndim != 2 or arr.dtype.kind not in "fiu":
                raise InputFormatError(f"{f}: features must be a 2-d numeric array, got {arr.dtype} "
                                       f"{list(arr.shape)}")
            if arr.shape[0] != int(num_nodes[f.stem]):
                raise InputFormatError(f"{f}: {arr.shape[0]} rows for the {num_nodes[f.stem]} nodes of type "
                                       f"{f.stem!r}; give one row per node or fix meta.json")
            feats[f.stem] = arr
    where = {"labels": str(src / "label.npy"), **{s: str(src / f"{s}_idx.npy") for s in SPLITS}}
    labels = _npy(src / "label.npy", f"the labels of the target type {target!r}")
    splits = {s: _npy(src / f"{s}_idx.npy", f"the {s} ids of the target type") for s in SPLITS}
    labels, splits, classes = clean_labels_and_splits(np.asarray(labels), splits, int(num_nodes[target]),
                                                      meta.get("num_classes"), where)
    features = {t: _array_rows(arr, str(feat_dir / f"{t}.npy")) for t, arr in feats.items()}
    rels = _with_reverses([(s_, r_, d_, _edge_chunks(arr), wh, arr.shape[1]) for s_, r_, d_, arr, wh in relations],
                          add_reverse)
    return _write_hetero(out, num_nodes, target, features, rels, labels, splits, classes,
                         source={"format": "hetero-dir", "path": str(src)},
                         config={"add_reverse": add_reverse, "dtype": dtype}, dtype=dtype,
                         memory_budget=memory_budget, overwrite=overwrite, where=str(meta_path), progress=progress)


@dataclass
class _Rows:
    """Feature rows of one type: ``chunks()`` yields row blocks in order."""
    dim: int
    dtype: str
    chunks: Callable[[], Iterator[np.ndarray]]
    where: str
    num_rows: int


def _array_rows(arr: np.ndarray, where: str) -> _Rows:
    rows = max(1, (64 << 20) // max(arr.shape[1] * 4, 1))
    return _Rows(int(arr.shape[1]), "fp16" if arr.dtype == np.float16 else "fp32",
                 lambda: (arr[lo:lo + rows] for lo in range(0, arr.shape[0], rows)), where, int(arr.shape[0]))


def _with_reverses(relations: list, add_reverse: bool) -> list:
    """``relations`` as ``(src, rel, dst, chunks, where, edges)``, plus ``(dst, rev_rel, src, ...)`` for each one
    with ``add_reverse``; a reverse that collides with a given relation is an error."""
    names = {canonical(s, r, d): wh for s, r, d, _, wh, _ in relations}
    if len(names) != len(relations):
        raise InputFormatError("two inputs name the same relation; rename one of them")
    out = list(relations)
    if add_reverse:
        for s, r, d, chunks, wh, e in relations:
            rev = canonical(d, f"rev_{r}", s)
            if rev in names:
                raise InputFormatError(f"{wh}: --add-reverse would add {rev}, which the input already has "
                                       f"({names[rev]}); rename that relation or leave out --add-reverse")
            names[rev] = f"{wh} (reversed)"
            out.append((d, f"rev_{r}", s, (lambda c=chunks: ((b, a) for a, b in c())), f"{wh} (reversed)", e))
    return out


def _write_hetero(out, num_nodes: dict, target: str, features: dict[str, _Rows], relations: list, labels,
                  splits: dict, classes: int, *, source: dict, config: dict, dtype: str | None, memory_budget: int,
                  overwrite: bool, where: str, progress: ProgressFn) -> HeteroDataset:
    for t, rows in features.items():
        if t not in num_nodes:
            raise InputFormatError(f"{rows.where}: {t!r} is not a node type ({', '.join(num_nodes)})")
        if rows.num_rows >= 0 and rows.num_rows != int(num_nodes[t]):
            raise InputFormatError(f"{rows.where}: {rows.num_rows} rows for the {num_nodes[t]} nodes of type "
                                   f"{t!r}; give one row per node or fix the node count")
    expected = sum(max(r.num_rows, 0) * r.dim * 4 for r in features.values()) + \
        sum(max(e, 0) * 8 + (int(num_nodes[d]) + 1) * 8 for _, _, d, _, _, e in relations)
    with HeteroWriter(out, num_nodes, target, classes, source=source, config=config, overwrite=overwrite,
                      memory_budget=memory_budget, expected_bytes=expected, where=where) as w:
        for t, rows in features.items():
            w.write_features(t, rows.chunks(), rows.dim, dtype or rows.dtype, rows.where)
        for s, r, d, chunks, wh, _ in relations:
            w.add_relation(s, r, d, chunks, wh, progress)
        w.write_array("labels", labels, np.int64)
        for name in SPLITS:
            w.write_array(f"{name}_idx", splits[name], np.int64)
        return w.finish()


# --- import: the OGB heterogeneous raw layout (ogbn-mag) --------------------------------------------

def import_hetero_ogb(root, out, *, split_name: str | None = None, add_reverse: bool = False,
                      dtype: str | None = None, memory_budget: int = DEFAULT_BUDGET, overwrite: bool = False,
                      progress: ProgressFn = no_progress) -> HeteroDataset:
    """Import an OGB heterogeneous node-property dataset directory (ogbn-mag's layout):
    ``raw/num-node-dict.csv.gz`` (type names, then counts), ``raw/relations/<src>___<rel>___<dst>/edge.csv.gz``,
    ``raw/node-feat/<type>/node-feat.csv.gz``, ``raw/node-label/<type>/node-label.csv.gz`` (the one labelled type
    is the target) and ``split/<name>/<type>/{train,valid,test}.csv.gz``."""
    import gzip
    from diskgnn.ingest import _TextEdges, _csv_features, _read_csv_column
    root = Path(root)
    raw = root / "raw"
    counts_file = raw / "num-node-dict.csv.gz"
    if not counts_file.exists():
        raise InputNotFoundError(f"{counts_file} is missing: give the directory of an OGB heterogeneous dataset "
                                 f"(raw/ and split/, as ogbn-mag unpacks)")
    try:
        with gzip.open(counts_file, "rt") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        names = [x.strip() for x in lines[0].split(",")]
        num_nodes = {n: int(float(c)) for n, c in zip(names, lines[1].split(","))}
        if len(num_nodes) != len(names):
            raise ValueError("names and counts differ in number")
    except (OSError, IndexError, ValueError) as exc:
        raise InputFormatError(f"{counts_file}: {exc}; it must hold one line of type names and one of node "
                               f"counts") from None
    for t in num_nodes:
        check_name(t, "node type", str(counts_file))
    label_dirs = sorted(p for p in (raw / "node-label").iterdir() if p.is_dir()) if (raw / "node-label").is_dir() \
        else []
    if len(label_dirs) != 1:
        raise InputFormatError(f"{raw / 'node-label'}: expected one labelled node type, found "
                               f"{[p.name for p in label_dirs] or 'none'}; a node-classification dataset labels "
                               f"its target type")
    target = label_dirs[0].name
    if target not in num_nodes:
        raise InputFormatError(f"{label_dirs[0]}: {target!r} is not in {counts_file} ({', '.join(num_nodes)})")
    raw_labels = _read_csv_column(label_dirs[0] / "node-label.csv.gz")
    rel_root = raw / "relations"
    rel_dirs = sorted(p for p in rel_root.iterdir() if p.is_dir()) if rel_root.is_dir() else []
    if not rel_dirs:
        raise InputNotFoundError(f"{rel_root} holds no <src>___<relation>___<dst>/ directories")
    relations = []
    for d in rel_dirs:
        parts = d.name.split("___")
        if len(parts) != 3:
            raise InputFormatError(f"{d}: not '<source type>___<relation>___<destination type>'")
        src_t, rel, dst_t = parts
        for t, what in ((src_t, "source"), (dst_t, "destination")):
            if t not in num_nodes:
                raise InputFormatError(f"{d}: the {what} type {t!r} is not in {counts_file} "
                                       f"({', '.join(num_nodes)})")
        check_name(rel, "relation", str(d))
        edge_file = d / "edge.csv.gz"
        if not edge_file.exists():
            raise InputNotFoundError(f"{edge_file} is missing; unpack the dataset again")
        text = _TextEdges(edge_file, allow_header=False)
        chunks = (lambda t=text: ((a, b) for a, b, _, _ in t.chunks(1 << 22)))
        relations.append((src_t, rel, dst_t, chunks, str(edge_file), -1))
    features = {}
    if (raw / "node-feat").is_dir():
        for d in sorted(p for p in (raw / "node-feat").iterdir() if p.is_dir()):
            f = d / "node-feat.csv.gz"
            if d.name not in num_nodes:
                raise InputFormatError(f"{d}: {d.name!r} is not a node type of {counts_file}")
            feat = _csv_features(f, None)
            rows = max(1, (16 << 20) // (feat.dim * 4))
            features[d.name] = _Rows(feat.dim, "fp32", lambda feat=feat, rows=rows: feat.chunks(rows), str(f), -1)
    split_root = root / "split"
    names = sorted(p.name for p in split_root.iterdir() if p.is_dir()) if split_root.is_dir() else []
    if not names:
        raise InputNotFoundError(f"{split_root} holds no split; unpack the dataset again")
    name = split_name or (names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        raise ConfigError(f"{split_root} holds the splits {', '.join(names)}; choose one with --dataset-name")
    raw_splits, where = {}, {"labels": str(label_dirs[0] / "node-label.csv.gz")}
    for s, fname in zip(SPLITS, ("train", "valid", "test")):
        f = split_root / name / target / f"{fname}.csv.gz"
        if not f.exists():
            raise InputNotFoundError(f"{f} is missing; the split must list {target!r} ids for train, valid and test")
        ids = _read_csv_column(f)
        if ids.size and (np.isnan(ids).any() or (ids != np.round(ids)).any()):
            raise InputFormatError(f"{f} holds non-integer node ids")
        raw_splits[s], where[s] = ids.astype(np.int64), str(f)
    labels, splits, classes = clean_labels_and_splits(raw_labels, raw_splits, num_nodes[target], None, where)
    return _write_hetero(out, num_nodes, target, features, _with_reverses(relations, add_reverse), labels, splits,
                         classes, source={"format": "hetero-ogb", "path": str(root.resolve()), "split": name},
                         config={"add_reverse": add_reverse, "dtype": dtype}, dtype=dtype,
                         memory_budget=memory_budget, overwrite=overwrite, where=str(root), progress=progress)


# --- import: a DGL heterograph written by dgl.save_graphs -------------------------------------------

def import_hetero_dgl(path, out, *, target: str | None = None, add_reverse: bool = False, dtype: str | None = None,
                      memory_budget: int = DEFAULT_BUDGET, overwrite: bool = False,
                      progress: ProgressFn = no_progress) -> HeteroDataset:
    """Import a heterograph saved with ``dgl.save_graphs``: ``ndata['feat']`` per type (optional),
    ``ndata['label']`` and ``train_mask``/``val_mask``/``test_mask`` on the target type (the one labelled type,
    or ``target``)."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path} is missing: give a file written by dgl.save_graphs")
    try:
        from dgl.data.utils import load_graphs
    except ImportError:
        raise ConfigError("--format hetero-dgl needs DGL (the reference stack: pip install 'diskgnn[dgl]')") from None
    try:
        graphs, _ = load_graphs(str(path))
    except Exception as exc:  # DGL raises its own error types for damaged files
        raise InputFormatError(f"{path} cannot be read by dgl.load_graphs ({exc})") from None
    if len(graphs) != 1:
        raise InputFormatError(f"{path} holds {len(graphs)} graphs; save exactly one")
    g = graphs[0]
    num_nodes = {t: int(g.num_nodes(t)) for t in g.ntypes}
    labelled = [t for t in g.ntypes if "label" in g.nodes[t].data]
    if target is None:
        if len(labelled) != 1:
            raise InputFormatError(f"{path}: expected one node type with ndata['label'], found "
                                   f"{labelled or 'none'}; label the target type (or name it)")
        target = labelled[0]
    if target not in labelled:
        raise InputFormatError(f"{path}: the target type {target!r} has no ndata['label']")
    data = g.nodes[target].data
    labels = data["label"].numpy()
    raw_splits, where = {}, {"labels": f"{path} ({target} ndata['label'])"}
    for s in SPLITS:
        if f"{s}_mask" not in data:
            raise InputFormatError(f"{path}: the target type {target!r} has no ndata['{s}_mask']")
        raw_splits[s] = np.flatnonzero(data[f"{s}_mask"].numpy())
        where[s] = f"{path} ({target} ndata['{s}_mask'])"
    labels, splits, classes = clean_labels_and_splits(labels, raw_splits, num_nodes[target], None, where)
    features = {}
    for t in g.ntypes:
        if "feat" in g.nodes[t].data:
            arr = g.nodes[t].data["feat"].float().numpy()
            if arr.ndim != 2:
                raise InputFormatError(f"{path}: {t} ndata['feat'] must be N x F, got {list(arr.shape)}")
            features[t] = _array_rows(arr, f"{path} ({t} ndata['feat'])")
    relations = []
    for s_t, rel, d_t in g.canonical_etypes:
        src, dst = g.edges(etype=(s_t, rel, d_t))
        src, dst = src.numpy().astype(np.int64), dst.numpy().astype(np.int64)
        relations.append((s_t, rel, d_t, (lambda a=src, b=dst: iter([(a, b)])), f"{path} ({s_t}, {rel}, {d_t})",
                          src.size))
    return _write_hetero(out, num_nodes, target, features, _with_reverses(relations, add_reverse), labels, splits,
                         classes, source={"format": "hetero-dgl", "path": str(path.resolve())},
                         config={"add_reverse": add_reverse, "dtype": dtype}, dtype=dtype,
                         memory_budget=memory_budget, overwrite=overwrite, where=str(path), progress=progress)


# --- a MAG-like synthetic graph ----------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class HeteroSynthConfig:
    """A MAG-like typed graph: papers (target, weak features), authors and institutions (featureless) and
    fields of study (features that carry the class; authors get weak features with ``author_dim`` > 0). A paper's own features are a weak signal of its class;
    its fields, its authors' other papers and the papers it cites are a strong one, so a model that uses the
    typed neighbourhood learns the labels and one that does not cannot."""
    papers: int
    authors: int
    institutions: int
    fields: int
    classes: int = 8
    paper_dim: int = 64
    field_dim: int = 32
    author_dim: int = 0
    """Width of the authors' features; 0 leaves authors featureless (a learnable embedding each)."""
    dtype: str = "fp32"
    cites_per_paper: float = 8.0
    authors_per_paper: float = 3.0
    fields_per_paper: float = 3.0
    homophily: float = 0.8
    paper_separation: float = 0.35
    field_separation: float = 2.0
    author_separation: float = 0.25
    train_fraction: float = 0.10
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for k in ("papers", "authors", "institutions", "fields"):
            if getattr(self, k) < self.classes:
                raise ConfigError(f"{k} must be at least the number of classes ({self.classes})")
        if self.author_dim < 0:
            raise ConfigError(f"author_dim must be 0 (featureless authors) or positive, got {self.author_dim}")
        if self.classes < 2:
            raise ConfigError("classes must be at least 2")
        if not 0 <= self.homophily <= 1:
            raise ConfigError("homophily must lie in [0, 1]")
        if self.train_fraction + self.val_fraction + self.test_fraction > 1:
            raise ConfigError("the split fractions add up to more than 1")


HETERO_SCALES = {
    "tiny": dict(papers=3001, authors=2003, institutions=53, fields=101, paper_dim=16, field_dim=8, classes=4),
    # s and m: weaker homophily and features, so that accuracy stays well below 100 % and differences show
    "s": dict(papers=100_000, authors=80_000, institutions=2_000, fields=4_000, paper_dim=64, field_dim=32,
              homophily=0.4, paper_separation=0.25, field_separation=1.0),
    # m: authors get weak features too, so that 3M learnable author embeddings (4.6 GB with their optimizer
    # state at width 128) do not have to fit a 2 GiB run; institutions stay featureless
    "m": dict(papers=5_000_000, authors=3_000_000, institutions=20_000, fields=60_000, paper_dim=256,
              field_dim=64, author_dim=32, homophily=0.4, paper_separation=0.25, field_separation=1.0,
              train_fraction=0.02, val_fraction=0.005, test_fraction=0.005),
}


def hetero_scale_config(scale: str, **overrides) -> HeteroSynthConfig:
    if scale not in HETERO_SCALES:
        raise ConfigError(f"unknown heterogeneous scale {scale!r}; choose from {', '.join(HETERO_SCALES)}")
    return HeteroSynthConfig(**{**HETERO_SCALES[scale], **overrides})


def _class_node(rng, cls: np.ndarray, n: int, classes: int, skew: float = 1.5) -> np.ndarray:
    """A node of type with ``n`` nodes whose class (id mod ``classes``) is ``cls``; low ids more popular."""
    count = (n - cls + classes - 1) // classes
    k = np.floor(count * rng.random(cls.shape[0]) ** skew).astype(np.int64)
    return cls + np.minimum(k, count - 1) * classes


def _mixed_class(rng, cls: np.ndarray, classes: int, homophily: float) -> np.ndarray:
    other = rng.integers(0, classes, cls.shape[0])
    return np.where(rng.random(cls.shape[0]) < homophily, cls, other)


def synthesize_hetero(cfg: HeteroSynthConfig, out, *, add_reverse: bool = True, overwrite: bool = False,
                      memory_budget: int = DEFAULT_BUDGET, chunk: int = 1 << 18,
                      progress: ProgressFn = no_progress) -> HeteroDataset:
    """Generate the MAG-like graph of ``cfg`` straight into a heterogeneous dataset (chunked: memory holds one
    chunk of edges or feature rows beside the writer's budget). Class of every node: its id mod ``classes``."""
    C = cfg.classes
    n = {"paper": cfg.papers, "author": cfg.authors, "institution": cfg.institutions, "field": cfg.fields}

    def edges(key: int, dst_type: str, src_type: str, per_dst: float, fixed: bool = False) -> EdgeChunks:
        def gen():
            nd = n[dst_type]
            for i, lo in enumerate(range(0, nd, chunk)):
                rng = np.random.default_rng([cfg.seed, key, i])
                dst = np.arange(lo, min(lo + chunk, nd), dtype=np.int64)
                deg = np.ones(dst.size, dtype=np.int64) if fixed else \
                    np.maximum(rng.poisson(per_dst, dst.size), 1)
                d = np.repeat(dst, deg)
                s = _class_node(rng, _mixed_class(rng, d % C, C, cfg.homophily), n[src_type], C)
                yield s, d
        return gen

    def features(key: int, t: str, dim: int, sep: float) -> Iterator[np.ndarray]:
        means = np.random.default_rng([cfg.seed, key]).standard_normal((C, dim)) * sep / math.sqrt(2)
        for i, lo in enumerate(range(0, n[t], chunk)):
            rng = np.random.default_rng([cfg.seed, key, i])
            ids = np.arange(lo, min(lo + chunk, n[t]))
            yield (means[ids % C] + rng.standard_normal((ids.size, dim))).astype(np.float32)

    # relations as (src, rel, dst): in-edges of the destination, sources drawn by class
    rels = [("paper", "cites", "paper", edges(1, "paper", "paper", cfg.cites_per_paper)),
            ("author", "writes", "paper", edges(2, "paper", "author", cfg.authors_per_paper)),
            ("paper", "has_topic", "field", None),
            ("author", "affiliated_with", "institution", None)]
    # has_topic and affiliated_with are drawn from the paper's / author's side: generate as reversed chunks
    topic = edges(3, "paper", "field", cfg.fields_per_paper)  # (field, paper) pairs
    affil = edges(4, "author", "institution", 1.0, fixed=True)  # (institution, author) pairs

    def swapped(g: EdgeChunks) -> EdgeChunks:
        return lambda: ((d, s) for s, d in g())

    rels[2] = ("paper", "has_topic", "field", swapped(topic))
    rels[3] = ("author", "affiliated_with", "institution", swapped(affil))
    if add_reverse:
        rels += [(d, f"rev_{r}", s, swapped(g)) for s, r, d, g in list(rels)]
    rng = np.random.default_rng([cfg.seed, 99])
    labels = np.arange(cfg.papers, dtype=np.int64) % C
    perm = rng.permutation(cfg.papers)
    ntr, nva, nte = (int(round(cfg.papers * f)) for f in (cfg.train_fraction, cfg.val_fraction,
                                                            cfg.test_fraction))
    splits = {"train": np.sort(perm[:ntr]), "val": np.sort(perm[ntr:ntr + nva]),
              "test": np.sort(perm[ntr + nva:ntr + nva + nte])}
    item = feature_dtype(cfg.dtype).itemsize
    feat_values = cfg.papers * cfg.paper_dim + cfg.fields * cfg.field_dim + cfg.authors * cfg.author_dim
    expected = feat_values * item + 8 * sum(n.values()) * 4 + \
        8 * cfg.papers * int(cfg.cites_per_paper + cfg.authors_per_paper + cfg.fields_per_paper) * 2
    with HeteroWriter(out, n, "paper", C, source={"generator": "synthesize_hetero"},
                      config={**asdict(cfg), "add_reverse": add_reverse}, overwrite=overwrite,
                      memory_budget=memory_budget, expected_bytes=expected, where="synth --hetero") as w:
        w.write_features("paper", features(10, "paper", cfg.paper_dim, cfg.paper_separation), cfg.paper_dim,
                         cfg.dtype, "synth")
        w.write_features("field", features(11, "field", cfg.field_dim, cfg.field_separation), cfg.field_dim,
                         cfg.dtype, "synth")
        if cfg.author_dim:
            w.write_features("author", features(12, "author", cfg.author_dim, cfg.author_separation),
                             cfg.author_dim, cfg.dtype, "synth")
        for s, r, d, g in rels:
            w.add_relation(s, r, d, g, f"synth relation {canonical(s, r, d)}", progress)
        w.write_array("labels", labels, np.int64)
        for s in SPLITS:
            w.write_array(f"{s}_idx", splits[s], np.int64)
        return w.finish()
