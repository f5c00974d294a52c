"""`aam embed`: sample embeddings, the pretrained model's predicted distances and the PCA plot, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.data.distances import load_distance_matrix
from test_e2e_cli import MODEL, read_tsv, run_err, write_tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    assert main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(data["dm"]), "--output-dir",
                 str(out), "--epochs", "2", "--rarefy-depth", "300", "--unifrac-transform", "tanh",
                 "--unifrac-scale", "2.5", *MODEL]) == 0
    return out / "checkpoints/best.pt"


def _embed(pretrained, data, out, *extra):
    return main(["embed", "--model", str(pretrained), "--table", str(data["table"]), "--output", str(out),
                 "--device", "cpu", *extra])


def _embeddings(path) -> tuple[list[str], np.ndarray]:
    rows = read_tsv(path)
    return [r["sample_id"] for r in rows], np.array([[float(v) for k, v in r.items() if k != "sample_id"]
                                                     for r in rows])


def test_embeddings_distances_and_plot(pretrained, data, tmp_path):
    out, dm_path = tmp_path / "emb.tsv", tmp_path / "pred_dm.tsv"
    assert _embed(pretrained, data, out, "--distance-matrix", str(dm_path), "--metadata", str(data["md"]),
                  "--metadata-column", "group") == 0
    ids, emb = _embeddings(out)
    skipped = read_tsv(tmp_path / "emb.skipped.tsv") if (tmp_path / "emb.skipped.tsv").exists() else []
    assert emb.shape == (len(ids), 16) and len(ids) + len(skipped) == 30 and np.isfinite(emb).all()
    assert np.linalg.norm(emb, axis=1).min() > 0  # real pooled embeddings, not zero rows
    # the matrix is the model's own prediction: tanh(||e_i - e_j|| / s) + offset with the recorded s and offset
    dm = load_distance_matrix(dm_path)
    assert dm.ids == ids
    ck = torch.load(pretrained, weights_only=True)
    assert ck["unifrac"] == {"transform": "tanh", "scale": 2.5}
    offset = float(ck["model_state"]["distance_offset"])
    expect = np.tanh(np.linalg.norm(emb[:, None] - emb[None], axis=-1) / 2.5) + offset
    np.fill_diagonal(expect, 0.0)
    np.testing.assert_allclose(dm.data, np.maximum(expect, 0), atol=2e-5)
    assert (tmp_path / "emb.png").stat().st_size > 1000


def test_embedding_does_not_depend_on_the_batch(pretrained, data, tmp_path):
    assert _embed(pretrained, data, tmp_path / "a.tsv", "--batch-size", "1") == 0
    assert _embed(pretrained, data, tmp_path / "b.tsv", "--batch-size", "7", "--metadata", str(data["md"]),
                  "--metadata-column", "age") == 0  # numeric column: colour bar plot
    ids_a, a = _embeddings(tmp_path / "a.tsv")
    ids_b, b = _embeddings(tmp_path / "b.tsv")
    assert ids_a == ids_b
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert (tmp_path / "b.png").is_file() and not (tmp_path / "a.png").exists()


def test_fine_tuned_encoder_embeds_but_predicts_no_distances(data, tmp_path, capsys):
    ft = tmp_path / "ft"
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(ft), "--epochs", "1", "--max-steps", "1", *MODEL]) == 0
    model = ft / "checkpoints/last.pt"
    assert main(["embed", "--model", str(model), "--table", str(data["table"]), "--output",
                 str(tmp_path / "e.tsv"), "--device", "cpu"]) == 0
    assert _embeddings(tmp_path / "e.tsv")[1].shape[1] == 16
    msg = run_err(capsys, ["embed", "--model", str(model), "--table", str(data["table"]), "--output",
                           str(tmp_path / "e2.tsv"), "--distance-matrix", str(tmp_path / "d.tsv")])
    assert msg.startswith("error:") and "--distance-matrix needs a checkpoint of `aam pretrain`" in msg
    assert not (tmp_path / "d.tsv").exists()


def test_embed_bad_metadata_column(pretrained, data, tmp_path, capsys):
    base = ["embed", "--model", str(pretrained), "--table", str(data["table"]), "--output", str(tmp_path / "e.tsv")]
    assert "--metadata-column needs --metadata" in run_err(capsys, [*base, "--metadata-column", "group"])
    msg = run_err(capsys, [*base, "--metadata", str(data["md"]), "--metadata-column", "nope"])
    assert msg.startswith("error:") and "nope" in msg and "md.tsv" in msg
