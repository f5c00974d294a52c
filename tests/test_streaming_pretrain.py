"""`aam pretrain --stream`: an HDF5 table's samples read from the file per batch (aam.data.streaming). Items equal
the in-memory dataset's, rarefaction is per sample and reproducible anywhere, UniFrac targets built chunk by chunk
equal the whole table's, DataLoader workers and DDP ranks read only their own samples, and the command trains,
resumes, and runs on 2 ranks."""

from __future__ import annotations

import pickle
import subprocess
import sys

import biom
import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.data import streaming, synthetic
from aam.data.prepare import Preprocessing, make_dataset, prepare_table
from aam.ops.unifrac.tree_distances import Chunks, TreeDistances
from aam.training.batches import EpochSampler
from subprocess_env import child_env

pytestmark = pytest.mark.native()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ds = synthetic.make_dataset(60, n_features=80, seed=3, min_len=20, max_len=40, richness=40, mean_depth=600.0)
    return synthetic.write_dataset(ds, tmp_path_factory.mktemp("stream") / "data")


def _by_id(dataset, item) -> dict:
    fids = [dataset.feature_ids[int(f)] for f in item["features"]]
    return {"sample": item["sample_id"], "features": fids, "counts": item["counts"].tolist(),
            "tokens": item["tokens"].tolist()}


@pytest.mark.parametrize("mode", ["abundance", "first", "random"])
def test_items_equal_the_in_memory_dataset_without_rarefaction(data, mode):
    pre = Preprocessing(rarefy_depth=0, max_bp=40, token_limit=12, asv_sampling=mode, seed=5)
    prepared = prepare_table(data["table"], None, 0, 0, 40)
    table = streaming.open_streamed(data["table"], None, 0, 0, 40)
    ids = table.sample_ids[::-2][:25]  # a subset, given in another order: both datasets keep the table's
    memory, streamed = make_dataset(prepared, ids, pre), streaming.StreamingDataset(table, ids, pre)
    assert len(streamed) == len(memory) == 25
    for epoch in (0, 1):
        memory.set_epoch(epoch)
        streamed.set_epoch(epoch)
        for i in range(len(ids)):
            assert _by_id(streamed, streamed[i]) == _by_id(memory, memory[i])
    assert np.array_equal(streamed.n_asvs(), memory.n_asvs())


def test_rarefaction_is_per_sample_reproducible_and_drops_shallow_samples(data, caplog):
    full = biom.load_table(str(data["table"]))
    totals = dict(zip(full.ids(), full.sum(axis="sample"), strict=True))
    depth = int(np.percentile(list(totals.values()), 30))
    table = streaming.open_streamed(data["table"], None, depth, 7, 40)
    assert set(table.dropped) == {s for s, t in totals.items() if t < depth} != set()
    assert "drops" in caplog.text
    pre = Preprocessing(token_limit=1000, max_bp=40)
    a = streaming.StreamingDataset(table, table.sample_ids, pre)
    b = pickle.loads(pickle.dumps(streaming.StreamingDataset(table, table.sample_ids, pre)))  # as a spawned worker
    for i, sid in enumerate(table.sample_ids):
        item, other = a[i], b[i]
        assert item["sample_id"] == other["sample_id"] == sid
        assert item["counts"].sum() == depth and (item["counts"] > 0).all()
        assert np.array_equal(item["features"], other["features"]) and np.array_equal(item["counts"], other["counts"])
        raw = full.data(sid, axis="sample")  # a subsample: never more reads of a feature than the sample had
        assert (raw[item["features"]] >= item["counts"]).all()
    again = streaming.open_streamed(data["table"], None, depth, 8, 40)  # another seed, another draw
    c = streaming.StreamingDataset(again, again.sample_ids, pre)
    assert any(not np.array_equal(a[i]["counts"], c[i]["counts"]) for i in range(len(a)))


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized", "generalized"])
def test_unifrac_state_built_in_chunks_equals_the_whole_tables(data, metric, monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK", 7)  # 60 samples in 9 chunks
    table = streaming.open_streamed(data["table"], None, 0, 0, 40)
    pre = Preprocessing(token_limit=10, max_bp=40)
    for visible in (True, False):
        chunked = TreeDistances(Chunks(streaming.visible_chunks(table, pre, visible)), data["tree"], metric)
        whole_table = make_dataset(prepare_table(data["table"], None, 0, 0, 40), table.sample_ids, pre)
        whole = TreeDistances(whole_table.visible_table() if visible else biom.load_table(str(data["table"])),
                              data["tree"], metric)
        ids = table.sample_ids
        assert chunked.ids == ids
        np.testing.assert_allclose(chunked.pairs(ids), whole.pairs(ids), rtol=1e-12, atol=1e-14)


def test_workers_and_ranks_read_only_their_own_samples(data, monkeypatch):
    table = streaming.open_streamed(data["table"], None, 300, 0, 40)
    dataset = streaming.StreamingDataset(table, table.sample_ids, Preprocessing(token_limit=8, max_bp=40))
    expected = {dataset[i]["sample_id"]: dataset[i]["counts"] for i in range(len(dataset))}
    seen = []
    for rank in range(2):
        sampler = EpochSampler(len(dataset), shuffle=True, seed=3, rank=rank, world=2)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=2,
                                             collate_fn=lambda items: items)
        ids = [item["sample_id"] for batch in loader for item in batch
               if np.array_equal(item["counts"], expected[item["sample_id"]])]  # the file, read in a worker
        assert ids == [table.sample_ids[i] for i in sampler.indices()]
        seen.append(set(ids))
    assert seen[0] | seen[1] == set(table.sample_ids) and len(seen[0] & seen[1]) <= 1  # one pad sample at most


