"""The trainer: config, epochs over presampled parts, metrics, checkpoints and resume."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from diskgnn.errors import CheckpointError, ConfigError, MismatchError, PipelineError
from diskgnn.train import (CHECKPOINT_NAME, DatasetFeatures, TrainConfig, Trainer, load_checkpoint,
                           save_checkpoint, store_epoch_metrics)


@pytest.fixture(scope="module")
def tiny_samples(tiny_dataset, tmp_path_factory):
    from diskgnn.sampling import SampleConfig, presample
    cfg = SampleConfig(fanouts=(4, 3), batch_size=53, epochs=2, seed=1)
    return presample(tiny_dataset.path, tmp_path_factory.mktemp("samples") / "s", cfg)


def make_trainer(samples, dataset, **kw):
    kw.setdefault("lr", 1e-2)
    kw.setdefault("threads", 1)
    return Trainer(samples, dataset, DatasetFeatures(samples, dataset), TrainConfig(**kw))


def cli_args(**kw):
    base = dict(model="sage", train_epochs=None, hidden=None, heads=4, dropout=0.0, lr=1e-3, train_seed=0,
                metrics=None, checkpoint=None, resume=False, device="auto", nproc=1, threads=None, eval_every=1)
    base.update(kw)
    return argparse.Namespace(**base)


# --- config ------------------------------------------------------------------------------------

def test_config_from_cli_defaults():
    cfg = TrainConfig.from_cli(cli_args())
    assert cfg.epochs == 10 and cfg.hidden == 128 and cfg.model == "sage" and cfg.lr == 1e-3
    gat = TrainConfig.from_cli(cli_args(model="gat", train_epochs=3, train_seed=7))
    assert gat.hidden == 32 and gat.heads == 4 and gat.epochs == 3 and gat.seed == 7


@pytest.mark.parametrize("bad,match", [
    (dict(model="gin"), "does not exist"),
    (dict(train_epochs=0), "--epochs"),
    (dict(lr=0.0), "--lr"),
    (dict(dropout=1.5), "--dropout"),
    (dict(resume=True), "--resume needs --checkpoint"),
    (dict(nproc=0), "--nproc"),
    (dict(device="tpu"), "--device"),
    (dict(eval_every=0), "--eval-every"),
])
def test_config_rejects_bad_flags(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_cli(cli_args(**bad))


def test_config_is_frozen():
    cfg = TrainConfig()
    with pytest.raises(Exception):
        cfg.epochs = 3


# --- training ------------------------------------------------------------------------------------

def test_epochs_cycle_parts_with_reshuffled_order(tiny_samples, tiny_dataset):
    tr = make_trainer(tiny_samples, tiny_dataset, epochs=4)
    parts = [tr.epoch_order(e)[0] for e in range(4)]
    assert parts == ["train/0", "train/1", "train/0", "train/1"]
    o0, o2 = tr.epoch_order(0)[1], tr.epoch_order(2)[1]
    nb = tiny_samples.num_batches("train/0")
    assert sorted(o0.tolist()) == list(range(nb)) and sorted(o2.tolist()) == list(range(nb))
    assert not np.array_equal(o0, o2)
    assert np.array_equal(o0, make_trainer(tiny_samples, tiny_dataset).epoch_order(0)[1])  # seeded


def test_training_learns_and_writes_metrics(tiny_samples, tiny_dataset, tmp_path):
    metrics = tmp_path / "m.jsonl"
    tr = make_trainer(tiny_samples, tiny_dataset, epochs=4, metrics=str(metrics))
    report = tr.fit()
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert len(lines) == 5 and [x["epoch"] for x in lines[:4]] == [1, 2, 3, 4]
    last = lines[-1]
    for key in ("best_val_acc", "test_acc", "epoch_time_s"):
        assert last[key] is not None
    assert last["epoch_time_s"] == pytest.approx(np.median([x["epoch_time_s"] for x in lines[:4]]))
    best = max(lines[:4], key=lambda x: x["val_acc"])
    assert last["best_val_acc"] == best["val_acc"] and last["test_acc"] == best["test_acc"]
    assert report["best_val_acc"] > 1.0 / tiny_dataset.num_classes + 0.2, "the model should beat chance clearly"
    assert lines[3]["loss"] < lines[0]["loss"]
    epoch = lines[0]
    assert set(epoch["stages"]) == {"load", "read", "assemble", "compute"}
    assert epoch["stages"]["compute"]["items"] == tiny_samples.num_batches("train/0")
    assert epoch["bytes_read"] == epoch["bytes_useful"] > 0 and epoch["peak_rss_bytes"] > 0
    for key in ("loss", "train_acc", "val_acc", "test_acc"):
        assert 0 <= epoch[key] < 10


def test_eval_every_skips_evaluation(tiny_samples, tiny_dataset, tmp_path):
    metrics = tmp_path / "m.jsonl"
    make_trainer(tiny_samples, tiny_dataset, epochs=3, eval_every=2, metrics=str(metrics)).fit()
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert ["val_acc" in x for x in lines[:3]] == [False, True, True]  # epoch 2, and the last


@pytest.mark.parametrize("model", ["gat", "gcn"])
def test_other_models_train(tiny_samples, tiny_dataset, model):
    report = make_trainer(tiny_samples, tiny_dataset, model=model, epochs=2, hidden=8, heads=2).fit()
    assert report["best_val_acc"] > 1.0 / tiny_dataset.num_classes


def test_failing_read_names_the_stage(tiny_samples, tiny_dataset):
    class Broken(DatasetFeatures):
        def read(self, part, i):
            if i == 2:
                raise OSError("EIO reading the packed extent")
            return super().read(part, i)

    tr = Trainer(tiny_samples, tiny_dataset, Broken(tiny_samples, tiny_dataset), TrainConfig(epochs=1, threads=1))
    with pytest.raises(PipelineError, match="stage 'read' failed: OSError: EIO"):
        tr.fit()


def test_store_epoch_metrics_deltas():
    before = {"bytes_read": 100, "bytes_useful": 50, "hits": {"device": 1, "host": 2, "disk": 3}}
    after = {"bytes_read": 500, "bytes_useful": 250, "hits": {"device": 3, "host": 2, "disk": 11}}
    m = store_epoch_metrics(before, after)
    assert m["bytes_read"] == 400 and m["bytes_useful"] == 200 and m["read_amplification"] == 2.0
    assert m["hit_rate"] == {"device": 0.2, "host": 0.0, "disk": 0.8}


# --- checkpoints -----------------------------------------------------------------------------------

def test_resume_gives_identical_weights(tiny_samples, tiny_dataset, tmp_path):
    kw = dict(epochs=3, dropout=0.3, seed=5)  # dropout: the torch RNG state must be restored too
    full = make_trainer(tiny_samples, tiny_dataset, **kw)
    full_report = full.fit()
    ck = tmp_path / "ck"
    make_trainer(tiny_samples, tiny_dataset, **{**kw, "epochs": 2}, checkpoint=str(ck)).fit()
    assert (ck / CHECKPOINT_NAME).exists() and not (ck / (CHECKPOINT_NAME + ".partial")).exists()
    resumed = make_trainer(tiny_samples, tiny_dataset, **kw, checkpoint=str(ck), resume=True)
    report = resumed.fit()
    assert resumed.epoch == 3 and len(resumed.history) == 3
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert report["best_val_acc"] == full_report["best_val_acc"]
    assert report["test_acc"] == full_report["test_acc"]
    assert load_checkpoint(ck)["epoch"] == 3
    # an interrupted run differs from the full one only if resume were wrong: check the weights moved
    fresh = make_trainer(tiny_samples, tiny_dataset, **kw)
    assert not torch.equal(fresh.model.layers[0].fc_self.weight, resumed.model.layers[0].fc_self.weight)


def test_resume_without_checkpoint_file(tiny_samples, tiny_dataset, tmp_path):
    tr = make_trainer(tiny_samples, tiny_dataset, epochs=1, checkpoint=str(tmp_path / "none"), resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        tr.fit()


def test_corrupt_checkpoint(tiny_samples, tiny_dataset, tmp_path):
    ck = tmp_path / "ck"
    make_trainer(tiny_samples, tiny_dataset, epochs=1, checkpoint=str(ck)).fit()
    data = (ck / CHECKPOINT_NAME).read_bytes()
    (ck / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        make_trainer(tiny_samples, tiny_dataset, epochs=2, checkpoint=str(ck), resume=True).fit()
    (ck / CHECKPOINT_NAME).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)


def test_checkpoint_of_another_model_or_data(tiny_samples, tiny_dataset, tmp_path):
    ck = tmp_path / "ck"
    make_trainer(tiny_samples, tiny_dataset, epochs=1, checkpoint=str(ck)).fit()
    with pytest.raises(CheckpointError, match="same model flags"):
        make_trainer(tiny_samples, tiny_dataset, epochs=2, hidden=64, checkpoint=str(ck), resume=True).fit()
    other = Trainer(tiny_samples, tiny_dataset, DatasetFeatures(tiny_samples, tiny_dataset),
                    TrainConfig(epochs=2, lr=1e-2, threads=1, checkpoint=str(ck), resume=True),
                    data_id={"dataset_fingerprint": "00000000", "samples": {}})
    with pytest.raises(MismatchError, match="packed directory"):
        other.fit()


def test_save_checkpoint_is_atomic(tmp_path):
    save_checkpoint(tmp_path, {"a": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    from diskgnn.train import _unseal  # the file holds the state sealed with its crc32
    state = _unseal(torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True), tmp_path / CHECKPOINT_NAME)
    assert torch.equal(state["a"], torch.ones(3))


def test_damaged_checkpoint_is_refused_not_resumed(tiny_samples, tiny_dataset, tmp_path):
    ck = tmp_path / "ck"
    make_trainer(tiny_samples, tiny_dataset, epochs=1, checkpoint=str(ck)).fit()
    data = bytearray((ck / CHECKPOINT_NAME).read_bytes())
    state = torch.load(ck / CHECKPOINT_NAME, weights_only=True)
    payload = state["payload"].numpy().tobytes()
    at = bytes(data).find(payload[200:264])  # a byte inside the serialized weights
    assert at > 0
    data[at + 5] ^= 0x10
    (ck / CHECKPOINT_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(ck)


# --- the metrics file of a resumed run -------------------------------------------------------------

TIMING_KEYS = {"epoch_time_s", "batches_per_s", "eval_time_s", "stages", "eval_stages", "peak_rss_bytes",
               "epoch_times_s", "stages_mean"}


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (fit has no handler for it)."""


