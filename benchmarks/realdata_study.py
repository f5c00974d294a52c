"""Real-data study on ibd-2538: aam (pretrain -> train -> predict, through the CLI) vs a random forest
(`aam rf-baseline`), grouped K-fold cross-validation by host_subject_id, identical folds for every method.

    PYTHONPATH=src .venv/bin/python benchmarks/realdata_study.py --data /work/shared/data/ibd-2538 \
        --work /tmp/aam-realdata --output benchmarks/results/cpu-2026-11-30/realdata_ibd2538.json

Data: `rarefied-table.biom` (428 samples rarefied to 5,000 reads, so every method sees the same counts and
`aam` runs with --rarefy-depth 0), restricted to the tips of `tree.nwk`. Folds: StratifiedGroupKFold over
subjects (stratified by the subject's `ibd` label). Pretraining runs once on the whole table (self-supervised:
UniFrac from the tree + masked nucleotides; no labels are used); each fold's `aam train` sees only the
training-fold samples (its own validation split, by subject, picks best.pt) and `aam predict` scores the
held-out fold. The random forest is fitted on all training-fold samples; "constant" predicts the training-fold
mean (age) or class frequencies (ibd: AUC 0.5, majority-class accuracy) for reference. Derived tables go to --work
(never into the repository); the output JSON holds per-fold and mean metrics only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MISSING = "Missing: Not provided"
GROUP = "host_subject_id"
POSITIVE = "Crohns"
TARGETS = {"age": "regression", "ibd": "classification"}  # age: 18-63, one value per subject

MODEL = ["--embedding-dim", "64", "--attention-heads", "4", "--attention-layers", "2", "--asv-layers", "1",
         "--max-bp", "100", "--batch-size", "16", "--rarefy-depth", "0", "--device", "cpu", "--kernels", "auto"]
# the masked-nucleotide objective is a pretraining task; off in fine-tuning (it doubles the evaluation cost)
FINETUNE = ["--nuc-penalty", "0"]
# aam variants: name -> extra `aam train` flags (on top of the fine-tuning defaults)
VARIANTS = {"aam": [], "aam+readout": ["--asv-readout", "presence"]}


def cli(args: list[str]) -> None:
    from aam.cli.main import main

    rc = main(args)
    if rc:
        raise SystemExit(f"aam {' '.join(args[:1])} failed with exit code {rc}: aam {' '.join(args)}")


def prepare(data: Path, work: Path) -> tuple[Path, pd.DataFrame]:
    """Write the rarefied table restricted to the tree's tips; metadata of its samples (index sample_name)."""
    import biom

    from aam.ops.unifrac import read_tree

    table = biom.load_table(str(data / "rarefied-table.biom"))
    n_all = table.shape[0]
    tree = read_tree(data / "tree.nwk")
    tips = {tree.names[i] for i in np.flatnonzero(tree.is_tip)}
    feats = [f for f in table.ids(axis="observation") if f in tips]
    table = table.filter(feats, axis="observation", inplace=False).remove_empty(axis="sample", inplace=False)
    path = work / "table.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        table.to_hdf5(fh, "ibd-2538 rarefied, tree tips only")
    md = pd.read_csv(data / "metadata.tsv", sep="\t", dtype=str, index_col=0)
    md = md.loc[[str(s) for s in table.ids()]]
    print(f"table: {table.shape[1]} samples x {table.shape[0]} ASVs in the tree (of {n_all}); "
          f"{md[GROUP].nunique()} subjects",
          flush=True)
    return path, md


def make_folds(md: pd.DataFrame, k: int, seed: int) -> list[list[str]]:
    """Test-fold sample IDs: whole subjects per fold, stratified by the subject's ibd label."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    ids = md.index.to_numpy()
    return [ids[test].tolist() for _, test in splitter.split(ids, md["ibd"], md[GROUP])]


def subset_table(table: Path, ids: list[str], out: Path) -> Path:
    import biom

    t = biom.load_table(str(table)).filter(ids, axis="sample", inplace=False).remove_empty(axis="observation",
                                                                                           inplace=False)
    with biom.util.biom_open(str(out), "w") as fh:
        t.to_hdf5(fh, "fold subset")
    return out


def score(kind: str, truth: pd.Series, pred: pd.DataFrame) -> dict[str, float]:
    """MAE/RMSE/R2 (regression) or AUC (Crohns vs Control)/accuracy (classification) on the test fold."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    from aam.training.metrics import regression_metrics

    pred = pred.set_index("sample_id").loc[truth.index]
    if kind == "regression":
        return regression_metrics(truth.astype(float).to_numpy(), pred["prediction"].astype(float).to_numpy())
    y = (truth == POSITIVE).to_numpy()
    return {"auc": float(roc_auc_score(y, pred[f"prob_{POSITIVE}"].astype(float))),
            "accuracy": float(accuracy_score(truth.to_numpy(), pred["prediction"].astype(str).to_numpy()))}


