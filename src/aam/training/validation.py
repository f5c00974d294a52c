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
from aam.training.losses import LossConfig, embedding_distances, point_prediction
from aam.utils.io import write_tsv


class EvalPass:
    """What an evaluation pass collects batch by batch: loss terms summed over samples, predictions and targets,
    and the predicted vs true UniFrac distance of every pair inside a batch (`offset`: add the model's learned
    distance offset, as the loss does without a distributed pairwise hook)."""

    def __init__(self, loss: LossConfig, offset: bool) -> None:
        self.loss, self.offset = loss, offset
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.ids: list[str] = []
        self.preds: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.pair_pred: list[torch.Tensor] = []
        self.pair_true: list[torch.Tensor] = []

    def add(self, batch: dict[str, Any], outputs: dict[str, Any], terms: dict[str, torch.Tensor]) -> None:
        b = len(batch["sample_ids"])
        for k, v in terms.items():
            v = v.detach().float() * (1 if k in ("nuc_correct", "nuc_total") else b)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += b
        self.ids.extend(batch["sample_ids"])
        if outputs.get("target") is not None:
            self.preds.append(outputs["target"].float())
            if batch.get("y") is not None:
                self.ys.append(batch["y"])
        if batch.get("unifrac_target") is not None and b > 1:
            d = embedding_distances(outputs["embeddings"], self.loss.unifrac_transform, self.loss.unifrac_scale)
            if outputs.get("distance_offset") is not None and self.offset:
                d = d + outputs["distance_offset"].float()
            iu = torch.triu_indices(b, b, offset=1, device=d.device)
            self.pair_pred.append(d[iu[0], iu[1]])
            self.pair_true.append(batch["unifrac_target"][iu[0], iu[1]].float())

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sample_ids": self.ids, "n": self.n, "sums": self.sums}
        out["pred"] = torch.cat(self.preds).cpu() if self.preds else None
        out["y"] = torch.cat(self.ys).cpu() if self.ys else None
        if self.pair_pred:
            out["pair_pred"] = torch.cat(self.pair_pred).cpu().numpy()
            out["pair_true"] = torch.cat(self.pair_true).cpu().numpy()
        return out


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
