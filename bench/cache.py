"""Cache-policy study on the presampled access trace.

For cache sizes of 5-50 % of the rows, the hit rate of static frequency
placement (what diskgnn's tiers do, using the counts of the same trace),
LRU, CLOCK, SIEVE and Belady's optimal offline policy, over the training
epochs' input nodes in their stored order.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from diskgnn.kernels.cache_sim import clock_hits, lru_hits, sieve_hits, static_hits
from diskgnn.packing import belady_hit_rate

POLICIES = ("static", "lru", "clock", "sieve", "belady")
DEFAULT_FRACTIONS = (0.05, 0.10, 0.20, 0.30, 0.50)


def access_trace(samples, parts=None) -> np.ndarray:
    """The input nodes of ``parts`` (default: every training part) concatenated in batch order."""
    parts = parts or samples.train_parts
    return np.concatenate([np.asarray(samples.all_input_nodes(p), dtype=np.int64) for p in parts])


def warm_prefix(trace: np.ndarray, capacity: int) -> np.ndarray:
    """The first ``capacity`` distinct ids of ``trace`` in order of first use.

    Static placement fills its cache before training starts, so every dynamic
    policy gets the same head start: it begins with these rows cached (they
    would be its first insertions anyway) instead of paying compulsory misses.
    """
    _, first = np.unique(trace, return_index=True)
    return trace[np.sort(first)[:capacity]]


def policy_study(trace: np.ndarray, num_ids: int, fractions=DEFAULT_FRACTIONS, policies=POLICIES) -> dict:
    """Hit rate of each policy at each cache size (fraction of ``num_ids`` rows), all starting warm."""
    counts = np.bincount(trace, minlength=num_ids)
    order = np.argsort(-counts, kind="stable")
    rows = []
    for frac in fractions:
        cap = int(round(frac * num_ids))
        row = {"cache_fraction": frac, "capacity_rows": cap}
        for policy in policies:
            t0 = time.perf_counter()
            if policy == "static":
                mask = np.zeros(num_ids, dtype=np.bool_)
                mask[order[:cap]] = True
                hits = static_hits(trace, mask)
            elif policy == "belady":  # preloaded with the rows used first, like the others below
                hits = belady_hit_rate(trace, num_ids, cap) * trace.size
            else:
                fn = {"lru": lru_hits, "clock": clock_hits, "sieve": sieve_hits}[policy]
                # the prefix holds distinct ids and fits: all misses, so every hit is on the trace itself
                hits = fn(np.concatenate([warm_prefix(trace, cap), trace]), cap, num_ids)
            row[policy] = hits / max(trace.size, 1)
            row[f"{policy}_seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    return {"trace_length": int(trace.size), "distinct_rows": int((counts > 0).sum()), "num_rows": num_ids,
            "rows": rows}


def markdown_table(study: dict) -> str:
    head = "| cache | " + " | ".join(POLICIES) + " |\n|---|" + "---|" * len(POLICIES) + "\n"
    lines = [f"| {r['cache_fraction']:.0%} | " + " | ".join(f"{r[p]:.3f}" for p in POLICIES if p in r) + " |"
             for r in study["rows"]]
    return head + "\n".join(lines) + "\n"


def plot(study: dict, path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["cache_fraction"] * 100 for r in study["rows"]]
    for p in POLICIES:
        if p in study["rows"][0]:
            ax.plot(xs, [r[p] for r in study["rows"]], marker="o", label=p)
    ax.set_xlabel("cache size (% of rows)")
    ax.set_ylabel("hit rate")
    ax.set_title("cache policies on the presampled trace")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    from diskgnn.sampling import Samples
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="samples directory")
    p.add_argument("--fractions", default=",".join(str(f) for f in DEFAULT_FRACTIONS))
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    samples = Samples.open(args.samples)
    study = policy_study(access_trace(samples), samples.num_nodes,
                         tuple(float(f) for f in args.fractions.split(",")))
    text = json.dumps(study, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    print(markdown_table(study))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
