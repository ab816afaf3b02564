"""Presampled heterogeneous minibatches on disk: ``diskgnn sample`` on a heterogeneous dataset.

The directory holds, for every part (``train/0`` .. ``train/K-1``, ``val``, ``test``):

* the batches in global node ids, in the homogeneous samples' four files
  (``<part>.index.bin``, ``input_nodes``, ``block_indptr``, ``block_indices``;
  see :mod:`diskgnn.sampling`) plus ``<part>.block_etypes.bin``, the relation
  index of every sampled edge (int16, aligned with ``block_indices``);
* per featured node type ``T``, under ``types/<T>/``: the batch's input nodes of
  that type as *local* ids, in the order they appear in the batch
  (``<part>.input_nodes.bin`` and ``<part>.input_offsets.bin``), and the type's
  access counts (``access_counts.bin``, how many batches read each row).

A type's stream is what packing and the store see: to them each featured type is
a homogeneous feature matrix with its own batches (:class:`TypeSamples`), so the
per-type pack is the homogeneous packer and a type's assembled matrix is the
model's input rows of that type, in batch order.

The batches are the ones :func:`diskgnn.hetero_train.train_hetero` samples online
with the same seed: the same seeds, permutation and keys (so the two paths can be
compared bit for bit). The manifest is written last.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from diskgnn.dataset import ArraySpec, open_array
from diskgnn.errors import ConfigError, DiskGNNError, IntegrityError, MismatchError
from diskgnn.hetero import HeteroDataset
from diskgnn.hetero_sampling import HeteroMiniBatch, HeteroSampler, batch_key
from diskgnn.io import pread_elements
from diskgnn.manifest import (Crc32Writer, abort_output_dir, check_free_space, finish_output_dir, prepare_output_dir,
                              read_manifest, write_manifest)
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sampling import _INDEX_FIXED, _PartWriter, _part_file_prefix, part_names

log = logging.getLogger(__name__)

FORMAT = "diskgnn.hetero-samples"
VERSION = 1

VAL_KEY = 1 << 40
TEST_KEY = 1 << 41
"""Keys of the evaluation batches (the online trainer's as well)."""


@dataclass(frozen=True)
class HeteroSampleConfig:
    """What ``sample`` draws on a heterogeneous dataset; saved in the manifest."""
    fanouts: str = "10,15"
    """Per layer, outermost first: one count for every relation or ``rel=count|...|*=count``."""
    eval_fanouts: str | None = None
    """Fanouts of the val and test batches (default: ``fanouts``)."""
    batch_size: int = 1024
    epochs: int = 3
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"--epochs must be a positive integer, got {self.epochs!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "HeteroSampleConfig":
        return cls(**{k: obj[k] for k in ("fanouts", "eval_fanouts", "batch_size", "epochs", "seed")})


def train_jobs(perm: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[tuple[np.ndarray, np.uint64]]:
    """Training epoch ``epoch``'s batches of the permuted training nodes ``perm``: ``(sorted seeds, key)``."""
    return [(np.sort(perm[lo:lo + batch_size]), batch_key(seed, epoch + 1, i))
            for i, lo in enumerate(range(0, perm.size, batch_size))]


def eval_jobs(ds: HeteroDataset, batch_size: int) -> dict[str, list[tuple[np.ndarray, np.uint64]]]:
    """The val and test batches, in id order: ``(seeds, key)``."""
    out = {}
    for part, key in (("val", VAL_KEY), ("test", TEST_KEY)):
        ids = np.asarray(ds.split(part), dtype=np.int64)
        out[part] = [(ids[lo:lo + batch_size], batch_key(key, i))
                     for i, lo in enumerate(range(0, ids.size, batch_size))]
    return out


def part_seeds(ds: HeteroDataset, cfg: HeteroSampleConfig) -> dict[str, list[tuple[np.ndarray, np.uint64]]]:
    """Every part's batches as ``(sorted seeds, key)``: the online trainer's order and keys (the epochs'
    permutations are successive draws of one generator seeded with ``cfg.seed``)."""
    train = np.asarray(ds.split("train"), dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    out = {f"train/{e}": train_jobs(rng.permutation(train), cfg.batch_size, cfg.seed, e) for e in range(cfg.epochs)}
    out.update(eval_jobs(ds, cfg.batch_size))
    return out


class _HeteroPartWriter:
    """One part: the global batch files (a homogeneous part writer), the edges' relations and each featured
    type's local input stream."""

    def __init__(self, out: Path, part: str, num_layers: int, featured: dict[str, tuple[int, int]]):
        self.part = part
        self.prefix = _part_file_prefix(part)
        self.inner = _PartWriter(out, part, num_layers)
        self.etypes = Crc32Writer(out / f"{self.prefix}.block_etypes.bin")
        self.num_etypes = 0
        self.featured = featured
        self.type_writers = {t: Crc32Writer(out / "types" / t / f"{self.prefix}.input_nodes.bin") for t in featured}
        self.type_offsets = {t: [0] for t in featured}

    def add(self, mb: HeteroMiniBatch, counts: np.ndarray) -> None:
        indptr = np.concatenate(mb.block_indptr)
        indices = np.concatenate(mb.block_indices)
        etypes = np.concatenate(mb.block_etypes)
        self.inner.add(mb.input_nodes, mb.layer_sizes, indptr, indices)
        self.etypes.write(np.ascontiguousarray(etypes, dtype="<i2"))
        self.num_etypes += etypes.size
        counts[mb.input_nodes] += 1
        for t, (off, n) in self.featured.items():
            sel = mb.input_nodes[(mb.input_nodes >= off) & (mb.input_nodes < off + n)] - off
            self.type_writers[t].write(np.ascontiguousarray(sel, dtype="<i8"))
            self.type_offsets[t].append(self.type_offsets[t][-1] + sel.size)

    def close(self, out: Path) -> dict:
        rec = self.inner.close(out)
        info = self.etypes.close()
        rec["files"]["block_etypes"] = ArraySpec(path=f"{self.prefix}.block_etypes.bin", dtype="<i2",
                                                 shape=(self.num_etypes,), crc32=info["crc32"]).to_json()
        types = {}
        for t, w in self.type_writers.items():
            info = w.close()
            offs = np.asarray(self.type_offsets[t], dtype="<i8")
            ow = Crc32Writer(out / "types" / t / f"{self.prefix}.input_offsets.bin")
            ow.write(offs)
            oinfo = ow.close()
            types[t] = {"input_nodes": ArraySpec(path=f"types/{t}/{self.prefix}.input_nodes.bin", dtype="<i8",
                                                 shape=(int(offs[-1]),), crc32=info["crc32"]).to_json(),
                        "input_offsets": ArraySpec(path=f"types/{t}/{self.prefix}.input_offsets.bin", dtype="<i8",
                                                   shape=(offs.size,), crc32=oinfo["crc32"]).to_json()}
        rec["types"] = types
        return rec

    def abort(self) -> None:
        self.inner.abort()
        for w in (self.etypes, *self.type_writers.values()):
            w.__exit__(None, None, None)


def presample_hetero(dataset, out, cfg: HeteroSampleConfig, *, overwrite: bool = False,
                     progress: ProgressFn = no_progress) -> "HeteroSamples":
    """Presample ``cfg.epochs`` training epochs and one pass over val and test of a heterogeneous dataset."""
    t0 = time.perf_counter()
    if not isinstance(cfg, HeteroSampleConfig):
        raise ConfigError(f"cfg must be a HeteroSampleConfig, got {type(cfg).__name__}")
    ds = dataset if isinstance(dataset, HeteroDataset) else HeteroDataset.open(dataset)
    out = Path(out)
    if out.resolve() == ds.path.resolve() or ds.path.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} lies inside the dataset directory {ds.path}; choose another directory")
    sampler = HeteroSampler(ds, cfg.fanouts)
    eval_sampler = HeteroSampler(ds, cfg.eval_fanouts) if cfg.eval_fanouts else sampler
    if len(eval_sampler.fanouts) != len(sampler.fanouts):
        raise ConfigError(f"--eval-fanouts has {len(eval_sampler.fanouts)} layers, --fanouts "
                          f"{len(sampler.fanouts)}; give both the same number of layers")
    num_layers = len(sampler.fanouts)
    offs = ds.type_offsets
    featured = {t: (offs[t], nt.num_nodes) for t, nt in ds.node_types.items() if nt.features is not None}
    jobs = part_seeds(ds, cfg)
    total = sum(len(v) for v in jobs.values())
    out = prepare_output_dir(out, overwrite=overwrite)
    # each batch holds at least its seeds' ids (8 bytes each, twice for a featured target)
    check_free_space(out, sum(s.size for v in jobs.values() for s, _ in v) * 16 + ds.num_nodes * 8, "the samples")
    writers: list[_HeteroPartWriter] = []
    try:
        for t in featured:
            (out / "types" / t).mkdir(parents=True, exist_ok=True)
        counts = np.zeros(ds.num_nodes, dtype=np.int64)
        parts, edges, sample_s = {}, 0, 0.0
        for part in part_names(cfg.epochs):
            pw = _HeteroPartWriter(out, part, num_layers, featured)
            writers.append(pw)
            smp = sampler if part.startswith("train/") else eval_sampler
            if jobs[part]:
                progress(f"sample {part}", 0, len(jobs[part]))
            for seeds, key in jobs[part]:
                ts = time.perf_counter()
                mb = smp.sample(seeds, key)
                sample_s += time.perf_counter() - ts
                pw.add(mb, counts)
                edges += mb.num_edges
                progress(f"sample {part}", 1, len(jobs[part]))
            parts[part] = pw.close(out)
        files = {}
        for t, (off, n) in featured.items():
            w = Crc32Writer(out / "types" / t / "access_counts.bin")
            w.write(np.ascontiguousarray(counts[off:off + n], dtype="<i8"))
            info = w.close()
            files[f"access_counts/{t}"] = ArraySpec(path=f"types/{t}/access_counts.bin", dtype="<i8", shape=(n,),
                                                    crc32=info["crc32"]).to_json()
        seconds = time.perf_counter() - t0
        disk = sum(f["bytes"] for p in parts.values() for f in p["files"].values()) + \
            sum(f["bytes"] for p in parts.values() for tf in p["types"].values() for f in tf.values()) + \
            sum(f["bytes"] for f in files.values())
        body = {
            "config": cfg.to_json(),
            "fanouts": sampler.fanouts, "eval_fanouts": eval_sampler.fanouts,
            "dataset": {"path": str(ds.path.resolve()), "relpath": os.path.relpath(ds.path.resolve(), out.resolve()),
                        "fingerprint": ds.fingerprint, "num_nodes": ds.num_nodes,
                        "type_offsets": offs, "node_types": list(ds.node_types), "relations": list(ds.relations),
                        "target": ds.target},
            "featured_types": {t: {"offset": off, "num_nodes": n} for t, (off, n) in featured.items()},
            "parts": parts, "files": files,
            "stats": {"batches": total, "sampled_edges": int(edges), "sample_seconds": round(sample_s, 3),
                      "seconds": round(seconds, 3), "disk_bytes": int(disk)},
        }
        write_manifest(out, FORMAT, VERSION, body)
        finish_output_dir(out)
    except BaseException:
        for pw in writers:
            try:
                pw.abort()
            except Exception:  # noqa: BLE001 -- the first error is the one to report
                pass
        abort_output_dir(out)
        raise
    samples = HeteroSamples.open(out)
    log.info("presampled %s: %d batches, %d edges in %.1f s", out, total, edges, seconds)
    return samples


class HeteroSamples:
    """A read-only view of a heterogeneous samples directory."""

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        where = str(self.path / "manifest.json")
        try:
            self.config = HeteroSampleConfig.from_json(manifest["config"])
            d = manifest["dataset"]
            self.dataset_path = Path(d["path"])
            self.dataset_relpath = d.get("relpath")
            self.dataset_fingerprint = str(d["fingerprint"])
            self.num_nodes = int(d["num_nodes"])
            # in the dataset's type order (the manifest's JSON keys are sorted by name)
            self.type_offsets = {str(t): int(d["type_offsets"][t]) for t in d["node_types"]}
            self.relations = [str(r) for r in d["relations"]]
            self.target = str(d["target"])
            self.featured = {str(t): (int(v["offset"]), int(v["num_nodes"]))
                             for t, v in manifest["featured_types"].items()}
            self.num_layers = len(manifest["fanouts"])
            self._specs = {p: {n: ArraySpec.from_json(o, where) for n, o in rec["files"].items()}
                           for p, rec in manifest["parts"].items()}
            self._type_specs = {p: {t: {n: ArraySpec.from_json(o, where) for n, o in tf.items()}
                                    for t, tf in rec["types"].items()} for p, rec in manifest["parts"].items()}
            self._num_batches = {p: int(rec["num_batches"]) for p, rec in manifest["parts"].items()}
            self._count_specs = {t: ArraySpec.from_json(manifest["files"][f"access_counts/{t}"], where)
                                 for t in self.featured}
        except (KeyError, TypeError, ValueError, AttributeError, DiskGNNError) as exc:
            raise IntegrityError(f"{where} lacks a valid field ({exc}); re-create {self.path} with diskgnn sample") \
                from None
        self.parts = part_names(self.config.epochs)
        if sorted(self._specs) != sorted(self.parts):
            raise IntegrityError(f"{where} lists parts {sorted(self._specs)}, expected {self.parts}")
        width = _INDEX_FIXED + self.num_layers + 1
        for p, specs in self._specs.items():
            for name in ("index", "input_nodes", "block_indptr", "block_indices", "block_etypes"):
                if name not in specs:
                    raise IntegrityError(f"{where}: part {p} does not list its {name} file")
            if specs["index"].shape != (self._num_batches[p] + 1, width):
                raise IntegrityError(f"{where}: part {p} index has shape {list(specs['index'].shape)}, expected "
                                     f"[{self._num_batches[p] + 1}, {width}]")
            if specs["block_etypes"].shape != specs["block_indices"].shape:
                raise IntegrityError(f"{where}: part {p} has {specs['block_etypes'].shape[0]} edge relations for "
                                     f"{specs['block_indices'].shape[0]} edges")
            if set(self._type_specs[p]) != set(self.featured):
                raise IntegrityError(f"{where}: part {p} has input streams of {sorted(self._type_specs[p])}, "
                                     f"expected {sorted(self.featured)}")
            for t, ts in self._type_specs[p].items():
                if ts["input_offsets"].shape != (self._num_batches[p] + 1,):
                    raise IntegrityError(f"{where}: part {p}, type {t}: the input offsets do not cover its "
                                         f"{self._num_batches[p]} batches")
        self._index: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path) -> "HeteroSamples":
        return cls(path, read_manifest(path, FORMAT, VERSION))

    @property
    def fingerprint(self) -> str:
        import json
        import zlib
        key = {k: v for k, v in self.manifest.items() if k not in ("created", "stats")}
        return f"{zlib.crc32(json.dumps(key, sort_keys=True, default=str).encode()):08x}"

    def open_dataset(self) -> HeteroDataset:
        """The dataset these batches were drawn from (its fingerprint checked)."""
        candidates = [self.dataset_path]
        if self.dataset_relpath:
            candidates.append((self.path / self.dataset_relpath).resolve())
        for c in candidates:
            if c.exists():
                ds = HeteroDataset.open(c)
                check_dataset(self, ds)
                return ds
        raise MismatchError(f"{self.path} was sampled from {self.dataset_path}, which no longer exists; restore it "
                            f"or re-run diskgnn sample")

    def num_batches(self, part: str) -> int:
        self._check_part(part)
        return self._num_batches[part]

    def _check_part(self, part: str) -> None:
        if part not in self._specs:
            raise ConfigError(f"{self.path} has no part {part!r}; it has {', '.join(self.parts)}")

    def index(self, part: str) -> np.ndarray:
        if part not in self._index:
            self._check_part(part)
            spec = self._specs[part]["index"]
            open_array(self.path, spec)  # the file has exactly its promised size
            self._index[part] = pread_elements(self.path / spec.path, spec.dtype, 0, int(np.prod(spec.shape))) \
                .reshape(spec.shape)
        return self._index[part]

    def _read(self, part: str, name: str, lo: int, hi: int) -> np.ndarray:
        spec = self._specs[part][name]
        return pread_elements(self.path / spec.path, spec.dtype, lo, hi)

    def batch(self, part: str, i: int) -> HeteroMiniBatch:
        nb = self.num_batches(part)
        if not 0 <= i < nb:
            raise ConfigError(f"{self.path}: part {part} has {nb} batches, there is no batch {i}")
        idx = self.index(part)
        row, nxt = idx[i], idx[i + 1]
        sizes = np.array(row[_INDEX_FIXED:], dtype=np.int64)
        nodes = self._read(part, "input_nodes", row[0], nxt[0])
        indptr = self._read(part, "block_indptr", row[1], nxt[1])
        indices = self._read(part, "block_indices", row[2], nxt[2])
        etypes = self._read(part, "block_etypes", row[2], nxt[2])
        where = f"{self.path}: part {part} batch {i}"
        if nodes.size != sizes[0] or indptr.size != int(sizes[1:].sum()) + self.num_layers:
            raise IntegrityError(f"{where} is corrupt (its sizes do not match its arrays); run diskgnn sample again")
        ptrs, idxs, types = [], [], []
        p = e = 0
        for layer in range(self.num_layers):
            ip = indptr[p:p + sizes[layer + 1] + 1]
            m = int(ip[-1]) if ip.size else 0
            if ip.size and (ip[0] != 0 or np.any(np.diff(ip) < 0)):
                raise IntegrityError(f"{where}: block {layer} has a malformed indptr; run diskgnn sample again")
            ix, et = indices[e:e + m], etypes[e:e + m]
            if ix.size and (int(ix.min()) < 0 or int(ix.max()) >= sizes[layer]):
                raise IntegrityError(f"{where}: block {layer} points outside its {sizes[layer]} source nodes")
            if et.size and (int(et.min()) < 0 or int(et.max()) >= len(self.relations)):
                raise IntegrityError(f"{where}: block {layer} names a relation outside 0..{len(self.relations) - 1}")
            ptrs.append(ip.astype(np.int64))
            idxs.append(ix)
            types.append(et.astype(np.int16))
            p += ip.size
            e += m
        if e != indices.size:
            raise IntegrityError(f"{where}: the blocks hold {e} edges, the batch {indices.size}")
        return HeteroMiniBatch(nodes, sizes, ptrs, idxs, types)

    def type_view(self, node_type: str) -> "TypeSamples":
        if node_type not in self.featured:
            raise ConfigError(f"node type {node_type!r} has no features in {self.path}; featured types: "
                              f"{', '.join(self.featured) or 'none'}")
        return TypeSamples(self, node_type)

    def summary(self) -> dict:
        return {"kind": "heterogeneous samples", "path": str(self.path), "dataset": str(self.dataset_path),
                "config": self.config.to_json(), "relations": len(self.relations), "target": self.target,
                "featured_types": list(self.featured),
                "batches_per_part": {p: self._num_batches[p] for p in self.parts},
                **{k: v for k, v in self.manifest.get("stats", {}).items()}}

    def __repr__(self) -> str:
        return f"HeteroSamples({str(self.path)!r}, parts={len(self.parts)}, types={list(self.featured)})"


class TypeSamples:
    """One featured type's input stream as a homogeneous samples view (what the packer and the store read):
    batch ``i`` of a part reads the type's rows ``input_nodes(part, i)`` (local ids, in batch order)."""

    def __init__(self, samples: HeteroSamples, node_type: str):
        self.hetero = samples
        self.node_type = node_type
        self.path = samples.path / "types" / node_type
        self.parts = list(samples.parts)
        self.num_nodes = samples.featured[node_type][1]
        self.dataset_fingerprint = f"{samples.dataset_fingerprint}:{node_type}"
        self.fingerprint = f"{samples.fingerprint}:{node_type}"
        self.manifest = {"hetero_samples": str(samples.path), "type": node_type}
        self._offsets: dict[str, np.ndarray] = {}

    def _spec(self, part: str, name: str) -> ArraySpec:
        self.hetero._check_part(part)
        return self.hetero._type_specs[part][self.node_type][name]

    def num_batches(self, part: str) -> int:
        return self.hetero.num_batches(part)

    def input_offsets(self, part: str) -> np.ndarray:
        if part not in self._offsets:
            spec = self._spec(part, "input_offsets")
            offs = pread_elements(self.hetero.path / spec.path, spec.dtype, 0, spec.shape[0])
            if offs.size and (offs[0] != 0 or np.any(np.diff(offs) < 0)
                              or offs[-1] != self._spec(part, "input_nodes").shape[0]):
                raise IntegrityError(f"{self.hetero.path / spec.path}: malformed offsets; run diskgnn sample again")
            self._offsets[part] = offs
        return self._offsets[part]

    def read_input_nodes(self, part: str, lo: int, hi: int) -> np.ndarray:
        spec = self._spec(part, "input_nodes")
        return pread_elements(self.hetero.path / spec.path, spec.dtype, lo, hi)

    def input_nodes(self, part: str, i: int) -> np.ndarray:
        offs = self.input_offsets(part)
        return self.read_input_nodes(part, offs[i], offs[i + 1])

    @property
    def access_counts(self) -> np.ndarray:
        return open_array(self.hetero.path, self.hetero._count_specs[self.node_type])

    def __repr__(self) -> str:
        return f"TypeSamples({str(self.hetero.path)!r}, type={self.node_type!r})"


def check_dataset(samples: HeteroSamples, ds: HeteroDataset) -> None:
    if ds.fingerprint != samples.dataset_fingerprint:
        raise MismatchError(f"the samples in {samples.path} were made from a dataset with fingerprint "
                            f"{samples.dataset_fingerprint}, but {ds.path} has {ds.fingerprint}; pass the dataset "
                            f"they were sampled from or re-run diskgnn sample on {ds.path}")


def verify_hetero_samples(samples: HeteroSamples, ds: HeteroDataset | None = None, *, check_crc: bool = True,
                          progress: ProgressFn = no_progress) -> dict:
    """Check every batch: edges are real in-edges of their relation between the right types, every type stream
    is the batch's input nodes of that type, and the access counts add up."""
    from diskgnn.kernels.link import count_present_edges
    from diskgnn.manifest import file_crc32
    ds = ds if ds is not None else samples.open_dataset()
    check_dataset(samples, ds)
    for p in samples.parts:
        specs = list(samples._specs[p].values()) + [s for ts in samples._type_specs[p].values() for s in ts.values()]
        for spec in specs + (list(samples._count_specs.values()) if p == samples.parts[0] else []):
            open_array(samples.path, spec)
            if check_crc and spec.crc32 is not None and file_crc32(samples.path / spec.path) != spec.crc32:
                raise IntegrityError(f"{samples.path / spec.path} fails its checksum; run diskgnn sample again")
    offs = samples.type_offsets
    names = list(ds.node_types)
    bounds = np.array([offs[t] for t in names] + [ds.num_nodes], dtype=np.int64)
    rels = [ds.relations[r] for r in samples.relations]
    csr = [(np.asarray(ds.indptr(r.name)), ds.indices(r.name)) for r in rels]
    counts = {t: np.zeros(n, dtype=np.int64) for t, (_, n) in samples.featured.items()}
    views = {t: samples.type_view(t) for t in samples.featured}
    nbatches = 0
    for p in samples.parts:
        nb = samples.num_batches(p)
        progress(f"verify {p}", 0, nb)
        for i in range(nb):
            mb = samples.batch(p, i)
            where = f"{samples.path}: part {p} batch {i}"
            if np.unique(mb.input_nodes).size != mb.input_nodes.size:
                raise IntegrityError(f"{where}: repeated input nodes")
            tyidx = np.searchsorted(bounds, mb.input_nodes, side="right") - 1
            for layer in range(mb.num_layers):
                ip, ix, et = mb.block_indptr[layer], mb.block_indices[layer], mb.block_etypes[layer]
                dst = np.repeat(np.arange(ip.size - 1), np.diff(ip))
                for ri in np.unique(et):
                    r = rels[ri]
                    sel = et == ri
                    d_g, s_g = mb.input_nodes[dst[sel]], mb.input_nodes[ix[sel]]
                    if np.any(tyidx[dst[sel]] != names.index(r.dst)) or np.any(tyidx[ix[sel]] != names.index(r.src)):
                        raise IntegrityError(f"{where}: block {layer} has an edge of {r.name} between wrong types")
                    indptr, indices = csr[ri]
                    d_l, s_l = d_g - offs[r.dst], s_g - offs[r.src]
                    found = count_present_edges(indptr, indices, s_l.astype(np.int64), d_l.astype(np.int64))
                    if found != d_l.size:
                        raise IntegrityError(f"{where}: block {layer} holds {d_l.size - found} edge(s) of "
                                             f"{r.name} that the relation does not have; run diskgnn sample again")
            for t, (off, n) in samples.featured.items():
                want = mb.input_nodes[(mb.input_nodes >= off) & (mb.input_nodes < off + n)] - off
                got = views[t].input_nodes(p, i)
                if not np.array_equal(got, want):
                    raise IntegrityError(f"{where}: the input stream of type {t} is not the batch's {t} nodes")
                counts[t][got] += 1
            nbatches += 1
            progress(f"verify {p}", 1, nb)
    for t in samples.featured:
        if not np.array_equal(np.asarray(views[t].access_counts), counts[t]):
            raise IntegrityError(f"{samples.path}: the access counts of type {t} do not match the batches")
    return {"batches": nbatches}
