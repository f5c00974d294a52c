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
from nuc_pass import PRETRAIN, REPO  # noqa: E402  (the evaluation command's pretraining options)


def main() -> None:
    import os
    import re
    import subprocess
    import time

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "oral-age-dev")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("flags", nargs="*", help="the variant's extra `aam pretrain` flags (after --)")
    args = ap.parse_args()
    pre = args.work / f"pre-{args.name}"
    cmd = [sys.executable, "-m", "aam.cli.main", "pretrain", "--table", str(args.data / "table.biom"), "--tree",
           str(args.data / "tree.nwk"), "--output-dir", str(pre), *PRETRAIN, *args.flags]
    env = dict(os.environ, AAM_NO_PROGRESS="1", PYTHONPATH=str(REPO / "src"))
    start = time.perf_counter()
    if not (pre / "checkpoints" / "best.pt").exists():
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    log = (pre / "training.log").read_text()
    best = re.findall(r"done: best epoch (\d+): (.*?); checkpoints", log)[-1]
    result = {"name": args.name, "pretrain_flags": [*PRETRAIN, *args.flags], "pretrain_wall_s": wall,
              "train_samples_per_s": [float(v) for v in re.findall(r"train_samples_per_s=([0-9.]+)", log)],
              "best_epoch": int(best[0]),
              "best": {k: float(v) for k, v in (kv.split("=") for kv in best[1].split(", "))}}
    name = f"pv_{args.name}"
    explore_out = args.work / "explore"
    subprocess.run([sys.executable, str(REPO / "benchmarks/science/explore.py"), "--name", name, "--encoder",
                    str(pre / "checkpoints" / "best.pt"), "--work", str(args.work / "ft"), "--out",
                    str(explore_out), "--data", str(args.data), "--", "--ensemble", "1"], check=True, env=env)
    result["finetune"] = json.loads((explore_out / f"{name}.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("name", "pretrain_wall_s", "best")} |
                     {"mae": result["finetune"]["mae_mean"]}, indent=1))


if __name__ == "__main__":
    main()
