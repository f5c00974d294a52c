"""`aam predict --chunk-size`: a 200,000-sample HDF5 table is predicted in chunks under a memory budget, its
peak memory barely grows with the table (VmHWM here: 507 MB at 20k samples, 542 MB at 200k; the whole-table
path: 510 and 1,091 MB), and the predictions equal the whole-table path's."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import biom
import numpy as np
import pytest
from scipy.sparse import csc_matrix

from aam.cli.main import main
from test_e2e_cli import MODEL, write_tiny

N_SAMPLES = 200_000
RSS_BUDGET_MB = 900  # chunked: 542 MB here (torch and the model ~500); the whole-table path took 1,091 MB
GROWTH_MB = 200  # allowed peak-RSS growth from 20k to 200k samples (chunked 35 MB, whole table 581 MB here)


def _big_table(path: Path, features: list[str], n: int) -> None:
    """n samples holding each feature with probability 0.8, Poisson counts (built sparse: never dense)."""
    rng = np.random.default_rng(1)
    present = rng.random((n, len(features)), dtype=np.float32) < 0.8
    indptr = np.concatenate([[0], np.cumsum(present.sum(1))])
    indices = np.nonzero(present)[1].astype(np.int32)
    data = rng.poisson(30, len(indices)).astype(np.float64) + 1
    matrix = csc_matrix((data, indices, indptr), shape=(len(features), n))
    with biom.util.biom_open(str(path), "w") as fh:
        biom.Table(matrix, features, [f"X{i}" for i in range(n)]).to_hdf5(fh, "big")


def _chunked_predict_rss(model: Path, table: Path, out: Path) -> float:
    """Peak RSS (MB) of `aam predict --chunk-size 25000` in a fresh process: VmHWM of its own address space
    (ru_maxrss would carry over the forking pytest process's resident set through exec)."""
    code = ("import re, sys; from aam.cli.main import main; rc = main(sys.argv[1:]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print('maxrss_kb', hwm); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(model), "--table", str(table),
                          "--output", str(out), "--chunk-size", "25000", "--batch-size", "512", "--device", "cpu"],
                         capture_output=True, text=True, env=dict(os.environ, AAM_NO_PROGRESS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split("maxrss_kb")[-1]) / 1024


def _predictions(path: Path) -> dict[str, str]:
    with open(path) as fh:
        return {r["sample_id"]: r["prediction"] for r in csv.DictReader(fh, delimiter="\t")}


@pytest.mark.slow
def test_chunked_predict_memory_and_equality(tmp_path):
    data = write_tiny(tmp_path / "data")
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", "age", "--output-dir", str(tmp_path / "ft"), "--epochs", "1",
                 "--rarefy-depth", "0", *MODEL]) == 0
    model = tmp_path / "ft" / "checkpoints" / "best.pt"
    features = [str(f) for f in biom.load_table(str(data["table"])).ids(axis="observation")]
    big, small = tmp_path / "big.biom", tmp_path / "small.biom"
    _big_table(big, features, N_SAMPLES)
    _big_table(small, features, N_SAMPLES // 10)
    out = tmp_path / "big.tsv"
    rss_small = _chunked_predict_rss(model, small, tmp_path / "small.tsv")
    rss_mb = _chunked_predict_rss(model, big, out)
    streamed = _predictions(out)
    assert len(streamed) == N_SAMPLES
    assert rss_mb < RSS_BUDGET_MB, f"peak RSS {rss_mb:.0f} MB over the {RSS_BUDGET_MB} MB budget"
    assert rss_mb - rss_small < GROWTH_MB, f"peak RSS grew {rss_mb - rss_small:.0f} MB from 20k to 200k samples"
    # the whole-table path on a subset spanning a chunk boundary gives the same predictions
    ids = [f"X{i}" for i in range(24_000, 26_000)]
    sub = biom.load_table(str(big)).filter(ids, axis="sample", inplace=False)
    sub_path = tmp_path / "sub.biom"
    with biom.util.biom_open(str(sub_path), "w") as fh:
        sub.to_hdf5(fh, "sub")
    assert main(["predict", "--model", str(model), "--table", str(sub_path), "--output", str(tmp_path / "sub.tsv"),
                 "--device", "cpu"]) == 0
    whole = _predictions(tmp_path / "sub.tsv")
    assert whole == {s: streamed[s] for s in ids}


def test_chunk_size_needs_hdf5(tmp_path, capsys):
    data = write_tiny(tmp_path / "data")
    table = biom.load_table(str(data["table"]))
    json_path = tmp_path / "t.json"
    json_path.write_text(table.to_json("t"))
    assert main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["md"]),
                 "--metadata-column", "age", "--output-dir", str(tmp_path / "ft"), "--epochs", "1", *MODEL]) == 0
    rc = main(["predict", "--model", str(tmp_path / "ft" / "checkpoints" / "best.pt"), "--table", str(json_path),
               "--output", str(tmp_path / "p.tsv"), "--chunk-size", "10", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc != 0 and "--chunk-size reads an HDF5 BIOM table" in err and "biom convert" in err
