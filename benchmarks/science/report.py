"""Markdown tables for docs/SCIENCE.md from the JSON that study.py, label_efficiency.py and explore.py wrote.

    .venv/bin/python benchmarks/science/report.py benchmarks/results/science-2026-12-07 [--variant default,single]

Per task the first --variant with a result is shown; explore.py's variants (in <results>/explore) are listed with
the classical methods fitted on the same folds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METHODS = ("aam", "random_forest", "boosted_trees", "ridge", "constant")
TASK_TITLES = {
    "oral-random": "oral-age-dev, age, 5 random folds",
    "oral-loso": "oral-age-dev, age, leave one study out (9 folds)",
    "oral-ag": "oral-age-dev, American Gut samples only, age, 5 folds",
    "ibd-age": "ibd-2538, age, 5 folds grouped by subject",
    "ibd-ibd": "ibd-2538, Crohn's vs control, 5 folds grouped by subject",
}


def task_table(res: dict) -> str:
    classifier = res["task"] == "ibd-ibd"
    keys = ("auc", "accuracy", "f1") if classifier else ("mae", "rmse", "r2")
    mean = {r["method"]: r for r in res["summary"] if r["fold"] == "mean"}
    sd = {r["method"]: r for r in res["summary"] if r["fold"] == "sd"}
    head = "| method | " + " | ".join(k.upper() if k != "r2" else "R2" for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    best_key = keys[0]
    values = {m: mean[m].get(best_key) for m in METHODS if m in mean}
    best = (max if classifier else min)((v for v in values.values() if v is not None), default=None)
    for m in METHODS:
        if m not in mean:
            continue
        cells = []
        for k in keys:
            v, s = mean[m].get(k), sd[m].get(k)
            cell = "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f} ± {s:.3f}"
            cells.append(f"**{cell}**" if k == best_key and v == best else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label_table(path: Path) -> str:
    rows = json.loads(path.read_text())["rows"]
    methods = [m for m in rows[0] if m not in ("seed", "size", "n_labelled")]
    sizes = list(dict.fromkeys(r["n_labelled"] for r in rows))
    lines = ["| labelled samples | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for n in sizes:
        sel = [r for r in rows if r["n_labelled"] == n]
        cells = [f"{np.mean(v):.2f} ± {np.std(v):.2f}" if (v := [r[m] for r in sel if m in r]) else "not run"
                 for m in methods]
        best = min(range(len(methods)), key=lambda i: np.mean([r.get(methods[i], np.inf) for r in sel]))
        cells[best] = f"**{cells[best]}**"
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def explore_table(folder: Path) -> str:
    """The explore.py variants on the random folds, best first, under the baselines of the same folds."""
    lines = ["| variant | `aam train` flags | MAE (mean ± SD over 5 folds) | per fold |", "|---|---|---|---|"]
    base = folder / "baselines.json"
    if base.is_file():
        res = json.loads(base.read_text())
        for m, v in res["mae_mean"].items():
            folds = " ".join(f"{f[m]['mae']:.2f}" for f in res["folds"].values())
            lines.append(f"| {m} | (classical) | {v:.3f} ± {res['mae_sd'][m]:.3f} | {folds} |")
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if not p.stem.startswith("baselines")]
    for res in sorted((r for r in runs if r.get("split", "random") == "random"), key=lambda r: r["mae_mean"]):
        folds = " ".join(f"{f['mae']:.2f}" for f in res["folds"].values())
        lines.append(f"| {res['name']} | `{' '.join(res['flags'])}` | {res['mae_mean']:.3f} ± {res['mae_sd']:.3f} | "
                     f"{folds} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--variant", default="default,single", help="variants in order of preference")
    args = ap.parse_args()
    if (args.results / "explore").is_dir():
        print(f"### Model development (explore.py)\n\n{explore_table(args.results / 'explore')}\n")
    for task, title in TASK_TITLES.items():
        paths = [args.results / f"{v}_{task}.json" for v in args.variant.split(",")]
        path = next((p for p in paths if p.is_file()), None)
        if path is not None:
            res = json.loads(path.read_text())
            print(f"### {title}\n\n{task_table(res)}\n\n`{res['command']}` ({res['n_samples']} samples, "
                  f"{res['cv_wall_s'] / 60:.0f} min, variant {res['variant']})\n")
    if (args.results / "label_efficiency.json").is_file():
        print(f"### Label efficiency\n\n{label_table(args.results / 'label_efficiency.json')}\n")


if __name__ == "__main__":
    main()
