"""A model of time, disk and memory per pipeline step for graphs larger than this machine can hold.

``python -m diskgnn.bench.scaling_model --result bench/results/scale-l-<date>.json`` reads the
per-step rates one run of :mod:`diskgnn.bench.scale` measured (``rates`` and the steps'
manifests) and projects them to ogbn-papers100M and IGB-full (or any graph given by flags) on
one machine and on N machines with sharded sampling and packing. ``docs/SCALING.md`` explains
the model and what the design does where it says the bottleneck moves.

The model is deliberately simple and every term comes from one measured rate:

- sample: the CPU work grows with the sampled edges (edges per second measured with the
  topology in RAM); with the topology on disk every pass of the disk sampler reads the whole
  CSR, and the number of passes grows with the sampled work per memory budget (passes per
  byte of frontier measured at the run's scale). N machines split the seeds: the CPU term and
  the passes divide, each pass still reads the whole topology.
- pack: one sequential read of ``features.bin`` plus the packed bytes written, at the disk
  bandwidths probed in the run, times the measured ratio of the pack's wall time to that
  floor. The packed bytes are the batches' uncached input rows (rows per seed and the host
  tier's hit rate measured in the run). Where they would not fit the disk, the layout becomes
  segments with a disk budget (bytes read then grow, see ``docs/SCALING.md``). N machines
  each read ``features.bin`` once and write their share.
- train: an epoch is bounded by its slowest stage: the packed bytes of the train part at the
  loader's measured read rate, the rows at the measured assembly rate, the batches at the
  measured step time scaled by the feature width (the first layer's matmul dominates).
  N machines (DDP) divide all three.

The per-seed expansion (input rows and sampled edges per seed) is taken from the measured
run, so the projection assumes the target graph's fanout expansion is alike (papers100M's mean
degree is 29 and scale ``l``'s 36, both far above the fanouts); the output says so.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

GiB = 1 << 30


@dataclass(frozen=True)
class Graph:
    """The size of a graph the model projects to."""
    name: str
    nodes: int
    edges: int  # stored (directed) edges of the CSR
    feat_dim: int
    feat_bytes: int  # bytes per feature value
    seed_fraction: float  # train + val + test nodes (all are sampled and packed)
    train_fraction: float

    @property
    def feature_bytes(self) -> int:
        return self.nodes * self.feat_dim * self.feat_bytes

    @property
    def topology_bytes(self) -> int:
        idx = 4 if self.nodes < 2**31 - 1 else 8
        return (self.nodes + 1) * 8 + self.edges * idx


GRAPHS = {
    # 111M nodes, 1.6B edges stored in both directions (3.2B in the CSR), 128-d fp32 (57 GB);
    # 1.2M train, 125k val, 214k test nodes (the OGB split).
    "papers100M": Graph("ogbn-papers100M", 111_059_956, 3_231_371_744, 128, 4,
                        (1_207_179 + 125_265 + 214_338) / 111_059_956, 1_207_179 / 111_059_956),
    # 269M nodes, 4.0B edges, 1024-d fp32 (about 1.1 TB). The split is an input of the model:
    # 1% train and 0.2% each for val and test here, as at scale l (IGB labels far more nodes;
    # --train-fraction projects a larger split).
    "igb-full": Graph("IGB-full", 269_346_174, 3_995_777_033, 1024, 4, 0.014, 0.01),
}


@dataclass(frozen=True)
class Rates:
    """What one scale run measured (see :func:`rates_from_result`)."""
    source: str
    seeds: int  # nodes sampled (all parts) in the run
    train_seeds: int
    sampled_edges_per_seed: float
    input_rows_per_seed: float
    sample_cpu_edges_per_s: float  # topology in RAM
    sample_disk_edges_per_s: float  # topology on disk, under the cap
    topology_passes: float  # of the disk sampler in the run
    sample_memory_budget: int
    samples_bytes_per_edge: float
    host_hit_rate: float  # share of input rows the host tier served
    host_tier_fraction: float
    seq_read_bps: float
    seq_write_bps: float
    pack_floor_ratio: float  # pack wall time / (read + write floor)
    train_read_bps: float
    rows_assembled_per_s: float
    step_s_per_row_dim: float  # compute seconds per input row per feature value
    batch_size: int
    feat_dim: int


def _step(result: dict, name: str) -> dict:
    for s in result.get("steps", []):
        if s["step"] == name:
            return s
    raise ValueError(f"the scale result has no step {name!r} (did the run fail? failed_step="
                     f"{result.get('failed_step')!r}); rerun python -m diskgnn.bench.scale")


def rates_from_result(result: dict, source: str = "") -> Rates:
    """The model's inputs from a ``bench/results/scale-*.json`` of a complete run."""
    d, cfg, disk, r = result["dataset"], result["config"], result.get("disk") or {}, result.get("rates") or {}
    nodes = d["nodes"]
    from diskgnn.synth import scale_config
    synth = scale_config(result["scale"], **(cfg.get("overrides") or {}))
    fractions = {k: getattr(synth, k) for k in ("train_fraction", "val_fraction", "test_fraction")}
    seeds = sum(round(nodes * f) for f in fractions.values()) or None
    sample = _step(result, "sample")
    sstats = sample.get("manifest_stats") or {}
    pack = _step(result, "pack")
    pstats = pack.get("manifest_stats") or {}
    if not seeds:
        raise ValueError("the scale result's graph has no seeds in its splits")
    edges = sstats["sampled_edges"]
    row = d["feat_dim"] * (2 if d["feat_dtype"] in ("fp16", "bf16") else 4)
    read_s = pstats["bytes_read"] / disk["seq_read_GBps"] / 1e9
    write_s = pstats["bytes_written"] / disk["seq_write_GBps"] / 1e9
    ram = next((s for s in result["steps"] if s["step"] == "sample-in-memory"), None)
    cpu_rate = (ram["manifest_stats"]["sampled_edges"] / ram["wall_s"]) if ram and ram.get("manifest_stats") \
        else r["sample_disk_edges_per_s"]
    epochs = [e for e in result.get("train_epochs", []) if e.get("event") == "epoch"]
    last = epochs[-1]
    stages = last["stages"]
    rows_per_batch = pstats["accesses"] / seeds * cfg_batch(cfg)
    step_s = stages["compute"]["busy_s"] / last["batches"]
    return Rates(
        source=source, seeds=seeds, train_seeds=round(nodes * fractions["train_fraction"]),
        sampled_edges_per_seed=edges / seeds, input_rows_per_seed=pstats["accesses"] / seeds,
        sample_cpu_edges_per_s=cpu_rate, sample_disk_edges_per_s=edges / sample["wall_s"],
        topology_passes=max(r.get("sample_disk_topology_passes") or 1.0, 1.0),
        sample_memory_budget=int(sample.get("budget_bytes") or result["memory_cap_bytes"] // 2),
        samples_bytes_per_edge=sample["output_bytes"] / edges,
        host_hit_rate=float(pstats.get("cache_hit_rate") or 0.0),
        host_tier_fraction=_fraction(cfg.get("host_cache", "10%")),
        seq_read_bps=disk["seq_read_GBps"] * 1e9, seq_write_bps=disk["seq_write_GBps"] * 1e9,
        pack_floor_ratio=pack["wall_s"] / (read_s + write_s),
        # the read stage's busy time leaves out waits on the disk: never above the probed sequential rate
        train_read_bps=min(last["bytes_read"] / stages["read"]["busy_s"], disk["seq_read_GBps"] * 1e9)
        if stages.get("read", {}).get("busy_s") else disk["seq_read_GBps"] * 1e9,
        rows_assembled_per_s=last["bytes_useful"] / row / stages["assemble"]["busy_s"],
        step_s_per_row_dim=step_s / (rows_per_batch * d["feat_dim"]),
        batch_size=cfg_batch(cfg), feat_dim=d["feat_dim"])


def cfg_batch(cfg: dict) -> int:
    return int(cfg.get("batch_size") or 1024)


def _fraction(text: str) -> float:
    text = str(text).strip()
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


@dataclass(frozen=True)
class Machine:
    """One machine of the projection (each of N alike)."""
    memory_bytes: int = 64 * GiB
    disk_bytes: int = 4 << 40
    step_memory_share: float = 0.5  # a step's default memory budget
    host_tier_share: float = 0.5  # the most of its memory a machine gives the host tier


def project(graph: Graph, rates: Rates, machine: Machine = Machine(), machines: int = 1) -> dict:
    """Time, disk and memory per step for ``graph`` on ``machines`` machines like ``machine``."""
    if machines < 1:
        raise ValueError("machines must be at least 1")
    seeds = graph.nodes * graph.seed_fraction
    train = graph.nodes * graph.train_fraction
    row = graph.feat_dim * graph.feat_bytes
    budget = machine.memory_bytes * machine.step_memory_share
    out: dict = {"graph": asdict(graph), "machines": machines, "machine": asdict(machine),
                 "feature_bytes": graph.feature_bytes, "topology_bytes": graph.topology_bytes}

    # sample: CPU work splits over the machines; each pass of the disk sampler reads the whole CSR
    edges = seeds * rates.sampled_edges_per_seed
    work_scale = edges / (rates.seeds * rates.sampled_edges_per_seed) / machines
    passes = max(1.0, rates.topology_passes * work_scale * rates.sample_memory_budget / budget)
    cpu_s = edges / machines / rates.sample_cpu_edges_per_s
    io_s = passes * graph.topology_bytes / rates.seq_read_bps
    in_ram = graph.topology_bytes <= budget
    sample_s = cpu_s if in_ram else max(cpu_s, io_s)
    samples_bytes = edges * rates.samples_bytes_per_edge
    out["sample"] = {"seconds": sample_s, "cpu_s": cpu_s, "topology_io_s": 0.0 if in_ram else io_s,
                     "topology_in_ram": in_ram, "passes": 1.0 if in_ram else passes, "sampled_edges": edges,
                     "disk_bytes": samples_bytes, "memory_bytes": budget,
                     "bound": "cpu" if in_ram or cpu_s >= io_s else "topology reads"}

    # pack: the uncached input rows are written in batch order (plain) unless the disk cannot hold them
    rows = seeds * rates.input_rows_per_seed
    # every machine holds a host tier of the hottest rows, at most host_tier_share of its memory; a smaller tier
    # than measured is assumed to hit in proportion to its size (a lower bound: the hottest rows come first)
    wanted = graph.feature_bytes * rates.host_tier_fraction
    host_tier = min(wanted, machine.memory_bytes * machine.host_tier_share)
    hit = rates.host_hit_rate * (host_tier / wanted if wanted else 0.0)
    plain = rows * (1 - hit) * row
    # each machine keeps features.bin and the topology, and its share of the samples and packed rows
    free = (machine.disk_bytes - graph.feature_bytes - graph.topology_bytes) * machines - samples_bytes
    layout, packed = ("plain", plain) if plain <= free * 0.95 else ("segments", max(free * 0.95, 0.0))
    feasible = packed >= min(graph.feature_bytes, plain) * 0.5  # a segment layout needs about the rows it holds
    read_s = graph.feature_bytes / rates.seq_read_bps
    write_s = packed / machines / rates.seq_write_bps
    plan_mem = rows / machines * 4 * 2 + graph.nodes * 10  # the plan's maps (in place) and per-node arrays
    out["pack"] = {"seconds": (read_s + write_s) * rates.pack_floor_ratio, "read_s": read_s, "write_s": write_s,
                   "layout": layout, "packed_bytes": packed, "plain_bytes": plain, "fits": feasible,
                   "input_rows": rows, "host_tier_bytes": host_tier, "host_tier_wanted_bytes": wanted,
                   "host_hit_rate": hit, "plan_memory_bytes": plan_mem,
                   "memory_bytes": min(budget, plan_mem + 512 * 2**20),
                   "bound": "features.bin read" if read_s >= write_s else "packed writes"}

    # train: the slowest of read, assemble and compute; DDP divides each
    train_share = train / seeds
    train_bytes = packed * train_share if layout == "plain" else packed  # segments: each read once per epoch
    batches = math.ceil(train / rates.batch_size)
    train_rows = train * rates.input_rows_per_seed
    stages = {"read": train_bytes / machines / rates.train_read_bps,
              "assemble": train_rows / machines / rates.rows_assembled_per_s,
              "compute": train_rows / machines * graph.feat_dim * rates.step_s_per_row_dim}
    slowest = max(stages, key=stages.get)
    out["train"] = {"epoch_s": stages[slowest], "stages_s": stages, "bound": slowest, "batches": batches,
                    "read_bytes": train_bytes, "memory_bytes": host_tier + 2 * GiB,
                    "host_tier_capped": host_tier < wanted}
    out["disk_bytes_per_machine"] = graph.feature_bytes + graph.topology_bytes + (samples_bytes + packed) / machines
    out["disk_fits"] = out["disk_bytes_per_machine"] <= machine.disk_bytes
    return out


def _h(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.0f} GB" if n >= 10e9 else f"{n / 1e9:.1f} GB"


def table(projections: list[dict]) -> str:
    """A markdown table of projections."""
    lines = ["| graph | machines | sample | pack (layout) | train epoch (bound) | disk per machine | "
             "pack plan memory | host tier per machine |",
             "|---|---:|---|---|---|---:|---:|---:|"]
    for p in projections:
        s, k, t, n = p["sample"], p["pack"], p["train"], p["machines"]
        lines.append(
            f"| {p['graph']['name']} | {n} | {_h(s['seconds'])} ({s['bound']}, {s['passes']:.1f} passes) | "
            f"{_h(k['seconds'])} ({k['layout']}, {_gb(k['packed_bytes'])}) | "
            f"{_h(t['epoch_s'])} ({t['bound']}) | {_gb(p['disk_bytes_per_machine'])} | "
            f"{_gb(k['plan_memory_bytes'])} | {_gb(k['host_tier_bytes'])}"
            f"{' (capped: hit ' + format(k['host_hit_rate'], '.0%') + ')' if t['host_tier_capped'] else ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.scaling_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--result", required=True, type=Path, help="a complete bench/results/scale-*.json")
    p.add_argument("--graph", action="append", choices=sorted(GRAPHS), help="graphs to project (default: all)")
    p.add_argument("--machines", default="1,4,16", help="comma-separated machine counts (default 1,4,16)")
    p.add_argument("--memory", type=float, default=64, help="GiB of memory per machine (default 64)")
    p.add_argument("--disk", type=float, default=4, help="TiB of disk per machine (default 4)")
    p.add_argument("--train-fraction", type=float, default=None,
                   help="override the graphs' train fraction (val and test add 0.4 of it)")
    p.add_argument("--json", type=Path, default=None, help="also write the projections here")
    args = p.parse_args(argv)
    result = json.loads(args.result.read_text())
    rates = rates_from_result(result, source=str(args.result))
    machine = Machine(memory_bytes=int(args.memory * GiB), disk_bytes=int(args.disk * (1 << 40)))
    projections = []
    for name in args.graph or sorted(GRAPHS):
        g = GRAPHS[name]
        if args.train_fraction is not None:
            g = replace(g, train_fraction=args.train_fraction, seed_fraction=args.train_fraction * 1.4)
        for n in (int(x) for x in args.machines.split(",")):
            projections.append(project(g, rates, machine, n))
    print(f"rates from {args.result} ({result.get('date')}, scale {result.get('scale')}):")
    for k, v in asdict(rates).items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    print()
    print(table(projections))
    if args.json:
        args.json.write_text(json.dumps({"rates": asdict(rates), "projections": projections}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
