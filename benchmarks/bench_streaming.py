"""Peak memory of `aam pretrain` on a large HDF5 table, with `--stream` (counts read from the file per batch) and
without (the table loaded, rarefied and indexed in memory). Each run is a fresh process (VmHWM, its own peak
resident set) doing 2 training steps, with UniFrac targets from the tree (the per-sample branch state, built in
chunks when streaming, is held in memory either way). The table: the features and tree of a generated dataset,
samples drawn sparse (each holds a feature with probability 0.3), never densified.

    PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_streaming.py --benchmark-enable -q -s \
        --benchmark-json=benchmarks/results/<dir>/streaming.json

Environment: AAM_BENCH_STREAM_SAMPLES (comma list of table sizes, default "20000,100000").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import biom
import numpy as np
import pytest
from scipy.sparse import csc_matrix

import aam
from aam.data import synthetic

SIZES = [int(x) for x in os.environ.get("AAM_BENCH_STREAM_SAMPLES", "20000,100000").split(",")]
SRC = str(Path(aam.__file__).resolve().parents[1])


def write_table(folder: Path, n: int) -> dict[str, Path]:
    ds = synthetic.make_dataset(40, n_features=300, seed=2, min_len=100, max_len=150)
    paths = synthetic.write_dataset(ds, folder)
    features = [str(f) for f in ds.table.ids(axis="observation")]
    rng = np.random.default_rng(0)
    indptr, indices = [0], []
    for lo in range(0, n, 10_000):  # built in blocks: the generator never holds a dense table
        present = rng.random((min(10_000, n - lo), len(features)), dtype=np.float32) < 0.3
        indptr.extend((indptr[-1] + np.cumsum(present.sum(1))).tolist())
        indices.append(np.nonzero(present)[1].astype(np.int32))
    idx = np.concatenate(indices)
    data = rng.poisson(40, idx.size).astype(np.float64) + 1
    matrix = csc_matrix((data, idx, np.asarray(indptr)), shape=(len(features), n))
    paths["table"].unlink()
    with biom.util.biom_open(str(paths["table"]), "w") as fh:
        biom.Table(matrix, features, [f"X{i}" for i in range(n)]).to_hdf5(fh, "bench")
    return paths


def pretrain_peak(paths: dict[str, Path], out: Path, stream: bool) -> tuple[float, float]:
    """(peak RSS MB, wall s) of `aam pretrain --max-steps 2` in a fresh process."""
    code = ("import re, sys; from aam.cli.main import main; rc = main(sys.argv[1:]); "
            "print('vmhwm_kb', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "sys.exit(rc)")
    args = ["pretrain", "--table", str(paths["table"]), "--tree", str(paths["tree"]), "--output-dir", str(out),
            "--device", "cpu", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--embedding-dim", "32",
            "--attention-heads", "2", "--attention-layers", "1", "--token-limit", "32", "--rarefy-depth", "1000",
            "--test-size", "0.0005", *(["--stream"] if stream else [])]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=dict(os.environ, AAM_NO_PROGRESS="1", PYTHONPATH=SRC))
    assert res.returncode == 0, res.stderr[-3000:]
    return int(re.findall(r"vmhwm_kb (\d+)", res.stdout)[-1]) / 1024, time.perf_counter() - t0


@pytest.mark.parametrize("n", SIZES)
def test_pretrain_peak_memory_stream_vs_in_memory(benchmark, tmp_path, n):
    paths = write_table(tmp_path / "data", n)
    rows = {}

    def run() -> None:
        for stream in (True, False):
            rows["stream" if stream else "in_memory"] = pretrain_peak(paths, tmp_path / f"run{stream}{len(rows)}",
                                                                      stream)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(samples=n, table_mb=paths["table"].stat().st_size / 2**20,
                                peak_rss_mb={k: v[0] for k, v in rows.items()},
                                wall_s={k: v[1] for k, v in rows.items()})
    print(f"\n{n} samples ({paths['table'].stat().st_size / 2**20:.0f} MB file): "
          + ", ".join(f"{k} {v[0]:.0f} MB in {v[1]:.0f} s" for k, v in rows.items()))
