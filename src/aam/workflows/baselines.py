"""Random-forest baseline on relative abundances, on the same train/validation split as an aam run.

The number a transformer has to beat: a random forest on the (unrarefied) table's relative abundances,
trained on the run's `train_samples.txt` and scored on its `val_samples.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aam.data.biom_io import load_table
from aam.data.metadata import categorical_values, load_metadata, numeric_target
from aam.errors import InputError


@dataclass
class BaselineResult:
    sample_ids: list[str]
    actual: np.ndarray
    predicted: np.ndarray
    metrics: dict[str, float]
    # classifier only: [n_val, n_classes] class probabilities, columns in `classes` order
    probabilities: np.ndarray | None = None
    classes: list[str] | None = None


def parse_max_features(value: str) -> str | float | int | None:
    """'sqrt', 'log2', 'none', an integer count or a fraction in (0, 1]."""
    if value in ("sqrt", "log2"):
        return value
    if value.lower() == "none":
        return None
    number = float(value)
    return int(number) if number.is_integer() and number > 1 else number


def random_forest_baseline(
    table_path: str | Path | Any, metadata_path: str | Path | Any, column: str, train_ids: list[str],
    val_ids: list[str], classifier: bool = False, n_estimators: int = 500,
    max_features: str | float | int | None = "sqrt", seed: int = 42, n_jobs: int = -1,
) -> BaselineResult:
    """Fit on `train_ids`, predict `val_ids`; samples missing from the table or the target are skipped.
    The table and metadata are paths, or an already loaded biom.Table / metadata DataFrame (`aam cv` fits one
    forest per fold and column)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

    table = load_table(table_path) if isinstance(table_path, (str, Path)) else table_path
    md = load_metadata(metadata_path) if isinstance(metadata_path, (str, Path)) else metadata_path
    in_table = set(table.ids(axis="sample"))
    ids = [s for s in train_ids + val_ids if s in in_table]
    if classifier:
        y, ok = categorical_values(md, column, ids)
        y = y.astype(str)
    else:
        y, ok = numeric_target(md, column, ids, metadata_path if isinstance(metadata_path, (str, Path)) else None)
    keep = {s: k for k, s in enumerate(ids) if ok[k]}
    train = [s for s in train_ids if s in keep]
    val = [s for s in val_ids if s in keep]
    if not train or not val:
        raise InputError(f"no samples with both table counts and a {column!r} value on one side of the split "
                         f"({len(train)} train, {len(val)} validation)")
    x = table.filter(train + val, axis="sample", inplace=False).norm(axis="sample", inplace=False)
    x = x.matrix_data.T.tocsr()  # samples x features, rows in train + val order
    order = {s: k for k, s in enumerate(table.filter(train + val, axis="sample", inplace=False).ids())}
    x = x[[order[s] for s in train + val]]
    y_train = np.array([y[keep[s]] for s in train])
    y_val = np.array([y[keep[s]] for s in val])
    cls = RandomForestClassifier if classifier else RandomForestRegressor
    model = cls(n_estimators=n_estimators, max_features=max_features, random_state=seed, n_jobs=n_jobs)
    model.fit(x[: len(train)], y_train)
    pred = model.predict(x[len(train):])
    if classifier:
        metrics = {"accuracy": float(accuracy_score(y_val, pred)),
                   "f1_macro": float(f1_score(y_val, pred, average="macro"))}
        return BaselineResult(val, y_val, pred, metrics, model.predict_proba(x[len(train):]),
                              [str(c) for c in model.classes_])
    else:
        metrics = {"mae": float(mean_absolute_error(y_val, pred)),
                   "rmse": float(np.sqrt(mean_squared_error(y_val, pred))), "r2": float(r2_score(y_val, pred))}
    return BaselineResult(val, y_val, pred, metrics)
