"""ASV identity embeddings (--asv-identity) and the frozen ASV encoder's cache (--freeze-asv-encoder)."""

from __future__ import annotations

import biom
import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.data.dataset import collate
from aam.data.prepare import Preprocessing, asv_vocabulary, make_dataset, prepare_table, vocabulary_ids
from aam.models import ModelConfig, build_model
from aam.models.encoders import encode_token_table
from test_e2e_cli import MODEL, read_tsv, write_tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("identity"))


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    assert main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(data["dm"]), "--output-dir",
                 str(out), "--epochs", "1", "--rarefy-depth", "300", *MODEL]) == 0
    return out / "checkpoints/best.pt"


def test_vocabulary_holds_only_the_training_samples_asvs(data):
    prepared = prepare_table(data["table"], None, 300, 0, 40)
    ids = [str(s) for s in prepared.table.ids()]
    train = ids[:2]
    vocab = asv_vocabulary(prepared, train)
    sub = prepared.table.filter(train, axis="sample", inplace=False)
    present = {prepared.sequences[i] for i, f in enumerate(prepared.table.ids(axis="observation"))
               if sub.data(f, axis="observation").sum() > 0}
    assert vocab == sorted(present) and len(vocab) < len(prepared.sequences)  # some ASVs only elsewhere
    got = vocabulary_ids(vocab, prepared.sequences + ["ACGTACGT"])
    assert got[-1] == 0  # a sequence outside the vocabulary
    assert [vocab[k - 1] for k in got[:-1] if k] == [s for s in prepared.sequences if s in present]


def test_batches_carry_table_rows_and_identity_ids(data):
    prepared = prepare_table(data["table"], None, 300, 0, 40)
    ids = [str(s) for s in prepared.table.ids()]
    pre = Preprocessing(max_bp=40, token_limit=16, asv_vocabulary=asv_vocabulary(prepared, ids[:10]))
    ds = make_dataset(prepared, ids, pre)
    batch = collate([ds[i] for i in (3, 11, 12, 20)])
    rows = batch["asv_rows"].numpy()
    width = batch["tokens"].shape[1]
    np.testing.assert_array_equal(batch["tokens"].numpy(), prepared.tokens[rows, :width])
    np.testing.assert_array_equal(batch["asv_ids"].numpy(), vocabulary_ids(pre.asv_vocabulary, prepared.sequences)[rows])


def _config(**kw) -> ModelConfig:
    base = dict(kind="predictor", embedding_dim=16, asv_heads=2, sample_heads=2, encoder_heads=2, count_heads=2,
                target_heads=2, asv_layers=1, sample_layers=1, encoder_layers=1, target_layers=1, max_bp=40,
                token_limit=16, kernels="math", dropout=0.0)
    return ModelConfig(**{**base, **kw})


def test_identity_starts_at_zero_and_then_changes_the_prediction(data):
    prepared = prepare_table(data["table"], None, 300, 0, 40)
    ids = [str(s) for s in prepared.table.ids()]
    vocab = asv_vocabulary(prepared, ids)
    batch = collate([make_dataset(prepared, ids, Preprocessing(max_bp=40, token_limit=16, asv_vocabulary=vocab))[i]
                     for i in range(6)])
    plain = build_model(_config()).eval()
    with_id = build_model(_config(asv_vocab_size=len(vocab))).eval()
    with_id.load_state_dict(plain.state_dict(), strict=False)
    inputs = {k: batch[k] for k in ("tokens", "asv_index", "offsets", "counts")}
    a = plain(**inputs)["target"]
    b = with_id(**inputs, asv_ids=batch["asv_ids"])["target"]
    torch.testing.assert_close(a, b)  # zero-initialised: the pretrained path is unchanged at the start
    with torch.no_grad():
        with_id.asv_identity.weight.normal_()
    assert not torch.allclose(with_id(**inputs, asv_ids=batch["asv_ids"])["target"], a)
    with pytest.raises(ValueError, match="asv_ids"):
        with_id(**inputs)


def test_identity_dropout_only_in_training():
    model = build_model(_config(asv_vocab_size=50, asv_identity_dropout=0.3))
    with torch.no_grad():
        model.asv_identity.weight.fill_(1.0)
    ids = torch.randint(1, 51, (4000,))
    model.train()
    kept = (model.asv_identity(ids).abs().sum(1) > 0).float().mean().item()
    assert abs(kept - 0.7) < 0.04
    model.eval()
    assert (model.asv_identity(ids).abs().sum(1) > 0).all()
    assert (model.asv_identity(torch.zeros(3, dtype=torch.long)) == 0).all()  # id 0: outside the vocabulary


