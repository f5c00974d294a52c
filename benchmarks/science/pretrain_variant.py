"""One pretraining variant, judged by what fine-tuning makes of it (docs/SCIENCE.md).

Runs the evaluation command's `aam pretrain` on all of oral-age-dev with the variant's extra flags, records its
wall time, samples/s and validation metrics, then fine-tunes its encoder on the fixed 5 random folds of the
model-development table with `explore.py` (one model per fold: --ensemble 1) and scores the held-out folds.
Compare a variant with `nuc_pass.py`'s `shared` row (today's defaults, same folds and fine-tuning).

    PYTHONPATH=src .venv/bin/python benchmarks/science/pretrain_variant.py --name bf16 --work /tmp/pv \
        --out benchmarks/results/science-2026-12-07/pretrain_bf16.json -- --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuc_pass import PRETRAIN, REPO, finetune, pretrain  # noqa: E402  (the evaluation command's pretraining)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "oral-age-dev")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("flags", nargs="*", help="the variant's extra `aam pretrain` flags (after --)")
    args = ap.parse_args()
    pre = args.work / f"pre-{args.name}"
    run = pretrain(pre, args.flags, args.data)
    result = {"name": args.name, "pretrain_flags": [*PRETRAIN, *args.flags], "pretrain_wall_s": run["wall_s"],
              "train_samples_per_s": run["train_samples_per_s"], "best_epoch": run["best_epoch"],
              "best": run["best"],
              "finetune": finetune(f"pv_{args.name}", pre / "checkpoints" / "best.pt", args.work, args.data,
                                   ["--ensemble", "1"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("name", "pretrain_wall_s", "best")} |
                     {"mae": result["finetune"]["mae_mean"]}, indent=1))


if __name__ == "__main__":
    main()
