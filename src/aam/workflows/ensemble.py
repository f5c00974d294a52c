"""`aam train --ensemble K`: K cross-fitted models, predicting together.

The labelled samples are cut into K folds (whole --group-column groups; classifiers keep the class mix). Member k
trains on the other K-1 folds and picks its best epoch on fold k, so every sample trains K-1 members and
validates one: the members' validation predictions together are out-of-fold predictions of every sample, an
honest cross-validated estimate written to val_predictions.tsv. Targets, categories and the ASV vocabulary are
fitted once on all labelled samples and shared. The run folder holds members/member<k>/ (a full run each) and
checkpoints/best.pt with every member's weights; predict, explain and cv average the members' outputs
(regression values in the model's scale, class probabilities).

`--resume <run>/checkpoints/last.pt` (written when the run starts and after every member) continues an interrupted
ensemble: finished members are kept and an unfinished one resumes from its own last.pt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.data.split import kfold_samples
from aam.errors import AAMError
from aam.training import checkpoint as ckpt
from aam.training import plots
from aam.training.distributed import finish_distributed
from aam.training.metrics import (
    classification_metrics,
    confusion_matrix,
    multi_regression_metrics,
    regression_metrics,
)
from aam.utils.io import read_tsv, write_json, write_tsv
from aam.workflows.requests import DEFAULT_ENSEMBLE, TrainRequest
from aam.workflows.train import Setup, fit_model, setup_training

log = logging.getLogger("aam")


def member_folds(setup: Setup, k: int | None) -> list[list[str]]:
    """K folds of the labelled samples; K None: DEFAULT_ENSEMBLE, or the number of groups when fewer."""
    data = setup.data
    units = len(set(map(str, data.groups))) if data.groups is not None else len(data.ids)
    what = f"group(s) of --group-column {setup.req.labels.group_column}" if data.groups is not None else "sample(s)"
    if units < 2:
        raise AAMError(f"the labelled samples hold {units} {what}: training and validation need two or more; "
                       "use a --group-column with several groups, or more labelled samples")
    if k is not None and k > units:
        raise AAMError(f"--ensemble {k}: the labelled samples hold only {units} {what}, one member per fold needs "
                       f"at least as many; use --ensemble {units} or fewer")
    if k is None:
        k = min(DEFAULT_ENSEMBLE, units)
        if k < DEFAULT_ENSEMBLE:
            log.info("%d groups: an ensemble of %d members (set --ensemble to choose)", units, k)
    stratify = [str(v) for v in data.raw] if setup.req.labels.classifier else None
    return kfold_samples(data.ids, k, setup.pre.seed, data.groups, stratify)


def run_ensemble(req: TrainRequest) -> dict[str, Any]:
    out = Path(req.output_dir)
    setup, _, _ = setup_training(req, ensemble=True)
    folds = setup.resume["member_folds"] if setup.resume is not None else member_folds(setup, req.head.ensemble)
    k = len(folds)
    log.info("ensemble of %d cross-fitted members over %d labelled samples (fold sizes %s)", k, len(setup.data.ids),
             [len(f) for f in folds])
    states: list[dict[str, torch.Tensor]] = []
    epochs: list[int] = []
    config = None
    if setup.resume is None:
        _save(out / "checkpoints/last.pt", setup, None, states, epochs, folds)  # --resume works from the start
    for i, val_ids in enumerate(folds, start=1):
        member = out / "members" / f"member{i}"
        done = member / "checkpoints/best.pt"
        if setup.resume is not None and (member / "done.json").is_file() and done.is_file():
            log.info("member %d/%d: already trained, kept", i, k)
        else:
            held = set(val_ids)
            train_ids = [s for s in setup.data.ids if s not in held]
            last = member / "checkpoints/last.pt"
            resume = str(last) if setup.resume is not None and last.is_file() else None
            log.info("member %d/%d: %d train / %d validation samples", i, k, len(train_ids), len(val_ids))
            trainer, _ = fit_model(setup, train_ids, list(val_ids), member, resume)
            write_json(member / "done.json", {"best_epoch": trainer.best_epoch})
        best = ckpt.load_checkpoint(done, "train")
        config = best["model_config"]
        states.append(best["model_state"])
        epochs.append(int(best["trainer_state"]["best_epoch"]))
        _save(out / "checkpoints/last.pt", setup, config, states, epochs, folds)
    _save(out / "checkpoints/best.pt", setup, config, states, epochs, folds)
    finish_distributed()
    return _report(setup, out, folds, epochs)


def _save(path: Path, setup: Setup, config: dict[str, Any] | None, states: list[dict[str, torch.Tensor]],
          epochs: list[int], folds: list[list[str]]) -> None:
    """The ensemble checkpoint: the shared config and preprocessing, the folds, every finished member's weights
    (none yet at the start: `--resume` then starts the first member)."""
    ckpt.save_checkpoint(path, {
        "kind": "train", "model_config": config or {}, "preprocessing": setup.pre.to_dict(),
        "model_state": states[0] if states else {}, "members": states, "member_best_epochs": epochs,
        "member_folds": folds, "trainer_state": {"best_epoch": None, "history": [], "members_done": len(states)},
    })


def _report(setup: Setup, out: Path, folds: list[list[str]], epochs: list[int]) -> dict[str, Any]:
    """Out-of-fold validation predictions of every sample (each from the member that did not train on it), their
    metrics, and the run summary."""
    rows: list[dict[str, str]] = []
    for i in range(1, len(folds) + 1):
        rows += read_tsv(out / "members" / f"member{i}" / "val_predictions.tsv")
    if not rows:
        return {"members": len(folds), "best": str(out / "checkpoints/best.pt"), "metrics": {}}
    header = list(rows[0])
    write_tsv(out / "val_predictions.tsv", header, [[r[h] for h in header] for r in rows])
    classes = setup.targets.class_labels
    title = f"out-of-fold validation, ensemble of {len(folds)}"
    if classes:
        index = {c: j for j, c in enumerate(classes)}
        truth = np.array([index[r["actual"]] for r in rows])
        pred = np.array([index[r["prediction"]] for r in rows])
        metrics = classification_metrics(truth, pred, len(classes))
        plots.confusion_matrix_plot(confusion_matrix(truth, pred, len(classes)), classes,
                                    out / "plots/confusion_matrix.png", title)
    else:
        truth = np.array([[float(r[f"actual_{c}" if len(setup.cols) > 1 else "actual"]) for c in setup.cols]
                          for r in rows])
        pred = np.array([[float(r[f"prediction_{c}" if len(setup.cols) > 1 else "prediction"]) for c in setup.cols]
                         for r in rows])
        if len(setup.cols) > 1:
            metrics = multi_regression_metrics(truth, pred, setup.cols)
        else:
            metrics = regression_metrics(truth[:, 0], pred[:, 0])
        for j, col in enumerate(setup.cols):
            name = "pred_vs_true.png" if len(setup.cols) == 1 else f"pred_vs_true_{plots.file_safe(col)}.png"
            plots.predicted_vs_true(truth[:, j], pred[:, j], out / "plots" / name, f"{col}: {title}")
    metrics = {f"val_{k}": v for k, v in metrics.items()}
    write_json(out / "ensemble_metrics.json", {"members": len(folds), "member_best_epochs": epochs,
                                               "n_samples": len(rows), "out_of_fold": metrics})
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    log.info("done: ensemble of %d members (best epochs %s); out-of-fold validation over %d samples: %s; "
             "checkpoint %s", len(folds), epochs, len(rows), shown, out / "checkpoints/best.pt")
    return {"members": len(folds), "member_best_epochs": epochs, "metrics": metrics,
            "best": str(out / "checkpoints/best.pt"), "last": str(out / "checkpoints/last.pt"),
            "val_predictions": str(out / "val_predictions.tsv")}
