"""bf16 autocast vs fp32 pretraining: the loss curves and the time per epoch of the same run (same seed, data and
model) with `--mixed-precision none` and `bf16`, each in its own process. The curves must agree within
TOLERANCE (relative, per epoch, train and validation loss); the speed ratio is reported.

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_precision.py --benchmark-enable -q -s \
        --benchmark-json=benchmarks/results/<dir>/precision.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import aam
from aam.data import synthetic

EPOCHS = int(os.environ.get("AAM_BENCH_EPOCHS", "6"))
TOLERANCE = 0.05  # relative difference of each epoch's train and validation loss, bf16 vs fp32


def _pretrain(data: dict[str, Path], out: Path, precision: str) -> tuple[list[dict], float]:
    env = dict(os.environ, AAM_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(Path(aam.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "aam.cli.main", "pretrain", "--table", str(data["table"]), "--tree",
           str(data["tree"]), "--output-dir", str(out), "--epochs", str(EPOCHS), "--batch-size", "8",
           "--embedding-dim", "64", "--attention-heads", "4", "--attention-layers", "2", "--max-bp", "150",
           "--patience", "0", "--device", "cpu", "--mixed-precision", precision, "--seed", "1"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    elapsed = time.perf_counter() - t0
    history = torch.load(out / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
    return history, elapsed


def test_bf16_loss_curve_matches_fp32(benchmark, tmp_path):
    data = synthetic.write_dataset(synthetic.make_dataset(96, n_features=300, seed=7, richness=40), tmp_path / "d")
    fp32, t32 = _pretrain(data, tmp_path / "fp32", "none")
    bf16, t16 = _pretrain(data, tmp_path / "bf16", "bf16")
    rows = []
    worst = 0.0
    for a, b in zip(fp32, bf16, strict=True):
        row = {"epoch": a["epoch"]}
        for key in ("train_loss", "val_loss", "val_unifrac_r2"):
            row[f"{key}_fp32"], row[f"{key}_bf16"] = a[key], b[key]
        for key in ("train_loss", "val_loss"):
            worst = max(worst, abs(b[key] - a[key]) / abs(a[key]))
        rows.append(row)
    sps = {"fp32": sum(r["train_samples_per_s"] for r in fp32) / len(fp32),
           "bf16": sum(r["train_samples_per_s"] for r in bf16) / len(bf16)}
    summary = {"epochs": EPOCHS, "rows": rows, "max_relative_loss_difference": worst, "tolerance": TOLERANCE,
               "train_samples_per_s": sps, "speedup": sps["bf16"] / sps["fp32"], "command_s": {"fp32": t32, "bf16": t16}}
    benchmark.extra_info.update(summary)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print("\n" + json.dumps(summary, indent=1))
    assert worst <= TOLERANCE, f"bf16 loss curve departs from fp32 by {worst:.3f} (relative) > {TOLERANCE}"
