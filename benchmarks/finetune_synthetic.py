"""Fine-tuning study on the demo's generated data: `aam train` variants (e.g. --asv-readout) vs the default,
one pretrained encoder per dataset, as in docs/BENCHMARKS.md ("Pretraining and the demo").

    PYTHONPATH=src .venv/bin/python benchmarks/finetune_synthetic.py --seeds 42,7 \
        --output benchmarks/results/cpu-2026-11-30/finetune_synthetic_readout.json

Reports validation R2 of pH at the epoch best.pt picks (val_loss), at the last epoch and as the mean of the
last 5 epochs, and the random forest on the same split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from aam.cli.demo import PRETRAIN_LR, SMALL_MODEL, TRAIN_LR  # noqa: E402

VARIANTS = {"default": [], "readout-presence": ["--asv-readout", "presence"],
            "readout-abundance": ["--asv-readout", "abundance"]}


def run(args: list[str]) -> None:
    from aam.cli.main import main

    if main(args):
        raise SystemExit(f"failed: aam {' '.join(args)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="42,7")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", type=Path, default=Path("/tmp/aam-finetune-synthetic"))
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--reuse", action="store_true", help="Reuse a pretrained encoder already in --work.")
    args = p.parse_args()
    os.environ.setdefault("AAM_NO_PROGRESS", "1")
    import torch

    from aam.data import synthetic
    from aam.training.baseline import random_forest_baseline, read_ids

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = args.work / f"seed{seed}"
        paths = synthetic.write_dataset(synthetic.make_dataset(300, n_features=250, seed=seed, min_len=60, max_len=64,
                                                               richness=30, mean_depth=3000.0), work / "data")
        common = ["--seed", str(seed), "--device", "cpu", *SMALL_MODEL]
        if not (args.reuse and (work / "pretrain/checkpoints/best.pt").is_file()):
            run(["pretrain", "--table", str(paths["table"]), "--tree", str(paths["tree"]), "--output-dir",
                 str(work / "pretrain"), "--epochs", str(args.pretrain_epochs), "--patience", "0", *common,
                 *PRETRAIN_LR])
        for name in args.variants.split(","):
            t0 = time.perf_counter()
            out = work / name
            run(["train", "--table", str(paths["table"]), "--metadata", str(paths["metadata"]), "--metadata-column",
                 "ph", "--group-column", "subject", "--pretrained-encoder", str(work / "pretrain/checkpoints/best.pt"),
                 "--output-dir", str(out), "--epochs", str(args.epochs), "--patience", "0", *common, *TRAIN_LR,
                 *VARIANTS[name]])
            st = torch.load(out / "checkpoints/last.pt", weights_only=True)["trainer_state"]
            hist = st["history"]
            best = next(r for r in hist if r["epoch"] == st["best_epoch"])
            last5 = [r["val_r2"] for r in hist[-5:]]
            rows.append({"seed": seed, "variant": name, "r2_best": best["val_r2"], "r2_last": hist[-1]["val_r2"],
                         "r2_mean_last5": sum(last5) / len(last5), "mae_best": best["val_mae"],
                         "wall_s": time.perf_counter() - t0})
            print(rows[-1], flush=True)
        rf = random_forest_baseline(paths["table"], paths["metadata"], "ph", read_ids(out / "train_samples.txt"),
                                    read_ids(out / "val_samples.txt"), n_estimators=200, seed=seed, n_jobs=2)
        rows.append({"seed": seed, "variant": "random_forest", "r2_best": rf.metrics["r2"], "mae_best": rf.metrics["mae"]})
        print(rows[-1], flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"dataset": "make_dataset(300, n_features=250, seed=SEED, min_len=60, "
                                           "max_len=64, richness=30, mean_depth=3000.0)", "train_flags": SMALL_MODEL + TRAIN_LR, "epochs": args.epochs,
                                           "pretrain_epochs": args.pretrain_epochs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
