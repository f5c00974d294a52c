"""`aam train`: fine-tune a SequencePredictor (or train one from scratch) on metadata columns.

The stages, in order: the distance source and the run folder; preprocessing (the pretrained encoder fixes
max_bp and token_limit); labelled samples and their split; fitted targets (label encoder or target
transforms, on the training split only); categorical codes; the model; the loss; the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aam.data import metadata as meta
from aam.data import targets as tgt
from aam.data.dataset import SampleDataset, collate
from aam.data.prepare import (
    PreparedTable,
    Preprocessing,
    asv_vocabulary,
    make_dataset,
    prepare_table,
    report_token_limit,
)
from aam.data.split import split_samples
from aam.errors import AAMError, InputError
from aam.models import ModelConfig, build_model, count_parameters
from aam.training import checkpoint as ckpt
from aam.training.distributed import finish_distributed
from aam.training.losses import LossConfig, MultiTaskLoss
from aam.training.trainer import Trainer
from aam.workflows import distances
from aam.workflows.requests import PRETRAINED_BASE_LR_SCALE, HeadOptions, LabelOptions, TrainRequest
from aam.workflows.runs import (
    Run,
    check_batch_size,
    encoder_config,
    load_resume,
    pairwise_hook,
    preprocessing,
    report,
    resolve_resume,
    saved_plan,
    start_run,
    train_config,
    write_split,
)

log = logging.getLogger("aam")


def parse_list(text: str | None) -> list[str]:
    """A comma-separated option as a list of its non-empty, stripped items."""
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def parse_floats(text: str | None) -> list[float]:
    try:
        return [float(x) for x in parse_list(text)]
    except ValueError as exc:
        raise AAMError(f"expected a comma-separated list of numbers, got {text!r}") from exc


def target_columns(labels: LabelOptions, loss_type: str) -> list[str]:
    """--metadata-column as a list: one column, or several (comma-separated) for multi-output regression."""
    cols = parse_list(labels.metadata_column)
    if not cols:
        raise AAMError("--metadata-column is empty; name the column to predict")
    if len(set(cols)) < len(cols):
        raise AAMError(f"--metadata-column names a column twice: {labels.metadata_column!r}")
    if len(cols) > 1 and labels.classifier:
        raise AAMError(f"--classifier takes one --metadata-column, got {len(cols)} ({', '.join(cols)}); "
                       "several columns are for regression")
    if len(cols) > 1 and loss_type == "quantile":
        raise AAMError("--loss-type quantile takes one --metadata-column; use huber, mse, mae or asymmetric for "
                       f"several ({', '.join(cols)})")
    return cols


def labelled_values(labels: LabelOptions, md: Any, ids: list[str], cols: list[str]) -> tuple[list[str], np.ndarray]:
    """Samples with a target value, and the raw values (float [N], label strings, or float [N, T] for several
    columns, where a sample needs a value in at least one column and a missing one is NaN)."""
    if labels.classifier:
        values, mask = meta.categorical_values(md, cols[0], ids)
    else:
        per_col = [meta.numeric_target(md, c, ids, labels.metadata) for c in cols]
        values = np.stack([np.where(m, v, np.nan) for v, m in per_col], axis=1) if len(cols) > 1 else per_col[0][0]
        mask = np.logical_or.reduce([m for _, m in per_col])
        for c, (_, m) in zip(cols, per_col, strict=True):
            if len(cols) > 1 and not (m | ~mask).all():
                log.info("%d sample(s) have no value in column %r: their other columns still train",
                         int((~m & mask).sum()), c)
    if not mask.all():
        missing = [s for s, m in zip(ids, mask, strict=True) if not m]
        what = f"column {cols[0]!r}" if len(cols) == 1 else f"any of the columns {', '.join(cols)}"
        log.warning("%d sample(s) have no value in %s and are left out (e.g. %s)", len(missing), what,
                    ", ".join(missing[:10]))
    keep = [s for s, m in zip(ids, mask, strict=True) if m]
    if not keep:
        raise InputError(f"column(s) {', '.join(map(repr, cols))} of {labels.metadata} have no value for any table "
                         "sample")
    return keep, values[mask]


@dataclass
class Labelled:
    """The run's labelled samples: the prepared table, sample IDs with a target, their raw values, groups."""

    prepared: PreparedTable
    md: Any
    ids: list[str]
    raw: np.ndarray
    groups: list[Any] | None

    def raw_of(self, sample_ids: list[str]) -> np.ndarray:
        pos = {s: i for i, s in enumerate(self.ids)}
        return self.raw[[pos[s] for s in sample_ids]]


