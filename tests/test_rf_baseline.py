"""`aam rf-baseline`: a random forest on the split files of a run, regression and classification."""

from pathlib import Path

import pandas as pd
import pytest

from aam.cli.main import main
from aam.data import synthetic
from aam.workflows.baselines import parse_max_features


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rf")
    paths = synthetic.write_dataset(synthetic.make_dataset(60, n_features=80, seed=3), out)
    ids = pd.read_csv(paths["metadata"], sep="\t", dtype=str)["sample_id"].tolist()
    (out / "train.txt").write_text("\n".join(ids[:45]) + "\n")
    (out / "val.txt").write_text("\n".join(ids[45:]) + "\n")
    return {**paths, "train": out / "train.txt", "val": out / "val.txt", "dir": out}


def _run(data, *extra: str, output: str = "rf.tsv") -> int:
    return main(["rf-baseline", "--table", str(data["table"]), "--metadata", str(data["metadata"]),
                 "--train-samples", str(data["train"]), "--val-samples", str(data["val"]),
                 "--output", str(data["dir"] / output), "--n-estimators", "50", *extra])


def test_regression_writes_predictions_and_plot(data, capsys):
    assert _run(data, "--metadata-column", "ph", "--max-features", "0.5") == 0
    out = pd.read_csv(data["dir"] / "rf.tsv", sep="\t")
    assert list(out.columns) == ["sample_id", "actual", "predicted"] and 0 < len(out) <= 15
    assert (data["dir"] / "rf.png").is_file()
    assert "r2" in capsys.readouterr().out


def test_classifier(data, capsys):
    assert _run(data, "--metadata-column", "body_site", "--classifier", output="rf_cls.tsv") == 0
    assert "accuracy" in capsys.readouterr().out
    out = pd.read_csv(data["dir"] / "rf_cls.tsv", sep="\t")
    probs = out[[c for c in out.columns if c.startswith("prob_")]]
    assert probs.shape[1] >= 2 and ((probs.sum(axis=1) - 1).abs() < 1e-6).all()
    # the predicted label is the most probable class
    assert (probs.idxmax(axis=1).str.removeprefix("prob_") == out["predicted"].astype(str)).all()


def test_bad_column_is_one_line_error(data, capsys):
    assert _run(data, "--metadata-column", "phh") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ph" in err[0]


def test_max_features_parsing():
    assert parse_max_features("sqrt") == "sqrt"
    assert parse_max_features("0.3") == 0.3
    assert parse_max_features("12") == 12
    assert parse_max_features("none") is None
