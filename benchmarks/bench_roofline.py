"""Roofline of a pretraining step: this machine's measured matmul peak, the FLOPs of one step (counted by
torch.utils.flop_counter on the math path), and the achieved FLOP/s of the step and its stages, with `--kernels
auto`, the math path, and the math path under torch.compile (what a PyTorch user would try first).

Config: the DESIGN.md pretraining benchmark's (D 128, 4 heads, 4 layers per stack, token limit 64, batch 8,
150-bp ASVs, UniFrac + masked-nucleotide loss, AdamW).

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_roofline.py --benchmark-enable -q -s \
        --benchmark-json=benchmarks/results/<dir>/roofline.json

The masked-nucleotide task runs as a second ASV-encoder pass over a quarter of the unique ASVs (the old
default, --nuc-pass separate) in every row but the "shared" ones (--nuc-pass shared, the default: the masked
copies replace their clean rows in the one pass; their FLOPs are counted separately).
The bf16 rows run the same step under torch.autocast(bfloat16) (--mixed-precision bf16); its FLOP/s are
against the fp32 count. Environment: AAM_BENCH_COMPILE (1: also time torch.compile of the math path; default 1), AAM_BENCH_ROUNDS (5).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aam.data.dataset import SampleDataset, collate
from aam.data.synthetic import make_dataset
from aam.data.tokenizer import tokenize
from aam.models import ModelConfig, build_model
from aam.training.losses import LossConfig, MultiTaskLoss, mask_nucleotides
from aam.training.optim import make_optimizer

ROUNDS = int(os.environ.get("AAM_BENCH_ROUNDS", "5"))
COMPILE = os.environ.get("AAM_BENCH_COMPILE", "1") == "1"
BATCH, TOKEN_LIMIT, D = 8, 64, 128


def _median_time(fn, rounds: int = ROUNDS, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, m: int, k: int, n: int) -> float:
    """GFLOP/s of an [m, k] @ [k, n] matmul (median of rounds)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    reps = max(1, int(2e9 / (2 * m * k * n)))

    def run():
        for _ in range(reps):
            torch.mm(a, b)

    return 2 * m * k * n * reps / _median_time(run) / 1e9


