"""Pretraining step, aam vs the reference implementation (jbk708/aam), same data and model config, on the CPU.

DESIGN.md section 6 rows 1-2: step throughput >= 5x the reference, peak memory <= 0.5x. The reference is not a
dependency: point AAM_REFERENCE_SRC at a directory holding its `aam` package (SequenceEncoder and
MultiTaskLoss; see docs/BENCHMARKS.md for how one was assembled). Without it the benchmark skips.

    AAM_REFERENCE_SRC=/work/refaam PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_vs_reference.py \
        --benchmark-enable -q -s

Two data modes (AAM_BENCH_DATA), one model config for both sides: D=128, 4 heads and 4 layers in each of the
ASV, sample and encoder stacks, FFN 4D, dropout 0.1 (fixed in the reference), max_bp 150, pairwise UniFrac +
masked-nucleotide loss (ratio 0.15), AdamW lr 1e-4 wd 0.01.
- synthetic (default): aam.data.synthetic, 150-bp ASVs, samples with ~50-340 ASVs, random distances;
  token_limit 256, batch 4 (at batch 8 the reference's step peaks above 16 GB on this data).
- ibd: real data, /work/shared/data/ibd-2538 (AAM_BENCH_IBD_DIR; skips when absent): BATCH * (STEPS + 1)
  samples of rarefied-table.biom (5,000 reads, 100-nt ASVs) drawn with AAM_BENCH_SEED (0), batched in draw
  order, the same for both sides (AAM_BENCH_IBD_DIR + AAM_BENCH_IBD_TABLE=table.biom run it on oral-age-dev
  instead); ASVs not in tree.nwk dropped; unweighted UniFrac from the tree among the
  drawn samples. The reference's CLI defaults: batch 8, token_limit 1024 (no sample here comes near it, so
  its 'first' and aam's 'abundance' selection keep the same ASVs). aam is also timed at dropout 0 (its
  `aam pretrain` default) in the same run, as the variant `aam_dropout0` (AAM_BENCH_DROPOUT0_VARIANT=0 skips).
Each package runs its own defaults otherwise:
- reference: its CLI defaults (`aam pretrain`): --attn-implementation mem_efficient (only toggles CUDA SDPA
  flags; on the CPU SDPA picks its own kernel), --gradient-checkpointing on (AAM_REF_CHECKPOINTING=0 turns it
  off), --asv-chunk-size 256, ASVs padded to token_limit x (max_bp + 1), 'first' ASV selection, MAE
  masking of every ASV slot in place, tanh(d/10) distance squashing, no gradient clipping.
- aam: `aam pretrain` defaults: kernels auto, packed varlen attention, ASVs deduplicated across the batch,
  masked-nucleotide pass over 25% of the batch's unique ASVs, gradient clipping at 1.0, no checkpointing.

Each side runs in its own fresh subprocess (the two packages are both named `aam`), AAM_BENCH_ROUNDS times,
alternating reference / aam so both see the same machine load. Per step (forward + backward + optimizer):
median wall time and samples/s over all timed steps of all rounds; peak memory = VmHWM at the end of
the first round's subprocess minus the RSS right after imports (also reported: minus the RSS after the model,
optimizer and batches were built). A JSON with both sides and the ratios goes to AAM_BENCH_JSON if set.

Environment: AAM_BENCH_DATA (synthetic | ibd), AAM_BENCH_BATCH (4; ibd 8), AAM_BENCH_TOKEN_LIMIT (256; ibd 1024),
AAM_BENCH_STEPS (timed steps per round, 2), AAM_BENCH_ROUNDS (2), AAM_BENCH_LAYERS (4), AAM_BENCH_DIM (128),
AAM_REF_CHECKPOINTING (1), AAM_BENCH_SEED (0), AAM_BENCH_JSON; aam-side variants: AAM_BENCH_AAM_DROPOUT (0.1;
`aam pretrain` defaults to 0), AAM_BENCH_AAM_CHECKPOINTING (0), AAM_BENCH_DROPOUT0_VARIANT (ibd 1, synthetic 0).
One side alone: `python benchmarks/bench_vs_reference.py aam|reference DATA.npz` (DATA from make_data or
make_ibd_data, with the same AAM_BENCH_* environment).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REF_SRC = os.environ.get("AAM_REFERENCE_SRC", "")
DATA = os.environ.get("AAM_BENCH_DATA", "synthetic")
IBD_DIR = Path(os.environ.get("AAM_BENCH_IBD_DIR", "/work/shared/data/ibd-2538"))
IBD_TABLE = os.environ.get("AAM_BENCH_IBD_TABLE", "rarefied-table.biom")  # oral-age-dev: table.biom
SEED = int(os.environ.get("AAM_BENCH_SEED", "0"))
# Real data runs at the reference's CLI defaults (batch 8, token_limit 1024); synthetic at what fits the machine.
BATCH = int(os.environ.get("AAM_BENCH_BATCH", "8" if DATA == "ibd" else "4"))
TOKEN_LIMIT = int(os.environ.get("AAM_BENCH_TOKEN_LIMIT", "1024" if DATA == "ibd" else "256"))
STEPS = int(os.environ.get("AAM_BENCH_STEPS", "2"))
ROUNDS = int(os.environ.get("AAM_BENCH_ROUNDS", "2"))
LAYERS = int(os.environ.get("AAM_BENCH_LAYERS", "4"))
DIM = int(os.environ.get("AAM_BENCH_DIM", "128"))
HEADS = 4
MAX_BP = 150
DROPOUT = 0.1
MASK_RATIO = 0.15
LR, WEIGHT_DECAY = 1e-4, 0.01
REF_CHECKPOINTING = os.environ.get("AAM_REF_CHECKPOINTING", "1") == "1"
# Variants of the aam side only (defaults: the same dropout as the reference, aam's default of no checkpointing).
AAM_DROPOUT = float(os.environ.get("AAM_BENCH_AAM_DROPOUT", str(DROPOUT)))
AAM_CHECKPOINTING = os.environ.get("AAM_BENCH_AAM_CHECKPOINTING", "0") == "1"
# Also time aam at its `aam pretrain` default dropout (0) in the same run (the reference is not rerun).
DROPOUT0_VARIANT = os.environ.get("AAM_BENCH_DROPOUT0_VARIANT", "1" if DATA == "ibd" else "0") == "1"
ROOT = Path(__file__).resolve().parents[1]


def _reference_missing() -> str | None:
    if not REF_SRC:
        return "AAM_REFERENCE_SRC is not set (a directory holding the reference's aam package)"
    if not (Path(REF_SRC) / "aam" / "models" / "sequence_encoder.py").is_file():
        return f"AAM_REFERENCE_SRC={REF_SRC} has no aam/models/sequence_encoder.py"
    return None


def _data_missing() -> str | None:
    if DATA == "ibd":
        for name in (IBD_TABLE, "tree.nwk"):
            if not (IBD_DIR / name).is_file():
                return (f"AAM_BENCH_DATA=ibd needs {IBD_DIR / name} (the ibd-2538 data set; set "
                        "AAM_BENCH_IBD_DIR to its folder)")
    return None


# ----------------------------------------------------------------------------------------------- data
def _batch_rows(counts: np.ndarray) -> dict:
    """Per batch of BATCH consecutive samples: ASV entries after the token limit (the reference's non-empty
    slots) and unique ASVs among them (aam's encoder rows; exact when no sample exceeds token_limit)."""
    total, unique = [], []
    for start in range(0, counts.shape[1] - BATCH + 1, BATCH):
        rows = [np.flatnonzero(counts[:, c] > 0)[:TOKEN_LIMIT] for c in range(start, start + BATCH)]
        total.append(sum(len(r) for r in rows))
        unique.append(len(np.unique(np.concatenate(rows))))
    return {"asv_entries_per_batch": total, "unique_asvs_per_batch": unique,
            "unique_over_entries_mean": float(np.mean(np.asarray(unique) / np.asarray(total)))}


def make_ibd_data(path: Path) -> dict:
    """BATCH * (STEPS + 1) samples of ibd-2538's rarefied table (5,000 reads each), drawn at random with
    AAM_BENCH_SEED, batched in draw order; ASVs that are not tips of tree.nwk dropped; unweighted UniFrac
    among the drawn samples from the tree (aam.ops.unifrac.TreeDistances). Saved like make_data's arrays."""
    import biom

    from aam.data.tokenizer import tokenize
    from aam.ops.unifrac import TreeDistances, read_tree

    table = biom.load_table(str(IBD_DIR / IBD_TABLE))
    tree = read_tree(IBD_DIR / "tree.nwk")
    tips = tree.tip_index()
    n_table = table.shape
    n = BATCH * (STEPS + 1)
    rng = np.random.default_rng(SEED)
    pick = [str(s) for s in rng.choice(table.ids(axis="sample"), size=n, replace=False)]
    sub = table.filter(lambda _v, i, _m: str(i) in tips, axis="observation", inplace=False)
    n_not_in_tree = n_table[0] - sub.shape[0]
    sub = sub.filter(pick, axis="sample", inplace=False).sort_order(pick, axis="sample")
    sub = sub.filter(lambda v, _i, _m: v.sum() > 0, axis="observation", inplace=False)
    counts = sub.matrix_data.toarray()
    feature_ids = [str(f) for f in sub.ids(axis="observation")]
    tokens, lengths, _ = tokenize(feature_ids, MAX_BP)
    dist = TreeDistances(sub, tree, metric="unweighted").pairs(pick)
    np.savez(path, counts=counts, tokens=tokens, dist=dist, sample_ids=np.asarray(pick),
             feature_ids=np.asarray(feature_ids))
    nz = (counts > 0).sum(axis=0)
    reads = counts.sum(axis=0)
    return {"source": str(IBD_DIR / IBD_TABLE), "table_shape": list(n_table), "seed": SEED,
            "n_samples": n, "sample_ids": pick, "n_features": int(counts.shape[0]),
            "table_features_not_in_tree_dropped": int(n_not_in_tree),
            "reads_per_sample_min": int(reads.min()), "reads_per_sample_max": int(reads.max()),
            "asvs_per_sample_min": int(nz.min()), "asvs_per_sample_median": float(np.median(nz)),
            "asvs_per_sample_max": int(nz.max()), "samples_over_token_limit": int((nz > TOKEN_LIMIT).sum()),
            "asv_length_bp_min": int(lengths.min()), "asv_length_bp_max": int(lengths.max()),
            "unifrac": "unweighted, aam.ops.unifrac.TreeDistances on tree.nwk",
            "unifrac_mean_offdiag": float(dist[~np.eye(n, dtype=bool)].mean()), **_batch_rows(counts)}


def make_data(path: Path) -> dict:
    """One synthetic dataset for both sides, saved as arrays: dense counts [features, samples] in BIOM row
    order, tokens [features, max_bp + 1] (START 5, A1 C2 G3 T4, PAD 0: the same encoding in both packages)
    and a symmetric distance matrix with zero diagonal (its values do not matter for speed)."""
    from aam.data.synthetic import make_dataset
    from aam.data.tokenizer import tokenize

    n = BATCH * (STEPS + 1)
    ds = make_dataset(n, n_features=3000, seed=1, min_len=MAX_BP, max_len=MAX_BP, richness=250)
    counts = ds.table.matrix_data.toarray()
    tokens, _, _ = tokenize(list(ds.table.ids(axis="observation")), MAX_BP)
    rng = np.random.default_rng(0)
    d = rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    np.savez(path, counts=counts, tokens=tokens, dist=d, sample_ids=np.asarray(ds.table.ids(axis="sample")),
             feature_ids=np.asarray(ds.table.ids(axis="observation")))
    nz = (counts > 0).sum(axis=0)
    return {"n_samples": n, "n_features": int(counts.shape[0]), "asvs_per_sample_min": int(nz.min()),
            "asvs_per_sample_median": float(np.median(nz)), "asvs_per_sample_max": int(nz.max()),
            "asv_length_bp": MAX_BP, **_batch_rows(counts)}


# ----------------------------------------------------------------------------------------------- workers
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reference_setup(data: dict):
    """The reference's SequenceEncoder, MultiTaskLoss and AdamW, and its batch format: tokens
    [B, token_limit, max_bp + 1] with the sample's ASVs in BIOM row order ('first' selection) padded with
    zero rows, counts [B, token_limit, 1], UniFrac target [B, B] (REFERENCE.md 1.4)."""
    import torch

    from aam.models.sequence_encoder import SequenceEncoder
    from aam.training.losses import MultiTaskLoss

    model = SequenceEncoder(
        vocab_size=7, embedding_dim=DIM, max_bp=MAX_BP, token_limit=TOKEN_LIMIT,
        asv_num_layers=LAYERS, asv_num_heads=HEADS, sample_num_layers=LAYERS, sample_num_heads=HEADS,
        encoder_num_layers=LAYERS, encoder_num_heads=HEADS, asv_dropout=DROPOUT, sample_dropout=DROPOUT,
        encoder_dropout=DROPOUT, encoder_type="unifrac", predict_nucleotides=True, asv_chunk_size=256,
        gradient_checkpointing=REF_CHECKPOINTING, attn_implementation="mem_efficient", mask_ratio=MASK_RATIO,
        mask_strategy="random")
    loss_fn = MultiTaskLoss(penalty=1.0, nuc_penalty=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    counts, tokens, dist = data["counts"], data["tokens"], data["dist"]
    batches = []
    for start in range(0, counts.shape[1] - BATCH + 1, BATCH):
        cols = list(range(start, start + BATCH))
        tok = np.zeros((BATCH, TOKEN_LIMIT, MAX_BP + 1), dtype=np.int64)
        cnt = np.zeros((BATCH, TOKEN_LIMIT, 1), dtype=np.float32)
        for b, c in enumerate(cols):
            rows = np.flatnonzero(counts[:, c] > 0)[:TOKEN_LIMIT]
            tok[b, : len(rows)] = tokens[rows]
            cnt[b, : len(rows), 0] = counts[rows, c]
        batches.append({"tokens": torch.from_numpy(tok), "counts": torch.from_numpy(cnt),
                        "unifrac_target": torch.from_numpy(dist[np.ix_(cols, cols)].astype(np.float32))})
    model.train()

    def step(batch: dict) -> float:
        tok = batch["tokens"]
        if (tok >= 7).any():  # the reference trainer's per-batch invalid-token check
            raise ValueError("invalid token")
        out = model(tok, return_nucleotides=True)
        targets = {"base_target": batch["unifrac_target"], "nucleotides": tok,
                   "nuc_mask": (out["mask_indices"] & (tok > 0)).long()}
        loss = loss_fn(out, targets)["total_loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss)

    nonempty = [int((b["tokens"] > 0).any(-1).sum()) for b in batches]
    info = {"parameters": sum(p.numel() for p in model.parameters()),
            "asv_rows_per_batch": BATCH * TOKEN_LIMIT, "nonempty_asv_rows_per_batch": nonempty,
            "nucleotide_columns": MAX_BP + 1}
    return step, batches, info


def _aam_setup(data: dict):
    """aam's SequenceEncoder, MultiTaskLoss and optimizer, fed like the trainer feeds them (collate,
    packed layout, masked-nucleotide pass over nuc_asv_fraction of the unique ASVs, gradient clipping)."""
    import biom
    import torch

    from aam.data.batching import packed_layout
    from aam.data.dataset import SampleDataset, collate
    from aam.models import ModelConfig, build_model
    from aam.training.config import TrainConfig
    from aam.training.losses import LossConfig, MultiTaskLoss, nucleotide_task
    from aam.training.optim import make_optimizer

    tc = TrainConfig()
    counts, dist = data["counts"], data["dist"]
    sample_ids = [str(s) for s in data["sample_ids"]]
    table = biom.Table(counts, [str(f) for f in data["feature_ids"]], sample_ids)
    ds = SampleDataset(table, data["tokens"], TOKEN_LIMIT)
    index = {s: i for i, s in enumerate(sample_ids)}

    class Dist:
        def pairs(self, ids):
            idx = [index[s] for s in ids]
            return dist[np.ix_(idx, idx)]

    batches = []
    for start in range(0, len(sample_ids) - BATCH + 1, BATCH):
        b = collate([ds[i] for i in range(start, start + BATCH)], Dist())
        b["entry_sample"], b["entry_pos"], b["max_slots"] = packed_layout(b["offsets"])
        batches.append(b)
    cfg = ModelConfig(embedding_dim=DIM, asv_heads=HEADS, asv_layers=LAYERS, sample_heads=HEADS,
                      sample_layers=LAYERS, encoder_heads=HEADS, encoder_layers=LAYERS, token_limit=TOKEN_LIMIT,
                      max_bp=MAX_BP, dropout=AAM_DROPOUT, gradient_checkpointing=AAM_CHECKPOINTING)
    model = build_model(cfg)
    loss_fn = MultiTaskLoss(LossConfig())
    opt = make_optimizer(model, LR, WEIGHT_DECAY)
    model.train()

    def step(b: dict) -> float:
        task = nucleotide_task(b["tokens"], tc.nuc_mask_ratio, tc.nuc_mask_strategy, tc.nuc_asv_fraction,
                               tc.nuc_pass)
        b["tokens_original"], b["nuc_mask"] = task.targets, task.mask
        out = model(tokens=task.tokens, asv_index=b["asv_index"], offsets=b["offsets"], counts=b.get("counts"),
                    nuc_tokens=task.nuc_tokens, nuc_rows=task.nuc_rows, layout=(b["entry_sample"], b["entry_pos"], b["max_slots"]))
        loss = loss_fn(out, b)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    u = [int(b["tokens"].shape[0]) for b in batches]
    info = {"parameters": sum(p.numel() for p in model.parameters()), "unique_asvs_per_batch": sum(u) / len(u),
            "unique_asvs_per_batch_all": u, "asv_entries_per_batch": [int(b["offsets"][-1]) for b in batches],
            "masked_copy_rows_per_batch": [max(1, int(np.ceil(tc.nuc_asv_fraction * k))) for k in u],
            "nuc_pass": tc.nuc_pass,
            "nucleotide_columns": int(batches[0]["tokens"].shape[1]), "kernels": cfg.kernels,
            "packed_attention": cfg.packed_attention, "dropout": AAM_DROPOUT,
            "gradient_checkpointing": AAM_CHECKPOINTING}
    return step, batches, info


def worker(side: str, data_path: str) -> None:
    """Run in a fresh process: set up one side, one warm-up step, STEPS timed steps; print one RESULT line."""

    import torch

    import_rss = _rss_mb()
    torch.manual_seed(0)
    data = dict(np.load(data_path))
    step, batches, info = (_reference_setup if side == "reference" else _aam_setup)(data)
    setup_rss = _rss_mb()
    loss0 = step(batches[0])
    times = []
    for i in range(STEPS):
        t0 = time.perf_counter()
        step(batches[(i + 1) % len(batches)])
        times.append(time.perf_counter() - t0)
    # VmHWM, not ru_maxrss: ru_maxrss carries the forking parent's resident set over through exec
    with open("/proc/self/status") as fh:
        peak = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:")) / 1024
    print("RESULT " + json.dumps({"side": side, "times_s": times, "peak_rss_mb": peak, "import_rss_mb": import_rss,
                                  "setup_rss_mb": setup_rss, "first_loss": loss0, "threads": torch.get_num_threads(),
                                  **info}), flush=True)


def _run_worker(side: str, data_path: Path, **extra_env: str) -> dict:
    pp = REF_SRC if side == "reference" else str(ROOT / "src")
    env = dict(os.environ, PYTHONPATH=pp, PYTHONWARNINGS="ignore", **extra_env)
    res = subprocess.run([sys.executable, __file__, side, str(data_path)], capture_output=True, text=True, env=env,
                         timeout=3600)
    assert res.returncode == 0, f"{side} worker failed:\n{res.stderr[-3000:]}"
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ----------------------------------------------------------------------------------------------- benchmark
def _summary(rs: list[dict]) -> dict:
    """One side's runs: median step over all timed steps of all rounds, memory of the first round."""
    times = [t for r in rs for t in r["times_s"]]
    first = rs[0]
    med = statistics.median(times)
    return {
        "median_step_s": med, "samples_per_s": BATCH / med, "step_times_s": times,
        "peak_rss_minus_import_mb": first["peak_rss_mb"] - first["import_rss_mb"],
        "peak_rss_minus_setup_mb": first["peak_rss_mb"] - first["setup_rss_mb"],
        "peak_rss_mb": first["peak_rss_mb"], "import_rss_mb": first["import_rss_mb"],
        **{k: v for k, v in first.items() if k not in ("times_s", "peak_rss_mb", "import_rss_mb", "side")},
    }


def _ratios(ref: dict, ours: dict) -> dict:
    return {"throughput_aam_over_reference": ref["median_step_s"] / ours["median_step_s"],
            "peak_memory_aam_over_reference": ours["peak_rss_minus_import_mb"] / ref["peak_rss_minus_import_mb"],
            "peak_memory_aam_over_reference_minus_setup":
                ours["peak_rss_minus_setup_mb"] / ref["peak_rss_minus_setup_mb"]}


def test_pretrain_step_vs_reference(benchmark):
    if DATA not in ("synthetic", "ibd"):
        pytest.fail(f"AAM_BENCH_DATA={DATA!r} is not a data mode; use 'synthetic' (default) or 'ibd'")
    reason = _reference_missing() or _data_missing()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        data_info = (make_ibd_data if DATA == "ibd" else make_data)(data_path)
        runs: dict[str, list[dict]] = {"reference": [], "aam": [], "aam_dropout0": []}
        for _ in range(ROUNDS):
            for side in ("reference", "aam"):
                runs[side].append(_run_worker(side, data_path))
            if DROPOUT0_VARIANT:
                runs["aam_dropout0"].append(_run_worker("aam", data_path, AAM_BENCH_AAM_DROPOUT="0"))
    sides = {side: _summary(rs) for side, rs in runs.items() if rs}
    ref, ours = sides["reference"], sides["aam"]
    result = {
        "config": {"data": DATA, "batch": BATCH, "token_limit": TOKEN_LIMIT, "max_bp": MAX_BP, "embedding_dim": DIM,
                   "heads": HEADS, "layers_per_stack": LAYERS, "dropout": DROPOUT, "nuc_mask_ratio": MASK_RATIO,
                   "lr": LR, "weight_decay": WEIGHT_DECAY, "timed_steps_per_round": STEPS, "rounds": ROUNDS,
                   "reference_gradient_checkpointing": REF_CHECKPOINTING, "reference_asv_selection": "first",
                   "reference_attn_implementation": "mem_efficient", "reference_asv_chunk_size": 256,
                   "aam_asv_selection": "abundance"},
        "data": data_info, "reference": ref, "aam": ours,
        "ratios": _ratios(ref, ours),
        "targets": {"throughput": ">= 5x", "peak_memory": "<= 0.5x"},
    }
    if "aam_dropout0" in sides:
        result["aam_dropout0"] = sides["aam_dropout0"]
        result["ratios_aam_dropout0"] = _ratios(ref, sides["aam_dropout0"])
    if os.environ.get("AAM_BENCH_JSON"):
        Path(os.environ["AAM_BENCH_JSON"]).write_text(json.dumps(result, indent=2) + "\n")
    benchmark.extra_info.update(result)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n[{DATA}, batch {BATCH}, token_limit {TOKEN_LIMIT}] reference: {ref['median_step_s']:.2f} s/step, "
          f"{ref['samples_per_s']:.3f} samples/s, peak +{ref['peak_rss_minus_import_mb']:.0f} MB")
    for name in ("aam", "aam_dropout0"):
        if name in sides:
            o = sides[name]
            r = _ratios(ref, o)
            print(f"{name} (dropout {o['dropout']}): {o['median_step_s']:.2f} s/step, {o['samples_per_s']:.3f} "
                  f"samples/s, peak +{o['peak_rss_minus_import_mb']:.0f} MB | throughput "
                  f"{r['throughput_aam_over_reference']:.2f}x, memory {r['peak_memory_aam_over_reference']:.2f}x")


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
