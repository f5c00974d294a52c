"""Memory you can plan: the memory model, token/memory-budget batches, --auto-batch-size, cached ASV embeddings,
--memory-profile and --profile."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.data.dataset import SampleDataset, collate
from aam.data.synthetic import make_dataset, write_dataset
from aam.data.tokenizer import tokenize
from aam.errors import AAMError
from aam.models import ModelConfig, build_model
from aam.training.batches import epoch_order
from aam.training.config import TrainConfig
from aam.training.losses import LossConfig, MultiTaskLoss
from aam.training.memory import BatchShape, MemoryModel, PeakMeter, cpu_peak_resettable, measure_step
from aam.training.planning import BudgetBatchSampler, Footprint
from aam.training.profiling import STAGES
from aam.training.trainer import Trainer

needs_peak_reset = pytest.mark.skipif(not cpu_peak_resettable(),
                                      reason="the CPU peak resident set cannot be reset here (needs Linux clear_refs)")


class Dist:
    def __init__(self, ids: list[str], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        d = rng.random((len(ids), len(ids)))
        self.d = (d + d.T) / 2
        np.fill_diagonal(self.d, 0)
        self.index = {s: i for i, s in enumerate(ids)}

    def pairs(self, sample_ids):
        idx = [self.index[s] for s in sample_ids]
        return self.d[np.ix_(idx, idx)]


def amplicon_like(n: int = 80, token_limit: int = 256, seed: int = 1) -> tuple[SampleDataset, Dist]:
    ds = make_dataset(n, n_features=500, seed=seed, min_len=100, max_len=150, richness=50)
    tokens, _, _ = tokenize(ds.sequences, 150)
    return SampleDataset(ds.table, tokens, token_limit), Dist(ds.sample_ids)


def encoder(dim: int = 64, layers: int = 2, kernels: str = "auto"):
    cfg = ModelConfig(kind="encoder", embedding_dim=dim, asv_heads=4, asv_layers=layers, sample_heads=4,
                      sample_layers=layers, encoder_heads=4, encoder_layers=layers, token_limit=256, max_bp=150,
                      dropout=0.0, kernels=kernels)
    return build_model(cfg)


def trainer_on(data, dist, model, out: Path, **cfg) -> Trainer:
    base = dict(epochs=1, batch_size=8, progress=False, tracker="none")
    base.update(cfg)
    return Trainer(model, MultiTaskLoss(LossConfig()), data, None, functools.partial(collate, distances=dist),
                   TrainConfig(**base), torch.device("cpu"), out,
                   {"kind": "pretrain", "model_config": model.config.to_dict(), "preprocessing": {}})


# ------------------------------------------------------------------------------------------ the memory model
@needs_peak_reset
def test_memory_model_predicts_held_back_batches_within_25_percent(tmp_path):
    torch.manual_seed(0)
    data, dist = amplicon_like()
    trainer = trainer_on(data, dist, encoder(), tmp_path)
    meter = PeakMeter(torch.device("cpu"))
    model = trainer.fit_memory_model(meter)
    assert len(model.probes) >= 3 and model.bytes_per_token > 0
    order = epoch_order(len(data), True, 7, 3)  # other samples than the probes saw (epoch 1's order prefix)
    for size, start in ((6, 0), (12, 20), (40, 40)):
        batch = trainer._to_device(trainer.collate_fn([data[i] for i in order[start:start + size]]))
        shape = BatchShape.of_batch(batch)
        assert shape not in [p.shape for p in model.probes]
        _, peak = measure_step(meter, lambda b=batch: trainer._probe_step(b))
        ratio = model.predict(shape) / peak
        assert 0.75 <= ratio <= 1.25, (shape, model.predict(shape), peak)
    # probes leave the model untouched: no gradient, no optimizer state
    assert all(p.grad is None for p in trainer.model.parameters()) and not trainer.optimizer.state
    again = MemoryModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.predict(shape) == model.predict(shape)


def test_memory_model_refuses_one_probe():
    with pytest.raises(AAMError, match="at least 2 probe"):
        from aam.training.memory import Probe, fit

        fit([Probe(BatchShape(2, 10, 100, 12), 10**9)], 10**8, 0, "cpu", "test")


# ------------------------------------------------------------------------------------------ budget batches
@pytest.mark.parametrize("world", [1, 2])
def test_token_budget_batches_fit_and_cover_every_sample_once(world):
    data, _ = amplicon_like(60)
    budget = 30_000
    fits = lambda s: s.nucleotide_tokens <= budget  # noqa: E731
    for epoch in (0, 1, 2):
        seen: list[int] = []
        all_batches = None
        for rank in range(world):
            sampler = BudgetBatchSampler(Footprint(data), fits, True, 5, rank, world)
            sampler.epoch = epoch
            all_batches = sampler.all_batches()
            for idx in sampler:
                batch = collate([data[i] for i in idx])
                assert batch["tokens"].numel() <= budget  # the collated batch, not only the estimate
                assert BatchShape.of_batch(batch) == Footprint(data).shape(idx)
                seen.extend(idx)
        flat = [i for b in all_batches for i in b]
        assert sorted(flat) == list(range(len(data)))  # every sample in exactly one batch of the epoch
        assert set(seen) == set(range(len(data)))  # the ranks together see them all
        assert len(all_batches) > 3 and max(len(b) for b in all_batches) > 1
    # the same (seed, epoch) packs the same batches; another epoch packs others
    a = BudgetBatchSampler(Footprint(data), fits, True, 5)
    b = BudgetBatchSampler(Footprint(data), fits, True, 5)
    assert list(a) == list(b)
    b.epoch = 1
    assert list(a) != list(b)


def test_a_sample_over_the_budget_is_named():
    data, _ = amplicon_like(20)
    with pytest.raises(AAMError, match=r"sample \S+ alone .* does not fit the batch budget; raise --max-tokens"):
        Footprint(data).pack(range(len(data)), lambda s: s.nucleotide_tokens <= 1000)


def test_auto_batch_size_is_the_largest_that_fits_and_sets_accumulation(tmp_path):
    torch.manual_seed(0)
    data, dist = amplicon_like(60)
    budget = 40_000
    trainer = trainer_on(data, dist, encoder(32, 1), tmp_path, auto_batch_size=True, max_tokens=budget,
                         max_memory_gb=64.0, target_effective_batch_size=50)
    plan = trainer.plan
    size = plan.batch_size
    order = epoch_order(len(data), True, 42, 0)
    fp = Footprint(data)

    def all_fit(b: int) -> bool:
        return all(fp.shape(order[k:k + b]).nucleotide_tokens <= budget for k in range(0, len(order), b))

    assert plan.mode == "fixed" and 2 <= size < len(data) and all_fit(size) and not all_fit(size + 1)
    assert plan.accumulation == -(-50 // size) and trainer.accum == plan.accumulation
    assert plan.memory_model is not None and len(plan.memory_model["probes"]) >= 2  # written at fit()


# ------------------------------------------------------------------------------------------ through the CLI
@pytest.fixture(scope="module")
def amplicons(tmp_path_factory) -> dict[str, Path]:
    ds = make_dataset(36, n_features=80, seed=4, min_len=30, max_len=40, richness=20)
    return write_dataset(ds, tmp_path_factory.mktemp("amplicons"))


def _pretrain(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--output-dir", str(out),
            "--epochs", "2", "--embedding-dim", "16", "--attention-heads", "2", "--attention-layers", "1",
            "--max-bp", "40", "--device", "cpu", "--seed", "3", "--log-every", "1", *extra]


def test_resumed_token_budget_run_equals_an_uninterrupted_one(amplicons, tmp_path):
    budget = ["--max-tokens", "1200"]
    assert main(_pretrain(amplicons, tmp_path / "full", *budget)) == 0
    plan = json.loads((tmp_path / "full/batch_plan.json").read_text())
    assert plan["mode"] == "budget" and plan["max_tokens"] == 1200
    assert main(_pretrain(amplicons, tmp_path / "cut", *budget, "--max-steps", "3")) == 0
    cut = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert cut["trainer_state"]["batch_in_epoch"] == 3 and cut["trainer_state"]["batch_plan"] == plan
    assert main(_pretrain(amplicons, tmp_path / "cut", *budget, "--resume",
                          str(tmp_path / "cut/checkpoints/last.pt"))) == 0
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert a["trainer_state"]["global_step"] == b["trainer_state"]["global_step"] > 3
    for k, v in a["model_state"].items():
        torch.testing.assert_close(v, b["model_state"][k], rtol=0, atol=0, msg=k)


@needs_peak_reset
def test_memory_budget_memory_profile_and_profile(amplicons, tmp_path):
    out = tmp_path / "run"
    assert main(_pretrain(amplicons, out, "--max-memory-gb", "64", "--max-tokens", "1200", "--memory-profile",
                          "--profile", "2", "--epochs", "1")) == 0
    plan = json.loads((out / "batch_plan.json").read_text())
    assert plan["mode"] == "budget" and plan["max_memory_bytes"] == 64 * 1024**3
    assert plan["memory_model"] == json.loads((out / "memory_model.json").read_text())
    profile = json.loads((out / "memory_profile.json").read_text())
    assert set(profile["stages"]) == set(STAGES) and profile["micro_batches"] >= 1
    assert all(profile["stages"][s]["peak_mb"] > 0 for s in STAGES)
    trace = json.loads((out / "profile/trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aam::") for n in names)  # the custom ops are named ranges of the trace
    assert "Self CPU" in (out / "profile/top_ops.txt").read_text()
    assert "peak memory per stage" in (out / "training.log").read_text()


def test_budget_options_are_checked(amplicons, tmp_path, capsys):
    for args, msg in ((["--max-tokens", "0"], "--max-tokens 0: must be a number >= 1"),
                      (["--max-memory-gb", "-1"], "--max-memory-gb -1.0: must be a number > 0"),
                      (["--target-effective-batch-size", "8", "--gradient-accumulation-steps", "2"],
                       "drop --gradient-accumulation-steps")):
        assert main(_pretrain(amplicons, tmp_path / "o", *args)) != 0
        assert msg in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ cached embeddings
def test_cached_asv_embeddings_equal_the_uncached_path_in_float64(tmp_path):
    torch.manual_seed(0)
    data, dist = amplicon_like(12, token_limit=32)
    cfg = ModelConfig(kind="predictor", embedding_dim=16, asv_heads=2, asv_layers=1, sample_heads=2, sample_layers=1,
                      encoder_heads=2, encoder_layers=1, count_heads=2, target_heads=2, target_layers=1,
                      token_limit=32, max_bp=150, dropout=0.0, kernels="math")
    model = build_model(cfg).double()
    model.freeze_asv_encoder()
    trainer = Trainer(model, MultiTaskLoss(LossConfig(kernels="math", nuc_weight=0.0)), data, None,
                      functools.partial(collate, distances=dist), TrainConfig(epochs=1, batch_size=4, progress=False,
                                                                                tracker="none"),
                      torch.device("cpu"), tmp_path, {"kind": "train", "model_config": cfg.to_dict(),
                                                      "preprocessing": {}}, task="regression")
    assert trainer.cache_asv
    trainer._use_asv_cache(data)
    assert trainer._asv_cache.dtype == torch.float64 and trainer._asv_cache.shape[0] == len(data.token_table)
    model.eval()
    for idx in ([0, 1, 2, 3], [4, 7, 11]):
        batch = trainer._to_device(trainer.collate_fn([data[i] for i in idx]))
        batch["counts"] = batch["counts"].double()
        cached, _ = trainer._forward(model, dict(batch), evaluate=True)
        trainer._asv_cache = None
        plain, _ = trainer._forward(model, dict(batch), evaluate=True)
        trainer._use_asv_cache(data)
        assert cached["target"].dtype == torch.float64
        torch.testing.assert_close(cached["target"], plain["target"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cached["embeddings"], plain["embeddings"], rtol=1e-12, atol=1e-12)


@needs_peak_reset
def test_probing_memory_does_not_change_training(amplicons, tmp_path):
    """The same budget batches with and without a memory model fitted first (a budget far above the tokens' one
    leaves the batches alone): the probes restore the random state, so the weights end bit-equal."""
    assert main(_pretrain(amplicons, tmp_path / "tokens", "--max-tokens", "1200")) == 0
    assert main(_pretrain(amplicons, tmp_path / "probed", "--max-tokens", "1200", "--max-memory-gb", "64")) == 0
    probed = json.loads((tmp_path / "probed/batch_plan.json").read_text())
    assert probed["memory_model"] and len(probed["memory_model"]["probes"]) >= 2
    a = torch.load(tmp_path / "tokens/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "probed/checkpoints/last.pt", weights_only=True)
    assert a["trainer_state"]["global_step"] == b["trainer_state"]["global_step"]
    for k, v in a["model_state"].items():
        torch.testing.assert_close(v, b["model_state"][k], rtol=0, atol=0, msg=k)
