"""`aam demo`: the whole loop on a generated dataset (no input files): pretrain -> train -> predict -> embed."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

log = logging.getLogger("aam")

SMALL_MODEL = ["--embedding-dim", "64", "--attention-heads", "4", "--attention-layers", "2", "--asv-layers", "1",
               "--max-bp", "64", "--token-limit", "32", "--batch-size", "16"]
PRETRAIN_LR = ["--lr", "2e-3"]  # the UniFrac/nucleotide objectives want a high rate for a few hundred steps
# New heads at 2e-3, the pretrained encoder at 0.1 x that (the train default with --pretrained-encoder); one rate
# for both gives pH R2 ~0 at 2e-3 and ~0.4 at 5e-4.
TRAIN_LR = ["--lr", "2e-3"]


@click.command()
@click.option("--output-dir", default="demo-run", show_default=True, type=click.Path(file_okay=False),
              help="Where data/, pretrain/, train/ and predictions.tsv go.")
@click.option("--samples", default=300, show_default=True, type=click.IntRange(min=30),
              help="Samples to generate (at least 30: five folds of six).")
@click.option("--pretrain-epochs", default=25, show_default=True,
              help="On the default data, 25 epochs fit UniFrac to R2 0.45 and give pH R2 0.56 after fine-tuning "
                   "(8 epochs: 0.29 and 0.45) for ~30 s more.")
@click.option("--train-epochs", default=20, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--kernels", default="auto", show_default=True)
def demo(output_dir: str, samples: int, pretrain_epochs: int, train_epochs: int, seed: int, device: str,
         kernels: str) -> int:
    """Generate a synthetic dataset and run pretrain -> train (regression on ph) -> predict -> embed with a small model."""
    from aam.cli.main import main
    from aam.data import synthetic

    out = Path(output_dir)
    t0 = time.perf_counter()
    click.echo(f"[1/5] generating {samples} samples into {out / 'data'}")
    ds = synthetic.make_dataset(samples, n_features=250, seed=seed, min_len=60, max_len=64, richness=30,
                                mean_depth=3000.0)
    paths = synthetic.write_dataset(ds, out / "data")
    # the demo owns its folder: a rerun replaces its runs (--overwrite removes only aam's files)
    common = ["--seed", str(seed), "--device", device, "--kernels", kernels, "--overwrite", *SMALL_MODEL]
    click.echo("[2/5] pretraining the encoder on UniFrac distances (computed per batch from the tree) + masked "
               "nucleotides")
    rc = main(["pretrain", "--table", str(paths["table"]), "--tree", str(paths["tree"]), "--output-dir",
               str(out / "pretrain"), "--epochs", str(pretrain_epochs), "--patience", "0", *common, *PRETRAIN_LR])
    if rc:
        return rc
    click.echo("[3/5] fine-tuning on metadata column 'ph' (regression), split by subject")
    rc = main(["train", "--table", str(paths["table"]), "--metadata", str(paths["metadata"]), "--metadata-column",
               "ph", "--group-column", "subject", "--pretrained-encoder", str(out / "pretrain/checkpoints/best.pt"),
               "--output-dir", str(out / "train"), "--epochs", str(train_epochs), "--patience", "0", *common, *TRAIN_LR])
    if rc:
        return rc
    click.echo("[4/5] predicting the whole table with the fine-tuned model")
    rc = main(["predict", "--model", str(out / "train/checkpoints/best.pt"), "--table", str(paths["table"]),
               "--output", str(out / "predictions.tsv"), "--device", device, "--kernels", kernels])
    if rc:
        return rc
    click.echo("[5/5] embedding every sample with the pretrained encoder (+ its predicted UniFrac distances, and a "
               "PCA plot coloured by body_site)")
    rc = main(["embed", "--model", str(out / "pretrain/checkpoints/best.pt"), "--table", str(paths["table"]),
               "--output", str(out / "embeddings.tsv"), "--distance-matrix", str(out / "predicted_unifrac.tsv"),
               "--metadata", str(paths["metadata"]), "--metadata-column", "body_site", "--device", device,
               "--kernels", kernels])
    if rc:
        return rc
    import torch

    pre = torch.load(out / "pretrain/checkpoints/best.pt", weights_only=True)["trainer_state"]
    pbest = next(r for r in pre["history"] if r["epoch"] == pre["best_epoch"])
    click.echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    click.echo(f"pretrain (epoch {pre['best_epoch']}): UniFrac R2 {pbest.get('val_unifrac_r2', float('nan')):.3f}, "
               f"masked-nucleotide accuracy {pbest.get('val_nuc_accuracy', float('nan')):.3f}")
    aam_m, rf_m, n = _out_of_fold(out / "train", paths, seed)
    click.echo(f"train    (ensemble of cross-fitted models, out-of-fold over {n} samples): ph MAE {aam_m['mae']:.3f}, "
               f"RMSE {aam_m['rmse']:.3f}, R2 {aam_m['r2']:.3f}")
    click.echo(f"baseline (random forest on relative abundances, the same folds): ph MAE {rf_m['mae']:.3f}, "
               f"RMSE {rf_m['rmse']:.3f}, R2 {rf_m['r2']:.3f}")
    click.echo(f"plots: {out / 'pretrain/plots'}, {out / 'train/plots'}")
    click.echo(f"predictions: {out / 'predictions.tsv'}; embeddings: {out / 'embeddings.tsv'} (plot "
               f"{out / 'embeddings.png'}); TensorBoard: tensorboard --logdir {out}")
    return 0


def _out_of_fold(run: Path, paths: dict[str, Path], seed: int) -> tuple[dict[str, float], dict[str, float], int]:
    """aam's out-of-fold validation metrics (each sample predicted by the member that did not train on it) and a
    random forest's on exactly the same member folds."""
    import numpy as np

    from aam.data.split import read_ids
    from aam.training.metrics import regression_metrics
    from aam.utils.io import read_tsv
    from aam.workflows.baselines import random_forest_baseline

    rows = read_tsv(run / "val_predictions.tsv")
    aam = regression_metrics(np.array([float(r["actual"]) for r in rows]), np.array([float(r["prediction"]) for r in rows]))
    truth, pred = [], []
    for member in sorted((run / "members").glob("member*")):
        rf = random_forest_baseline(paths["table"], paths["metadata"], "ph", read_ids(member / "train_samples.txt"),
                                    read_ids(member / "val_samples.txt"), n_estimators=200, seed=seed)
        truth.append(rf.actual)
        pred.append(rf.predicted)
    return aam, regression_metrics(np.concatenate(truth), np.concatenate(pred)), len(rows)
