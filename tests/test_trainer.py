"""Trainer, optimizer/scheduler, checkpoints and metrics on tiny in-memory data."""

from __future__ import annotations

import functools
import random

import biom
import numpy as np
import pytest
import torch

from aam.data.dataset import SampleDataset, collate
from aam.data.tokenizer import tokenize
from aam.errors import AAMError, InputError
from aam.models import ModelConfig, build_model
from aam.training import checkpoint as ckpt
from aam.training import metrics as M
from aam.training.batches import EpochSampler
from aam.training.config import TrainConfig
from aam.training.losses import LossConfig, MultiTaskLoss
from aam.training.optim import make_optimizer, make_scheduler, param_groups
from aam.training.trainer import Trainer


class Dist:
    def __init__(self, ids, d):
        self.ids = ids
        self._i = {s: k for k, s in enumerate(ids)}
        self.d = d

    def pairs(self, sample_ids):
        idx = [self._i[s] for s in sample_ids]
        return self.d[np.ix_(idx, idx)]


def tiny_data(n=12, seed=0, targets=False):
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), size=12)) for _ in range(15)]
    counts = rng.poisson(3, size=(15, n)) + 1
    ids = [f"s{i}" for i in range(n)]
    table = biom.Table(counts, seqs, ids)
    tokens, _, _ = tokenize(seqs, 16)
    y = rng.normal(size=n).astype(np.float32) if targets else None
    lat = rng.normal(size=n)
    d = np.abs(lat[:, None] - lat[None, :])
    return SampleDataset(table, tokens, 8, targets=y), Dist(ids, d / d.max())


def tiny_model(kind="encoder"):
    return build_model(ModelConfig(kind=kind, embedding_dim=16, asv_heads=2, sample_heads=2, encoder_heads=2,
                                   count_heads=2, target_heads=2, asv_layers=1, sample_layers=1, encoder_layers=1,
                                   target_layers=1, max_bp=16, token_limit=8, kernels="math"))


def make_trainer(tmp_path, task="pretrain", **cfg):
    torch.manual_seed(0)
    ds, dm = tiny_data(targets=task != "pretrain")
    kind = "encoder" if task == "pretrain" else "predictor"
    model = tiny_model(kind)
    loss = MultiTaskLoss(LossConfig(kernels="math"))
    base = dict(epochs=2, batch_size=4, lr=1e-3, progress=False, tracker="none", log_every=1)
    base.update(cfg)
    info = {"kind": "pretrain" if task == "pretrain" else "train", "model_config": model.config.to_dict(),
            "preprocessing": {"max_bp": 16}}
    return Trainer(model, loss, ds, ds, functools.partial(collate, distances=dm), TrainConfig(**base),
                   torch.device("cpu"), tmp_path, info, task=task)


def test_param_groups_no_decay_on_norms_biases_embeddings():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim == 2 for p in decay["params"])
    nd = {names[id(p)] for p in no_decay["params"]}
    assert any("token_embedding" in n for n in nd) and any("ln1" in n for n in nd) and any("bias" in n for n in nd)
    assert not any("embedding" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_schedule():
    opt = make_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    sched = make_scheduler(opt, total_steps=100)  # warmup = 5% = 5 steps
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))


def test_scheduler_steps_once_per_optimizer_step(tmp_path):
    t = make_trainer(tmp_path, gradient_accumulation_steps=2)  # 12 samples / 4 = 3 batches -> 2 steps/epoch
    t.fit()
    assert t.global_step == 4 == t.total_steps
    assert t.scheduler.last_epoch == 4
    assert t.warmup_steps == 1


def test_base_lr_scale_slows_only_the_pretrained_encoder(tmp_path):
    t = make_trainer(tmp_path, task="regression", base_lr_scale=0.1, warmup_steps=0)
    names = {id(p): n for n, p in t.model.named_parameters()}
    groups = t.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len(names)  # every parameter kept, in one group
    for g in groups:
        in_base = {names[id(p)].startswith("base_model.") for p in g["params"]}
        assert len(in_base) == 1  # never mixed
        assert g["initial_lr"] == pytest.approx(1e-4 if in_base.pop() else 1e-3)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01}  # the decay split survives
    frozen = make_trainer(tmp_path / "f", task="regression", base_lr_scale=0.0)
    before = {n: p.detach().clone() for n, p in frozen.model.named_parameters()}
    frozen.fit()
    after = dict(frozen.model.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in before.items() if n.startswith("base_model."))
    assert not torch.equal(before["target_head.weight"], after["target_head.weight"])
    with pytest.raises(AAMError, match="base-lr-scale"):
        TrainConfig(base_lr_scale=-1.0)


def test_fit_writes_checkpoints_and_history(tmp_path):
    t = make_trainer(tmp_path)
    hist = t.fit()
    assert [r["epoch"] for r in hist] == [1, 2]
    assert {"train_loss", "val_loss", "val_unifrac_r2", "val_nuc_accuracy"} <= set(hist[-1])
    data = ckpt.load_checkpoint(tmp_path / "checkpoints/last.pt", kind="pretrain")
    assert data["trainer_state"]["global_step"] == 6
    assert (tmp_path / "plots/training_curves.png").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_early_stopping(tmp_path):
    t = make_trainer(tmp_path, epochs=5, patience=1, lr=1e-12)  # the val loss cannot improve after epoch 1
    t.loss_fn.config.unifrac_weight = 0.0  # the UniFrac offset is a running mean that moves without the lr
    hist = t.fit()
    assert len(hist) == 2 and t.bad_epochs == 1 and t.best_epoch == 1


def test_validation_is_deterministic(tmp_path):
    t = make_trainer(tmp_path)
    a, b = t.validate(), t.validate()
    assert a == b and 0 <= a["val_nuc_accuracy"] <= 1


