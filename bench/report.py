"""Turn a bench result JSON into a markdown table, a PNG plot and the README's results section."""
from __future__ import annotations

import json
from pathlib import Path

from diskgnn.sizes import format_bytes

BEGIN = "<!-- bench-results:begin -->"
END = "<!-- bench-results:end -->"


def markdown(result: dict) -> str:
    cap = result.get("memory_cap_bytes")
    disk = result.get("disk", {})
    task = " (link prediction)" if result.get("task") == "link" else ""
    lines = [f"**{result['kind']} benchmark{task}, scale `{result['scale']}`**, commit `{result['commit'][:10]}`, "
             f"{result['date']}, memory cap {format_bytes(cap) if cap else 'none'} "
             f"({'cgroup' if result.get('cgroup') else 'NO cgroup: not a capped comparison'}).",
             "",
             f"Disk measured in the same run (best of the probes before and after the systems and next to diskgnn-10%): O_DIRECT sequential read {disk.get('seq_read_GBps', float('nan')):.2f} GB/s, "
             f"write {disk.get('seq_write_GBps', float('nan')):.2f} GB/s, 4 KiB random read "
             f"{disk.get('rand4k_iops_qd1', 0):.0f} IOPS (qd1) / {disk.get('rand4k_iops_qd64', 0):.0f} IOPS (qd64).",
             "",
             "| system | epoch (s) | vs diskgnn-10% | features read | useful | read ampl. | all disk reads | peak RSS | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = next((s["epoch_time_s"] for s in result["systems"] if s["name"] == "diskgnn-10%" and not s.get("failed")),
                None)
    for s in result["systems"]:
        if s.get("failed"):
            lines.append(f"| {s['name']} | failed | | | | | | | {s.get('error', '')[:80]} |")
            continue
        note = []
        if s.get("extrapolated"):
            note.append(f"{s['measured_batches_per_epoch']} of {s['batches_per_epoch']} batches, scaled")
        if s.get("memory_cap_bytes") is None:
            note.append("no cap")
        if s.get("disk_floor_s"):
            note.append(f"disk floor {s['disk_floor_s']:.2f} s")
        if s.get("packed_read_GBps"):
            note.append(f"read stage {s['packed_read_GBps']:.2f} GB/s")
        ratio = f"{s['epoch_time_s'] / base:.2f}x" if base else ""
        amp = s.get("read_amplification")
        lines.append(f"| {s['name']} | {s['epoch_time_s']:.2f} | {ratio} | "
                     f"{format_bytes(s.get('feature_bytes_read', 0))} | {format_bytes(s.get('bytes_useful', 0))} | "
                     f"{'-' if amp is None else f'{amp:.2f}'} | {format_bytes(s.get('bytes_read', 0))} | "
                     f"{format_bytes(s.get('peak_rss_bytes', 0))} | {'; '.join(note)} |")
    pre = result.get("preprocessing", {})
    if pre:
        lines += ["", "Preprocessing: " + ", ".join(f"{k} {v:.2f}" for k, v in pre.items()
                                                   if isinstance(v, (int, float)))]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = [s for s in result["systems"] if not s.get("failed")]
    names = [s["name"] for s in systems]
    stages = sorted({k for s in systems for k in s.get("stages", {})})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = [0.0] * len(systems)
    for st in stages:
        vals = [s.get("stages", {}).get(st, {}).get("busy_s", 0.0) for s in systems]
        ax1.bar(names, vals, bottom=bottom, label=f"{st} busy")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.scatter(names, [s["epoch_time_s"] for s in systems], color="k", marker="_", s=400, label="epoch time", zorder=3)
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds per epoch (log)")
    ax1.set_title(f"{result['kind']} epoch, scale {result['scale']}")
    ax1.tick_params(axis="x", rotation=45)
    ax1.legend(fontsize=8)
    ax2.bar(names, [s.get("feature_bytes_read", 0) / 2**30 for s in systems], label="feature bytes read")
    ax2.bar(names, [s.get("bytes_useful", 0) / 2**30 for s in systems], alpha=0.6, width=0.5, label="useful")
    ax2.set_yscale("log")
    ax2.set_ylabel("GiB per epoch (log)")
    ax2.set_title("bytes read per epoch")
    ax2.tick_params(axis="x", rotation=45)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(result: dict, results_dir: Path, out: Path | None = None) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    task = "-link" if result.get("task") == "link" else ""
    stem = f"{result['kind']}{task}-{result['scale']}-{result['date'][:19].replace(':', '')}"
    path = out or results_dir / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2))
    path.with_suffix(".md").write_text(markdown(result))
    plot(result, path.with_suffix(".png"))
    return path


def update_readme(readme: Path, result_paths: list[Path]) -> None:
    """Replace the README's results section with the tables of ``result_paths``."""
    parts = [BEGIN, ""]
    for p in result_paths:
        result = json.loads(Path(p).read_text())
        cfg = result.get("config", {})
        command = result.get("command") or (
            f"diskgnn bench {result['kind']} --scale {result['scale']} --epochs {cfg.get('epochs', 3)}"
            + (f" --slow-batches {cfg['slow_max_batches']}" if cfg.get("slow_max_batches") else ""))
        parts += [markdown(result), f"Made with `{command}` (result file `{p}`).", ""]
        png = Path(p).with_suffix(".png")
        if png.exists():
            parts += [f"![{result['kind']} benchmark]({png.as_posix()})", ""]
    parts.append(END)
    text = readme.read_text() if readme.exists() else ""
    block = "\n".join(parts)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Benchmark results\n\n" + block + "\n"
    readme.write_text(text)