def pretrain(table: Path, data: Path, work: Path, args: argparse.Namespace) -> tuple[Path, float]:
    ckpt = work / "pretrain/checkpoints/best.pt"
    wall = work / "pretrain.wall_s"
    if ckpt.is_file() and args.reuse:
        print(f"reusing {ckpt}", flush=True)
        return ckpt, float(wall.read_text()) if wall.is_file() else float("nan")
    t0 = time.perf_counter()
    cli(["pretrain", "--table", str(table), "--tree", str(data / "tree.nwk"), "--output-dir", str(work / "pretrain"),
         "--epochs", str(args.pretrain_epochs), "--patience", "0", "--lr", "2e-3", "--seed", str(args.seed),
         "--token-limit", str(args.token_limit), *MODEL])
    wall.write_text(f"{time.perf_counter() - t0:.1f}\n")
    return ckpt, time.perf_counter() - t0


def run_rf(table: Path, metadata: Path, column: str, kind: str, fold_dir: Path,
           args: argparse.Namespace) -> pd.DataFrame:
    out = fold_dir / f"rf_{column}.tsv"
    extra = ["--classifier"] if kind == "classification" else []
    cli(["rf-baseline", "--table", str(table), "--metadata", str(metadata), "--metadata-column", column,
         "--train-samples", str(fold_dir / "train.txt"), "--val-samples", str(fold_dir / "test.txt"),
         "--output", str(out), "--n-estimators", str(args.rf_trees), "--random-seed", str(args.seed),
         "--n-jobs", "2", *extra])
    frame = pd.read_csv(out, sep="\t", dtype={"sample_id": str})
    return frame.rename(columns={"predicted": "prediction"})


def run_constant(md: pd.DataFrame, column: str, kind: str, train_ids: list[str], test_ids: list[str]) -> pd.DataFrame:
    """Reference: the training-fold mean (regression) or class frequencies (classification) for every sample."""
    y = md.loc[train_ids, column]
    if kind == "regression":
        return pd.DataFrame({"sample_id": test_ids, "prediction": y.astype(float).mean()})
    freq = y.value_counts(normalize=True)
    return pd.DataFrame({"sample_id": test_ids, "prediction": freq.idxmax(),
                         f"prob_{POSITIVE}": float(freq.get(POSITIVE, 0.0))})


def run_aam(variant: str, flags: list[str], ckpt: Path, metadata: Path, column: str, kind: str, fold_dir: Path,
            args: argparse.Namespace) -> pd.DataFrame:
    run = fold_dir / f"{variant}_{column}"
    out = run / "test_predictions.tsv"
    if args.reuse and out.is_file():  # finished in an earlier invocation with the same --work
        return pd.read_csv(out, sep="\t", dtype={"sample_id": str})
    extra = ["--classifier"] if kind == "classification" else []
    cli(["train", "--table", str(fold_dir / "train.biom"), "--metadata", str(metadata), "--metadata-column", column,
         "--group-column", GROUP, "--pretrained-encoder", str(ckpt), "--output-dir", str(run), "--epochs",
         str(args.epochs), "--patience", "0", "--lr", "2e-3", "--seed", str(args.seed), *FINETUNE, *MODEL, *extra,
         *flags])
    cli(["predict", "--model", str(run / "checkpoints/best.pt"), "--table", str(fold_dir / "test.biom"),
         "--output", str(out), "--no-rarefy", "--device", "cpu"])
    return pd.read_csv(out, sep="\t", dtype={"sample_id": str})


