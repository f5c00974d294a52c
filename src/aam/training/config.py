"""`TrainConfig`: how the trainer runs (schedule, precision, early stopping, checkpoints; stored in checkpoints),
and `LossConfig`: which loss terms and how they are weighted. Plain dataclasses without torch, so the CLI's
`--help` reads their defaults without importing it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aam.errors import AAMError

TASKS = ("pretrain", "regression", "classification")
BEST_METRICS = ("val_loss", "r2", "mae", "rmse", "accuracy", "f1", "unifrac_r2", "nuc_accuracy")
DISTRIBUTED_MODES = ("ddp", "fsdp")  # under torchrun (aam.training.sharding)
PRECISIONS = ("none", "fp32", "bf16", "fp16", "auto")  # none = fp32; auto: bf16 where it runs faster (compiled.py)
NUC_PASSES = ("shared", "separate")  # masked-nucleotide task: in the one ASV-encoder pass, or a second
TRACKERS = ("tensorboard", "mlflow", "wandb", "none")  # aam.training.tracking
REGRESSION_LOSSES = ("huber", "mse", "mae", "quantile", "asymmetric")
UNIFRAC_TRANSFORMS = ("identity", "tanh")
TENSOR_KEYS = ("tokens", "asv_index", "offsets", "counts", "unifrac_target", "y", "categorical", "entry_sample",
               "entry_pos", "asv_rows", "asv_ids")


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    # LR of a SequencePredictor's pretrained `base_model` relative to `lr` (the new heads): fine-tuning at the
    # heads' rate with still-random heads degrades the pretrained features.
    base_lr_scale: float = 1.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "none"
    compile_model: bool = False
    compile_backend: str = field(default_factory=lambda: os.environ.get("AAM_COMPILE_BACKEND", "inductor"))
    tf32: bool = False
    patience: int = 10
    best_metric: str = "val_loss"
    nuc_mask_ratio: float = 0.15
    nuc_mask_strategy: str = "random"
    nuc_asv_fraction: float = 0.25
    nuc_pass: str = "shared"  # docs/SCIENCE.md "One ASV-encoder pass": 1.2x faster, the same fine-tuning MAE
    log_every: int = 10
    checkpoint_every: int = 0
    max_steps: int | None = None
    seed: int = 42
    num_workers: int = 0
    distributed: str = "ddp"  # under torchrun: DDP, or FSDP2 (aam.training.sharding)
    # batch sizing (aam.training.planning): budgets per batch, or the largest fixed batch under the budget
    max_tokens: int | None = None
    max_memory_gb: float | None = None
    auto_batch_size: bool = False
    target_effective_batch_size: int | None = None
    # diagnostics: peak memory per stage of the first steps; a torch.profiler trace of N steps
    memory_profile: bool = False
    profile_steps: int = 0
    progress: bool = True
    tracker: str = "tensorboard"
    tracking_uri: str | None = None  # MLflow; None: MLFLOW_TRACKING_URI or sqlite <output-dir>/mlflow.db
    experiment_name: str = "aam"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise AAMError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise AAMError("--gradient-accumulation-steps must be >= 1")
        if self.mixed_precision not in PRECISIONS:
            raise AAMError(f"--mixed-precision must be one of {PRECISIONS}")
        if self.mixed_precision == "fp32":  # the --precision spelling of "no autocast"
            self.mixed_precision = "none"
        if self.nuc_pass not in NUC_PASSES:
            raise AAMError(f"--nuc-pass must be one of {NUC_PASSES}, got {self.nuc_pass!r}")
        if self.tracker not in TRACKERS:
            raise AAMError(f"--tracker must be one of {TRACKERS}, got {self.tracker!r}")
        if self.best_metric not in BEST_METRICS:
            raise AAMError(f"--best-metric must be one of {BEST_METRICS}")
        if self.base_lr_scale < 0:
            raise AAMError(f"--base-lr-scale must be >= 0, got {self.base_lr_scale}")
        if self.epochs < 1:
            raise AAMError("--epochs must be >= 1")
        if self.distributed not in DISTRIBUTED_MODES:
            raise AAMError(f"--distributed must be one of {DISTRIBUTED_MODES}, got {self.distributed!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise AAMError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise AAMError(f"--max-memory-gb must be > 0, got {self.max_memory_gb}")
        if self.target_effective_batch_size is not None:
            if self.target_effective_batch_size < 1:
                raise AAMError(f"--target-effective-batch-size must be >= 1, got {self.target_effective_batch_size}")
            if self.gradient_accumulation_steps != 1:
                raise AAMError("--target-effective-batch-size sets the gradient accumulation itself; drop "
                               "--gradient-accumulation-steps")

    @property
    def budgeted(self) -> bool:
        """Batches are sized by a budget (tokens or memory) rather than by --batch-size alone."""
        return self.max_tokens is not None or self.max_memory_gb is not None or self.auto_batch_size


@dataclass
class LossConfig:
    """Which terms and how they are weighted."""

    unifrac_weight: float = 1.0
    unifrac_transform: str = "identity"
    unifrac_scale: float = 10.0
    nuc_weight: float = 1.0
    count_weight: float = 1.0
    count_target: str = "log"
    target_weight: float = 1.0
    loss_type: str = "huber"
    quantiles: list[float] = field(default_factory=list)
    over_penalty: float = 1.0
    under_penalty: float = 1.0
    class_weights: list[float] | None = None
    classifier: bool = False
    kernels: str = "auto"

    def __post_init__(self) -> None:
        if self.unifrac_transform not in UNIFRAC_TRANSFORMS:
            raise AAMError(f"--unifrac-transform must be one of {UNIFRAC_TRANSFORMS}, got {self.unifrac_transform!r}")
        if self.loss_type not in REGRESSION_LOSSES:
            raise AAMError(f"--loss-type must be one of {REGRESSION_LOSSES}, got {self.loss_type!r}")
        if self.loss_type == "quantile":
            q = sorted(set(self.quantiles or [0.1, 0.5, 0.9]))
            if any(not 0 < t < 1 for t in q):
                raise AAMError(f"--quantiles must lie strictly between 0 and 1, got {q}")
            self.quantiles = q
        if self.over_penalty <= 0 or self.under_penalty <= 0:
            raise AAMError("--over-penalty and --under-penalty must be > 0")
