"""Validation metrics on host arrays (computed once per validation pass)."""

from __future__ import annotations

import numpy as np


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R2 (R2 = 1 - SSE/SST; NaN, undefined, when the targets are constant)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.size == 0:
        return {}
    err = y_pred - y_true
    sst = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / sst if sst > 0 else float("nan")
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())), "r2": r2}


def multi_regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per column `<name>_mae`, `<name>_rmse`, `<name>_r2` of [N, T] arrays (over the rows where that column's
    truth is not NaN), and `r2`: the mean of the R2s."""
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        ok = np.isfinite(y_true[:, j])
        out.update({f"{name}_{k}": v for k, v in regression_metrics(y_true[ok, j], y_pred[ok, j]).items()})
    r2 = [out[f"{n}_r2"] for n in names if f"{n}_r2" in out and not np.isnan(out[f"{n}_r2"])]
    if r2:
        out["r2"] = float(np.mean(r2))
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 (classes absent from both truth and prediction are left out of the mean)."""
    if len(y_true) == 0:
        return {}
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    denom = support + predicted
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return {"accuracy": float(tp.sum() / cm.sum()), "f1": float(f1[present].mean()) if present.any() else 0.0}


HIGHER_IS_BETTER = {"r2": True, "accuracy": True, "f1": True, "val_loss": False, "mae": False, "rmse": False,
                    "unifrac_r2": True, "nuc_accuracy": True}


def is_improvement(metric: str, value: float, best: float | None) -> bool:
    if best is None or not np.isfinite(best):
        return bool(np.isfinite(value))
    return value > best if HIGHER_IS_BETTER.get(metric, False) else value < best

