"""`aam pretrain` under torchrun: 2 CPU ranks (gloo) train, checkpoint, and exit cleanly.

The rank processes must end on their own (barrier + process-group teardown after the DDP wrapper is
dropped): a live gloo group at interpreter exit can deadlock, which the deadline below would catch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from aam.data import synthetic
from subprocess_env import child_env

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_torchrun_two_ranks_pretrain_and_exit(tmp_path):
    ds = synthetic.make_dataset(24, n_features=30, seed=5, min_len=20, max_len=28, richness=10, mean_depth=500.0)
    data = synthetic.write_dataset(ds, tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "aam.cli.main", "pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]),
           "--output-dir", str(out), "--device", "cpu", "--epochs", "2", "--batch-size", "4",
           "--embedding-dim", "16", "--attention-heads", "2", "--attention-layers", "1", "--max-bp", "28",
           "--token-limit", "12", "--rarefy-depth", "200", "--patience", "0"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env=child_env(AAM_NO_PROGRESS="1", OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun job did not exit within 300 s (hang at teardown?): {str(exc.stderr)[-1500:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 0/2" in (out / "training.log").read_text()  # rank 0 logs to the run folder
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert [row["epoch"] for row in ck["trainer_state"]["history"]] == [1, 2]
