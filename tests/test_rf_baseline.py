"""Classical baselines (`aam rf-baseline`, `aam.workflows.baselines`): each method equals a direct scikit-learn /
LightGBM fit on the same features and samples, the feature builders, and the command's output, regression and
classification."""

from pathlib import Path

import biom
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from threadpoolctl import threadpool_limits

from aam.cli.main import main
from aam.data import synthetic
from aam.workflows.baselines import (
    METHODS,
    clr,
    fit_baselines,
    parse_max_features,
    presence_absence,
    random_forest_baseline,
    relative_abundance,
)

FOREST = {"n_estimators": 30, "max_features": 0.5}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rf")
    paths = synthetic.write_dataset(synthetic.make_dataset(60, n_features=80, seed=3), out)
    ids = pd.read_csv(paths["metadata"], sep="\t", dtype=str)["sample_id"].tolist()
    (out / "train.txt").write_text("\n".join(ids[:45]) + "\n")
    (out / "val.txt").write_text("\n".join(ids[45:]) + "\n")
    return {**paths, "train": out / "train.txt", "val": out / "val.txt", "dir": out, "ids": ids}


def _run(data, *extra: str, output: str = "rf.tsv") -> int:
    return main(["rf-baseline", "--table", str(data["table"]), "--metadata", str(data["metadata"]),
                 "--train-samples", str(data["train"]), "--val-samples", str(data["val"]),
                 "--output", str(data["dir"] / output), "--n-estimators", "50", "--n-jobs", "1", *extra])


