"""Label efficiency on oral-age-dev: aam and the classical baselines trained on 50, 100, 200, 400 and all labelled
samples, scored on the same held-out samples, repeated over seeds. The reason to pretrain at all: does a
pretrained encoder (which saw every sample, without labels) pay when labels are few?

    PYTHONPATH=src .venv/bin/python benchmarks/science/label_efficiency.py --data ../shared/data \
        --work /tmp/aam-labels --out benchmarks/results/science-2026-12-07 [--sizes 50,100,200,400,all] [--seeds 0,1,2]

Per seed: 20% of the samples are the test set (never labelled for anyone); from the other 80% a random subset of
each size is labelled (nested: the 100 contain the 50). aam runs `aam train` with the evaluation command's options
and the encoder pretrained by that command (`study.py` makes it, or --encoder), on a metadata file where only
the subset has an age; `aam predict` scores the test set. The random forest, boosted trees and ridge are fitted on
the same subset; the constant predicts the subset's mean age. Also `aam train` without the pretrained encoder
(--no-pretrained) at each size, so the table shows what pretraining adds. Writes label_efficiency.json and
label_efficiency.png into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import TRAIN, aam, prepare, pretrain  # noqa: E402

BASELINES = ("random_forest", "boosted_trees", "ridge")


def aam_mae(table: Path, md: pd.DataFrame, labelled: list[str], test: list[str], run: Path, encoder: Path | None,
            flags: list[str]) -> float:
    pred_path = run / "pred.tsv"
    if not pred_path.is_file():
        run.mkdir(parents=True, exist_ok=True)
        sub = md.copy()
        sub.loc[~sub.index.isin(labelled), "age"] = np.nan  # only the labelled subset has a target
        sub.to_csv(run / "metadata.tsv", sep="\t", index_label="sample_id")
        enc = ["--pretrained-encoder", str(encoder)] if encoder else []
        aam(["train", "--table", str(table), "--metadata", str(run / "metadata.tsv"), "--metadata-column", "age",
             "--output-dir", str(run / "ft"), *TRAIN, *enc, *flags])
        aam(["predict", "--model", str(run / "ft/checkpoints/best.pt"), "--table", str(table), "--output",
             str(pred_path)])
    pred = pd.read_csv(pred_path, sep="\t", index_col=0)["prediction"].reindex(test)
    return float(np.mean(np.abs(pred.to_numpy() - md.loc[test, "age"].to_numpy(float))))


def baseline_maes(table_path: Path, metadata_path: Path, md: pd.DataFrame, labelled: list[str], test: list[str],
                  seed: int) -> dict:
    from aam.data.metadata import load_metadata
    from aam.workflows.baselines import fit_baselines

    fits = fit_baselines(str(table_path), load_metadata(metadata_path), "age", labelled, test, methods=BASELINES,
                         seed=seed, n_jobs=2)
    out = {m: float(r.metrics["mae"]) for m, r in fits.items()}
    out["constant"] = float(np.mean(np.abs(md.loc[labelled, "age"].astype(float).mean()
                                           - md.loc[test, "age"].to_numpy(float))))
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in [m for m in frame.columns if m not in ("seed", "size", "n_labelled")]:
        g = frame.groupby("n_labelled")[method]
        ax.errorbar(g.mean().index, g.mean().values, yerr=g.std().values, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test MAE (years)")
    ax.set_title("oral-age-dev: age, mean and SD over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="50,100,200,400,all")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-pretrained", action="store_true", help="also train aam from scratch (no pretrained encoder)")
    ap.add_argument("--scratch-max", type=int, default=None,
                    help="train from scratch only up to this many labelled samples (its ASV encoder trains too: "
                         "about 10x slower than fine-tuning on the frozen pretrained encoder)")
    ap.add_argument("train_flags", nargs="*", help="extra `aam train` flags (after --)")
    args = ap.parse_args()
    sets = prepare(args.data, args.work)
    oral = sets["oral"]
    encoder, _ = pretrain("oral", oral, args.work, [])
    md = pd.read_csv(oral["metadata"], sep="\t", index_col=0, dtype={"sample_id": str, "study": str})
    ids = md.index.astype(str).to_numpy()
    rows = []
    t0 = time.perf_counter()
    for seed in map(int, args.seeds.split(",")):
        rng = np.random.default_rng(seed)
        order = rng.permutation(ids)
        n_test = len(ids) // 5
        test, pool = order[:n_test].tolist(), order[n_test:].tolist()
        for size in args.sizes.split(","):
            n = len(pool) if size == "all" else int(size)
            labelled = pool[:n]
            row = {"seed": seed, "size": size, "n_labelled": n}
            row.update(baseline_maes(oral["table"], oral["metadata"], md, labelled, test, seed))
            row["aam"] = aam_mae(oral["table"], md, labelled, test, args.work / "labels" / f"s{seed}_n{size}",
                                 encoder, args.train_flags)
            if args.no_pretrained and (args.scratch_max is None or n <= args.scratch_max):
                row["aam_no_pretraining"] = aam_mae(oral["table"], md, labelled, test,
                                                    args.work / "labels" / f"s{seed}_n{size}_scratch", None,
                                                    args.train_flags)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_efficiency.json").write_text(json.dumps(
        {"rows": rows, "train_flags": args.train_flags, "wall_s": time.perf_counter() - t0,
         "protocol": "per seed: 20% test split; nested labelled subsets of the other 80%"}, indent=1) + "\n")
    plot(rows, args.out / "label_efficiency.png")


if __name__ == "__main__":
    main()