def _pretrain_args(data, out) -> list[str]:
    return ["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--output-dir", str(out),
            "--device", "cpu", "--batch-size", "8", "--embedding-dim", "16", "--attention-heads", "2",
            "--attention-layers", "1", "--max-bp", "40", "--token-limit", "10", "--rarefy-depth", "300", "--stream"]


def test_pretrain_stream_trains_and_resumes_streaming(data, tmp_path):
    out = tmp_path / "run"
    assert main([*_pretrain_args(data, out), "--epochs", "1", "--num-workers", "2"]) == 0
    assert main([*_pretrain_args(data, out), "--epochs", "2", "--resume", "auto"]) == 0
    assert (out / "training.log").read_text().count("counts read from the file per batch") == 2
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    assert [row["epoch"] for row in ck["trainer_state"]["history"]] == [1, 2]
    assert ck["preprocessing"]["rarefy_depth"] == 300


def test_pretrain_stream_with_a_precomputed_matrix(data, tmp_path):
    out = tmp_path / "matrix"
    assert main(["unifrac", "--table", str(data["table"]), "--tree", str(data["tree"]), "--output",
                 str(tmp_path / "u.tsv")]) == 0
    args = _pretrain_args(data, out)
    args[args.index("--tree"):args.index("--tree") + 2] = ["--unifrac-matrix", str(tmp_path / "u.tsv")]
    assert main([*args, "--epochs", "1"]) == 0
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    assert ck["preprocessing"]["extra"]["unifrac"]["source"] == "matrix"
    assert np.isfinite(ck["trainer_state"]["history"][0]["val_unifrac_loss"])


def test_stream_needs_an_hdf5_table(data, tmp_path, capsys):
    tsv = tmp_path / "table.tsv"
    tsv.write_text(biom.load_table(str(data["table"])).to_tsv())
    args = _pretrain_args(data, tmp_path / "run")
    args[args.index("--table") + 1] = str(tsv)
    assert main([*args, "--epochs", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stream reads BIOM HDF5 tables" in err[0] and str(tsv) in err[0]


@pytest.mark.distributed
@pytest.mark.slow
def test_pretrain_stream_on_two_ranks(data, tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "aam.cli.main", *_pretrain_args(data, out), "--epochs", "1",
                          "--nproc-per-node", "2"], capture_output=True, text=True, timeout=300,
                         env=child_env(AAM_NO_PROGRESS="1", OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "training.log").read_text()
    assert "rank 0/2" in log and "counts read from the file per batch" in log
    ck = torch.load(out / "checkpoints/last.pt", weights_only=False)
    (row,) = ck["trainer_state"]["history"]
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
