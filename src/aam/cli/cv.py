"""`aam cv`: K-fold cross-validation of `aam train` next to classical baselines and a constant, same folds."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.cli.train import train as train_command
from aam.workflows.requests import CVRequest, TrainRequest, default_of


def _cv(**options) -> int:
    """Cross-validate: per fold, train on the other folds, predict the held-out fold, and fit the baselines of
    `aam rf-baseline` (random forest, boosted trees, ridge) and a constant on the same samples. Takes every
    option of `aam train`; rerunning the same command resumes (finished folds are kept)."""
    from aam.workflows.cv import run_cv

    train = TrainRequest.from_options({**options, "resume": None, "overwrite": False})
    res = run_cv(CVRequest(train=train, folds=options["folds"], rf_trees=options["rf_trees"]))
    click.echo(f"{res['folds']}-fold cross-validation of {res['n_samples']} samples: {res['metrics']}, "
               f"{res['predictions']}" + (f", plots {', '.join(res['plots'])}" if res["plots"] else ""))
    for row in res["summary"]:
        if row["fold"] != "mean":
            continue
        sd = next(r for r in res["summary"] if r["fold"] == "sd" and r["target"] == row["target"]
                  and r["method"] == row["method"])
        shown = ", ".join(f"{k} {row[k]:.4g} ± {sd[k]:.2g}" for k in ("mae", "rmse", "r2", "accuracy", "f1", "auc")
                          if k in row)
        click.echo(f"  {row['target']:>12}  {row['method']:<13}  {shown}")
    for target, method in res["best_baseline"].items():
        click.echo(f"  {target:>12}  best classical baseline: {method}")
    return 0


_own = [
    O.GroupedOption(["--folds"], type=int, default=default_of(CVRequest, "folds"), show_default=True, section="Data",
                    help="Number of folds; with --group-column whole groups go to one fold, and --classifier "
                         "keeps the class mix in every fold."),
    O.GroupedOption(["--rf-trees"], type=int, default=default_of(CVRequest, "rf_trees"), show_default=True,
                    section="Other",
                    help="Trees of the random-forest baseline fitted on each fold's training samples."),
    O.GroupedOption(["--output-dir"], required=True, type=click.Path(file_okay=False), section="Output",
                    help="fold<k>/ (each fold's `aam train` run and test predictions), oof_predictions.tsv, "
                         "cv_metrics.tsv (per fold, mean and SD), cv_summary.json and cv_<column>.png."),
]
_from_train = [p for p in train_command.params if p.name not in ("output_dir", "resume", "overwrite", "nproc_per_node", "data_parallel")]

cv = O.GroupedCommand("cv", callback=_cv, params=[*_from_train, *_own], help=_cv.__doc__)
