"""`aam explain`: occlusion attributions agree with `aam predict` on the table without the ASV; summary, taxonomy,
classes and bad input."""

from __future__ import annotations

import biom
import numpy as np
import pytest

from aam.cli.main import main
from aam.data.taxonomy import short_label
from test_e2e_cli import MODEL, read_tsv, run_err, write_tiny

WIDE = [*MODEL, "--token-limit", "64"]  # every ASV of a sample is seen, so removing one brings no other in


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), seed=5)


@pytest.fixture(scope="module")
def regressor(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(out), "--epochs", "2", "--rarefy-depth", "300", *WIDE]) == 0
    return out / "checkpoints/last.pt"


def _predict(model, table, out) -> dict[str, float]:
    assert main(["predict", "--model", str(model), "--table", str(table), "--output", str(out), "--device", "cpu",
                 "--no-rarefy"]) == 0
    return {r["sample_id"]: float(r["prediction"]) for r in read_tsv(out)}


def test_attribution_is_the_prediction_change_when_the_asv_is_removed(regressor, data, tmp_path):
    out = tmp_path / "ex.tsv"
    assert main(["explain", "--model", str(regressor), "--table", str(data["table"]), "--output", str(out),
                 "--device", "cpu", "--no-rarefy", "--batch-size", "5"]) == 0
    rows = read_tsv(out)
    full = _predict(regressor, data["table"], tmp_path / "full.tsv")
    assert {r["sample_id"] for r in rows} == set(full)
    for r in rows:
        assert float(r["prediction"]) == pytest.approx(full[r["sample_id"]], rel=1e-4, abs=1e-4)
    # three (sample, ASV) pairs: zero the ASV's reads in that sample and predict again
    table = biom.load_table(str(data["table"]))
    fids = [str(f) for f in table.ids(axis="observation")]
    sids = [str(s) for s in table.ids()]
    rng = np.random.default_rng(0)
    for r in rng.choice(rows, size=3, replace=False):
        m = table.matrix_data.toarray()
        m[fids.index(r["feature_id"]), sids.index(r["sample_id"])] = 0
        path = tmp_path / "without.biom"
        with biom.util.biom_open(str(path), "w") as fh:
            biom.Table(m, fids, sids).to_hdf5(fh, "occluded")
        without = _predict(regressor, path, tmp_path / "without.tsv")
        expect = full[r["sample_id"]] - without[r["sample_id"]]
        assert float(r["attribution"]) == pytest.approx(expect, rel=1e-3, abs=1e-4)
    # summary: importance = sum |attribution| / samples explained, most important first
    summary = read_tsv(tmp_path / "ex.summary.tsv")
    assert {s["feature_id"] for s in summary} == {r["feature_id"] for r in rows}
    for s in summary[:5]:
        attr = np.array([float(r["attribution"]) for r in rows if r["feature_id"] == s["feature_id"]])
        assert float(s["importance"]) == pytest.approx(np.abs(attr).sum() / len(full), rel=1e-4)
        assert float(s["mean_attribution"]) == pytest.approx(attr.mean(), rel=1e-4, abs=1e-6)
        assert int(s["n_samples"]) == len(attr)
    importance = [float(s["importance"]) for s in summary]
    assert importance == sorted(importance, reverse=True)
    assert (tmp_path / "ex.png").stat().st_size > 1000


def test_classifier_with_taxonomy_and_a_one_asv_sample(data, tmp_path, capsys):
    model = tmp_path / "cls"
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "group",
                 "--classifier", "--output-dir", str(model), "--epochs", "1", "--rarefy-depth", "300", *WIDE]) == 0
    model = model / "checkpoints/last.pt"
    table = biom.load_table(str(data["table"]))
    fids = [str(f) for f in table.ids(axis="observation")]
    m = table.matrix_data.toarray()
    m[1:, 0] = 0  # sample S0 keeps one ASV: its only variant is the empty sample
    path = tmp_path / "t.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        biom.Table(m, fids, [str(s) for s in table.ids()]).to_hdf5(fh, "one-asv sample")
    tax = tmp_path / "taxonomy.tsv"
    tax.write_text("Feature ID\tTaxon\tConfidence\n" + "".join(
        f"{f}\tk__Bacteria; p__P{k % 3}; g__G{k}; s__\t0.9\n" for k, f in enumerate(fids)))
    out = tmp_path / "ex.tsv"
    assert main(["explain", "--model", str(model), "--table", str(path), "--output", str(out), "--device", "cpu",
                 "--no-rarefy", "--taxonomy", str(tax), "--target-class", "a"]) == 0
    rows = read_tsv(out)
    assert main(["predict", "--model", str(model), "--table", str(path), "--output", str(tmp_path / "p.tsv"),
                 "--device", "cpu", "--no-rarefy"]) == 0
    prob_a = {r["sample_id"]: float(r["prob_a"]) for r in read_tsv(tmp_path / "p.tsv")}
    for r in rows:
        assert float(r["prediction"]) == pytest.approx(prob_a[r["sample_id"]], abs=1e-5)
        assert r["taxon"].startswith("k__Bacteria; p__P") and np.isfinite(float(r["attribution"]))
        assert abs(float(r["attribution"])) <= 1.0  # a change of probability
    assert [r["feature_id"] for r in rows if r["sample_id"] == "S0"] == [fids[0]]
    assert short_label(fids[4], "k__Bacteria; p__P1; g__G4; s__") == "p__P1; g__G4"  # plot labels
    assert short_label("ACGT" * 5) == "ACGTACGTACGT..." and short_label("ACGT", "") == "ACGT"
    msg = run_err(capsys, ["explain", "--model", str(model), "--table", str(path), "--output", str(out),
                           "--target-class", "zzz"])
    assert msg.startswith("error:") and "zzz" in msg and "a, b" in msg


def test_explain_bad_input(regressor, data, tmp_path, capsys):
    base = ["explain", "--model", str(regressor), "--table", str(data["table"]), "--output", str(tmp_path / "e.tsv")]
    bad = tmp_path / "tax.tsv"
    bad.write_text("id\tlineage\nX\tk__B\n")
    msg = run_err(capsys, [*base, "--taxonomy", str(bad)])
    assert msg.startswith("error:") and "tax.tsv" in msg and "Taxon" in msg
    msg = run_err(capsys, [*base, "--target-class", "a"])
    assert "--target-class applies to classifiers" in msg
    listed = tmp_path / "ids.txt"
    listed.write_text("S3\nS7\nS_unknown\n")
    msg = run_err(capsys, [*base, "--samples", str(listed)])
    assert msg.startswith("error:") and "S_unknown" in msg and "ids.txt" in msg


def test_explain_listed_samples_only(regressor, data, tmp_path):
    listed = tmp_path / "ids.txt"
    listed.write_text("S7\nS3\n")
    out = tmp_path / "e.tsv"
    assert main(["explain", "--model", str(regressor), "--table", str(data["table"]), "--output", str(out),
                 "--device", "cpu", "--samples", str(listed)]) == 0
    assert [r["sample_id"] for r in read_tsv(out)][0] == "S3"  # table order
    assert {r["sample_id"] for r in read_tsv(out)} == {"S3", "S7"}