def test_regression_trainer_writes_predictions(tmp_path):
    t = make_trainer(tmp_path, task="regression", best_metric="r2")
    t.fit()
    lines = (tmp_path / "val_predictions.tsv").read_text().splitlines()
    assert lines[0] == "sample_id\tprediction\tactual" and len(lines) == 13
    assert (tmp_path / "plots/pred_vs_true.png").is_file()


def test_epoch_sampler_shards_and_skips():
    s0, s1 = EpochSampler(10, True, 3, 0, 2), EpochSampler(10, True, 3, 1, 2)
    assert sorted(list(s0) + list(s1)) == list(range(10))
    full = list(s0)
    s0.skip = 2
    assert list(s0) == full[2:] and len(s0) == 3
    s0.epoch = 1
    assert s0.indices() != full


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    st = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1)) == a


def test_checkpoint_errors(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c.pt", {"kind": "train", "model_config": {}, "model_state": {},
                                             "preprocessing": {"x": np.int64(3)}})
    assert ckpt.load_checkpoint(tmp_path / "c.pt", "train")["preprocessing"]["x"] == 3
    with pytest.raises(InputError, match="written by aam train"):
        ckpt.load_checkpoint(tmp_path / "c.pt", "pretrain")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="corrupted"):
        ckpt.load_checkpoint(tmp_path / "bad.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupted"):
        ckpt.load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(InputError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "none.pt")
    assert ckpt.strip_prefixes({"module._orig_mod.a": 1}) == {"a": 1}


def test_metrics():
    r = M.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r["mae"] == pytest.approx(1 / 3) and r["rmse"] == pytest.approx(np.sqrt(1 / 3)) and r["r2"] == pytest.approx(0.5)
    c = M.classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert c["accuracy"] == 0.75 and c["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert M.is_improvement("r2", 0.5, 0.4) and not M.is_improvement("val_loss", 0.5, 0.4)


def test_train_config_validation():
    with pytest.raises(AAMError):
        TrainConfig(batch_size=0)
    with pytest.raises(AAMError):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(AAMError, match="--nuc-pass"):
        TrainConfig(nuc_pass="twice")
    assert TrainConfig(mixed_precision="fp32").mixed_precision == "none"  # --precision fp32 = no autocast


@pytest.mark.parametrize("nuc_pass", ["shared", "separate"])
def test_nucleotide_pass_modes_train(tmp_path, nuc_pass):
    """Both --nuc-pass modes train the masked-nucleotide task; shared runs the ASV encoder once per training
    step, separate twice (validation embeds clean sequences either way: a second pass)."""
    t = make_trainer(tmp_path, epochs=1, nuc_pass=nuc_pass)
    calls = []
    t.model.asv_encoder.register_forward_hook(lambda m, *_: calls.append(m.training))
    hist = t.fit()
    assert np.isfinite(hist[0]["train_nuc_loss"]) and hist[0]["train_nuc_accuracy"] > 0
    train_calls = sum(calls)
    assert train_calls == t.steps_per_epoch * (1 if nuc_pass == "shared" else 2)


def test_bf16_autocast_on_cpu_runs(tmp_path):
    t = make_trainer(tmp_path, epochs=1, mixed_precision="bf16")
    hist = t.fit()
    assert np.isfinite(hist[0]["train_loss"])


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager(tmp_path):
    """A compiler that raises on the first call (where torch.compile really compiles) leaves training eager."""
    calls = []

    def broken_backend(gm, example_inputs):
        calls.append(1)
        raise RuntimeError("backend exploded")

    t = make_trainer(tmp_path, epochs=1, compile_model=True)
    assert t.compiled.module is not None
    t.compiled.module = torch.compile(t.ddp_model, backend=broken_backend)
    hist = t.fit()
    assert calls and t.compiled.module is None and np.isfinite(hist[0]["train_loss"])
    assert not any("_orig_mod" in k for k in t.state_payload()["model_state"])


def test_compile_skipped_on_rocm(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2", raising=False)
    assert make_trainer(tmp_path, epochs=1, compile_model=True).compiled.module is None


def test_base_lr_scale_default_follows_the_pretrained_encoder_and_resume():
    from aam.workflows.requests import HeadOptions
    from aam.workflows.train import base_lr_scale

    assert base_lr_scale(HeadOptions(pretrained_encoder="pre/best.pt")) == 0.1
    assert base_lr_scale(HeadOptions()) == 1.0  # from scratch: one rate
    assert base_lr_scale(HeadOptions(base_lr_scale=0.5, pretrained_encoder="pre/best.pt")) == 0.5
    resumed = {"trainer_state": {"train_config": {"base_lr_scale": 0.1}}}
    assert base_lr_scale(HeadOptions(), resumed) == 0.1
    assert base_lr_scale(HeadOptions(), {"trainer_state": {}}) == 1.0


def test_mixed_precision_auto_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    from aam.training import compiled

    cpu = torch.device("cpu")
    monkeypatch.setattr(compiled, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert compiled.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(compiled, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert compiled.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(compiled, "cpu_flags", lambda: {"avx2", "fma"})
    assert compiled.resolve_precision("auto", cpu) == "none"
    assert compiled.resolve_precision("fp16", cpu) == "fp16"  # explicit choices pass through


def test_mixed_precision_auto_trains_in_the_chosen_precision(tmp_path, monkeypatch):
    from aam.training import compiled

    monkeypatch.setattr(compiled, "cpu_flags", lambda: {"avx512_bf16"})
    assert make_trainer(tmp_path, mixed_precision="auto").amp_dtype == torch.bfloat16
    monkeypatch.setattr(compiled, "cpu_flags", lambda: set())
    assert make_trainer(tmp_path / "b", mixed_precision="auto").amp_dtype is None
