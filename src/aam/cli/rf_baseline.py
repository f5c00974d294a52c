"""`aam rf-baseline`: a random forest on relative abundances over an aam run's train/validation split."""

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
              help="TSV of sample_id, actual, predicted (+ prob_<class> columns when classifying); a PNG with the same stem is written beside it.")
@click.option("--classifier", is_flag=True, help="Classify the column's labels instead of regressing.")
@click.option("--n-estimators", default=500, show_default=True)
@click.option("--max-features", default="sqrt", show_default=True, help="sqrt, log2, none, a count or a fraction.")
@click.option("--random-seed", default=42, show_default=True)
@click.option("--n-jobs", default=-1, show_default=True)
def rf_baseline(table: str, metadata: str, metadata_column: str, train_samples: str, val_samples: str, output: str,
                classifier: bool, n_estimators: int, max_features: str, random_seed: int, n_jobs: int) -> int:
    """Random-forest baseline on the same split as an aam run: the number to beat."""
    import pandas as pd

    from aam.data.split import read_ids
    from aam.training.plots import predicted_vs_true
    from aam.workflows.baselines import parse_max_features, random_forest_baseline

    res = random_forest_baseline(table, metadata, metadata_column, read_ids(train_samples), read_ids(val_samples),
                                 classifier=classifier, n_estimators=n_estimators,
                                 max_features=parse_max_features(max_features), seed=random_seed, n_jobs=n_jobs)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"sample_id": res.sample_ids, "actual": res.actual, "predicted": res.predicted})
    if res.probabilities is not None:  # classifier: one probability column per class, as `aam predict` writes
        for k, label in enumerate(res.classes or []):
            frame[f"prob_{label}"] = res.probabilities[:, k]
    frame.to_csv(out, sep="\t", index=False)
    if not classifier:
        predicted_vs_true(res.actual, res.predicted, out.with_suffix(".png"), f"random forest: {metadata_column}")
    click.echo("random forest, validation: " + ", ".join(f"{k} {v:.3f}" for k, v in res.metrics.items()))
    return 0
