"""Fine-tuning study on the demo's generated data: `aam train` variants (e.g. --asv-readout) on top of `aam
pretrain` variants (e.g. --unifrac-targets), one pretrained encoder per (dataset, pretrain variant), as in
docs/BENCHMARKS.md ("Pretraining and the demo").

    PYTHONPATH=src .venv/bin/python benchmarks/finetune_synthetic.py --seeds 42,7 \
        --output benchmarks/results/cpu-2026-11-30/finetune_synthetic_readout.json
    PYTHONPATH=src .venv/bin/python benchmarks/finetune_synthetic.py --seeds 42,7 --variants default \
        --pretrain-variants default,targets-all --token-limit 16 --pretrain-epochs 20 \
        --output benchmarks/results/cpu-2026-12-01/pretrain_targets.json

Reports the pretraining's validation UniFrac R2 (last epoch), then validation R2 of pH at the epoch best.pt
picks (val_loss), at the last epoch and as the mean of the last 5 epochs, and the random forest on the same
split.
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
PRETRAIN_VARIANTS = {"default": [], "targets-all": ["--unifrac-targets", "all"],
                     "targets-visible": ["--unifrac-targets", "visible"]}


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
    p.add_argument("--pretrain-variants", default="default", help=f"of {list(PRETRAIN_VARIANTS)}")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--token-limit", type=int, default=32, help="For pretraining and fine-tuning (the demo's 32).")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--reuse", action="store_true", help="Reuse a pretrained encoder already in --work.")
    args = p.parse_args()
    os.environ.setdefault("AAM_NO_PROGRESS", "1")
    import torch

    from aam.data import synthetic
    from aam.data.split import read_ids
    from aam.workflows.baselines import random_forest_baseline

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = args.work / f"seed{seed}"
        paths = synthetic.write_dataset(synthetic.make_dataset(300, n_features=250, seed=seed, min_len=60, max_len=64,
                                                               richness=30, mean_depth=3000.0), work / "data")
        model = [*SMALL_MODEL, "--token-limit", str(args.token_limit)]  # the last --token-limit wins
        common = ["--seed", str(seed), "--device", "cpu", *model]
        for pre_name in args.pretrain_variants.split(","):
            pre_dir = work / f"pretrain-{pre_name}-tl{args.token_limit}-e{args.pretrain_epochs}"
            if not (args.reuse and (pre_dir / "checkpoints/best.pt").is_file()):
                run(["pretrain", "--table", str(paths["table"]), "--tree", str(paths["tree"]), "--output-dir",
                     str(pre_dir), "--epochs", str(args.pretrain_epochs), "--patience", "0", *common, *PRETRAIN_LR,
                     *PRETRAIN_VARIANTS[pre_name]])
            pre_hist = torch.load(pre_dir / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
            for name in args.variants.split(","):
                t0 = time.perf_counter()
                out = work / f"{pre_name}-{name}"
                run(["train", "--table", str(paths["table"]), "--metadata", str(paths["metadata"]),
                     "--metadata-column", "ph", "--group-column", "subject", "--pretrained-encoder",
                     str(pre_dir / "checkpoints/best.pt"), "--output-dir", str(out), "--epochs", str(args.epochs),
                     "--patience", "0", *common, *TRAIN_LR, *VARIANTS[name]])
                st = torch.load(out / "checkpoints/last.pt", weights_only=True)["trainer_state"]
                hist = st["history"]
                best = next(r for r in hist if r["epoch"] == st["best_epoch"])
                last5 = [r["val_r2"] for r in hist[-5:]]
                rows.append({"seed": seed, "pretrain_variant": pre_name, "variant": name,
                             "pretrain_unifrac_r2_last": pre_hist[-1]["val_unifrac_r2"],
                             "r2_best": best["val_r2"], "r2_last": hist[-1]["val_r2"],
                             "r2_mean_last5": sum(last5) / len(last5), "mae_best": best["val_mae"],
                             "wall_s": time.perf_counter() - t0})
                print(rows[-1], flush=True)
        rf = random_forest_baseline(paths["table"], paths["metadata"], "ph", read_ids(out / "train_samples.txt"),
                                    read_ids(out / "val_samples.txt"), n_estimators=200, seed=seed, n_jobs=2)
        rows.append({"seed": seed, "variant": "random_forest", "r2_best": rf.metrics["r2"], "mae_best": rf.metrics["mae"]})
        print(rows[-1], flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"dataset": "make_dataset(300, n_features=250, seed=SEED, min_len=60, "
                                           "max_len=64, richness=30, mean_depth=3000.0)", "train_flags": SMALL_MODEL + TRAIN_LR,
                                           "token_limit": args.token_limit, "epochs": args.epochs,
                                           "pretrain_epochs": args.pretrain_epochs,
                                           "pretrain_variants": {k: PRETRAIN_VARIANTS[k]
                                                                 for k in args.pretrain_variants.split(",")},
                                           "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