def metric_records_of(text: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in text.splitlines()]


def metric_records(path) -> list[dict]:
    return metric_records_of(path.read_text())


@pytest.mark.parametrize("kill", ["before_epoch_record", "after_unsaved_epoch"])
def test_resumed_run_leaves_the_metrics_of_an_uninterrupted_one(tiny_samples, tiny_dataset, tmp_path, monkeypatch,
                                                                 kill):
    """Killed between saving epoch 2's checkpoint and writing its record, or after writing epoch 3's record
    whose checkpoint never landed (plus half a line): the resumed run's file has every epoch once."""
    import diskgnn.train as train_mod
    kw = dict(epochs=3, seed=5)
    full = tmp_path / "full.jsonl"
    make_trainer(tiny_samples, tiny_dataset, **kw, metrics=str(full)).fit()
    metrics, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    real_write, real_save = train_mod._MetricsLog.write, train_mod.save_checkpoint

    def write(self, record):
        if kill == "before_epoch_record" and record.get("epoch") == 2:
            raise Killed
        real_write(self, record)
        if kill == "after_unsaved_epoch" and record.get("epoch") == 3:
            with open(self.path, "a") as f:
                f.write('{"event": "epo')
            raise Killed

    def save(directory, state):
        if kill == "after_unsaved_epoch" and state["epoch"] == 3:
            return None
        return real_save(directory, state)
    monkeypatch.setattr(train_mod._MetricsLog, "write", write)
    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    with pytest.raises(Killed):
        make_trainer(tiny_samples, tiny_dataset, **kw, metrics=str(metrics), checkpoint=str(ck)).fit()
    monkeypatch.undo()
    assert load_checkpoint(ck)["epoch"] == 2
    # before_epoch_record: the checkpoint holds epoch 2, the file does not; after_unsaved_epoch: the reverse for 3
    assert metrics.read_text().count('"event": "epoch"') == (1 if kill == "before_epoch_record" else 3)
    make_trainer(tiny_samples, tiny_dataset, **kw, metrics=str(metrics), checkpoint=str(ck), resume=True).fit()
    got, want = metric_records(metrics), metric_records(full)
    assert [r.get("epoch") for r in got] == [1, 2, 3, None] and got == want


