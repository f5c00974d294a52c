"""The real-data comparison of docs/SCIENCE.md: `aam cv` (aam next to a random forest, boosted trees, a ridge on
CLR and a constant, all on the same folds) on every task, with the options of the project's evaluation command.

    PYTHONPATH=src .venv/bin/python benchmarks/science/study.py --data ../shared/data --work /tmp/aam-science \
        --out benchmarks/results/science-2026-12-07 [--tasks oral-random,oral-loso,...] [--variant NAME -- FLAGS]

Tasks
- oral-random: oral-age-dev, age, 5 random folds.
- oral-loso: oral-age-dev, age, leave one study out (9 folds, `--group-column study`).
- oral-ag: the American Gut samples of oral-age-dev (study 10317, the only wide age range), age, 5 folds.
- ibd-age / ibd-ibd: ibd-2538 (rarefied table), age (MAE) and Crohn's vs control (ROC AUC), 5 folds grouped by
  host_subject_id (24 subjects; a subject's samples never straddle train and test).
Pretraining (no labels) runs once per dataset on all its samples with the evaluation command's options; each
fold's fine-tuning sees only its training samples. Derived tables and runs go to --work (never into the
repository); --out gets one JSON per variant and task: the commands, wall times and `aam cv`'s summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

# The evaluation command of the issue (pretrain and train share these), minus the paths.
MODEL = ["--batch-size", "16", "--token-limit", "128", "--embedding-dim", "64", "--attention-layers", "2",
         "--attention-heads", "4", "--seed", "1"]
PRETRAIN = ["--epochs", "10", *MODEL]
TRAIN = ["--epochs", "30", *MODEL]
TASKS = {
    "oral-random": {"data": "oral", "column": "age", "cv": ["--folds", "5"]},
    "oral-loso": {"data": "oral", "column": "age", "cv": ["--folds", "9", "--group-column", "study"]},
    "oral-ag": {"data": "oral-ag", "column": "age", "cv": ["--folds", "5"]},
    "ibd-age": {"data": "ibd", "column": "age", "cv": ["--folds", "5", "--group-column", "host_subject_id"]},
    "ibd-ibd": {"data": "ibd", "column": "ibd",
                "cv": ["--folds", "5", "--group-column", "host_subject_id", "--classifier"]},
}
AG_STUDY = "10317"


def aam(args: list[str]) -> None:
    from aam.cli.main import main

    rc = main(args)
    if rc:
        raise SystemExit(f"aam {args[0]} failed with exit code {rc}: aam {' '.join(args)}")


def prepare(data: Path, work: Path) -> dict[str, dict[str, Path]]:
    """The three datasets as (table, metadata, tree) paths; derived files are written once into --work."""
    import biom

    oral = data / "oral-age-dev"
    sets = {"oral": {"table": oral / "table.biom", "metadata": oral / "metadata.tsv", "tree": oral / "tree.nwk"}}
    ag = work / "oral-ag"
    if not (ag / "table.biom").is_file():
        ag.mkdir(parents=True, exist_ok=True)
        md = pd.read_csv(oral / "metadata.tsv", sep="\t", dtype=str, index_col=0)
        md = md[md["study"] == AG_STUDY]
        table = biom.load_table(str(oral / "table.biom")).filter(list(md.index), axis="sample", inplace=False)
        table = table.remove_empty(axis="observation", inplace=False)
        with biom.util.biom_open(str(ag / "table.biom"), "w") as fh:
            table.to_hdf5(fh, "oral-age-dev, American Gut samples")
        md.to_csv(ag / "metadata.tsv", sep="\t", index_label="sample_id")
    sets["oral-ag"] = {"table": ag / "table.biom", "metadata": ag / "metadata.tsv", "tree": oral / "tree.nwk",
                       "pretrained_on": "oral"}
    ibd = data / "ibd-2538"
    sets["ibd"] = {"table": ibd / "rarefied-table.biom", "metadata": ibd / "metadata.tsv", "tree": ibd / "tree.nwk"}
    return sets


def pretrain(name: str, paths: dict[str, Path], work: Path, flags: list[str]) -> tuple[Path, float]:
    """The evaluation command's pretraining on every sample of the dataset (cached in --work)."""
    run = work / ("pretrain-" + "_".join([name, *(f.lstrip("-") for f in flags)]))
    best = run / "checkpoints/best.pt"
    wall = run / "wall_s.txt"
    if best.is_file() and wall.is_file():
        return best, float(wall.read_text())
    t0 = time.perf_counter()
    aam(["pretrain", "--table", str(paths["table"]), "--tree", str(paths["tree"]), "--output-dir", str(run),
         "--drop-missing-features", *PRETRAIN, *flags])
    wall.write_text(f"{time.perf_counter() - t0:.1f}\n")
    return best, time.perf_counter() - t0


def run_task(task: str, sets: dict, work: Path, out: Path, variant: str, train_flags: list[str],
             pretrain_flags: list[str]) -> dict:
    spec = TASKS[task]
    paths = sets[spec["data"]]
    encoder, pretrain_s = pretrain(paths.get("pretrained_on", spec["data"]), sets[paths.get("pretrained_on",
                                                                                            spec["data"])],
                                   work, pretrain_flags)
    cv_dir = work / variant / task
    command = ["cv", "--table", str(paths["table"]), "--metadata", str(paths["metadata"]), "--metadata-column",
               spec["column"], "--pretrained-encoder", str(encoder), "--output-dir", str(cv_dir), *TRAIN,
               *spec["cv"], *train_flags]
    t0 = time.perf_counter()
    aam(command)
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    metrics = pd.read_csv(cv_dir / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    result = {"task": task, "variant": variant, "train_flags": train_flags, "pretrain_flags": pretrain_flags,
              "command": "aam " + " ".join(command), "pretrain_wall_s": pretrain_s,
              "cv_wall_s": time.perf_counter() - t0, "summary": summary["summary"],
              "per_fold": metrics[~metrics["fold"].isin(["mean", "sd"])].to_dict(orient="records"),
              "n_samples": summary["n_samples"], "folds": summary["folds"], "versions": versions()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{variant}_{task}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def versions() -> dict[str, str]:
    import sklearn
    import torch

    import aam

    return {"aam": getattr(aam, "__version__", "?"), "torch": torch.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--variant", default="default", help="name of the aam variant (defaults: 'default')")
    ap.add_argument("--pretrain-flags", default="", help="extra `aam pretrain` flags, one string")
    ap.add_argument("train_flags", nargs="*", help="extra `aam train` flags of the variant (after --)")
    args = ap.parse_args()
    for name in ("oral-age-dev", "ibd-2538"):
        if not (args.data / name).is_dir():
            raise SystemExit(f"{args.data / name} not found: pass --data, the folder holding oral-age-dev and ibd-2538")
    sets = prepare(args.data, args.work)
    for task in args.tasks.split(","):
        res = run_task(task, sets, args.work, args.out, args.variant, args.train_flags, args.pretrain_flags.split())
        rows = [r for r in res["summary"] if r["fold"] == "mean"]
        key = "auc" if task == "ibd-ibd" else "mae"
        print(f"{task}: " + ", ".join(f"{r['method']} {key} {r.get(key, float('nan')):.3f}" for r in rows), flush=True)


if __name__ == "__main__":
    main()
