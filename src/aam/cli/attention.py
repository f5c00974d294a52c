"""`aam attention`: a trained model's attention over each sample's ASVs (and over the bases of chosen ASVs)."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import AttentionRequest, default_of, group_defaults

D = group_defaults(AttentionRequest)


@click.command(cls=O.GroupedCommand)
@O.apply(O.saved_model_options("checkpoints/best.pt (or last.pt) of `aam pretrain` or `aam train`.",
                               "Metadata TSV: the model's categorical columns and --metadata-column."))
@O.opt("Data", "--taxonomy", type=click.Path(dir_okay=False), default=None,
       help="QIIME 2 taxonomy TSV (Feature ID, Taxon) or taxonomy.qza: adds each ASV's taxon to the table and "
            "the heatmap's labels.")
@O.opt("Data", "--metadata-column", default=None,
       help="Group the heatmap's samples by this column of --metadata.")
@O.opt("Data", "--asv", multiple=True, default=(),
       help="Also write the nucleotide-level map of this ASV (feature ID or sequence; repeat for several).")
@O.opt("Output", "--top", type=int, default=default_of(AttentionRequest, "top"), help="ASVs in the heatmap (the most attended on average).")
@O.apply(O.inference_options(D.run))
@O.opt("Output", "--output", required=True, type=click.Path(file_okay=False),
       help="Folder: attention.tsv (per sample and ASV: the mean over layers and one column per layer), "
            "top_asvs.png, and with --asv nucleotides.tsv / nucleotides.png.")
def attention(**options) -> int:
    """Write where the model's attention goes: per sample, the attention each of its ASVs receives in every
    sample-level layer (mean over heads and over the sample's ASVs as queries; sums to 1 per sample and layer)."""
    from aam.workflows.attention import run_attention

    req = AttentionRequest.from_options(options)
    O.check_inference_options(req.run, req.source.metadata, req.metadata_column)
    res = run_attention(req)
    click.echo(f"attention of {res['n_samples']} samples over layers {', '.join(res['layers'])}: {res['table']}, "
               f"{res['plot']}" + (f", {res['nucleotides']}" if "nucleotides" in res else ""))
    return 0