@dataclass
class Targets:
    """Model-scale target per sample; class labels (classifier) or the map back to original units."""

    y_of: dict[str, Any]
    class_labels: list[str] | None
    denormalize: Any


@dataclass
class Setup:
    """What every model of a run shares: the request, the run folder, preprocessing, data and targets."""

    req: TrainRequest
    run: Run
    resume: dict[str, Any] | None
    pretrained: dict[str, Any] | None
    pre: Preprocessing
    cols: list[str]
    data: Labelled
    targets: Targets
    cat_codes: dict[str, np.ndarray] | None
    dm: Any

    def dataset(self, sample_ids: list[str]) -> SampleDataset:
        y = np.asarray([self.targets.y_of[s] for s in sample_ids])
        c = np.stack([self.cat_codes[s] for s in sample_ids]) if self.cat_codes is not None else None
        return make_dataset(self.data.prepared, sample_ids, self.pre, y, c)


# ---------------------------------------------------------------------------------------------- stages
def _preprocessing(req: TrainRequest, resume: dict[str, Any] | None,
                   pretrained: dict[str, Any] | None) -> Preprocessing:
    if resume:
        return Preprocessing.from_dict(resume["preprocessing"])
    pre = preprocessing(req.preprocess, req.training.seed, req.hardware.kernels,
                        "classification" if req.labels.classifier else "regression")
    if pretrained:  # the encoder's position tables fix these
        enc_pre = pretrained["preprocessing"]
        for key in ("max_bp", "token_limit"):
            if getattr(pre, key) != enc_pre[key]:
                log.info("using %s=%s of the pretrained encoder (not %s)", key, enc_pre[key], getattr(pre, key))
                setattr(pre, key, enc_pre[key])
    return pre


MAX_CLASSES_FLOOR = 20  # --classifier accepts up to max(20, samples / 5) classes


def _labelled(req: TrainRequest, pre: Preprocessing, cols: list[str]) -> Labelled:
    """Load and prepare the table; the samples with a target, minus the request's exclude_samples."""
    labels = req.labels
    md = meta.load_metadata(labels.metadata)
    meta.require_columns(md, cols, labels.metadata)
    prepared = prepare_table(req.input.table, req.input.sequences, pre.rarefy_depth, pre.rarefy_seed, pre.max_bp)
    pre.rarefy_depth = prepared.depth
    table_ids = [str(s) for s in prepared.table.ids(axis="sample")]
    meta.require_samples(md, table_ids, labels.metadata)  # before any split
    ids, raw = labelled_values(labels, md, table_ids, cols)
    if req.exclude_samples:  # `aam cv`: the test fold never enters training or validation
        held = set(req.exclude_samples)
        keep = np.array([s not in held for s in ids], dtype=bool)
        ids, raw = [s for s, k in zip(ids, keep, strict=True) if k], raw[keep]
    check_labels(labels, cols, raw)
    groups = None
    if labels.group_column:
        meta.require_columns(md, [labels.group_column], labels.metadata)
        groups = md[labels.group_column].reindex(ids).tolist()
    return Labelled(prepared, md, ids, raw, groups)


