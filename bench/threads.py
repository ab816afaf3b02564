"""Thread budget: training epoch time and per-stage busy/wait for different splits of the cores.

Each split ``C:A`` runs the bench worker (diskgnn's packed store, the trainer's
pipeline, GraphSAGE by default) with ``C`` compute threads (torch intra-op and
the fused kernels) and ``A`` numba threads for the assembly gathers. Splits are
run round-robin ``--repeats`` times so that the machine's drift hits all of
them alike; the result gives the median and range per split::

    python -m diskgnn.bench.threads --samples S --packed P --splits 2:2,2:1,1:1,1:2 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from diskgnn.cgroup import python_module_cmd, run_capped


def run_split(samples: str, packed: str, compute: int, assemble: int, *, epochs: int, model: str,
              cap: int | None) -> dict:
    cmd = python_module_cmd("diskgnn.bench.worker", "--system", "diskgnn", "--kind", "train", "--samples", samples,
                            "--packed", packed, "--epochs", str(epochs), "--warmup", "1", "--model", model,
                            "--threads", str(compute), "--assemble-threads", str(assemble))
    run = run_capped(cmd, cap, timeout=3600)
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"failed": True, "error": (run.stderr or "").strip().splitlines()[-3:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True)
    p.add_argument("--packed", required=True)
    p.add_argument("--splits", default="2:2,2:1,1:1,1:2", help="compute:assemble thread pairs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", default="sage")
    p.add_argument("--memory-cap", default="2G")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from diskgnn.bench.harness import git_commit, machine_facts
    from diskgnn.sizes import parse_size
    cap = parse_size(args.memory_cap, name="--memory-cap") if args.memory_cap else None
    splits = [tuple(int(x) for x in s.split(":")) for s in args.splits.split(",")]
    runs: dict[str, list[dict]] = {f"{c}:{a}": [] for c, a in splits}
    for rep in range(args.repeats):
        for c, a in splits:
            r = run_split(args.samples, args.packed, c, a, epochs=args.epochs, model=args.model, cap=cap)
            runs[f"{c}:{a}"].append(r)
            print(f"repeat {rep + 1} split {c}:{a}: epoch {r.get('epoch_time_s', float('nan')):.2f} s", flush=True)
    summary = []
    for key, rs in runs.items():
        ok = [r for r in rs if not r.get("failed")]
        if not ok:
            summary.append({"split": key, "failed": True})
            continue
        times = [r["epoch_time_s"] for r in ok]
        stages = {name: {k: statistics.median(r["stages"][name][k] for r in ok) for k in ("busy_s", "wait_s")}
                  for name in ok[0]["stages"]}
        summary.append({"split": key, "compute_threads": int(key.split(":")[0]),
                        "assemble_threads": int(key.split(":")[1]), "epoch_time_s": statistics.median(times),
                        "epoch_time_s_min": min(times), "epoch_time_s_max": max(times), "runs": len(ok),
                        "stages_median": stages})
    result = {"kind": "threads", "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine_facts(Path(args.packed)), "samples": args.samples, "packed": args.packed,
              "model": args.model, "memory_cap_bytes": cap, "repeats": args.repeats, "epochs": args.epochs,
              "splits": summary, "command": "python -m diskgnn.bench.threads " + " ".join(sys.argv[1:])}
    for s in summary:
        if not s.get("failed"):
            busy = ", ".join(f"{k} {v['busy_s']:.2f}" for k, v in s["stages_median"].items())
            print(f"{s['split']}: epoch {s['epoch_time_s']:.2f} s ({s['epoch_time_s_min']:.2f}-"
                  f"{s['epoch_time_s_max']:.2f}); busy: {busy}")
    out = Path(args.out) if args.out else Path("bench/results") / f"threads-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
