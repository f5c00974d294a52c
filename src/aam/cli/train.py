"""`aam train`: fine-tune (or train from scratch) a SequencePredictor on a metadata column."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import DEFAULT_ENSEMBLE, LabelOptions, TrainRequest, default_of, group_defaults

D = group_defaults(TrainRequest)
BEST_METRICS = ("val_loss", "r2", "mae", "rmse", "accuracy", "f1")


@click.command(cls=O.GroupedCommand)
@O.apply(O.table_options())
@O.opt("Data", "--metadata", required=True, type=click.Path(dir_okay=False),
       help="Sample metadata TSV (first column: sample IDs).")
@O.opt("Data", "--metadata-column", required=True,
       help="Column to predict; several comma-separated numeric columns (e.g. 'ph,temperature') train one "
            "multi-output regressor (each column scaled on its own, equal loss weights; a value missing in one "
            "column leaves only that output of the sample out of the loss).")
@O.opt("Data", "--categorical-columns", default=default_of(LabelOptions, "categorical_columns"),
       help="Comma-separated metadata columns that condition the prediction (e.g. 'country,sex').")
@O.opt("Data", "--group-column", default=default_of(LabelOptions, "group_column"),
       help="Keep all samples of a group (e.g. host_subject_id) on one side of the split.")
@O.opt("Data", "--unifrac-matrix", type=click.Path(dir_okay=False), default=D.distances.unifrac_matrix,
       help="Optional pairwise distances: keeps the UniFrac loss (weight --penalty) during fine-tuning "
            "(or --tree instead).")
@O.opt("Data", "--unifrac-ids", type=click.Path(dir_okay=False), default=D.distances.unifrac_ids,
       help="Sample IDs file for a .npy --unifrac-matrix.")
@O.apply(O.tree_options(D.distances))
@O.apply(O.preprocessing_options(D.preprocess))
@O.opt("Model", "--pretrained-encoder", type=click.Path(dir_okay=False), default=D.head.pretrained_encoder,
       help="checkpoints/best.pt of `aam pretrain`; its architecture and max_bp/token_limit are used.")
@O.opt("Model", "--freeze-base/--no-freeze-base", default=D.head.freeze_base,
       help="Train only the heads on a pretrained encoder.")
@O.opt("Model", "--freeze-asv-encoder/--no-freeze-asv-encoder", default=D.head.freeze_asv_encoder,
       show_default="on with --pretrained-encoder", help="Keep the pretrained nucleotide-level ASV encoder fixed (the sample encoder and heads still train): "
            "each ASV is then encoded once per run instead of once per batch.")
@O.opt("Model", "--asv-identity/--no-asv-identity", default=D.head.asv_identity,
       help="Add a learned vector per ASV of the training split to its sequence embedding (ASVs never seen in "
            "training keep the sequence embedding alone).")
@O.opt("Model", "--asv-identity-dropout", type=float, default=D.head.asv_identity_dropout,
       help="Fraction of a batch's ASVs whose identity vector is dropped in training (keeps the sequence path "
            "useful for unseen ASVs).")
@O.opt("Model", "--asv-bag-dim", type=int, default=D.head.asv_bag_dim,
       help="Width of a hidden layer on the sample's presence profile over the training ASVs (the sum of one "
            "learned vector per ASV present), concatenated to the target head's input; 0 = off.")
@O.opt("Training", "--ensemble", type=int, default=D.head.ensemble,
       show_default=f"{DEFAULT_ENSEMBLE}, fewer with fewer --group-column groups", help="Train K cross-fitted models that predict together: the labelled samples are cut into K folds, model k "
            "trains on the others and validates on fold k, so every sample is used for training and the validation "
            "metrics are out-of-fold over all samples (--test-size is then not used). 1 = one model.")
@O.opt("Model", "--classifier", is_flag=True, default=default_of(LabelOptions, "classifier"),
       help="Classify the column's values (read as class labels) instead of regressing.")
@O.apply(O.model_options(D.model))
@O.opt("Model", "--categorical-fusion", type=click.Choice(["concat", "add", "gmu"]), default=D.head.categorical_fusion,
       help="How categorical embeddings join: concat/add into every ASV slot, or gmu (gated multimodal unit "
            "on the pooled sample: h + sigmoid(W_g [h; c]) * tanh(W_c c)).")
@O.opt("Model", "--categorical-embed-dim", type=int, default=D.head.categorical_embed_dim,
       help="Embedding width per categorical column.")
@O.opt("Training", "--base-lr-scale", type=float, default=D.head.base_lr_scale,
       show_default="0.1 with --pretrained-encoder, else 1",
       help="Learning rate of the pretrained encoder relative to --lr (the new heads); 0 = frozen but in train mode.")
@O.opt("Model", "--target-input", type=click.Choice(["tokens", "embedding", "both"]), default=D.head.target_input,
       help="What the target head reads: a target transformer over the ASV slots (tokens), the encoder's pooled "
            "(pretrained UniFrac-space) sample embedding, or both concatenated.")
@O.opt("Model", "--asv-readout", type=click.Choice(["none", "presence", "abundance"]), default=D.head.asv_readout,
       help="Add an additive per-ASV readout to the target head: each ASV's embedding -> a score, averaged over "
            "the sample's ASVs with equal (presence) or relative-abundance weights.")
@O.opt("Model", "--count-prediction/--no-count-prediction", default=D.head.count_prediction,
       help="Predict per-ASV abundances too.")
@O.opt("Model", "--count-target", type=click.Choice(["log", "relative"]), default=D.head.count_target,
       help="Count head target: log1p(reads) (MSE) or relative abundance (cross-entropy).")
@O.opt("Loss", "--loss-type", type=click.Choice(["huber", "mse", "mae", "quantile", "asymmetric"]),
       default=D.target_loss.loss_type, help="Regression loss (on the transformed target).")
@O.opt("Loss", "--quantiles", default=D.target_loss.quantiles, show_default="0.1,0.5,0.9",
       help="Quantiles of --loss-type quantile.")
@O.opt("Loss", "--over-penalty", type=float, default=D.target_loss.over_penalty,
       help="Asymmetric loss: weight of over-predictions.")
@O.opt("Loss", "--under-penalty", type=float, default=D.target_loss.under_penalty,
       help="Asymmetric loss: weight of under-predictions.")
@O.opt("Loss", "--class-weights", default=D.target_loss.class_weights,
       help="Comma-separated weight per class (sorted label order).")
@O.opt("Loss", "--target-transform", type=click.Choice(["none", "minmax", "zscore", "log-minmax", "log-zscore"]),
       default=D.target_loss.target_transform, help="Regression target scaling, fitted on the training split; "
                                                    "predictions are reported in the original units.")
@O.opt("Loss", "--target-penalty", type=float, default=D.target_loss.target_penalty, help="Weight of the target loss.")
@O.opt("Loss", "--count-penalty", type=float, default=D.target_loss.count_penalty, help="Weight of the count loss.")
@O.apply(O.loss_options(D.loss))
@O.apply(O.training_options(D.training, BEST_METRICS))
@O.apply(O.hardware_options(D.hardware))
@O.apply(O.launch_options())
@O.output_option()
@O.config_option()
def train(**options) -> int:
    """Fine-tune for regression (default) or classification (--classifier) on --metadata-column."""
    from aam.workflows.train import run_train

    launched = O.take_launch(options)
    if launched is not None:
        return launched
    run_train(TrainRequest.from_options(options))
    return 0
