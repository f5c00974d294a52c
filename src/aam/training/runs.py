"""The work behind `aam pretrain` and `aam train` (click-free; options arrive as a dict)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.data import distances as dist
from aam.data import metadata as meta
from aam.data import targets as tgt
from aam.data.dataset import collate
from aam.data.split import split_samples
from aam.errors import AAMError, InputError
from aam.models import ModelConfig, build_model, count_parameters
from aam.training import checkpoint as ckpt
from aam.training.data_setup import Preprocessing, make_dataset, prepare_table, report_token_limit
from aam.training.distributed import finish_distributed
from aam.training.losses import LossConfig, MultiTaskLoss
from aam.training.trainer import TrainConfig, Trainer

log = logging.getLogger("aam")


# ---------------------------------------------------------------------------------------------- shared
def _setup(kw: dict[str, Any]) -> tuple[Path, torch.device, int]:
    from aam.cli.common import init_distributed, seed_everything, setup_logging, write_json

    out = Path(kw["output_dir"])
    rank, world, device = init_distributed(kw["device"])
    setup_logging(out if rank == 0 else None)
    seed_everything(kw["seed"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run_options.json", kw)
    log.info("device %s, kernels %s, seed %d%s", device, kw["kernels"], kw["seed"],
             f", rank {rank}/{world}" if world > 1 else "")
    return out, device, world


def _load_resume(kw: dict[str, Any], kind: str) -> dict[str, Any] | None:
    if not kw["resume"]:
        return None
    if not Path(kw["resume"]).is_file():
        raise InputError(f"--resume {kw['resume']}: file not found; give the run's checkpoints/last.pt")
    return ckpt.load_checkpoint(kw["resume"], kind)


def _train_config(kw: dict[str, Any], best_metric: str, resume: dict[str, Any] | None = None) -> TrainConfig:
    return TrainConfig(
        epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], weight_decay=kw["weight_decay"],
        warmup_steps=kw["warmup_steps"], gradient_accumulation_steps=kw["gradient_accumulation_steps"],
        max_grad_norm=kw["max_grad_norm"] or None, mixed_precision=kw["mixed_precision"], patience=kw["patience"],
        compile_model=bool(kw.get("compile_model")), tf32=bool(kw.get("tf32")),
        best_metric=best_metric, nuc_mask_ratio=kw["nuc_mask_ratio"], nuc_mask_strategy=kw["nuc_mask_strategy"],
        nuc_asv_fraction=kw["nuc_asv_fraction"], log_every=max(1, kw["log_every"]), checkpoint_every=kw["checkpoint_every"], max_steps=kw["max_steps"],
        seed=kw["seed"], num_workers=kw["num_workers"], progress=os.environ.get("AAM_NO_PROGRESS") is None,
        base_lr_scale=_base_lr_scale(kw, resume),
    )


def _base_lr_scale(kw: dict[str, Any], resume: dict[str, Any] | None = None) -> float:
    """Fine-tuning a pretrained encoder: its LR is 0.1 x --lr by default (random new heads at the full rate
    would otherwise degrade the pretrained features: with --target-input both, demo pH R2 over the last 5
    epochs 0.38 -> 0.45 and 0.58 -> 0.63 on two generated datasets).
    A resumed run keeps its own scale (its optimizer state has that many param groups)."""
    if kw.get("base_lr_scale") is not None:
        return kw["base_lr_scale"]
    if resume is not None:
        return resume["trainer_state"].get("train_config", {}).get("base_lr_scale", 1.0)
    return 0.1 if kw.get("pretrained_encoder") else 1.0


def _dropout(kw: dict[str, Any], default: float) -> float:
    return default if kw["dropout"] is None else kw["dropout"]


def _encoder_config(kw: dict[str, Any], pre: Preprocessing, dropout: float) -> ModelConfig:
    heads, layers = kw["attention_heads"], kw["attention_layers"]
    return ModelConfig(
        kind="encoder", max_bp=pre.max_bp, token_limit=pre.token_limit, embedding_dim=kw["embedding_dim"],
        dropout=dropout, asv_heads=heads, asv_layers=kw["asv_layers"] if kw["asv_layers"] is not None else layers,
        sample_heads=heads, sample_layers=layers, encoder_heads=heads, encoder_layers=layers,
        count_embedding=kw["count_embedding_method"] if kw["count_embedding"] else "none",
        gradient_checkpointing=kw["gradient_checkpointing"], kernels=kw["kernels"],
    )


def _preprocessing(kw: dict[str, Any], task: str) -> Preprocessing:
    if kw["token_limit"] < 1 or kw["max_bp"] < 1:
        raise AAMError("--token-limit and --max-bp must be positive")
    return Preprocessing(rarefy_depth=kw["rarefy_depth"], rarefy_seed=kw["seed"], max_bp=kw["max_bp"],
                         token_limit=kw["token_limit"], asv_sampling=kw["asv_sampling"], seed=kw["seed"],
                         kernels=kw["kernels"], task=task)


def _pairwise_hook(world: int, dm: Any):
    """Under DDP the UniFrac loss sees every rank's samples (cross-rank pairs)."""
    if world <= 1 or dm is None:
        return None
    from aam.training.distributed import global_pairwise_loss  # gathers embeddings + IDs of every rank

    def pairwise(emb, batch, transform, scale, backend, adjust_target=None):
        return global_pairwise_loss(emb.float(), list(batch["sample_ids"]), dm, transform=transform, scale=scale,
                                    backend=backend, adjust_target=adjust_target)

    return pairwise


