"""The whole pipeline at one scale, each step in its own memory cgroup: ``python -m diskgnn.bench.scale --scale l``.

Steps, each a ``diskgnn`` command run in a fresh memory cgroup of ``--cap`` bytes
after the page cache was dropped: ``synth``, ``verify`` of the dataset, ``sample
--mmap-topology yes`` (the CSR stays on disk), the same sampling with the
topology in RAM and no cap (for the ratio the issue asks for; the two outputs
must be identical), ``verify`` of the samples, ``pack`` with a host tier,
``verify`` of the packed directory, ``train`` (SAGE) and, with ``--kill``,
``synth`` and ``pack`` killed (SIGKILL) midway and run again: the resumed
outputs must equal the uninterrupted ones (their manifests' checksums, so the
reference need not be kept on disk).

Per step it records the wall and CPU time, peak RSS (the kernel's high-water
mark and, sampled every 20 ms, its anonymous and file-mapped parts), the bytes
the process read from and wrote to disk (``/proc/self/io``), the cgroup's own
peak, and the memory budget the step planned for; then the per-step rates the
scaling model (``docs/SCALING.md``, :mod:`diskgnn.bench.scaling_model`) takes as
inputs. The result goes to ``bench/results/scale-<scale>-<date>.json`` and one
row of the README's scale table. The work directory is removed afterwards
(disk usage before and after is recorded).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STEP_WRAP = "--step-wrap"
RECORD_PREFIX = '{"scale_step":'
VOLATILE_KEYS = ("created", "stats")
README_BEGIN = "<!-- scale-results:begin -->"
README_END = "<!-- scale-results:end -->"


# --- inside a step: run the command, measure this process ----------------------------------------

def _proc_fields(path: str, keys: tuple[str, ...]) -> dict:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _step_wrap(argv: list[str]) -> int:
    """Run ``diskgnn ARGV`` here; print one JSON record of this process's peaks, I/O and CPU on stderr."""
    from diskgnn.memory import resolve_memory_budget
    from diskgnn.tools.cli import main as cli_main
    budget = resolve_memory_budget(None)  # what a step without --memory-budget plans from (inside the cgroup)
    peaks: dict = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for k, v in _proc_fields("/proc/self/status", ("RssAnon", "RssFile", "RssShmem")).items():
                peaks[k] = max(peaks.get(k, 0), v * 1024)
            stop.wait(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        rc = cli_main(argv)
    finally:
        stop.set()
        watcher.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    io = _proc_fields("/proc/self/io", ("rchar", "wchar", "read_bytes", "write_bytes"))
    record = {"rc": rc, "seconds": round(time.perf_counter() - t0, 3), "peak_rss_bytes": usage.ru_maxrss * 1024,
              "peak_anon_bytes": peaks.get("RssAnon"), "peak_file_bytes": peaks.get("RssFile"),
              "cpu_user_s": round(usage.ru_utime, 2), "cpu_sys_s": round(usage.ru_stime, 2),
              "read_bytes": io.get("read_bytes"), "write_bytes": io.get("write_bytes"),
              "rchar": io.get("rchar"), "wchar": io.get("wchar"), "available_budget_bytes": budget}
    print(RECORD_PREFIX + json.dumps(record) + "}", file=sys.stderr, flush=True)
    return rc


def step_command(*cli_args) -> list[str]:
    """The command that runs ``diskgnn CLI_ARGS -q`` measured by :func:`_step_wrap`."""
    return [sys.executable, "-m", "diskgnn.bench.scale", STEP_WRAP, *map(str, cli_args), "-q"]


def _parse_record(stderr: str) -> dict:
    for line in reversed(stderr.splitlines()):
        if line.startswith(RECORD_PREFIX):
            return json.loads(line)["scale_step"]
    return {}


# --- the run --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleConfig:
    """What one ``python -m diskgnn.bench.scale`` run does."""
    scale: str = "l"
    overrides: dict = field(default_factory=dict)
    """Synth flags replacing the scale's (``nodes``, ``avg_degree``, ``dim``, ``dtype``, ``classes``, fractions)."""
    cap: int = 4 << 30
    """Memory cgroup limit of every step but the in-memory sampling reference."""
    workdir: Path = Path("bench/work/scale")
    results: Path = Path("bench/results")
    readme: Path | None = Path("README.md")
    fanouts: str = "10,15"
    batch_size: int = 1024
    host_cache: str = "10%"
    epochs: int = 2
    model: str = "sage"
    threads: int | None = None
    kill: bool = False
    """Also kill synth and pack midway, run them again and compare with the uninterrupted outputs."""
    kill_at: float = 0.5
    """Kill after this share of the uninterrupted step's time (once it journaled its progress)."""
    in_memory_reference: bool = True
    """Also sample with the topology in RAM, uncapped (needs the topology's size in free memory)."""
    disk_probe: str = "1G"
    """Size of the disk probe file (0: no probe)."""
    chunk_nodes: int | None = None
    """synth ``--chunk-nodes`` (journal after this many nodes; small test runs use small chunks to be killed in)."""
    pack_stream_block: str | None = None
    """Pack with ``--write-mode stream --order-block`` this size (small test runs: blocks to journal between;
    by default pack picks both, streaming at scale)."""
    timeout_s: float = 6 * 3600
    keep: bool = False
    from_samples: str | None = None
    """Start at pack from this samples directory (and the dataset it names), kept from an earlier run of this
    script: synth, sampling and their checks are not run again, and neither directory is removed."""
    from_dataset: str | None = None
    """With ``from_samples``: the dataset (default: the directory the samples name)."""
    command: str = ""


def _dataset_facts(dataset, path: Path) -> dict:
    return {"nodes": dataset.num_nodes, "edges": dataset.num_edges, "feat_dim": dataset.feat_dim,
            "feat_dtype": dataset.feat_dtype, "feature_bytes": dataset.feature_bytes,
            "topology_bytes": dataset.specs["indptr"].nbytes + dataset.specs["indices"].nbytes,
            "disk_bytes": _dir_bytes(path), "indices_dtype": dataset.specs["indices"].dtype}


def _synth_flags(cfg: ScaleConfig) -> list[str]:
    flags = ["--scale", cfg.scale]
    for key, value in sorted(cfg.overrides.items()):
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _normalized_manifest(directory: Path) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {k: v for k, v in manifest.items() if k not in VOLATILE_KEYS}


def _first_difference(a, b, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}/{k}: only in one"
            d = _first_difference(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


class ScaleRun:
    """One run of the pipeline; :meth:`run` returns the result dict (also on a failed step)."""

    def __init__(self, cfg: ScaleConfig):
        self.cfg = cfg
        self.work = Path(cfg.workdir)
        self.steps: list[dict] = []
        self.peak_disk = 0

    # -- one step ----------------------------------------------------------------------------------
    def _budget_of(self, name: str, record: dict, cap: int | None) -> int | None:
        """The memory budget the step planned for: the default of each command, taken inside its cgroup."""
        from diskgnn.packing import MEMORY_SHARE
        available = record.get("available_budget_bytes")
        if name.startswith("pack") and available:
            return int(available * MEMORY_SHARE)
        if name.startswith(("sample", "train")) and available:
            return int(available) if cap else None
        return cap  # synth and verify take no budget: the cap is theirs

    def step(self, name: str, cli_args: list, *, cap: int | None, out: Path | None = None) -> dict:
        from diskgnn.cgroup import run_capped
        log.info("scale step %s: diskgnn %s", name, " ".join(map(str, cli_args)))
        r = run_capped(step_command(*cli_args), cap, timeout=self.cfg.timeout_s)
        record = _parse_record(r.stderr)
        budget = self._budget_of(name, record, cap)
        row = {"step": name, "command": "diskgnn " + " ".join(map(str, cli_args)), "returncode": r.returncode,
               "wall_s": round(r.wall_s, 2), "cap_bytes": cap, "cgroup": r.cgroup, "oom_killed": r.oom_killed,
               "cgroup_peak_bytes": r.peak_bytes, "budget_bytes": budget, **record}
        peak = record.get("peak_rss_bytes")
        row["within_budget_plus_10pct"] = bool(peak is not None and budget is not None and r.returncode == 0
                                               and peak <= 1.1 * budget)
        if r.returncode != 0:
            row["stderr_tail"] = r.stderr[-3000:]
        if out is not None:
            row["output_bytes"] = _dir_bytes(out)
            try:
                row["manifest_stats"] = json.loads((out / "manifest.json").read_text()).get("stats")
            except (OSError, ValueError):
                pass
        self.peak_disk = max(self.peak_disk, _dir_bytes(self.work))
        self.steps.append(row)
        log.info("scale step %s: rc %s, %.1f s, peak RSS %s (anon %s, file %s), read %s, written %s", name,
                 r.returncode, r.wall_s, peak, record.get("peak_anon_bytes"), record.get("peak_file_bytes"),
                 record.get("read_bytes"), record.get("write_bytes"))
        if r.returncode != 0:
            raise StepFailed(name, r.stderr[-2000:])
        return row

    def killed_step(self, name: str, cli_args: list, out: Path, reference: dict, *, cap: int) -> dict:
        """Run ``cli_args`` in a cgroup, SIGKILL it after ``kill_at`` of ``reference``'s time once ``out`` holds a
        journal, run it again to the end, and compare the output's manifest with ``reference``'s."""
        from diskgnn.cgroup import MemoryCgroup, CgroupError, drop_page_cache
        from diskgnn.manifest import RESUME_JOURNAL
        drop_page_cache()
        group = None
        try:
            group = MemoryCgroup(cap).create()
        except CgroupError as exc:
            log.warning("%s; killing %s without a cap", exc, name)
        procs = str(group.procs_file()) if group else None

        def enter():
            if procs:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))

        t0 = time.perf_counter()
        proc = subprocess.Popen(step_command(*cli_args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=enter if procs else None)
        kill_after = self.cfg.kill_at * reference["wall_s"]
        killed = False
        try:
            while proc.poll() is None:
                elapsed = time.perf_counter() - t0
                if elapsed >= kill_after and (out / RESUME_JOURNAL).exists():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed = True
                    break
                if elapsed > self.cfg.timeout_s:
                    proc.kill()
                    proc.wait()
                    raise StepFailed(name, f"ran longer than {self.cfg.timeout_s} s before the kill")
                time.sleep(0.005)
        finally:
            if group is not None:
                group.remove()
        killed_at = round(time.perf_counter() - t0, 2)
        journal = None
        if killed:
            try:
                journal = json.loads((out / RESUME_JOURNAL).read_text()).get("state")
            except (OSError, ValueError):
                journal = None
            row = self.step(f"{name}-rerun", cli_args, cap=cap, out=out)
        else:  # it finished before a journal and the kill time met: nothing to resume, still compared
            log.warning("%s finished before it could be killed (%.1f s)", name, killed_at)
            if proc.returncode != 0:
                raise StepFailed(name, f"exit {proc.returncode} before the kill")
            row = {"wall_s": None}
        got = _normalized_manifest(out)
        difference = _first_difference(reference["manifest"], got)
        stats = json.loads((out / "manifest.json").read_text()).get("stats") or {}
        resumed = stats.get("resumed_from_node", stats.get("resumed_from_block"))
        result = {"step": name, "killed": killed, "killed_after_s": killed_at, "journal_at_kill": journal,
                  "rerun_s": row["wall_s"], "resumed_from": resumed,
                  "identical": difference is None, "difference": difference}
        log.info("kill %s after %.1f s (journal %s): rerun resumed from %s, identical %s", name, killed_at, journal,
                 resumed, difference is None)
        return result

    # -- the pipeline ------------------------------------------------------------------------------
    def run(self) -> dict:
        from diskgnn.bench.harness import git_commit, machine_facts
        cfg = self.cfg
        self.work.mkdir(parents=True, exist_ok=True)
        before = _dir_bytes(self.work)
        result: dict = {"kind": "scale", "scale": cfg.scale, "commit": git_commit(),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "memory_cap_bytes": cfg.cap,
                        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                        "command": cfg.command, "machine": machine_facts(self.work),
                        "load_average_start": os.getloadavg(), "workdir_bytes_before": before}
        t_start = time.perf_counter()
        try:
            if cfg.disk_probe and cfg.disk_probe != "0":
                from diskgnn.bench.io import disk_limits
                from diskgnn.sizes import parse_size
                result["disk"] = disk_limits(self.work / "probe", size=parse_size(cfg.disk_probe),
                                             random_seconds=1.0)
                shutil.rmtree(self.work / "probe", ignore_errors=True)
            self._pipeline(result)
        except StepFailed as exc:
            result["failed_step"] = exc.step
            result["error"] = exc.detail
            log.error("step %s failed: %s", exc.step, exc.detail[-1000:])
        finally:
            result["steps"] = self.steps
            result["peak_disk_bytes"] = self.peak_disk
            result["total_s"] = round(time.perf_counter() - t_start, 1)
            result["load_average_end"] = os.getloadavg()
            if not cfg.keep:
                for entry in ("dataset", "samples", "samples-ram", "packed", "metrics.jsonl"):
                    p = self.work / entry
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
                try:
                    self.work.rmdir()  # only when nothing else is left in it
                except OSError:
                    pass
            result["workdir_bytes_after"] = _dir_bytes(self.work)
        result["checks"] = checks(result)
        result["rates"] = rates(result)
        result["systems"] = _systems(result)
        return result

    def _pipeline(self, result: dict) -> None:
        cfg = self.cfg
        w = self.work
        ds, smp, ram, pk = w / "dataset", w / "samples", w / "samples-ram", w / "packed"
        for leftover in (ds, smp, ram, pk):  # what an earlier, interrupted run of this script left
            shutil.rmtree(leftover, ignore_errors=True)
        if cfg.from_samples:
            from diskgnn.sampling import Samples
            smp = Path(cfg.from_samples)
            ds = Path(cfg.from_dataset) if cfg.from_dataset else Samples.open(smp).dataset_path
            result["reused"] = {"samples": str(smp), "dataset": str(ds)}
        else:
            self._up_to_samples(result, ds, smp, ram)
        self._from_pack(result, ds, smp, pk)

    def _up_to_samples(self, result: dict, ds: Path, smp: Path, ram: Path) -> None:
        cfg = self.cfg
        threads = ["--threads", str(cfg.threads)] if cfg.threads else []
        # no --overwrite: a rerun after a kill must find the killed run's journal
        synth_args = ["synth", *_synth_flags(cfg), "--out", ds,
                      *(["--chunk-nodes", cfg.chunk_nodes] if cfg.chunk_nodes else [])]
        synth = self.step("synth", synth_args, cap=cfg.cap, out=ds)
        synth_reference = {"wall_s": synth["wall_s"], "manifest": _normalized_manifest(ds)}
        from diskgnn.dataset import Dataset
        dataset = Dataset.open(ds)
        result["dataset"] = _dataset_facts(dataset, ds)
        self.step("verify-dataset", ["verify", ds], cap=cfg.cap)
        sample_args = ["sample", ds, "--fanouts", cfg.fanouts, "--batch-size", cfg.batch_size, *threads]
        self.step("sample", [*sample_args, "--out", smp, "--mmap-topology", "yes"], cap=cfg.cap, out=smp)
        if cfg.in_memory_reference:
            self.step("sample-in-memory", [*sample_args, "--out", ram, "--mmap-topology", "no"], cap=None, out=ram)
            from diskgnn.sampling import Samples
            a, b = Samples.open(smp), Samples.open(ram)
            result["samples_identical"] = a.fingerprint == b.fingerprint
            shutil.rmtree(ram)
        self.step("verify-samples", ["verify", smp], cap=cfg.cap)
        self._synth_args = synth_args
        self._synth_reference = synth_reference

    def _from_pack(self, result: dict, ds: Path, smp: Path, pk: Path) -> None:
        cfg = self.cfg
        w = self.work
        threads = ["--threads", str(cfg.threads)] if cfg.threads else []
        from diskgnn.dataset import Dataset
        dataset = Dataset.open(ds)
        result.setdefault("dataset", _dataset_facts(dataset, ds))
        # journaled often enough that a kill midway has something to resume from, at any scale
        journal_every = max(dataset.feature_bytes // 8, 4096)
        pack_args = ["pack", smp, "--out", pk, "--host-cache", cfg.host_cache, "--journal-every", journal_every,
                     *(["--dataset", ds] if cfg.from_samples else []),
                     *(["--write-mode", "stream", "--order-block", cfg.pack_stream_block]
                       if cfg.pack_stream_block else [])]
        pack = self.step("pack", pack_args, cap=cfg.cap, out=pk)
        pack_reference = {"wall_s": pack["wall_s"], "manifest": _normalized_manifest(pk)}
        self.step("verify-packed", ["verify", pk], cap=cfg.cap)
        metrics = w / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        self.step("train", ["train", pk, "--model", cfg.model, "--epochs", cfg.epochs, "--device", "cpu",
                            "--metrics", metrics, *threads], cap=cfg.cap)
        result["train_epochs"] = _epoch_records(metrics)
        if not cfg.kill:
            return
        kills = result["kills"] = []
        shutil.rmtree(pk)
        kills.append(self.killed_step("pack", pack_args, pk, pack_reference, cap=cfg.cap))
        if cfg.from_samples:  # the kept directories stay; there is no synth reference to compare with
            shutil.rmtree(pk)
            return
        for p in (pk, smp):
            shutil.rmtree(p)
        shutil.rmtree(ds)  # the dataset is made again, killed midway, then compared by its manifest
        kills.append(self.killed_step("synth", self._synth_args, ds, self._synth_reference, cap=cfg.cap))


class StepFailed(Exception):
    def __init__(self, step: str, detail: str):
        super().__init__(f"{step}: {detail}")
        self.step, self.detail = step, detail


def _epoch_records(metrics: Path) -> list[dict]:
    keep = ("event", "epoch", "epoch_time_s", "batches", "stages", "bytes_read", "bytes_useful", "hit_rate",
            "peak_rss_bytes", "loss", "val_acc", "test_acc", "read_amplification", "batches_per_s", "eval_time_s")
    out = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            out.append({k: rec[k] for k in keep if k in rec})
    return out


# --- what the run shows ----------------------------------------------------------------------------

def _step(result: dict, name: str) -> dict | None:
    return next((s for s in result.get("steps", []) if s["step"] == name), None)


def checks(result: dict) -> dict:
    """The issue's figures for this run: each one True, False or None (not measured)."""
    out: dict = {}
    steps = result.get("steps", [])
    capped = [s for s in steps if s.get("cap_bytes")]
    out["every_step_ok"] = bool(steps) and all(s["returncode"] == 0 for s in steps) and "failed_step" not in result
    out["every_capped_step_within_budget_plus_10pct"] = bool(capped) and all(
        s["within_budget_plus_10pct"] for s in capped)
    checked = ("verify-packed",) if result.get("reused") else ("verify-dataset", "verify-samples", "verify-packed")
    out["verify_passed"] = all(_step(result, n) is not None and _step(result, n)["returncode"] == 0
                               for n in checked)
    sample, ram = _step(result, "sample"), _step(result, "sample-in-memory")
    out["sample_mmap_vs_in_memory"] = round(sample["wall_s"] / ram["wall_s"], 3) if sample and ram else None
    out["sample_within_3x"] = None if out["sample_mmap_vs_in_memory"] is None \
        else out["sample_mmap_vs_in_memory"] <= 3.0
    out["samples_identical"] = result.get("samples_identical")
    synth = _step(result, "synth")
    out["synth_s"] = synth["wall_s"] if synth else None
    out["synth_within_30_min"] = None if synth is None else synth["wall_s"] <= 1800
    epochs = [e for e in result.get("train_epochs", []) if e.get("event") == "epoch" and e.get("stages")]
    if epochs:
        ratios = [e["epoch_time_s"] / max(max(s["busy_s"] for s in e["stages"].values()), 1e-9) for e in epochs]
        out["epoch_vs_slowest_stage"] = [round(r, 3) for r in ratios]
        out["epoch_within_1_25x_of_slowest_stage"] = min(ratios) <= 1.25
    kills = result.get("kills")
    if kills is not None:
        out["kills_identical"] = all(k["identical"] for k in kills) and bool(kills)
        out["kills_resumed"] = all(k["killed"] and k["resumed_from"] for k in kills) and bool(kills)
    out["workdir_cleaned"] = result.get("workdir_bytes_after") == result.get("workdir_bytes_before") \
        or result.get("config", {}).get("keep")
    return out


def rates(result: dict) -> dict:
    """Per-step rates measured in this run: the inputs of the scaling model (:mod:`diskgnn.bench.scaling_model`)."""
    d = result.get("dataset") or {}
    out: dict = {}
    synth = _step(result, "synth")
    if synth and d:
        out["synth_nodes_per_s"] = d["nodes"] / synth["wall_s"]
        out["synth_edges_per_s"] = d["edges"] / synth["wall_s"]
        out["synth_bytes_per_s"] = d["disk_bytes"] / synth["wall_s"]
    for name in ("verify-dataset", "verify-samples", "verify-packed"):
        s = _step(result, name)
        if s and s.get("rchar"):
            out[f"{name}_bytes_per_s"] = s["rchar"] / s["wall_s"]
    for name in ("sample", "sample-in-memory"):
        s = _step(result, name)
        stats = (s or {}).get("manifest_stats") or {}
        if stats.get("sampled_edges"):
            key = "sample_disk" if name == "sample" else "sample_ram"
            out[f"{key}_edges_per_s"] = stats["sampled_edges"] / s["wall_s"]
            out[f"{key}_sampled_edges"] = stats["sampled_edges"]
            reads = stats.get("topology_reads") or {}
            if reads.get("bytes_read"):
                out["sample_disk_topology_bytes_read"] = reads["bytes_read"]
                out["sample_disk_topology_passes"] = reads["bytes_read"] / max(d.get("topology_bytes", 1), 1)
                out["sample_disk_groups"] = reads.get("groups")
            out[f"{key}_output_bytes"] = s.get("output_bytes")
    pack = _step(result, "pack")
    stats = (pack or {}).get("manifest_stats") or {}
    if stats:
        out["pack_read_bytes"] = stats.get("bytes_read")
        out["pack_written_bytes"] = stats.get("bytes_written")
        out["pack_s"] = pack["wall_s"]
        out["pack_io_s"] = stats.get("io_seconds")
        out["pack_bytes_per_s"] = (stats.get("bytes_read", 0) + stats.get("bytes_written", 0)) / pack["wall_s"]
        out["pack_footprint_x"] = stats.get("footprint")
        out["pack_plan_s"] = stats.get("plan_seconds")
        out["cache_hit_rate"] = stats.get("cache_hit_rate")
    epochs = [e for e in result.get("train_epochs", []) if e.get("event") == "epoch"]
    if epochs:
        last = epochs[-1]
        out["train_epoch_s"] = last["epoch_time_s"]
        out["train_batches"] = last.get("batches")
        stages = last.get("stages") or {}
        for name, s in stages.items():
            out[f"train_stage_{name}_busy_s"] = s.get("busy_s")
        if last.get("batches"):
            compute = (stages.get("compute") or {}).get("busy_s")
            if compute:
                out["train_step_s"] = compute / last["batches"]
        read = (stages.get("read") or {}).get("busy_s")
        if read and last.get("bytes_read"):
            out["train_read_bytes_per_s"] = last["bytes_read"] / read
        assemble = (stages.get("assemble") or {}).get("busy_s")
        useful = last.get("bytes_useful")
        if assemble and useful and d.get("feat_dim"):
            row = d["feat_dim"] * (2 if d.get("feat_dtype") in ("fp16", "bf16") else 4)
            out["train_rows_assembled_per_s"] = useful / row / assemble
    return out


def _systems(result: dict) -> list:
    """The training run as a BENCH.md system entry (``diskgnn-<tier>``, kind ``train``)."""
    epochs = [e for e in result.get("train_epochs", []) if e.get("event") == "epoch"]
    if not epochs:
        return []
    train = _step(result, "train") or {}
    last = epochs[-1]
    tier = result.get("config", {}).get("host_cache", "10%")
    times = [e["epoch_time_s"] for e in epochs]
    return [{"name": f"diskgnn-{tier}", "kind": "train", "epoch_time_s": sorted(times)[len(times) // 2],
             "epoch_times_s": times, "bytes_read": last.get("bytes_read"), "bytes_useful": last.get("bytes_useful"),
             "read_amplification": last.get("read_amplification"), "peak_rss_bytes": train.get("peak_rss_bytes"),
             "stages": last.get("stages"), "hit_rate": last.get("hit_rate"), "test_acc": last.get("test_acc")}]


# --- outputs ---------------------------------------------------------------------------------------

def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _gb(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def readme_row(result: dict, path: Path) -> str:
    """One markdown row: the run's size, every step's time and peak RSS, the issue's figures."""
    d = result.get("dataset") or {}
    c = result.get("checks") or {}
    cells = []
    for name in ("synth", "sample", "sample-in-memory", "pack", "train", "verify-dataset", "verify-samples",
                 "verify-packed"):
        s = _step(result, name)
        cells.append("-" if s is None else f"{s['wall_s']:.0f} s / {_gb(s.get('peak_rss_bytes'))}")
    kills = result.get("kills")
    kill = "-" if kills is None else ", ".join(
        f"{k['step']} {'identical' if k['identical'] else 'DIFFERENT'}" for k in kills)
    size = f"{_count(d['nodes'])} nodes, {_count(d['edges'])} edges, {d['feat_dim']}-d {d['feat_dtype']}" if d else "-"
    status = "ok" if c.get("every_step_ok") else f"failed at {result.get('failed_step')}"
    ratio = c.get("sample_mmap_vs_in_memory")
    epoch = c.get("epoch_vs_slowest_stage")
    return (f"| {result['date'][:10]} | `{result['scale']}` {size} | {_gb(result.get('memory_cap_bytes'))} GiB | "
            + " | ".join(cells)
            + f" | {'-' if ratio is None else f'{ratio:.2f}x'} | {'-' if not epoch else f'{min(epoch):.2f}x'} | "
              f"{'yes' if c.get('every_capped_step_within_budget_plus_10pct') else 'NO'} | {kill} | {status} | "
              f"`{path.name}` |")


README_HEADER = ("| date | graph | cap | synth | sample (disk, capped) | sample (RAM, no cap) | pack | train | "
                 "verify dataset | verify samples | verify packed | sample disk/RAM | epoch / slowest stage | "
                 "peak RSS <= budget+10% | kill + resume | status | result |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def update_readme(readme: Path, row: str) -> None:
    """Add ``row`` to the README's scale table (made between its markers when missing)."""
    text = readme.read_text() if readme.exists() else ""
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        body, tail = rest.split(README_END, 1)
        lines = [line for line in body.strip().splitlines() if line.startswith("| 2") or line.startswith("| 1")]
        block = "\n".join([README_BEGIN, "", README_HEADER, *lines, row, "", README_END])
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Scale runs (`python -m diskgnn.bench.scale`)\n\nEach cell: wall time / peak " \
               "RSS (GiB) of the step, in its own memory cgroup.\n\n" + "\n".join(
                   [README_BEGIN, "", README_HEADER, row, "", README_END]) + "\n"
    readme.write_text(text)


def write_result(result: dict, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"scale-{result['scale']}-{result['date'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


# --- command line ----------------------------------------------------------------------------------

def parse_args(argv=None) -> tuple[ScaleConfig, argparse.Namespace]:
    from diskgnn.sizes import parse_size
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="l", choices=["tiny", "s", "m", "l"], help="named synth scale (default l)")
    for flag, kind in (("--nodes", int), ("--avg-degree", float), ("--dim", int), ("--classes", int),
                       ("--train-fraction", float), ("--val-fraction", float), ("--test-fraction", float),
                       ("--seed", int)):
        p.add_argument(flag, type=kind, default=None, help="overrides the scale's value")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    p.add_argument("--cap", default="4G", help="memory cgroup limit of each step (default 4G)")
    p.add_argument("--workdir", default="bench/work/scale", help="where the data goes (removed afterwards)")
    p.add_argument("--results", default="bench/results")
    p.add_argument("--readme", default="README.md", help="README to add a row to ('' for none)")
    p.add_argument("--fanouts", default="10,15")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--host-cache", default="10%")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", default="sage")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kill", action="store_true", help="also kill synth and pack midway and check the resumed outputs")
    p.add_argument("--no-in-memory", action="store_true", help="skip sampling with the topology in RAM (uncapped)")
    p.add_argument("--disk-probe", default="1G", help="size of the disk probe (0: none)")
    p.add_argument("--chunk-nodes", type=int, default=None, help="synth --chunk-nodes (small runs: more journals)")
    p.add_argument("--pack-stream-block", default=None,
                   help="pack with --write-mode stream --order-block SIZE (small runs: more journals)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--from-samples", default=None,
                   help="start at pack from this samples directory (and its dataset), kept from an earlier run: "
                        "synth and sampling are not run again, and neither directory is removed")
    p.add_argument("--from-dataset", default=None,
                   help="with --from-samples: the dataset (default: the directory the samples name)")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per step")
    p.add_argument(STEP_WRAP, nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("nodes", "avg_degree", "dim", "classes", "train_fraction",
                                               "val_fraction", "test_fraction", "seed", "dtype")}
    cfg = ScaleConfig(scale=args.scale, overrides={k: v for k, v in overrides.items() if v is not None},
                      cap=parse_size(args.cap), workdir=Path(args.workdir), results=Path(args.results),
                      readme=Path(args.readme) if args.readme else None, fanouts=args.fanouts,
                      batch_size=args.batch_size, host_cache=args.host_cache, epochs=args.epochs, model=args.model,
                      threads=args.threads, kill=args.kill, in_memory_reference=not args.no_in_memory,
                      disk_probe=args.disk_probe, timeout_s=args.timeout, keep=args.keep,
                      chunk_nodes=args.chunk_nodes, pack_stream_block=args.pack_stream_block,
                      from_samples=args.from_samples, from_dataset=args.from_dataset, command="python -m diskgnn.bench.scale " + " ".join(sys.argv[1:] if argv is None else argv))
    return cfg, args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [STEP_WRAP]:
        return _step_wrap(argv[1:])
    cfg, _ = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    result = ScaleRun(cfg).run()
    path = write_result(result, cfg.results)
    if cfg.readme is not None and cfg.readme.exists():
        update_readme(cfg.readme, readme_row(result, path))
    print(json.dumps({"result": str(path), "checks": result["checks"], "rates": result["rates"]}, indent=2,
                     default=str))
    return 0 if result["checks"].get("every_step_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
