"""``python -m diskgnn.bench.gpu_check --dry-run``: the GPU check's code paths on CPU at tiny size."""
from __future__ import annotations

import json

import pytest
import torch

from diskgnn.bench.gpu_check import main

CHECKS = ["tiers", "pipeline", "h2d-overlap", "ops", "data-parallel", "scale-run"]


@pytest.mark.slow
def test_dry_run_passes_every_check_and_writes_the_result(tmp_path, capsys):
    out = tmp_path / "gpu-dryrun.json"
    rc = main(["--dry-run", "--workdir", str(tmp_path / "work"), "--out", str(out), "--threads", "2"])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert rc == 0, printed
    assert result["ok"] is True and result["dry_run"] is True
    assert [c["name"] for c in result["checks"]] == CHECKS
    assert all(c["ok"] and c["compared"] for c in result["checks"]), [c for c in result["checks"] if not c["ok"]]
    by = {c["name"]: c["details"] for c in result["checks"]}
    for dtype in ("fp32", "fp16"):
        tiers = by["tiers"][dtype]
        assert tiers["batches_not_equal_to_features"] == 0 and tiers["every_tier_used"]
        assert all(tiers["rows_from"][t] > 0 for t in ("device", "pinned", "host", "disk"))
    assert by["pipeline"]["batches"] > 0 and by["pipeline"]["wrong_features"] == 0
    assert by["h2d-overlap"]["skipped"] is True
    assert {"aggregate mean", "gat_aggregate", "model gat"} <= set(by["ops"])
    assert by["data-parallel"]["nproc"] == 1 and by["data-parallel"]["backend"] == "gloo"
    assert by["data-parallel"]["max_weight_diff_vs_single_process"] == 0.0  # exact on CPU
    run = by["scale-run"]
    assert {"scale", "memory_cap_bytes", "cgroup", "disk", "systems"} <= set(run)
    assert [s["name"] for s in run["systems"]] == ["diskgnn-tiers", "all-in-memory"]
    for s in run["systems"]:
        assert s["epoch_time_s"] > 0 and {"load", "read", "assemble", "compute"} <= set(s["stages"])
    assert run["systems"][0]["hit_rate"]["device"] > 0 and run["ratio_to_ceiling"] > 0
    assert run["final_loss_relative_gap"] == 0.0  # the same batches and weights: exactly the same training on CPU
    assert "ALL OK" in printed and not (tmp_path / "work").exists(), "generated data must be deleted"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_to_use_a_gpu_or_dry_run(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is visible" in err and "--dry-run" in err
    assert not (tmp_path / "x.json").exists()