def _distance_source_from_resume(kw: dict[str, Any], resume: dict[str, Any] | None) -> None:
    """A resumed run without --tree / --unifrac-matrix reuses the distance source its checkpoint recorded."""
    if resume is None or kw.get("unifrac_matrix") or kw.get("tree"):
        return
    source = resume["preprocessing"].get("extra", {}).get("unifrac")
    if not source:
        return
    if source["source"] == "tree":
        kw.update(tree=source["tree"], unifrac_metric=source["metric"], unifrac_alpha=source.get("alpha"),
                  drop_missing_features=source.get("drop_missing_features", False),
                  unifrac_targets=source.get("targets", "all"))
    else:
        kw.update(unifrac_matrix=source["matrix"], unifrac_ids=source.get("ids"))


def _check_distance_source(kw: dict[str, Any], required: bool) -> bool:
    """Exactly one of --unifrac-matrix / --tree (or neither when not `required`); True when one is given.

    Fills the --unifrac-metric default (unweighted) when --tree is given."""
    matrix, tree = kw.get("unifrac_matrix"), kw.get("tree")
    if matrix and tree:
        raise AAMError(f"--unifrac-matrix {matrix} and --tree {tree} are both given; pass one distance source "
                       "(a precomputed matrix, or a tree for UniFrac computed per batch)")
    if required and not matrix and not tree:
        raise AAMError("pass --unifrac-matrix (precomputed distances; `aam unifrac` makes one) or --tree "
                       "(UniFrac computed per batch from a Newick tree)")
    if not tree and (kw.get("unifrac_alpha") is not None or kw.get("drop_missing_features")
                     or kw.get("unifrac_targets") is not None):
        raise AAMError("--unifrac-alpha, --unifrac-targets and --drop-missing-features apply only with --tree")
    if tree and kw.get("unifrac_targets") is None:  # the ASVs the model sees, when that set is fixed
        kw["unifrac_targets"] = "all" if kw.get("asv_sampling") == "random" else "visible"
    if tree and kw["unifrac_targets"] == "visible" and kw.get("asv_sampling") == "random":
        raise AAMError("--unifrac-targets visible needs --asv-sampling abundance or first: with 'random' the "
                       "visible ASVs change every epoch")
    if not tree and kw.get("unifrac_metric") is not None:
        raise AAMError(f"--unifrac-metric {kw['unifrac_metric']} applies only with --tree; a --unifrac-matrix "
                       "already holds one metric (`aam unifrac --metric` chooses it when making the matrix)")
    if tree and kw.get("unifrac_metric") is None:
        kw["unifrac_metric"] = "unweighted"
    if tree and not Path(tree).is_file():
        raise InputError(f"--tree {tree}: file not found; pass a Newick tree whose tips are the table's features")
    if tree and kw.get("unifrac_alpha") is not None and kw.get("unifrac_metric") != "generalized":
        raise AAMError(f"--unifrac-alpha applies only to --unifrac-metric generalized, not {kw.get('unifrac_metric')}")
    return bool(matrix or tree)


