"""The training loop shared by `aam pretrain` and `aam train`.

One optimizer step = `gradient_accumulation_steps` micro-batches; the LR schedule is stepped once per
optimizer step. Loss terms are accumulated on the device and read back once per log interval (no host
sync inside a step). Checkpoints (`best.pt`, `last.pt`) hold everything `--resume` needs to continue
exactly, including mid-epoch (`checkpoint_every`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from aam.errors import AAMError
from aam.models.encoders import encode_token_table
from aam.training import checkpoint as ckpt
from aam.training import metrics as M
from aam.training import plots
from aam.training.batches import LayoutCollate, epoch_order
from aam.training.compiled import CompiledForward, allow_tf32, compile_or_none, resolve_precision
from aam.training.config import TASKS, TENSOR_KEYS, TrainConfig
from aam.training.distributed import distributed_info, max_over_ranks
from aam.training.interrupt import StopRequest, stop_on_signal
from aam.training.losses import (
    EVAL_MASK_SEED,
    MultiTaskLoss,
    mean_terms,
    nucleotide_task,
)
from aam.training.memory import (
    BatchShape,
    MemoryModel,
    PeakMeter,
    fit_by_probing,
    optimizer_state_bytes,
    probe_sizes,
    untouched,
)
from aam.training.optim import default_warmup, make_optimizer, make_scheduler, scale_base_lr
from aam.training.planning import Batching, BatchPlan, plan_batches
from aam.training.profiling import Diagnostics, op_ranges
from aam.training.sharding import (
    is_fsdp,
    load_training_state,
    no_gradient_sync,
    remove_shards,
    save_sharded,
    wrap,
)
from aam.training.tracking import log_scalars, open_tracker
from aam.training.validation import EvalPass, ValidationReport
from aam.utils.io import write_json

log = logging.getLogger("aam")

PROBE_LARGEST = 32  # the memory model's largest probe batch (probes stop earlier when a budget is near)

class Trainer:
    """Fit a model on a train dataset, validate, checkpoint, plot.

    `checkpoint_info` holds `kind`, `model_config` and `preprocessing` copied into every checkpoint.
    `denormalize` maps model-scale regression values to the original units; `class_labels` names classes;
    `target_names` names the columns of a multi-output regression. `batch_plan` (a checkpoint's) replaces
    planning the batches anew, so a resumed run batches as it did.
    """

    def __init__(self, model: nn.Module, loss_fn: MultiTaskLoss, train_set: Dataset, val_set: Dataset | None,
                 collate_fn: Callable, config: TrainConfig, device: torch.device, output_dir: Path,
                 checkpoint_info: dict[str, Any], task: str = "pretrain",
                 denormalize: Callable[[np.ndarray], np.ndarray] | None = None,
                 class_labels: list[str] | None = None, target_names: list[str] | None = None,
                 batch_plan: dict[str, Any] | None = None) -> None:
        if task not in TASKS:
            raise ValueError(task)
        self.config = config
        self.device = device
        self.task = task
        self.loss_fn = loss_fn
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.plot_dir = self.output_dir / "plots"
        self.info = checkpoint_info
        quantiles = loss_fn.config.quantiles if loss_fn.config.loss_type == "quantile" else []
        self.report = ValidationReport(task, denormalize or (lambda a: a), quantiles, class_labels, target_names)
        self.rank, self.world = distributed_info()
        self.is_main = self.rank == 0

        self.model = model.to(device)
        amp = resolve_precision(config.mixed_precision, device)
        if amp == "fp16" and device.type == "cpu":
            raise AAMError("--mixed-precision fp16 needs a CUDA device; use bf16 on CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        # DDP wraps the model; FSDP shards it in place (then self.ddp_model is self.model)
        self.ddp_model: nn.Module = wrap(self.model, config.distributed, device, self.world, self.amp_dtype)
        # torch.compile wraps only the training forward; checkpoints keep saving `self.model` (no `_orig_mod.`)
        self.compiled = CompiledForward(compile_or_none(self.ddp_model, config.compile_backend)
                                        if config.compile_model else None)
        if config.tf32:
            allow_tf32(device)
        self.train_set, self.val_set, self.collate_fn = train_set, val_set, LayoutCollate(collate_fn)
        self.optimizer = make_optimizer(self.model, config.lr, config.weight_decay)
        if config.base_lr_scale != 1.0:
            scale_base_lr(self.optimizer, self.model, config.base_lr_scale)
        # A frozen ASV encoder gives the same embedding to an ASV in every batch: encode each once per run.
        asv_encoder = getattr(self.model, "asv_encoder", None)
        self.cache_asv = asv_encoder is not None and not any(p.requires_grad for p in asv_encoder.parameters())
        self._asv_caches: dict[int, torch.Tensor] = {}
        self._asv_cache: torch.Tensor | None = None

        self.diagnostics = Diagnostics(False, 0, device, self.model, self.output_dir)  # fit() starts the asked ones
        self.plan = BatchPlan.from_dict(batch_plan) if batch_plan else self._plan_batches()
        log.info("%s", self.plan.describe())
        self.batching = Batching(self.plan, train_set, self.collate_fn, config.seed, self.rank, self.world,
                                 config.num_workers, pin_memory=device.type == "cuda")
        self.batches_per_epoch = self.batching.batches_in_epoch(0)
        if self.batches_per_epoch == 0:
            raise AAMError("the training split is empty; lower --test-size or add samples")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accum)
        self.total_steps = self.steps_per_epoch * config.epochs  # budget batches: epoch 0's count (the schedule clamps)
        self.warmup_steps = config.warmup_steps if config.warmup_steps is not None else default_warmup(self.total_steps)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, self.warmup_steps)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best_value: float | None = None
        self.best_epoch, self.bad_epochs = -1, 0
        self.history: list[dict[str, float]] = []
        self.tracker = None
        self.stop = StopRequest()  # set by SIGINT/SIGTERM: stop at the next optimizer step

    @property
    def accum(self) -> int:
        """Micro-batches per optimizer step (the batch plan's)."""
        return self.plan.accumulation

    # ------------------------------------------------------------------ batch planning
    def _plan_batches(self) -> BatchPlan:
        pairwise = self.loss_fn.config.unifrac_weight > 0 and self.task == "pretrain"
        return plan_batches(self.config, self.train_set, self.world, pairwise, self.device, self.fit_memory_model)

    def fit_memory_model(self, meter: PeakMeter, budget: int | None = None) -> MemoryModel:
        """Probe training steps (forward + backward, no optimizer step) of growing batches of epoch 1's order and
        fit the memory model to their peaks (aam.training.memory.fit_by_probing). The random state and the
        buffers are restored afterwards: a probed run trains exactly like one that was not (a test checks)."""
        order = epoch_order(len(self.train_set), True, self.config.seed, 0)
        self._use_asv_cache(self.train_set)

        def probe(size: int) -> tuple[BatchShape, Callable[[], None]]:
            batch = self._to_device(self.collate_fn([self.train_set[i] for i in order[:size]]))
            return BatchShape.of_batch(batch), lambda: self._probe_step(batch)

        # every rank fits the same model: the largest of the ranks' measurements
        reduce = functools.partial(max_over_ranks, device=self.device) if self.world > 1 else None
        optimizer_bytes = 0 if self.optimizer.state else optimizer_state_bytes(self.model)
        with untouched(self.model):
            return fit_by_probing(meter, probe, probe_sizes(len(order), PROBE_LARGEST), budget, optimizer_bytes,
                                  str(self.device), reduce)

    def _probe_step(self, batch: dict[str, Any]) -> None:
        self.ddp_model.train()
        with no_gradient_sync(self.ddp_model, skip=True):
            _, terms = self._forward(self.ddp_model, batch)
            terms["total"].backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        for key in TENSOR_KEYS:
            if isinstance(out.get(key), torch.Tensor):
                out[key] = out[key].to(self.device, non_blocking=True)
        return out

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_forward(self, batch: dict[str, Any]):
        return self.compiled(lambda model: self._forward(model, batch), self.ddp_model)

    def _use_asv_cache(self, dataset: Dataset) -> None:
        """Point the forward at the cached ASV embeddings of `dataset`'s token table (built on first use), when
        the ASV encoder is frozen."""
        if not self.cache_asv:
            return
        table = dataset.token_table
        if id(table) not in self._asv_caches:
            self._asv_caches[id(table)] = encode_token_table(self.model.asv_encoder, table, self.device)
            log.info("ASV encoder frozen: %d ASV sequences encoded once for the run", len(table))
        self._asv_cache = self._asv_caches[id(table)]

    def _uses_nucleotides(self) -> bool:
        return bool(self.model.config.predict_nucleotides and self.loss_fn.config.nuc_weight
                    and self.config.nuc_mask_ratio > 0 and not self.cache_asv)

    def _forward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None,
                 evaluate: bool = False):
        """One model call, with the masked-nucleotide task when it runs (losses.nucleotide_task; evaluation
        masks every unique ASV with a fixed seed and keeps the embeddings clean)."""
        tokens, nuc_tokens, nuc_rows = batch["tokens"], None, None
        if self._uses_nucleotides():
            c = self.config
            task = nucleotide_task(tokens, c.nuc_mask_ratio, c.nuc_mask_strategy, c.nuc_asv_fraction, c.nuc_pass,
                                   generator, evaluate)
            tokens, nuc_tokens, nuc_rows = task.tokens, task.nuc_tokens, task.nuc_rows
            batch["tokens_original"], batch["nuc_mask"] = task.targets, task.mask
        with self._autocast():
            layout = (batch["entry_sample"], batch["entry_pos"], batch["max_slots"]) if "entry_sample" in batch else None
            cached = self._asv_cache[batch["asv_rows"]] if self._asv_cache is not None else None
            self.diagnostics.stage("sample_encoder")
            outputs = model(tokens=tokens, asv_index=batch["asv_index"], offsets=batch["offsets"],
                            counts=batch.get("counts"), categorical=batch.get("categorical"), nuc_tokens=nuc_tokens,
                            nuc_rows=nuc_rows, layout=layout, asv_ids=batch.get("asv_ids"), asv_embeddings=cached)
            self.diagnostics.stage("loss")
            terms = self.loss_fn(outputs, batch)
        return outputs, terms

    # ------------------------------------------------------------------ checkpoints
    def state_payload(self, weights: bool = True) -> dict[str, Any]:
        """What a checkpoint holds; `weights` False leaves out the model and optimizer state (FSDP writes them
        sharded)."""
        weights_state = {"model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict()} \
            if weights else {}
        return {
            **self.info,
            **weights_state,
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
            "trainer_state": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                              "global_step": self.global_step, "best_value": self.best_value,
                              "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                              "best_metric": self.config.best_metric, "history": self.history,
                              "batch_plan": self.plan.to_dict(),
                              "train_config": {k: v for k, v in asdict(self.config).items() if k != "extra"}},
            "rng_state": ckpt.rng_state(),
        }

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / name
        if is_fsdp(self.model):  # every rank writes its shards
            save_sharded(path, self.model, self.optimizer, self.state_payload(weights=False), self.global_step,
                         self.is_main)
        elif self.is_main:
            ckpt.save_checkpoint(path, self.state_payload())
            remove_shards(path)  # of an earlier FSDP part of the run
        return path

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, scaler, counters and RNG states from a checkpoint."""
        data = ckpt.load_checkpoint(path, kind=self.info["kind"])
        if "optimizer_state" not in data or "trainer_state" not in data:
            raise AAMError(f"{path} has no optimizer/trainer state; resume from a last.pt or best.pt of this run")
        load_training_state(self.model, self.optimizer, data)
        self.scheduler.load_state_dict(data["scheduler_state"])
        if self.scaler is not None and data.get("scaler_state"):
            self.scaler.load_state_dict(data["scaler_state"])
        st = data["trainer_state"]
        self.epoch, self.batch_in_epoch, self.global_step = st["epoch"], st["batch_in_epoch"], st["global_step"]
        self.best_value, self.best_epoch, self.bad_epochs = st["best_value"], st["best_epoch"], st["bad_epochs"]
        self.history = list(st["history"])
        if self.batch_in_epoch >= self.batching.batches_in_epoch(self.epoch):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        ckpt.set_rng_state(data["rng_state"])
        log.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.epoch + 1, self.batch_in_epoch,
                 self.global_step)

    # ------------------------------------------------------------------ training
    def _optimizer_step(self) -> torch.Tensor | None:
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        return grad_norm

    def fit(self) -> list[dict[str, float]]:
        """Train until the epochs are done, early stopping triggers or `max_steps` is reached."""
        cfg = self.config
        if self.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if self.plan.memory_model:
                write_json(self.output_dir / "memory_model.json", self.plan.memory_model)
            self.tracker = open_tracker(cfg.tracker, self.output_dir, cfg.tracking_uri, cfg.experiment_name)
            if self.tracker is not None:
                self.tracker.log_params({"train_config": asdict(cfg), **self.info})
            write_json(self.output_dir / "batch_plan.json", self.plan.to_dict())
        self.diagnostics = Diagnostics(self.config.memory_profile, self.config.profile_steps if self.is_main else 0,
                                       self.device, self.model, self.output_dir, self.is_main)
        log.info("training: %d samples, %d batches/epoch, %d optimizer steps (%d warmup), lr %g",
                 len(self.train_set), self.batches_per_epoch, self.total_steps, self.warmup_steps, cfg.lr)
        stopped = False
        with stop_on_signal(self.stop), op_ranges(self.device):
            try:
                while self.epoch < cfg.epochs and not stopped and not self.stop.agree(self.world, self.device):
                    train_row, stopped = self._train_epoch()
                    if stopped and self.batch_in_epoch < self.batches_per_epoch:
                        self.save("last.pt")  # mid-epoch stop: resume continues from this batch
                        break
                    val_row = self.validate()
                    row = {"epoch": self.epoch + 1, **train_row, **val_row}
                    self.history.append(row)
                    improved = self._track_best(row)
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if improved:
                        self.save("best.pt")
                    self.save("last.pt")
                    self._log_epoch(row, improved)
                    if cfg.patience > 0 and self.bad_epochs >= cfg.patience:
                        log.info("early stopping: %s did not improve for %d epochs", self._metric_name(),
                                 cfg.patience)
                        break
            finally:
                self.diagnostics.close(self.tracker, self.global_step)
                self._finish_tracking()
        self.stop.raise_if_asked(f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}",
                                 str(self.checkpoint_dir / "last.pt"))
        return self.history

    def _finish_tracking(self) -> None:
        """Draw the training curves; hand the plots and best checkpoint to the tracker and close it."""
        if self.is_main and self.history:
            plots.training_curves(self.history, self.plot_dir / "training_curves.png")
        if self.tracker is not None:
            best = self.checkpoint_dir / "best.pt"
            self.tracker.log_files(sorted(self.plot_dir.glob("*.png")), best if best.is_file() else None)
            self.tracker.close()
            self.tracker = None

    def close(self) -> None:
        """Drop the DDP and compiled wrappers (before the process group is destroyed at the end of a run)."""
        self.ddp_model = self.model
        self.compiled = CompiledForward(None)

    def _train_epoch(self) -> tuple[dict[str, float], bool]:
        cfg = self.config
        self.ddp_model.train()
        self._use_asv_cache(self.train_set)
        self.batches_per_epoch = self.batching.batches_in_epoch(self.epoch)  # also reseeds random ASV selection
        self.batching.start_epoch_at(self.batch_in_epoch)
        accum = self.accum
        sums: dict[str, torch.Tensor] = {}
        window: dict[str, torch.Tensor] = {}
        n_batches = 0
        window_batches = 0
        samples = 0
        t0 = time.perf_counter()
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.batches_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}",
                       leave=False, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        stopped = False
        self.diagnostics.stage("data")
        for batch in self.batching.train_loader:
            batch = self._to_device(batch)
            self.batch_in_epoch += 1
            last_of_epoch = self.batch_in_epoch == self.batches_per_epoch
            step_now = self.batch_in_epoch % accum == 0 or last_of_epoch
            with no_gradient_sync(self.ddp_model, skip=not step_now):
                _, terms = self._train_forward(batch)
                # a trailing partial accumulation group is divided by its own size
                group = accum if self.batch_in_epoch <= (self.batches_per_epoch // accum) * accum else \
                    self.batches_per_epoch % accum
                loss = terms["total"] / group
                self.diagnostics.stage("backward")
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for k, v in terms.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
                window[k] = window[k] + v if k in window else v
            n_batches += 1
            window_batches += 1
            samples += len(batch["sample_ids"])
            if bar is not None:
                bar.update(1)
            if step_now:
                self.diagnostics.stage("optimizer")
                self._optimizer_step()
            self.diagnostics.end_micro_batch(self.tracker, self.global_step)
            if step_now:
                if self.global_step % cfg.log_every == 0:
                    values = self._reduce(window, window_batches)
                    values["lr"] = self.scheduler.get_last_lr()[0]
                    values["samples_per_s"] = samples * self.world / max(time.perf_counter() - t0, 1e-9)
                    log_scalars(self.tracker, "train", values, self.global_step)
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k not in ("nuc_correct",
                                                                                               "nuc_total")})
                    window, window_batches = {}, 0
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 and not last_of_epoch:
                    self.save("last.pt")
                if self.stop.agree(self.world, self.device) or (cfg.max_steps is not None
                                                                and self.global_step >= cfg.max_steps):
                    stopped = True
                    break
        if bar is not None:
            bar.close()
        elapsed = max(time.perf_counter() - t0, 1e-9)
        row = {f"train_{k}": v for k, v in self._reduce(sums, n_batches).items()}
        row["train_samples_per_s"] = samples * self.world / elapsed
        return row, stopped

    def _reduce(self, sums: dict[str, torch.Tensor], n: int, across_ranks: bool = True) -> dict[str, float]:
        return mean_terms(sums, n, self.world if across_ranks else 1)

    # ------------------------------------------------------------------ validation
    def _metric_name(self) -> str:
        return self.config.best_metric

    def _track_best(self, row: dict[str, float]) -> bool:
        name = self._metric_name()
        key = name if name == "val_loss" else f"val_{name}"
        value = row.get(key)
        if value is None or math.isnan(value):  # e.g. R2 of a validation set with one target value
            value = row.get("val_loss", row.get("train_loss"))
            if value is not None and name != "val_loss":
                log.warning("metric %s is not available; early stopping uses the loss", name)
                name = "val_loss"
        if value is None:
            return False
        if M.is_improvement(name, value, self.best_value):
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch + 1, 0
            return True
        self.bad_epochs += 1
        return False

    @torch.no_grad()
    def predict_loader(self, loader: DataLoader) -> dict[str, Any]:
        """Run the model in eval mode with the fixed evaluation masking; collect losses and outputs."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(EVAL_MASK_SEED)
        collected = EvalPass(self.loss_fn.config, offset=self.loss_fn.pairwise_fn is None)
        for batch in loader:
            batch = self._to_device(batch)
            collected.add(batch, *self._forward(self.model, batch, gen, evaluate=True))
        return collected.result()

    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        loader = self.batching.ordered_loader(self.val_set)
        self._use_asv_cache(self.val_set)
        res = self.predict_loader(loader)
        row = {f"val_{k}": v for k, v in self._reduce(res["sums"], res["n"], across_ranks=False).items()}
        if "pair_pred" in res:
            r = M.regression_metrics(res["pair_true"], res["pair_pred"])
            row.update({"val_unifrac_r2": r["r2"], "val_unifrac_mae": r["mae"]})
        self._last_val = res
        if res["pred"] is not None and res["y"] is not None:
            row.update({f"val_{k}": v for k, v in self._target_metrics(res).items()})
        return row

    def _target_metrics(self, res: dict[str, Any]) -> dict[str, float]:
        return self.report.metrics(res["pred"], res["y"])

    def write_validation_outputs(self) -> None:
        """val_predictions.tsv and the predicted-vs-true / confusion-matrix / UniFrac plots of the last pass."""
        res = getattr(self, "_last_val", None)
        if self.is_main and res is not None:
            self.report.write(res, self.output_dir, self.plot_dir, f"validation (epoch {self.best_epoch})")

    def _log_epoch(self, row: dict[str, float], improved: bool) -> None:
        if not self.is_main:
            return
        for prefix in ("train", "val"):
            vals = {k[len(prefix) + 1:]: v for k, v in row.items() if k.startswith(prefix + "_")}
            log_scalars(self.tracker, f"epoch_{prefix}", vals, row["epoch"])
        shown = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
        log.info("epoch %d/%d %s%s", row["epoch"], self.config.epochs, shown, " *best*" if improved else "")
        if improved:
            self.write_validation_outputs()
