"""`aam cv`: folds cover every sample once and keep groups whole, each fold's run never sees its test fold,
the classical baselines (forest, boosted trees, ridge) and the constant are fitted on the fold's training
samples and scored on the same test samples, metrics agree with the out-of-fold predictions, and a rerun
resumes instead of retraining."""

from __future__ import annotations

import inspect
import json

import biom
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from aam.cli.main import main
from aam.data.split import kfold_samples
from aam.training.metrics import regression_metrics
from aam.workflows.baselines import random_forest_baseline
from aam.workflows.cv import METHODS
from test_e2e_cli import MODEL, read_tsv, run_err, write_tiny

CV = ["--epochs", "1", "--rarefy-depth", "300", "--folds", "3", "--rf-trees", "20", *MODEL]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), n_samples=36, seed=2)


@pytest.fixture(scope="module")
def cv_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    assert main(["cv", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--group-column", "subject", "--output-dir", str(out), *CV]) == 0
    return out


def _ids(path) -> list[str]:
    return [s for s in path.read_text().split() if s]


def _direct_fit(data, column: str, method: str, train: list[str], test: list[str], classifier: bool = False):
    """boosted_trees or ridge fitted here with LightGBM / scikit-learn on features built from the raw counts:
    predictions (and class probabilities) for `test`."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    counts = biom.load_table(str(data["table"])).to_dataframe(dense=True).T.loc[train + test].to_numpy(np.float64)
    md = pd.read_csv(data["md"], sep="\t", index_col=0)
    y = md.loc[train, column].to_numpy(str if classifier else np.float64)
    if method == "boosted_trees":
        x = counts / counts.sum(axis=1, keepdims=True)
        model = (LGBMClassifier if classifier else LGBMRegressor)(
            n_estimators=500, learning_rate=0.03, num_leaves=15, subsample=0.8, subsample_freq=1,
            colsample_bytree=0.5, min_child_samples=10, random_state=42, n_jobs=1, verbose=-1, force_col_wise=True,
            deterministic=True)
    else:
        logs = np.log(counts + 0.5)
        x = logs - logs.mean(axis=1, keepdims=True)
        new_api = "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
        model = (LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, scoring="neg_log_loss", max_iter=5000,
                                      random_state=42, n_jobs=1,
                                      **({"l1_ratios": (0.0,), "use_legacy_attributes": False} if new_api else {}))
                 if classifier else RidgeCV(alphas=np.logspace(-2, 4, 13)))
    with threadpool_limits(1, user_api="blas"):
        model.fit(x[: len(train)], y)
    return model.predict(x[len(train):]), (model.predict_proba(x[len(train):]) if classifier else None)


def test_folds_cover_all_samples_once_and_keep_subjects_whole(cv_run, data):
    folds = json.loads((cv_run / "folds.json").read_text())
    md = pd.read_csv(data["md"], sep="\t", index_col=0)
    flat = [s for f in folds for s in f]
    assert len(folds) == 3 and sorted(flat) == sorted(md.index) and len(set(flat)) == len(flat)
    fold_of_subject = {}
    for k, f in enumerate(folds):
        for s in f:
            assert fold_of_subject.setdefault(md.loc[s, "subject"], k) == k
    for k, test in enumerate(folds, start=1):  # the fold's own train/validation split never holds a test sample
        seen = _ids(cv_run / f"fold{k}/train_samples.txt") + _ids(cv_run / f"fold{k}/val_samples.txt")
        assert not set(seen) & set(test)
        assert set(seen) | set(test) == set(flat)


def test_metrics_match_the_out_of_fold_predictions(cv_run):
    oof = pd.read_csv(cv_run / "oof_predictions.tsv", sep="\t")
    metrics = pd.read_csv(cv_run / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    folds = json.loads((cv_run / "folds.json").read_text())
    assert sorted(oof["sample_id"]) == sorted(s for f in folds for s in f)  # nobody lost, nobody twice
    for k in (1, 2, 3):
        part = oof[oof["fold"] == k]
        assert set(part["sample_id"]) == set(folds[k - 1])
        test_pred = {r["sample_id"]: float(r["prediction"]) for r in read_tsv(cv_run / f"fold{k}/test_predictions.tsv")}
        np.testing.assert_allclose(part["aam"], [test_pred[s] for s in part["sample_id"]], rtol=1e-5)
        rows = metrics[metrics["fold"] == str(k)]
        assert rows["method"].tolist() == list(METHODS) == ["aam", "random_forest", "boosted_trees", "ridge",
                                                            "constant"]
        assert set(rows["n_test"]) == {len(part)}  # every method scored on the same test samples
        for method in METHODS:
            row = metrics[(metrics["fold"] == str(k)) & (metrics["method"] == method)].iloc[0]
            want = regression_metrics(part["actual"].to_numpy(), part[method].to_numpy())
            assert row["mae"] == pytest.approx(want["mae"], rel=1e-4)
            assert row["r2"] == pytest.approx(want["r2"], rel=1e-4, abs=1e-5)
    for method in METHODS:
        per_fold = metrics[(metrics["method"] == method) & metrics["fold"].isin(["1", "2", "3"])]
        mean = metrics[(metrics["method"] == method) & (metrics["fold"] == "mean")].iloc[0]
        assert mean["mae"] == pytest.approx(per_fold["mae"].mean(), rel=1e-5)
    assert (cv_run / "cv_age.png").stat().st_size > 0


def test_baselines_use_the_same_training_samples(cv_run, data):
    folds = json.loads((cv_run / "folds.json").read_text())
    oof = pd.read_csv(cv_run / "oof_predictions.tsv", sep="\t")
    md = pd.read_csv(data["md"], sep="\t", index_col=0)
    test = folds[0]
    train = [s for f in folds[1:] for s in f]
    rf = random_forest_baseline(data["table"], data["md"], "age", train, test, n_estimators=20, seed=42, n_jobs=-1)
    part = oof[oof["fold"] == 1].set_index("sample_id")
    np.testing.assert_allclose(part.loc[rf.sample_ids, "random_forest"], rf.predicted, rtol=1e-5)
    np.testing.assert_allclose(part["constant"], md.loc[train, "age"].mean(), rtol=1e-5)
    tested = part.index.tolist()
    for method in ("boosted_trees", "ridge"):
        pred, _ = _direct_fit(data, "age", method, train, tested)
        np.testing.assert_allclose(part[method], pred, rtol=1e-5, err_msg=method)
    summary = json.loads((cv_run / "cv_summary.json").read_text())
    means = pd.read_csv(cv_run / "cv_metrics.tsv", sep="\t").query("fold == 'mean'").set_index("method")["mae"]
    assert summary["best_baseline"] == {"age": means[["random_forest", "boosted_trees", "ridge"]].idxmin()}


def test_rerun_resumes_without_retraining_finished_folds(cv_run, data):
    before = {k: (cv_run / f"fold{k}/checkpoints/best.pt").stat().st_mtime_ns for k in (1, 2, 3)}
    metrics = (cv_run / "cv_metrics.tsv").read_text()
    (cv_run / "fold3/test_predictions.tsv").unlink()  # as if killed after fold 3's training
    assert main(["cv", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--group-column", "subject", "--output-dir", str(cv_run), *CV]) == 0
    after = {k: (cv_run / f"fold{k}/checkpoints/best.pt").stat().st_mtime_ns for k in (1, 2, 3)}
    assert after[1] == before[1] and after[2] == before[2]
    assert (cv_run / "cv_metrics.tsv").read_text() == metrics


def test_other_folds_in_the_same_output_dir_are_refused(cv_run, data, capsys):
    err = run_err(capsys, ["cv", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column",
                           "age", "--output-dir", str(cv_run), *CV, "--folds", "4"])
    assert "holds a cross-validation with other folds" in err and "--output-dir" in err


def test_classifier_cv_reports_accuracy_and_f1(data, tmp_path):
    out = tmp_path / "cls"
    assert main(["cv", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "group",
                 "--classifier", "--output-dir", str(out), *CV]) == 0
    metrics = pd.read_csv(out / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    oof = pd.read_csv(out / "oof_predictions.tsv", sep="\t")
    assert {"accuracy", "f1", "auc"} <= set(metrics.columns)
    from sklearn.metrics import roc_auc_score

    for k in (1, 2, 3):
        part = oof[oof["fold"] == k]
        row = metrics[(metrics["fold"] == str(k)) & (metrics["method"] == "aam")].iloc[0]
        assert row["accuracy"] == pytest.approx((part["aam"] == part["actual"]).mean())
        prob_b = {r["sample_id"]: float(r["prob_b"]) for r in read_tsv(out / f"fold{k}/test_predictions.tsv")}
        want = roc_auc_score(part["actual"] == "b", [prob_b[s] for s in part["sample_id"]])
        assert row["auc"] == pytest.approx(want, rel=1e-5)
        constant = metrics[(metrics["fold"] == str(k)) & (metrics["method"] == "constant")].iloc[0]
        assert constant["auc"] == pytest.approx(0.5)  # one score for everyone
        assert set(metrics[metrics["fold"] == str(k)]["n_test"]) == {len(part)}
    folds = json.loads((out / "folds.json").read_text())
    part = oof[oof["fold"] == 1]
    train = [s for f in folds[1:] for s in f]
    for method in ("boosted_trees", "ridge"):  # labels and ROC AUC from the method's own fit on the fold
        pred, prob = _direct_fit(data, "group", method, train, part["sample_id"].tolist(), classifier=True)
        assert part[method].tolist() == pred.tolist()
        row = metrics[(metrics["fold"] == "1") & (metrics["method"] == method)].iloc[0]
        assert row["auc"] == pytest.approx(roc_auc_score(part["actual"] == "b", prob[:, 1]), rel=1e-5)
    assert (out / "cv_group.png").stat().st_size > 0  # confusion matrices of aam and the baselines
    md = pd.read_csv(data["md"], sep="\t", index_col=0)
    for f in folds:  # stratified: both classes in every fold
        assert set(md.loc[f, "group"]) == {"a", "b"}


def test_kfold_samples_grouped_stratified_and_errors():
    ids = [f"s{i}" for i in range(20)]
    groups = [f"g{i // 4}" for i in range(20)]
    folds = kfold_samples(ids, 5, 0, groups=groups)
    assert sorted(s for f in folds for s in f) == sorted(ids)
    assert all(len({groups[ids.index(s)] for s in f}) == 1 for f in folds)  # 5 groups of 4 -> one per fold
    assert kfold_samples(ids, 5, 0, groups=groups) == folds  # seeded
    labels = ["x"] * 10 + ["y"] * 10
    for f in kfold_samples(ids, 5, 1, stratify=labels):
        assert sorted(labels[ids.index(s)] for s in f) == ["x", "x", "y", "y"]
    with pytest.raises(Exception, match="at least 6 groups"):
        kfold_samples(ids, 6, 0, groups=groups)
    with pytest.raises(Exception, match="at least 2"):
        kfold_samples(ids, 1, 0)


def test_fold_without_values_in_one_column_is_not_scored_on_it(data, tmp_path):
    """Several columns: a fold whose test samples all lack `bmi` is scored on `age` only (and says so)."""
    md = pd.read_csv(data["md"], sep="\t", index_col=0)
    md["bmi"] = 20.0 + md["age"] / 4.0
    ids = [str(s) for s in md.index]
    third = kfold_samples(ids, 3, 42)[2]  # the folds aam cv cuts (table order, --seed 42)
    md.loc[third, "bmi"] = np.nan
    path = tmp_path / "md.tsv"
    md.to_csv(path, sep="\t", na_rep="not provided")
    out = tmp_path / "cv"
    assert main(["cv", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(path), "--metadata-column", "age,bmi",
                 "--output-dir", str(out), "--seed", "42", *CV]) == 0
    assert json.loads((out / "folds.json").read_text())[2] == third
    metrics = pd.read_csv(out / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    scored = metrics[metrics["fold"].isin(["1", "2", "3"])]
    assert sorted(set(scored[scored["target"] == "bmi"]["fold"])) == ["1", "2"]
    assert sorted(set(scored[scored["target"] == "age"]["fold"])) == ["1", "2", "3"]
    assert "fold 3: no test sample has a value in column 'bmi'" in (out / "cv.log").read_text()
