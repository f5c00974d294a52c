"""Markdown tables for docs/SCIENCE.md from the JSON that study.py and label_efficiency.py wrote.

    .venv/bin/python benchmarks/science/report.py benchmarks/results/science-2026-12-07 [--variant default]
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
        cells = [f"{np.mean([r[m] for r in sel]):.2f} ± {np.std([r[m] for r in sel]):.2f}" for m in methods]
        best = min(range(len(methods)), key=lambda i: np.mean([r[methods[i]] for r in sel]))
        cells[best] = f"**{cells[best]}**"
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--variant", default="default")
    args = ap.parse_args()
    for task, title in TASK_TITLES.items():
        path = args.results / f"{args.variant}_{task}.json"
        if path.is_file():
            res = json.loads(path.read_text())
            print(f"### {title}\n\n{task_table(res)}\n\n`{res['command']}` ({res['n_samples']} samples, "
                  f"{res['cv_wall_s'] / 60:.0f} min)\n")
    if (args.results / "label_efficiency.json").is_file():
        print(f"### Label efficiency\n\n{label_table(args.results / 'label_efficiency.json')}\n")


if __name__ == "__main__":
    main()
