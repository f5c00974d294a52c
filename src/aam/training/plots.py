"""PNG plots (matplotlib, Agg backend): training curves, predicted vs true, confusion matrix, embeddings,
attributions, and the error report's residuals by group, residuals vs depth and calibration."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def file_safe(name: str) -> str:
    """A metadata column name as a file-name part (anything but letters, digits, '.', '-', '_' becomes '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _save(fig, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """One panel per loss/metric key seen in the per-epoch history (train_* and val_* overlaid)."""
    plt = _plt()
    keys = sorted({k.split("_", 1)[1] for row in history for k in row if k.startswith(("train_", "val_"))})
    n = max(1, len(keys))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes.flat, keys, strict=False):
        for split in ("train", "val"):
            ys = [row.get(f"{split}_{key}", np.nan) for row in history]
            if not all(np.isnan(ys)):
                ax.plot(epochs, ys, marker="o", ms=3, label=split)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return _save(fig, path)


def predicted_vs_true(y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str, xlabel: str = "true",
                      ylabel: str = "predicted") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y_true, y_pred, s=8, alpha=0.6)
    if len(y_true):
        lo = float(min(np.min(y_true), np.min(y_pred)))
        hi = float(max(np.max(y_true), np.max(y_pred)))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def cv_predictions(y_true: np.ndarray, preds: dict[str, np.ndarray], path: Path, title: str,
                   ylabel: str = "predicted (out of fold)") -> Path:
    """Predictions (out of fold, or on a validation split) against the truth, one panel per method, with each
    method's R2."""
    from aam.training.metrics import regression_metrics

    plt = _plt()
    fig, axes = plt.subplots(1, len(preds), figsize=(4.2 * len(preds), 4.2), squeeze=False, sharex=True, sharey=True)
    lo = float(min(np.min(y_true), *(np.nanmin(p) for p in preds.values())))
    hi = float(max(np.max(y_true), *(np.nanmax(p) for p in preds.values())))
    for ax, (name, p) in zip(axes.flat, preds.items(), strict=True):
        ok = np.isfinite(p)
        ax.scatter(y_true[ok], p[ok], s=8, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(f"{name}: R2 {regression_metrics(y_true[ok], p[ok]).get('r2', float('nan')):.3f}")
        ax.set_xlabel("true")
    axes.flat[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return _save(fig, path)


def _confusion_axes(ax, cm: np.ndarray, labels: list[str], title: str) -> None:
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)


def confusion_matrix_plot(cm: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1 + 0.6 * len(labels)))
    _confusion_axes(ax, cm, labels, title)
    return _save(fig, path)


def cv_confusion(y_true: np.ndarray, preds: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Out-of-fold confusion matrices, one panel per method, with each method's accuracy."""
    from aam.training.metrics import confusion_matrix

    labels = sorted({str(x) for x in y_true} | {str(x) for p in preds.values() for x in p})
    index = {lab: i for i, lab in enumerate(labels)}
    truth = np.array([index[str(x)] for x in y_true], dtype=np.int64)
    plt = _plt()
    side = max(3.0, 1.2 + 0.6 * len(labels))  # room for a method name like boosted_trees above a 2x2 matrix
    fig, axes = plt.subplots(1, len(preds), figsize=(side * len(preds), side + 0.8), squeeze=False)
    for ax, (name, p) in zip(axes.flat, preds.items(), strict=True):
        guess = np.array([index[str(x)] for x in p], dtype=np.int64)
        _confusion_axes(ax, confusion_matrix(truth, guess, len(labels)), labels,
                        f"{name}\naccuracy {float((guess == truth).mean()) if len(truth) else float('nan'):.3f}")
    fig.suptitle(title)
    return _save(fig, path)


def embedding_scatter(axes: np.ndarray, values: np.ndarray, mask: np.ndarray, numeric: bool, path: Path, title: str,
                      label: str, explained: np.ndarray) -> Path:
    """Samples on two ordination axes [n, 2], coloured by a metadata column (numeric: colour bar; otherwise one
    colour per category, the 10 most frequent named and the rest grouped as "other"); samples without a
    value are grey."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(axes[~mask, 0], axes[~mask, 1], s=8, c="lightgrey", label="no value" if (~mask).any() else None)
    if numeric:
        sc = ax.scatter(axes[mask, 0], axes[mask, 1], s=10, c=values[mask].astype(float), cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
    else:
        names = values[mask].astype(str)
        kinds, counts = np.unique(names, return_counts=True)
        shown = list(kinds[np.argsort(-counts, kind="stable")][:10])
        for name in shown:
            pick = np.flatnonzero(mask)[names == name]
            ax.scatter(axes[pick, 0], axes[pick, 1], s=10, label=name)
        rest = np.flatnonzero(mask)[~np.isin(names, shown)]
        if len(rest):
            ax.scatter(axes[rest, 0], axes[rest, 1], s=10, c="black", marker="x", label="other")
    if not numeric or (~mask).any():
        ax.legend(fontsize=7, loc="best", title=None if numeric else label)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}%)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}%)" if len(explained) > 1 else "PC2")
    ax.set_title(title)
    return _save(fig, path)


def attribution_bars(labels: list[str], mean_attribution: np.ndarray, n_samples: np.ndarray, path: Path, title: str,
                     xlabel: str) -> Path:
    """Horizontal bars, most important ASV on top: the mean attribution where the ASV is present (red raises
    the prediction, blue lowers it); each label ends with the number of samples the ASV is present in."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.3 * max(len(labels), 1)))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, mean_attribution, color=np.where(mean_attribution >= 0, "tab:red", "tab:blue"))
    ax.set_yticks(y, [f"{lab} (n={n})" for lab, n in zip(labels, n_samples, strict=True)], fontsize=7)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)


