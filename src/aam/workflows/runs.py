"""What every training run does around the trainer: the run folder, logging, seeding, distributed start-up,
resuming, the trainer's and the encoder's configuration, and the closing report."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from aam.data.prepare import Preprocessing
from aam.errors import AAMError, InputError
from aam.models import ModelConfig
from aam.training import checkpoint as ckpt
from aam.training.config import TrainConfig
from aam.training.distributed import global_pairwise_loss, init_distributed
from aam.training.trainer import Trainer
from aam.utils.io import write_json, write_lines
from aam.utils.runtime import seed_everything, setup_logging
from aam.workflows.requests import (
    Hardware,
    LossOptions,
    ModelOptions,
    Preprocess,
    TrainingOptions,
    flat_options,
)

log = logging.getLogger("aam")
R = TypeVar("R")


@dataclass(frozen=True)
class Run:
    out: Path
    device: torch.device
    world: int


# What a pretrain/train run writes into its --output-dir: --overwrite removes these and nothing else.
RUN_FILES = ("run_options.json", "training.log", "checkpoints", "members", "plots", "tensorboard",
             "val_predictions.tsv", "train_samples.txt", "val_samples.txt", "ensemble_metrics.json", "done.json",
             "batch_plan.json", "memory_model.json", "memory_profile.json", "profile", "mlflow.db", "mlartifacts",
             "wandb")
_LOCKS: dict[Path, int] = {}  # run folders this process holds the advisory lock of


def claim_folder(out: Path, resume: str | None, overwrite: bool) -> None:
    """One run per folder: a folder holding a run (run_options.json) is refused unless the run is resumed or
    --overwrite replaces it; an advisory lock (fcntl) keeps a second process out while this one runs."""
    if (out / "run_options.json").is_file() and not resume:
        if not overwrite:
            raise AAMError(f"--output-dir {out} already holds a run; continue it with --resume "
                           f"{out / 'checkpoints/last.pt'}, replace it with --overwrite, or name a new folder")
        removed = [name for name in RUN_FILES if (out / name).exists()]
        for name in removed:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log.warning("--overwrite: removed %s from %s", ", ".join(removed), out)
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    if key in _LOCKS:
        return
    import fcntl

    fd = os.open(out / ".aam.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AAMError(f"--output-dir {out}: another aam process is writing there; wait for it or name a new "
                       "folder") from None
    _LOCKS[key] = fd  # held until the process exits


# Options a resumed run may change; every other option must match the run it continues (run_options.json).
MAY_CHANGE_ON_RESUME = frozenset({"output_dir", "resume", "overwrite", "epochs", "patience", "max_steps",
                                  "checkpoint_every", "log_every", "device", "kernels", "num_workers",
                                  "compile_model", "tf32", "mixed_precision", "memory_profile",
                                  "profile", "distributed"})
PATH_OPTIONS = frozenset({"table", "sequences", "metadata", "tree", "unifrac_matrix", "unifrac_ids",
                          "pretrained_encoder"})


def option_change(key: str, old: Any, new: Any) -> str:
    """How an option differs from the run's record, as the error messages show it."""
    return f"--{key.replace('_', '-')} {old!r} -> {new!r}"


def check_resume_options(options: dict[str, Any], resume: str) -> None:
    """Refuse to resume with an option that shapes the data or the model set differently from the run being
    continued (its run_options.json, next to checkpoints/); an option left out (None) keeps the run's value."""
    saved_path = Path(resume).resolve().parents[1] / "run_options.json"
    if not saved_path.is_file():
        log.warning("--resume %s: no run_options.json next to the checkpoint; options not compared", resume)
        return
    saved = json.loads(saved_path.read_text())
    now = json.loads(json.dumps(options, default=str))
    differ = []
    for key, value in now.items():
        if key in MAY_CHANGE_ON_RESUME or key not in saved or value is None:
            continue
        old = saved[key]
        if key in PATH_OPTIONS and old is not None:
            same = os.path.realpath(str(value)) == os.path.realpath(str(old))
        else:
            same = value == old
        if not same:
            differ.append(option_change(key, old, value))
    if differ:
        free = sorted("--" + k.replace("_", "-") for k in MAY_CHANGE_ON_RESUME - {"output_dir", "resume", "overwrite"})
        raise AAMError(f"--resume {resume}: {len(differ)} option(s) differ from the run it continues "
                       f"({'; '.join(differ[:4])}); resume with the run's options (only {', '.join(free)} may "
                       "change) or start a new run")


def start_run(request: Any, hardware: Hardware, seed: int) -> Run:
    """Process group (under torchrun), the run folder claimed (see claim_folder), logging to
    <output_dir>/training.log, seeds, run_options.json."""
    out = Path(request.output_dir)
    rank, world, device = init_distributed(hardware.device)
    if request.training.resume:
        check_resume_options(flat_options(request), request.training.resume)
    if rank == 0:
        claim_folder(out, request.training.resume, request.training.overwrite)
    setup_logging(out if rank == 0 else None, quiet=rank != 0)
    seed_everything(seed)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run_options.json", flat_options(request))
    log.info("device %s, kernels %s, seed %d%s", device, hardware.kernels, seed,
             f", rank {rank}/{world}" if world > 1 else "")
    return Run(out, device, world)


AUTO_RESUME = "auto"


def resolve_resume(request: R) -> R:
    """--resume auto: the newest checkpoint of --output-dir (checkpoints/last.pt or best.pt), or, when it has none
    (a new folder, or a run stopped before its first checkpoint), a fresh start in it. What a requeued job runs."""
    if request.training.resume != AUTO_RESUME:
        return request
    folder = Path(request.output_dir) / "checkpoints"
    found = [p for p in (folder / "last.pt", folder / "best.pt") if p.is_file()]
    if found:
        training = dataclasses.replace(request.training, resume=str(max(found, key=lambda p: p.stat().st_mtime)))
    else:
        training = dataclasses.replace(request.training, resume=None, overwrite=True)
    return dataclasses.replace(request, training=training)


