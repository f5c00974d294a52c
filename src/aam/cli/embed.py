"""`aam embed`: sample embeddings of a table from a checkpoint, with predicted UniFrac distances and a PCA plot."""

from __future__ import annotations

import click

from aam.cli import options as O


@click.command(cls=O.GroupedCommand)
@O.opt("Data", "--model", required=True, type=click.Path(dir_okay=False),
       help="checkpoints/best.pt of `aam pretrain` (or of `aam train`: its fine-tuned encoder).")
@O.apply(O.table_options())
@O.opt("Data", "--metadata", type=click.Path(dir_okay=False), default=None,
       help="Metadata TSV holding --metadata-column.")
@O.opt("Data", "--metadata-column", default=None,
       help="Colour the PCA plot <output>.png of the embeddings by this column (numeric or categorical).")
@O.opt("Data", "--rarefy/--no-rarefy", default=True,
       help="Rarefy to the training depth with the training seed (samples under it are skipped and reported).")
@O.opt("Training", "--batch-size", type=int, default=8, help="Samples per batch.")
@O.apply(O.hardware_options(training=False))
@O.opt("Output", "--output", required=True, type=click.Path(dir_okay=False),
       help="Embeddings TSV: sample_id, e0 ... e<D-1>. Skipped samples go to <output>.skipped.tsv.")
@O.opt("Output", "--distance-matrix", type=click.Path(dir_okay=False), default=None,
       help="Also write the distances a pretrained model predicts between the samples (its UniFrac estimate, "
            "no tree needed) as a scikit-bio TSV distance matrix.")
def embed(**kw) -> int:
    """Embed every sample of --table with a saved encoder (preprocessed as in training)."""
    from aam.training.inference import run_embed

    if kw["batch_size"] < 1:
        raise click.UsageError("--batch-size must be >= 1")
    if kw["metadata_column"] and not kw["metadata"]:
        raise click.UsageError("--metadata-column needs --metadata (the file holding that column)")
    res = run_embed(kw)
    click.echo(f"wrote {res['n_embedded']} x {res['dim']} embeddings to {res['output']}"
               + (f"; distances to {res['distance_matrix']}" if "distance_matrix" in res else "")
               + (f"; plot {res['plot']}" if "plot" in res else "")
               + (f"; {len(res['skipped'])} sample(s) skipped (see the log)" if res["skipped"] else ""))
    return 0