def _load_distances(kw: dict[str, Any], sample_ids: list[str], prepared: Any = None, pre: Preprocessing | None = None):
    """The batch-target source: a precomputed matrix, or TreeDistances over the rarefied table (--tree).

    With --tree the per-sample state is built once here and the collate function (DataLoader workers)
    computes each batch's [B, B] block; workers get threads=1. The source is recorded in `pre.extra`.
    """
    if kw.get("tree"):
        from aam.ops.unifrac import TreeDistances

        visible = kw.get("unifrac_targets") == "visible"
        table = make_dataset(prepared, sample_ids, pre).visible_table() if visible else prepared.table
        try:
            dm = TreeDistances(table, kw["tree"], kw["unifrac_metric"], kw.get("unifrac_alpha"),
                               threads=1 if kw.get("num_workers", 0) > 0 else None,
                               drop_missing_features=kw.get("drop_missing_features", False))
        except InputError as exc:  # name the table file rather than "table"
            msg = str(exc)
            raise InputError(f"{kw['table']}{msg[len('table'):]}" if msg.startswith("table:") else msg) from None
        log.info("UniFrac targets (%s%s, %s) computed per batch from %s: %d samples, %.1f MiB of per-sample state%s",
                 dm.metric, f", alpha {dm.alpha}" if dm.metric == "generalized" else "",
                 f"the {pre.token_limit} visible ASVs per sample" if visible else "all ASVs", kw["tree"], len(dm),
                 dm.nbytes / 2**20, f", {dm.n_dropped} features not in the tree ignored" if dm.n_dropped else "")
        source = {"source": "tree", "tree": str(Path(kw["tree"]).resolve()), "metric": dm.metric,
                  "alpha": dm.alpha if dm.metric == "generalized" else None,
                  "drop_missing_features": bool(kw.get("drop_missing_features", False)),
                  "targets": "visible" if visible else "all"}
    else:
        dm = dist.load_distance_matrix(kw["unifrac_matrix"], kw.get("unifrac_ids"))
        dist.check_covers(dm, sample_ids, kw["unifrac_matrix"])
        source = {"source": "matrix", "matrix": str(Path(kw["unifrac_matrix"]).resolve()),
                  "ids": str(Path(kw["unifrac_ids"]).resolve()) if kw.get("unifrac_ids") else None}
    if pre is not None:
        pre.extra["unifrac"] = source
    return dm


def _write_split(out: Path, train_ids: list[str], val_ids: list[str]) -> None:
    from aam.cli.common import write_lines

    write_lines(out / "train_samples.txt", train_ids)
    write_lines(out / "val_samples.txt", val_ids)


def _check_batch_size(kw: dict[str, Any], pairwise: bool) -> None:
    if kw["batch_size"] < 1:
        raise AAMError(f"--batch-size must be >= 1, got {kw['batch_size']}")
    if pairwise and kw["batch_size"] < 2:
        raise AAMError("--batch-size must be >= 2 with the pairwise UniFrac loss (a batch of 1 has no pairs)")


def _report(trainer: Trainer, history: list[dict[str, float]], keys: list[str]) -> dict[str, Any]:
    last = history[-1] if history else {}
    best = next((row for row in history if row["epoch"] == trainer.best_epoch), last)
    summary = {"epochs": len(history), "best_epoch": trainer.best_epoch,
               "metrics": {k: best[k] for k in keys if k in best},
               "best": str(trainer.checkpoint_dir / "best.pt"), "last": str(trainer.checkpoint_dir / "last.pt"),
               "plots": str(trainer.plot_dir)}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in summary["metrics"].items())
    log.info("done: best epoch %s: %s; checkpoints in %s, plots in %s", trainer.best_epoch, shown,
             trainer.checkpoint_dir, trainer.plot_dir)
    return summary


