"""Link prediction's training: decoders, loss, ranking metrics, the trainer out of core, resume, data parallel."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diskgnn.decoders import (DECODERS, LinkModel, RankingMetrics, build_decoder, build_link_model, link_loss,
                              ranks, score_pairs)
from diskgnn.errors import ConfigError, MismatchError
from diskgnn.models import TorchBlock
from diskgnn.sampling import SampleConfig, presample
from diskgnn.train import CHECKPOINT_NAME, DatasetFeatures, TrainConfig, Trainer, load_checkpoint

from conftest import run_cli
from test_link import LINK_SAMPLE, LINK_SYNTH, link_dataset, link_samples  # noqa: F401 (module fixtures)


@pytest.fixture(autouse=True)
def restore_numba_threads():
    """A trainer sets the calling thread's numba thread count (--threads); later tests expect the default."""
    import numba
    yield
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def make_trainer(samples, dataset, features=None, **kw):
    kw.setdefault("lr", 1e-2)
    kw.setdefault("threads", 1)
    kw.setdefault("hidden", 16)
    return Trainer(samples, dataset, features or DatasetFeatures(samples, dataset), TrainConfig(**kw))


# --- metrics and decoders -------------------------------------------------------------------------

def brute_force_metrics(scores: np.ndarray) -> dict:
    """MRR and Hits@K by counting, one positive at a time (OGB's rule: mean of optimistic and pessimistic rank)."""
    rr, hits = [], {1: [], 10: [], 50: []}
    for row in scores:
        pos, neg = row[0], row[1:]
        higher = sum(1 for s in neg if s > pos)
        ties = sum(1 for s in neg if s == pos)
        rank = ((1 + higher) + (1 + higher + ties)) / 2
        rr.append(1 / rank)
        for k in hits:
            hits[k].append(rank <= k)
    return {"mrr": float(np.mean(rr)), **{f"hits@{k}": float(np.mean(v)) for k, v in hits.items()}}


def test_ranking_metrics_match_brute_force_with_ties():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, (53, 61)).astype(np.float32)  # small integers: many ties
    scores[0] = 3.0  # all tied: rank (1 + 61) / 2 = 31
    m = RankingMetrics()
    for lo in range(0, 53, 17):  # accumulated over uneven batches
        m.add(torch.from_numpy(scores[lo:lo + 17]))
    got = m.result("val")
    want = brute_force_metrics(scores)
    assert got["val_seeds"] == 53
    assert got["val_mrr"] == pytest.approx(want["mrr"], abs=1e-12)
    for k in (1, 10, 50):
        assert got[f"val_hits@{k}"] == pytest.approx(want[f"hits@{k}"], abs=1e-12)
    assert float(ranks(torch.from_numpy(scores[:1]))[0]) == 31.0


def test_loss_is_binary_cross_entropy_over_positives_and_negatives():
    scores = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.2, -2.0]])
    manual = -(torch.log(torch.sigmoid(scores[:, 0])).sum() + torch.log(1 - torch.sigmoid(scores[:, 1:])).sum()) / 6
    assert torch.allclose(link_loss(scores), manual)


def test_decoders_score_pairs():
    torch.manual_seed(0)
    h = torch.randn(9, 8)
    pairs = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0], [8, 8, 1, 7]])
    dot = score_pairs(build_decoder("dot", 8), h, pairs)
    assert dot.shape == (3, 3)
    assert torch.allclose(dot[1, 2], (h[4] * h[0]).sum())
    assert torch.allclose(score_pairs(build_decoder("distmult", 8), h, pairs), dot)  # r starts at ones
    mlp = build_decoder("mlp", 8)
    swapped = pairs[:, [1, 0]]
    swapped = torch.cat([swapped, swapped[:, :1]], 1)
    assert torch.allclose(score_pairs(mlp, h, pairs)[:, 0], score_pairs(mlp, h, swapped)[:, 0])  # symmetric
    with pytest.raises(ConfigError, match="does not exist"):
        build_decoder("transe", 8)


