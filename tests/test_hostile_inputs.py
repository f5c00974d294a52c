"""Hostile input: each case ends with one line naming the problem, a non-zero exit, no traceback, and no earlier
output changed. Also Ctrl-C during training: last.pt is saved at the next step and the exit code is 130."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import biom
import numpy as np
import pytest
import torch

from aam.cli.main import main
from aam.data.prepare import prepare_table
from aam.errors import InputError
from subprocess_env import child_env
from test_e2e_cli import MODEL, write_tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("hostile"), n_samples=24)


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "run"
    assert main(["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(out), "--epochs", "1", "--rarefy-depth", "300", "--ensemble", "1",
                 *MODEL]) == 0
    return out / "checkpoints/best.pt"


def _sequences(table_path) -> list[str]:
    return [str(f) for f in biom.load_table(str(table_path)).ids(axis="observation")]


def _write_table(path, counts: np.ndarray, features: list[str], samples: list[str]) -> None:
    with biom.util.biom_open(str(path), "w") as fh:
        biom.Table(counts, features, samples).to_hdf5(fh, "hostile")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(capsys, *words: str) -> str:
    text = capsys.readouterr().err
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text and len(errors) == 1, text  # log lines may precede the one error line
    err = errors[0]
    for word in words:
        assert word in err, err
    return err


def _unifrac(data, tree, out, *extra) -> int:
    return main(["unifrac", "--table", str(data["table"]), "--tree", str(tree), "--output", str(out), *extra])


@pytest.mark.parametrize("length", ["-0.5", "inf"])
def test_tree_with_a_negative_or_infinite_branch_is_refused(data, tmp_path, capsys, length):
    tips = _sequences(data["table"])
    tree = tmp_path / "bad.nwk"
    tree.write_text("(" + ",".join(f"{s}:{length if k == 3 else '0.1'}" for k, s in enumerate(tips)) + ");\n")
    capsys.readouterr()
    assert _unifrac(data, tree, tmp_path / "dm.h5") == 2
    _one_line_error(capsys, str(tree), "negative or infinite", tips[3][:10])
    assert not (tmp_path / "dm.h5").exists()


def test_tree_sharing_no_tip_with_the_table_is_refused(data, tmp_path, capsys):
    tree = tmp_path / "other.nwk"
    tree.write_text("((A:0.1,B:0.2):0.1,C:0.3);\n")
    capsys.readouterr()
    assert _unifrac(data, tree, tmp_path / "dm.h5", "--drop-missing-features") == 2
    _one_line_error(capsys, "none of its", str(tree))


@pytest.mark.parametrize("kind", ["relative", "negative", "nan"])
def test_tables_that_are_not_counts(data, tmp_path, kind):
    table = biom.load_table(str(data["table"]))
    counts = table.matrix_data.toarray().astype(float)
    if kind == "relative":
        counts = counts / counts.sum(axis=0, keepdims=True)
    else:
        counts[2, 5] = -3.0 if kind == "negative" else np.nan
    path = tmp_path / f"{kind}.biom"
    _write_table(path, counts, [str(f) for f in table.ids(axis="observation")], [str(s) for s in table.ids()])
    with pytest.raises(InputError) as err:
        prepare_table(path, None, None, 0, 40)
    assert str(path) in str(err.value)
    if kind == "relative":
        assert "non-integer" in str(err.value) and "--rarefy-depth 0" in str(err.value)
        prepared = prepare_table(path, None, 0, 0, 40)  # the fix the message names works
        assert prepared.table.shape[1] == counts.shape[1]
    else:
        assert "negative or non-finite" in str(err.value) and "S5" in str(err.value)


def test_relative_table_refused_by_the_cli(data, tmp_path, capsys):
    table = biom.load_table(str(data["table"]))
    counts = table.matrix_data.toarray().astype(float)
    path = tmp_path / "relative.biom"
    _write_table(path, counts / counts.sum(axis=0, keepdims=True), [str(f) for f in table.ids(axis="observation")],
                 [str(s) for s in table.ids()])
    capsys.readouterr()
    rc = main(["pretrain", "--table", str(path), "--unifrac-matrix", str(data["dm"]), "--output-dir",
               str(tmp_path / "pre"), "--epochs", "1", *MODEL])
    assert rc == 2
    _one_line_error(capsys, "non-integer", "--rarefy-depth 0")


@pytest.mark.parametrize("target", ["table", "model"])
def test_predict_never_overwrites_its_inputs(data, model, tmp_path, capsys, target):
    copy = tmp_path / f"input.{'biom' if target == 'table' else 'pt'}"
    copy.write_bytes((data["table"] if target == "table" else model).read_bytes())
    before = _digest(copy)
    args = ["predict", "--model", str(copy if target == "model" else model), "--table",
            str(copy if target == "table" else data["table"]), "--output", str(copy)]
    capsys.readouterr()
    assert main(args) == 2
    _one_line_error(capsys, f"--{target}", "name a new output file")
    assert _digest(copy) == before


def test_predict_plot_next_to_the_output_cannot_replace_an_input(data, model, tmp_path, capsys):
    md = tmp_path / "pred.metrics.json"  # the metrics file predict writes next to pred.tsv
    md.write_text("sample_id\tage\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--table", str(data["table"]), "--metadata", str(md),
                 "--output", str(tmp_path / "pred.tsv")]) == 2
    _one_line_error(capsys, "--metadata", "metrics.json")
    assert not (tmp_path / "pred.tsv").exists()


def test_embed_distance_matrix_cannot_be_the_metadata(data, model, tmp_path, capsys):
    md = tmp_path / "md.tsv"
    md.write_bytes(data["md"].read_bytes())
    before = _digest(md)
    capsys.readouterr()
    assert main(["embed", "--model", str(model), "--table", str(data["table"]), "--metadata", str(md),
                 "--output", str(tmp_path / "emb.tsv"), "--distance-matrix", str(md)]) == 2
    _one_line_error(capsys, "--distance-matrix", "--metadata")
    assert _digest(md) == before and not (tmp_path / "emb.tsv").exists()


def test_explain_output_cannot_be_the_taxonomy(data, model, tmp_path, capsys):
    tax = tmp_path / "taxonomy.tsv"
    tax.write_text("Feature ID\tTaxon\n")
    capsys.readouterr()
    assert main(["explain", "--model", str(model), "--table", str(data["table"]), "--taxonomy", str(tax),
                 "--output", str(tax)]) == 2
    _one_line_error(capsys, "--taxonomy")
    assert tax.read_text() == "Feature ID\tTaxon\n"


def test_predict_with_every_sample_dropped_is_an_error_and_keeps_earlier_output(data, model, tmp_path, capsys):
    shallow = tmp_path / "shallow.biom"
    features = _sequences(data["table"])
    _write_table(shallow, np.ones((len(features), 3)), features, ["X1", "X2", "X3"])  # 40 reads < depth 300
    out = tmp_path / "pred.tsv"
    out.write_text("sample_id\tprediction\nS0\t41.5\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--table", str(shallow), "--output", str(out)]) == 2
    _one_line_error(capsys, str(shallow), "no sample left to predict", "X1")
    assert out.read_text() == "sample_id\tprediction\nS0\t41.5\n"


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 0, "preempted"),
                                             (signal.SIGUSR1, 0, "preempted")])
def test_a_signal_during_training_saves_last_pt_and_exits(data, tmp_path, sig, code, word):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aam.cli.main", "train", "--table", str(data["table"]), "--metadata",
           str(data["md"]), "--metadata-column", "age", "--output-dir", str(out), "--epochs", "100000",
           "--rarefy-depth", "300", "--ensemble", "1", *MODEL]
    proc = subprocess.Popen(cmd, env=child_env(AAM_NO_PROGRESS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints/last.pt").is_file():  # training has run at least one epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert word in err and "--resume auto" in err and "Traceback" not in err
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert state["trainer_state"]["global_step"] > 0


def _train_into(data, out, *extra) -> int:
    return main(["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                 "--output-dir", str(out), "--epochs", "1", "--rarefy-depth", "300", "--ensemble", "1", *MODEL,
                 *extra])


def test_one_run_per_folder(data, model, tmp_path, capsys):
    run = model.parents[1]
    kept = {p: _digest(p) for p in (run / "checkpoints/best.pt", run / "run_options.json", run / "training.log")}
    capsys.readouterr()
    assert _train_into(data, run, "--epochs", "2") == 2  # the same folder again, no --resume or --overwrite
    _one_line_error(capsys, "already holds a run", "--resume", "--overwrite")
    assert {p: _digest(p) for p in kept} == kept  # nothing of the finished run changed

    other = tmp_path / "run"
    assert _train_into(data, other) == 0
    (other / "notes.txt").write_text("mine")
    assert _train_into(data, other, "--overwrite", "--seed", "7") == 0
    assert (other / "notes.txt").read_text() == "mine"  # only aam's own files are removed
    assert '"seed": 7' in (other / "run_options.json").read_text()
    assert "--overwrite: removed" in capsys.readouterr().err


def test_a_folder_in_use_by_another_process_is_refused(data, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; fh = open(sys.argv[1], 'w'); "
                               "fcntl.flock(fh, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(out / ".aam.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert _train_into(data, out) == 2
        _one_line_error(capsys, "another aam process")
        assert not (out / "run_options.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_resume_refuses_options_that_shape_the_data_or_model(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train_into(data, run) == 0
    last = run / "checkpoints/last.pt"
    before = _digest(last)
    other_md = tmp_path / "md2.tsv"
    other_md.write_bytes(data["md"].read_bytes())
    for change, word in ((["--lr", "0.5"], "--lr"), (["--metadata", str(other_md)], "--metadata"),
                         (["--token-limit", "8"], "--token-limit")):
        args = ["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
                "--output-dir", str(run), "--epochs", "1", "--rarefy-depth", "300", "--ensemble", "1", *MODEL,
                "--resume", str(last)]
        capsys.readouterr()
        assert main([*args, *change]) == 2, change
        _one_line_error(capsys, "differ from the run it continues", word)
        assert _digest(last) == before
    capsys.readouterr()
    assert _train_into(data, run, "--resume", str(last), "--epochs", "2") == 0  # --epochs may change
    assert _digest(last) != before


def test_atomic_writes_use_unique_temporary_files(tmp_path):
    import threading

    from aam.utils.io import atomic_path, write_text_atomic

    target = tmp_path / "out.txt"
    texts = {k: f"writer {k}\n" * 2000 for k in range(4)}
    seen: list[str] = []

    def write(k: int) -> None:
        for _ in range(25):
            write_text_atomic(target, texts[k])
            seen.append(target.read_text())

    threads = [threading.Thread(target=write, args=(k,)) for k in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 100 and set(seen) <= set(texts.values())  # every read found one whole version
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left behind
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "failed.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cv_rerun_with_other_options_is_refused(data, tmp_path, capsys):
    out = tmp_path / "cv"
    args = ["cv", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
            "--output-dir", str(out), "--folds", "2", "--epochs", "1", "--rarefy-depth", "300", "--ensemble", "1",
            "--rf-trees", "20", *MODEL]
    assert main(args) == 0
    summary = _digest(out / "cv_summary.json")
    capsys.readouterr()
    assert main([*args, "--lr", "0.05"]) == 2
    _one_line_error(capsys, "trained with other options", "--lr")
    assert _digest(out / "cv_summary.json") == summary
    assert main([*args, "--epochs", "1"]) == 0  # the same options: a rerun resumes (nothing left to do)
    fresh = [*args[:args.index("--output-dir") + 1], str(tmp_path / "cv2"), *args[args.index("--output-dir") + 2:]]
    capsys.readouterr()
    assert main([*fresh, "--batch-size", "1", "--unifrac-matrix", str(data["dm"])]) == 2  # rejected before training
    assert main(fresh) == 0  # ... so the corrected command is not held to the rejected options


@pytest.mark.parametrize("case", ["continuous_as_classes", "one_class", "one_value"])
def test_targets_nothing_can_be_learnt_from(data, tmp_path, capsys, case):
    md = tmp_path / "md.tsv"
    rows = data["md"].read_text().splitlines()
    out = [rows[0]]
    for row in rows[1:]:
        cells = row.split("\t")
        if case == "one_class":
            cells[2] = "a"
        if case == "one_value":
            cells[1] = "40"
        out.append("\t".join(cells))
    md.write_text("\n".join(out) + "\n")
    extra = ["--classifier", "--metadata-column", "age" if case == "continuous_as_classes" else "group"] \
        if case != "one_value" else ["--metadata-column", "age"]
    capsys.readouterr()
    rc = main(["train", "--table", str(data["table"]), "--metadata", str(md), "--output-dir", str(tmp_path / "run"),
               "--epochs", "1", "--rarefy-depth", "300", "--ensemble", "1", *MODEL, *extra])
    assert rc == 2
    word = {"continuous_as_classes": "drop --classifier", "one_class": "two or more classes",
            "one_value": "nothing to predict"}[case]
    _one_line_error(capsys, str(md), word)
    assert not (tmp_path / "run/checkpoints").exists()


def test_baseline_refuses_overlapping_train_and_validation(data, tmp_path, capsys):
    ids = [f"S{i}" for i in range(24)]
    (tmp_path / "train.txt").write_text("\n".join(ids[:20]) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(ids[10:]) + "\n")
    capsys.readouterr()
    assert main(["rf-baseline", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column",
                 "age", "--train-samples", str(tmp_path / "train.txt"), "--val-samples", str(tmp_path / "val.txt"),
                 "--output", str(tmp_path / "rf.tsv")]) == 2
    _one_line_error(capsys, "10 sample(s) are in both", "disjoint")
    assert not (tmp_path / "rf.tsv").exists()


def test_r2_of_a_constant_target_is_undefined():
    from aam.training.metrics import regression_metrics

    metrics = regression_metrics(np.full(5, 3.0), np.arange(5.0))
    assert np.isnan(metrics["r2"]) and metrics["mae"] == pytest.approx(1.4)


def _baseline_args(data, tmp_path) -> list[str]:
    (tmp_path / "train.txt").write_text("\n".join(f"S{i}" for i in range(16)) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(f"S{i}" for i in range(16, 24)) + "\n")
    return ["rf-baseline", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
            "--train-samples", str(tmp_path / "train.txt"), "--val-samples", str(tmp_path / "val.txt"), "--output",
            str(tmp_path / "rf.tsv")]


@pytest.mark.parametrize("extra, words", [
    (["--max-features", "bogus"], ("--max-features", "sqrt")),
    (["--max-features", "-2"], ("--max-features",)),
    (["--n-estimators", "0"], ("--n-estimators",)),
])
def test_baseline_options_out_of_range(data, tmp_path, capsys, extra, words):
    capsys.readouterr()
    assert main([*_baseline_args(data, tmp_path), *extra]) == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "rf.tsv").exists()


def test_binary_taxonomy_is_refused(data, model, tmp_path, capsys):
    tax = tmp_path / "tax.tsv"
    tax.write_bytes(bytes(range(256)) * 4)
    capsys.readouterr()
    assert main(["explain", "--model", str(model), "--table", str(data["table"]), "--taxonomy", str(tax),
                 "--output", str(tmp_path / "attr.tsv")]) == 2
    _one_line_error(capsys, str(tax), "not text")


@pytest.mark.parametrize("where", ["under_a_file", "demo_samples"])
def test_output_folder_problems_and_demo_size(data, tmp_path, capsys, where):
    capsys.readouterr()
    if where == "under_a_file":
        (tmp_path / "afile").write_text("x")
        rc = _train_into(data, tmp_path / "afile" / "run")
        assert rc == 2
        _one_line_error(capsys, "afile", "Not a directory")
    else:
        assert main(["demo", "--samples", "0", "--output-dir", str(tmp_path / "demo")]) == 2
        _one_line_error(capsys, "--samples")
        assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("extra, words", [
    (["--group-column", "site"], ("1 group(s) of --group-column site",)),  # every sample in one group
    (["--ensemble", "30"], ("--ensemble 30", "or fewer")),
])
def test_ensemble_needs_enough_groups(data, tmp_path, capsys, extra, words):
    capsys.readouterr()
    rc = main(["train", "--table", str(data["table"]), "--metadata", str(data["md"]), "--metadata-column", "age",
               "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--rarefy-depth", "300", *MODEL, *extra])
    assert rc == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "run/checkpoints/best.pt").exists()
