"""bench/hetero_speed.py runs its steps and records what they did (no timing is asserted)."""
import json

from conftest import HAS_DGL
from diskgnn.bench.hetero_speed import main
from diskgnn.hetero import hetero_scale_config, synthesize_hetero


def test_the_bench_runs_every_step_and_records_it(tmp_path):
    ds = synthesize_hetero(hetero_scale_config("tiny", author_dim=4), tmp_path / "ds")
    out = tmp_path / "r.json"
    systems = "diskgnn,dgl-memmap" if HAS_DGL else "diskgnn"
    assert main(["--dataset", str(ds.path), "--workdir", str(tmp_path / "w"), "--cap", "3G", "--systems", systems,
                 "--fanouts", "3,3", "--batch-size", "128", "--hidden", "16", "--dgl-batches", "2",
                 "--disk-probe", "8M", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    steps = {s["step"]: s for s in r["steps"]}
    assert {"sample", "pack", "train"} <= set(steps)
    for name in ("sample", "pack", "train"):
        assert steps[name]["returncode"] == 0 and steps[name]["rc"] == 0 and steps[name]["peak_anon_bytes"] > 0
    assert len(steps["train"]["epochs"]) == 1 and 0 <= steps["train"]["epochs"][0]["test_acc"] <= 1
    assert r["summary"]["diskgnn_epoch_s"] and len(r["disk"]) == 2
    if HAS_DGL:
        dgl = steps["dgl-memmap"]
        assert dgl["returncode"] == 0 and dgl["batches_measured"] == 2 and dgl["madvise"] == "MADV_RANDOM"
        assert dgl["epoch_batches"] == -(-300 // 128)  # tiny: 10 % of 3001 papers train
        assert r["summary"]["speedup"] > 0