def check_labels(labels: LabelOptions, cols: list[str], raw: np.ndarray) -> None:
    """InputError on targets nothing can be learnt from: a class column with about as many classes as samples
    (a continuous column given --classifier), a single class, or a numeric column with one value."""
    where = f"column {','.join(cols)!r} of {labels.metadata}"
    if labels.classifier:
        classes = {str(v) for v in raw}
        if len(classes) < 2:
            raise InputError(f"{where}: every labelled sample has the class {next(iter(classes), '')!r}; a "
                             "classifier needs two or more classes")
        if len(classes) > max(MAX_CLASSES_FLOOR, len(raw) // 5):
            raise InputError(f"{where}: {len(classes)} classes over {len(raw)} labelled samples, too few samples "
                             "per class to learn or validate; for a continuous column drop --classifier, else merge "
                             "rare classes")
        return
    values = np.asarray(raw, dtype=float).reshape(len(raw), -1)
    for k, col in enumerate(cols):
        finite = values[np.isfinite(values[:, k]), k]
        if len(finite) and np.all(finite == finite[0]):
            raise InputError(f"column {col!r} of {labels.metadata}: every labelled sample has the value "
                             f"{finite[0]:g}; there is nothing to predict")


def split(req: TrainRequest, pre: Preprocessing, data: Labelled) -> tuple[list[str], list[str]]:
    """The train/validation split of one model: --test-size of the samples (whole groups; classes kept)."""
    stratify = list(data.raw) if req.labels.classifier else None
    return split_samples(data.ids, req.preprocess.test_size, pre.seed, groups=data.groups, stratify=stratify)


def _fit_targets(req: TrainRequest, pre: Preprocessing, data: Labelled, cols: list[str], fit_ids: list[str],
                 val_ids: list[str]) -> tuple[Targets, list[str]]:
    """Label encoder (classifier) or target transform(s), fitted on `fit_ids` and recorded in `pre`; and the
    validation samples left (those of classes absent from `fit_ids` are dropped)."""
    raw_fit = data.raw_of(fit_ids)
    col = ",".join(cols)
    pre.target_column = col
    if req.labels.classifier:
        enc = tgt.LabelEncoder.from_dict(pre.label_encoder) if pre.label_encoder else \
            tgt.LabelEncoder(column=col).fit(raw_fit)
        pre.label_encoder = enc.to_dict()
        known = set(enc.classes)
        unseen = [s for s, v in zip(val_ids, data.raw_of(val_ids), strict=True) if str(v) not in known]
        if unseen:
            log.warning("%d validation sample(s) have classes absent from training and are left out (e.g. %s)",
                        len(unseen), ", ".join(unseen[:10]))
            val_ids = [s for s in val_ids if s not in set(unseen)]
        used = [s for s, v in zip(data.ids, data.raw, strict=True) if str(v) in known]
        return Targets(dict(zip(used, enc.transform(list(data.raw_of(used))), strict=True)), enc.classes,
                       None), val_ids
    if pre.target_transform:
        transform = tgt.transform_from_dict(pre.target_transform)
    elif len(cols) > 1:
        transform = tgt.ColumnTransforms.fit(req.target_loss.target_transform, raw_fit, cols)
    else:
        transform = tgt.TargetTransform(req.target_loss.target_transform).fit(raw_fit.astype(np.float64), col)
    pre.target_transform = transform.to_dict()
    y = transform.transform(data.raw.astype(np.float64))
    return Targets(dict(zip(data.ids, y, strict=True)), None, transform.inverse_transform), val_ids


def _category_codes(req: TrainRequest, pre: Preprocessing, data: Labelled,
                    fit_ids: list[str]) -> dict[str, np.ndarray] | None:
    cat_cols = parse_list(req.labels.categorical_columns)
    if not cat_cols and not pre.category_encoder:
        return None
    cenc = tgt.CategoryEncoder.from_dict(pre.category_encoder) if pre.category_encoder else \
        tgt.CategoryEncoder().fit(data.md.loc[fit_ids], cat_cols)
    pre.category_encoder = cenc.to_dict()
    return dict(zip(data.ids, cenc.transform(data.md, data.ids), strict=True))


def _predictor_config(req: TrainRequest, pre: Preprocessing, resume: dict[str, Any] | None,
                      pretrained: dict[str, Any] | None, n_outputs: int, class_labels: list[str] | None) -> ModelConfig:
    kernels = req.hardware.kernels
    if resume:
        return dataclasses.replace(ModelConfig.from_dict(resume["model_config"]), kernels=kernels)
    base = ModelConfig.from_dict(pretrained["model_config"]) if pretrained else \
        encoder_config(req.model, pre, kernels)
    heads, layers, head, lt = base.encoder_heads, req.model.attention_layers, req.head, req.target_loss
    quantiles = LossConfig(loss_type=lt.loss_type, quantiles=parse_floats(lt.quantiles)).quantiles \
        if lt.loss_type == "quantile" and not req.labels.classifier else []
    return dataclasses.replace(
        base, kind="predictor", kernels=kernels, dropout=req.model.dropout,
        gradient_checkpointing=req.model.gradient_checkpointing, out_dim=n_outputs,
        n_classes=len(class_labels) if class_labels else 0, quantiles=quantiles,
        count_prediction=head.count_prediction, count_target=head.count_target, count_heads=heads, count_layers=1,
        target_heads=heads, target_layers=layers, target_input=head.target_input, asv_readout=head.asv_readout,
        asv_vocab_size=len(pre.asv_vocabulary or []), asv_identity=head.asv_identity,
        asv_identity_dropout=head.asv_identity_dropout, asv_bag_dim=head.asv_bag_dim,
        categorical_cardinalities=tgt.CategoryEncoder.from_dict(pre.category_encoder).cardinalities
        if pre.category_encoder else [],
        categorical_embed_dim=head.categorical_embed_dim, categorical_fusion=head.categorical_fusion)


def base_lr_scale(head: HeadOptions, resume: dict[str, Any] | None = None) -> float:
    """Fine-tuning a pretrained encoder: its LR is 0.1 x --lr by default (random new heads at the full rate
    would otherwise degrade the pretrained features: with --target-input both, demo pH R2 over the last 5
    epochs 0.38 -> 0.45 and 0.58 -> 0.63 on two generated datasets).
    A resumed run keeps its own scale (its optimizer state has that many param groups)."""
    if head.base_lr_scale is not None:
        return head.base_lr_scale
    if resume is not None:
        return resume["trainer_state"].get("train_config", {}).get("base_lr_scale", 1.0)
    return PRETRAINED_BASE_LR_SCALE if head.pretrained_encoder else 1.0


def _loss(req: TrainRequest, mcfg: ModelConfig, dm: Any, frozen: bool, class_labels: list[str] | None,
          world: int, nucleotides: bool) -> MultiTaskLoss:
    class_weights = parse_floats(req.target_loss.class_weights) or None
    if class_weights and (not class_labels or len(class_weights) != len(class_labels)):
        raise AAMError(f"--class-weights needs one weight per class ({len(class_labels or [])} classes)")
    lo, lt = req.loss, req.target_loss
    return MultiTaskLoss(LossConfig(
        unifrac_weight=lo.penalty if dm is not None and not frozen else 0.0,
        unifrac_transform=lo.unifrac_transform, unifrac_scale=lo.unifrac_scale,
        nuc_weight=lo.nuc_penalty if nucleotides else 0.0, count_weight=lt.count_penalty,
        count_target=req.head.count_target, target_weight=lt.target_penalty, loss_type=lt.loss_type,
        quantiles=mcfg.quantiles, over_penalty=lt.over_penalty, under_penalty=lt.under_penalty,
        class_weights=class_weights, classifier=bool(class_labels), kernels=req.hardware.kernels),
        pairwise_fn=pairwise_hook(world, dm))


def _check_best_metric(best: str, classifier: bool, cols: list[str]) -> None:
    if best in ("accuracy", "f1") and not classifier or best in ("r2", "mae") and classifier:
        raise AAMError(f"--best-metric {best} does not apply to {'classification' if classifier else 'regression'}")
    if best == "mae" and len(cols) > 1:
        raise AAMError(f"--best-metric mae mixes the units of {', '.join(cols)}; use r2 (their mean R2) or val_loss")


# ---------------------------------------------------------------------------------------------- the run
def setup_training(req: TrainRequest, ensemble: bool = False) -> tuple[Setup, list[str], list[str]]:
    """The shared stages of a run, and the split of a single model: (setup, train_ids, val_ids). For an ensemble
    the targets, categories and ASV vocabulary are fitted on every labelled sample (each is a training sample of
    some member) and the split is left to the members (both lists hold every sample)."""
    resume = load_resume(req.training.resume, "train")
    dist_opts = distances.resolve(distances.from_resume(req.distances, resume), req.preprocess.asv_sampling,
                                  required=False)
    req = dataclasses.replace(req, distances=dist_opts)
    use_dm = dist_opts.given and req.loss.penalty > 0
    check_batch_size(req.training.batch_size, pairwise=use_dm)
    if resume is not None and ("members" in resume) != ensemble:
        n = len(resume.get("member_folds", []))
        raise AAMError(f"--resume {req.training.resume}: that run trained "
                       f"{f'an ensemble of {n} models' if n else 'a single model'}, not --ensemble "
                       f"{req.head.ensemble}; resume with the same --ensemble (or start a new run)")
    if resume is not None and ensemble and req.head.ensemble is not None and \
            len(resume["member_folds"]) != req.head.ensemble:
        raise AAMError(f"--resume {req.training.resume}: that run trains {len(resume['member_folds'])} members, not "
                       f"--ensemble {req.head.ensemble}; resume with the same --ensemble")
    run = start_run(req, req.hardware, req.training.seed)  # after every check of the options: it writes the folder
    encoder_path = req.head.pretrained_encoder
    # an ensemble's members not trained yet start from the pretrained encoder, also when the run resumes
    pretrained = ckpt.load_checkpoint(encoder_path, "pretrain") if encoder_path and (ensemble or not resume) \
        else None
    for flag, given in (("--freeze-base", req.head.freeze_base), ("--freeze-asv-encoder", req.head.freeze_asv_encoder)):
        if given and pretrained is None and resume is None:
            raise AAMError(f"{flag} needs --pretrained-encoder (there is nothing pretrained to freeze)")
    pre = _preprocessing(req, resume, pretrained)
    cols = target_columns(req.labels, req.target_loss.loss_type)
    col = ",".join(cols)
    if resume and pre.target_column and pre.target_column != col:
        raise AAMError(f"--resume {req.training.resume}: that run predicts --metadata-column {pre.target_column}, "
                       f"not {col}; resume with the same columns (or start a new run)")
    _check_best_metric(req.training.best_metric, req.labels.classifier, cols)
    data = _labelled(req, pre, cols)
    train_ids, val_ids = (data.ids, data.ids) if ensemble else split(req, pre, data)
    if (req.head.asv_identity or req.head.asv_bag_dim) and not resume:
        pre.asv_vocabulary = asv_vocabulary(data.prepared, train_ids)
        log.info("ASV vocabulary (identity vectors%s): the %d ASVs of the training samples",
                 ", presence bag" if req.head.asv_bag_dim else "", len(pre.asv_vocabulary))
    targets, val_ids = _fit_targets(req, pre, data, cols, train_ids, val_ids)
    cat_codes = _category_codes(req, pre, data, train_ids)
    dm = distances.load(dist_opts, req.input.table, req.hardware.num_workers, data.ids, data.prepared, pre) \
        if use_dm else None
    return Setup(req, run, resume, pretrained, pre, cols, data, targets, cat_codes, dm), train_ids, val_ids


def fit_model(setup: Setup, train_ids: list[str], val_ids: list[str], out: Path,
              resume_path: str | None) -> tuple[Trainer, list[dict[str, float]]]:
    """Build the predictor (from the pretrained encoder), train it on `train_ids`, validate on `val_ids` and write
    its run folder `out` (checkpoints, plots, val_predictions.tsv); resume from `resume_path` when given."""
    req, pre = setup.req, setup.pre
    resume = ckpt.load_checkpoint(resume_path, "train") if resume_path else None
    write_split(out, train_ids, val_ids)
    train_set, val_set = setup.dataset(train_ids), setup.dataset(val_ids)
    report_token_limit(train_set, pre.token_limit)
    mcfg = _predictor_config(req, pre, resume, setup.pretrained, len(setup.cols), setup.targets.class_labels)
    model = build_model(mcfg)
    if setup.pretrained:
        model.base_model.load_state_dict(ckpt.strip_prefixes(setup.pretrained["model_state"]))
        log.info("loaded pretrained encoder %s", req.head.pretrained_encoder)
    frozen = req.head.freeze_base
    freeze_asv = freeze_asv_encoder(req)
    if frozen:
        model.freeze_base()
    elif freeze_asv:
        model.freeze_asv_encoder()
    log.info("SequencePredictor: %d parameters (%d trainable); %d train / %d val samples", count_parameters(model),
             count_parameters(model, trainable_only=True), len(train_ids), len(val_ids))
    loss = _loss(req, mcfg, setup.dm, frozen, setup.targets.class_labels, setup.run.world,
                 nucleotides=not (frozen or freeze_asv))
    info = {"kind": "train", "model_config": mcfg.to_dict(), "preprocessing": pre.to_dict()}
    classes = setup.targets.class_labels
    trainer = Trainer(model, loss, train_set, val_set, functools.partial(collate, distances=setup.dm),
                      train_config(req.training, req.loss, req.hardware, req.training.best_metric,
                                   base_lr_scale(req.head, resume)),
                      setup.run.device, out, info, task="classification" if classes else "regression",
                      denormalize=setup.targets.denormalize, class_labels=classes,
                      target_names=setup.cols if len(setup.cols) > 1 else None, batch_plan=saved_plan(resume))
    if resume_path:
        trainer.resume(resume_path)
    history = trainer.fit()
    trainer.close()
    return trainer, history


def freeze_asv_encoder(req: TrainRequest) -> bool:
    """--freeze-asv-encoder, by default on with a pretrained encoder: the nucleotide encoder keeps its pretrained
    weights and each ASV is encoded once per run (docs/SCIENCE.md measures what fine-tuning it would add)."""
    if req.head.freeze_asv_encoder is not None:
        return req.head.freeze_asv_encoder
    return req.head.pretrained_encoder is not None and not req.head.freeze_base


def metric_keys(classifier: bool) -> list[str]:
    return ["val_loss", "val_accuracy", "val_f1"] if classifier else ["val_loss", "val_mae", "val_rmse", "val_r2"]


def run_train(req: TrainRequest) -> dict[str, Any]:
    req = resolve_resume(req)
    if req.head.ensemble is None or req.head.ensemble > 1:
        from aam.workflows.ensemble import run_ensemble  # the same layer; imported only when needed

        return run_ensemble(req)
    setup, train_ids, val_ids = setup_training(req)
    trainer, history = fit_model(setup, train_ids, val_ids, setup.run.out, req.training.resume)
    finish_distributed()
    return report(trainer, history, metric_keys(bool(setup.targets.class_labels)))
