"""Models: shapes, masking/padding behaviour, unique-ASV gathering, config round trip, checkpointing."""

from __future__ import annotations

import pytest
import torch

from aam.errors import AAMError
from aam.models import ModelConfig, SequenceEncoder, SequencePredictor, build_model
from aam.models.encoders import abundance_rank
from aam.models.transformer import AttentionPooling, Transformer


def tiny(**kw) -> ModelConfig:
    base = dict(embedding_dim=16, asv_heads=2, sample_heads=2, encoder_heads=2, count_heads=2, target_heads=2,
                asv_layers=1, sample_layers=1, encoder_layers=1, count_layers=1, target_layers=1, token_limit=8,
                max_bp=12, kernels="math")
    base.update(kw)
    return ModelConfig(**base)


def batch():
    """3 samples; ASV 1 is shared by samples 0 and 1; sample 2 has one ASV."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 5, (4, 10), generator=g)
    tokens[:, 0] = 5
    tokens[3, 6:] = 0
    return dict(tokens=tokens, asv_index=torch.tensor([0, 1, 2, 1, 3, 2]), offsets=torch.tensor([0, 3, 5, 6]),
                counts=torch.tensor([5.0, 1, 2, 3, 4, 9]), categorical=torch.tensor([[1, 0], [2, 1], [0, 0]]))


def test_config_round_trip_and_validation():
    c = tiny(kind="predictor", n_classes=3, categorical_cardinalities=[3, 2], quantiles=[])
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(AAMError, match="divisible"):
        tiny(asv_heads=3)
    with pytest.raises(AAMError, match="unknown keys"):
        ModelConfig.from_dict({**c.to_dict(), "bogus": 1})


def test_encoder_shapes_and_padding_slots_zero():
    model = SequenceEncoder(tiny()).eval()
    out = model(**batch())
    assert out["embeddings"].shape == (3, 16)
    assert out["sample_embeddings"].shape == (3, 3, 16)
    assert out["valid"].tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    assert out["sample_embeddings"][2, 1:].abs().sum() == 0
    assert out["nuc_logits"] is None  # only with nuc_tokens (a separate pass over masked copies)
    b = batch()
    out2 = model(**b, nuc_tokens=b["tokens"][:2])
    assert out2["nuc_logits"].shape == (2, 10, 7)
    torch.testing.assert_close(out2["embeddings"], out["embeddings"])  # the embeddings never see the masked rows
    assert torch.isfinite(out["embeddings"]).all()


@pytest.mark.parametrize("kind", ["encoder", "predictor"])
def test_shared_nucleotide_pass_runs_the_asv_encoder_once(kind):
    """nuc_rows: the masked copies sit in `tokens`; one ASV-encoder pass gives the embeddings of every row and
    the logits of those rows, equal to a plain pass over the same tokens (float64)."""
    config = tiny(kind="predictor", asv_vocab_size=4, asv_identity=True) if kind == "predictor" else tiny()
    model = build_model(config).double().eval()
    b = batch()
    if kind == "predictor":
        b["asv_ids"] = torch.arange(4)
    b["tokens"][1, 3:6] = 6  # row 1 holds a masked copy
    rows = torch.tensor([1, 3])
    calls = []
    model.asv_encoder.register_forward_hook(lambda *_: calls.append(1))
    out = model(**b, nuc_rows=rows)
    assert len(calls) == 1
    emb, logits = model.asv_encoder(b["tokens"])
    torch.testing.assert_close(out["nuc_logits"], logits[rows], rtol=1e-12, atol=1e-12)
    plain = model(**b)
    torch.testing.assert_close(out["sample_embeddings"], plain["sample_embeddings"], rtol=1e-12, atol=1e-12)
    assert plain["nuc_logits"] is None


def test_abundance_rank_while_exporting_equals_the_stable_sort(monkeypatch):
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 4, (6, 9), generator=g).float()  # many ties
    valid = torch.rand(6, 9, generator=g) > 0.3
    expected = abundance_rank(counts, valid)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(abundance_rank(counts, valid), expected)


def test_padding_does_not_change_results():
    """A sample's embedding does not depend on the other samples of the batch (key padding works)."""
    model = SequenceEncoder(tiny()).eval()
    b = batch()
    full = model(**b)["embeddings"]
    alone = model(tokens=b["tokens"], asv_index=b["asv_index"][5:6], offsets=torch.tensor([0, 1]),
                  counts=b["counts"][5:6])["embeddings"]
    torch.testing.assert_close(full[2:3], alone, atol=1e-5, rtol=1e-5)


