"""Classical baselines on a BIOM table, on the same train/validation samples as an aam run (or a CV fold).

The numbers a transformer has to beat, each fitted on the (unrarefied) table's counts of the training samples
and scored on the validation samples:

- `random_forest`: a random forest (500 trees, max_features "sqrt") on relative abundances;
- `boosted_trees`: LightGBM gradient-boosted trees on relative abundances, with small-data settings;
- `ridge`: a linear model on CLR-transformed counts (RidgeCV, or an L2 LogisticRegressionCV for classes),
  its penalty chosen by cross-validation within the training samples.

A method is a feature builder (`FEATURES`) and an estimator builder (`ESTIMATORS`); `fit_baselines` fits
several on one split and returns a `BaselineResult` per method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from aam.data.biom_io import load_table
from aam.data.metadata import categorical_values, load_metadata, numeric_target
from aam.errors import InputError
from aam.training.metrics import regression_metrics


@dataclass
class BaselineResult:
    sample_ids: list[str]
    actual: np.ndarray
    predicted: np.ndarray
    metrics: dict[str, float]
    # classifier only: [n_val, n_classes] class probabilities, columns in `classes` order
    probabilities: np.ndarray | None = None
    classes: list[str] | None = None


# ------------------------------------------------------------------------------------------------ features
# Each takes a samples x features count matrix (scipy CSR) and returns the model's input, one row per sample.
def relative_abundance(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """Counts divided by the sample's total (sparse; an empty sample stays all zero)."""
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    totals[totals == 0] = 1.0
    out = counts.copy()
    out.data = out.data / np.repeat(totals, np.diff(out.indptr))
    return out


def clr(counts: sparse.csr_matrix, pseudocount: float = 0.5) -> np.ndarray:
    """Centred log-ratio: log(count + pseudocount), minus the sample's mean over all features (dense)."""
    logs = np.log(sparse.csr_matrix(counts).toarray().astype(np.float64) + pseudocount)
    return logs - logs.mean(axis=1, keepdims=True)


def presence_absence(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """1 where a feature has reads in the sample, else 0 (sparse)."""
    out = sparse.csr_matrix(counts, dtype=np.float64).copy()
    out.eliminate_zeros()
    out.data = np.ones_like(out.data)
    return out


FEATURES: dict[str, Callable[[sparse.csr_matrix], Any]] = {
    "relative_abundance": relative_abundance, "clr": clr, "presence_absence": presence_absence}


def count_matrix(table: Any, ids: Sequence[str]) -> sparse.csr_matrix:
    """The biom.Table's counts of `ids` (all in the table) as a samples x features CSR matrix, rows in `ids`
    order, columns in the table's feature order."""
    sub = table.filter(list(ids), axis="sample", inplace=False)
    order = {s: k for k, s in enumerate(sub.ids(axis="sample"))}
    return sub.matrix_data.T.tocsr()[[order[s] for s in ids]]


# ---------------------------------------------------------------------------------------------- estimators
# Each takes (classifier, seed, n_jobs, **options) and returns an unfitted scikit-learn-style estimator.
def _random_forest(classifier: bool, seed: int, n_jobs: int, n_estimators: int = 500,
                   max_features: str | float | int | None = "sqrt") -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if classifier else RandomForestRegressor
    return cls(n_estimators=n_estimators, max_features=max_features, random_state=seed, n_jobs=n_jobs)


def _boosted_trees(classifier: bool, seed: int, n_jobs: int, n_estimators: int = 500) -> Any:
    """Settings for a few hundred samples: slow learning, small trees, row and column subsampling. Column-wise
    histograms and `deterministic` give the same model for any n_jobs and machine load (LightGBM otherwise picks
    row- or column-wise by timing both)."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    cls = LGBMClassifier if classifier else LGBMRegressor
    return cls(n_estimators=n_estimators, learning_rate=0.03, num_leaves=15, subsample=0.8, subsample_freq=1,
               colsample_bytree=0.5, min_child_samples=10, random_state=seed, n_jobs=n_jobs, verbose=-1,
               force_col_wise=True, deterministic=True)


def _ridge(classifier: bool, seed: int, n_jobs: int) -> Any:
    """RidgeCV (efficient leave-one-out over 13 penalties), or an L2 logistic regression whose C is picked by
    5-fold log loss within the training samples. Both run in this process (n_jobs bounds their BLAS threads):
    worker processes for the logistic regression's 5 folds cost more to start than the folds take."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    if not classifier:
        return RidgeCV(alphas=np.logspace(-2, 4, 13))
    # scikit-learn >= 1.8 names the L2 penalty l1_ratios=(0,) and warns without it (and without the new attributes)
    new_api = "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
    return LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, scoring="neg_log_loss", max_iter=5000,
                                random_state=seed,
                                **({"l1_ratios": (0.0,), "use_legacy_attributes": False} if new_api else {}))


# method -> (feature builder in FEATURES, estimator builder)
ESTIMATORS: dict[str, tuple[str, Callable[..., Any]]] = {
    "random_forest": ("relative_abundance", _random_forest),
    "boosted_trees": ("relative_abundance", _boosted_trees),
    "ridge": ("clr", _ridge),
}
METHODS: tuple[str, ...] = tuple(ESTIMATORS)