def summarize(rows: list[dict]) -> list[dict]:
    frame = pd.DataFrame(rows)
    out = []
    for (target, method), g in frame.groupby(["target", "method"], sort=False):
        metrics = [c for c in ("mae", "rmse", "r2", "auc", "accuracy") if c in g and g[c].notna().all()]
        out.append({"target": target, "method": method, "folds": len(g),
                    **{f"{m}_mean": float(g[m].mean()) for m in metrics},
                    **{f"{m}_sd": float(g[m].std(ddof=1)) for m in metrics},
                    "wall_s_total": float(g["wall_s"].sum())})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("AAM_SHARED_DATA", "/work/shared/data")) / "ibd-2538")
    p.add_argument("--work", type=Path, default=Path("/tmp/aam-realdata"), help="Derived tables and runs.")
    p.add_argument("--output", type=Path, required=True, help="Results JSON (a TSV with the same stem is written).")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-limit", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--rf-trees", type=int, default=500)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"aam variants to run, of {list(VARIANTS)}.")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"of {list(TARGETS)}.")
    p.add_argument("--reuse", action="store_true",
                   help="Reuse the pretrained encoder and finished aam runs (test_predictions.tsv) in --work.")
    args = p.parse_args()
    needed = ["rarefied-table.biom", "tree.nwk", "metadata.tsv"]
    absent = [n for n in needed if not (args.data / n).is_file()]
    if absent:
        print(f"error: {args.data} lacks {', '.join(absent)}; pass --data <folder of ibd-2538> "
              "(or set AAM_SHARED_DATA to its parent)", file=sys.stderr)
        return 2
    os.environ.setdefault("AAM_NO_PROGRESS", "1")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    targets = [t for t in args.targets.split(",") if t]
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    table, md = prepare(args.data, args.work)
    metadata = args.data / "metadata.tsv"
    folds = make_folds(md, args.folds, args.seed)
    ckpt, pretrain_s = pretrain(table, args.data, args.work, args)
    rows = []
    for k, test_ids in enumerate(folds):
        fold_dir = args.work / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        test = set(test_ids)
        train_ids = [s for s in md.index if s not in test]
        (fold_dir / "train.txt").write_text("\n".join(train_ids) + "\n")
        (fold_dir / "test.txt").write_text("\n".join(test_ids) + "\n")
        subset_table(table, train_ids, fold_dir / "train.biom")
        subset_table(table, test_ids, fold_dir / "test.biom")
        subjects = sorted(md.loc[test_ids, GROUP].unique())
        print(f"fold {k}: {len(train_ids)} train / {len(test_ids)} test samples; test subjects {subjects}", flush=True)
        for column in targets:
            kind = TARGETS[column]
            truth = md.loc[test_ids, column]
            for method in ["constant", "random_forest", *variants]:
                t0 = time.perf_counter()
                if method == "constant":
                    pred = run_constant(md, column, kind, train_ids, test_ids)
                elif method == "random_forest":
                    pred = run_rf(table, metadata, column, kind, fold_dir, args)
                else:
                    pred = run_aam(method, VARIANTS[method], ckpt, metadata, column, kind, fold_dir, args)
                metrics = score(kind, truth, pred)
                wall = fold_dir / f"{method}_{column}.wall_s"
                if method.startswith("aam") and wall.is_file() and args.reuse:
                    t0 = time.perf_counter() - float(wall.read_text())  # reused run: its measured time
                else:
                    wall.write_text(f"{time.perf_counter() - t0:.1f}\n")
                row = {"fold": k, "target": column, "method": method, "n_test": len(test_ids),
                       "test_subjects": len(subjects), **metrics, "wall_s": time.perf_counter() - t0}
                rows.append(row)
                print(f"  {column:4s} {method:14s} " + ", ".join(f"{m} {v:.3f}" for m, v in metrics.items())
                      + f" ({row['wall_s']:.0f} s)", flush=True)
        write_results(args, md, folds, pretrain_s, t_start, variants, rows)
    result = write_results(args, md, folds, pretrain_s, t_start, variants, rows)
    print(pd.DataFrame(result["summary"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"total {result['total_wall_s']:.0f} s; wrote {args.output}")
    return 0


def write_results(args: argparse.Namespace, md: pd.DataFrame, folds: list[list[str]], pretrain_s: float,
                  t_start: float, variants: list[str], rows: list[dict]) -> dict:
    """Results so far (rewritten after every fold, so an interrupted study keeps its finished folds)."""
    summary = summarize(rows)
    result = {"dataset": "ibd-2538 rarefied-table.biom (5,000 reads/sample), tree tips only",
              "n_samples": len(md), "n_subjects": int(md[GROUP].nunique()),
              "folds": [sorted(md.loc[f, GROUP].unique().tolist()) for f in folds],
              "fold_scheme": f"StratifiedGroupKFold(n_splits={args.folds}, shuffle=True, random_state={args.seed}) "
                             f"by {GROUP}, stratified by ibd",
              "pretraining": "once, on all samples of the table (self-supervised, labels unused)",
              "model_flags": MODEL + ["--token-limit", str(args.token_limit)], "finetune_flags": FINETUNE,
              "variants": {v: VARIANTS[v] for v in variants},
              "pretrain_epochs": args.pretrain_epochs, "train_epochs": args.epochs, "rf_trees": args.rf_trees,
              "pretrain_wall_s": pretrain_s, "total_wall_s": time.perf_counter() - t_start,
              # pretraining + every method's runs as measured (runs reused with --reuse keep their first timing)
              "measured_wall_s": pretrain_s + sum(r["wall_s"] for r in rows),
              "per_fold": rows, "summary": summary}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    pd.DataFrame(rows).to_csv(args.output.with_suffix(".tsv"), sep="\t", index=False, float_format="%.4f")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
