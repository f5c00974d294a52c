"""The model-development harness behind docs/SCIENCE.md ("What changed, and what each change bought"): 5-fold
cross-validation of one `aam train` variant on oral-age-dev, the same folds for every variant (KFold, shuffled,
seed 0; or leave one study out with --split loso), two folds at a time with one thread each. With --baselines,
the random forest, boosted trees, ridge and the constant are fitted on the same folds instead.

    PYTHONPATH=src .venv/bin/python benchmarks/science/explore.py --name mae --encoder /tmp/pre/checkpoints/best.pt \
        --work /tmp/aam-explore --out benchmarks/results/science-2026-12-07/explore -- --loss-type mae

Each fold: the test samples' ages are blanked in a copy of the metadata (training never sees them), `aam train`
runs with the evaluation command's options plus the variant's flags, and `aam predict` scores the test samples.
The encoder is the evaluation command's `aam pretrain` on all of oral-age-dev (no labels). Writes <name>.json
(per-fold MAE, flags, wall time) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
MODEL = ["--epochs", "30", "--batch-size", "16", "--token-limit", "128", "--embedding-dim", "64",
         "--attention-layers", "2", "--attention-heads", "4", "--seed", "1"]


def folds(md: pd.DataFrame, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    if split == "random":
        return list(KFold(5, shuffle=True, random_state=0).split(md.index))
    studies = sorted(md["study"].unique())
    return [(np.flatnonzero(md["study"].to_numpy() != s), np.flatnonzero(md["study"].to_numpy() == s)) for s in studies]


def launch(k: int, test: np.ndarray, md: pd.DataFrame, args: argparse.Namespace) -> subprocess.Popen:
    out = args.work / args.name / f"fold{k}"
    out.mkdir(parents=True, exist_ok=True)
    blanked = md.copy()
    blanked.iloc[test, blanked.columns.get_loc("age")] = np.nan
    blanked.to_csv(out / "metadata.tsv", sep="\t", index_label="sample_id")
    table = args.data / "table.biom"
    aam = [sys.executable, "-m", "aam.cli.main"]
    train = [*aam, "train", "--table", str(table), "--metadata", str(out / "metadata.tsv"), "--metadata-column", "age",
             "--output-dir", str(out / "ft"), *MODEL, *(["--pretrained-encoder", str(args.encoder)] if args.encoder
                                                       else []), *args.flags]
    predict = [*aam, "predict", "--model", str(out / "ft/checkpoints/best.pt"), "--table", str(table), "--output",
               str(out / "pred.tsv")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", AAM_NO_PROGRESS="1",
               PYTHONPATH=str(args.src))
    script = f"{subprocess.list2cmdline(train)} > {out}/train.out 2>&1 && {subprocess.list2cmdline(predict)} > " \
             f"{out}/predict.out 2>&1"
    return subprocess.Popen(script, shell=True, env=env)


def baselines(md: pd.DataFrame, splits: list, args: argparse.Namespace) -> None:
    """The classical methods and the constant (training mean) on the same folds: <out>/baselines[_loso].json."""
    sys.path.insert(0, str(args.src))
    from aam.workflows.baselines import fit_baselines

    t0 = time.perf_counter()
    result: dict = {"name": "baselines", "split": args.split, "folds": {}}
    ids = list(md.index.astype(str))
    for k, (train, test) in enumerate(splits):
        fitted = fit_baselines(args.data / "table.biom", args.data / "metadata.tsv", "age", [ids[i] for i in train],
                               [ids[i] for i in test], seed=0, n_jobs=args.parallel)
        fold = {method: {"mae": res.metrics["mae"], "n": len(res.sample_ids)} for method, res in fitted.items()}
        truth = md["age"].to_numpy(float)
        fold["constant"] = {"mae": float(np.nanmean(np.abs(truth[test] - np.nanmean(truth[train])))),
                            "n": len(test)}
        result["folds"][k] = fold
        print(f"fold {k}: " + ", ".join(f"{m} {v['mae']:.3f}" for m, v in fold.items()), flush=True)
    methods = result["folds"][0].keys()
    result["mae_mean"] = {m: float(np.mean([f[m]["mae"] for f in result["folds"].values()])) for m in methods}
    result["mae_sd"] = {m: float(np.std([f[m]["mae"] for f in result["folds"].values()])) for m in methods}
    result["wall_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    name = "baselines" if args.split == "random" else f"baselines_{args.split}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{name}: " + ", ".join(f"{m} {v:.3f}" for m, v in result["mae_mean"].items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "oral-age-dev")
    ap.add_argument("--encoder", type=Path, default=None, help="pretrained encoder (checkpoints/best.pt)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", choices=("random", "loso"), default="random")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--src", type=Path, default=REPO / "src", help="the aam source tree to run")
    ap.add_argument("--baselines", action="store_true",
                    help="fit the forest, boosted trees, ridge and the constant on the folds instead of aam")
    ap.add_argument("flags", nargs="*", help="the variant's `aam train` flags (after --)")
    args = ap.parse_args()
    md = pd.read_csv(args.data / "metadata.tsv", sep="\t", index_col=0, dtype={"sample_id": str, "study": str})
    splits = folds(md, args.split)
    if args.baselines:
        return baselines(md, splits, args)
    t0 = time.perf_counter()
    todo, running = list(range(len(splits))), []
    while todo or running:
        while todo and len(running) < args.parallel:
            k = todo.pop(0)
            running.append((k, launch(k, splits[k][1], md, args)))
        time.sleep(5)
        for k, proc in list(running):
            if proc.poll() is not None:
                running.remove((k, proc))
                if proc.returncode:
                    raise SystemExit(f"fold {k} failed (exit {proc.returncode}); see {args.work / args.name}")
    result = {"name": args.name, "flags": args.flags, "split": args.split, "encoder": str(args.encoder),
              "wall_s": time.perf_counter() - t0, "folds": {}}
    for k, (_, test) in enumerate(splits):
        pred = pd.read_csv(args.work / args.name / f"fold{k}" / "pred.tsv", sep="\t", index_col=0)["prediction"]
        ids = md.index[test]
        err = pred.reindex(ids).to_numpy() - md.loc[ids, "age"].to_numpy(float)
        result["folds"][k] = {"mae": float(np.nanmean(np.abs(err))), "n": int(np.isfinite(err).sum())}
    maes = [f["mae"] for f in result["folds"].values()]
    result["mae_mean"], result["mae_sd"] = float(np.mean(maes)), float(np.std(maes))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.name}: MAE {result['mae_mean']:.3f} ± {result['mae_sd']:.3f} over {len(maes)} folds "
          f"({result['wall_s']:.0f} s) flags {args.flags}", flush=True)


if __name__ == "__main__":
    main()
