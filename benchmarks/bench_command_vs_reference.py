"""The whole `aam pretrain` command against the reference implementation's `aam pretrain` command (the speed
issue's first row): 1 epoch over 200 oral-age-dev samples drawn with seed 0, D 128, 4 heads x 4 layers, batch 8,
token limit 64, each side's defaults otherwise. Fresh processes, interleaved, AAM_BENCH_ROUNDS rounds (3); the
ratio of medians is reported, with each side's peak resident set (VmHWM of the main process; DataLoader worker
processes are not counted).

Inputs (outside the timings): the samples as an HDF5 BIOM table, and for the reference, which needs precomputed
distances, their unweighted UniFrac as a CSV with sample IDs (computed with aam's native UniFrac, equal to
scikit-bio's). aam computes its UniFrac targets itself from the tree, inside its timed command.

    AAM_REFERENCE_SRC=/work/refaam AAM_REFERENCE_PYTHON=/work/refaam/.venv/bin/python \
    AAM_SHARED_DATA=/work/shared/data PYTHONPATH=src .venv/bin/python -m pytest \
        benchmarks/bench_command_vs_reference.py --benchmark-enable -q -s \
        --benchmark-json=benchmarks/results/<dir>/pretrain_command_vs_reference.json

AAM_REFERENCE_SRC: a runnable copy of the reference (jbk708/aam) with its CLI; AAM_REFERENCE_PYTHON: an
interpreter with its dependencies (click, biom-format, scikit-bio, tensorboard) where our aam is not importable.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import biom
import numpy as np
import pytest

import aam

REPO = Path(__file__).resolve().parents[1]
ORAL = Path(os.environ.get("AAM_SHARED_DATA", REPO.parent / "shared" / "data")) / "oral-age-dev"
REF_SRC = os.environ.get("AAM_REFERENCE_SRC", "")
REF_PY = os.environ.get("AAM_REFERENCE_PYTHON", "")
SAMPLES = int(os.environ.get("AAM_BENCH_SAMPLES", "200"))
ROUNDS = int(os.environ.get("AAM_BENCH_ROUNDS", "3"))
MODEL = ["--epochs", "1", "--batch-size", "8", "--token-limit", "64", "--embedding-dim", "128",
         "--attention-heads", "4", "--attention-layers", "4", "--device", "cpu", "--rarefy-depth", "1000"]

# Runs a click CLI and prints the process's peak resident set; argv[1] is the module holding the entry point.
WRAP = ("import importlib, re, sys; mod, name = sys.argv[1].rsplit(':', 1); "
        "cli = getattr(importlib.import_module(mod), name); rc = 0\n"
        "try:\n    cli(sys.argv[2:], standalone_mode=False)\n"
        "except SystemExit as exc:\n    rc = exc.code or 0\n"
        "print('vmhwm_kb', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "sys.exit(rc)")


def write_oral_subset(path: Path, samples: int = SAMPLES) -> biom.Table:
    """`samples` oral-age-dev samples drawn with seed 0, written to `path` as an HDF5 BIOM table; returned."""
    table = biom.load_table(str(ORAL / "table.biom"))
    ids = list(table.ids())
    keep = [ids[i] for i in sorted(np.random.default_rng(0).choice(len(ids), samples, replace=False))]
    table = table.filter(keep, inplace=False).remove_empty(axis="observation", inplace=False)
    with biom.util.biom_open(str(path), "w") as fh:
        table.to_hdf5(fh, "bench")
    return table


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    if not (ORAL / "table.biom").is_file():
        pytest.skip(f"{ORAL} is absent (set AAM_SHARED_DATA to the shared data folder)")
    if not (REF_SRC and REF_PY and Path(REF_SRC, "aam", "cli", "pretrain.py").is_file()):
        pytest.skip("set AAM_REFERENCE_SRC (the reference's sources with its CLI) and AAM_REFERENCE_PYTHON")
    import pandas as pd

    from aam.ops.unifrac import unifrac

    folder = tmp_path_factory.mktemp("command")
    paths = {"table": folder / "table.biom", "tree": ORAL / "tree.nwk", "unifrac": folder / "unifrac.csv"}
    table = write_oral_subset(paths["table"])
    dm = unifrac(table, str(paths["tree"]), "unweighted")
    pd.DataFrame(dm.data, index=dm.ids, columns=dm.ids).to_csv(paths["unifrac"])
    return paths


def _run(python: str, entry: str, args: list[str], pythonpath: str) -> tuple[float, float]:
    """(wall s, peak RSS MB) of one command in a fresh process."""
    env = dict(os.environ, AAM_NO_PROGRESS="1", PYTHONPATH=pythonpath)
    t0 = time.perf_counter()
    res = subprocess.run([python, "-c", WRAP, entry, *args], capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    return wall, int(re.findall(r"vmhwm_kb (\d+)", res.stdout)[-1]) / 1024


def test_pretrain_command_vs_reference(benchmark, inputs, tmp_path):
    ours = ["pretrain", "--table", str(inputs["table"]), "--tree", str(inputs["tree"]), *MODEL]
    theirs = ["pretrain", "--table", str(inputs["table"]), "--unifrac-matrix", str(inputs["unifrac"]), *MODEL,
              "--seed", "0", "--no-auto-batch-size"]
    runs: dict[str, list[tuple[float, float]]] = {"aam": [], "reference": []}
    for r in range(ROUNDS):  # interleaved: both sides see the same machine load
        runs["aam"].append(_run(sys.executable, "aam.cli.main:cli", [*ours, "--output-dir", str(tmp_path / f"a{r}")],
                                str(Path(aam.__file__).parents[1])))
        runs["reference"].append(_run(REF_PY, "aam.cli:cli", [*theirs, "--output-dir", str(tmp_path / f"r{r}")],
                                      REF_SRC))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    rss = {k: statistics.median(m for _, m in v) for k, v in runs.items()}
    benchmark.extra_info.update(samples=SAMPLES, runs=runs, median_s=wall, median_peak_rss_mb=rss,
                                speedup=wall["reference"] / wall["aam"], memory_ratio=rss["aam"] / rss["reference"])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\naam pretrain {wall['aam']:.1f} s / {rss['aam']:.0f} MB, reference {wall['reference']:.1f} s / "
          f"{rss['reference']:.0f} MB (medians of {ROUNDS}): {wall['reference'] / wall['aam']:.1f}x faster, "
          f"{rss['aam'] / rss['reference']:.2f}x the memory")
