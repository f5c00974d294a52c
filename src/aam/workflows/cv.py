"""`aam cv`: K-fold cross-validation of `aam train` next to classical baselines and a constant, same folds.

Each fold trains aam on the other folds (its own validation split picks best.pt), predicts the held-out fold,
and fits the baselines of `aam rf-baseline` (random forest, boosted trees, ridge) on exactly the same training
samples. Out-of-fold predictions, per-fold metrics with their mean and SD, and plots go to --output-dir; a
killed run resumes fold by fold (finished folds are kept, an unfinished fold continues from its last
checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aam.data import metadata as meta
from aam.data.biom_io import load_table
from aam.data.split import kfold_samples
from aam.errors import InputError
from aam.training import plots
from aam.training.metrics import classification_metrics, regression_metrics
from aam.utils.io import read_tsv, write_json, write_tsv
from aam.utils.runtime import setup_logging
from aam.workflows.baselines import METHODS as BASELINES
from aam.workflows.baselines import fit_baselines
from aam.workflows.inference import run_predict
from aam.workflows.requests import (
    CVRequest,
    InferenceOptions,
    LabelOptions,
    PredictRequest,
    SavedModelInput,
    TrainRequest,
    flat_options,
)
from aam.workflows.runs import MAY_CHANGE_ON_RESUME, option_change
from aam.workflows.train import run_train, target_columns

log = logging.getLogger("aam")

METHODS = ("aam", *BASELINES, "constant")


def fold_ids(train: TrainRequest, cols: list[str], table: Any, md: Any, folds: int) -> list[list[str]]:
    """Samples of the table with a target value (in at least one of several columns), minus the request's
    `exclude_samples`, cut into folds (whole groups per fold; classifiers keep the class mix)."""
    lab = train.labels
    meta.require_columns(md, cols + ([lab.group_column] if lab.group_column else []), lab.metadata)
    in_table = [str(s) for s in table.ids(axis="sample")]
    excluded = set(train.exclude_samples)
    ids = [s for s in in_table if s in md.index and s not in excluded]
    if not ids:
        raise InputError(f"no sample of {train.input.table} is in {lab.metadata}; check that the sample IDs "
                         "match")
    if lab.classifier:
        labels, ok = meta.categorical_values(md, cols[0], ids)
    else:
        ok = np.logical_or.reduce([meta.numeric_target(md, c, ids, lab.metadata)[1] for c in cols])
        labels = None
    ids = [s for s, k in zip(ids, ok, strict=True) if k]
    groups = md[lab.group_column].reindex(ids).tolist() if lab.group_column else None
    strat = [str(v) for v, k in zip(labels, ok, strict=True) if k] if labels is not None else None
    return kfold_samples(ids, folds, train.training.seed, groups, strat)


def check_folds(out: Path, folds: list[list[str]]) -> None:
    """A resumed CV must cut the same folds; folds.json records them."""
    path = out / "folds.json"
    if path.is_file():
        if json.loads(path.read_text()) != folds:
            raise InputError(f"{out} holds a cross-validation with other folds (other samples, --folds, --seed "
                             "or --group-column); use a new --output-dir")
        return
    write_json(path, folds)


def check_cv_options(out: Path, train: TrainRequest) -> None:
    """A rerun of a CV (which resumes it) must train with the same options; cv_options.json records them."""
    options = {k: v for k, v in json.loads(json.dumps(flat_options(train), default=str)).items()
               if k not in MAY_CHANGE_ON_RESUME and k != "exclude_samples"}
    path = out / "cv_options.json"
    if not path.is_file():
        write_json(path, options)
        return
    saved = json.loads(path.read_text())
    differ = [option_change(k, saved.get(k), v) for k, v in options.items() if saved.get(k) != v]
    if differ and not any(out.glob("fold*/checkpoints")):  # nothing trained yet (e.g. a rejected option): restart
        write_json(path, options)
        return
    if differ:
        raise InputError(f"{out} holds a cross-validation trained with other options ({'; '.join(differ[:4])}); "
                         "rerun with those options to resume it, or use a new --output-dir")


def train_fold(train: TrainRequest, fold_dir: Path, test: list[str]) -> Path:
    """Train on everything but `test` and the request's own `exclude_samples` (resuming an unfinished fold);
    the predictions TSV of the test fold."""
    pred_path = fold_dir / "test_predictions.tsv"
    if pred_path.is_file():
        log.info("%s: already done, kept", fold_dir.name)
        return pred_path
    last = fold_dir / "checkpoints/last.pt"
    run_train(dataclasses.replace(
        train, output_dir=str(fold_dir), exclude_samples=(*train.exclude_samples, *test),
        # a fold folder killed before its first checkpoint is the CV's own: it starts again
        training=dataclasses.replace(train.training, resume=str(last) if last.is_file() else None,
                                     overwrite=not last.is_file())))
    hw = train.hardware
    run_predict(PredictRequest(
        source=SavedModelInput(model=str(fold_dir / "checkpoints/best.pt"), table=train.input.table,
                               sequences=train.input.sequences, metadata=train.labels.metadata),
        output=str(fold_dir / "all_predictions.tsv"),
        run=InferenceOptions(batch_size=train.training.batch_size, device=hw.device, kernels=hw.kernels,
                             num_workers=hw.num_workers)))
    rows = read_tsv(fold_dir / "all_predictions.tsv")
    held = set(test)
    header = list(rows[0]) if rows else ["sample_id", "prediction"]
    write_tsv(pred_path, header, [[r[h] for h in header] for r in rows if r["sample_id"] in held])
    return pred_path


def roc_auc(truth: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float]:
    """ROC AUC from class probabilities [n, len(classes)]: binary, or macro one-vs-rest when every class occurs
    in the fold; nothing when the fold holds a single class."""
    from sklearn.metrics import roc_auc_score

    present = set(truth)
    if len(present) < 2 or (len(classes) > 2 and present != set(classes)):
        return {}
    if len(classes) == 2:
        return {"auc": float(roc_auc_score(truth == classes[1], probs[:, 1]))}
    p = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
    return {"auc": float(roc_auc_score(truth, p, multi_class="ovr", average="macro", labels=classes))}


def _score(classifier: bool, truth: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Regression metrics, or classification metrics over `classes` (every true and predicted label)."""
    if classifier:
        index = {c: i for i, c in enumerate(classes)}
        return classification_metrics(np.array([index[t] for t in truth], dtype=np.int64),
                                      np.array([index[p] for p in pred], dtype=np.int64), len(classes))
    return regression_metrics(truth.astype(np.float64), pred.astype(np.float64))