def test_cached_asv_embeddings_equal_the_encoder(data):
    """The cache a frozen ASV encoder uses gives the same model output as encoding per batch."""
    prepared = prepare_table(data["table"], None, 300, 0, 40)
    ids = [str(s) for s in prepared.table.ids()]
    model = build_model(_config()).eval()
    cache = encode_token_table(model.asv_encoder, prepared.tokens, torch.device("cpu"), chunk=7)
    batch = collate([make_dataset(prepared, ids, Preprocessing(max_bp=40, token_limit=16))[i] for i in (0, 5, 9)])
    inputs = {k: batch[k] for k in ("tokens", "asv_index", "offsets", "counts")}
    torch.testing.assert_close(model(**inputs, asv_embeddings=cache[batch["asv_rows"]])["target"],
                               model(**inputs)["target"], rtol=1e-5, atol=1e-6)


def test_train_with_identity_and_frozen_asv_encoder_then_predict(data, pretrained, tmp_path):
    out = tmp_path / "ft"
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--pretrained-encoder", str(pretrained), "--output-dir", str(out), "--epochs", "2",
                 "--asv-identity", "--freeze-asv-encoder", "--dropout", "0", *MODEL]) == 0
    ck = torch.load(out / "checkpoints/best.pt", weights_only=True)
    vocab = ck["preprocessing"]["asv_vocabulary"]
    train_ids = read_tsv_ids(out / "train_samples.txt")
    prepared = prepare_table(data["table"], None, 300, 42, 40)
    assert vocab == asv_vocabulary(prepared, train_ids)
    assert ck["model_config"]["asv_vocab_size"] == len(vocab)
    assert ck["model_state"]["asv_identity.weight"][1:].abs().sum() > 0  # trained
    pre = torch.load(pretrained, weights_only=True)["model_state"]
    for name, value in ck["model_state"].items():  # the ASV encoder stayed as pretrained; the rest trained
        if name.startswith("base_model.sample_encoder.asv_encoder."):
            torch.testing.assert_close(value, pre[name[len("base_model."):]], rtol=0, atol=0)
    assert not torch.equal(ck["model_state"]["base_model.sample_encoder.transformer.ln_f.weight"],
                           pre["sample_encoder.transformer.ln_f.weight"])
    pred = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(out / "checkpoints/best.pt"), "--table", str(data["table"]),
                 "--output", str(pred)]) == 0
    by_id = {r["sample_id"]: float(r["prediction"]) for r in read_tsv(pred)}
    for r in read_tsv(out / "val_predictions.tsv"):
        assert by_id[r["sample_id"]] == pytest.approx(float(r["prediction"]), rel=1e-4, abs=1e-3)
    # a table whose ASVs the model never saw: the sequence path alone predicts it
    table = biom.load_table(str(data["table"]))
    novel = biom.Table(table.matrix_data, [s + "A" for s in table.ids(axis="observation")], table.ids())
    with biom.util.biom_open(str(tmp_path / "novel.biom"), "w") as fh:
        novel.to_hdf5(fh, "novel ASVs")
    assert main(["predict", "--model", str(out / "checkpoints/best.pt"), "--table", str(tmp_path / "novel.biom"),
                 "--output", str(tmp_path / "novel.tsv"), "--no-rarefy"]) == 0
    assert all(np.isfinite(float(r["prediction"])) for r in read_tsv(tmp_path / "novel.tsv"))


def read_tsv_ids(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def test_freeze_asv_encoder_needs_a_pretrained_encoder(data, tmp_path, capsys):
    rc = main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
               "--output-dir", str(tmp_path / "x"), "--epochs", "1", "--freeze-asv-encoder", *MODEL])
    assert rc == 2 and "--freeze-asv-encoder needs --pretrained-encoder" in capsys.readouterr().err


def test_asv_bag_is_a_hidden_layer_on_the_presence_profile(data):
    import torch.nn.functional as F

    prepared = prepare_table(data["table"], None, 300, 0, 40)
    ids = [str(s) for s in prepared.table.ids()]
    vocab = asv_vocabulary(prepared, ids[:3])
    ds = make_dataset(prepared, ids, Preprocessing(max_bp=40, token_limit=16, asv_vocabulary=vocab))
    items = [ds[i] for i in range(20, 26)]  # some of their ASVs are outside the vocabulary (id 0)
    batch = collate(items)
    model = build_model(_config(asv_vocab_size=len(vocab), asv_bag_dim=8)).eval()
    entry_ids = batch["asv_ids"][batch["asv_index"]]
    got = model.asv_bag(entry_ids, batch["offsets"])
    for b, item in enumerate(items):
        present = [i for i in item["asv_ids"] if i]
        want = F.gelu(model.asv_bag.weight[present].sum(0) + model.asv_bag.bias)
        torch.testing.assert_close(got[b], want)
    assert any(0 in item["asv_ids"] for item in items)
    model.train()
    torch.manual_seed(0)
    dropped = model.asv_bag(entry_ids, batch["offsets"])
    assert not torch.allclose(dropped, got)  # input and hidden dropout act in training only
