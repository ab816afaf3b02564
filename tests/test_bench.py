"""The benchmark harness end to end on a tiny graph: structure and exactness, never timings."""
import json
from pathlib import Path

import numpy as np
import pytest

from diskgnn.bench.cache import access_trace, policy_study
from diskgnn.bench.harness import BenchConfig, run_bench
from diskgnn.bench.report import markdown, update_readme, write_outputs
from diskgnn.sampling import SampleConfig, presample

REQUIRED = {"name", "kind", "epoch_time_s", "epoch_times_s", "bytes_read", "bytes_useful", "read_amplification",
            "peak_rss_bytes", "stages", "hit_rate", "test_acc"}


@pytest.fixture(scope="module")
def loader_result(tmp_path_factory, tiny_dataset):
    work = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(kind="loader", scale="tiny", workdir=work / "work", results=work / "results",
                      memory_cap=1 << 30, systems=("diskgnn-10%", "pread", "mmap", "in-memory"),
                      epochs=1, warmup=0, dataset=str(tiny_dataset.path))
    return run_bench(cfg), work


def test_result_has_every_bench_md_key(loader_result):
    result, work = loader_result
    for key in ("scale", "commit", "memory_cap_bytes", "cgroup", "disk", "systems"):
        assert key in result
    for key in ("seq_read_GBps", "seq_write_GBps", "rand4k_iops_qd1", "rand4k_iops_qd64"):
        assert result["disk"][key] > 0
    names = [s["name"] for s in result["systems"]]
    assert names == ["diskgnn-10%", "pread", "mmap", "in-memory"]
    for s in result["systems"]:
        assert not s.get("failed"), s
        assert REQUIRED <= set(s), set(REQUIRED) - set(s)
        assert s["batches_per_epoch"] == s["measured_batches_per_epoch"] > 0
    assert not (work / "work").exists(), "generated data must be deleted unless --keep"


def test_floors_of_the_disk_and_of_assembly(loader_result):
    result, _ = loader_result
    assert result["memory"]["gather_GBps"] > 0 and result["memory"]["row_bytes"] == 13 * 4
    by = {s["name"]: s for s in result["systems"]}
    d = by["diskgnn-10%"]
    # the epoch's matrices: every input row of every train batch as float32 (in-memory gathers exactly those)
    assert d["assembled_bytes"] == by["in-memory"]["bytes_useful"]
    assert d["gather_floor_s"] == pytest.approx(d["assembled_bytes"] / (result["memory"]["gather_GBps"] * 1e9))
    assert d["disk_floor_all_s"] >= d["disk_floor_s"] > 0  # the blocks and maps read too, at the same speed
    assert d["floor_s"] == max(d["disk_floor_all_s"], d["gather_floor_s"])
    assert d["epoch_over_floor"] == pytest.approx(d["epoch_time_s"] / d["floor_s"])
    assert "floor_s" not in by["pread"] and "floor_s" not in by["in-memory"], "floors are the diskgnn systems'"


def test_packed_reads_are_not_amplified_and_pread_is(loader_result):
    result, _ = loader_result
    by = {s["name"]: s for s in result["systems"]}
    # diskgnn reads whole aligned extents of exactly the rows it needs (pages rounding only)
    assert by["diskgnn-10%"]["read_amplification"] <= 1.1
    # tiny rows (13 x fp32 = 52 B): a per-row page read moves far more than it uses
    assert by["pread"]["read_amplification"] > 10
    # both see the same uncached rows
    assert by["pread"]["bytes_useful"] == by["diskgnn-10%"]["bytes_useful"]
    assert by["mmap"]["bytes_useful"] == by["in-memory"]["bytes_useful"]


def test_report_outputs(loader_result, tmp_path):
    result, _ = loader_result
    path = write_outputs(result, tmp_path)
    assert json.loads(path.read_text())["scale"] == "tiny"
    md = path.with_suffix(".md").read_text()
    assert "| diskgnn-10% |" in md and "| mmap |" in md
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n")
    update_readme(readme, [path])
    update_readme(readme, [path])  # idempotent: one section, replaced
    text = readme.read_text()
    assert text.count("bench-results:begin") == 1 and "intro" in text


def test_cache_study_orders_policies(tiny_dataset, tmp_path):
    samples = presample(tiny_dataset.path, tmp_path / "s", SampleConfig(fanouts=(4, 3), batch_size=97, epochs=2))
    trace = access_trace(samples)
    assert trace.size == sum(samples.input_offsets(p)[-1] for p in samples.train_parts)
    study = policy_study(trace, samples.num_nodes, fractions=(0.05, 0.2, 0.5))
    for row in study["rows"]:
        for policy in ("static", "lru", "clock", "sieve"):
            assert 0.0 <= row[policy] <= row["belady"] + 1e-12
    rates = [r["belady"] for r in study["rows"]]
    assert rates == sorted(rates) and rates[-1] > rates[0]