def _score_column(req: CVRequest, table: Any, md: Any, col: str, pcol: str, k: int, train: list[str],
                  predicted: list[str], pred: dict[str, dict[str, str]]
                  ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], list[dict[str, Any]]]:
    """One fold, one target column: (scored samples, truth, predictions per method, metric rows). The baselines
    and the constant are fitted on `train`; samples without a value in the column are not scored."""
    lab: LabelOptions = req.train.labels
    if lab.classifier:
        truth, has = meta.categorical_values(md, col, predicted)
        truth = truth.astype(str)
    else:
        truth, has = meta.numeric_target(md, col, predicted, lab.metadata)
    tested = [s for s, h in zip(predicted, has, strict=True) if h]  # with several columns, some lack one
    truth = truth[has]
    if not tested:
        return [], truth, {}, []
    fits = fit_baselines(table, md, col, train, tested, BASELINES, classifier=lab.classifier,
                         seed=req.train.training.seed, n_jobs=-1,
                         options={"random_forest": {"n_estimators": req.rf_trees}})
    values, has = (meta.categorical_values(md, col, train) if lab.classifier else
                   meta.numeric_target(md, col, train, lab.metadata))
    train_truth = values[has].astype(str) if lab.classifier else values[has]
    if lab.classifier:
        values, counts = np.unique(train_truth, return_counts=True)
        constant = values[np.argmax(counts)]
        classes = sorted(set(train_truth) | set(truth))
    else:
        constant, classes = float(np.mean(train_truth)), []
    preds = {"aam": np.array([pred[s][pcol] for s in tested])}
    for method, fit in fits.items():
        of = dict(zip(fit.sample_ids, fit.predicted, strict=True))
        preds[method] = np.array([of.get(s, "" if lab.classifier else np.nan) for s in tested])
    preds["constant"] = np.array([constant] * len(tested))
    probs = {}
    if lab.classifier:  # class probabilities, columns in `classes` order, for the AUC
        probs["aam"] = np.array([[float(pred[s].get(f"prob_{c}") or 0.0) for c in classes] for s in tested])
        for method, fit in fits.items():
            p_of = dict(zip(fit.sample_ids, fit.probabilities, strict=True))
            at = [fit.classes.index(c) if c in fit.classes else None for c in classes]
            probs[method] = np.array([[p_of[s][j] if j is not None else 0.0 for j in at] for s in tested])
        freq = np.array([float(np.mean(train_truth == c)) for c in classes])
        probs["constant"] = np.tile(freq, (len(tested), 1))
    rows = [{"target": col, "method": method, "fold": k, "n_test": len(tested),
             **_score(lab.classifier, truth, p, classes), **(roc_auc(truth, probs[method], classes) if probs else {})}
            for method, p in preds.items()]
    return tested, truth, preds, rows


