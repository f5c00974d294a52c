"""benchmarks/realdata_study.py: folds keep subjects apart and every method is scored the same way."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks/realdata_study.py"


def _study():
    spec = importlib.util.spec_from_file_location("realdata_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_data_folder_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nope"), "--output",
                          str(tmp_path / "r.json")], capture_output=True, text=True)
    assert res.returncode == 2 and "rarefied-table.biom" in res.stderr and not (tmp_path / "r.json").exists()


def test_folds_split_by_subject_and_cover_every_sample():
    study = _study()
    subjects = [f"s{i}" for i in range(12) for _ in range(5)]
    md = pd.DataFrame({"host_subject_id": subjects,
                       "ibd": ["Crohns" if int(s[1:]) % 2 else "Control" for s in subjects]},
                      index=[f"x{i}" for i in range(60)])
    folds = study.make_folds(md, 3, seed=0)
    assert sorted(sum(folds, [])) == sorted(md.index)
    groups = [set(md.loc[f, "host_subject_id"]) for f in folds]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert all(set(md.loc[f, "ibd"]) == {"Crohns", "Control"} for f in folds)  # stratified by the subject label


def test_scores_match_sklearn():
    from sklearn.metrics import mean_absolute_error, roc_auc_score

    study = _study()
    truth = pd.Series([30.0, 40.0, 50.0], index=["a", "b", "c"])
    pred = pd.DataFrame({"sample_id": ["c", "a", "b"], "prediction": [45.0, 35.0, 40.0]})
    assert study.score("regression", truth, pred)["mae"] == pytest.approx(
        mean_absolute_error([30, 40, 50], [35, 40, 45]))
    labels = pd.Series(["Crohns", "Control", "Crohns", "Control"], index=list("abcd"))
    probs = pd.DataFrame({"sample_id": list("abcd"), "prediction": ["Crohns", "Control", "Control", "Control"],
                          "prob_Crohns": [0.9, 0.2, 0.4, 0.5]})
    got = study.score("classification", labels, probs)
    assert got["auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.5]))
    assert got["accuracy"] == pytest.approx(0.75)
