"""`aam pretrain`: self-supervised pretraining of a SequenceEncoder on UniFrac distances + masked nucleotides."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import PretrainRequest, default_of, group_defaults

D = group_defaults(PretrainRequest)


@click.command(cls=O.GroupedCommand)
@O.apply(O.table_options())
@O.opt("Data", "--unifrac-matrix", type=click.Path(dir_okay=False), default=D.distances.unifrac_matrix,
       help="Precomputed pairwise distances (ssu .h5, scikit-bio .tsv, .csv, .npy + .ids.txt) covering the table's samples.")
@O.opt("Data", "--unifrac-ids", type=click.Path(dir_okay=False), default=D.distances.unifrac_ids,
       help="Sample IDs file for a .npy --unifrac-matrix (default <stem>.ids.txt).")
@O.apply(O.tree_options(D.distances))
@O.opt("Data", "--stream", is_flag=True, default=default_of(PretrainRequest, "stream"),
       help="Leave the counts of an HDF5 BIOM --table in the file and read each batch's samples from it (tables "
            "larger than memory; DDP ranks and DataLoader workers read only their own batches). Rarefaction then "
            "draws each sample with its own seed, so counts differ from a run without --stream.")
@O.apply(O.preprocessing_options(D.preprocess))
@O.apply(O.model_options(D.model))
@O.apply(O.loss_options(D.loss))
@O.apply(O.training_options(D.training, ("val_loss", "unifrac_r2", "nuc_accuracy")))
@O.apply(O.hardware_options(D.hardware))
@O.apply(O.launch_options())
@O.output_option()
def pretrain(**options) -> int:
    """Pretrain an encoder: pairwise UniFrac distances between samples + masked-nucleotide prediction.

    The distances come from exactly one of --unifrac-matrix (precomputed) or --tree (computed per batch).
    """
    from aam.workflows.pretrain import run_pretrain

    launched = O.take_launch(options)
    if launched is not None:
        return launched
    run_pretrain(PretrainRequest.from_options(options))
    return 0
