"""``diskgnn bench``: dispatch to the io, loader/train, cache and report benchmarks."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from diskgnn.errors import ConfigError
from diskgnn.sizes import parse_size

log = logging.getLogger(__name__)


def bench_cli(args, progress) -> int:
    results = Path(args.results)
    if args.what == "io":
        from diskgnn.bench.io import disk_limits
        workdir = Path(args.file).parent if args.file else Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        out = disk_limits(workdir, size=parse_size(args.size, name="--size"), path=args.file)
        print(json.dumps(out, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2))
        return 0
    if args.what in ("loader", "train"):
        from diskgnn.bench.harness import BenchConfig, DEFAULT_CAPS, default_systems, run_bench
        from diskgnn.bench.report import markdown, write_outputs
        cap = parse_size(args.memory_cap, name="--memory-cap") if args.memory_cap else DEFAULT_CAPS[args.scale]
        task = getattr(args, "task", None) or "node"
        systems = (tuple(s.strip() for s in args.systems.split(",")) if args.systems
                   else default_systems(args.what, task))
        from diskgnn.bench.harness import WORKLOADS
        from diskgnn.sampling import parse_fanouts
        workload = WORKLOADS.get(args.workload or "sage-2layer")
        if workload is None:
            raise ConfigError(f"--workload must be one of {', '.join(sorted(WORKLOADS))}, got {args.workload!r}")
        fanouts = parse_fanouts(args.fanouts) if args.fanouts else workload["fanouts"]
        batch_size = args.batch_size if args.batch_size is not None else workload["batch_size"]
        cfg = BenchConfig(kind=args.what, scale=args.scale, workdir=Path(args.workdir), results=results,
                          memory_cap=cap, systems=systems, epochs=args.epochs, keep=args.keep,
                          slow_max_batches=args.slow_batches or 0, dataset=args.dataset, model=args.model,
                          fanouts=tuple(fanouts), batch_size=batch_size,
                          disk_budget=args.disk_budget, segment_memory=args.segment_memory, task=task,
                          negatives=getattr(args, "negatives", None) or 1,
                          decoder=getattr(args, "decoder", None) or "dot")
        result = run_bench(cfg, progress)
        result["command"] = "diskgnn " + " ".join(sys.argv[1:])
        path = write_outputs(result, results, Path(args.out) if args.out else None)
        print(markdown(result))
        print(f"results: {path}")
        return 0
    if args.what == "compute":
        from diskgnn.bench.compute import markdown, measure, write
        if not args.file:
            raise ConfigError("bench compute needs --file SAMPLES_DIR (a samples directory: `diskgnn sample` output)")
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        result = measure(args.file, models=models, batches=args.batches, threads=args.threads)
        result["command"] = "diskgnn " + " ".join(sys.argv[1:])
        path = write(result, results, Path(args.out) if args.out else None, tag=Path(args.file).name)
        print(markdown(result))
        print(f"results: {path}")
        return 0
    if args.what == "cache":
        from diskgnn.bench.cache import markdown_table, plot, policy_study, access_trace
        from diskgnn.sampling import Samples
        if not args.file:
            raise ConfigError("bench cache needs --file SAMPLES_DIR (a samples directory)")
        samples = Samples.open(args.file)
        study = policy_study(access_trace(samples), samples.num_nodes)
        results.mkdir(parents=True, exist_ok=True)
        path = Path(args.out) if args.out else results / "cache-policies.json"
        path.write_text(json.dumps(study, indent=2))
        plot(study, path.with_suffix(".png"))
        path.with_suffix(".md").write_text(markdown_table(study))
        print(markdown_table(study))
        print(f"results: {path}")
        return 0
    if args.what == "report":
        from diskgnn.bench.report import update_readme
        paths = sorted(results.glob("*.json"), key=lambda p: p.stat().st_mtime)
        latest = {}
        for p in paths:
            try:
                r = json.loads(p.read_text())
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("kind") in ("loader", "train") and "systems" in r:
                latest[(r["kind"], r["scale"], r.get("task", "node"))] = p
        if not latest:
            raise ConfigError(f"no bench results in {results}; run `diskgnn bench loader` first")
        update_readme(Path("README.md"), list(latest.values()))
        print(f"README.md results section updated from {', '.join(str(p) for p in latest.values())}")
        return 0
    if args.what == "sample":
        from diskgnn.bench import sampling
        argv = (["--dataset", args.file] if args.file else ["--scale", args.scale])
        if getattr(args, "task", "node") == "link":
            argv += ["--task", "link", "--negatives", str(args.negatives)]
        return sampling.main(argv)
    raise ConfigError(f"unknown bench {args.what!r}")
