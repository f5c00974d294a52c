"""What a validation pass reports about the target: metrics in the original units, val_predictions.tsv and
the predicted-vs-true, confusion-matrix and UniFrac plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.training import metrics as M
from aam.training import plots
from aam.training.losses import point_prediction
from aam.utils.io import write_tsv


@dataclass
class ValidationReport:
    """task: pretrain | regression | classification; `denormalize` maps model-scale regression values to the
    original units; `class_labels` names classes; `target_names` names the columns of a multi-output
    regression."""

    task: str
    denormalize: Callable[[np.ndarray], np.ndarray]
    quantiles: list[float]
    class_labels: list[str] | None = None
    target_names: list[str] | None = None

    def _values(self, pred: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, true) regression values in the original units."""
        p = self.denormalize(point_prediction(pred, self.quantiles).double().numpy())
        return p, self.denormalize(y.double().numpy())

    def metrics(self, pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.task == "classification":
            return M.classification_metrics(y.long().numpy(), pred.argmax(1).numpy(), pred.shape[1])
        p, t = self._values(pred, y)
        if self.target_names:
            return M.multi_regression_metrics(t, p, self.target_names)
        return M.regression_metrics(t, p)

    def write(self, res: dict[str, Any], output_dir: Path, plot_dir: Path, title: str) -> None:
        """Plots and val_predictions.tsv of one validation pass (`Trainer.predict_loader` output)."""
        if "pair_pred" in res:
            plots.predicted_vs_true(res["pair_true"], res["pair_pred"], plot_dir / "unifrac_pred_vs_true.png",
                                    title, "UniFrac distance", "embedding distance")
        if res["pred"] is None or res["y"] is None:
            return
        ids = res["sample_ids"]
        if self.task == "classification":
            labels = self.class_labels or [str(i) for i in range(res["pred"].shape[1])]
            probs = torch.softmax(res["pred"], dim=1).numpy()
            true = res["y"].long().numpy()
            pred = probs.argmax(1)
            header = ["sample_id", "prediction", "actual", *[f"prob_{lab}" for lab in labels]]
            rows = [[sid, labels[p], labels[t], *[f"{x:.6g}" for x in pr]]
                    for sid, p, t, pr in zip(ids, pred, true, probs, strict=True)]
            plots.confusion_matrix_plot(M.confusion_matrix(true, pred, len(labels)), labels,
                                        plot_dir / "confusion_matrix.png", title)
        elif self.target_names:  # multi-output: a prediction and an actual column, and a plot, per target
            p, t = self._values(res["pred"], res["y"])
            header = ["sample_id", *[f"{k}_{n}" for n in self.target_names for k in ("prediction", "actual")]]
            rows = [[sid, *[f"{v:.6g}" for pair in zip(a, b, strict=True) for v in pair]]
                    for sid, a, b in zip(ids, p, t, strict=True)]
            for j, name in enumerate(self.target_names):
                plots.predicted_vs_true(t[:, j], p[:, j], plot_dir / f"pred_vs_true_{plots.file_safe(name)}.png",
                                        f"{name}: {title}")
        else:
            p, t = self._values(res["pred"], res["y"])
            header = ["sample_id", "prediction", "actual"]
            rows = [[sid, f"{a:.6g}", f"{b:.6g}"] for sid, a, b in zip(ids, p, t, strict=True)]
            plots.predicted_vs_true(t, p, plot_dir / "pred_vs_true.png", title)
        write_tsv(output_dir / "val_predictions.tsv", header, rows)
