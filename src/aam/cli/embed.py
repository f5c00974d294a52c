"""`aam embed`: sample embeddings of a table from a checkpoint, with predicted UniFrac distances and a PCA plot."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import EmbedRequest, group_defaults

D = group_defaults(EmbedRequest)


@click.command(cls=O.GroupedCommand)
@O.apply(O.saved_model_options("checkpoints/best.pt of `aam pretrain` (or of `aam train`: its fine-tuned encoder).",
                               "Metadata TSV holding --metadata-column."))
@O.opt("Data", "--metadata-column", default=None,
       help="Colour the PCA plot <output>.png of the embeddings by this column (numeric or categorical).")
@O.apply(O.inference_options(D.run))
@O.opt("Output", "--output", required=True, type=click.Path(dir_okay=False),
       help="Embeddings TSV: sample_id, e0 ... e<D-1>. Skipped samples go to <output>.skipped.tsv.")
@O.opt("Output", "--distance-matrix", type=click.Path(dir_okay=False), default=None,
       help="Also write the distances a pretrained model predicts between the samples (its UniFrac estimate, "
            "no tree needed) as a scikit-bio TSV distance matrix.")
def embed(**options) -> int:
    """Embed every sample of --table with a saved encoder (preprocessed as in training)."""
    from aam.workflows.inference import run_embed

    req = EmbedRequest.from_options(options)
    O.check_inference_options(req.run, req.source.metadata, req.metadata_column)
    res = run_embed(req)
    click.echo(f"wrote {res['n_embedded']} x {res['dim']} embeddings to {res['output']}"
               + (f"; distances to {res['distance_matrix']}" if "distance_matrix" in res else "")
               + (f"; plot {res['plot']}" if "plot" in res else "")
               + (f"; {len(res['skipped'])} sample(s) skipped (see the log)" if res["skipped"] else ""))
    return 0
