"""`aam pretrain`: self-supervised pretraining of a SequenceEncoder on UniFrac distances + masked nucleotides."""

from __future__ import annotations

import logging

import click

from aam.cli import options as O

log = logging.getLogger("aam")


@click.command(cls=O.GroupedCommand)
@O.apply(O.table_options())
@O.opt("Data", "--unifrac-matrix", type=click.Path(dir_okay=False), default=None,
       help="Pairwise distances (ssu .h5, scikit-bio .tsv, .csv, .npy + .ids.txt) covering the table's samples.")
# `--tree` (distances computed on the fly by aam.ops.unifrac) plugs in here: a second distance source with
# the same `ids` / `pairs(ids)` interface, passed to run_pretrain instead of the matrix.
@O.opt("Data", "--unifrac-ids", type=click.Path(dir_okay=False), default=None,
       help="Sample IDs file for a .npy --unifrac-matrix (default <stem>.ids.txt).")
@O.apply(O.preprocessing_options())
@O.apply(O.model_options())
@O.apply(O.loss_options())
@O.apply(O.training_options())
@O.opt("Training", "--best-metric", type=click.Choice(["val_loss", "unifrac_r2", "nuc_accuracy"]),
       default="val_loss", help="Validation metric that selects best.pt and drives early stopping.")
@O.apply(O.hardware_options())
@O.output_option()
def pretrain(**kw) -> int:
    """Pretrain an encoder: pairwise UniFrac distances between samples + masked-nucleotide prediction."""
    from aam.training.runs import run_pretrain

    if kw["unifrac_matrix"] is None:
        raise click.UsageError("--unifrac-matrix is required (pass a distance matrix; `aam unifrac` makes one)")
    run_pretrain(kw)
    return 0


