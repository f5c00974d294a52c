"""Batch contract: shared ASVs tokenized once, offsets, no padding to token_limit, selection modes."""

from __future__ import annotations

import biom
import numpy as np
import pytest
import torch

from aam.data.batching import pad_packed, unpad
from aam.data.dataset import SampleDataset, collate
from aam.data.tokenizer import START, tokenize
from aam.errors import AAMError, InputError

SEQS = ["ACGTAC", "GGA", "TTTTTTTTT", "CA", "ACGGGT", "GATTACA"]


class FakeDistances:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        n = len(ids)
        self.m = np.arange(n * n, dtype=np.float64).reshape(n, n)
        self.m = (self.m + self.m.T) / 100.0
        np.fill_diagonal(self.m, 0.0)

    def pairs(self, sample_ids: list[str]) -> np.ndarray:
        idx = [self.ids.index(s) for s in sample_ids]
        return self.m[np.ix_(idx, idx)]


def _table() -> biom.Table:
    #                 S0  S1  S2  S3
    data = np.array(
        [
            [5, 0, 1, 0],  # ACGTAC
            [5, 2, 0, 0],  # GGA
            [0, 9, 0, 0],  # TTTTTTTTT
            [7, 2, 0, 3],  # CA
            [1, 0, 0, 0],  # ACGGGT
            [2, 2, 0, 0],  # GATTACA
        ]
    )
    return biom.Table(data, SEQS, ["S0", "S1", "S2", "S3"])


def _dataset(**kw) -> SampleDataset:
    tokens, _, _ = tokenize(SEQS, max_bp=12)
    return SampleDataset(_table(), tokens, **kw)


def test_items_ordered_by_abundance_ties_by_table_order() -> None:
    ds = _dataset(token_limit=10)
    it = ds[0]
    assert it["sample_id"] == "S0"
    assert it["features"].tolist() == [3, 0, 1, 5, 4]  # 7, 5 (f0), 5 (f1), 2, 1
    assert it["counts"].tolist() == [7, 5, 5, 2, 1]
    assert it["tokens"].shape == (5, 13)


def test_collate_contract() -> None:
    ds = _dataset(token_limit=10)
    dist = FakeDistances(ds.sample_ids)
    batch = collate([ds[0], ds[3], ds[2]], distances=dist)
    assert batch["sample_ids"] == ["S0", "S3", "S2"]
    assert batch["offsets"].tolist() == [0, 5, 6, 7]
    assert batch["offsets"].dtype == torch.long
    # Unique ASVs of the batch: f0, f1, f3, f4, f5 (CA in S0 and S3, ACGTAC in S0 and S2: encoded once).
    assert batch["tokens"].shape[0] == 5
    assert batch["tokens"].dtype == torch.long
    # Lb = longest ASV in the batch (GATTACA, 7) + 1, not max_bp + 1.
    assert batch["tokens"].shape[1] == 8
    assert (batch["tokens"][:, 0] == START).all()
    rows = batch["tokens"][batch["asv_index"]]
    decoded = ["".join("ACGT"[t - 1] for t in r[1:].tolist() if t) for r in rows]
    assert decoded == ["CA", "ACGTAC", "GGA", "GATTACA", "ACGGGT", "CA", "ACGTAC"]
    assert batch["counts"].dtype == torch.float32
    assert batch["counts"].tolist() == [7, 5, 5, 2, 1, 3, 1]
    assert batch["unifrac_target"].dtype == torch.float32
    np.testing.assert_allclose(batch["unifrac_target"].numpy(), dist.pairs(["S0", "S3", "S2"]), rtol=1e-6)
    assert "y" not in batch and "categorical" not in batch


def test_token_limit_abundance_first_random() -> None:
    ab = _dataset(token_limit=2)
    assert ab[0]["features"].tolist() == [3, 0]
    first = _dataset(token_limit=2, asv_selection="first")
    assert first[0]["features"].tolist() == [0, 1]  # table order picks f0, f1; both count 5
    assert first[1]["features"].tolist() == [1, 2][::-1]  # f1 (2), f2 (9) -> by abundance: f2, f1
    rnd = _dataset(token_limit=3, asv_selection="random", seed=7)
    a = rnd[0]["features"].tolist()
    assert rnd[0]["features"].tolist() == a  # same epoch, same subset
    assert len(set(a)) == 3 and set(a) <= {0, 1, 3, 4, 5}
    counts = rnd[0]["counts"]
    assert (np.diff(counts) <= 0).all()
    seen = set()
    for epoch in range(20):
        rnd.set_epoch(epoch)
        seen.add(tuple(sorted(rnd[0]["features"].tolist())))
    assert len(seen) > 1
    batch = collate([ab[i] for i in range(4)])
    assert (batch["offsets"][1:] - batch["offsets"][:-1]).tolist() == [2, 2, 1, 1]


def test_targets_and_categorical() -> None:
    ds = _dataset(token_limit=4, targets=np.array([0.5, 1.5, 2.5, 3.5]), categorical=np.array([[1, 0]] * 4))
    batch = collate([ds[1], ds[0]])
    assert batch["y"].dtype == torch.float32 and batch["y"].tolist() == [1.5, 0.5]
    assert batch["categorical"].shape == (2, 2) and batch["categorical"].dtype == torch.long
    ds = _dataset(token_limit=4, targets=np.array([0, 1, 2, 1]))
    assert collate([ds[3]])["y"].dtype == torch.long
    with pytest.raises(InputError, match="S1"):
        _dataset(token_limit=4, targets=np.array([0.5, np.nan, 2.5, 3.5]))


def test_bad_arguments() -> None:
    with pytest.raises(AAMError, match="asv_selection"):
        _dataset(token_limit=4, asv_selection="best")
    tokens, _, _ = tokenize(SEQS[:2], max_bp=12)
    with pytest.raises(AAMError, match="token_table"):
        SampleDataset(_table(), tokens, token_limit=4)
    empty = biom.Table(np.array([[1, 0], [2, 0]]), ["AC", "GT"], ["A", "B"])
    with pytest.raises(InputError, match="no reads: B"):
        SampleDataset(empty, tokenize(["AC", "GT"], 4)[0], token_limit=4)


def test_pad_packed_roundtrip() -> None:
    values = torch.arange(7, dtype=torch.float32).unsqueeze(-1).repeat(1, 3)
    offsets = torch.tensor([0, 5, 5, 7])
    padded, valid = pad_packed(values, offsets)
    assert padded.shape == (3, 5, 3) and valid.shape == (3, 5)
    assert valid.sum(1).tolist() == [5, 0, 2]
    assert padded[2, 1, 0] == 6 and padded[1].abs().sum() == 0
    assert torch.equal(unpad(padded, valid), values)


def test_dataloader_with_workers_free_collate() -> None:
    ds = _dataset(token_limit=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate_fn(None))
    batches = list(loader)
    assert [b["sample_ids"] for b in batches] == [["S0", "S1"], ["S2", "S3"]]


def test_random_selection_reproducible_across_instances() -> None:
    a = _dataset(token_limit=2, asv_selection="random", seed=11)
    b = _dataset(token_limit=2, asv_selection="random", seed=11)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert [a[i]["features"].tolist() for i in range(4)] == [b[i]["features"].tolist() for i in range(4)]