@pytest.mark.parametrize("encoder", ["sage", "gcn", "gat"])
def test_link_model_gradients_reach_encoder_and_decoder(encoder):
    model = build_link_model(encoder, in_dim=5, num_layers=2, hidden=6, decoder="mlp")
    indptr, indices = np.array([0, 2, 3, 4], dtype=np.int64), np.array([1, 3, 0, 2], dtype=np.int32)
    blocks = [TorchBlock.from_csr(indptr, indices, 4, 3),
              TorchBlock.from_csr(indptr[:3], np.array([1, 2, 0], dtype=np.int32), 3, 2)]
    scores = model(blocks, torch.randn(4, 5), torch.tensor([[0, 1, 1], [1, 0, 0]]))
    link_loss(scores).backward()
    assert scores.shape == (2, 2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- the trainer ------------------------------------------------------------------------------------

def test_trainer_learns_and_reports_link_metrics(link_samples, link_dataset, tmp_path):
    metrics = tmp_path / "m.jsonl"
    tr = make_trainer(link_samples, link_dataset, epochs=3, decoder="mlp", metrics=str(metrics))
    report = tr.fit()
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["epoch"] * 3 + ["final"]
    final = lines[-1]
    for key in ("best_val_mrr", "test_mrr", "test_hits@1", "test_hits@10", "test_hits@50", "epoch_time_s"):
        assert isinstance(final[key], float), key
    assert final["task"] == "link" and final["decoder"] == "mlp"
    assert lines[2]["loss"] < lines[0]["loss"]
    # learned something: a random scorer gets MRR about H(18)/18 = 0.19 with 17 candidates
    assert report["best_val_mrr"] > 0.25
    best = max(lines[:3], key=lambda r: r["val_mrr"])
    assert final["test_mrr"] == best["test_mrr"] and final["best_epoch"] == best["epoch"]
    assert lines[0]["val_seeds"] == link_dataset.link_array("val_pos").shape[0]


def test_evaluation_equals_a_brute_force_ranking_of_every_held_out_edge(link_samples, link_dataset):
    tr = make_trainer(link_samples, link_dataset, epochs=1, decoder="dot")
    tr.fit()
    got = tr.evaluate()
    ds = link_dataset
    tr.model.eval()
    for part in ("val", "test"):
        rows, first = [], []
        with torch.no_grad():
            for i in range(link_samples.num_batches(part)):
                mb = link_samples.batch(part, i)
                h = tr.model.embed([TorchBlock.from_block(b) for b in mb.blocks],
                                   torch.from_numpy(np.asarray(ds.features[mb.input_nodes], dtype=np.float32)))
                ids = mb.input_nodes
                index = {int(v): j for j, v in enumerate(ids)}
                for (s, d), cands in zip(ids[mb.pairs[:, :2]], ids[mb.pairs[:, 2:]]):
                    first.append((int(s), int(d)))
                    hs = h[index[int(s)]]
                    rows.append([float(hs @ h[index[int(v)]]) for v in (d, *cands)])
        assert first == [tuple(map(int, e)) for e in ds.link_array(f"{part}_pos")]  # every held-out edge, once
        want = brute_force_metrics(np.array(rows))
        assert got[f"{part}_mrr"] == pytest.approx(want["mrr"], rel=1e-5)
        assert got[f"{part}_hits@10"] == pytest.approx(want["hits@10"], abs=1.5 / len(rows))


def test_out_of_core_store_gives_the_in_memory_results(link_samples, link_dataset, tmp_path):
    from diskgnn.packing import PackConfig, pack
    from diskgnn.store import FeatureStore
    packed = pack(link_samples.path, tmp_path / "p", PackConfig(host_cache="5%"))
    assert np.array_equal(np.asarray(packed.samples.access_counts), np.asarray(link_samples.access_counts))
    store = FeatureStore(packed, torch.device("cpu"))
    a = make_trainer(link_samples, link_dataset, store, epochs=2, decoder="distmult").fit()
    b = make_trainer(link_samples, link_dataset, epochs=2, decoder="distmult").fit()
    for key in ("best_val_mrr", "test_mrr", "test_hits@1", "test_hits@10", "test_hits@50", "final_loss"):
        assert a[key] == b[key], key
    assert a["bytes_read_per_epoch"] > 0


def test_link_resume_gives_identical_weights(link_samples, link_dataset, tmp_path):
    kw = dict(epochs=3, dropout=0.2, seed=4, decoder="mlp")
    full = make_trainer(link_samples, link_dataset, **kw)
    full_report = full.fit()
    ck = tmp_path / "ck"
    make_trainer(link_samples, link_dataset, **{**kw, "epochs": 2}, checkpoint=str(ck)).fit()
    resumed = make_trainer(link_samples, link_dataset, **kw, checkpoint=str(ck), resume=True)
    report = resumed.fit()
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert report["test_mrr"] == full_report["test_mrr"] and load_checkpoint(ck)["epoch"] == 3
    other = make_trainer(link_samples, link_dataset, **{**kw, "decoder": "dot"}, checkpoint=str(ck), resume=True)
    with pytest.raises(Exception, match="decoder"):
        other.fit()


def test_task_mismatches_are_errors(link_samples, link_dataset, tiny_dataset, tmp_path):
    with pytest.raises(MismatchError, match="sampled for link prediction"):
        make_trainer(link_samples, link_dataset, epochs=1, task="node")
    nc = presample(tiny_dataset.path, tmp_path / "nc", SampleConfig(fanouts=(3,), batch_size=200))
    with pytest.raises(MismatchError, match="sampled for node classification"):
        make_trainer(nc, tiny_dataset, epochs=1, task="link")
    with pytest.raises(ConfigError, match="--decoder applies to link prediction only"):
        make_trainer(nc, tiny_dataset, epochs=1, decoder="mlp")
    with pytest.raises(ConfigError, match="--decoder applies"):
        TrainConfig(task="node", decoder="dot")


def test_cli_link_pipeline_and_task_errors(link_dataset, tiny_dataset, tmp_path):
    work = tmp_path / "w"
    rc, err = run_cli("run", "--dataset", link_dataset.path, "--workdir", work, "--task", "link", "--fanouts", "3,3",
                      "--batch-size", "301", "--epochs", "1", "--hidden", "8", "--decoder", "dot", "--threads", "1")
    assert rc == 0, err
    final = json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["event"] == "final" and final["task"] == "link" and final["test_hits@50"] is not None
    rc, err = run_cli("train", work / "packed", "--task", "node", "--epochs", "1")
    assert rc == 2 and "sampled for link prediction" in err
    rc, err = run_cli("run", "--dataset", link_dataset.path, "--workdir", work, "--task", "link", "--fanouts", "3,3",
                      "--batch-size", "301", "--epochs", "1", "--hidden", "8", "--edge-split", "0.5,0.1,0.1")
    assert rc == 2 and "--edge-split applies to a generated --scale" in err
    # node classification packed directory trained as link
    rc, err = run_cli("run", "--dataset", tiny_dataset.path, "--workdir", tmp_path / "nc", "--fanouts", "3",
                      "--batch-size", "400", "--epochs", "1", "--hidden", "8", "--threads", "1")
    assert rc == 0, err
    rc, err = run_cli("train", tmp_path / "nc" / "packed", "--task", "link", "--epochs", "1")
    assert rc == 2 and "sampled for node classification" in err and "--task link" in err


# --- data parallel ----------------------------------------------------------------------------------

def test_two_ranks_equal_single_process_gradient_averaging(link_samples, link_dataset, tmp_path):
    from diskgnn.distributed import launch_local
    kw = dict(hidden=8, lr=1e-2, decoder="dot", threads=1)
    out = tmp_path / "run"
    cfg = TrainConfig(nproc=2, epochs=1, checkpoint=str(out / "ck"), metrics=str(out / "m.jsonl"), **kw)
    launch_local(link_samples.path, cfg, features="memmap")
    state = load_checkpoint(out / "ck")
    ref = Trainer(link_samples, link_dataset, DatasetFeatures(link_samples, link_dataset), TrainConfig(epochs=1, **kw))
    part, perm = ref.epoch_order(0)
    per_rank = [[int(g) for g in perm if g % 2 == r] for r in range(2)]
    steps = math.ceil(len(perm) / 2)
    per_rank = [(mine * steps)[:steps] for mine in per_rank]
    ref.model.train()
    for k in range(steps):
        ref.optimizer.zero_grad(set_to_none=True)
        losses = []
        for r in range(2):
            mb = link_samples.batch(part, per_rank[r][k])
            x = torch.from_numpy(np.asarray(link_dataset.features[mb.input_nodes], dtype=np.float32))
            scores = ref.model([TorchBlock.from_block(b) for b in mb.blocks], x,
                               torch.from_numpy(mb.pairs.astype(np.int64)))
            losses.append(link_loss(scores))
        (sum(losses) / 2).backward()
        ref.optimizer.step()
    for name, want in ref.model.state_dict().items():
        torch.testing.assert_close(state["model"][name], want, rtol=1e-5, atol=1e-6, msg=name)
    final = json.loads((out / "m.jsonl").read_text().splitlines()[-1])
    ev = ref.evaluate()
    assert final["task"] == "link" and final["best_val_mrr"] == pytest.approx(ev["val_mrr"], rel=1e-4)
