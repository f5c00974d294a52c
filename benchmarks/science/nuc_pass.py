"""Does the masked-nucleotide task need its own ASV-encoder pass? (issue #21, item 4; docs/SCIENCE.md)

For each `--nuc-pass` mode (separate: a second pass over masked copies of a quarter of the batch's ASVs;
shared: the copies replace their clean rows in the one pass), this runs the evaluation command's
`aam pretrain` on all of oral-age-dev and records its time per epoch and its validation metrics (UniFrac R2,
nucleotide accuracy; validation always embeds clean sequences). Then `explore.py` fine-tunes on the fixed 5
random folds with each encoder (the same folds, options and scoring as the model-development table) and the
paired per-fold MAEs are compared.

    PYTHONPATH=src .venv/bin/python benchmarks/science/nuc_pass.py --work /tmp/nuc-pass \
        --out benchmarks/results/science-2026-12-07/nuc_pass.json -- --ensemble 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = ["--epochs", "10", "--batch-size", "16", "--token-limit", "128", "--embedding-dim", "64",
            "--attention-layers", "2", "--attention-heads", "4", "--seed", "1"]
MODES = ("separate", "shared")


def pretrain(out: Path, flags: list[str], data: Path) -> dict:
    """The evaluation command's `aam pretrain` into `out` with extra `flags` (skipped when `out` already holds
    best.pt): its command, wall time, samples/s per epoch and best validation metrics (from training.log)."""
    cmd = [sys.executable, "-m", "aam.cli.main", "pretrain", "--table", str(data / "table.biom"), "--tree",
           str(data / "tree.nwk"), "--output-dir", str(out), *PRETRAIN, *flags]
    env = dict(os.environ, AAM_NO_PROGRESS="1", PYTHONPATH=str(REPO / "src"))
    start = time.perf_counter()
    if not (out / "checkpoints" / "best.pt").exists():
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    log = (out / "training.log").read_text()
    speeds = [float(v) for v in re.findall(r"train_samples_per_s=([0-9.]+)", log)]
    best = re.findall(r"done: best epoch (\d+): (.*?); checkpoints", log)[-1]
    metrics = {k: float(v) for k, v in (kv.split("=") for kv in best[1].split(", "))}
    return {"command": subprocess.list2cmdline(cmd[1:]), "wall_s": wall, "train_samples_per_s": speeds,
            "best_epoch": int(best[0]), "best": metrics}


def finetune(name: str, encoder: Path, work: Path, data: Path, flags: list[str]) -> dict:
    """explore.py's 5-fold fine-tuning of `encoder` with `flags` (skipped when its result exists): its JSON."""
    result = work / "explore" / f"{name}.json"
    if not result.exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks/science/explore.py"), "--name", name, "--encoder",
                        str(encoder), "--work", str(work / "ft"), "--out", str(work / "explore"), "--data",
                        str(data), "--", *flags], check=True)
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "oral-age-dev")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("flags", nargs="*", help="extra `aam train` flags of the fine-tuning (after --)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"pretrain_options": PRETRAIN, "finetune_flags": args.flags, "modes": {}}
    for mode in MODES:
        report["modes"][mode] = {"pretrain": pretrain(args.work / f"pre-{mode}", ["--nuc-pass", mode], args.data)}
    for mode in MODES:
        report["modes"][mode]["finetune"] = finetune(f"nuc_{mode}", args.work / f"pre-{mode}" / "checkpoints" /
                                                     "best.pt", args.work, args.data, args.flags)
    maes = {m: [f["mae"] for f in report["modes"][m]["finetune"]["folds"].values()] for m in MODES}
    report["shared_minus_separate_mae_per_fold"] = [s - p for s, p in zip(maes["shared"], maes["separate"], strict=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({m: {"pretrain_s": report["modes"][m]["pretrain"]["wall_s"],
                          "best": report["modes"][m]["pretrain"]["best"], "mae": maes[m]} for m in MODES}, indent=1))


if __name__ == "__main__":
    main()
