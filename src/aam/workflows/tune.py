"""`aam tune`: an Optuna search over the fine-tuning options, each trial scored by cross-validation.

Every trial trains `aam train` on K-1 folds of the tuning samples and predicts the held-out fold (folds grouped by
--group-column, stratified for classifiers), so a trial's score never comes from a sample it trained on. Samples
listed in `exclude_samples` (an outer test set) never enter the search at all. The study lives in
<output_dir>/study.db (SQLite): rerunning the command continues it up to --trials finished trials; a trial that
was killed is marked failed and a new one takes its place. Outputs: trials.tsv, tune_history.png and
best_options.json, which `aam train --config best_options.json` reads.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from aam.data import metadata as meta
from aam.data.biom_io import load_table
from aam.errors import AAMError
from aam.training import plots
from aam.training.metrics import regression_metrics
from aam.utils.io import read_tsv, write_json, write_tsv
from aam.utils.runtime import setup_logging
from aam.workflows.cv import check_folds, fold_ids, roc_auc, train_fold
from aam.workflows.requests import TrainRequest, TuneRequest
from aam.workflows.train import target_columns

log = logging.getLogger("aam")

# The search space: option name -> (group of TrainRequest, how to sample it). Options of `aam train`.
SPACE: dict[str, tuple[str, tuple]] = {
    "lr": ("training", ("log", 1e-4, 5e-3)),
    "weight_decay": ("training", ("log", 1e-3, 0.3)),
    "dropout": ("model", ("float", 0.0, 0.3)),
    "asv_identity_dropout": ("head", ("float", 0.0, 0.5)),
    "loss_type": ("target_loss", ("choice", ("huber", "mae", "mse"))),
    "asv_bag_dim": ("head", ("choice", (0, 128, 256, 512))),
}


def suggest(trial: Any, classifier: bool) -> dict[str, Any]:
    """One point of the search space (no regression loss for classifiers)."""
    params = {}
    for name, (_, (kind, *args)) in SPACE.items():
        if name == "loss_type" and classifier:
            continue
        if kind == "log":
            params[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "float":
            params[name] = trial.suggest_float(name, args[0], args[1])
        else:
            params[name] = trial.suggest_categorical(name, list(args[0]))
    return params


def with_params(train: TrainRequest, params: dict[str, Any]) -> TrainRequest:
    """`train` with the options in `params` replaced in their groups."""
    groups: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        groups.setdefault(SPACE[name][0], {})[name] = value
    return dataclasses.replace(train, **{g: dataclasses.replace(getattr(train, g), **v) for g, v in groups.items()})


def _score(classifier: bool, truth: np.ndarray, rows: list[dict[str, str]], classes: list[str]) -> float:
    """The fold's objective, to minimise: MAE, or 1 - ROC AUC for classifiers."""
    if classifier:
        probs = np.array([[float(r.get(f"prob_{c}") or 0.0) for c in classes] for r in rows])
        auc = roc_auc(truth, probs, classes).get("auc")
        if auc is None:
            raise AAMError("a tuning fold holds a single class, so ROC AUC is undefined; use fewer --folds")
        return 1.0 - auc
    pred = np.array([float(r["prediction"]) for r in rows])
    return regression_metrics(truth.astype(np.float64), pred)["mae"]


def run_tune(req: TuneRequest) -> dict[str, Any]:
    import optuna

    train = req.train
    lab = train.labels
    cols = target_columns(lab, train.target_loss.loss_type)
    if len(cols) > 1:
        raise AAMError("aam tune scores one --metadata-column; tune several columns one at a time")
    out = Path(req.output_dir)
    setup_logging(out, "tune.log")
    table, md = load_table(train.input.table), meta.load_metadata(lab.metadata)
    folds = fold_ids(train, cols, table, md, req.folds)
    check_folds(out, folds)
    truth_of = _truth(lab.classifier, md, cols[0], [s for f in folds for s in f], lab.metadata)
    classes = sorted(set(truth_of.values())) if lab.classifier else []
    log.info("tuning on %d samples (%d excluded), %d folds%s; study %s", len(truth_of), len(train.exclude_samples),
             len(folds), f" grouped by {lab.group_column}" if lab.group_column else "", out / "study.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    study = optuna.create_study(study_name="aam-tune", storage=storage, load_if_exists=True, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=train.training.seed))
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)  # one process per study
        log.info("trial %d was interrupted (killed run); marked failed", stale.number)

    def objective(trial: Any) -> float:
        params = suggest(trial, lab.classifier)
        request = with_params(train, params)
        trial_dir = out / "trials" / f"trial{trial.number}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # a trial number is never reused; stale files are not ours
        scores = []
        for k, test in enumerate(folds, start=1):
            rows = [r for r in read_tsv(train_fold(request, trial_dir / f"fold{k}", test)) if r["sample_id"] in truth_of]
            truth = np.array([truth_of[r["sample_id"]] for r in rows])
            scores.append(_score(lab.classifier, truth, rows, classes))
            setup_logging(out, "tune.log")
            trial.report(float(np.mean(scores)), k)
        value = float(np.mean(scores))
        log.info("trial %d: %s = %.4g (folds %s) with %s", trial.number, _objective_name(lab.classifier), value,
                 ", ".join(f"{x:.4g}" for x in scores), params)
        return value

    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    if done < req.trials:
        study.optimize(objective, n_trials=req.trials - done)
    return _report(study, out, lab.classifier)


def _objective_name(classifier: bool) -> str:
    return "1 - ROC AUC" if classifier else "MAE"


def _truth(classifier: bool, md: Any, col: str, ids: list[str], path: str) -> dict[str, Any]:
    values, has = meta.categorical_values(md, col, ids) if classifier else meta.numeric_target(md, col, ids, path)
    return {s: (str(v) if classifier else float(v)) for s, v, h in zip(ids, values, has, strict=True) if h}


def _report(study: Any, out: Path, classifier: bool) -> dict[str, Any]:
    import optuna

    trials = study.get_trials(deepcopy=False)
    names = list(SPACE)
    write_tsv(out / "trials.tsv", ["trial", "state", "objective", *names],
              [[str(t.number), t.state.name, "" if t.value is None else f"{t.value:.6g}",
                *[str(t.params.get(n, "")) for n in names]] for t in trials])
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise AAMError("no tuning trial finished; see tune.log")
    best = study.best_trial
    write_json(out / "best_options.json", best.params)
    plot = plots.tuning_history([t.number for t in complete], [t.value for t in complete],
                                out / "tune_history.png", _objective_name(classifier))
    log.info("best trial %d: %s = %.4g with %s; wrote %s", best.number, _objective_name(classifier), best.value,
             best.params, out / "best_options.json")
    return {"trials": len(complete), "best_trial": best.number, "best_value": best.value, "objective":
            _objective_name(classifier), "best_options": str(out / "best_options.json"), "params": best.params,
            "table": str(out / "trials.tsv"), "plot": str(plot)}
