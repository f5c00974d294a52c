"""The tutorial's path with QIIME 2 artifacts: hashed feature IDs in table.qza, rep-seqs.qza for the
sequences, rooted-tree.qza whose tips are the hashes, taxonomy.qza. Pretrain from the tree, cross-validate,
explain: the same numbers as with plain files whose feature IDs are the sequences."""

from __future__ import annotations

import hashlib
import re
import zipfile

import biom
import numpy as np
import pandas as pd
import pytest
import torch

from aam.cli.main import main
from aam.data import synthetic
from test_e2e_cli import read_tsv

TINY = ["--embedding-dim", "16", "--attention-heads", "2", "--attention-layers", "1", "--device", "cpu",
        "--batch-size", "6", "--max-bp", "32", "--token-limit", "16", "--rarefy-depth", "150", "--seed", "3",
        "--epochs", "1", "--patience", "0"]


def _qza(path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("0f1e2d3c/metadata.yaml", "uuid: 0f1e2d3c\n")
        zf.writestr(f"0f1e2d3c/data/{member}", data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("q2")
    plain = synthetic.write_dataset(
        synthetic.make_dataset(36, n_features=40, seed=3, min_len=20, max_len=30, richness=12, mean_depth=600.0),
        root / "plain")
    table = biom.load_table(str(plain["table"]))
    seqs = [str(f) for f in table.ids(axis="observation")]
    md5 = {s: hashlib.md5(s.encode()).hexdigest() for s in seqs}
    hashed = table.update_ids(md5, axis="observation", inplace=False)
    biom_path = root / "feature-table.biom"
    with biom.util.biom_open(str(biom_path), "w") as fh:
        hashed.to_hdf5(fh, "hashed")
    _qza(root / "table.qza", "feature-table.biom", biom_path.read_bytes())
    _qza(root / "rep-seqs.qza", "dna-sequences.fasta", "".join(f">{md5[s]}\n{s}\n" for s in seqs).encode())
    newick = re.sub(r"(?<=[(,])([ACGT]+)(?=:)", lambda m: md5.get(m.group(1), m.group(1)), plain["tree"].read_text())
    _qza(root / "rooted-tree.qza", "tree.nwk", newick.encode())
    tax = "Feature ID\tTaxon\tConfidence\n" + "".join(f"{md5[s]}\tk__Bacteria; g__G{i}\t0.9\n"
                                                      for i, s in enumerate(seqs))
    _qza(root / "taxonomy.qza", "taxonomy.tsv", tax.encode())
    return {"root": root, "plain": plain, "md5": md5}


def test_pretrain_from_qza_matches_plain_files(files):
    r, p = files["root"], files["plain"]
    q2 = ["--table", str(r / "table.qza"), "--sequences", str(r / "rep-seqs.qza"), "--tree", str(r / "rooted-tree.qza")]
    assert main(["pretrain", *q2, "--output-dir", str(r / "pre_q2"), *TINY]) == 0
    assert main(["pretrain", "--table", str(p["table"]), "--tree", str(p["tree"]), "--output-dir",
                 str(r / "pre_plain"), *TINY]) == 0
    a = torch.load(r / "pre_q2/checkpoints/last.pt", weights_only=True)["trainer_state"]["history"][-1]
    b = torch.load(r / "pre_plain/checkpoints/last.pt", weights_only=True)["trainer_state"]["history"][-1]
    for key in ("train_loss", "val_unifrac_loss", "val_unifrac_r2", "val_nuc_accuracy"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_cv_and_explain_from_qza(files):
    r, p = files["root"], files["plain"]
    data = ["--table", str(r / "table.qza"), "--sequences", str(r / "rep-seqs.qza")]
    assert main(["cv", "--ensemble", "1", *data, "--metadata", str(p["metadata"]), "--metadata-column", "ph", "--group-column",
                 "subject", "--folds", "2", "--rf-trees", "10", "--output-dir", str(r / "cv"), *TINY]) == 0
    metrics = pd.read_csv(r / "cv/cv_metrics.tsv", sep="\t", dtype={"fold": str})
    assert set(metrics["method"]) == {"aam", "random_forest", "boosted_trees", "ridge", "constant"}
    assert np.isfinite(metrics["mae"]).all()
    out = r / "ex.tsv"
    assert main(["explain", "--model", str(r / "cv/fold1/checkpoints/best.pt"), *data, "--taxonomy",
                 str(r / "taxonomy.qza"), "--output", str(out), "--device", "cpu"]) == 0
    rows = read_tsv(out)
    assert rows and all(r_["taxon"].startswith("k__Bacteria; g__G") for r_ in rows)
    assert {r_["feature_id"] for r_ in rows} <= set(files["md5"].values())  # reported by the table's own IDs


def test_unifrac_reads_a_qza_table(files):
    r, p = files["root"], files["plain"]
    assert main(["unifrac", "--table", str(r / "table.qza"), "--tree", str(r / "rooted-tree.qza"), "--output",
                 str(r / "dm_q2.tsv")]) == 0
    assert main(["unifrac", "--table", str(p["table"]), "--tree", str(p["tree"]), "--output",
                 str(r / "dm_plain.tsv")]) == 0
    a = pd.read_csv(r / "dm_q2.tsv", sep="\t", index_col=0)
    b = pd.read_csv(r / "dm_plain.tsv", sep="\t", index_col=0)
    assert list(a.index) == list(b.index) and a.shape[0] == 36
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-12)
