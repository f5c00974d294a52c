"""`aam demo` (the README's main command) end to end on a small generated dataset: every step's outputs."""

from __future__ import annotations

import numpy as np

from aam.cli.main import main
from aam.data.distances import load_distance_matrix
from test_e2e_cli import read_tsv


def test_demo_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--samples", "40", "--pretrain-epochs", "1", "--train-epochs", "1",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "demo finished" in text and "baseline (random forest" in text
    for rel in ("data/table.biom", "data/tree.nwk", "data/metadata.tsv", "pretrain/checkpoints/best.pt",
                "train/checkpoints/best.pt", "train/plots/pred_vs_true.png", "embeddings.png"):
        assert (out / rel).is_file(), rel
    predicted = read_tsv(out / "predictions.tsv")
    embedded = read_tsv(out / "embeddings.tsv")
    assert predicted and all(np.isfinite(float(r["prediction"])) for r in predicted)
    assert [r["sample_id"] for r in embedded] == [r["sample_id"] for r in predicted]
    dm = load_distance_matrix(out / "predicted_unifrac.tsv")
    assert dm.ids == [r["sample_id"] for r in embedded] and np.isfinite(dm.data).all()