def load_resume(path: str | None, kind: str) -> dict[str, Any] | None:
    """The checkpoint --resume names, or None."""
    if not path:
        return None
    if not Path(path).is_file():
        raise InputError(f"--resume {path}: file not found; give the run's checkpoints/last.pt")
    return ckpt.load_checkpoint(path, kind)


def saved_plan(resume: dict[str, Any] | None) -> dict[str, Any] | None:
    """The batch plan of the checkpoint a run resumes (None: plan anew; checkpoints before plans used --batch-size)."""
    return resume["trainer_state"].get("batch_plan") if resume and "trainer_state" in resume else None


def train_config(training: TrainingOptions, loss: LossOptions, hardware: Hardware, best_metric: str,
                 base_lr_scale: float = 1.0) -> TrainConfig:
    return TrainConfig(
        epochs=training.epochs, batch_size=training.batch_size, lr=training.lr, weight_decay=training.weight_decay,
        warmup_steps=training.warmup_steps, gradient_accumulation_steps=training.gradient_accumulation_steps,
        max_grad_norm=training.max_grad_norm or None, mixed_precision=hardware.mixed_precision,
        patience=training.patience, compile_model=hardware.compile_model, tf32=hardware.tf32,
        best_metric=best_metric, nuc_mask_ratio=loss.nuc_mask_ratio, nuc_mask_strategy=loss.nuc_mask_strategy,
        nuc_asv_fraction=loss.nuc_asv_fraction, nuc_pass=loss.nuc_pass, log_every=max(1, training.log_every),
        checkpoint_every=training.checkpoint_every, max_steps=training.max_steps, seed=training.seed,
        num_workers=hardware.num_workers, progress=os.environ.get("AAM_NO_PROGRESS") is None,
        base_lr_scale=base_lr_scale, max_tokens=training.max_tokens, max_memory_gb=training.max_memory_gb,
        auto_batch_size=training.auto_batch_size, target_effective_batch_size=training.target_effective_batch_size,
        tracker=training.tracker, tracking_uri=training.tracking_uri, experiment_name=training.experiment_name,
        memory_profile=hardware.memory_profile, profile_steps=hardware.profile, distributed=hardware.distributed,
    )


def preprocessing(opts: Preprocess, seed: int, kernels: str, task: str) -> Preprocessing:
    if opts.token_limit < 1 or opts.max_bp < 1:
        raise AAMError("--token-limit and --max-bp must be positive")
    return Preprocessing(rarefy_depth=opts.rarefy_depth, rarefy_seed=seed, max_bp=opts.max_bp,
                         token_limit=opts.token_limit, asv_sampling=opts.asv_sampling, seed=seed, kernels=kernels,
                         task=task)


def encoder_config(opts: ModelOptions, pre: Preprocessing, kernels: str) -> ModelConfig:
    """The SequenceEncoder of --embedding-dim/--attention-*: one width, the same heads and layers per stack."""
    heads, layers = opts.attention_heads, opts.attention_layers
    return ModelConfig(
        kind="encoder", max_bp=pre.max_bp, token_limit=pre.token_limit, embedding_dim=opts.embedding_dim,
        dropout=opts.dropout, asv_heads=heads, asv_layers=opts.asv_layers if opts.asv_layers is not None else layers,
        sample_heads=heads, sample_layers=layers, encoder_heads=heads, encoder_layers=layers,
        count_embedding=opts.count_embedding_method if opts.count_embedding else "none",
        gradient_checkpointing=opts.gradient_checkpointing, kernels=kernels,
    )


def pairwise_hook(world: int, dm: Any):
    """Under DDP the UniFrac loss sees every rank's samples (cross-rank pairs)."""
    if world <= 1 or dm is None:
        return None

    def pairwise(emb, batch, transform, scale, backend, adjust_target=None):
        return global_pairwise_loss(emb.float(), list(batch["sample_ids"]), dm, transform=transform, scale=scale,
                                    backend=backend, adjust_target=adjust_target)

    return pairwise


def check_batch_size(batch_size: int, pairwise: bool) -> None:
    if batch_size < 1:
        raise AAMError(f"--batch-size must be >= 1, got {batch_size}")
    if pairwise and batch_size < 2:
        raise AAMError("--batch-size must be >= 2 with the pairwise UniFrac loss (a batch of 1 has no pairs)")


def write_split(out: Path, train_ids: list[str], val_ids: list[str]) -> None:
    write_lines(out / "train_samples.txt", train_ids)
    write_lines(out / "val_samples.txt", val_ids)


def report(trainer: Trainer, history: list[dict[str, float]], keys: list[str]) -> dict[str, Any]:
    """The run's summary (best epoch and its metrics, where the checkpoints and plots are), also logged."""
    last = history[-1] if history else {}
    best = next((row for row in history if row["epoch"] == trainer.best_epoch), last)
    summary = {"epochs": len(history), "best_epoch": trainer.best_epoch,
               "metrics": {k: best[k] for k in keys if k in best},
               "best": str(trainer.checkpoint_dir / "best.pt"), "last": str(trainer.checkpoint_dir / "last.pt"),
               "plots": str(trainer.plot_dir)}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in summary["metrics"].items())
    log.info("done: best epoch %s: %s; checkpoints in %s, plots in %s", trainer.best_epoch, shown,
             trainer.checkpoint_dir, trainer.plot_dir)
    return summary
