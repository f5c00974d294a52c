"""`aam pretrain` under torchrun: 2 CPU ranks (gloo) train, checkpoint, and exit cleanly.

The rank processes must end on their own (barrier + process-group teardown after the DDP wrapper is
dropped): a live gloo group at interpreter exit can deadlock, which the deadline below would catch.
"""

from __future__ import annotations

import json
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


def test_nproc_per_node_gives_the_losses_of_torchrun(tmp_path):
    """`aam pretrain --nproc-per-node 2` starts 2 DDP workers itself: the same losses as the torchrun job."""
    ds = synthetic.make_dataset(24, n_features=30, seed=5, min_len=20, max_len=28, richness=10, mean_depth=500.0)
    data = synthetic.write_dataset(ds, tmp_path / "data")
    args = ["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--device", "cpu", "--epochs", "2",
            "--batch-size", "4", "--embedding-dim", "16", "--attention-heads", "2", "--attention-layers", "1",
            "--max-bp", "28", "--token-limit", "12", "--rarefy-depth", "200", "--patience", "0"]
    env = child_env(AAM_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    runs = {"torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "aam.cli.main", *args, "--output-dir", str(tmp_path / "torchrun")],
            "aam": [sys.executable, "-m", "aam.cli.main", *args, "--nproc-per-node", "2", "--output-dir",
                    str(tmp_path / "aam")]}
    history = {}
    for name, cmd in runs.items():
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, (name, res.stderr[-3000:])
        assert "rank 0/2" in (tmp_path / name / "training.log").read_text()
        history[name] = torch.load(tmp_path / name / "checkpoints/last.pt", weights_only=True)["trainer_state"]["history"]
    for a, b in zip(history["torchrun"], history["aam"], strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    options = json.loads((tmp_path / "aam/run_options.json").read_text())
    assert "nproc_per_node" not in options and "data_parallel" not in options  # launch options, not the run's


def test_fsdp_checkpoints_load_in_one_process_and_resume_on_1_and_2_ranks(tmp_path):
    """--distributed fsdp on 2 ranks writes sharded checkpoints: `aam embed` and `aam predict` read them in one
    process, and the run resumes on 1 rank and again on 2 FSDP ranks."""
    ds = synthetic.make_dataset(24, n_features=30, seed=5, min_len=20, max_len=28, richness=10, mean_depth=500.0)
    data = synthetic.write_dataset(ds, tmp_path / "data")
    model = ["--device", "cpu", "--batch-size", "4", "--embedding-dim", "16", "--attention-heads", "2",
             "--attention-layers", "1", "--max-bp", "28", "--token-limit", "12", "--rarefy-depth", "200",
             "--patience", "0"]
    pre = ["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), *model, "--output-dir",
           str(tmp_path / "pre")]
    env = child_env(AAM_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "aam.cli.main"]
    single = [sys.executable, "-m", "aam.cli.main"]

    def run(cmd):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, (cmd, res.stderr[-3000:])
        return res

    def state(run_dir):
        return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)

    run([*torchrun, *pre, "--epochs", "1", "--distributed", "fsdp"])
    first = state(tmp_path / "pre")
    assert "model_state" not in first and (tmp_path / "pre/checkpoints" / first["sharded"]).is_dir()
    run([*single, "embed", "--model", str(tmp_path / "pre/checkpoints/last.pt"), "--table", str(data["table"]),
         "--output", str(tmp_path / "emb.tsv")])
    assert len((tmp_path / "emb.tsv").read_text().splitlines()) > 10
    run([*single, *pre, "--epochs", "2", "--resume", "auto"])  # 1 process, no FSDP
    second = state(tmp_path / "pre")["trainer_state"]
    assert second["epoch"] == 2 and "model_state" in state(tmp_path / "pre")
    run([*torchrun, *pre, "--epochs", "3", "--distributed", "fsdp", "--resume", "auto"])  # back to 2 FSDP ranks
    last = state(tmp_path / "pre")["trainer_state"]
    assert last["epoch"] == 3 and last["global_step"] == second["global_step"] + first["trainer_state"]["global_step"]
    assert len(list((tmp_path / "pre/checkpoints").glob("last-step*.dcp"))) == 1  # older shards removed

    ft = tmp_path / "ft"
    run([*single, "train", "--table", str(data["table"]), "--metadata", str(data["metadata"]), "--metadata-column",
         "ph", "--ensemble", "1", *model, "--epochs", "1", "--nproc-per-node", "2", "--distributed", "fsdp",
         "--pretrained-encoder", str(tmp_path / "pre/checkpoints/last.pt"), "--output-dir", str(ft)])
    run([*single, "predict", "--model", str(ft / "checkpoints/best.pt"), "--table", str(data["table"]), "--output",
         str(tmp_path / "pred.tsv")])
    assert len((tmp_path / "pred.tsv").read_text().splitlines()) > 10
