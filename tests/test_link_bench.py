"""Link prediction's benchmarks: the DGL baseline's batches and metrics, the sampling bench, the real graph reader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import requires_dgl
from test_link import LINK_SAMPLE, link_dataset, link_samples  # noqa: F401 (module fixtures)


@pytest.fixture(autouse=True)
def restore_numba_threads():
    """A trainer sets the calling thread's numba thread count (--threads); later tests expect the default."""
    import numba
    yield
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_pajek_and_tab_readers():
    from diskgnn.bench.realgraph import parse_pajek, parse_tab_features
    from diskgnn.errors import InputFormatError
    n, edges = parse_pajek("*network x\n*vertices 4\n1 a\n2 b\n3 c\n4 d\n*edges\n1 2 1.0\n3 4 1.0\n2 4\n", "t.net")
    assert n == 4 and edges.tolist() == [[0, 2, 1], [1, 3, 3]]
    tab = "a\tb\tname\ncontinuous\tcontinuous\tstring\n\t\t\n1\t0\tx\n0\t3\ty\n"
    feat = parse_tab_features(tab, 2, "t.tab")
    assert feat.shape == (2, 2) and np.allclose(feat, np.log1p([[1, 0], [0, 3]]))
    with pytest.raises(InputFormatError, match="not an edge"):
        parse_pajek("*vertices 2\n*edges\n1 x\n", "t.net")


def test_link_sampling_bench_counts_what_presampling_samples(link_dataset, link_samples):
    from diskgnn.bench.sampling import bench
    cfg = link_samples.config
    result = bench(link_dataset.path, fanouts=cfg.fanouts, batch_size=cfg.batch_size, batches=3, repeats=1, passes=1,
                   threads=1, systems=("diskgnn",), seed=cfg.seed, task="link", negatives=cfg.negatives)
    want = sum(link_samples.batch("train/0", i).num_edges + link_samples.batch("train/0", i).num_pairs * cfg.negatives
               for i in range(3))
    assert result["systems"]["diskgnn"]["sampled_edges"] == want
    assert result["task"] == "link" and result["systems"]["diskgnn"]["edges_per_second"] > 0


def test_worker_trains_link_batches(link_samples, capsys):
    from diskgnn.bench.worker import main
    assert main(["--system", "in-memory", "--kind", "train", "--samples", str(link_samples.path), "--epochs", "1",
                 "--warmup", "0", "--task", "link", "--decoder", "mlp", "--hidden", "8", "--max-batches", "2"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["measured_batches_per_epoch"] == 2 and result["bytes_useful"] > 0


@requires_dgl
def test_dgl_edge_sampler_excludes_the_batch_edges_and_keeps_sources(link_dataset):
    from diskgnn.bench.dgl_link import dgl_graph, edge_ids, edge_sampler
    ds = link_dataset
    g = dgl_graph(ds)
    train = np.asarray(ds.link_array("train_pos"))[:40]
    eids = torch.from_numpy(edge_ids(ds, train))
    assert np.array_equal(np.stack([g.find_edges(eids)[0].numpy(), g.find_edges(eids)[1].numpy()], 1), train)
    sampler = edge_sampler(ds, [-1, -1], 3)
    input_nodes, pair_graph, neg_graph, blocks = sampler.sample(g, eids)
    nid = blocks[-1].dstdata["_ID"].numpy()
    ps, pd = (x.numpy() for x in pair_graph.edges())
    assert set(zip(nid[ps].tolist(), nid[pd].tolist())) == set(map(tuple, train.tolist()))
    ns, _ = neg_graph.edges()
    assert np.array_equal(ns.numpy().reshape(-1, 3)[:, 0], ps)
    positives = set(map(tuple, train.tolist()))
    for b in blocks:  # with fanout -1 every other in-edge is there, the seed edges are not
        src, dst = b.edges()
        glob = set(zip(b.srcdata["_ID"][src].tolist(), b.dstdata["_ID"][dst].tolist()))
        assert not glob & positives and glob


@requires_dgl
def test_dgl_and_diskgnn_rank_the_same_candidates_alike(link_dataset, tmp_path):
    """With every neighbour sampled (fanout -1) both stacks see the same graph: the same weights give the same MRR."""
    from diskgnn.bench.dgl_link import DGLLinkRunner
    from diskgnn.sampling import SampleConfig, presample
    from diskgnn.train import DatasetFeatures, TrainConfig, Trainer
    ds = link_dataset
    cfg = SampleConfig(fanouts=(-1, -1), batch_size=211, task="link", negatives=1, eval_batch_size=23)
    samples = presample(ds.path, tmp_path / "s", cfg)
    tr = Trainer(samples, ds, DatasetFeatures(samples, ds), TrainConfig(epochs=1, hidden=12, decoder="mlp",
                                                                        threads=1, lr=1e-2))
    tr.fit()
    ours = tr.evaluate()
    feats = torch.from_numpy(np.asarray(ds.features, dtype=np.float32))
    runner = DGLLinkRunner(ds, fanouts=(-1, -1), batch_size=211, negatives=1, eval_batch_size=23, hidden=12,
                           decoder="mlp", features=feats)
    runner.model.load_state_dict(tr.model.state_dict())
    theirs = runner.evaluate()
    for key in ("val_mrr", "test_mrr", "test_hits@10"):
        assert theirs[key] == pytest.approx(ours[key], rel=1e-4), key
    assert theirs["val_seeds"] == ours["val_seeds"] == ds.link_array("val_pos").shape[0]


@requires_dgl
def test_link_sampling_bench_runs_dgl_edge_prediction_sampler(link_dataset):
    from diskgnn.bench.sampling import bench
    result = bench(link_dataset.path, fanouts=(4, 3), batch_size=97, batches=2, repeats=1, passes=1, threads=1,
                   systems=("diskgnn", "dgl"), task="link", negatives=2)
    ours, theirs = result["systems"]["diskgnn"], result["systems"]["dgl"]
    assert ours["batches"] == theirs["batches"] == 2 and ours["positive_edges"] == theirs["positive_edges"] == 194
    # same fanouts and seeds of the same size: the sampled edge counts are alike (not equal: other negatives)
    assert 0.5 < theirs["sampled_edges"] / ours["sampled_edges"] < 2 and result["ratio_edges_per_second"] > 0
