"""Multi-output regression: `aam train --metadata-column age,bmi` fits one model with one output per column
(each column scaled on its own), and predict / explain / validation outputs keep the columns apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from aam.cli.main import main
from aam.data.targets import ColumnTransforms, TargetTransform, transform_from_dict
from aam.training.losses import point_prediction, regression_loss
from aam.training.metrics import multi_regression_metrics, regression_metrics
from test_e2e_cli import MODEL, read_tsv, run_err, write_tiny

TRAIN = ["--epochs", "2", "--rarefy-depth", "300", "--target-transform", "zscore", *MODEL]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = write_tiny(tmp_path_factory.mktemp("tiny"), seed=11)
    md = pd.read_csv(d["md"], sep="\t", index_col=0)
    md["bmi"] = 25.0 + 0.2 * (md["age"] - 40.0) ** 2 / 10.0  # another column, other units
    md.loc["S3", "bmi"] = np.nan  # S3 has an age but no bmi: it still trains the age output
    md.loc["S4", ["age", "bmi"]] = np.nan  # S4 has neither: left out
    d["md2"] = d["md"].with_name("md2.tsv")
    md.to_csv(d["md2"], sep="\t", na_rep="not provided")
    return d


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi")
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md2"]), "--metadata-column",
                 "age, bmi", "--output-dir", str(out), *TRAIN]) == 0
    return out


def test_checkpoint_has_one_output_and_one_transform_per_column(model, data):
    ck = torch.load(model / "checkpoints/best.pt", weights_only=True)
    assert ck["model_config"]["out_dim"] == 2
    pre = ck["preprocessing"]
    assert pre["target_column"] == "age,bmi"
    transform = transform_from_dict(pre["target_transform"])
    assert isinstance(transform, ColumnTransforms) and transform.columns == ["age", "bmi"]
    md = pd.read_csv(data["md2"], sep="\t", index_col=0, na_values=["not provided"])
    train = [s.strip() for s in (model / "train_samples.txt").read_text().split()]
    val = [s.strip() for s in (model / "val_samples.txt").read_text().split()]
    assert "S3" in train + val and "S4" not in train + val  # S3 lacks one column, S4 both
    for j, col in enumerate(["age", "bmi"]):  # each column z-scored with its own training mean and SD
        y = md.loc[train, col].dropna().to_numpy(dtype=np.float64)
        assert transform.transforms[j].shift == pytest.approx(y.mean())
        assert transform.transforms[j].scale == pytest.approx(y.std())


def test_validation_metrics_plots_and_predictions_per_column(model):
    hist = torch.load(model / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
    last = hist[-1]
    for col in ("age", "bmi"):
        assert {f"val_{col}_mae", f"val_{col}_rmse", f"val_{col}_r2"} <= set(last)
        assert (model / f"plots/pred_vs_true_{col}.png").stat().st_size > 0
    assert last["val_r2"] == pytest.approx((last["val_age_r2"] + last["val_bmi_r2"]) / 2)
    rows = read_tsv(model / "val_predictions.tsv")
    assert list(rows[0]) == ["sample_id", "prediction_age", "actual_age", "prediction_bmi", "actual_bmi"]
    best = next(r for r in hist if r["epoch"] == torch.load(model / "checkpoints/best.pt",
                                                             weights_only=True)["trainer_state"]["best_epoch"])
    for col in ("age", "bmi"):
        t = np.array([float(r[f"actual_{col}"]) for r in rows])
        p = np.array([float(r[f"prediction_{col}"]) for r in rows])
        ok = np.isfinite(t)  # a missing value is written as nan and left out of that column's metrics
        assert regression_metrics(t[ok], p[ok])["mae"] == pytest.approx(best[f"val_{col}_mae"], rel=1e-3)


def test_predict_writes_every_target_and_scores_the_named_one(model, data, tmp_path):
    out = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(model / "checkpoints/best.pt"), "--table", str(data["table"]),
                 "--output", str(out), "--metadata", str(data["md2"]), "--metadata-column", "bmi",
                 "--device", "cpu"]) == 0
    rows = {r["sample_id"]: r for r in read_tsv(out)}
    assert list(next(iter(rows.values()))) == ["sample_id", "prediction_age", "prediction_bmi"]
    for r in read_tsv(model / "val_predictions.tsv"):  # the same weights and inputs as validation
        for col in ("age", "bmi"):
            assert float(rows[r["sample_id"]][f"prediction_{col}"]) == pytest.approx(
                float(r[f"prediction_{col}"]), rel=1e-4, abs=1e-4)
    import json

    ev = json.loads(out.with_name("pred.metrics.json").read_text())
    assert ev["column"] == "bmi" and ev["n_without_value"] == 2  # S3, S4
    md = pd.read_csv(data["md2"], sep="\t", index_col=0, na_values=["not provided"])["bmi"].dropna()
    pred = np.array([float(rows[s]["prediction_bmi"]) for s in md.index if s in rows])
    assert ev["metrics"]["mae"] == pytest.approx(regression_metrics(md[[s for s in md.index if s in rows]].to_numpy(),
                                                                    pred)["mae"], rel=1e-4)


def test_explain_attributes_the_chosen_target(model, data, tmp_path):
    pred = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(model / "checkpoints/best.pt"), "--table", str(data["table"]),
                 "--output", str(pred), "--device", "cpu"]) == 0
    full = {r["sample_id"]: r for r in read_tsv(pred)}
    ids = tmp_path / "ids.txt"
    ids.write_text("S0\nS1\n")
    for col in ("age", "bmi"):
        out = tmp_path / f"ex_{col}.tsv"
        assert main(["explain", "--model", str(model / "checkpoints/best.pt"), "--table", str(data["table"]),
                     "--output", str(out), "--samples", str(ids), "--target-column", col, "--device", "cpu"]) == 0
        for r in read_tsv(out):
            assert float(r["prediction"]) == pytest.approx(float(full[r["sample_id"]][f"prediction_{col}"]),
                                                           rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(("extra", "expect"), [
    (["--metadata-column", "age,bmi", "--classifier"], "--classifier takes one --metadata-column"),
    (["--metadata-column", "age,bmi", "--loss-type", "quantile"], "--loss-type quantile takes one"),
    (["--metadata-column", "age,bmi", "--best-metric", "mae"], "--best-metric mae mixes the units"),
    (["--metadata-column", "age,age"], "names a column twice"),
    (["--metadata-column", "age,weight"], "no column 'weight'"),
])
def test_bad_multi_output_requests(data, tmp_path, capsys, extra, expect):
    err = run_err(capsys, ["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md2"]),
                           "--output-dir", str(tmp_path / "o"), *extra, *TRAIN])
    assert expect in err


def test_predict_and_explain_refuse_columns_the_model_does_not_predict(model, data, tmp_path, capsys):
    err = run_err(capsys, ["predict", "--model", str(model / "checkpoints/best.pt"), "--table", str(data["table"]),
                           "--output", str(tmp_path / "p.tsv"), "--metadata", str(data["md2"]), "--metadata-column",
                           "group", "--device", "cpu"])
    assert "this model predicts age, bmi" in err
    err = run_err(capsys, ["explain", "--model", str(model / "checkpoints/best.pt"), "--table", str(data["table"]),
                           "--output", str(tmp_path / "e.tsv"), "--target-column", "height", "--device", "cpu"])
    assert "'height' is not a target of this model (age, bmi)" in err


def test_column_transforms_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    y = np.stack([rng.normal(40, 10, 50), rng.lognormal(3, 0.5, 50)], axis=1)
    ct = ColumnTransforms.fit("zscore", y, ["age", "bmi"])
    z = ct.transform(y)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(ct.inverse_transform(z), y, rtol=1e-12)
    back = transform_from_dict(ct.to_dict()).inverse_transform(torch.from_numpy(z))
    np.testing.assert_allclose(back.numpy(), y, rtol=1e-12)
    single = TargetTransform("minmax").fit(y[:, 0])
    assert isinstance(transform_from_dict(single.to_dict()), TargetTransform)


@pytest.mark.parametrize("kind", ["huber", "mse", "mae", "asymmetric"])
def test_missing_values_are_left_out_of_the_loss_and_get_no_gradient(kind):
    g = torch.Generator().manual_seed(1)
    pred = (torch.randn(8, 2, generator=g) * 2).requires_grad_()
    y = torch.randn(8, 2, generator=g)
    y[[1, 4], 1] = float("nan")
    y[6, 0] = float("nan")
    loss = regression_loss(pred, y, kind, over_penalty=2.0)
    ok = torch.isfinite(y)
    per_entry = torch.stack([regression_loss(pred[i:i + 1, j:j + 1], y[i:i + 1, j], kind, over_penalty=2.0)
                             for i, j in ok.nonzero().tolist()])
    assert loss.item() == pytest.approx(per_entry.mean().item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~ok] == 0).all() and (pred.grad[ok] != 0).any()


@pytest.mark.parametrize("kind", ["huber", "mse", "mae", "asymmetric"])
def test_two_output_loss_is_the_mean_of_the_one_output_losses(kind):
    g = torch.Generator().manual_seed(0)
    pred, y = torch.randn(9, 2, generator=g) * 2, torch.randn(9, 2, generator=g)
    both = regression_loss(pred, y, kind, over_penalty=2.0)
    each = [regression_loss(pred[:, j:j + 1], y[:, j], kind, over_penalty=2.0) for j in range(2)]
    assert both.item() == pytest.approx((each[0] + each[1]).item() / 2, rel=1e-6)
    assert point_prediction(pred, None).shape == (9, 2)
    assert point_prediction(pred[:, :1], None).shape == (9,)


def test_multi_regression_metrics_per_column():
    t = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 35.0]])
    p = np.array([[1.5, 10.0], [2.0, 25.0], [2.5, 30.0]])
    m = multi_regression_metrics(t, p, ["a", "b"])
    assert m["a_mae"] == pytest.approx(1 / 3) and m["b_mae"] == pytest.approx(10 / 3)
    assert m["r2"] == pytest.approx((regression_metrics(t[:, 0], p[:, 0])["r2"]
                                     + regression_metrics(t[:, 1], p[:, 1])["r2"]) / 2)


def test_resume_continues_with_the_same_columns_only(data, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md2"]), "--output-dir", str(out), *TRAIN]
    assert main([*base, "--metadata-column", "age,bmi"]) == 0
    last = str(out / "checkpoints/last.pt")
    err = run_err(capsys, [*base, "--metadata-column", "age", "--epochs", "3", "--resume", last])
    assert "differ from the run it continues (--metadata-column 'age,bmi' -> 'age')" in err
    assert main([*base, "--metadata-column", "age,bmi", "--epochs", "3", "--resume", last]) == 0
    hist = torch.load(out / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3] and "val_bmi_r2" in hist[-1]
