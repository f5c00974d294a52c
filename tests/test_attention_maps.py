"""`aam attention`: the recorded weights are the model's own attention (the recorded forward gives the same
output), each sample's attention over its ASVs sums to 1 in every layer and padded slots never appear, and the
heatmap, taxonomy and nucleotide-level map are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.models import ModelConfig, SequenceEncoder
from aam.models.transformer import attention_weights, record_attention
from aam.workflows.attention import layer_name, received
from test_e2e_cli import MODEL, read_tsv, run_err, write_tiny


def test_recorded_weights_are_the_models_attention():
    cfg = ModelConfig(embedding_dim=16, asv_heads=2, sample_heads=2, encoder_heads=2, asv_layers=1, sample_layers=2,
                      encoder_layers=1, token_limit=8, max_bp=12, kernels="auto", dropout=0.0)
    model = SequenceEncoder(cfg).double().eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 5, (5, 10), generator=g)
    tokens[:, 0] = 5
    tokens[4, 6:] = 0
    batch = dict(tokens=tokens, asv_index=torch.tensor([0, 1, 2, 1, 3, 4]), offsets=torch.tensor([0, 3, 5, 6]),
                 counts=torch.tensor([5.0, 1, 2, 3, 4, 9], dtype=torch.float64))
    plain = model(**batch)["embeddings"]
    with record_attention(model) as records:
        recorded = model(**batch)
    torch.testing.assert_close(recorded["embeddings"], plain, rtol=1e-10, atol=1e-10)
    w = records["sample_encoder.transformer.blocks.0.attn"][0]  # [3 samples, 2 heads, 3 slots, 3 slots]
    valid = recorded["valid"]
    assert w.shape == (3, 2, 3, 3)
    assert (w[~valid[:, None, None, :].expand_as(w)] == 0).all()  # no weight on padded slots
    torch.testing.assert_close(w.sum(-1)[valid[:, None, :].expand(-1, 2, -1)], torch.ones(2 * int(valid.sum()),
                               dtype=w.dtype))
    r = received(w, valid)
    torch.testing.assert_close(r.sum(1), torch.ones(3, dtype=r.dtype))
    assert all(m.recorded is None for m in model.modules() if hasattr(m, "recorded"))  # restored after the block
    q = torch.randn(1, 1, 3, 4)
    pad = torch.tensor([[False, True, True]])
    assert attention_weights(q, q, pad)[0, 0, :, 0].eq(1).all()


def test_layer_names():
    assert layer_name("members.1.base_model.sample_encoder.transformer.blocks.0.attn") == "sample_encoder.0"
    assert layer_name("encoder.blocks.2.attn") == "encoder.2"
    assert layer_name("target_encoder.blocks.0.attn") == "target_encoder.0"
    assert layer_name("base_model.sample_encoder.asv_encoder.transformer.blocks.0.attn") is None
    assert layer_name("count_encoder.blocks.0.attn") is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("attn")
    data = write_tiny(root / "data")
    assert main(["train", "--ensemble", "2", "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", "age", "--output-dir", str(root / "ft"), "--epochs", "1",
                 "--rarefy-depth", "0", *MODEL]) == 0
    return data, root / "ft" / "checkpoints" / "best.pt"


def test_attention_command(trained, tmp_path):
    import biom

    data, model = trained
    table = biom.load_table(str(data["table"]))
    fids = [str(f) for f in table.ids(axis="observation")]
    tax = tmp_path / "tax.tsv"
    tax.write_text("Feature ID\tTaxon\n" + "".join(f"{f}\tk__Bacteria; g__G{i}\n" for i, f in enumerate(fids)))
    out = tmp_path / "maps"
    assert main(["attention", "--model", str(model), "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", "group", "--taxonomy", str(tax), "--asv", fids[0], "--output", str(out),
                 "--device", "cpu", "--batch-size", "4"]) == 0
    rows = read_tsv(out / "attention.tsv")
    layers = [c for c in rows[0] if c.startswith("attention_")]
    assert list(rows[0])[:6] == ["sample_id", "feature_id", "taxon", "count", "attention", "relative"]
    assert layers == ["attention_sample_encoder.0", "attention_encoder.0", "attention_target_encoder.0"]
    by_sample: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_sample.setdefault(r["sample_id"], []).append(r)
    assert len(by_sample) == 30
    for sid, rs in by_sample.items():
        present = int((table.data(sid, axis="sample", dense=True) > 0).sum())
        assert len(rs) == min(present, 16)  # the ASVs the model sees (token limit 16), no padded slot
        assert len({r["feature_id"] for r in rs}) == len(rs) and all(float(r["count"]) > 0 for r in rs)
        for col in ["attention", *layers]:
            assert sum(float(r[col]) for r in rs) == pytest.approx(1.0, abs=1e-5)
        assert np.mean([float(r["relative"]) for r in rs]) == pytest.approx(1.0, abs=1e-4)
        assert all(r["taxon"].startswith("k__Bacteria; g__G") for r in rs)
    assert (out / "top_asvs.png").stat().st_size > 0
    nuc = read_tsv(out / "nucleotides.tsv")
    assert [r["base"] for r in nuc] == list(fids[0])  # one row per base of the read, START excluded
    # the bases' share of the attention (the START token, not written, holds the rest of the 1)
    assert 0 < sum(float(r["attention"]) for r in nuc) <= 1 + 1e-6
    assert (out / "nucleotides.png").is_file()


def test_attention_errors(trained, tmp_path, capsys):
    data, model = trained
    base = ["attention", "--model", str(model), "--table", str(data["table"]), "--output", str(tmp_path / "o"),
            "--device", "cpu"]
    assert "no such feature ID" in run_err(capsys, [*base, "--asv", "ACGTNOTTHERE"])
    assert "--metadata-column needs --metadata" in run_err(capsys, [*base, "--metadata-column", "group"])
    assert "--top must be >= 1" in run_err(capsys, [*base, "--top", "0"])
    assert not (tmp_path / "o").exists()  # every error comes before anything is written
