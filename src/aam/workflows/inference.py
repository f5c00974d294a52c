"""`aam predict` and `aam embed`: run a saved model over a table, preprocessed as in training."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.data import biom_io
from aam.data import metadata as meta
from aam.data import targets as tgt
from aam.data.dataset import collate
from aam.data.prepare import PreparedTable, Preprocessing, make_dataset, prepare_table
from aam.errors import AAMError, InputError
from aam.models import ModelConfig, build_model
from aam.models.encoders import encode_token_table
from aam.models.ensemble import EnsemblePredictor
from aam.training import checkpoint as ckpt
from aam.training import plots
from aam.training.losses import embedding_distances, point_prediction
from aam.training.metrics import classification_metrics, confusion_matrix, regression_metrics
from aam.utils.io import atomic_path, write_json, write_tsv
from aam.utils.runtime import resolve_device, setup_logging
from aam.workflows.requests import EmbedRequest, InferenceOptions, PredictRequest, SavedModelInput

log = logging.getLogger("aam")


# ---------------------------------------------------------------------------------------------- shared
def load_model(source: SavedModelInput, run: InferenceOptions, kind: str | None
               ) -> tuple[dict[str, Any], ModelConfig, Preprocessing, torch.nn.Module, torch.device]:
    """Checkpoint --model -> (checkpoint dict, config, preprocessing, model in eval mode on --device)."""
    setup_logging(None)
    data = ckpt.load_checkpoint(source.model, kind)
    if "members" in data and not data["members"]:
        raise InputError(f"{source.model}: no member of this ensemble has finished training; resume the run "
                         "(aam train ... --resume <run>/checkpoints/last.pt) or use a finished run's best.pt")
    mcfg = dataclasses.replace(ModelConfig.from_dict(data["model_config"]), kernels=run.kernels)
    pre = Preprocessing.from_dict(data["preprocessing"])
    device = resolve_device(run.device)
    model = EnsemblePredictor([_member(mcfg, state) for state in data["members"]]) if "members" in data else \
        _member(mcfg, data["model_state"])
    model.to(device).eval()
    return data, mcfg, pre, model, device


def _member(mcfg: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(mcfg)
    model.load_state_dict(ckpt.strip_prefixes(state))
    return model


def prepare(source: SavedModelInput, mcfg: ModelConfig, pre: Preprocessing,
            table: Any = None) -> PreparedTable:
    """--table preprocessed as in training (rarefied to the training depth unless --no-rarefy)."""
    depth = pre.rarefy_depth if source.rarefy else 0
    if not source.rarefy and pre.rarefy_depth and mcfg.count_embedding != "none":
        log.warning("--no-rarefy with a model that embeds read counts: it was trained on counts rarefied to %d",
                    pre.rarefy_depth)
    return prepare_table(source.table, source.sequences, depth, pre.rarefy_seed, pre.max_bp, drop_unknown=True,
                         table=table)


def _batches(run: InferenceOptions, prepared: PreparedTable, pre: Preprocessing, ids: list[str],
             categorical: np.ndarray | None, desc: str) -> Iterator[dict[str, Any]]:
    """Batches of `ids` in table order, with a progress bar (AAM_NO_PROGRESS hides it)."""
    from tqdm.auto import tqdm

    dataset = make_dataset(prepared, ids, pre, None, categorical)
    loader = torch.utils.data.DataLoader(dataset, batch_size=run.batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=run.num_workers)
    yield from tqdm(loader, desc=desc, unit="batch", leave=False,
                    disable=os.environ.get("AAM_NO_PROGRESS") is not None)


def asv_embeddings(model: torch.nn.Module, prepared: PreparedTable, device: torch.device) -> torch.Tensor | None:
    """The ASV encoder's embedding of every feature of the prepared table, computed once (each ASV is then
    encoded once per command, not once per batch it appears in); None for an ensemble whose members have
    different ASV encoders."""
    encoder = model.asv_encoder
    return None if encoder is None else encode_token_table(encoder, prepared.tokens, device)


def model_inputs(batch: dict[str, Any], device: torch.device,
                 cache: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """The model's keyword arguments for a batch; `cache` holds the ASV embeddings of the batch's table."""
    optional = {k: batch[k].to(device) if k in batch else None for k in ("categorical", "asv_ids")}
    return {"tokens": batch["tokens"].to(device), "asv_index": batch["asv_index"].to(device),
            "offsets": batch["offsets"].to(device), "counts": batch["counts"].to(device), **optional,
            "asv_embeddings": cache[batch["asv_rows"].to(device)] if cache is not None else None}


def report_skipped(prepared: PreparedTable, output: Path, what: str) -> None:
    if not prepared.dropped:
        return
    skipped = output.with_name(output.stem + ".skipped.tsv")
    write_tsv(skipped, ["sample_id", "reason"], [list(r) for r in sorted(prepared.dropped.items())])
    log.warning("%d sample(s) were not %s (listed with reasons in %s): %s", len(prepared.dropped), what, skipped,
                ", ".join(sorted(prepared.dropped)[:20]))


def categorical_codes(source: SavedModelInput, pre: Preprocessing, ids: list[str]) -> tuple[Any, np.ndarray | None]:
    """(--metadata or None, the model's categorical codes of `ids` or None when it uses no categorical column)."""
    md = meta.load_metadata(source.metadata) if source.metadata else None
    return md, category_codes(md, pre, ids, source.metadata)


def category_codes(md: Any, pre: Preprocessing, ids: list[str], path: str | None) -> np.ndarray | None:
    """The model's categorical codes of `ids` from loaded metadata `md` (read from `path`), or None when the
    model uses no categorical column."""
    if not pre.category_encoder:
        return None
    cenc = tgt.CategoryEncoder.from_dict(pre.category_encoder)
    if md is None:
        raise AAMError(f"this model uses categorical columns {', '.join(cenc.columns)}; pass --metadata with them")
    meta.require_columns(md, cenc.columns, path)
    absent = [s for s in ids if s not in md.index]
    if absent:
        log.warning("%d sample(s) are not in %s; their categories are treated as unknown (e.g. %s)",
                    len(absent), path, ", ".join(absent[:10]))
    return cenc.transform(md, ids)


def protect_inputs(source: SavedModelInput, outputs: dict[str, Path], **other_inputs: str | None) -> None:
    """InputError when a file the command writes is one of its inputs (checked before anything is written)."""
    inputs = {"--model": source.model, "--table": source.table, "--sequences": source.sequences,
              "--metadata": source.metadata, **{f"--{k.replace('_', '-')}": v for k, v in other_inputs.items()}}
    given = {Path(p).resolve(): name for name, p in inputs.items() if p}
    for what, path in outputs.items():
        if path.resolve() in given:
            raise InputError(f"{what} {path} is the {given[path.resolve()]} file: the command would overwrite its own "
                             "input; name a new output file")


def derived_outputs(output: Path, option: str, *suffixes: str) -> dict[str, Path]:
    """The output file and the files written next to it (<stem><suffix>)."""
    return {option: output, **{f"{option}'s {s} file": output.with_name(output.stem + s) for s in suffixes}}


def _nothing_left(prepared: PreparedTable, table: str, what: str) -> InputError:
    reasons = "; ".join(f"{sid}: {why}" for sid, why in sorted(prepared.dropped.items())[:3])
    return InputError(f"{table}: no sample left to {what} ({len(prepared.dropped)} dropped{': ' if reasons else ''}"
                      f"{reasons}); nothing was written")


# ---------------------------------------------------------------------------------------------- predict
def run_predict(req: PredictRequest) -> dict[str, Any]:
    if req.report and not req.metadata_column:
        raise InputError("--report compares predictions with the truth: give --metadata-column (and --metadata)")
    protect_inputs(req.source, derived_outputs(Path(req.output), "--output", ".png", ".metrics.json",
                                               ".skipped.tsv"))
    _, mcfg, pre, model, device = load_model(req.source, req.run, "train")
    output = Path(req.output)
    rows: list[list[str]] = []  # kept only to score them (--metadata-column); chunks stream to the file
    n_written = 0
    skipped: dict[str, str] = {}
    stats: dict[str, tuple[int, int]] = {}  # sample -> (ASVs, reads), for --report
    prepared = None
    md = meta.load_metadata(req.source.metadata) if req.source.metadata else None  # once, not per chunk
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        for table in _chunks(req):
            prepared = prepare(req.source, mcfg, pre, table)
            skipped.update(prepared.dropped)
            if req.report:
                stats.update(_sample_stats(prepared))
            ids = [str(s) for s in prepared.table.ids(axis="sample")]
            if not ids and table is None:
                raise _nothing_left(prepared, req.source.table, "predict")
            if ids:
                cat = category_codes(md, pre, ids, req.source.metadata)
                header, labels, chunk_rows = _predict_rows(model, prepared, pre, mcfg, ids, cat, req.run, device)
                if not n_written:
                    writer.writerow(header)
                writer.writerows(chunk_rows)
                n_written += len(chunk_rows)
                if req.metadata_column:
                    rows.extend(chunk_rows)
        if not n_written:
            raise _nothing_left(prepared, req.source.table, "predict")
    prepared = dataclasses.replace(prepared, dropped=skipped)
    report_skipped(prepared, output, "predicted")
    log.info("wrote %d predictions to %s", n_written, output)
    result = {"n_predicted": n_written, "skipped": skipped, "output": str(output)}
    if req.metadata_column and rows:
        result["evaluation"] = _evaluate_predictions(req, md, rows, labels, output, header, stats)
    return result


def _sample_stats(prepared: PreparedTable) -> dict[str, tuple[int, int]]:
    """Each sample's number of ASVs and reads, as predicted (after rarefaction)."""
    counts = prepared.table.matrix_data
    return dict(zip(map(str, prepared.table.ids(axis="sample")),
                    zip(np.asarray((counts > 0).sum(axis=0)).ravel().tolist(),
                        np.asarray(counts.sum(axis=0)).ravel().tolist(), strict=True), strict=True))


def _chunks(req: PredictRequest) -> Iterator[Any]:
    """The table to predict: None (read whole by `prepare`), or with --chunk-size its samples in chunks read
    from the HDF5 file one at a time."""
    if req.chunk_size is None:
        yield None
        return
    n = biom_io.hdf5_sample_count(req.source.table)
    if n is None:
        raise InputError(f"--chunk-size reads an HDF5 BIOM table in chunks; {req.source.table} is not one "
                         "(convert it with `biom convert --to-hdf5`, or drop --chunk-size)")
    feature_ids = biom_io.hdf5_feature_ids(req.source.table)  # once for every chunk
    for lo in range(0, n, req.chunk_size):
        log.info("samples %d-%d of %d", lo + 1, min(lo + req.chunk_size, n), n)
        yield biom_io.read_hdf5_samples(req.source.table, lo, min(lo + req.chunk_size, n), feature_ids)


def _predict_rows(model: torch.nn.Module, prepared: PreparedTable, pre: Preprocessing, mcfg: ModelConfig,
                  ids: list[str], cat: np.ndarray | None, run: InferenceOptions, device: torch.device
                  ) -> tuple[list[str], list[str] | None, list[list[str]]]:
    """(TSV header, class labels or None, one row per sample of `ids`) of the model's predictions."""
    preds, out_ids = [], []
    with torch.no_grad():
        cache = asv_embeddings(model, prepared, device)
        for batch in _batches(run, prepared, pre, ids, cat, "predict"):
            preds.append(model(**model_inputs(batch, device, cache))["target"].float().cpu())
            out_ids.extend(batch["sample_ids"])
    pred = torch.cat(preds)
    if mcfg.is_classifier:
        labels = tgt.LabelEncoder.from_dict(pre.label_encoder).classes
        probs = torch.softmax(pred, dim=1).numpy()
        rows = [[sid, labels[int(p.argmax())], *[f"{x:.6g}" for x in p]] for sid, p in zip(out_ids, probs,
                                                                                          strict=True)]
        return ["sample_id", "prediction", *[f"prob_{lab}" for lab in labels]], labels, rows
    transform = tgt.transform_from_dict(pre.target_transform)
    values = transform.inverse_transform(point_prediction(pred, mcfg.quantiles).double().numpy())
    if isinstance(transform, tgt.ColumnTransforms):  # multi-output: prediction_<column> per target
        return (["sample_id", *[f"prediction_{c}" for c in transform.columns]], None,
                [[sid, *[f"{x:.6g}" for x in v]] for sid, v in zip(out_ids, values, strict=True)])
    return ["sample_id", "prediction"], None, [[sid, f"{v:.6g}"] for sid, v in zip(out_ids, values, strict=True)]


def _require_some(mask: np.ndarray, column: str, path: str) -> None:
    if not mask.any():
        raise InputError(f"column {column!r} of {path} has no usable value for any predicted sample; check the "
                         "column name and that its sample IDs match the table's")


def _evaluate_predictions(req: PredictRequest, md: Any, rows: list[list[str]], labels: list[str] | None,
                          output: Path, header: list[str], stats: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Compare predictions with --metadata-column: metrics JSON and a plot beside the predictions TSV.

    Samples without a value in the column are left out (and counted); for a classifier, so are samples
    whose label the model never saw in training (named in the log). A multi-output model is scored on the
    one target column named."""
    col = req.metadata_column.strip()
    metadata = req.source.metadata
    ids = [r[0] for r in rows]
    if labels is None:
        where = 1
        if header[1] != "prediction":  # multi-output
            trained = [h[len("prediction_"):] for h in header[1:]]
            if col not in trained:
                raise InputError(f"--metadata-column {col!r}: this model predicts {', '.join(trained)}; name one "
                                 "of them to score it")
            where = 1 + trained.index(col)
        truth, mask = meta.numeric_target(md, col, ids, metadata)
        _require_some(mask, col, metadata)
        pred = np.array([float(r[where]) for r in rows])
        metrics = regression_metrics(truth[mask], pred[mask])
        scored = (truth[mask], pred[mask], None)
        plot = plots.predicted_vs_true(truth[mask], pred[mask], output.with_name(output.stem + ".png"),
                                       f"{col}: R2 {metrics.get('r2', float('nan')):.3f}", f"{col} (metadata)",
                                       f"{col} (predicted)")
    else:
        truth, mask = meta.categorical_values(md, col, ids)
        index = {lab: k for k, lab in enumerate(labels)}
        unseen = sorted({str(t) for t, m in zip(truth, mask, strict=True) if m and str(t) not in index})
        if unseen:
            log.warning("labels of column %r that the model never saw in training are left out of the "
                        "metrics: %s", col, ", ".join(unseen[:20]))
        mask = mask & np.array([str(t) in index for t in truth])
        _require_some(mask, col, metadata)
        y_true = np.array([index[str(t)] for t, m in zip(truth, mask, strict=True) if m], dtype=np.int64)
        y_pred = np.array([index[r[1]] for r, m in zip(rows, mask, strict=True) if m], dtype=np.int64)
        metrics = classification_metrics(y_true, y_pred, len(labels))
        probs = np.array([[float(x) for x in r[2:]] for r, m in zip(rows, mask, strict=True) if m])
        scored = (y_true, y_pred, probs)
        plot = plots.confusion_matrix_plot(confusion_matrix(y_true, y_pred, len(labels)), labels,
                                           output.with_name(output.stem + ".png"),
                                           f"{col}: accuracy {metrics.get('accuracy', float('nan')):.3f}")
    evaluation = {"column": col, "n_evaluated": int(mask.sum()), "n_without_value": int((~mask).sum()),
                  "metrics": metrics, "plot": str(plot)}
    if req.report:
        evaluation["report"] = _error_report(req, md, [i for i, m in zip(ids, mask, strict=True) if m], scored,
                                             labels, stats, output)
    write_json(output.with_name(output.stem + ".metrics.json"), evaluation)
    log.info("%s on %d samples: %s (plot %s)", col, evaluation["n_evaluated"],
             ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), plot)
    return evaluation


# ---------------------------------------------------------------------------------------------- embed
def _error_report(req: PredictRequest, md: Any, ids: list[str], scored: tuple, labels: list[str] | None,
                  stats: dict[str, tuple[int, int]], output: Path) -> dict[str, Any]:
    """The error report of the scored samples (aam.workflows.error_report), with each one's ASVs and reads
    (`stats`, as predicted: after rarefaction)."""
    from aam.workflows.error_report import Scored, write_report

    truth, prediction, probs = scored
    data = Scored(ids, truth, prediction, np.array([stats[s][0] for s in ids]), np.array([stats[s][1] for s in ids]),
                  probs, labels)
    return write_report(data, md, req.metadata_column.strip(), req.group_by,
                        output.with_name(output.stem + ".report"))


def run_embed(req: EmbedRequest) -> dict[str, Any]:
    """Sample embeddings of the (pretrained) encoder for every sample of --table; optionally the distances the
    pretrained model predicts between them (its estimate of the UniFrac distances it was trained on) and a
    PCA plot coloured by a metadata column."""
    outputs = derived_outputs(Path(req.output), "--output", ".png", ".skipped.tsv")
    if req.distance_matrix:
        outputs["--distance-matrix"] = Path(req.distance_matrix)
    protect_inputs(req.source, outputs)
    data, mcfg, pre, model, device = load_model(req.source, req.run, None)
    if req.distance_matrix and data["kind"] != "pretrain":
        raise InputError(f"--distance-matrix needs a checkpoint of `aam pretrain`; {req.source.model} was written by "
                         "`aam train`, whose encoder is no longer trained to match UniFrac distances. Drop "
                         "--distance-matrix or give the pretraining run's checkpoints/best.pt")
    md = None
    if req.metadata_column:
        md = meta.load_metadata(req.source.metadata)
        meta.require_columns(md, [req.metadata_column], req.source.metadata)
    encoder = model if data["kind"] == "pretrain" else model.base_model
    if "members" in data:
        log.info("%s is an ensemble of %d models: embedding with the first member's encoder", req.source.model,
                 len(data["members"]))
    prepared = prepare(req.source, mcfg, pre)
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    if not ids:
        raise _nothing_left(prepared, req.source.table, "embed")
    if len(ids) < 2 and req.distance_matrix:
        raise InputError(f"{req.source.table}: {len(ids)} sample(s) left after preprocessing; distances need two or more")
    embs, out_ids = [], []
    with torch.no_grad():
        cache = asv_embeddings(encoder, prepared, device)
        for batch in _batches(req.run, prepared, pre, ids, None, "embed"):
            embs.append(encoder(**model_inputs(batch, device, cache))["embeddings"].float().cpu())
            out_ids.extend(batch["sample_ids"])
    emb = torch.cat(embs) if embs else torch.zeros(0, mcfg.embedding_dim)
    output = Path(req.output)
    write_tsv(output, ["sample_id", *[f"e{k}" for k in range(emb.shape[1])]],
               [[sid, *[f"{x:.6g}" for x in row]] for sid, row in zip(out_ids, emb.tolist(), strict=True)])
    report_skipped(prepared, output, "embedded")
    log.info("wrote %d x %d sample embeddings to %s", emb.shape[0], emb.shape[1], output)
    result: dict[str, Any] = {"n_embedded": len(out_ids), "dim": int(emb.shape[1]), "output": str(output),
                              "skipped": dict(prepared.dropped)}
    if req.distance_matrix:
        result["distance_matrix"] = str(_write_predicted_distances(data, encoder, emb, out_ids,
                                                                   Path(req.distance_matrix)))
    if md is not None and len(out_ids) >= 3:
        result["plot"] = str(_embedding_plot(emb.numpy(), out_ids, md, req, output))
    return result


def predicted_distances(emb: torch.Tensor, transform: str, scale: float, offset: float) -> np.ndarray:
    """The pretrained model's distance prediction f(||e_i - e_j||) + offset, clipped at 0, zero diagonal."""
    d = embedding_distances(emb.double(), transform, scale) + offset
    d = d.clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return ((d + d.T) / 2).numpy()


def _write_predicted_distances(data: dict[str, Any], encoder: torch.nn.Module, emb: torch.Tensor, ids: list[str],
                               path: Path) -> Path:
    unifrac = data.get("unifrac")
    if unifrac is None:
        log.warning("the checkpoint predates the record of its UniFrac transform; assuming the default (identity)")
        unifrac = {"transform": "identity", "scale": 10.0}
    d = predicted_distances(emb, unifrac["transform"], float(unifrac["scale"]), float(encoder.distance_offset))
    write_tsv(path, ["", *ids], [[sid, *[f"{x:.6g}" for x in row]] for sid, row in zip(ids, d, strict=True)])
    log.info("wrote the predicted distances between %d samples to %s (scikit-bio TSV)", len(ids), path)
    return path


def _embedding_plot(emb: np.ndarray, ids: list[str], md: Any, req: EmbedRequest, output: Path) -> Path:
    """PCA of the embeddings (first two axes) coloured by --metadata-column; numeric columns get a colour bar."""
    col = req.metadata_column.strip()
    x = emb.astype(np.float64) - emb.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    axes = x @ vt[:2].T
    explained = s[:2] ** 2 / max(float((s**2).sum()), 1e-300)
    values, mask, numeric = meta.column_values(md, col, ids, req.source.metadata)
    if not mask.any():
        raise InputError(f"column {col!r} of {req.source.metadata} has no value for any embedded sample; check the column "
                         "name and that its sample IDs match the table's")
    return plots.embedding_scatter(axes, values, mask, numeric, output.with_name(output.stem + ".png"),
                                   f"sample embeddings coloured by {col}", col, explained)
