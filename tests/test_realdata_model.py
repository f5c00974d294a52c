"""Real data (ibd-2538): pretrain a few steps on scikit-bio UniFrac of a sample subset, fine-tune an `ibd`
classifier split by host_subject_id, predict. Tiny model and step counts keep it near a minute."""

from __future__ import annotations

import csv

import biom
import numpy as np
import pytest

from aam.cli.main import main

pytestmark = pytest.mark.realdata

TINY = ["--embedding-dim", "32", "--attention-heads", "2", "--attention-layers", "1", "--device", "cpu",
        "--batch-size", "8", "--max-bp", "100", "--token-limit", "32", "--rarefy-depth", "0", "--kernels", "auto"]


def test_ibd_pretrain_train_predict(ibd_dir, tmp_path):
    import skbio
    from skbio.diversity import beta_diversity

    table = biom.load_table(str(ibd_dir / "rarefied-table.biom"))
    tree = skbio.TreeNode.read(str(ibd_dir / "tree.nwk"))
    tips = {t.name for t in tree.tips()}
    # 48 samples spread over subjects (every k-th sample of the table)
    ids = [str(s) for s in table.ids()][:: max(1, table.shape[1] // 48)][:48]
    sub = table.filter(ids, axis="sample", inplace=False)
    sub = sub.filter([f for f in sub.ids(axis="observation") if f in tips], axis="observation", inplace=False)
    sub = sub.remove_empty(axis="observation", inplace=False)
    path = tmp_path / "sub.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        sub.to_hdf5(fh, "ibd subset")
    feats = [str(f) for f in sub.ids(axis="observation")]
    dm = beta_diversity("unweighted_unifrac", sub.matrix_data.toarray().T.astype(int), ids=ids,
                        tree=tree.shear(feats), taxa=feats, validate=False)
    dm.write(str(tmp_path / "dm.tsv"))

    pre = tmp_path / "pre"
    assert main(["pretrain", "--table", str(path), "--unifrac-matrix", str(tmp_path / "dm.tsv"), "--output-dir",
                 str(pre), "--epochs", "1", "--max-steps", "3", "--checkpoint-every", "2", *TINY]) == 0
    assert (pre / "checkpoints/last.pt").is_file()
    ft = tmp_path / "ft"
    assert main(["train", "--ensemble", "1", "--table", str(path), "--metadata", str(ibd_dir / "metadata.tsv"), "--metadata-column",
                 "ibd", "--classifier", "--group-column", "host_subject_id", "--pretrained-encoder",
                 str(pre / "checkpoints/last.pt"), "--output-dir", str(ft), "--epochs", "1", *TINY]) == 0
    md = {}
    with open(ibd_dir / "metadata.tsv") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            md[row["sample_name"]] = row
    train_ids = (ft / "train_samples.txt").read_text().split()
    val_ids = (ft / "val_samples.txt").read_text().split()
    assert train_ids and val_ids
    subjects = lambda xs: {md[s]["host_subject_id"] for s in xs}  # noqa: E731
    assert not subjects(train_ids) & subjects(val_ids)
    out = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(ft / "checkpoints/best.pt"), "--table", str(path), "--output", str(out),
                 "--device", "cpu"]) == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == len(ids)
    assert {r["prediction"] for r in rows} <= {"Control", "Crohns"}
    probs = np.array([[float(r["prob_Control"]), float(r["prob_Crohns"])] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
