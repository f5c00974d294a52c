"""`aam unifrac` as a user runs it, whole command (interpreter start, reading, computing, writing), against the
same job done with scikit-bio: unweighted UniFrac of the first 800 samples of oral-age-dev. Both sides run in
fresh processes, interleaved, 3 rounds each; the ratio of medians is reported.

    AAM_SHARED_DATA=/work/shared/data PYTHONPATH=src .venv/bin/python -m pytest benchmarks/bench_unifrac_command.py \
        --benchmark-enable -q -s --benchmark-json=benchmarks/results/<dir>/unifrac_command.json
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aam

REPO = Path(__file__).resolve().parents[1]
ORAL = Path(os.environ.get("AAM_SHARED_DATA", REPO.parent / "shared" / "data")) / "oral-age-dev"
SAMPLES = int(os.environ.get("AAM_BENCH_SAMPLES", "800"))
ROUNDS = 3

SKBIO = """
import sys, biom, skbio
from skbio.diversity import beta_diversity
table = biom.load_table(sys.argv[1])
tree = skbio.TreeNode.read(sys.argv[2])
ids = table.ids(axis="observation")
tree = tree.shear([t for t in ids if t in {n.name for n in tree.tips()}])
counts = table.matrix_data.T.toarray().astype(int)
dm = beta_diversity("unweighted_unifrac", counts, ids=table.ids(), taxa=list(ids), tree=tree)
dm.write(sys.argv[3])
"""


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    if not (ORAL / "table.biom").is_file():
        pytest.skip(f"{ORAL} is absent (set AAM_SHARED_DATA to the shared data folder)")
    import biom

    table = biom.load_table(str(ORAL / "table.biom"))
    keep = list(table.ids())[:SAMPLES]
    table = table.filter(keep, inplace=False).remove_empty(axis="observation", inplace=False)
    path = tmp_path_factory.mktemp("oral") / "table.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        table.to_hdf5(fh, "bench")
    return path


def _timed(cmd: list[str]) -> float:
    env = dict(os.environ, AAM_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(Path(aam.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    return time.perf_counter() - t0


def test_aam_unifrac_command_vs_scikit_bio(benchmark, subset, tmp_path):
    tree = str(ORAL / "tree.nwk")
    aam_cmd = [sys.executable, "-m", "aam.cli.main", "unifrac", "--table", str(subset), "--tree", tree,
               "--output", str(tmp_path / "aam.tsv")]
    skbio_cmd = [sys.executable, "-c", SKBIO, str(subset), tree, str(tmp_path / "skbio.tsv")]
    times: dict[str, list[float]] = {"aam": [], "skbio": []}
    for _ in range(ROUNDS):  # interleaved: both sides see the same machine load
        times["aam"].append(_timed(aam_cmd))
        times["skbio"].append(_timed(skbio_cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    benchmark.extra_info.update({"samples": SAMPLES, "seconds": times, "median_s": med,
                                 "speedup": med["skbio"] / med["aam"]})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\naam unifrac {med['aam']:.2f} s, scikit-bio {med['skbio']:.2f} s (medians of {ROUNDS}): "
          f"{med['skbio'] / med['aam']:.1f}x")