def _direct(data, column: str, classifier: bool) -> dict:
    """Features built here from the raw counts (pandas/numpy), split and target read from the metadata: what
    fit_baselines must reproduce."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    md = pd.read_csv(data["metadata"], sep="\t", dtype=str).set_index("sample_id")
    has = md[column] != "not provided"
    train = [s for s in data["ids"][:45] if has[s]]
    val = [s for s in data["ids"][45:] if has[s]]
    counts = biom.load_table(str(data["table"])).to_dataframe(dense=True).T.loc[train + val].to_numpy(np.float64)
    rel = counts / counts.sum(axis=1, keepdims=True)
    logs = np.log(counts + 0.5)
    centred = logs - logs.mean(axis=1, keepdims=True)
    y = md.loc[train + val, column].to_numpy(str if classifier else np.float64)
    n = len(train)
    boost = {"learning_rate": 0.03, "num_leaves": 15, "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.5,
             "min_child_samples": 10, "random_state": 42, "n_jobs": 1, "verbose": -1, "force_col_wise": True,
             "deterministic": True}
    if classifier:
        import inspect

        new_api = "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
        models = {
            "random_forest": (RandomForestClassifier(random_state=42, n_jobs=1, **FOREST), sparse.csr_matrix(rel)),
            "boosted_trees": (LGBMClassifier(n_estimators=500, **boost), sparse.csr_matrix(rel)),
            "ridge": (LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, scoring="neg_log_loss", max_iter=5000,
                                           random_state=42, n_jobs=1,
                                           **({"l1_ratios": (0.0,), "use_legacy_attributes": False} if new_api else {})),
                      centred)}
    else:
        models = {
            "random_forest": (RandomForestRegressor(random_state=42, n_jobs=1, **FOREST), sparse.csr_matrix(rel)),
            "boosted_trees": (LGBMRegressor(n_estimators=500, **boost), sparse.csr_matrix(rel)),
            "ridge": (RidgeCV(alphas=np.logspace(-2, 4, 13)), centred)}
    out = {"val": val, "y_val": y[n:]}
    for name, (model, x) in models.items():
        with threadpool_limits(1, user_api="blas"):  # as fit_baselines(n_jobs=1); only faster on a busy machine
            model.fit(x[:n], y[:n])
        out[name] = (model.predict(x[n:]), model.predict_proba(x[n:]) if classifier else None)
    return out


@pytest.mark.parametrize(("column", "classifier"), [("ph", False), ("body_site", True)])
def test_each_method_equals_a_direct_fit_on_the_same_features_and_samples(data, column, classifier):
    res = fit_baselines(data["table"], data["metadata"], column, data["ids"][:45], data["ids"][45:],
                        classifier=classifier, n_jobs=1, options={"random_forest": FOREST})
    want = _direct(data, column, classifier)
    assert list(res) == list(METHODS) == ["random_forest", "boosted_trees", "ridge"]
    for method, r in res.items():
        assert r.sample_ids == want["val"]  # samples without a value are skipped
        np.testing.assert_array_equal(r.actual, want["y_val"])
        pred, prob = want[method]
        if classifier:
            np.testing.assert_array_equal(r.predicted, pred)
            np.testing.assert_allclose(r.probabilities, prob, rtol=1e-9, atol=1e-12)
            assert r.classes == sorted(set(r.classes)) and "accuracy" in r.metrics
        else:
            np.testing.assert_allclose(r.predicted, pred, rtol=1e-9, atol=1e-12)
            assert r.metrics["mae"] == pytest.approx(np.mean(np.abs(pred - want["y_val"])))


def test_random_forest_baseline_is_the_forest_of_fit_baselines(data):
    one = random_forest_baseline(data["table"], data["metadata"], "ph", data["ids"][:45], data["ids"][45:],
                                 n_jobs=1, **FOREST)
    res = fit_baselines(data["table"], data["metadata"], "ph", data["ids"][:45], data["ids"][45:],
                        ("random_forest",), n_jobs=1, options={"random_forest": FOREST})
    np.testing.assert_array_equal(one.predicted, res["random_forest"].predicted)


def test_feature_builders():
    counts = sparse.csr_matrix(np.array([[0, 3, 1, 0], [5, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float64))
    c = clr(counts)
    assert np.isfinite(c).all() and np.allclose(c.sum(axis=1), 0.0)  # centred, zeros handled by the pseudo-count
    logs = np.log(np.array([0.5, 3.5, 1.5, 0.5]))
    np.testing.assert_allclose(c[0], logs - logs.mean())
    np.testing.assert_allclose(c[2], 0.0)  # an empty sample is all pseudo-counts
    rel = relative_abundance(counts).toarray()
    np.testing.assert_allclose(rel, [[0, 0.75, 0.25, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(presence_absence(counts).toarray(), [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_regression_writes_every_method_and_the_old_columns(data, capsys):
    assert _run(data, "--metadata-column", "ph", "--max-features", "0.5") == 0
    out = pd.read_csv(data["dir"] / "rf.tsv", sep="\t")
    assert list(out.columns) == ["sample_id", "actual", "predicted", "predicted_random_forest",
                                 "predicted_boosted_trees", "predicted_ridge"] and 0 < len(out) <= 15
    # the old columns are the forest's, as before
    rf = random_forest_baseline(data["table"], data["metadata"], "ph", data["ids"][:45], data["ids"][45:],
                                n_estimators=50, max_features=0.5, n_jobs=1)
    assert out["sample_id"].tolist() == rf.sample_ids
    np.testing.assert_allclose(out["actual"], rf.actual)
    np.testing.assert_allclose(out["predicted"], rf.predicted)
    np.testing.assert_allclose(out["predicted_random_forest"], rf.predicted)
    assert (data["dir"] / "rf.png").is_file()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("r2" in line for line in lines)
    assert [line.split(",")[0] for line in lines] == ["random forest", "boosted trees", "ridge"]


def test_methods_subset_without_the_forest(data):
    assert _run(data, "--metadata-column", "ph", "--methods", "ridge", output="ridge.tsv") == 0
    out = pd.read_csv(data["dir"] / "ridge.tsv", sep="\t")
    assert list(out.columns) == ["sample_id", "actual", "predicted_ridge"]


def test_classifier(data, capsys):
    assert _run(data, "--metadata-column", "body_site", "--classifier", output="rf_cls.tsv") == 0
    assert capsys.readouterr().out.count("accuracy") == 3
    out = pd.read_csv(data["dir"] / "rf_cls.tsv", sep="\t")
    for prefix in ("prob_", "prob_boosted_trees_", "prob_ridge_"):
        cols = [c for c in out.columns if c.startswith(prefix)
                and (prefix != "prob_" or not c.startswith(("prob_boosted_trees_", "prob_ridge_")))]
        probs = out[cols]
        assert probs.shape[1] >= 2 and ((probs.sum(axis=1) - 1).abs() < 1e-6).all()
        # the predicted label is the most probable class
        method = "random_forest" if prefix == "prob_" else prefix[5:-1]
        assert (probs.idxmax(axis=1).str.removeprefix(prefix) == out[f"predicted_{method}"].astype(str)).all()
    assert (out["predicted"] == out["predicted_random_forest"]).all()


def test_bad_column_is_one_line_error(data, capsys):
    assert _run(data, "--metadata-column", "phh") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ph" in err[0]


def test_bad_method_is_one_line_error(data, capsys):
    assert _run(data, "--metadata-column", "ph", "--methods", "random_forest,xgboost") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "xgboost" in err[0]
    assert all(m in err[0] for m in METHODS)


def test_max_features_parsing():
    assert parse_max_features("sqrt") == "sqrt"
    assert parse_max_features("0.3") == 0.3
    assert parse_max_features("12") == 12
    assert parse_max_features("none") is None