class Step:
    """One pretraining step of the benchmark config on a fixed batch."""

    def __init__(self, kernels: str, compiled: bool = False, amp: torch.dtype | None = None,
                 nuc_pass: str = "separate") -> None:
        self.amp = amp
        torch.manual_seed(0)
        ds = make_dataset(BATCH * 2, n_features=400, seed=1, min_len=140, max_len=150, richness=100)
        tokens, _, _ = tokenize(ds.sequences, 150)
        data = SampleDataset(ds.table, tokens, TOKEN_LIMIT)
        rng = np.random.default_rng(0)
        d = rng.random((BATCH, BATCH))
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0)
        batch = collate([data[i] for i in range(BATCH)])
        batch["unifrac_target"] = torch.from_numpy(d).float()
        self.batch = batch
        cfg = ModelConfig(embedding_dim=D, asv_heads=4, asv_layers=4, sample_heads=4, sample_layers=4,
                          encoder_heads=4, encoder_layers=4, token_limit=TOKEN_LIMIT, max_bp=150, dropout=0.0,
                          kernels=kernels)
        self.model = build_model(cfg)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.loss = MultiTaskLoss(LossConfig(kernels=kernels))
        self.opt = make_optimizer(self.model, 1e-4)
        g = torch.Generator().manual_seed(1)
        clean = batch["tokens"]
        rows = clean[: max(1, clean.shape[0] // 4)]
        masked, mask = mask_nucleotides(rows, 0.15, generator=g)
        batch["tokens_original"], batch["nuc_mask"] = rows, mask
        # separate: a second ASV-encoder pass over the masked copies; shared: they replace their clean rows
        self.nuc, self.nuc_rows, self.tokens = masked, None, clean
        if nuc_pass == "shared":
            self.nuc, self.nuc_rows = None, torch.arange(rows.shape[0])
            self.tokens = torch.cat([masked, clean[rows.shape[0]:]])

    def fwd_bwd(self) -> None:
        b = self.batch
        with torch.autocast("cpu", dtype=self.amp, enabled=self.amp is not None):
            out = self.forward(tokens=self.tokens, asv_index=b["asv_index"], offsets=b["offsets"],
                               counts=b["counts"], nuc_tokens=self.nuc, nuc_rows=self.nuc_rows)
            loss = self.loss(out, b)["total"]
        loss.backward()

    def step(self) -> None:
        self.fwd_bwd()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def asv_encoder(self) -> None:
        """The ASV encoder's part of the step (the clean pass and the masked-nucleotide pass, or the one shared
        pass), fwd + bwd."""
        emb, logits = self.model.sample_encoder.encode_asvs(self.tokens, self.nuc, self.nuc_rows)
        (emb.sum() + logits.float().sum()).backward()
        self.model.zero_grad(set_to_none=True)

    def optimizer(self) -> None:
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        self.opt.step()


def step_flops(nuc_pass: str = "separate") -> tuple[int, int]:
    """(FLOPs of one step, of which the ASV encoder's), counted on the math path."""
    step = Step("math", nuc_pass=nuc_pass)
    with FlopCounterMode(display=False) as counter:
        step.fwd_bwd()
    total = counter.get_total_flops()
    asv = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items()
              if name.endswith("asv_encoder") and name.count("asv_encoder") == 1)
    return total, asv


@pytest.fixture(scope="module")
def peak() -> dict[str, float]:
    out = {"fp32_2048": matmul_peak(torch.float32, 2048, 2048, 2048),
           "fp32_model_Tx128x512": matmul_peak(torch.float32, 8192, 128, 512),
           "fp32_model_Tx512x128": matmul_peak(torch.float32, 8192, 512, 128)}
    out["bf16_2048"] = matmul_peak(torch.bfloat16, 1024, 1024, 1024)
    return out


def test_pretrain_step_roofline(benchmark, peak):
    total, asv = step_flops()
    shared_total, shared_asv = step_flops("shared")
    rows = {}
    variants = [("auto", "auto", False, None, "separate"), ("math", "math", False, None, "separate"),
                ("auto+bf16 autocast", "auto", False, torch.bfloat16, "separate"),
                ("auto, shared pass", "auto", False, None, "shared"),
                ("auto+bf16, shared", "auto", False, torch.bfloat16, "shared")]
    if COMPILE:
        variants.append(("math+compile", "math", True, None, "separate"))
    for name, kernels, compiled, amp, nuc_pass in variants:
        step = Step(kernels, compiled, amp, nuc_pass)
        t_step = _median_time(step.step, warmup=2 if compiled else 1)
        flops = shared_total if nuc_pass == "shared" else total
        rows[name] = {"step_s": t_step, "gflops": flops / t_step / 1e9, "nuc_pass": nuc_pass, "step_gflop": flops / 1e9}
        if not compiled and amp is None:
            t_asv = _median_time(step.asv_encoder)
            t_opt = _median_time(step.optimizer)
            asv_flops = shared_asv if nuc_pass == "shared" else asv
            rows[name].update({"asv_encoder_s": t_asv, "asv_encoder_gflops": asv_flops / t_asv / 1e9,
                               "optimizer_s": t_opt, "rest_s": max(t_step - t_asv - t_opt, 0.0),
                               "rest_gflops": (flops - (shared_asv if nuc_pass == "shared" else asv))
                               / max(t_step - t_asv - t_opt, 1e-9) / 1e9})
    ref = peak["fp32_2048"]
    for row in rows.values():
        row["pct_of_fp32_peak"] = 100 * row["gflops"] / ref
    summary = {"peak_gflops": peak, "step_gflop": total / 1e9, "asv_encoder_share_of_flops": asv / total,
               "shared_pass_step_gflop": shared_total / 1e9,
               "rows": rows, "threads": torch.get_num_threads()}
    benchmark.extra_info.update(summary)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print("\nmatmul peak (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    print(f"step: {total / 1e9:.1f} GFLOP ({100 * asv / total:.0f}% in the ASV encoder); with the shared "
          f"nucleotide pass {shared_total / 1e9:.1f} GFLOP")
    for name, row in rows.items():
        extra = "" if "asv_encoder_s" not in row else (
            f"; ASV encoder {row['asv_encoder_s']:.3f} s at {row['asv_encoder_gflops']:.0f} GFLOP/s, optimizer "
            f"{row['optimizer_s'] * 1e3:.1f} ms, rest {row['rest_s']:.3f} s at {row['rest_gflops']:.0f} GFLOP/s")
        print(f"{name:>13}: {row['step_s']:.3f} s/step, {row['gflops']:.0f} GFLOP/s "
              f"({row['pct_of_fp32_peak']:.0f}% of the fp32 peak){extra}")
