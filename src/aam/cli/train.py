"""`aam train`: fine-tune (or train from scratch) a SequencePredictor on a metadata column."""

from __future__ import annotations

import click

from aam.cli import options as O


@click.command(cls=O.GroupedCommand)
@O.apply(O.table_options())
@O.opt("Data", "--metadata", required=True, type=click.Path(dir_okay=False),
       help="Sample metadata TSV (first column: sample IDs).")
@O.opt("Data", "--metadata-column", required=True,
       help="Column to predict; several comma-separated numeric columns (e.g. 'ph,temperature') train one "
            "multi-output regressor (each column scaled on its own, equal loss weights; a value missing in one "
            "column leaves only that output of the sample out of the loss).")
@O.opt("Data", "--categorical-columns", default=None,
       help="Comma-separated metadata columns that condition the prediction (e.g. 'country,sex').")
@O.opt("Data", "--group-column", default=None,
       help="Keep all samples of a group (e.g. host_subject_id) on one side of the split.")
@O.opt("Data", "--unifrac-matrix", type=click.Path(dir_okay=False), default=None,
       help="Optional pairwise distances: keeps the UniFrac loss (weight --penalty) during fine-tuning "
            "(or --tree instead).")
@O.opt("Data", "--unifrac-ids", type=click.Path(dir_okay=False), default=None,
       help="Sample IDs file for a .npy --unifrac-matrix.")
@O.apply(O.tree_options())
@O.apply(O.preprocessing_options())
@O.opt("Model", "--pretrained-encoder", type=click.Path(dir_okay=False), default=None,
       help="checkpoints/best.pt of `aam pretrain`; its architecture and max_bp/token_limit are used.")
@O.opt("Model", "--freeze-base/--no-freeze-base", default=False, help="Train only the heads on a pretrained encoder.")
@O.opt("Model", "--classifier", is_flag=True, default=False,
       help="Classify the column's values (read as class labels) instead of regressing.")
@O.apply(O.model_options())
@O.opt("Model", "--categorical-fusion", type=click.Choice(["concat", "add", "gmu"]), default="concat",
       help="How categorical embeddings join: concat/add into every ASV slot, or gmu (gated multimodal unit "
            "on the pooled sample: h + sigmoid(W_g [h; c]) * tanh(W_c c)).")
@O.opt("Model", "--categorical-embed-dim", type=int, default=16, help="Embedding width per categorical column.")
@O.opt("Training", "--base-lr-scale", type=float, default=None, show_default="0.1 with --pretrained-encoder, else 1",
       help="Learning rate of the pretrained encoder relative to --lr (the new heads); 0 = frozen but in train mode.")
@O.opt("Model", "--target-input", type=click.Choice(["tokens", "embedding", "both"]), default="both",
       help="What the target head reads: a target transformer over the ASV slots (tokens), the encoder's pooled "
            "(pretrained UniFrac-space) sample embedding, or both concatenated.")
@O.opt("Model", "--asv-readout", type=click.Choice(["none", "presence", "abundance"]), default="none",
       help="Add an additive per-ASV readout to the target head: each ASV's embedding -> a score, averaged over "
            "the sample's ASVs with equal (presence) or relative-abundance weights.")
@O.opt("Model", "--count-prediction/--no-count-prediction", default=True, help="Predict per-ASV abundances too.")
@O.opt("Model", "--count-target", type=click.Choice(["log", "relative"]), default="log",
       help="Count head target: log1p(reads) (MSE) or relative abundance (cross-entropy).")
@O.opt("Loss", "--loss-type", type=click.Choice(["huber", "mse", "mae", "quantile", "asymmetric"]),
       default="huber", help="Regression loss (on the transformed target).")
@O.opt("Loss", "--quantiles", default=None, show_default="0.1,0.5,0.9", help="Quantiles of --loss-type quantile.")
@O.opt("Loss", "--over-penalty", type=float, default=1.0, help="Asymmetric loss: weight of over-predictions.")
@O.opt("Loss", "--under-penalty", type=float, default=1.0, help="Asymmetric loss: weight of under-predictions.")
@O.opt("Loss", "--class-weights", default=None, help="Comma-separated weight per class (sorted label order).")
@O.opt("Loss", "--target-transform", type=click.Choice(["none", "minmax", "zscore", "log-minmax", "log-zscore"]),
       default="zscore", help="Regression target scaling, fitted on the training split; predictions are "
                              "reported in the original units.")
@O.opt("Loss", "--target-penalty", type=float, default=1.0, help="Weight of the target loss.")
@O.opt("Loss", "--count-penalty", type=float, default=1.0, help="Weight of the count loss.")
@O.apply(O.loss_options())
@O.apply(O.training_options())
@O.opt("Training", "--best-metric", type=click.Choice(["val_loss", "r2", "mae", "rmse", "accuracy", "f1"]),
       default="val_loss", help="Validation metric that selects best.pt and drives early stopping.")
@O.apply(O.hardware_options())
@O.output_option()
def train(**kw) -> int:
    """Fine-tune for regression (default) or classification (--classifier) on --metadata-column."""
    from aam.training.runs import run_train

    run_train(kw)
    return 0