# ---------------------------------------------------------------------------------------------- pretrain
def run_pretrain(kw: dict[str, Any]) -> dict[str, Any]:
    resume = _load_resume(kw, "pretrain")
    _distance_source_from_resume(kw, resume)
    _check_distance_source(kw, required=True)  # before the run folder and log exist
    out, device, world = _setup(kw)
    _check_batch_size(kw, pairwise=kw["penalty"] > 0)
    pre = Preprocessing.from_dict(resume["preprocessing"]) if resume else _preprocessing(kw, "pretrain")
    prepared = prepare_table(kw["table"], kw["sequences"], pre.rarefy_depth, pre.rarefy_seed, pre.max_bp)
    pre.rarefy_depth = prepared.depth
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    dm = _load_distances(kw, ids, prepared, pre)
    train_ids, val_ids = split_samples(ids, kw["test_size"], pre.seed)
    _write_split(out, train_ids, val_ids)
    train_set, val_set = make_dataset(prepared, train_ids, pre), make_dataset(prepared, val_ids, pre)
    report_token_limit(train_set, pre.token_limit)
    mcfg = ModelConfig.from_dict(resume["model_config"]) if resume else _encoder_config(kw, pre, _dropout(kw, 0.0))
    if resume:
        mcfg.kernels = kw["kernels"]
    model = build_model(mcfg)
    log.info("SequenceEncoder: %d parameters; %d train / %d val samples", count_parameters(model), len(train_ids),
             len(val_ids))
    loss = MultiTaskLoss(LossConfig(unifrac_weight=kw["penalty"], unifrac_transform=kw["unifrac_transform"],
                                    unifrac_scale=kw["unifrac_scale"], nuc_weight=kw["nuc_penalty"],
                                    kernels=kw["kernels"]), pairwise_fn=_pairwise_hook(world, dm))
    info = {"kind": "pretrain", "model_config": mcfg.to_dict(), "preprocessing": pre.to_dict(),
            "unifrac": {"transform": kw["unifrac_transform"], "scale": kw["unifrac_scale"]}}  # for `aam embed`
    trainer = Trainer(model, loss, train_set, val_set, functools.partial(collate, distances=dm),
                      _train_config(kw, kw["best_metric"]), device, out, info, task="pretrain")
    if kw["resume"]:
        trainer.resume(kw["resume"])
    history = trainer.fit()
    trainer.close()
    finish_distributed()
    return _report(trainer, history, ["val_loss", "val_unifrac_loss", "val_unifrac_r2", "val_unifrac_mae",
                                      "val_nuc_accuracy"])


# ---------------------------------------------------------------------------------------------- train
def target_columns(kw: dict[str, Any]) -> list[str]:
    """--metadata-column as a list: one column, or several (comma-separated) for multi-output regression."""
    cols = [c.strip() for c in kw["metadata_column"].split(",") if c.strip()]
    if not cols:
        raise AAMError("--metadata-column is empty; name the column to predict")
    if len(set(cols)) < len(cols):
        raise AAMError(f"--metadata-column names a column twice: {kw['metadata_column']!r}")
    if len(cols) > 1 and kw["classifier"]:
        raise AAMError(f"--classifier takes one --metadata-column, got {len(cols)} ({', '.join(cols)}); "
                       "several columns are for regression")
    if len(cols) > 1 and kw["loss_type"] == "quantile":
        raise AAMError("--loss-type quantile takes one --metadata-column; use huber, mse, mae or asymmetric for "
                       f"several ({', '.join(cols)})")
    return cols


def _targets(kw: dict[str, Any], md, ids: list[str], cols: list[str]) -> tuple[list[str], np.ndarray]:
    """Samples with a target value, and the raw values (float [N], label strings, or float [N, T] for several
    columns, where a sample needs a value in at least one column and a missing one is NaN)."""
    if kw["classifier"]:
        values, mask = meta.categorical_values(md, cols[0], ids)
    else:
        per_col = [meta.numeric_target(md, c, ids, kw["metadata"]) for c in cols]
        values = np.stack([np.where(m, v, np.nan) for v, m in per_col], axis=1) if len(cols) > 1 else per_col[0][0]
        mask = np.logical_or.reduce([m for _, m in per_col])
        for c, (_, m) in zip(cols, per_col, strict=True):
            if len(cols) > 1 and not (m | ~mask).all():
                log.info("%d sample(s) have no value in column %r: their other columns still train", int((~m & mask).sum()), c)
    if not mask.all():
        missing = [s for s, m in zip(ids, mask, strict=True) if not m]
        what = f"column {cols[0]!r}" if len(cols) == 1 else f"any of the columns {', '.join(cols)}"
        log.warning("%d sample(s) have no value in %s and are left out (e.g. %s)", len(missing), what,
                    ", ".join(missing[:10]))
    keep = [s for s, m in zip(ids, mask, strict=True) if m]
    if not keep:
        raise InputError(f"column(s) {', '.join(map(repr, cols))} of {kw['metadata']} have no value for any table "
                         "sample")
    return keep, values[mask]


