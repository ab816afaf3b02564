"""``diskgnn run`` and ``diskgnn train`` end to end: steps chained, reused when unchanged, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diskgnn.errors import ConfigError, DiskGNNError, ManifestError
from diskgnn.runner import run_cli
from diskgnn.tools.cli import build_parser, main


def run_args(*argv):
    return build_parser().parse_args(["run", *argv, "-q"])


def statuses(report):
    return {k: v["status"] for k, v in report["steps"].items()}


SMALL = ["--fanouts", "4,3", "--batch-size", "97", "--lr", "0.01", "--threads", "1"]


def test_epochs_flag_of_run_is_training_epochs():
    args = run_args("--scale", "tiny", "--workdir", "w", "--epochs", "5", "--sample-epochs", "2")
    assert args.train_epochs == 5 and args.sample_epochs == 2
    sample = build_parser().parse_args(["sample", "d", "--out", "o", "--epochs", "3"])
    assert sample.sample_epochs == 3


def test_run_on_a_synthetic_scale_then_reuse(tmp_path):
    wd = tmp_path / "wd"
    first = run_cli(run_args("--scale", "tiny", "--workdir", str(wd), "--epochs", "2", *SMALL))
    assert statuses(first) == {"dataset": "made", "samples": "made", "packed": "made", "train": "made"}
    assert first["epochs"] == 2 and first["best_val_acc"] > 0.3  # 4 classes: chance is 0.25
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["test_acc"] == first["test_acc"]
    again = run_cli(run_args("--scale", "tiny", "--workdir", str(wd), "--epochs", "2", *SMALL))
    assert statuses(again) == {"dataset": "reused", "samples": "reused", "packed": "reused", "train": "made"}
    assert again["test_acc"] == first["test_acc"]  # same data, same seeds: same result


@pytest.fixture(scope="module")
def given_workdir(tiny_dataset, tmp_path_factory):
    wd = tmp_path_factory.mktemp("run") / "wd"
    report = run_cli(run_args("--dataset", str(tiny_dataset.path), "--workdir", str(wd), "--epochs", "1", *SMALL))
    return wd, report


def test_run_on_a_given_dataset(given_workdir, tiny_dataset):
    wd, report = given_workdir
    assert statuses(report)["dataset"] == "given" and not (wd / "dataset").exists()
    assert report["hit_rate"]["host"] > 0 and report["bytes_read_per_epoch"] > 0


def test_changed_config_redoes_only_later_steps(given_workdir, tiny_dataset):
    wd, _ = given_workdir
    base = ["--dataset", str(tiny_dataset.path), "--workdir", str(wd), "--epochs", "1"]
    r = run_cli(run_args(*base, *SMALL, "--host-cache", "30%"))
    assert statuses(r) == {"dataset": "given", "samples": "reused", "packed": "made", "train": "made"}
    r = run_cli(run_args(*base, *SMALL[:1], "5,3", *SMALL[2:], "--host-cache", "30%"))
    assert statuses(r) == {"dataset": "given", "samples": "made", "packed": "made", "train": "made"}


def test_unfinished_step_is_redone(given_workdir, tiny_dataset):
    wd, _ = given_workdir
    base = ["--dataset", str(tiny_dataset.path), "--workdir", str(wd), "--epochs", "1", *SMALL]
    run_cli(run_args(*base))
    (wd / "packed" / "manifest.json").unlink()  # as if packing had been interrupted
    r = run_cli(run_args(*base))
    assert statuses(r)["packed"] == "made" and (wd / "packed" / "manifest.json").exists()


def test_bad_training_flags_fail_before_any_step(tmp_path):
    wd = tmp_path / "wd"
    with pytest.raises(ConfigError, match="does not exist"):
        run_cli(run_args("--scale", "tiny", "--workdir", str(wd), "--model", "transformer"))
    assert not (wd / "dataset").exists()
    with pytest.raises(ConfigError, match="--resume needs --checkpoint"):
        run_cli(run_args("--scale", "tiny", "--workdir", str(wd), "--resume"))
    assert not (wd / "dataset").exists()


def test_out_of_core_training_equals_in_memory_training(given_workdir):
    from diskgnn.store import Packed, FeatureStore
    from diskgnn.train import DatasetFeatures, TrainConfig, Trainer
    wd, _ = given_workdir
    packed = Packed.open(wd / "packed")
    cfg = TrainConfig(epochs=2, lr=1e-2, threads=1, seed=3)
    ooc = Trainer(packed.samples, packed.dataset, FeatureStore(packed, "cpu"), cfg)
    mem = Trainer(packed.samples, packed.dataset, DatasetFeatures(packed.samples, packed.dataset), cfg)
    r1, r2 = ooc.fit(), mem.fit()
    for a, b in zip(ooc.model.parameters(), mem.model.parameters()):
        assert torch.equal(a, b)
    assert r1["test_acc"] == r2["test_acc"]
    assert r1["hit_rate"]["disk"] > 0 and r1["bytes_read_per_epoch"] > 0


def test_train_command_and_its_errors(given_workdir, tmp_path, capsys):
    wd, _ = given_workdir
    metrics = tmp_path / "m.jsonl"
    ck = tmp_path / "ck"
    rc = main(["train", str(wd / "packed"), "--epochs", "2", "--metrics", str(metrics), "--checkpoint", str(ck),
               "--threads", "1", "-q"])
    assert rc == 0
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert {"best_val_acc", "test_acc", "epoch_time_s"} <= set(last)
    # resume with more epochs continues from epoch 2
    assert main(["train", str(wd / "packed"), "--epochs", "3", "--metrics", str(metrics), "--checkpoint", str(ck),
                 "--resume", "--threads", "1", "-q"]) == 0
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x.get("epoch") for x in lines if x["event"] == "epoch"] == [1, 2, 3]
    capsys.readouterr()
    # a samples directory is not a packed directory
    assert main(["train", str(wd / "samples"), "-q"]) == 2
    assert "diskgnn.packed" in capsys.readouterr().err
    # a corrupt checkpoint
    (ck / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["train", str(wd / "packed"), "--checkpoint", str(ck), "--resume", "-q"]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["train", str(wd / "packed"), "--model", "nope", "-q"]) == 2
    assert "--model 'nope' does not exist" in capsys.readouterr().err
    assert main(["train", str(wd / "packed"), "--resume", "-q"]) == 2
    assert "--resume needs --checkpoint" in capsys.readouterr().err


def test_resume_on_another_packed_directory(given_workdir, tiny_dataset, tmp_path):
    wd, _ = given_workdir
    other = tmp_path / "other"
    run_cli(run_args("--dataset", str(tiny_dataset.path), "--workdir", str(other), "--epochs", "1", "--fanouts", "6,2",
                     "--batch-size", "97", "--threads", "1"))
    ck = tmp_path / "ck"
    assert main(["train", str(wd / "packed"), "--epochs", "1", "--checkpoint", str(ck), "-q"]) == 0
    with pytest.raises(DiskGNNError, match="packed directory of the interrupted run"):
        from diskgnn.launch import train_cli
        from diskgnn.train import TrainConfig
        train_cli(other / "packed", TrainConfig(epochs=2, checkpoint=str(ck), resume=True))
