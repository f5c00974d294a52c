"""Error analysis of predictions against the truth (`aam predict ... --metadata-column C --report`).

Writes into `<output stem>.report/`:
- regression: `residuals_by_<column>.tsv` / `.png` for each grouping column (n, mean residual = bias, MAE, RMSE
  per group; residuals as boxes), `worst_samples.tsv` (largest absolute errors, with the sample's number of
  ASVs and read depth) and `residuals_vs_depth.png`;
- classification: `per_class.tsv` (precision, recall, F1, support), `calibration.tsv` / `.png` (reliability of
  the predicted probability of the chosen class, 10 bins), `worst_samples.tsv` (lowest probability given to
  the true class), and `accuracy_by_<column>.tsv` / `.png` per grouping column.
Grouping columns: `--group-by` (repeatable), else every categorical metadata column with 2-30 levels among
the scored samples, other than the scored column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aam.data import metadata as meta
from aam.training import plots
from aam.utils.io import write_tsv

log = logging.getLogger(__name__)
MAX_LEVELS = 30
WORST = 20


@dataclass(frozen=True)
class Scored:
    """The samples a report covers: IDs, truth and prediction (class indices for a classifier, with `probs`
    [n, classes] and `labels`), and each sample's number of ASVs and read depth."""

    sample_ids: list[str]
    truth: np.ndarray
    prediction: np.ndarray
    n_asvs: np.ndarray
    depth: np.ndarray
    probs: np.ndarray | None = None
    labels: list[str] | None = None


def grouping_columns(md: pd.DataFrame, ids: list[str], scored_column: str, requested: tuple[str, ...]) -> list[str]:
    """`requested` (checked to exist), else the categorical columns with 2-30 levels among `ids`."""
    if requested:
        meta.require_columns(md, requested, md.attrs.get("path"))
        return list(requested)
    out = []
    for col in md.columns:
        values = md[col].reindex(ids)
        if col == scored_column or pd.api.types.is_numeric_dtype(md[col]):
            continue
        if 2 <= values.dropna().nunique() <= MAX_LEVELS:
            out.append(str(col))
    return out


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _group_table(md: pd.DataFrame, col: str, ids: list[str], values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"group": meta.group_labels(md, col, ids), "value": values})


def _regression(scored: Scored, md: pd.DataFrame, columns: list[str], out: Path, column: str) -> dict:
    resid = scored.prediction - scored.truth
    summary: dict = {"groups": {}}
    for col in columns:
        frame = _group_table(md, col, scored.sample_ids, resid)
        stats = frame.groupby("group")["value"].agg(
            n="size", mean_residual="mean", mae=lambda r: float(np.mean(np.abs(r))),
            rmse=lambda r: float(np.sqrt(np.mean(r**2)))).sort_values("mae", ascending=False)
        name = plots.file_safe(col)
        write_tsv(out / f"residuals_by_{name}.tsv", ["group", "n", "mean_residual", "mae", "rmse"],
                  [[g, int(r.n), _fmt(r.mean_residual), _fmt(r.mae), _fmt(r.rmse)] for g, r in stats.iterrows()])
        order = list(stats.index)
        plots.grouped_boxes([frame.loc[frame.group == g, "value"].to_numpy() for g in order], order,
                            out / f"residuals_by_{name}.png", f"{column}: residual (predicted - true) by {col}",
                            "residual")
        summary["groups"][col] = {g: {"n": int(r.n), "mae": float(r.mae), "mean_residual": float(r.mean_residual)}
                                  for g, r in stats.iterrows()}
    worst = np.argsort(-np.abs(resid), kind="stable")[:WORST]
    write_tsv(out / "worst_samples.tsv", ["sample_id", "true", "predicted", "abs_error", "n_asvs", "depth"],
              [[scored.sample_ids[i], _fmt(scored.truth[i]), _fmt(scored.prediction[i]), _fmt(abs(resid[i])),
                int(scored.n_asvs[i]), int(scored.depth[i])] for i in worst])
    plots.residuals_vs(scored.depth, resid, out / "residuals_vs_depth.png", f"{column}: residual vs read depth",
                       "reads in the sample (log scale)")
    summary["worst"] = [scored.sample_ids[i] for i in worst]
    return summary


def _classification(scored: Scored, md: pd.DataFrame, columns: list[str], out: Path, column: str) -> dict:
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_fscore_support

    labels, y, pred, probs = scored.labels, scored.truth.astype(int), scored.prediction.astype(int), scored.probs
    k = len(labels)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    write_tsv(out / "per_class.tsv", ["class", "precision", "recall", "f1", "support"],
              [[labels[c], _fmt(precision[c]), _fmt(recall[c]), _fmt(f1[c]), int(support[c])] for c in range(k)])
    confidence = probs[np.arange(len(y)), pred]
    correct = (pred == y).astype(float)
    frac, mean_conf = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    write_tsv(out / "calibration.tsv", ["mean_confidence", "fraction_correct"],
              [[_fmt(c), _fmt(f)] for c, f in zip(mean_conf, frac, strict=True)])
    bins = np.minimum((confidence * 10).astype(int), 9)  # expected calibration error over the same 10 bins
    ece = float(sum(abs(correct[bins == j].mean() - confidence[bins == j].mean()) * (bins == j).sum()
                    for j in range(10) if (bins == j).any()) / len(y))
    plots.calibration(mean_conf, frac, out / "calibration.png", f"{column}: calibration (ECE {ece:.3f})")
    summary: dict = {"per_class": {labels[c]: {"precision": float(precision[c]), "recall": float(recall[c]),
                                                "support": int(support[c])} for c in range(k)},
                     "expected_calibration_error": ece, "groups": {}}
    for col in columns:
        frame = _group_table(md, col, scored.sample_ids, correct)
        stats = frame.groupby("group")["value"].agg(n="size", accuracy="mean").sort_values("accuracy")
        name = plots.file_safe(col)
        write_tsv(out / f"accuracy_by_{name}.tsv", ["group", "n", "accuracy"],
                  [[g, int(r.n), _fmt(r.accuracy)] for g, r in stats.iterrows()])
        plots.grouped_bars(list(stats.index), stats.accuracy.to_numpy(), out / f"accuracy_by_{name}.png",
                           f"{column}: accuracy by {col}", "accuracy")
        summary["groups"][col] = {g: {"n": int(r.n), "accuracy": float(r.accuracy)} for g, r in stats.iterrows()}
    p_true = probs[np.arange(len(y)), y]
    worst = np.argsort(p_true, kind="stable")[:WORST]
    write_tsv(out / "worst_samples.tsv", ["sample_id", "true", "predicted", "prob_true", "n_asvs", "depth"],
              [[scored.sample_ids[i], labels[y[i]], labels[pred[i]], _fmt(p_true[i]), int(scored.n_asvs[i]),
                int(scored.depth[i])] for i in worst])
    summary["worst"] = [scored.sample_ids[i] for i in worst]
    return summary


def write_report(scored: Scored, md: pd.DataFrame, column: str, group_by: tuple[str, ...], out: Path) -> dict:
    """The report's files in `out`; returns a summary (also the caller's JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    columns = grouping_columns(md, scored.sample_ids, column, group_by)
    if scored.labels is None:
        summary = _regression(scored, md, columns, out, column)
    else:
        summary = _classification(scored, md, columns, out, column)
    log.info("error report in %s (grouped by %s)", out, ", ".join(columns) or "no column")
    return {"folder": str(out), "grouped_by": columns, **summary}
