"""The benchmark harness: prepare data once, then run every system side by side.

Each system runs in its own process and memory cgroup with the same limit,
after the page cache was dropped (see :mod:`diskgnn.cgroup`); the disk's own
limits are measured in the same run with the project's reader. Results follow
../shared/BENCH.md and land in ``bench/results/``.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from diskgnn.cgroup import python_module_cmd, run_capped
from diskgnn.errors import ConfigError, DiskGNNError
from diskgnn.progress import ProgressFn, no_progress
from diskgnn.sizes import parse_size

log = logging.getLogger(__name__)

DEFAULT_CAPS = {"tiny": 512 << 20, "s": 1 << 30, "m": 2 << 30}
TIERS = (5, 10, 20)
SLOW_SYSTEMS = ("pread", "mmap", "mmap-readahead", "dgl-online")
"""Systems orders of magnitude slower: measured on ``--slow-batches`` batches per epoch and scaled."""
WORKLOADS = {
    "sage-2layer": {"fanouts": (10, 15), "batch_size": 1024,
                    "note": "2 layers, fanouts 10,15, batch 1024 (the default)"},
    "diskgnn-deep": {"fanouts": (5, 10, 15), "batch_size": 1024,
                     "note": "the DiskGNN paper's deep setting: 3 layers, fanouts 5,10,15, batch 1024 (any --model)"},
}
"""Named configurations of ``bench loader|train --workload`` (fanouts in DGL order, outermost layer last)."""
UNCAPPED_SYSTEMS = ("in-memory", "dgl-inmem")
"""The in-memory ceilings: every feature in RAM, run without the memory cap."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """What one ``diskgnn bench loader|train`` run measures."""
    kind: str
    """``loader`` (no model compute) or ``train``."""
    scale: str
    workdir: Path
    results: Path
    memory_cap: int
    systems: tuple[str, ...]
    epochs: int = 3
    warmup: int = 1
    max_batches: int = 0
    """Measure at most this many batches per epoch for slow systems (0 = all); results then say so."""
    slow_max_batches: int = 0
    keep: bool = False
    dataset: str | None = None
    model: str = "sage"
    """Model of ``train`` runs (sage, gcn, gat)."""
    fanouts: tuple[int, ...] = (10, 15)
    """Sampling fanouts (DGL order: the last one is the seeds' layer); their count is the model's depth."""
    batch_size: int = 1024
    disk_budget: str | None = None
    """Pack the diskgnn systems with this ``--disk-budget`` (the segment layout: each segment read once)."""
    segment_memory: str | None = None
    task: str = "node"
    """``node``, or ``link``: link-prediction batches (positive edges, negatives) of a link dataset."""
    negatives: int = 1
    """link: negatives per positive edge."""
    decoder: str = "dot"
    """link: the edge decoder of ``train`` runs."""

    def __post_init__(self):
        if self.kind not in ("loader", "train"):
            raise ConfigError(f"bench kind must be loader or train, got {self.kind!r}")
        if self.task not in ("node", "link"):
            raise ConfigError(f"--task must be node or link, got {self.task!r}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        system_tiers(self.systems)  # a malformed diskgnn-N% fails here, before any data is made


def system_tiers(systems) -> list[int]:
    """The host-tier percentages to pack for ``systems``: every ``diskgnn-N%`` (any N in 0..100), and 10
    for ``pread`` (it reads the 10 % pack's rows one by one)."""
    tiers = set()
    for s in systems:
        if s.startswith("diskgnn-"):
            text = s[len("diskgnn-"):]
            if not text.endswith("%") or not text[:-1].isdigit() or not 0 <= int(text[:-1]) <= 100:
                raise ConfigError(f"system {s!r}: a diskgnn system is diskgnn-N% with N the host tier in percent "
                                  f"(0-100), e.g. diskgnn-10%")
            tiers.add(int(text[:-1]))
        elif s == "pread":
            tiers.add(10)
    return sorted(tiers)


def default_systems(kind: str, task: str = "node") -> tuple[str, ...]:
    if task == "link":  # the link figure: diskgnn capped against DGL's edge-prediction sampler, capped and in RAM
        systems = ["diskgnn-10%", "in-memory"]
    else:
        systems = [f"diskgnn-{t}%" for t in TIERS] + ["pread", "mmap", "mmap-readahead", "in-memory"]
    try:
        import importlib.util
        if importlib.util.find_spec("dgl") is not None:
            systems += ["dgl-online", "dgl-inmem"]
    except ImportError:
        pass
    return tuple(systems)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts(workdir: Path) -> dict:
    du = shutil.disk_usage(workdir)
    return {"cores": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total, "disk_total_bytes": du.total,
            "disk_free_bytes": du.free, "platform": platform.platform(), "python": platform.python_version()}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare_inputs(cfg: BenchConfig, progress: ProgressFn = no_progress) -> dict:
    """Dataset, samples and one packed directory per memory tier; returns paths and preprocessing costs."""
    from diskgnn.dataset import Dataset
    from diskgnn.packing import PackConfig, pack
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.synth import scale_config, synthesize
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    info: dict = {"preprocessing": {}}
    link = cfg.task == "link"
    if cfg.dataset:
        ds = Dataset.open(cfg.dataset)
        if link:
            from diskgnn.link import check_link_dataset
            check_link_dataset(ds, "bench --task link")
    else:
        path = cfg.workdir / (f"dataset-{cfg.scale}" + ("-link" if link else ""))
        try:
            ds = Dataset.open(path)
            if ds.manifest.get("source", {}).get("config") != scale_config(cfg.scale).__class__.__name__ and \
                    ds.num_nodes != scale_config(cfg.scale).nodes or ds.has_link != link:
                raise DiskGNNError("different scale")
        except DiskGNNError:
            t0 = time.perf_counter()
            ds = synthesize(scale_config(cfg.scale, task=cfg.task), path, overwrite=True, progress=progress)
            info["preprocessing"]["synth_s"] = time.perf_counter() - t0
    info["dataset"] = str(ds.path)
    info["feature_bytes"] = ds.feature_bytes
    info["row_bytes"] = ds.feat_dim * 4  # float32 rows as assembled
    samples_dir = cfg.workdir / "samples"
    t0 = time.perf_counter()
    scfg = SampleConfig(fanouts=tuple(cfg.fanouts), batch_size=cfg.batch_size, epochs=1, seed=0,
                        **({"task": "link", "negatives": cfg.negatives} if link else {}))
    presample(ds.path, samples_dir, scfg, overwrite=True, progress=progress)
    info["preprocessing"]["sample_s"] = time.perf_counter() - t0
    info["preprocessing"]["samples_bytes"] = _dir_bytes(samples_dir)
    info["samples"] = str(samples_dir)
    info["packed"] = {}
    for tier in system_tiers(cfg.systems):
        out = cfg.workdir / f"packed-{tier}"
        t0 = time.perf_counter()
        pcfg = PackConfig(host_cache=f"{tier}%", disk_budget=cfg.disk_budget, segment_memory=cfg.segment_memory,
                          belady=False)  # the bound is the packing bench's business, not this one's
        # planned for the memory the systems get: segments must fit in it beside the rest
        pack(samples_dir, out, pcfg, overwrite=True, progress=progress, memory_budget=cfg.memory_cap)
        info["preprocessing"][f"pack_{tier}%_s"] = time.perf_counter() - t0
        info["preprocessing"][f"pack_{tier}%_footprint_x"] = _dir_bytes(out) / ds.feature_bytes
        packed_manifest = json.loads((out / "manifest.json").read_text())
        info.setdefault("layouts", {})[tier] = {"layout": packed_manifest["layout"],
                                                "segment_batches": packed_manifest.get("segment_batches"),
                                                "packed_bytes": packed_manifest["stats"]["packed_bytes"]}
        info["packed"][tier] = str(out)
    return info


def run_system(cfg: BenchConfig, system: str, inputs: dict) -> dict:
    """Run one system's worker under the memory cap and return its result dict."""
    args = ["--system", "diskgnn" if system.startswith("diskgnn") else system, "--kind", cfg.kind,
            "--samples", inputs["samples"], "--epochs", str(cfg.epochs), "--warmup", str(cfg.warmup),
            "--model", cfg.model]
    if cfg.task == "link":
        args += ["--task", "link", "--decoder", cfg.decoder]
    if system.startswith("diskgnn"):
        tier = int(system.split("-")[1].rstrip("%"))
        args += ["--packed", inputs["packed"][tier]]
    elif system == "pread":
        args += ["--packed", inputs["packed"][10]]
    slow = system in SLOW_SYSTEMS
    limit = cfg.slow_max_batches if slow else cfg.max_batches
    if limit:
        args += ["--max-batches", str(limit)]
    cap = None if system in UNCAPPED_SYSTEMS else cfg.memory_cap
    log.info("running %s (%s) under %s", system, cfg.kind, f"{cap >> 20} MiB" if cap else "no cap")
    run = run_capped(python_module_cmd("diskgnn.bench.worker", *args), cap, timeout=3600)
    result = None
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if result is None:
        tail = (run.stderr or "").strip().splitlines()[-5:]
        result = {"name": system, "kind": cfg.kind, "failed": True,
                  "error": "out of memory (killed by the cgroup)" if run.oom_killed else " | ".join(tail)}
    result["name"] = system
    result["memory_cap_bytes"] = cap
    result["cgroup"] = run.cgroup
    result["cgroup_peak_bytes"] = run.peak_bytes
    result["wall_s"] = run.wall_s
    return result


def run_bench(cfg: BenchConfig, progress: ProgressFn = no_progress) -> dict:
    from diskgnn.bench.io import disk_limits, gather_limits
    t_start = time.perf_counter()
    usage_before = shutil.disk_usage(cfg.workdir.parent if cfg.workdir.parent.exists() else ".").used
    inputs = prepare_inputs(cfg, progress)
    probe_size = min(2 << 30, max(256 << 20, inputs["feature_bytes"] // 2))
    disk_runs = [disk_limits(cfg.workdir, size=probe_size)]
    systems = []
    for i, system in enumerate(cfg.systems):
        progress(f"bench {cfg.kind}", 0, len(cfg.systems))
        floor_system = system.startswith("diskgnn-")  # every diskgnn system gets floors: probe beside it
        if floor_system and i > 0:  # the disk's speed drifts within a run: probe right next to the floor's system
            disk_runs.append(disk_limits(cfg.workdir, size=probe_size))
        systems.append(run_system(cfg, system, inputs))
        if floor_system:
            disk_runs.append(disk_limits(cfg.workdir, size=probe_size))
        progress(f"bench {cfg.kind}", 1, len(cfg.systems))
    disk_runs.append(disk_limits(cfg.workdir, size=probe_size))
    # The shared disk's speed swings: the floors use the best figure seen in this run (the hardest bound).
    disk = {k: max(r[k] for r in disk_runs) for k in ("seq_read_GBps", "seq_write_GBps", "rand4k_iops_qd1",
                                                       "rand4k_iops_qd64", "buffered_read_GBps")}
    disk["direct"] = all(r.get("direct") for r in disk_runs)
    disk["runs"] = disk_runs
    # The floors of every diskgnn configuration: the disk's (its bytes read at the best sequential read seen
    # in this run) and the memory's (its epoch's input matrices at this machine's gather speed, probed here:
    # a layout that reads little from disk is bound by assembling the matrices, not by the disk).
    gather = gather_limits(int(inputs["row_bytes"]), table_bytes=min(1 << 30, psutil.virtual_memory().available // 4)) \
        if cfg.kind == "loader" else None
    for s in systems:
        if not s["name"].startswith("diskgnn-") or s.get("failed") or not disk.get("seq_read_GBps"):
            continue
        floor = s["feature_bytes_read"] / (disk["seq_read_GBps"] * 1e9)
        s["disk_floor_s"] = floor
        s["epoch_over_disk_floor"] = s["epoch_time_s"] / floor if floor else None
        # every byte the epoch read from the disk (features, and the batches' blocks and maps, which a tight
        # cap keeps out of the page cache) at the same speed
        s["disk_floor_all_s"] = max(s["bytes_read"], s["feature_bytes_read"]) / (disk["seq_read_GBps"] * 1e9)
        s["epoch_over_disk_floor_all"] = s["epoch_time_s"] / s["disk_floor_all_s"] if s["disk_floor_all_s"] \
            else None
        if gather and s.get("assembled_bytes"):
            s["gather_floor_s"] = s["assembled_bytes"] / (gather["gather_GBps"] * 1e9)
            s["floor_s"] = max(s["disk_floor_all_s"], s["gather_floor_s"])
            s["epoch_over_floor"] = s["epoch_time_s"] / s["floor_s"] if s["floor_s"] else None
        # reads are queued ahead of the read stage, so its busy time is not the transfer time: the
        # reader's bandwidth is measured on its own by `python -m diskgnn.bench.packing --read-epochs`
    ratios = {}
    by_name = {s["name"]: s for s in systems if not s.get("failed")}
    if "diskgnn-10%" in by_name:
        base = by_name["diskgnn-10%"]["epoch_time_s"]
        for name, s in by_name.items():
            if name != "diskgnn-10%":
                ratios[f"{name}_over_diskgnn-10%"] = s["epoch_time_s"] / base
        for ceiling in UNCAPPED_SYSTEMS:  # how far the capped system is from each in-memory ceiling
            if ceiling in by_name:
                ratios[f"diskgnn-10%_over_{ceiling}"] = base / by_name[ceiling]["epoch_time_s"]
    result = {
        "scale": cfg.scale, "kind": cfg.kind, "task": cfg.task, "commit": git_commit(),
        "memory_cap_bytes": cfg.memory_cap,
        "cgroup": all(s.get("cgroup") for s in systems if s["name"] not in UNCAPPED_SYSTEMS),
        "machine": machine_facts(cfg.workdir), "disk": disk, "memory": gather,
        "config": {"epochs": cfg.epochs, "warmup": cfg.warmup, "max_batches": cfg.max_batches,
                   "slow_max_batches": cfg.slow_max_batches, "fanouts": list(cfg.fanouts),
                   "batch_size": cfg.batch_size, "model": cfg.model if cfg.kind == "train" else None,
                   "disk_budget": cfg.disk_budget, "segment_memory": cfg.segment_memory,
                   "task": cfg.task, **({"negatives": cfg.negatives, "decoder": cfg.decoder}
                                        if cfg.task == "link" else {})},
        "preprocessing": inputs["preprocessing"], "feature_bytes": inputs["feature_bytes"],
        "systems": systems, "ratios": ratios,
        "bench_wall_s": time.perf_counter() - t_start,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not result["cgroup"]:
        result["note"] = "no memory cgroup could be made: speed-ups are not reported as capped figures"
    if not cfg.keep:
        shutil.rmtree(cfg.workdir, ignore_errors=True)
    result["disk_used_delta_bytes"] = shutil.disk_usage(cfg.workdir.parent if cfg.workdir.parent.exists()
                                                        else ".").used - usage_before
    return result