def test_asv_order_within_sample_does_not_matter():
    """Positions are abundance ranks (no ties here), so permuting a sample's entries changes nothing."""
    model = SequenceEncoder(tiny(count_embedding="add")).eval()
    b = batch()
    out1 = model(**b)["embeddings"]
    perm = torch.tensor([2, 0, 1, 4, 3, 5])
    out2 = model(tokens=b["tokens"], asv_index=b["asv_index"][perm], offsets=b["offsets"],
                 counts=b["counts"][perm])["embeddings"]
    torch.testing.assert_close(out1, out2, atol=1e-5, rtol=1e-5)


def test_abundance_rank():
    counts = torch.tensor([[1.0, 5.0, 3.0], [2.0, 2.0, 0.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert abundance_rank(counts, valid).tolist() == [[2, 0, 1], [0, 1, 2]]


def test_attention_pooling_empty_row_is_zero_not_nan():
    pool = AttentionPooling(8)
    x = torch.randn(2, 4, 8, requires_grad=True)
    valid = torch.tensor([[True, False, True, False], [False] * 4])
    out = pool(x, valid)
    assert torch.isfinite(out).all() and out[1].abs().sum() == 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 1].abs().sum() == 0  # masked position gets no gradient


@pytest.mark.parametrize("fusion", ["concat", "add", "gmu"])
@pytest.mark.parametrize("count_embedding", ["none", "film"])
def test_predictor_outputs_and_backward(fusion, count_embedding):
    cfg = tiny(kind="predictor", categorical_cardinalities=[3, 2], categorical_fusion=fusion,
               count_embedding=count_embedding)
    model = SequencePredictor(cfg)
    out = model(**batch())
    assert out["target"].shape == (3, 1)
    assert out["count_prediction"].shape == (3, 3)
    (out["target"].sum() + out["count_prediction"].sum() + out["embeddings"].sum()).backward()
    assert model.categorical.embeddings[0].weight.grad[0].abs().sum() == 0  # code 0 (unknown) = padding


def test_gmu_fusion_depends_on_codes_and_round_trips():
    cfg = tiny(kind="predictor", categorical_cardinalities=[3, 2], categorical_fusion="gmu", dropout=0.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    model = SequencePredictor(cfg).eval()
    b = batch()
    base = model(**b)["target"]
    other = model(**{**b, "categorical": torch.tensor([[2, 1], [1, 0], [2, 1]])})["target"]
    assert not torch.allclose(base, other)
    # the gate and W_c act after pooling on [h; c] / c; they both receive gradients
    model.train()(**b)["target"].sum().backward()
    assert model.categorical_gate.weight.grad.abs().sum() > 0
    assert model.categorical_projection.weight.grad.abs().sum() > 0
    assert model.categorical_gate.in_features == 16 + 2 * cfg.categorical_embed_dim


@pytest.mark.parametrize("target_input", ["embedding", "both"])
def test_target_head_reads_the_pretrained_pooled_embedding(target_input):
    torch.manual_seed(0)
    model = SequencePredictor(tiny(kind="predictor", target_input=target_input, dropout=0.0)).eval()
    out = model(**batch())
    emb = model.embedding_norm(out["embeddings"])
    w = model.target_head.weight
    if target_input == "embedding":
        assert not hasattr(model, "target_encoder")  # no unused (DDP-breaking) parameters
        expected = emb @ w.T + model.target_head.bias
    else:  # [token-pooled; embedding] -> head: with the token half of the weights zeroed only the embedding is left
        assert w.shape == (1, 32)
        expected = emb @ w[:, 16:].T + model.target_head.bias
        assert not torch.allclose(out["target"], expected)
        with torch.no_grad():
            w[:, :16] = 0
        out = model(**batch())
    torch.testing.assert_close(out["target"], expected)
    model.train()(**batch())["target"].sum().backward()
    assert model.base_model.pooling.score.weight.grad.abs().sum() > 0  # the pooled embedding is fine-tuned


def test_target_input_embedding_needs_gmu_for_categoricals():
    with pytest.raises(AAMError, match="categorical-fusion gmu"):
        tiny(kind="predictor", target_input="embedding", categorical_cardinalities=[3])
    with pytest.raises(AAMError, match="target-input"):
        tiny(kind="predictor", target_input="pooled")
    cfg = tiny(kind="predictor", target_input="embedding", categorical_cardinalities=[3, 2], categorical_fusion="gmu")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert SequencePredictor(cfg)(**batch())["target"].shape == (3, 1)


@pytest.mark.parametrize("readout", ["presence", "abundance"])
def test_asv_readout_is_a_weighted_mean_of_per_asv_scores(readout):
    torch.manual_seed(0)
    model = SequencePredictor(tiny(kind="predictor", n_classes=3, asv_readout=readout, dropout=0.0)).eval()
    assert model.asv_score.weight.abs().sum() == 0  # zero init: starts as the model without the readout
    with torch.no_grad():
        model.asv_score.weight.normal_()
        model.asv_score.bias.normal_()
    x = torch.randn(2, 4, 16, requires_grad=True)
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    counts = torch.tensor([[1.0, 2.0, 5.0, 7.0], [3.0, 9.0, 9.0, 9.0]])
    out = model.asv_readout(x, valid, counts)
    assert out.shape == (2, 3)
    scores = model.asv_score(x)
    w = torch.tensor([[1.0, 2, 5], [3, 0, 0]]) if readout == "abundance" else torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    expected = torch.stack([(w[0, :, None] * scores[0, :3]).sum(0) / w[0].sum(), scores[1, 0]])
    torch.testing.assert_close(out, expected)
    # padded slots do not contribute: changing their embeddings or counts changes nothing, and gets no gradient
    x2 = x.detach().clone()
    x2[~valid] = 100.0
    counts2 = counts.masked_fill(~valid, 1e6)
    torch.testing.assert_close(model.asv_readout(x2, valid, counts2), out)
    out.sum().backward()
    assert x.grad[~valid].abs().sum() == 0 and x.grad[valid].abs().sum() > 0


def test_asv_readout_in_the_predictor_trains_and_old_configs_load():
    torch.manual_seed(0)
    model = SequencePredictor(tiny(kind="predictor", asv_readout="abundance"))
    out = model(**batch())
    assert out["target"].shape == (3, 1)
    out["target"].sum().backward()
    assert model.asv_score.weight.grad.abs().sum() > 0  # zero-initialised weights still learn
    old = tiny(kind="predictor").to_dict()
    del old["asv_readout"]  # a checkpoint written before the field existed
    assert ModelConfig.from_dict(old).asv_readout == "none"
    assert not hasattr(SequencePredictor(ModelConfig.from_dict(old)), "asv_score")
    with pytest.raises(AAMError, match="asv-readout"):
        tiny(kind="predictor", asv_readout="sum")


def test_predictor_classifier_and_quantile_width():
    assert SequencePredictor(tiny(kind="predictor", n_classes=4))(**batch())["target"].shape == (3, 4)
    assert SequencePredictor(tiny(kind="predictor", quantiles=[0.1, 0.5, 0.9]))(**batch())["target"].shape == (3, 3)


def test_pretrained_encoder_loads_into_base_model_and_freezes():
    enc = SequenceEncoder(tiny())
    pred = SequencePredictor(tiny(kind="predictor"))
    missing, unexpected = pred.base_model.load_state_dict(enc.state_dict(), strict=True), []
    assert not unexpected and not missing.missing_keys
    pred.freeze_base()
    assert not any(p.requires_grad for p in pred.base_model.parameters())
    assert all(p.requires_grad for n, p in pred.named_parameters() if not n.startswith("base_model."))


def test_gradient_checkpointing_matches_plain():
    torch.manual_seed(0)
    t1 = Transformer(16, 2, 2, dropout=0.0, kernels="math")
    t2 = Transformer(16, 2, 2, dropout=0.0, kernels="math", gradient_checkpointing=True)
    t2.load_state_dict(t1.state_dict())
    x = torch.randn(3, 5, 16)
    pad = torch.tensor([[False] * 5, [False, False, True, True, True], [True] * 5])
    g = []
    for t in (t1, t2):
        xi = x.clone().requires_grad_(True)
        t.train()(xi, pad).sum().backward()
        g.append(xi.grad)
    torch.testing.assert_close(g[0], g[1])


def test_build_model_kind():
    assert isinstance(build_model(tiny()), SequenceEncoder)
    assert isinstance(build_model(tiny(kind="predictor")), SequencePredictor)


def test_precomputed_layout_matches_pad_packed():
    from aam.data.batching import packed_layout

    model = SequenceEncoder(tiny()).eval()
    b = batch()
    plain = model(**b)["embeddings"]
    with_layout = model(**b, layout=packed_layout(b["offsets"]))["embeddings"]
    torch.testing.assert_close(plain, with_layout)


def _ragged_padding() -> torch.Tensor:
    """Rows of 9, 0, 1, 4 (with a hole) and 7 valid positions out of 9."""
    pad = torch.arange(9)[None, :] >= torch.tensor([9, 0, 1, 5, 7])[:, None]
    pad[3, 1] = True
    return pad


def _packed_and_padded(model: Transformer, x: torch.Tensor, pad: torch.Tensor | None, weight) -> tuple[list, list]:
    """Outputs and input gradients of `model` packed, then padded, under the loss sum((y * weight)^2)."""
    outs, grads = [], []
    for packed in (True, False):
        model.packed = packed
        xi = x.clone().requires_grad_(True)
        y = model(xi, pad)
        (y * weight).pow(2).sum().backward()
        outs.append(y)
        grads.append(xi.grad)
    return outs, grads


@pytest.mark.parametrize("kernels", ["custom", "auto"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_transformer_matches_padded(kernels, checkpointing):
    """Packing valid tokens (varlen attention) gives the padded result at valid positions, 0 at padding,
    and the same input gradients; an all-padded row and a hole in a row included."""
    torch.manual_seed(0)
    model = Transformer(32, 4, 2, dropout=0.0, kernels=kernels, gradient_checkpointing=checkpointing).double().train()
    pad = _ragged_padding()
    packing = model._packing(torch.zeros(5, 9, 32, dtype=torch.float64), pad)
    assert packing is not None and packing.backend == "custom"
    assert packing.cu_seqlens.tolist() == [0, 9, 9, 10, 14, 21] and packing.max_seqlen == 9
    valid = (~pad).unsqueeze(-1).double()
    outs, grads = _packed_and_padded(model, torch.randn(5, 9, 32, dtype=torch.float64), pad, valid)
    torch.testing.assert_close(outs[0] * valid, outs[1] * valid)
    assert outs[0].mul(1 - valid).abs().max() == 0
    torch.testing.assert_close(grads[0], grads[1])


def test_packing_only_with_a_varlen_kernel():
    from aam.ops.attention import packed_backend

    cpu = torch.device("cpu")
    assert packed_backend("custom", cpu, torch.float32, 32, 0.0, 151) == "custom"
    assert packed_backend("auto", cpu, torch.float32, 32, 0.0, 151) == "custom"
    assert packed_backend("sdpa", cpu, torch.float32, 32, 0.0, 151) is None  # the user asked for SDPA
    assert packed_backend("math", cpu, torch.float32, 32, 0.0, 151) is None  # math varlen only pads again
    assert packed_backend("auto", cpu, torch.float32, 32, 0.1, 151) is None  # no dropout in the kernels
    pad = _ragged_padding()
    x = torch.zeros(5, 9, 32)
    assert Transformer(32, 4, 1, kernels="sdpa")._packing(x, pad) is None
    assert Transformer(32, 4, 1, kernels="custom", packed=False)._packing(x, pad) is None
    assert Transformer(32, 4, 1, kernels="custom")._packing(x, torch.ones(5, 9, dtype=torch.bool)) is None
    for no_pad in (None, torch.zeros(5, 9, dtype=torch.bool)):  # reads of one length: packed in place
        packing = Transformer(32, 4, 1, kernels="custom")._packing(x, no_pad)
        assert packing.index is None and packing.cu_seqlens.tolist() == list(range(0, 46, 9))


@pytest.mark.parametrize("no_pad", [None, "zeros"])
def test_unpadded_batch_packed_in_place_matches_padded(no_pad):
    """Without padding the stack runs the varlen kernels on the rows in place: the padded op's result and input
    gradients."""
    torch.manual_seed(0)
    model = Transformer(32, 4, 2, dropout=0.0, kernels="custom").double().train()
    pad = None if no_pad is None else torch.zeros(5, 9, dtype=torch.bool)
    outs, grads = _packed_and_padded(model, torch.randn(5, 9, 32, dtype=torch.float64), pad, 1.0)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_packed_encoder_matches_padded():
    """The whole pretraining model gives the same embeddings packed and padded."""
    torch.manual_seed(0)
    packed = SequenceEncoder(tiny(kernels="custom")).eval()
    padded = SequenceEncoder(tiny(kernels="custom", packed_attention=False)).eval()
    padded.load_state_dict(packed.state_dict())
    torch.testing.assert_close(packed(**batch())["embeddings"], padded(**batch())["embeddings"])


def test_compiled_transformer_runs_padded_fullgraph():
    """Packing needs data-dependent shapes; under torch.compile(fullgraph=True) the stack runs padded."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(32, 4, 1, dropout=0.0, kernels="custom").eval()
    x, pad = torch.randn(5, 9, 32), _ragged_padding()
    valid = (~pad).unsqueeze(-1).float()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, pad) * valid, model(x, pad) * valid, atol=1e-5, rtol=1e-5)
