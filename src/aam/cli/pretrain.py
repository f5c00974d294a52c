"""`aam pretrain`: self-supervised pretraining of a SequenceEncoder on UniFrac distances + masked nucleotides."""

from __future__ import annotations

import logging

import click

from aam.cli import options as O

log = logging.getLogger("aam")


@click.command(cls=O.GroupedCommand)
@O.apply(O.table_options())
@O.opt("Data", "--unifrac-matrix", type=click.Path(dir_okay=False), default=None,
       help="Precomputed pairwise distances (ssu .h5, scikit-bio .tsv, .csv, .npy + .ids.txt) covering the table's samples.")
@O.opt("Data", "--unifrac-ids", type=click.Path(dir_okay=False), default=None,
       help="Sample IDs file for a .npy --unifrac-matrix (default <stem>.ids.txt).")
@O.apply(O.tree_options())
@O.apply(O.preprocessing_options())
@O.apply(O.model_options())
@O.apply(O.loss_options())
@O.apply(O.training_options())
@O.opt("Training", "--best-metric", type=click.Choice(["val_loss", "unifrac_r2", "nuc_accuracy"]),
       default="val_loss", help="Validation metric that selects best.pt and drives early stopping.")
@O.apply(O.hardware_options())
@O.output_option()
def pretrain(**kw) -> int:
    """Pretrain an encoder: pairwise UniFrac distances between samples + masked-nucleotide prediction.

    The distances come from exactly one of --unifrac-matrix (precomputed) or --tree (computed per batch).
    """
    from aam.training.runs import run_pretrain

    run_pretrain(kw)
    return 0


