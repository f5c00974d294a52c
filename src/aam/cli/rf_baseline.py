"""`aam rf-baseline`: classical baselines (random forest, boosted trees, ridge) over an aam run's
train/validation split."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("rf-baseline")
@click.option("--table", required=True, type=click.Path(dir_okay=False), help="BIOM table (or .qza).")
@click.option("--metadata", required=True, type=click.Path(dir_okay=False), help="Metadata TSV.")
@click.option("--metadata-column", required=True, help="Target column.")
@click.option("--train-samples", required=True, type=click.Path(dir_okay=False),
              help="train_samples.txt of an aam train run (one ID per line).")
@click.option("--val-samples", required=True, type=click.Path(dir_okay=False), help="val_samples.txt of that run.")
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="TSV of sample_id, actual, predicted (the random forest), predicted_<method> per method "
                   "(+ prob_<class> of the forest and prob_<method>_<class> of the others when classifying); a "
                   "PNG with the same stem is written beside it.")
@click.option("--methods", default="random_forest,boosted_trees,ridge", show_default=True,
              help="Comma-separated: random_forest (relative abundances), boosted_trees (LightGBM on relative "
                   "abundances), ridge (RidgeCV, or L2 logistic regression, on CLR-transformed counts).")
@click.option("--classifier", is_flag=True, help="Classify the column's labels instead of regressing.")
@click.option("--n-estimators", default=500, show_default=True, type=click.IntRange(min=1),
              help="Trees of the random forest.")
@click.option("--max-features", default="sqrt", show_default=True,
              help="Random forest: sqrt, log2, none, a count or a fraction.")
@click.option("--random-seed", default=42, show_default=True)
@click.option("--n-jobs", default=-1, show_default=True)
def rf_baseline(table: str, metadata: str, metadata_column: str, train_samples: str, val_samples: str, output: str,
                methods: str, classifier: bool, n_estimators: int, max_features: str, random_seed: int,
                n_jobs: int) -> int:
    """Classical baselines on the same split as an aam run: the numbers to beat."""
    import pandas as pd

    from aam.data.split import read_ids
    from aam.training.plots import cv_predictions
    from aam.workflows.baselines import fit_baselines, parse_max_features, parse_methods

    chosen = parse_methods(methods)
    forest = {"n_estimators": n_estimators, "max_features": parse_max_features(max_features)}
    res = fit_baselines(table, metadata, metadata_column, read_ids(train_samples), read_ids(val_samples), chosen,
                        classifier=classifier, seed=random_seed, n_jobs=n_jobs, options={"random_forest": forest})
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    first = res[chosen[0]]  # every method predicts the same samples
    frame = pd.DataFrame({"sample_id": first.sample_ids, "actual": first.actual})
    if "random_forest" in res:  # the columns this command wrote before it fitted other methods
        frame["predicted"] = res["random_forest"].predicted
    for method, r in res.items():
        frame[f"predicted_{method}"] = r.predicted
    for method, r in res.items():  # classifier: one probability column per class, as `aam predict` writes
        if r.probabilities is not None:
            prefix = "prob_" if method == "random_forest" else f"prob_{method}_"
            for k, label in enumerate(r.classes or []):
                frame[f"{prefix}{label}"] = r.probabilities[:, k]
    frame.to_csv(out, sep="\t", index=False)
    if not classifier:
        cv_predictions(first.actual, {m: r.predicted for m, r in res.items()}, out.with_suffix(".png"),
                       f"{metadata_column}: validation samples", ylabel="predicted")
    for method, r in res.items():
        click.echo(f"{method.replace('_', ' ')}, validation: " + ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items()))
    return 0
