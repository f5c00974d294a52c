"""End to end through `aam.cli.main.main`: pretrain -> train -> predict, resume, and bad input.

Tiny generated data (30 samples, 40 ASVs of 20-30 bp) and a tiny model keep this under a minute on 2 cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import biom
import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.training.metrics import regression_metrics

MODEL = ["--embedding-dim", "16", "--attention-heads", "2", "--attention-layers", "1", "--device", "cpu",
         "--batch-size", "4", "--max-bp", "40", "--token-limit", "16", "--log-every", "1"]


def write_tiny(out: Path, n_samples: int = 30, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    n_feat = 40
    seqs = ["".join(rng.choice(list("ACGT"), size=rng.integers(20, 30))) for _ in range(n_feat)]
    lat = rng.normal(size=n_samples)
    rate = np.exp(np.outer(rng.normal(size=n_feat), lat)) * (rng.random((n_feat, n_samples)) < 0.5)
    counts = rng.poisson(rate * 20) + (np.arange(n_feat)[:, None] == 0) * 300
    ids = [f"S{i}" for i in range(n_samples)]
    out.mkdir(parents=True, exist_ok=True)
    with biom.util.biom_open(str(out / "table.biom"), "w") as fh:
        biom.Table(counts, seqs, ids).to_hdf5(fh, "tiny")
    d = np.abs(lat[:, None] - lat[None, :])
    d = d / d.max()
    with open(out / "dm.tsv", "w") as fh:
        fh.write("\t" + "\t".join(ids) + "\n")
        for i, s in enumerate(ids):
            fh.write(s + "\t" + "\t".join(f"{x:.6f}" for x in d[i]) + "\n")
    with open(out / "md.tsv", "w") as fh:
        fh.write("sample_id\tage\tgroup\tsubject\tsite\n")
        for i, s in enumerate(ids):
            fh.write(f"{s}\t{lat[i] * 10 + 40:.3f}\t{'a' if lat[i] > 0 else 'b'}\tsubj{i // 2}\tsite1\n")
    return {"table": out / "table.biom", "dm": out / "dm.tsv", "md": out / "md.tsv"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    rc = main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(data["dm"]), "--output-dir",
               str(out), "--epochs", "2", "--rarefy-depth", "300", *MODEL])
    assert rc == 0
    return out


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_pretrain_outputs(pretrained):
    for rel in ("checkpoints/best.pt", "checkpoints/last.pt", "plots/training_curves.png",
                "plots/unifrac_pred_vs_true.png", "training.log", "train_samples.txt", "val_samples.txt"):
        assert (pretrained / rel).is_file(), rel
    assert list((pretrained / "tensorboard").iterdir())
    ck = torch.load(pretrained / "checkpoints/best.pt", weights_only=True)
    assert ck["kind"] == "pretrain" and ck["preprocessing"]["rarefy_depth"] == 300
    assert ck["model_config"]["embedding_dim"] == 16 and "rng_state" in ck and "optimizer_state" in ck


def test_train_regression_then_predict(pretrained, data, tmp_path):
    out = tmp_path / "ft"
    rc = main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
               "--pretrained-encoder", str(pretrained / "checkpoints/best.pt"), "--output-dir", str(out),
               "--epochs", "2", "--categorical-columns", "group", "--group-column", "subject", *MODEL])
    assert rc == 0
    val = read_tsv(out / "val_predictions.tsv")
    train_subjects = {f"subj{int(s[1:]) // 2}" for s in (out / "train_samples.txt").read_text().split()}
    assert val and not any(f"subj{int(r['sample_id'][1:]) // 2}" in train_subjects for r in val)
    assert (out / "plots/pred_vs_true.png").is_file()
    # actual values are in original units (ages ~40), not z-scores
    assert abs(np.mean([float(r["actual"]) for r in val]) - 40) < 15
    pred = tmp_path / "pred.tsv"
    rc = main(["predict", "--model", str(out / "checkpoints/best.pt"), "--table", str(data["table"]),
               "--metadata", str(data["md"]), "--metadata-column", "age", "--output", str(pred), "--device", "cpu"])
    assert rc == 0
    rows = read_tsv(pred)
    # evaluation against the metadata column: the metrics of the written predictions, and a plot
    ev = json.loads((tmp_path / "pred.metrics.json").read_text())
    ages = {r["sample_id"]: float(r["age"]) for r in read_tsv(data["md"])}
    expect = regression_metrics(np.array([ages[r["sample_id"]] for r in rows]),
                                np.array([float(r["prediction"]) for r in rows]))
    assert ev["column"] == "age" and ev["n_evaluated"] == len(rows) and ev["n_without_value"] == 0
    for key, value in expect.items():
        assert ev["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-4)
    assert (tmp_path / "pred.png").is_file()
    skipped = read_tsv(tmp_path / "pred.skipped.tsv") if (tmp_path / "pred.skipped.tsv").exists() else []
    assert len(rows) + len(skipped) == 30
    assert all(np.isfinite(float(r["prediction"])) for r in rows)
    # predict on the validation samples reproduces val_predictions.tsv (same preprocessing, same model)
    by_id = {r["sample_id"]: float(r["prediction"]) for r in rows}
    assert val  # val_predictions.tsv is written at the best epoch, the one best.pt holds
    for r in val:
        assert by_id[r["sample_id"]] == pytest.approx(float(r["prediction"]), rel=1e-4, abs=1e-3)


def test_asv_readout_trains_saves_and_predicts(pretrained, data, tmp_path):
    out = tmp_path / "ro"
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--pretrained-encoder", str(pretrained / "checkpoints/best.pt"), "--output-dir", str(out),
                 "--epochs", "1", "--asv-readout", "abundance", *MODEL]) == 0
    ck = torch.load(out / "checkpoints/best.pt", weights_only=True)
    assert ck["model_config"]["asv_readout"] == "abundance"
    assert ck["model_state"]["asv_score.weight"].abs().sum() > 0  # zero-initialised, moved by training
    pred = tmp_path / "ro.tsv"
    assert main(["predict", "--model", str(out / "checkpoints/best.pt"), "--table", str(data["table"]),
                 "--output", str(pred), "--device", "cpu"]) == 0
    by_id = {r["sample_id"]: float(r["prediction"]) for r in read_tsv(pred)}
    for r in read_tsv(out / "val_predictions.tsv"):  # one epoch: best.pt is the epoch that wrote these
        assert by_id[r["sample_id"]] == pytest.approx(float(r["prediction"]), rel=1e-4, abs=1e-3)


def test_train_classifier_from_scratch_then_predict(data, tmp_path):
    out = tmp_path / "cls"
    rc = main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "group",
               "--classifier", "--output-dir", str(out), "--epochs", "1", "--best-metric", "f1", *MODEL])
    assert rc == 0
    header = (out / "val_predictions.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["sample_id", "prediction", "actual", "prob_a", "prob_b"]
    assert (out / "plots/confusion_matrix.png").is_file()
    pred = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(out / "checkpoints/last.pt"), "--table", str(data["table"]),
                 "--output", str(pred), "--device", "cpu", "--batch-size", "3"]) == 0
    rows = read_tsv(pred)
    assert rows and {r["prediction"] for r in rows} <= {"a", "b"}
    assert all(abs(float(r["prob_a"]) + float(r["prob_b"]) - 1) < 1e-4 for r in rows)
    # evaluation: a label never seen in training and a missing value are left out of the metrics
    md = read_tsv(data["md"])
    md[0]["group"], md[1]["group"] = "zzz", ""
    md_path = tmp_path / "md_eval.tsv"
    md_path.write_text("\t".join(md[0]) + "\n" + "".join("\t".join(r.values()) + "\n" for r in md))
    assert main(["predict", "--model", str(out / "checkpoints/last.pt"), "--table", str(data["table"]),
                 "--output", str(pred), "--device", "cpu", "--metadata", str(md_path),
                 "--metadata-column", "group"]) == 0
    ev = json.loads((tmp_path / "p.metrics.json").read_text())
    kept = [r for r in rows if r["sample_id"] not in (md[0]["sample_id"], md[1]["sample_id"])]
    truth = {r["sample_id"]: r["group"] for r in md}
    accuracy = np.mean([truth[r["sample_id"]] == r["prediction"] for r in kept])
    assert ev["n_evaluated"] == len(kept) and ev["n_without_value"] == len(rows) - len(kept)
    assert ev["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert (tmp_path / "p.png").is_file()


def test_predict_metadata_column_errors(data, tmp_path, capsys):
    """--metadata-column without --metadata, and a column with no value for any sample, are one-line errors."""
    model = tmp_path / "m"
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(model), "--epochs", "1", *MODEL]) == 0
    base = ["predict", "--model", str(model / "checkpoints/last.pt"), "--table", str(data["table"]),
            "--output", str(tmp_path / "p.tsv"), "--device", "cpu"]
    msg = run_err(capsys, [*base, "--metadata-column", "age"])
    assert "--metadata-column needs --metadata" in msg
    md = tmp_path / "md_empty.tsv"
    md.write_text("sample_id\tage\n" + "".join(f"X{i}\t1.0\n" for i in range(3)))
    msg = run_err(capsys, [*base, "--metadata", str(md), "--metadata-column", "age"])
    assert msg.startswith("error:") and "no usable value" in msg and "md_empty.tsv" in msg


def _pretrain_args(data, out, *extra):
    return ["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(data["dm"]), "--output-dir",
            str(out), "--epochs", "2", "--rarefy-depth", "300", "--seed", "7", *MODEL, *extra]


def test_resume_mid_epoch_matches_uninterrupted_run(data, tmp_path):
    assert main(_pretrain_args(data, tmp_path / "full")) == 0
    assert main(_pretrain_args(data, tmp_path / "cut", "--max-steps", "3")) == 0
    cut = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert cut["trainer_state"]["global_step"] == 3 and cut["trainer_state"]["batch_in_epoch"] == 3
    assert main(_pretrain_args(data, tmp_path / "cut", "--resume", str(tmp_path / "cut/checkpoints/last.pt"))) == 0
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert a["trainer_state"]["global_step"] == b["trainer_state"]["global_step"]
    for k, v in a["model_state"].items():
        torch.testing.assert_close(v, b["model_state"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_same_seed_same_losses(pretrained, data, tmp_path):
    """The `pretrained` fixture's run again (seed 42 by default): identical losses, epoch by epoch."""
    assert main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(data["dm"]), "--output-dir",
                 str(tmp_path), "--epochs", "2", "--rarefy-depth", "300", *MODEL]) == 0
    h1 = torch.load(pretrained / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
    h2 = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
    assert len(h1) == len(h2) == 2
    for r1, r2 in zip(h1, h2, strict=True):
        for k in ("train_loss", "val_loss", "val_unifrac_r2"):
            assert r1[k] == r2[k]


# ------------------------------------------------------------------------------------------ bad input
def run_err(capsys, args) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    return err[-1]


def test_metadata_missing_samples_lists_ids(data, tmp_path, capsys):
    md = tmp_path / "md.tsv"
    lines = data["md"].read_text().splitlines()
    md.write_text("\n".join(lines[:1] + lines[13:]) + "\n")  # drops S0..S11
    msg = run_err(capsys, ["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(md), "--metadata-column",
                           "age", "--output-dir", str(tmp_path / "o"), "--epochs", "1", "--rarefy-depth", "0", *MODEL])
    assert msg.startswith("error:") and "12 table sample(s) are missing" in msg and "S0" in msg
    assert not (tmp_path / "o/train_samples.txt").exists()  # failed before the split


def test_non_numeric_target_lists_values(data, tmp_path, capsys):
    md = tmp_path / "md.tsv"
    md.write_text(data["md"].read_text().replace("\tsubj0\n", "\tsubj0x\n").replace("S1\t", "S1\tforty-", 1))
    msg = run_err(capsys, ["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(md), "--metadata-column",
                           "age", "--output-dir", str(tmp_path / "o"), "--epochs", "1", "--rarefy-depth", "0", *MODEL])
    assert "non-numeric" in msg and "S1=" in msg and "forty-" in msg


def test_empty_split(data, tmp_path, capsys):
    msg = run_err(capsys, ["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]),
                           "--metadata-column", "age", "--group-column", "site", "--output-dir", str(tmp_path / "o"), "--epochs", "1", "--rarefy-depth", "0", *MODEL])
    assert msg.startswith("error:") and "validation" in msg


def test_batch_size_rules(data, tmp_path, capsys):
    args = _pretrain_args(data, tmp_path / "o")
    i = args.index("--batch-size")
    args[i + 1] = "1"
    assert "--batch-size must be >= 2" in run_err(capsys, args)
    args[i + 1] = "0"
    assert "--batch-size 0: must be a number >= 1" in run_err(capsys, args)
    args[i + 1] = "3"  # odd is fine: the pairwise loss uses every pair of the batch, no pairing of neighbours
    args += ["--max-steps", "1"]
    assert main(args) == 0


def test_wrong_and_corrupt_checkpoints(pretrained, data, tmp_path, capsys):
    pred = ["predict", "--table", str(data["table"]), "--output", str(tmp_path / "p.tsv"), "--device", "cpu"]
    msg = run_err(capsys, [*pred, "--model", str(pretrained / "checkpoints/best.pt")])
    assert "written by aam pretrain" in msg and "aam train" in msg
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert "corrupted" in run_err(capsys, [*pred, "--model", str(bad)])
    torch.save({"model": 1}, tmp_path / "other.pt")
    assert "not an aam checkpoint" in run_err(capsys, [*pred, "--model", str(tmp_path / "other.pt")])
    assert "not found" in run_err(capsys, [*pred, "--model", str(tmp_path / "missing.pt")])


def test_resume_missing_file(data, tmp_path, capsys):
    msg = run_err(capsys, _pretrain_args(data, tmp_path / "o", "--resume", str(tmp_path / "nope/last.pt")))
    assert msg.startswith("error:") and "--resume" in msg and "not found" in msg


def test_predict_sample_without_known_asvs_is_reported(data, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(out), "--epochs", "1", "--max-steps", "1", *MODEL]) == 0
    t = biom.load_table(str(data["table"]))
    mat = t.matrix_data.toarray()
    ids = [str(f) for f in t.ids(axis="observation")]
    new_ids = ids[:-1] + ["HASHED0001"]  # a feature ID that is not a sequence
    mat[:, 0] = 0
    mat[-1, 0] = 500  # sample S0 only has the unknown feature
    path = tmp_path / "new.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        biom.Table(mat, new_ids, list(t.ids())).to_hdf5(fh, "new")
    pred = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(out / "checkpoints/last.pt"), "--table", str(path), "--output", str(pred),
                 "--device", "cpu"]) == 0
    skipped = {r["sample_id"]: r["reason"] for r in read_tsv(tmp_path / "p.skipped.tsv")}
    assert "known sequence" in skipped["S0"]
    assert "S0" not in {r["sample_id"] for r in read_tsv(pred)}


@pytest.mark.slow
def test_compile_model_and_tf32_checkpoint_loads_in_predict(data, tmp_path, monkeypatch):
    """--compile-model (aot_eager keeps the CPU test quick) trains through torch.compile; last.pt holds the plain
    module's keys (no `_orig_mod.`) so predict loads it. --tf32 is a logged no-op on CPU."""
    monkeypatch.setenv("AAM_COMPILE_BACKEND", "aot_eager")
    out = tmp_path / "compiled"
    precision = torch.get_float32_matmul_precision()
    rc = main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
               "--output-dir", str(out), "--epochs", "1", "--max-steps", "1", "--compile-model", "--tf32", *MODEL])
    assert rc == 0
    text = (out / "training.log").read_text()
    assert "training forward compiled with backend aot_eager" in text
    assert "compilation failed" not in text
    assert "--tf32 has no effect on cpu" in text
    assert torch.get_float32_matmul_precision() == precision
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ck["model_state"] and not any("_orig_mod" in k for k in ck["model_state"])
    pred = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(out / "checkpoints/last.pt"), "--table", str(data["table"]),
                 "--output", str(pred), "--device", "cpu"]) == 0
    assert all(np.isfinite(float(r["prediction"])) for r in read_tsv(pred))
