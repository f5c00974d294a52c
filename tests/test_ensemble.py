"""`aam train --ensemble K`: cross-fitted members, out-of-fold validation, averaged predictions, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aam.cli.main import main
from test_e2e_cli import MODEL, read_tsv, write_tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("ens"), n_samples=36)


def _train(data, out, *extra):
    return main(["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--output-dir", str(out),
                 "--epochs", "2", "--rarefy-depth", "300", "--ensemble", "3", *MODEL, *extra])


def _ids(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def _predict(model, data, out) -> dict[str, dict[str, str]]:
    assert main(["predict", "--model", str(model), "--table", str(data["table"]), "--output", str(out)]) == 0
    return {r["sample_id"]: r for r in read_tsv(out)}


@pytest.fixture(scope="module")
def regression(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "run"
    assert _train(data, out, "--metadata-column", "age", "--group-column", "subject") == 0
    return out


def test_members_are_cross_fitted_and_validated_out_of_fold(data, regression):
    ck = torch.load(regression / "checkpoints/best.pt", weights_only=True)
    folds = ck["member_folds"]
    assert len(ck["members"]) == len(folds) == 3
    labelled = sorted(s for f in folds for s in f)
    assert len(labelled) == len(set(labelled))  # every labelled sample validates exactly one member
    subjects = {r["sample_id"]: r["subject"] for r in read_tsv(data["md"])}
    for k, fold in enumerate(folds, start=1):
        member = regression / "members" / f"member{k}"
        assert _ids(member / "val_samples.txt") == fold
        assert sorted(_ids(member / "train_samples.txt")) == sorted(set(labelled) - set(fold))
        assert not {subjects[s] for s in fold} & {subjects[s] for s in _ids(member / "train_samples.txt")}
    oof = read_tsv(regression / "val_predictions.tsv")
    assert sorted(r["sample_id"] for r in oof) == labelled
    err = np.array([float(r["prediction"]) - float(r["actual"]) for r in oof])
    metrics = json.loads((regression / "ensemble_metrics.json").read_text())["out_of_fold"]
    assert metrics["val_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-4)


def test_prediction_is_the_mean_of_the_members(data, regression, tmp_path):
    together = _predict(regression / "checkpoints/best.pt", data, tmp_path / "all.tsv")
    alone = [_predict(regression / "members" / f"member{k}" / "checkpoints/best.pt", data, tmp_path / f"m{k}.tsv")
             for k in (1, 2, 3)]
    for sid, row in together.items():  # z-score target: the mean in model scale is the mean in years
        assert float(row["prediction"]) == pytest.approx(np.mean([float(a[sid]["prediction"]) for a in alone]),
                                                         rel=1e-4, abs=1e-3)


def test_classifier_averages_probabilities(data, tmp_path):
    out = tmp_path / "cls"
    assert _train(data, out, "--metadata-column", "group", "--classifier") == 0
    together = _predict(out / "checkpoints/best.pt", data, tmp_path / "all.tsv")
    alone = [_predict(out / "members" / f"member{k}" / "checkpoints/best.pt", data, tmp_path / f"m{k}.tsv")
             for k in (1, 2, 3)]
    for sid, row in together.items():
        for c in ("a", "b"):
            mean = np.mean([float(a[sid][f"prob_{c}"]) for a in alone])
            assert float(row[f"prob_{c}"]) == pytest.approx(mean, rel=1e-4, abs=1e-5)
        assert row["prediction"] == max(("a", "b"), key=lambda c: float(row[f"prob_{c}"]))


def test_resume_keeps_finished_members(data, regression, tmp_path, capsys):
    before = torch.load(regression / "checkpoints/best.pt", weights_only=True)["members"]
    kept = (regression / "members/member1/checkpoints/best.pt").stat().st_mtime_ns
    (regression / "members/member3/done.json").unlink()  # as if the run was killed during member 3
    assert _train(data, regression, "--metadata-column", "age", "--group-column", "subject", "--resume",
                  str(regression / "checkpoints/last.pt")) == 0
    assert (regression / "members/member1/checkpoints/best.pt").stat().st_mtime_ns == kept
    after = torch.load(regression / "checkpoints/best.pt", weights_only=True)["members"]
    for a, b in zip(before, after, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    capsys.readouterr()
    rc = main(["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
               "--output-dir", str(regression), "--epochs", "2", "--rarefy-depth", "300", "--ensemble", "1", *MODEL, "--resume",
               str(regression / "checkpoints/last.pt")])
    assert rc == 2 and "an ensemble of 3 models, not --ensemble 1" in capsys.readouterr().err


def _setup(n: int, groups: list[str] | None):
    from types import SimpleNamespace

    data = SimpleNamespace(ids=[f"s{i}" for i in range(n)], groups=groups, raw=np.arange(n, dtype=float))
    return SimpleNamespace(data=data, req=SimpleNamespace(labels=SimpleNamespace(classifier=False, group_column="g")),
                           pre=SimpleNamespace(seed=1))


def test_default_ensemble_is_five_members_or_one_per_group_when_fewer():
    from aam.workflows.ensemble import member_folds
    from aam.workflows.requests import DEFAULT_ENSEMBLE

    folds = member_folds(_setup(30, None), None)
    assert len(folds) == DEFAULT_ENSEMBLE == 5 and sorted(s for f in folds for s in f) == sorted(f"s{i}" for i in range(30))
    groups = [f"g{i % 3}" for i in range(30)]
    folds = member_folds(_setup(30, groups), None)
    assert len(folds) == 3  # three groups: three members, each validating on one whole group
    for fold in folds:
        assert len({groups[int(s[1:])] for s in fold}) == 1
    assert len(member_folds(_setup(30, groups), 2)) == 2  # an explicit --ensemble wins


def test_asv_encoder_is_frozen_by_default_only_with_a_pretrained_encoder():
    from aam.workflows.requests import HeadOptions, LabelOptions, TableInput, TrainRequest
    from aam.workflows.train import freeze_asv_encoder

    def request(**head):
        return TrainRequest(output_dir="x", input=TableInput(table="t.biom"),
                            labels=LabelOptions(metadata="m.tsv", metadata_column="age"), head=HeadOptions(**head))

    assert freeze_asv_encoder(request(pretrained_encoder="pre.pt"))
    assert not freeze_asv_encoder(request())
    assert not freeze_asv_encoder(request(pretrained_encoder="pre.pt", freeze_asv_encoder=False))
    assert not freeze_asv_encoder(request(pretrained_encoder="pre.pt", freeze_base=True))  # the whole base is frozen