def make_estimator(method: str, classifier: bool = False, seed: int = 42, n_jobs: int = -1, **options: Any) -> Any:
    """The unfitted estimator of `method` (options: random_forest n_estimators/max_features,
    boosted_trees n_estimators)."""
    return ESTIMATORS[method][1](classifier, seed, n_jobs, **options)


def method_features(method: str, counts: sparse.csr_matrix) -> Any:
    """The input `method` is fitted on, from a samples x features count matrix."""
    return FEATURES[ESTIMATORS[method][0]](counts)


def parse_methods(text: str) -> tuple[str, ...]:
    """'random_forest,ridge' -> ('random_forest', 'ridge'); an unknown or empty list is an InputError."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in ESTIMATORS]
    if bad or not names:
        raise InputError(f"unknown baseline method {', '.join(map(repr, bad)) or '(none given)'}: choose "
                         f"comma-separated from {', '.join(METHODS)}")
    return names


def parse_max_features(value: str) -> str | float | int | None:
    """'sqrt', 'log2', 'none', an integer count or a fraction in (0, 1]."""
    if value in ("sqrt", "log2"):
        return value
    if value.lower() == "none":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (number > 0):  # also NaN
        raise InputError(f"--max-features {value!r}: use sqrt, log2, none, a count >= 1 or a fraction in (0, 1]")
    return int(number) if number.is_integer() and number > 1 else number


# ------------------------------------------------------------------------------------------------- fitting
def _metrics(classifier: bool, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    if classifier:
        return {"accuracy": float(accuracy_score(truth, pred)), "f1_macro": float(f1_score(truth, pred, average="macro"))}
    return regression_metrics(truth, pred)  # the same definitions as aam's (R2 NaN on a constant target)


def fit_baselines(
    table_path: str | Path | Any, metadata_path: str | Path | Any, column: str, train_ids: list[str],
    val_ids: list[str], methods: Sequence[str] = METHODS, classifier: bool = False, seed: int = 42,
    n_jobs: int = -1, options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, BaselineResult]:
    """Fit each of `methods` on `train_ids` and predict `val_ids`; samples missing from the table or without a
    value in `column` are skipped (every method sees the same samples). The table and metadata are paths, or an
    already loaded biom.Table / metadata DataFrame (`aam cv` fits them per fold and column). `options` holds
    each method's estimator options, e.g. {"random_forest": {"n_estimators": 200}}; `n_jobs` (-1: all) bounds
    the threads of each fit."""
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
    both = sorted(set(train_ids) & set(val_ids))
    if both:
        raise InputError(f"{len(both)} sample(s) are in both the training and the validation samples (e.g. "
                         f"{', '.join(both[:5])}); a model scored on samples it trained on looks better than it is: "
                         "give disjoint lists")
    train = [s for s in train_ids if s in keep]
    val = [s for s in val_ids if s in keep]
    if not train or not val:
        raise InputError(f"no samples with both table counts and a {column!r} value on one side of the split "
                         f"({len(train)} train, {len(val)} validation)")
    y_train = np.array([y[keep[s]] for s in train])
    y_val = np.array([y[keep[s]] for s in val])
    if classifier and len(set(y_train)) < 2:
        raise InputError(f"the training samples hold a single class of {column!r} ({y_train[0]!r}): nothing to "
                         "classify")
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    counts = count_matrix(table, train + val)
    built: dict[str, Any] = {}
    results = {}
    for method in methods:
        kind = ESTIMATORS[method][0]
        x = built[kind] if kind in built else built.setdefault(kind, FEATURES[kind](counts))
        model = make_estimator(method, classifier, seed, n_jobs, **(options or {}).get(method, {}))
        # n_jobs bounds the BLAS threads too: on small matrices and a busy machine, idle BLAS threads spinning
        # next to the fit's own made the logistic regression 20x slower
        with threadpool_limits(n_jobs if n_jobs > 0 else None, user_api="blas"):
            model.fit(x[: len(train)], y_train)
        pred = model.predict(x[len(train):])
        if classifier:
            results[method] = BaselineResult(val, y_val, pred, _metrics(True, y_val, pred),
                                             model.predict_proba(x[len(train):]), [str(c) for c in model.classes_])
        else:
            results[method] = BaselineResult(val, y_val, pred, _metrics(False, y_val, pred))
    return results


def random_forest_baseline(
    table_path: str | Path | Any, metadata_path: str | Path | Any, column: str, train_ids: list[str],
    val_ids: list[str], classifier: bool = False, n_estimators: int = 500,
    max_features: str | float | int | None = "sqrt", seed: int = 42, n_jobs: int = -1,
) -> BaselineResult:
    """`fit_baselines` with the random forest only."""
    return fit_baselines(table_path, metadata_path, column, train_ids, val_ids, ("random_forest",), classifier,
                         seed, n_jobs, {"random_forest": {"n_estimators": n_estimators,
                                                          "max_features": max_features}})["random_forest"]