def test_resume_keeps_the_records_of_earlier_runs(tiny_samples, tiny_dataset, tmp_path):
    """Training further from a finished run's checkpoint appends; older runs' records stay."""
    metrics, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    metrics.write_text('{"event": "final", "epochs": 7, "note": "an older run"}\n')
    make_trainer(tiny_samples, tiny_dataset, epochs=1, metrics=str(metrics), checkpoint=str(ck)).fit()
    before = metrics.read_text()
    make_trainer(tiny_samples, tiny_dataset, epochs=2, metrics=str(metrics), checkpoint=str(ck), resume=True).fit()
    text = metrics.read_text()
    assert text.startswith(before)
    assert [r.get("event") for r in metric_records(metrics)] == ["final", "epoch", "final", "epoch", "final"]
    assert [r.get("epoch") for r in metric_records(metrics)][3] == 2
    # resuming a run that already holds every epoch only reports again: its final record replaces the last one
    make_trainer(tiny_samples, tiny_dataset, epochs=2, metrics=str(metrics), checkpoint=str(ck), resume=True).fit()
    assert metric_records(metrics) == metric_records_of(text)


# --- models that do not fit, losses that diverge --------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(in_dim=7, num_classes=5), r"13-wide feature rows .* in_dim=13"),
    (dict(in_dim=13, num_classes=4), r"returns \(1, 4\) .* 5 classes"),
])
def test_a_model_for_other_data_fails_before_the_first_batch(tiny_samples, tiny_dataset, kwargs, match):
    from diskgnn.models import build_model
    model = build_model("sage", num_layers=2, hidden=8, **kwargs)
    features = DatasetFeatures(tiny_samples, tiny_dataset)
    tr = Trainer(tiny_samples, tiny_dataset, features, TrainConfig(epochs=1, threads=1), model=model)
    with pytest.raises(ConfigError, match=match):
        tr.fit()
    assert features.stats()["bytes_read"] == 0, "no batch may be read before the model is checked"


