"""`aam predict`: predictions for a table from a checkpoint written by `aam train`."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import PredictRequest, group_defaults

D = group_defaults(PredictRequest)


@click.command(cls=O.GroupedCommand)
@O.apply(O.saved_model_options("checkpoints/best.pt (or last.pt) of `aam train`.",
                               "Metadata TSV with the categorical columns the model was trained with."))
@O.opt("Data", "--metadata-column", default=None,
       help="Evaluate: compare the predictions with this column of --metadata; writes <output>.metrics.json "
            "and a plot <output>.png (predicted vs true, or a confusion matrix).")
@O.opt("Data", "--report", is_flag=True, default=False,
       help="With --metadata-column: also write an error report into <output>.report/ (residuals or accuracy by "
            "metadata group, the worst-predicted samples with their ASV count and depth; for a classifier "
            "per-class precision/recall and a calibration curve), as TSV and PNG.")
@O.opt("Data", "--group-by", multiple=True, default=(), show_default="every categorical column",
       help="Metadata column(s) the report groups by (repeat the option for several).")
@O.opt("Data", "--chunk-size", type=click.IntRange(min=1), default=None, show_default="the whole table",
       help="Read an HDF5 BIOM table this many samples at a time (memory grows with the chunk, not the table). "
            "Rarefaction then draws per chunk with the training seed, so rarefied counts differ from a "
            "whole-table run; --no-rarefy (or a table already at the depth) predicts identically.")
@O.apply(O.inference_options(D.run))
@O.opt("Output", "--output", required=True, type=click.Path(dir_okay=False),
       help="Predictions TSV: sample_id, prediction (original units or class label)[, prob_<class>...]. "
            "Skipped samples go to <output>.skipped.tsv.")
def predict(**options) -> int:
    """Predict every sample of --table with a trained model, preprocessing it as in training."""
    from aam.workflows.inference import run_predict

    req = PredictRequest.from_options(options)
    O.check_inference_options(req.run, req.source.metadata, req.metadata_column)
    res = run_predict(req)
    click.echo(f"wrote {res['n_predicted']} predictions to {res['output']}"
               + (f"; {len(res['skipped'])} sample(s) skipped (see the log)" if res["skipped"] else ""))
    if "evaluation" in res:
        ev = res["evaluation"]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in ev["metrics"].items())
        click.echo(f"{ev['column']} on {ev['n_evaluated']} samples: {shown}; plot {ev['plot']}")
        if "report" in ev:
            click.echo(f"error report in {ev['report']['folder']}")
    return 0
