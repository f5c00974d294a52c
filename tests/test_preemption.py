"""Preemption: SIGTERM / SIGUSR1 save last.pt at the next step and exit 0; `--resume auto` continues from the
newest checkpoint of the run folder (or starts the run there when it has none)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from aam.cli.main import main
from aam.data.synthetic import make_dataset, write_dataset
from aam.training.trainer import Trainer


@pytest.fixture(scope="module")
def amplicons(tmp_path_factory):
    return write_dataset(make_dataset(36, n_features=80, seed=4, min_len=30, max_len=40, richness=20),
                         tmp_path_factory.mktemp("amplicons"))


def _pretrain(data, out, *extra) -> list[str]:
    return ["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--output-dir", str(out),
            "--epochs", "2", "--batch-size", "4", "--embedding-dim", "16", "--attention-heads", "2",
            "--attention-layers", "1", "--max-bp", "40", "--device", "cpu", "--seed", "3", *extra]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preempted_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(amplicons, tmp_path, monkeypatch, capsys,
                                                                        sig):
    assert main(_pretrain(amplicons, tmp_path / "full")) == 0
    step = Trainer._optimizer_step

    def step_then_signal(self):  # the scheduler's signal arrives during step 3 (mid-epoch: 7 batches an epoch)
        out = step(self)
        if self.global_step == 3:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_signal)
    cut = tmp_path / "cut"
    capsys.readouterr()
    assert main(_pretrain(amplicons, cut, "--resume", "auto")) == 0  # a new folder: auto starts the run
    assert "preempted" in capsys.readouterr().err
    state = torch.load(cut / "checkpoints/last.pt", weights_only=True)["trainer_state"]
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 3, 3)
    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    assert main(_pretrain(amplicons, cut, "--resume", "auto")) == 0  # the requeued job's command, unchanged
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(cut / "checkpoints/last.pt", weights_only=True)
    assert a["trainer_state"]["global_step"] == b["trainer_state"]["global_step"] > 3
    for k, v in a["model_state"].items():
        torch.testing.assert_close(v, b["model_state"][k], rtol=0, atol=0, msg=k)


def test_resume_auto_restarts_a_run_that_stopped_before_its_first_checkpoint(amplicons, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_options.json").write_text("{}")  # a run that died while preparing its data
    assert main(_pretrain(amplicons, out, "--resume", "auto", "--epochs", "1")) == 0
    assert (out / "checkpoints/last.pt").is_file()