def run_cv(req: CVRequest) -> dict[str, Any]:
    lab = req.train.labels
    cols = target_columns(lab, req.train.target_loss.loss_type)
    out = Path(req.output_dir)
    table, md = load_table(req.train.input.table), meta.load_metadata(lab.metadata)  # once: folds and baselines
    folds = fold_ids(req.train, cols, table, md, req.folds)
    check_folds(out, folds)
    check_cv_options(out, req.train)
    setup_logging(out, "cv.log")
    everyone = [s for f in folds for s in f]
    log.info("%d-fold cross-validation of %d samples%s: fold sizes %s", len(folds), len(everyone),
             f", grouped by {lab.group_column}" if lab.group_column else "", [len(f) for f in folds])
    rows: list[dict[str, Any]] = []
    oof: list[list[str]] = []
    oof_pred: dict[str, dict[str, list[np.ndarray]]] = {c: {m: [] for m in METHODS} for c in cols}
    truth_all: dict[str, list[np.ndarray]] = {c: [] for c in cols}
    shown = str if lab.classifier else (lambda x: f"{float(x):.6g}")
    for k, test in enumerate(folds, start=1):
        fold_dir = out / f"fold{k}"
        log.info("fold %d/%d: %d test samples", k, len(folds), len(test))
        pred = {r["sample_id"]: r for r in read_tsv(train_fold(req.train, fold_dir, test))}
        setup_logging(out, "cv.log")  # the fold's run logged to its own training.log
        held = set(test)
        train = [s for s in everyone if s not in held]
        predicted = [s for s in test if s in pred]  # rarefaction may skip a few
        for col in cols:
            pcol = "prediction" if len(cols) == 1 else f"prediction_{col}"
            tested, truth, preds, col_rows = _score_column(req, table, md, col, pcol, k, train, predicted, pred)
            if not tested:
                log.warning("fold %d: no test sample has a value in column %r; the fold is not scored on it", k, col)
                continue
            rows += col_rows
            for method, p in preds.items():
                oof_pred[col][method].append(p)
            truth_all[col].append(truth)
            oof += [[s, str(k), col, shown(t), *[shown(preds[m][i]) for m in METHODS]] for i, (s, t) in
                    enumerate(zip(tested, truth, strict=True))]
    metric_keys = sorted({k for r in rows for k in r} - {"target", "method", "fold", "n_test"})
    summary = _summarize(rows, metric_keys)
    write_tsv(out / "oof_predictions.tsv", ["sample_id", "fold", "target", "actual", *METHODS], oof)
    write_tsv(out / "cv_metrics.tsv", ["target", "method", "fold", "n_test", *metric_keys],
              [[r["target"], r["method"], str(r["fold"]), str(r["n_test"]),
                *[f"{r[m]:.6g}" if m in r else "" for m in metric_keys]] for r in rows + summary])
    plot_paths = []
    for col in cols:  # out-of-fold predictions of aam and the baselines: scatter, or confusion matrices
        t = np.concatenate(truth_all[col])
        p = {m: np.concatenate(oof_pred[col][m]) for m in ("aam", *BASELINES)}
        path, title = out / f"cv_{plots.file_safe(col)}.png", f"{col}: {len(folds)}-fold out-of-fold predictions"
        if lab.classifier:
            plot_paths.append(str(plots.cv_confusion(t, p, path, title)))
        else:
            plot_paths.append(str(plots.cv_predictions(t.astype(np.float64), {m: v.astype(np.float64)
                                                                              for m, v in p.items()}, path, title)))
    result = {"folds": len(folds), "n_samples": len(everyone), "targets": cols, "summary": summary,
              "best_baseline": _best_baselines(summary, lab.classifier),
              "metrics": str(out / "cv_metrics.tsv"), "predictions": str(out / "oof_predictions.tsv"),
              "plots": plot_paths}
    write_json(out / "cv_summary.json", result)
    return result


def _summarize(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and SD over folds of each metric in `keys`, per target and method."""
    out = []
    for target in dict.fromkeys(r["target"] for r in rows):
        for method in METHODS:
            sel = [r for r in rows if r["target"] == target and r["method"] == method]
            n = sum(r["n_test"] for r in sel)
            for stat, fn in (("mean", np.mean), ("sd", np.std)):
                out.append({"target": target, "method": method, "fold": stat, "n_test": n,
                            **{k: _over_defined(fn, [r[k] for r in sel if k in r]) for k in keys
                               if any(k in r for r in sel)}})
    return out


def _over_defined(fn: Any, values: list[float]) -> float:
    """fn over the values that are defined (R2 is NaN on a fold with one target value); NaN when none is."""
    defined = [v for v in values if not np.isnan(v)]
    return float(fn(defined)) if defined else float("nan")


def _best_baselines(summary: list[dict[str, Any]], classifier: bool) -> dict[str, str]:
    """Per target, the classical method with the best mean over folds (the number aam has to beat): lowest MAE,
    or highest ROC AUC (accuracy where no fold has an AUC)."""
    best = {}
    for target in dict.fromkeys(r["target"] for r in summary):
        rows = [r for r in summary if r["target"] == target and r["fold"] == "mean" and r["method"] in BASELINES]
        key = "mae" if not classifier else "auc" if any("auc" in r for r in rows) else "accuracy"
        scored = [(r[key] if classifier else -r[key], r["method"]) for r in rows if np.isfinite(r.get(key, np.nan))]
        if scored:
            best[target] = max(scored)[1]
    return best
