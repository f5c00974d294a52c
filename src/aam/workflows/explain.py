"""The work behind `aam explain`: which ASVs drive a fine-tuned model's predictions, by occlusion.

For each sample the model predicts the sample as it is and the sample without each of its ASVs in turn
(the ASV and its reads removed, everything else unchanged); an ASV's attribution is prediction(sample) -
prediction(sample without it), in the target's units (regression) or as a probability of one class
(classification). Only the ASVs the model sees count (at most --token-limit per sample, chosen as in
training). Occlusion needs no baseline and no gradient, so it means the same for every head and fusion.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.data import targets as tgt
from aam.data.dataset import collate
from aam.data.prepare import make_dataset
from aam.data.split import read_ids
from aam.data.taxonomy import load_taxonomy, short_label
from aam.errors import InputError
from aam.training import plots
from aam.training.losses import point_prediction
from aam.utils.io import write_tsv
from aam.workflows.inference import (
    asv_embeddings,
    categorical_codes,
    derived_outputs,
    load_model,
    model_inputs,
    prepare,
    protect_inputs,
    report_skipped,
)
from aam.workflows.requests import ExplainRequest

log = logging.getLogger("aam")

TOP_PLOTTED = 20


def without(item: dict[str, Any], k: int) -> dict[str, Any]:
    """A dataset item with its k-th ASV (and that ASV's reads) removed."""
    out = dict(item)
    for key in ("features", "counts", "tokens", "lengths", "asv_ids"):
        if key in item:
            out[key] = np.delete(item[key], k, axis=0)
    return out


def occlusion(model: torch.nn.Module, item: dict[str, Any], device: torch.device, chunk: int,
              score: Any, cache: torch.Tensor | None = None) -> tuple[float, np.ndarray]:
    """(score of the whole sample, score of the sample without ASV k for every k), `chunk` variants per forward;
    `cache`: the ASV embeddings of the item's table (inference.asv_embeddings)."""
    variants = [item] + [without(item, k) for k in range(len(item["features"]))]
    scores = []
    with torch.no_grad():
        for lo in range(0, len(variants), chunk):
            out = model(**model_inputs(collate(variants[lo:lo + chunk]), device, cache))["target"]
            scores.append(score(out.float().cpu()))
    s = np.concatenate(scores)
    return float(s[0]), s[1:]


def run_explain(req: ExplainRequest) -> dict[str, Any]:
    from tqdm.auto import tqdm

    protect_inputs(req.source, derived_outputs(Path(req.output), "--output", ".summary.tsv", ".png", ".skipped.tsv"),
                   taxonomy=req.taxonomy, samples=req.samples)
    _, mcfg, pre, model, device = load_model(req.source, req.run, "train")
    prepared = prepare(req.source, mcfg, pre)
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    if req.samples:
        wanted = read_ids(req.samples)
        present = set(ids)
        missing = [s for s in wanted if s not in present and s not in prepared.dropped]
        if missing:
            raise InputError(f"{len(missing)} sample(s) of {req.samples} are not in {req.source.table}: "
                             f"{', '.join(missing[:10])}; list samples of that table")
        keep = set(wanted)
        ids = [s for s in ids if s in keep]
    if not ids:
        raise InputError(f"{req.source.table}: no sample left to explain after preprocessing (see the log)")
    _, cat = categorical_codes(req.source, pre, ids)
    taxonomy = load_taxonomy(req.taxonomy) if req.taxonomy else {}
    if mcfg.is_classifier:
        classes = tgt.LabelEncoder.from_dict(pre.label_encoder).classes
        label = req.target_class if req.target_class is not None else classes[-1]
        if label not in classes:
            raise InputError(f"--target-class {label!r} is not a class of this model ({', '.join(classes)})")
        column = classes.index(label)
        unit = f"probability of {label!r}"

        def score(out: torch.Tensor) -> np.ndarray:
            return torch.softmax(out, dim=1)[:, column].double().numpy()
    else:
        if req.target_class is not None:
            raise InputError("--target-class applies to classifiers; this model is a regressor")
        transform = tgt.transform_from_dict(pre.target_transform)
        unit, column = "prediction", None
        if isinstance(transform, tgt.ColumnTransforms):
            name = req.target_column or transform.columns[0]
            if name not in transform.columns:
                raise InputError(f"--target-column {name!r} is not a target of this model "
                                 f"({', '.join(transform.columns)})")
            unit, column = f"prediction of {name}", transform.columns.index(name)
        elif req.target_column is not None:
            raise InputError("--target-column applies to multi-output regressors; this model predicts one target")

        def score(out: torch.Tensor) -> np.ndarray:
            values = transform.inverse_transform(point_prediction(out, mcfg.quantiles).double().numpy())
            return np.asarray(values if column is None else values[:, column])
    log.info("explaining %d samples by occlusion: attribution = %s with the ASV - %s without it", len(ids), unit,
             unit)
    cache = asv_embeddings(model, prepared, device)
    dataset = make_dataset(prepared, ids, pre, None, cat)
    rows: list[list[str]] = []
    per_feature: dict[str, list[float]] = {}
    bar = tqdm(range(len(dataset)), desc="explain", unit="sample", leave=False,
               disable=os.environ.get("AAM_NO_PROGRESS") is not None)
    for i in bar:
        item = dataset[i]
        full, dropped = occlusion(model, item, device, req.run.batch_size, score, cache)
        for k, f in enumerate(item["features"]):
            fid = dataset.feature_ids[int(f)]
            attribution = full - float(dropped[k])
            per_feature.setdefault(fid, []).append(attribution)
            rows.append([item["sample_id"], fid, f"{item['counts'][k]:.6g}", f"{full:.6g}", f"{attribution:.6g}",
                         taxonomy.get(fid, "")])
    output = Path(req.output)
    write_tsv(output, ["sample_id", "feature_id", "count", "prediction", "attribution", "taxon"], rows)
    report_skipped(prepared, output, "explained")
    summary = summarize(per_feature, len(dataset), taxonomy)
    summary_path = output.with_name(output.stem + ".summary.tsv")
    write_tsv(summary_path, ["feature_id", "importance", "mean_attribution", "n_samples", "taxon"],
              [[f, f"{imp:.6g}", f"{mean:.6g}", str(n), tax] for f, imp, mean, n, tax in summary])
    top = summary[:TOP_PLOTTED]
    plot = plots.attribution_bars([short_label(f, tax) for f, _, _, _, tax in top],
                                  np.array([mean for _, _, mean, _, _ in top]), np.array([n for _, _, _, n, _ in top]),
                                  output.with_name(output.stem + ".png"), f"top {len(top)} ASVs by importance",
                                  f"mean attribution where present: {unit} with the ASV - without it")
    log.info("wrote %d attributions (%d ASVs) to %s; per-ASV summary %s; plot %s", len(rows), len(summary), output,
             summary_path, plot)
    return {"n_samples": len(dataset), "n_features": len(summary), "output": str(output),
            "summary": str(summary_path), "plot": str(plot), "unit": unit, "top": summary[:5],
            "skipped": dict(prepared.dropped)}


def summarize(per_feature: dict[str, list[float]], n_samples: int,
              taxonomy: dict[str, str]) -> list[tuple[str, float, float, int, str]]:
    """Per ASV: (id, importance = mean |attribution| over all explained samples (0 where absent), mean
    attribution where present, samples present, taxon), most important first."""
    out = [(f, float(np.abs(a).sum()) / max(n_samples, 1), float(np.mean(a)), len(a), taxonomy.get(f, ""))
           for f, a in per_feature.items()]
    return sorted(out, key=lambda r: (-r[1], r[0]))