def tuning_history(trials: list[int], values: list[float], path: Path, objective: str) -> Path:
    """Each finished trial's cross-validated objective and the best so far (lower is better)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    order = np.argsort(trials)
    x, y = np.asarray(trials)[order], np.asarray(values, dtype=float)[order]
    ax.scatter(x, y, s=18, color="tab:blue", label="trial")
    ax.plot(x, np.minimum.accumulate(y), color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"cross-validated {objective}")
    ax.legend()
    return _save(fig, path)


def grouped_boxes(values: list[np.ndarray], groups: list[str], path: Path, title: str, ylabel: str) -> Path:
    """One box per group (with its n), a dashed line at 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * len(groups) + 2), 4))
    ax.boxplot(values, showfliers=True)
    ax.set_xticks(range(1, len(groups) + 1), [f"{g}\n(n={len(v)})" for g, v in zip(groups, values, strict=True)],
                  rotation=45 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center", fontsize=8)
    ax.axhline(0, color="k", ls="--", lw=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def grouped_bars(groups: list[str], values: np.ndarray, path: Path, title: str, ylabel: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * len(groups) + 2), 4))
    ax.bar(range(len(groups)), values)
    ax.set_xticks(range(len(groups)), groups, rotation=45 if len(groups) > 6 else 0,
                  ha="right" if len(groups) > 6 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def residuals_vs(x: np.ndarray, residuals: np.ndarray, path: Path, title: str, xlabel: str) -> Path:
    """Residuals against a positive covariate (log x axis), a dashed line at 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(np.maximum(x, 1), residuals, s=8, alpha=0.6)
    ax.set_xscale("log")
    ax.axhline(0, color="k", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("residual (predicted - true)")
    ax.set_title(title)
    return _save(fig, path)


def calibration(mean_confidence: np.ndarray, fraction_correct: np.ndarray, path: Path, title: str) -> Path:
    """Reliability diagram: fraction correct against mean confidence per bin, the diagonal for reference."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(mean_confidence, fraction_correct, marker="o", label="model")
    ax.set_xlabel("predicted probability of the chosen class")
    ax.set_ylabel("fraction correct")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def attention_heatmap(grid: np.ndarray, labels: list[str], samples: list[str], groups: list[str] | None, path: Path,
                      title: str) -> Path:
    """ASVs (rows) x samples (columns) of attention, blank where a sample lacks the ASV; with `groups`, the
    samples come sorted by group and each group is labelled and separated."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.12 * len(samples)), 2 + 0.3 * len(labels)))
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if len(samples) <= 60:
        ax.set_xticks(range(len(samples)), samples, rotation=90, fontsize=6)
    else:
        ax.set_xticks([])
    if groups is not None:
        edges = [0] + [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]] + [len(groups)]
        for lo in edges[1:-1]:
            ax.axvline(lo - 0.5, color="w", lw=2)
        top = ax.secondary_xaxis("top")
        top.set_xticks([(lo + hi - 1) / 2 for lo, hi in zip(edges[:-1], edges[1:], strict=True)],
                       [groups[lo] for lo in edges[:-1]], fontsize=7)
    fig.colorbar(image, ax=ax, label="relative attention")
    ax.set_title(title, pad=18 if groups is not None else 6)
    return _save(fig, path)


def nucleotide_attention(maps: dict[str, np.ndarray], bases: dict[str, str], path: Path) -> Path:
    """One panel per ASV: the attention each base receives along the read (bases on the x axis when short)."""
    plt = _plt()
    fig, axes = plt.subplots(len(maps), 1, figsize=(10, 2.2 * len(maps)), squeeze=False)
    for ax, (fid, values) in zip(axes[:, 0], maps.items(), strict=True):
        ax.bar(range(1, len(values) + 1), values, width=1.0)
        if len(values) <= 160:
            ax.set_xticks(range(1, len(values) + 1), list(bases[fid]), fontsize=4)
        ax.set_ylabel("attention")
        ax.set_title(fid if len(fid) <= 40 else fid[:37] + "...", fontsize=8)
    axes[-1, 0].set_xlabel("position in the read")
    return _save(fig, path)
