"""Packing and the feature store per node type: ``diskgnn pack`` on heterogeneous samples.

A row is ``(type, local id)``. Every featured type is packed by the homogeneous
packer (:func:`diskgnn.packing.pack`) from its own view of the samples
(:class:`~diskgnn.hetero_samples.TypeSamples`: the batch's rows of that type, in
batch order) and of the dataset (:class:`TypeFeatures`: ``features/<type>.bin``),
into ``types/<type>/``, a complete packed directory. So each type's uncached
rows of a batch lie contiguously in its ``packed.bin``, read with O_DIRECT, and
the same crash-safety, resume and checks hold.

The cache tiers are chosen across types: each tier's bytes go to the rows with
the most accesses *per byte* over all types (a 64-byte author row read 10 times
is worth more than a 1 KiB paper row read 12 times), so a type with narrow
popular rows gets more of the cache than its share of the feature bytes.
Featureless types have no rows to pack: training gives them learnable embeddings
(counted in its memory plan).

The top-level manifest (written last) names every type's directory, its tier
sizes and the pack's statistics.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from diskgnn.dataset import feature_dtype
from diskgnn.errors import ConfigError, IntegrityError, ManifestNotFoundError, MismatchError
from diskgnn.hetero import HeteroDataset
from diskgnn.hetero_samples import HeteroSamples, TypeSamples, check_dataset
from diskgnn.manifest import (MANIFEST_NAME, abort_output_dir, finish_output_dir, prepare_output_dir, read_manifest,
                              write_manifest)
from diskgnn.memory import resolve_memory_budget
from diskgnn.packing import MEMORY_SHARE, PackConfig, pack
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sizes import format_bytes
from diskgnn.store import TIER_NAMES, Packed

log = logging.getLogger(__name__)

FORMAT = "diskgnn.hetero-packed"
VERSION = 1


class TypeFeatures:
    """One node type's feature file seen through :class:`~diskgnn.dataset.Dataset`'s feature API (what the
    packer and the store's checks read)."""

    def __init__(self, ds: HeteroDataset, node_type: str):
        t = ds.node_types.get(node_type)
        if t is None or t.features is None:
            raise ConfigError(f"node type {node_type!r} of {ds.path} has no features")
        self.hetero = ds
        self.node_type = node_type
        self.path = ds.path
        self.features_path = ds.path / t.features.path
        self.num_nodes = t.num_nodes
        self.feat_dim = t.feat_dim
        self.feat_dtype = t.feat_dtype
        self.row_bytes = t.row_bytes
        self.feature_bytes = t.num_nodes * t.row_bytes
        self.fingerprint = f"{ds.fingerprint}:{node_type}"

    def feature_rows(self, ids) -> np.ndarray:
        return self.hetero.feature_rows(self.node_type, ids)

    def __repr__(self) -> str:
        return f"TypeFeatures({str(self.path)!r}, type={self.node_type!r}, {self.num_nodes}x{self.feat_dim})"


def split_cache(counts: dict[str, np.ndarray], row_bytes: dict[str, int], budget: int) -> dict[str, int]:
    """Rows of every type that a cache of ``budget`` bytes holds when it takes rows by accesses per byte, most
    first (ties: the type listed first, then within a type as the packer does, by count then id). Only rows
    read at least once are taken. ``counts[t]`` is a type's access-count histogram source (one count per row)."""
    levels = []  # (accesses per byte, type order, count, rows with that count)
    for order, (t, c) in enumerate(counts.items()):
        hist = np.bincount(np.asarray(c, dtype=np.int64))
        for k in np.flatnonzero(hist)[::-1]:
            if k > 0:
                levels.append((k / row_bytes[t], -order, int(k), t, int(hist[k])))
    levels.sort(reverse=True)
    rows = {t: 0 for t in counts}
    left = int(budget)
    for _, _, _, t, n in levels:
        take = min(n, left // row_bytes[t])
        rows[t] += take
        left -= take * row_bytes[t]
        if take < n:
            break  # the next row of this level does not fit: stop, so the tiers stay hottest-first
    return rows


def tier_rows(counts: dict[str, np.ndarray], row_bytes: dict[str, int], tier_bytes: dict[str, int]) \
        -> dict[str, dict[str, int]]:
    """Per type, the rows of each tier (device, pinned, host): nested, the hottest rows in the first tier."""
    out = {t: {} for t in counts}
    total = 0
    prev = {t: 0 for t in counts}
    for tier in TIER_NAMES:
        total += tier_bytes[tier]
        cum = split_cache(counts, row_bytes, total)
        for t in counts:
            out[t][tier] = max(cum[t] - prev[t], 0)
            prev[t] = max(cum[t], prev[t])
    return out


def _keep_resumable(out: Path, overwrite: bool) -> Path:
    """Keep an unfinished hetero pack's type directories (each resumes or is re-packed), else start clean."""
    if not overwrite and (out / ".diskgnn-partial").exists() and not (out / MANIFEST_NAME).exists():
        (out / "types").mkdir(exist_ok=True)
        return out
    out = prepare_output_dir(out, overwrite=overwrite)
    (out / "types").mkdir()
    return out


def _finished_type(path: Path, view: TypeSamples, feats: TypeFeatures, cfg: PackConfig) -> Packed | None:
    """A type directory that an interrupted run finished with the same samples, dataset and config."""
    if not (path / MANIFEST_NAME).exists():
        return None
    try:
        p = Packed.open(path, samples=view, dataset=feats)
        p.dataset  # noqa: B018 -- checks the dataset's fingerprint
    except Exception:  # noqa: BLE001 -- anything wrong: pack it again
        return None
    return p if p.manifest.get("config") == cfg.to_json() else None


def pack_hetero(samples_dir, out, cfg: PackConfig, *, overwrite: bool = False, progress: ProgressFn = no_progress,
                memory_budget=None, dataset=None) -> "HeteroPacked":
    """Pack every featured type of the heterogeneous samples in ``samples_dir`` into ``out`` (see the module doc).

    Percentages of the cache flags are of the featured types' bytes together (in the store dtype).
    """
    t0 = time.perf_counter()
    samples = samples_dir if isinstance(samples_dir, HeteroSamples) else HeteroSamples.open(samples_dir)
    ds = dataset if isinstance(dataset, HeteroDataset) else (HeteroDataset.open(dataset) if dataset is not None
                                                             else samples.open_dataset())
    check_dataset(samples, ds)
    if cfg.disk_budget is not None:
        raise ConfigError("--disk-budget (the segment layout) is not available for heterogeneous graphs yet; pack "
                          "without it (the plain layout)")
    budget = resolve_memory_budget(memory_budget, fraction=MEMORY_SHARE)
    types = list(samples.featured)
    feats = {t: TypeFeatures(ds, t) for t in types}
    views = {t: samples.type_view(t) for t in types}
    store_rb = {t: feats[t].feat_dim * feature_dtype(cfg.store_dtype or feats[t].feat_dtype).itemsize
                for t in types}
    total_bytes = sum(feats[t].num_nodes * store_rb[t] for t in types)
    tier_bytes = cfg.cache_bytes(total_bytes)
    counts = {t: np.asarray(views[t].access_counts) for t in types}
    rows = tier_rows(counts, store_rb, tier_bytes)
    del counts
    for t in types:
        log.info("type %s: %d rows of %s, tiers %s", t, feats[t].num_nodes, format_bytes(store_rb[t]),
                 ", ".join(f"{k} {v} rows" for k, v in rows[t].items()))
    out = _keep_resumable(Path(out), overwrite)
    try:
        stats, type_recs = {}, {}
        for t in types:
            tcfg = replace(cfg, **{f"{tier}_cache": rows[t][tier] * store_rb[t] for tier in TIER_NAMES})
            path = out / "types" / t
            p = _finished_type(path, views[t], feats[t], tcfg)
            if p is None:
                log.info("packing type %s into %s", t, path)
                p = pack(views[t], path, tcfg, dataset=feats[t], overwrite=False, progress=progress,
                         memory_budget=budget)
            else:
                log.info("type %s: kept the finished pack of an interrupted run in %s", t, path)
            stats[t] = {k: p.stats.get(k) for k in ("seconds", "io_seconds", "footprint_bytes", "cache_hit_rate",
                                                    "bytes_read", "bytes_written", "read_GBps", "write_GBps")}
            type_recs[t] = {"dir": f"types/{t}", "rows": feats[t].num_nodes, "row_bytes": store_rb[t],
                            "tier_rows": rows[t]}
        disk = sum(s["footprint_bytes"] or 0 for s in stats.values())
        body = {
            "samples": {"path": str(samples.path.resolve()),
                        "relpath": os.path.relpath(samples.path.resolve(), out.resolve()),
                        "fingerprint": samples.fingerprint},
            "dataset": {"path": str(ds.path.resolve()), "relpath": os.path.relpath(ds.path.resolve(), out.resolve()),
                        "fingerprint": ds.fingerprint},
            "config": cfg.to_json(), "types": type_recs,
            "featureless_types": [t for t, nt in ds.node_types.items() if nt.features is None],
            "tier_bytes": tier_bytes,
            "stats": {"types": stats, "seconds": round(time.perf_counter() - t0, 3), "footprint_bytes": disk,
                      "feature_bytes": total_bytes, "footprint": disk / max(total_bytes, 1),
                      "memory_budget_bytes": budget},
        }
        write_manifest(out, FORMAT, VERSION, body)
        finish_output_dir(out)
    except BaseException:
        abort_output_dir(out)
        raise
    log.info("packed %s: %d types, %s on disk (%.2fx the features), %.1f s", out, len(types), format_bytes(disk),
             disk / max(total_bytes, 1), time.perf_counter() - t0)
    return HeteroPacked.open(out, samples=samples, dataset=ds)


class HeteroPacked:
    """A read-only view of a heterogeneous packed directory: one :class:`~diskgnn.store.Packed` per featured
    type, each checked against its samples view and feature file."""

    def __init__(self, path, manifest: dict, *, samples: HeteroSamples | None = None,
                 dataset: HeteroDataset | None = None):
        self.path = Path(path)
        self.manifest = manifest
        where = self.path / MANIFEST_NAME
        try:
            self.type_recs = {str(t): dict(r) for t, r in manifest["types"].items()}
            rec = manifest["samples"]
            want_samples = str(rec["fingerprint"])
            sample_paths = [Path(rec["path"])] + ([(self.path / rec["relpath"]).resolve()] if rec.get("relpath")
                                                  else [])
            self.stats = dict(manifest.get("stats", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"{where} lacks a valid field ({exc}); re-run diskgnn pack") from None
        if samples is None:
            found = next((p for p in sample_paths if p.exists()), None)
            if found is None:
                raise ManifestNotFoundError(f"{self.path} was packed from the samples {sample_paths[0]}, which no "
                                            f"longer exist; training needs them: restore them or re-run pack")
            samples = HeteroSamples.open(found)
        if samples.fingerprint != want_samples:
            raise MismatchError(f"{self.path} was packed from samples {want_samples}, but {samples.path} is "
                                f"{samples.fingerprint}: they were re-sampled since; re-run diskgnn pack on them")
        self.samples = samples
        self.dataset = dataset if dataset is not None else samples.open_dataset()
        check_dataset(samples, self.dataset)
        if set(self.type_recs) != set(samples.featured):
            raise IntegrityError(f"{where} packs types {sorted(self.type_recs)}, the samples have featured types "
                                 f"{sorted(samples.featured)}; re-run diskgnn pack")
        self.types: dict[str, Packed] = {}
        for t, r in self.type_recs.items():
            sub = self.path / str(r.get("dir", ""))
            if sub.resolve().parent != (self.path / "types").resolve():
                raise IntegrityError(f"{where}: type {t} points outside {self.path}/types; re-run diskgnn pack")
            self.types[t] = Packed.open(sub, samples=samples.type_view(t), dataset=TypeFeatures(self.dataset, t))
            self.types[t].dataset  # noqa: B018 -- the feature file is the one packed

    @classmethod
    def open(cls, path, *, samples: HeteroSamples | None = None, dataset: HeteroDataset | None = None) \
            -> "HeteroPacked":
        return cls(path, read_manifest(path, FORMAT, VERSION), samples=samples, dataset=dataset)

    def summary(self) -> dict:
        return {"kind": "heterogeneous packed", "path": str(self.path), "samples": str(self.samples.path),
                "dataset": str(self.dataset.path),
                "types": {t: {"tier_rows": r["tier_rows"], "row_bytes": r["row_bytes"],
                              "packed_bytes": self.types[t].specs["packed"].nbytes,
                              "cache_hit_rate": self.types[t].stats.get("cache_hit_rate")}
                          for t, r in self.type_recs.items()},
                "featureless_types": self.manifest.get("featureless_types", []),
                "footprint": self.stats.get("footprint"), "seconds": self.stats.get("seconds")}

    def __repr__(self) -> str:
        return f"HeteroPacked({str(self.path)!r}, types={list(self.types)})"


def verify_hetero_packed(p: HeteroPacked, *, check_crc: bool = True, progress: ProgressFn = no_progress) -> dict:
    """Every type's packed directory checked as a homogeneous one (checksums, every batch assembles to the
    feature file's rows bit for bit)."""
    from diskgnn.store import verify_packed
    out = {}
    for t, packed in p.types.items():
        out[t] = verify_packed(packed, check_crc=check_crc, progress=progress)
    return out
