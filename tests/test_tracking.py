"""Experiment tracking (--tracker): MLflow's local store receives parameters, per-epoch metrics, plots and the
best checkpoint of a real run; TensorBoard gets the same metrics and the plots; a missing extra is a one-line
error."""

from __future__ import annotations

import builtins
import sys

import pytest

from aam.cli.main import main
from aam.errors import AAMError
from aam.training.tracking import open_tracker
from test_e2e_cli import MODEL, write_tiny


def _pretrain(tmp_path, *extra: str) -> int:
    data = write_tiny(tmp_path / "data")
    return main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(data["dm"]), "--output-dir",
                 str(tmp_path / "run"), "--epochs", "2", *MODEL, *extra])


@pytest.mark.parametrize("store", ["sqlite", "folder"])
def test_mlflow_local_store_gets_params_metrics_plots_and_best_checkpoint(tmp_path, store, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'aam[mlflow]')")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # nothing may land in the folder the command runs in
    uri = (tmp_path / "store").as_uri() if store == "folder" else None
    assert _pretrain(tmp_path, "--tracker", "mlflow", *(["--tracking-uri", uri] if uri else []),
                     "--experiment-name", "oral") == 0
    store = uri or f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("oral")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["train_config.epochs"] == "2" and params["model_config.embedding_dim"] == "16"
    history = client.get_metric_history(run.info.run_id, "epoch_val.loss")
    assert [m.step for m in history] == [1, 2]
    assert client.get_metric_history(run.info.run_id, "train.loss")  # per optimizer step too
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/training_curves.png", "plots/unifrac_pred_vs_true.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert not (tmp_path / "run" / "tensorboard").exists() and not list((tmp_path / "cwd").iterdir())


def test_tensorboard_tracker_gets_metrics_and_plots(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _pretrain(tmp_path) == 0  # the default tracker
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("epoch_val/loss")] == [1, 2]
    assert "plots/training_curves" in events.Tags()["images"]


def test_wandb_offline_run_gets_plots_and_best_checkpoint(tmp_path, monkeypatch):
    """Runs where the wandb extra is installed (CI installs only mlflow's): an offline run in the run folder
    with the plots as images and best.pt saved; epoch metrics on their own `epoch` axis (W&B drops a step lower
    than the last, and per-step metrics run ahead of the epoch count)."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'aam[wandb]')")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert _pretrain(tmp_path, "--tracker", "wandb", "--experiment-name", "aam-test") == 0
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert (run / "files" / "checkpoints" / "best.pt").is_file()
    assert {p.name.split("_")[0] for p in (run / "files" / "media" / "images" / "plots").iterdir()} >= {
        "training", "unifrac"}


def test_missing_extra_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(AAMError, match=r"pip install 'aam\[wandb\]'"):
        open_tracker("wandb", tmp_path)
    assert _pretrain(tmp_path, "--tracker", "wandb") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --tracker wandb needs wandb") and "Traceback" not in "\n".join(err)
