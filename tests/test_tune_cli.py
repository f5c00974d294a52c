"""`aam tune`: trials scored by cross-validation that never trains on its scored samples, a SQLite study that a
rerun resumes, excluded samples kept out, and best_options.json that `aam train --config` reads."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from aam.cli.main import main
from aam.workflows.tune import SPACE
from test_e2e_cli import MODEL, read_tsv, write_tiny

TUNE = ["--epochs", "1", "--rarefy-depth", "300", "--folds", "2", *MODEL]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tune"))


def _tune(data, out, *extra):
    return main(["tune", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(out), *TUNE, *extra])


def _ids(path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line}


def test_tune_scores_held_out_folds_only_and_resumes(data, tmp_path):
    out = tmp_path / "tune"
    excluded = ["S0", "S1", "S2", "S3"]
    (tmp_path / "outer.txt").write_text("\n".join(excluded) + "\n")
    assert _tune(data, out, "--trials", "2", "--exclude-samples", str(tmp_path / "outer.txt")) == 0
    folds = json.loads((out / "folds.json").read_text())
    assert not set(excluded) & {s for f in folds for s in f}
    ages = {r["sample_id"]: float(r["age"]) for r in read_tsv(data["md"])}
    trials = read_tsv(out / "trials.tsv")
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        maes = []
        for k, test in enumerate(folds, start=1):
            fold = out / "trials" / f"trial{t['trial']}" / f"fold{k}"
            seen = _ids(fold / "train_samples.txt") | _ids(fold / "val_samples.txt")
            assert not seen & set(test) and not seen & set(excluded)  # never trained on what it scores
            rows = read_tsv(fold / "test_predictions.tsv")
            assert {r["sample_id"] for r in rows} <= set(test)
            maes.append(np.mean([abs(float(r["prediction"]) - ages[r["sample_id"]]) for r in rows]))
        assert float(t["objective"]) == pytest.approx(np.mean(maes), rel=1e-5)
    best = json.loads((out / "best_options.json").read_text())
    assert set(best) <= set(SPACE) and best == {k: v for k, v in best.items() if k in SPACE}
    assert (out / "tune_history.png").is_file()
    first = (out / "trials/trial0/fold1/test_predictions.tsv").stat().st_mtime_ns

    # a killed run leaves a RUNNING trial behind: the rerun marks it failed and finishes the missing trials
    study = optuna.load_study(study_name="aam-tune", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()
    assert _tune(data, out, "--trials", "3", "--exclude-samples", str(tmp_path / "outer.txt")) == 0
    states = [t["state"] for t in read_tsv(out / "trials.tsv")]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1 and "RUNNING" not in states
    assert (out / "trials/trial0/fold1/test_predictions.tsv").stat().st_mtime_ns == first  # finished: kept


def test_train_reads_a_config_and_the_command_line_wins(data, tmp_path, capsys):
    config = tmp_path / "best.json"
    config.write_text(json.dumps({"lr": 0.0025, "weight_decay": 0.05, "loss_type": "mae"}))
    base = ["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
            "--epochs", "1", "--rarefy-depth", "300", "--config", str(config), *MODEL]
    assert main([*base, "--output-dir", str(tmp_path / "a")]) == 0
    used = json.loads((tmp_path / "a/run_options.json").read_text())
    assert (used["lr"], used["weight_decay"], used["loss_type"]) == (0.0025, 0.05, "mae")
    assert main([*base, "--output-dir", str(tmp_path / "b"), "--lr", "0.0007"]) == 0
    assert json.loads((tmp_path / "b/run_options.json").read_text())["lr"] == 0.0007
    config.write_text(json.dumps({"learning_rate": 0.1}))
    capsys.readouterr()
    assert main([*base, "--output-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate is not an option of `aam train`" in err[0]
    assert not (tmp_path / "c").exists()  # refused before anything was written