def run_train(kw: dict[str, Any]) -> dict[str, Any]:
    resume = _load_resume(kw, "train")
    _distance_source_from_resume(kw, resume)
    use_dm = _check_distance_source(kw, required=False) and kw["penalty"] > 0
    out, device, world = _setup(kw)
    _check_batch_size(kw, pairwise=use_dm)
    pretrained = ckpt.load_checkpoint(kw["pretrained_encoder"], "pretrain") if kw["pretrained_encoder"] and not resume \
        else None
    if resume:
        pre = Preprocessing.from_dict(resume["preprocessing"])
    else:
        pre = _preprocessing(kw, "classification" if kw["classifier"] else "regression")
        if pretrained:  # the encoder's position tables fix these
            enc_pre = pretrained["preprocessing"]
            for key in ("max_bp", "token_limit"):
                if getattr(pre, key) != enc_pre[key]:
                    log.info("using %s=%s of the pretrained encoder (not %s)", key, enc_pre[key], getattr(pre, key))
                    setattr(pre, key, enc_pre[key])
    md = meta.load_metadata(kw["metadata"])
    cols = target_columns(kw)
    col = ",".join(cols)
    if resume and pre.target_column and pre.target_column != col:
        raise AAMError(f"--resume {kw['resume']}: that run predicts --metadata-column {pre.target_column}, not {col}; "
                       "resume with the same columns (or start a new run)")
    meta.require_columns(md, cols, kw["metadata"])
    cat_cols = [c.strip() for c in (kw["categorical_columns"] or "").split(",") if c.strip()]
    prepared = prepare_table(kw["table"], kw["sequences"], pre.rarefy_depth, pre.rarefy_seed, pre.max_bp)
    pre.rarefy_depth = prepared.depth
    table_ids = [str(s) for s in prepared.table.ids(axis="sample")]
    meta.require_samples(md, table_ids, kw["metadata"])  # before any split
    ids, raw = _targets(kw, md, table_ids, cols)
    if kw.get("holdout_samples"):  # `aam cv`: the test fold never enters training or validation
        held = set(kw["holdout_samples"])
        keep = np.array([s not in held for s in ids], dtype=bool)
        ids, raw = [s for s, k in zip(ids, keep, strict=True) if k], raw[keep]
    groups = None
    if kw["group_column"]:
        meta.require_columns(md, [kw["group_column"]], kw["metadata"])
        groups = md[kw["group_column"]].reindex(ids).tolist()
    stratify = list(raw) if kw["classifier"] else None
    train_ids, val_ids = split_samples(ids, kw["test_size"], pre.seed, groups=groups, stratify=stratify)
    pos = {s: i for i, s in enumerate(ids)}
    raw_train = raw[[pos[s] for s in train_ids]]

    class_labels = None
    denorm = None
    if kw["classifier"]:
        enc = tgt.LabelEncoder.from_dict(pre.label_encoder) if pre.label_encoder else \
            tgt.LabelEncoder(column=col).fit(raw_train)
        pre.label_encoder, class_labels = enc.to_dict(), enc.classes
        known = set(enc.classes)
        unseen = [s for s in val_ids if str(raw[pos[s]]) not in known]
        if unseen:
            log.warning("%d validation sample(s) have classes absent from training and are left out (e.g. %s)",
                        len(unseen), ", ".join(unseen[:10]))
            val_ids = [s for s in val_ids if s not in set(unseen)]
        y_of = dict(zip(train_ids + val_ids, enc.transform([raw[pos[s]] for s in train_ids + val_ids]), strict=True))
    else:
        if pre.target_transform:
            transform = tgt.transform_from_dict(pre.target_transform)
        elif len(cols) > 1:
            transform = tgt.ColumnTransforms.fit(kw["target_transform"], raw_train, cols)
        else:
            transform = tgt.TargetTransform(kw["target_transform"]).fit(raw_train.astype(np.float64), col)
        pre.target_transform = transform.to_dict()
        y_of = dict(zip(ids, transform.transform(raw.astype(np.float64)), strict=True))
        denorm = transform.inverse_transform
    pre.target_column = col
    cat_codes = None
    if cat_cols or pre.category_encoder:
        cenc = tgt.CategoryEncoder.from_dict(pre.category_encoder) if pre.category_encoder else \
            tgt.CategoryEncoder().fit(md.loc[train_ids], cat_cols)
        pre.category_encoder = cenc.to_dict()
        cat_codes = dict(zip(ids, cenc.transform(md, ids), strict=True))
    _write_split(out, train_ids, val_ids)

    def dataset(sample_ids: list[str]):
        y = np.asarray([y_of[s] for s in sample_ids])
        c = np.stack([cat_codes[s] for s in sample_ids]) if cat_codes is not None else None
        return make_dataset(prepared, sample_ids, pre, y, c)

    train_set, val_set = dataset(train_ids), dataset(val_ids)
    report_token_limit(train_set, pre.token_limit)
    if resume:
        mcfg = ModelConfig.from_dict(resume["model_config"])
        mcfg.kernels = kw["kernels"]
    else:
        base = ModelConfig.from_dict(pretrained["model_config"]) if pretrained else \
            _encoder_config(kw, pre, _dropout(kw, 0.1))
        heads, layers = base.encoder_heads, kw["attention_layers"]
        mcfg = dataclasses.replace(
            base, kind="predictor", kernels=kw["kernels"], dropout=_dropout(kw, 0.1),
            gradient_checkpointing=kw["gradient_checkpointing"],
            out_dim=len(cols), n_classes=len(class_labels) if class_labels else 0,
            quantiles=LossConfig(loss_type=kw["loss_type"], quantiles=_floats(kw["quantiles"])).quantiles
            if kw["loss_type"] == "quantile" and not kw["classifier"] else [],
            count_prediction=kw["count_prediction"], count_target=kw["count_target"], count_heads=heads,
            count_layers=1, target_heads=heads, target_layers=layers, target_input=kw["target_input"],
            asv_readout=kw.get("asv_readout", "none"),
            categorical_cardinalities=tgt.CategoryEncoder.from_dict(pre.category_encoder).cardinalities
            if pre.category_encoder else [],
            categorical_embed_dim=kw["categorical_embed_dim"], categorical_fusion=kw["categorical_fusion"])
    model = build_model(mcfg)
    if pretrained:
        model.base_model.load_state_dict(ckpt.strip_prefixes(pretrained["model_state"]))
        log.info("loaded pretrained encoder %s", kw["pretrained_encoder"])
    frozen = kw["freeze_base"] and (pretrained is not None or resume is not None)
    if kw["freeze_base"] and not frozen:
        raise AAMError("--freeze-base needs --pretrained-encoder (there is nothing pretrained to freeze)")
    if frozen:
        model.freeze_base()
    log.info("SequencePredictor: %d parameters (%d trainable); %d train / %d val samples", count_parameters(model),
             count_parameters(model, trainable_only=True), len(train_ids), len(val_ids))
    dm = _load_distances(kw, ids, prepared, pre) if use_dm else None
    class_weights = _floats(kw["class_weights"]) or None
    if class_weights and (not class_labels or len(class_weights) != len(class_labels)):
        raise AAMError(f"--class-weights needs one weight per class ({len(class_labels or [])} classes)")
    loss = MultiTaskLoss(LossConfig(
        unifrac_weight=kw["penalty"] if dm is not None and not frozen else 0.0,
        unifrac_transform=kw["unifrac_transform"], unifrac_scale=kw["unifrac_scale"],
        nuc_weight=0.0 if frozen else kw["nuc_penalty"], count_weight=kw["count_penalty"],
        count_target=kw["count_target"], target_weight=kw["target_penalty"], loss_type=kw["loss_type"],
        quantiles=mcfg.quantiles, over_penalty=kw["over_penalty"], under_penalty=kw["under_penalty"],
        class_weights=class_weights, classifier=bool(class_labels), kernels=kw["kernels"]),
        pairwise_fn=_pairwise_hook(world, dm))
    best = kw["best_metric"]
    if best in ("accuracy", "f1") and not kw["classifier"] or best in ("r2", "mae") and kw["classifier"]:
        raise AAMError(f"--best-metric {best} does not apply to {'classification' if kw['classifier'] else 'regression'}")
    if best == "mae" and len(cols) > 1:
        raise AAMError(f"--best-metric mae mixes the units of {', '.join(cols)}; use r2 (their mean R2) or val_loss")
    info = {"kind": "train", "model_config": mcfg.to_dict(), "preprocessing": pre.to_dict()}
    trainer = Trainer(model, loss, train_set, val_set, functools.partial(collate, distances=dm),
                      _train_config(kw, best, resume), device, out, info,
                      task="classification" if class_labels else "regression", denormalize=denorm,
                      class_labels=class_labels, target_names=cols if len(cols) > 1 else None)
    if kw["resume"]:
        trainer.resume(kw["resume"])
    history = trainer.fit()
    trainer.close()
    finish_distributed()
    keys = ["val_loss", "val_accuracy", "val_f1"] if class_labels else ["val_loss", "val_mae", "val_rmse", "val_r2"]
    return _report(trainer, history, keys)


def _floats(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise AAMError(f"expected a comma-separated list of numbers, got {text!r}") from exc