class _PoisonAfter(torch.nn.Module):
    """A model that returns NaN logits from its ``calls``-th training forward on."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls, self.seen = inner, calls, 0

    def forward(self, blocks, x):
        out = self.inner(blocks, x)
        if self.training and x.shape[0] > 1:  # not the one-row shape check
            self.seen += 1
            if self.seen >= self.calls:
                return out * float("nan")
        return out


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_samples, tiny_dataset, tmp_path):
    from diskgnn.errors import TrainingDivergedError
    from diskgnn.models import build_model
    torch.manual_seed(0)
    nb = tiny_samples.num_batches("train/0")
    model = _PoisonAfter(build_model("sage", in_dim=13, num_classes=5, num_layers=2, hidden=8), nb + 3)
    ckpt = tmp_path / "ckpt"
    tr = Trainer(tiny_samples, tiny_dataset, DatasetFeatures(tiny_samples, tiny_dataset),
                 TrainConfig(epochs=3, threads=1, checkpoint=str(ckpt)), model=model)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 2, batch 3 .*epoch 1 .* is kept"):
        tr.fit()
    assert load_checkpoint(ckpt)["epoch"] == 1


# --- the recipe: init, warm-up, schedule -----------------------------------------------------------

def test_lr_factor_warmup_and_cosine():
    from diskgnn.train import lr_factor
    assert lr_factor("constant", 0.0, 10, 3.5, 0.25) == 1.0
    # warm-up of 2 epochs, 4 steps each: 1/8, 2/8, ... reaching 1 at the end of epoch 2's last step
    assert [lr_factor("constant", 2.0, 10, k / 4, 0.25) for k in range(10)] == \
        [pytest.approx(x) for x in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0)]
    # cosine after the warm-up: 1 when it starts, 1/2 half way, -> 0 at the end
    assert lr_factor("cosine", 2.0, 10, 2.0, 0.25) == pytest.approx(1.0)
    assert lr_factor("cosine", 2.0, 10, 6.0, 0.25) == pytest.approx(0.5)
    assert lr_factor("cosine", 0.0, 10, 9.75, 0.25) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.975)))
    assert lr_factor("cosine", 0.5, 4, 0.0, 0.25) == pytest.approx(0.5)  # the warm-up scales the cosine


@pytest.mark.parametrize("bad,match", [
    (dict(init="he"), "--init 'he' is not one of"),
    (dict(lr_schedule="step"), "--lr-schedule 'step'"),
    (dict(warmup_epochs=-1.0), "--warmup-epochs"),
    (dict(warmup_epochs=float("nan")), "--warmup-epochs"),
    (dict(model="pyg:SAGEConv", init="torch"), "keeps pyg's own initialisation"),
])
def test_recipe_flags_are_checked(bad, match):
    if bad.get("model", "").startswith("pyg:"):
        pytest.importorskip("torch_geometric")
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_flags_left_out_take_the_measured_defaults():
    from diskgnn.models import DEFAULT_INIT
    from diskgnn.train import DEFAULT_DROPOUT, DEFAULT_LR, DEFAULT_LR_SCHEDULE, DEFAULT_WARMUP_EPOCHS
    cfg = TrainConfig.from_cli(cli_args(dropout=None, lr=None))
    assert (cfg.init, cfg.dropout, cfg.lr, cfg.lr_schedule, cfg.warmup_epochs) == \
        (DEFAULT_INIT, DEFAULT_DROPOUT, DEFAULT_LR, DEFAULT_LR_SCHEDULE, DEFAULT_WARMUP_EPOCHS)
    cfg = TrainConfig.from_cli(cli_args(init="xavier", dropout=0.25, lr=0.02, lr_schedule="cosine",
                                        warmup_epochs=0.5))
    assert cfg.recipe() == {"model": "sage", "init": "xavier", "dropout": 0.25, "optimizer": "adam", "lr": 0.02,
                            "lr_schedule": "cosine", "warmup_epochs": 0.5, "epochs": 10, "hidden": 128, "heads": 4,
                            "seed": 0}


def test_warmup_sets_the_rate_of_every_step_and_the_recipe_is_recorded(tiny_samples, tiny_dataset, tmp_path):
    from diskgnn.train import lr_factor
    metrics = tmp_path / "m.jsonl"
    tr = make_trainer(tiny_samples, tiny_dataset, epochs=3, lr=0.02, warmup_epochs=2.0, lr_schedule="cosine",
                      init="xavier", checkpoint=str(tmp_path / "ck"), metrics=str(metrics))
    seen = []
    step = tr.optimizer.step

    def record_step(*a, **k):
        seen.append(tr.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    tr.optimizer.step = record_step
    tr.fit()
    nb = tiny_samples.num_batches("train/0")
    want = [0.02 * lr_factor("cosine", 2.0, 3, e + k / nb, 1 / nb) for e in range(3) for k in range(nb)]
    assert seen == [pytest.approx(x) for x in want]
    assert seen[0] == pytest.approx(0.02 / (2 * nb)) and max(seen) == pytest.approx(0.02 * lr_factor(
        "cosine", 2.0, 3, 2.0 - 1 / nb, 1 / nb))
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert lines[0]["lr"] == pytest.approx(want[nb - 1]) and lines[-1]["recipe"]["init"] == "xavier"
    assert lines[-1]["recipe"]["warmup_epochs"] == 2.0 and lines[-1]["eval_mode"] == "sampled"
    state = load_checkpoint(tmp_path / "ck")
    assert json.loads(state["recipe"]) == tr.cfg.recipe()
    assert json.loads(state["shape"]) == {"in_dim": 13, "num_classes": 5, "num_layers": 2}


def test_a_checkpoint_from_before_the_recipe_flags_resumes_with_its_recipe(tiny_samples, tiny_dataset, tmp_path):
    ck = tmp_path / "ck"
    make_trainer(tiny_samples, tiny_dataset, epochs=1, init="xavier-relu", checkpoint=str(ck)).fit()
    state = load_checkpoint(ck)
    old = {k: v for k, v in json.loads(state["config"]).items()
           if k not in ("init", "lr_schedule", "warmup_epochs")}
    state["config"] = json.dumps(old, sort_keys=True)  # what diskgnn wrote before --init existed
    for key in ("recipe", "shape"):
        del state[key]
    save_checkpoint(ck, state)
    resumed = make_trainer(tiny_samples, tiny_dataset, epochs=2, init="xavier-relu", checkpoint=str(ck), resume=True)
    assert resumed.fit()["epochs"] == 2
    with pytest.raises(CheckpointError, match="resume with the same model flags"):
        make_trainer(tiny_samples, tiny_dataset, epochs=3, init="torch", checkpoint=str(ck), resume=True).fit()
