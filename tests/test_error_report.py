"""`aam predict --metadata-column C --report`: the error report's numbers equal what the predictions TSV and the
metadata say (groups, worst samples with their ASV count and depth; per-class precision/recall and
calibration for a classifier), and --report without a column is a one-line error."""

from __future__ import annotations

import json

import biom
import numpy as np
import pytest

from aam.cli.main import main
from test_e2e_cli import MODEL, read_tsv, run_err, write_tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("report-data"))


def _train(data, out, column, *extra):
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", column, "--output-dir", str(out), "--epochs", "1", "--rarefy-depth", "0",
                 *extra, *MODEL]) == 0
    return out / "checkpoints" / "last.pt"


def test_regression_report(data, tmp_path):
    model = _train(data, tmp_path / "reg", "age")
    pred = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(model), "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", "age", "--report", "--output", str(pred), "--device", "cpu"]) == 0
    report = tmp_path / "pred.report"
    md = {r["sample_id"]: r for r in read_tsv(data["md"])}
    rows = read_tsv(pred)
    resid = {r["sample_id"]: float(r["prediction"]) - float(md[r["sample_id"]]["age"]) for r in rows}
    # the default grouping: every categorical column with 2-30 levels ('group'; 'subject' has 15, 'site' one)
    ev = json.loads((tmp_path / "pred.metrics.json").read_text())
    assert ev["report"]["grouped_by"] == ["group", "subject"]
    by_group = {r["group"]: r for r in read_tsv(report / "residuals_by_group.tsv")}
    for g in ("a", "b"):
        r = np.array([v for s, v in resid.items() if md[s]["group"] == g])
        assert int(by_group[g]["n"]) == len(r)
        assert float(by_group[g]["mae"]) == pytest.approx(np.abs(r).mean(), rel=1e-5)
        assert float(by_group[g]["mean_residual"]) == pytest.approx(r.mean(), rel=1e-5, abs=1e-6)
    assert (report / "residuals_by_group.png").is_file() and (report / "residuals_vs_depth.png").is_file()
    worst = read_tsv(report / "worst_samples.tsv")
    assert worst[0]["sample_id"] == max(resid, key=lambda s: abs(resid[s]))
    counts = biom.load_table(str(data["table"]))
    col = counts.data(worst[0]["sample_id"], axis="sample", dense=True)
    assert int(worst[0]["n_asvs"]) == int((col > 0).sum()) and int(worst[0]["depth"]) == int(col.sum())
    errors = [float(w["abs_error"]) for w in worst]
    assert errors == sorted(errors, reverse=True)


def test_classifier_report_and_group_by(data, tmp_path):
    model = _train(data, tmp_path / "cls", "group", "--classifier")
    pred = tmp_path / "c.tsv"
    assert main(["predict", "--model", str(model), "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", "group", "--report", "--group-by", "site", "--output", str(pred),
                 "--device", "cpu"]) == 0
    report = tmp_path / "c.report"
    md = {r["sample_id"]: r for r in read_tsv(data["md"])}
    rows = read_tsv(pred)
    for r in read_tsv(report / "per_class.tsv"):
        c = r["class"]
        tp = sum(1 for p in rows if p["prediction"] == c and md[p["sample_id"]]["group"] == c)
        predicted = sum(1 for p in rows if p["prediction"] == c)
        actual = sum(1 for p in rows if md[p["sample_id"]]["group"] == c)
        assert int(r["support"]) == actual
        assert float(r["recall"]) == pytest.approx(tp / actual)
        assert float(r["precision"]) == pytest.approx(tp / predicted if predicted else 0.0)
    (site,) = read_tsv(report / "accuracy_by_site.tsv")
    accuracy = np.mean([p["prediction"] == md[p["sample_id"]]["group"] for p in rows])
    assert site["group"] == "site1" and float(site["accuracy"]) == pytest.approx(accuracy)
    assert (report / "calibration.png").is_file() and read_tsv(report / "calibration.tsv")
    worst = read_tsv(report / "worst_samples.tsv")
    p_true = [float(w["prob_true"]) for w in worst]
    assert p_true == sorted(p_true)
    by_id = {p["sample_id"]: p for p in rows}
    first = worst[0]
    assert p_true[0] == pytest.approx(float(by_id[first["sample_id"]][f"prob_{first['true']}"]), rel=1e-5)


def test_report_needs_a_column(data, tmp_path, capsys):
    model = _train(data, tmp_path / "m", "age")
    msg = run_err(capsys, ["predict", "--model", str(model), "--table", str(data["table"]), "--report",
                           "--output", str(tmp_path / "p.tsv"), "--device", "cpu"])
    assert msg.startswith("error:") and "--metadata-column" in msg
    msg = run_err(capsys, ["predict", "--model", str(model), "--table", str(data["table"]), "--metadata",
                           str(data["md"]), "--metadata-column", "age", "--report", "--group-by", "nope",
                           "--output", str(tmp_path / "p.tsv"), "--device", "cpu"])
    assert msg.startswith("error:") and "nope" in msg
