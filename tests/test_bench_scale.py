"""``python -m diskgnn.bench.scale``: every step of the pipeline measured in its cgroup, at tiny size, end to end."""
import json

import pytest

from diskgnn.bench.scale import README_BEGIN, README_END, checks, main, readme_row, update_readme

STEPS = ("synth", "verify-dataset", "sample", "sample-in-memory", "verify-samples", "pack", "verify-packed", "train")


@pytest.mark.slow
def test_scale_bench_runs_every_step_kills_and_cleans_up(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nsome text\n")
    work = tmp_path / "work"
    rc = main(["--scale", "s", "--nodes", "6007", "--avg-degree", "9", "--dim", "8", "--classes", "3",
               "--train-fraction", "0.3", "--val-fraction", "0.1", "--test-fraction", "0.1", "--cap", "1G",
               "--workdir", str(work), "--results", str(tmp_path / "results"), "--readme", str(readme),
               "--batch-size", "301", "--fanouts", "4,3", "--epochs", "2", "--kill", "--disk-probe", "0",
               "--threads", "1", "--chunk-nodes", "50", "--pack-stream-block", "16K"])
    assert rc == 0
    [path] = (tmp_path / "results").glob("scale-s-*.json")
    result = json.loads(path.read_text())
    c = result["checks"]
    assert c["every_step_ok"] and c["verify_passed"] and c["samples_identical"]
    assert c["kills_identical"], result["kills"]
    for kill in result["kills"]:  # a kill that landed resumed from the killed run's journal
        assert not kill["killed"] or kill["resumed_from"], kill
    names = [s["step"] for s in result["steps"]]
    assert all(n in names for n in STEPS)
    for s in result["steps"]:
        assert s["returncode"] == 0 and s["wall_s"] > 0
        for key in ("peak_rss_bytes", "peak_anon_bytes", "peak_file_bytes", "read_bytes", "write_bytes"):
            assert isinstance(s[key], int) and s[key] >= 0, (s["step"], key)
        assert s["cap_bytes"] == (None if s["step"] == "sample-in-memory" else 1 << 30)
    assert result["dataset"]["nodes"] == 6007 and result["dataset"]["indices_dtype"] == "<i4"
    r = result["rates"]
    assert r["sample_disk_sampled_edges"] == r["sample_ram_sampled_edges"] > 0
    assert r["sample_disk_topology_bytes_read"] > 0 and r["pack_written_bytes"] > 0 and r["train_step_s"] > 0
    assert result["systems"][0]["kind"] == "train" and len(result["systems"][0]["epoch_times_s"]) == 2
    assert not work.exists() and result["workdir_bytes_after"] == 0  # nothing left behind
    # the scaling model reads its inputs from a real result (the disk probe was skipped here: give it one)
    from diskgnn.bench.scaling_model import GRAPHS, project, rates_from_result
    result["disk"] = {"seq_read_GBps": 1.0, "seq_write_GBps": 0.5}
    rates = rates_from_result(result)
    assert rates.seeds == round(6007 * 0.3) + 2 * round(6007 * 0.1) and rates.train_seeds == round(6007 * 0.3)
    assert rates.sampled_edges_per_seed > 0 and rates.input_rows_per_seed >= 1 and rates.step_s_per_row_dim > 0
    assert rates.rows_assembled_per_s > 0 and rates.pack_floor_ratio > 0 and rates.batch_size == 301
    assert project(GRAPHS["papers100M"], rates)["train"]["epoch_s"] > 0
    text = readme.read_text()
    assert "some text" in text and README_BEGIN in text and path.name in text


def _result(**steps) -> dict:
    base = {"step": "", "returncode": 0, "wall_s": 10.0, "cap_bytes": 4 << 30, "within_budget_plus_10pct": True,
            "peak_rss_bytes": 1 << 30}
    return {"date": "2026-12-02T10:00:00", "scale": "l", "memory_cap_bytes": 4 << 30,
            "dataset": {"nodes": 64_000_000, "edges": 2_300_000_000, "feat_dim": 64, "feat_dtype": "fp16"},
            "steps": [{**base, "step": name, **fields} for name, fields in steps.items()],
            "workdir_bytes_before": 0, "workdir_bytes_after": 0, "config": {"keep": False}}


def test_checks_say_what_failed():
    ok = _result(synth={}, sample={"wall_s": 25.0}, **{"sample-in-memory": {"wall_s": 10.0, "cap_bytes": None}})
    ok["train_epochs"] = [{"event": "epoch", "epoch_time_s": 12.0, "stages": {"read": {"busy_s": 4.0},
                                                                             "compute": {"busy_s": 10.0}}}]
    c = checks(ok)
    assert c["every_step_ok"] and c["sample_mmap_vs_in_memory"] == 2.5 and c["sample_within_3x"]
    assert c["epoch_vs_slowest_stage"] == [1.2] and c["epoch_within_1_25x_of_slowest_stage"]
    bad = _result(synth={"wall_s": 2000.0}, sample={"wall_s": 40.0, "within_budget_plus_10pct": False},
                  **{"sample-in-memory": {"wall_s": 10.0, "cap_bytes": None}})
    bad["failed_step"] = "pack"
    bad["workdir_bytes_after"] = 123
    c = checks(bad)
    assert not c["every_step_ok"] and not c["sample_within_3x"] and not c["synth_within_30_min"]
    assert not c["every_capped_step_within_budget_plus_10pct"] and not c["workdir_cleaned"]


def test_readme_rows_accumulate_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    first = _result(synth={}, train={})
    first["checks"] = checks(first)
    update_readme(readme, readme_row(first, tmp_path / "scale-l-a.json"))
    second = dict(first, date="2026-12-03T10:00:00")
    update_readme(readme, readme_row(second, tmp_path / "scale-l-b.json"))
    text = readme.read_text()
    assert text.startswith("intro") and text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    assert "scale-l-a.json" in text and "scale-l-b.json" in text
    assert "64M nodes, 2.3B edges, 64-d fp16" in text


@pytest.mark.slow
def test_a_run_can_start_at_pack_from_kept_samples(tmp_path):
    small = ["--scale", "s", "--nodes", "3001", "--avg-degree", "6", "--dim", "8", "--classes", "3",
             "--train-fraction", "0.3", "--val-fraction", "0.1", "--test-fraction", "0.1", "--cap", "1G",
             "--readme", "", "--batch-size", "301", "--fanouts", "4,3", "--epochs", "1", "--disk-probe", "0",
             "--threads", "1", "--no-in-memory"]
    assert main([*small, "--workdir", str(tmp_path / "a"), "--results", str(tmp_path / "ra"), "--keep"]) == 0
    kept = tmp_path / "kept"
    (tmp_path / "a").rename(kept)
    rc = main([*small, "--workdir", str(tmp_path / "b"), "--results", str(tmp_path / "rb"),
               "--from-samples", str(kept / "samples"), "--from-dataset", str(kept / "dataset"), "--kill"])
    assert rc == 0
    [path] = (tmp_path / "rb").glob("scale-s-*.json")
    result = json.loads(path.read_text())
    assert [s["step"] for s in result["steps"]] == ["pack", "verify-packed", "train"]
    assert result["reused"]["dataset"] == str(kept / "dataset") and result["checks"]["verify_passed"]
    assert result["kills"] and result["checks"]["kills_identical"]
    assert (kept / "samples" / "manifest.json").exists() and (kept / "dataset" / "manifest.json").exists()
    assert not (tmp_path / "b").exists()
