"""`aam explain`: per-ASV attributions of a fine-tuned model's predictions (occlusion), with a summary and a plot."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import ExplainRequest, group_defaults

D = group_defaults(ExplainRequest)


@click.command(cls=O.GroupedCommand)
@O.apply(O.saved_model_options("checkpoints/best.pt (or last.pt) of `aam train`.",
                               "Metadata TSV with the categorical columns the model was trained with."))
@O.opt("Data", "--samples", type=click.Path(dir_okay=False), default=None,
       help="Explain only the sample IDs listed in this file, one per line (e.g. a run's val_samples.txt).")
@O.opt("Data", "--taxonomy", type=click.Path(dir_okay=False), default=None,
       help="QIIME 2 taxonomy TSV (Feature ID, Taxon) or taxonomy.qza: adds each ASV's taxon to the outputs and plot labels.")
@O.opt("Data", "--target-class", default=None,
       help="Classifiers: attribute the probability of this class (default: the last class of the model).")
@O.opt("Data", "--target-column", default=None,
       help="Multi-output regressors: attribute the prediction of this target column (default: the first).")
@O.apply(O.inference_options(
    D.run, "Sample variants (the sample minus one ASV) per forward pass; with at least the sample's ASV count + 1, "
           "each ASV sequence is encoded once per sample."))
@O.opt("Output", "--output", required=True, type=click.Path(dir_okay=False),
       help="Attributions TSV (sample_id, feature_id, count, prediction, attribution, taxon); also writes "
            "<output>.summary.tsv (per ASV, most important first) and <output>.png (top ASVs).")
def explain(**options) -> int:
    """Attribute each prediction to the sample's ASVs: the change of the prediction when one ASV is removed."""
    from aam.workflows.explain import run_explain

    req = ExplainRequest.from_options(options)
    O.check_inference_options(req.run, req.source.metadata, None)
    res = run_explain(req)
    click.echo(f"explained {res['n_samples']} samples ({res['n_features']} ASVs; attribution = {res['unit']} with "
               f"the ASV - without it): {res['output']}, {res['summary']}, {res['plot']}")
    for fid, importance, mean, n, taxon in res["top"]:
        click.echo(f"  {importance:9.4g}  mean {mean:+.4g} in {n} samples  {taxon or fid}")
    return 0
