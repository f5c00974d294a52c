"""Experiment tracking (`--tracker`): where a run's parameters, per-epoch metrics, plots and best checkpoint go.

- tensorboard (default): `<output-dir>/tensorboard`; parameters as text, plots as images (the checkpoint stays
  in checkpoints/).
- mlflow: a run in `--tracking-uri` (default MLFLOW_TRACKING_URI, else a local SQLite store
  `<output-dir>/mlflow.db`, artifacts in `mlartifacts/` beside it; a `file://` folder store works too),
  experiment `--experiment-name`; plots and best.pt as artifacts. View with `mlflow ui --backend-store-uri sqlite:///<output-dir>/mlflow.db`.
- wandb: a Weights & Biases run in `--experiment-name`, offline unless WANDB_MODE says otherwise (sync later
  with `wandb sync <output-dir>/wandb/offline-run-*`); plots as images, best.pt saved with the run.
- none: nothing.

MLflow and W&B are optional extras (`pip install 'aam[mlflow]'`, `'aam[wandb]'`); a missing one is a one-line
error that says so. Every tracker has TensorBoard's `add_scalar`, which the trainer and the memory profile call.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from aam.errors import AAMError
from aam.training.config import TRACKERS


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters -> {"a.b": "value"} (values as short strings, as the trackers store them)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def _require(module: str, extra: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise AAMError(f"--tracker {extra} needs {package}: pip install 'aam[{extra}]' (or pip install {package}), "
                       f"or pick --tracker tensorboard") from None


class Tracker:
    """The interface: parameters once, scalars per step, files at the end."""

    def log_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError

    def log_files(self, plots: list[Path], checkpoint: Path | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log_params(self, params: dict[str, Any]) -> None:
        self.writer.add_text("parameters", "```\n" + json.dumps(params, indent=1, default=str) + "\n```")

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def log_files(self, plots: list[Path], checkpoint: Path | None) -> None:
        import matplotlib.image

        for path in plots:
            self.writer.add_image(f"plots/{path.stem}", matplotlib.image.imread(str(path))[..., :3], dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, output_dir: Path, uri: str | None, experiment: str) -> None:
        self.mlflow = _require("mlflow", "mlflow", "mlflow-skinny")
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
        if uri.startswith("file:"):  # asked for by name: MLflow 3 keeps the folder store behind an opt-out
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow.set_tracking_uri(uri)
        if uri.startswith("sqlite:///") and self.mlflow.get_experiment_by_name(experiment) is None:
            # artifacts beside the database, not in ./mlruns of whatever folder the command ran in
            root = Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
            self.mlflow.create_experiment(experiment, artifact_location=root.as_uri())
        self.mlflow.set_experiment(experiment)
        self.run = self.mlflow.start_run(run_name=output_dir.resolve().name)

    def log_params(self, params: dict[str, Any]) -> None:
        self.mlflow.log_params(_flat(params))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.mlflow.log_metric(tag.replace("/", "."), value, step=step)

    def log_files(self, plots: list[Path], checkpoint: Path | None) -> None:
        for path in plots:
            self.mlflow.log_artifact(str(path), artifact_path="plots")
        if checkpoint is not None:
            self.mlflow.log_artifact(str(checkpoint), artifact_path="checkpoints")

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker(Tracker):
    def __init__(self, output_dir: Path, experiment: str) -> None:
        self.wandb = _require("wandb", "wandb", "wandb")
        self.run = self.wandb.init(project=experiment, name=output_dir.resolve().name, dir=str(output_dir),
                                   mode=os.environ.get("WANDB_MODE", "offline"))
        # W&B drops a step lower than the last one: per-epoch metrics go on their own axis, `epoch`
        self.run.define_metric("epoch")
        self.run.define_metric("epoch_*", step_metric="epoch")

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(_flat(params), allow_val_change=True)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if tag.startswith("epoch_"):
            self.run.log({tag: value, "epoch": step})
        else:
            self.run.log({tag: value}, step=step)

    def log_files(self, plots: list[Path], checkpoint: Path | None) -> None:
        self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in plots})
        if checkpoint is not None:
            self.run.save(str(checkpoint), base_path=str(checkpoint.parent.parent), policy="end")

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, output_dir: Path, uri: str | None = None, experiment: str = "aam") -> Tracker | None:
    """The tracker of `--tracker kind` for a run in `output_dir` (None for none)."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        return TensorBoardTracker(output_dir)
    if kind == "mlflow":
        return MLflowTracker(output_dir, uri, experiment)
    if kind == "wandb":
        return WandbTracker(output_dir, experiment)
    raise AAMError(f"--tracker must be one of {TRACKERS}, got {kind!r}")


def log_scalars(tracker: Tracker | None, prefix: str, values: dict[str, Any], step: int) -> None:
    """The finite numbers of `values` as `prefix/name` at `step`."""
    if tracker is None:
        return
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            tracker.add_scalar(f"{prefix}/{k}", v, step)
