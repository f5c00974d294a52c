"""The real ibd-2538 dataset: table (sequence IDs), metadata (sample_name, 'Missing: Not provided')."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aam.data.biom_io import load_table, rarefy
from aam.data.dataset import SampleDataset, collate
from aam.data.metadata import load_metadata, numeric_target, require_samples
from aam.data.sequences import feature_sequences
from aam.data.split import split_samples
from aam.data.targets import CategoryEncoder, LabelEncoder
from aam.data.tokenizer import START, tokenize

pytestmark = pytest.mark.realdata


def test_ibd_table_metadata_batch(ibd_dir: Path) -> None:
    table = load_table(ibd_dir / "table.biom")
    assert table.shape == (10099, 470)
    seqs = feature_sequences(table.ids(axis="observation"), table_path=ibd_dir / "table.biom")
    tokens, lengths, report = tokenize(seqs, max_bp=150)
    assert (lengths == 100).all() and report.n_truncated == 0
    assert (tokens[:, 0] == START).all()

    md = load_metadata(ibd_dir / "metadata.tsv")
    assert len(md) == 646
    sample_ids = [str(s) for s in table.ids()]
    require_samples(md, sample_ids)
    age, mask = numeric_target(md, "age", sample_ids)
    assert mask.sum() > 400 and np.nanmin(age[mask]) >= 18
    # 'Missing: Not provided' is read as missing, not as a category.
    assert not md.isin(["Missing: Not provided"]).any().any()
    labels = LabelEncoder(column="ibd").fit(md.loc[sample_ids, "ibd"])
    assert labels.classes == ["Control", "Crohns"]
    cats = CategoryEncoder().fit(md.loc[sample_ids], ["sex"]).transform(md, sample_ids)
    assert cats.shape == (470, 1) and cats.max() >= 2

    rare, info = rarefy(table, 5000, seed=0, path=ibd_dir / "table.biom")
    assert info.n_kept == rare.shape[1] and 400 < info.n_kept < 470 and len(info.dropped_ids) == 470 - info.n_kept
    train, val = split_samples(list(rare.ids()), 0.2, seed=0, groups=md.loc[list(rare.ids()), "host_subject_id"].tolist())
    subj = md["host_subject_id"]
    assert not set(subj[train]) & set(subj[val])

    rare_tokens, _, _ = tokenize(feature_sequences(rare.ids(axis="observation")), max_bp=150)
    ds = SampleDataset(rare, rare_tokens, token_limit=256)
    batch = collate([ds[i] for i in range(16)])
    assert batch["offsets"][-1] == batch["asv_index"].numel() == batch["counts"].numel()
    assert batch["tokens"].shape[1] == 101
    assert batch["tokens"].shape[0] < batch["asv_index"].numel()  # shared ASVs encoded once
    n0 = int(batch["offsets"][1])
    assert n0 <= 256 and batch["counts"][:n0].sum() <= 5000
    assert (batch["counts"][:n0].sum() == 5000) == (ds.n_asvs()[0] <= 256)
