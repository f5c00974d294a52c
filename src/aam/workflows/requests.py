"""Typed run requests: what each command asks a workflow to do.

The click commands build these from their options (`from_options`) and the workflows take them; `aam cv`
builds a `TrainRequest` per fold with `dataclasses.replace`. Every default is defined once, at the lowest
layer that uses it (`ModelConfig`, `TrainConfig`, `LossConfig`, `Preprocessing`), and read from there by
the fields below; the CLI options read their defaults from these fields. `None` marks a default that
depends on other options; the field's comment says how it is resolved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

from aam.data.prepare import Preprocessing
from aam.errors import AAMError
from aam.models import ModelConfig
from aam.training.config import LossConfig, TrainConfig

_MODEL, _TRAIN, _LOSS, _PRE = ModelConfig(), TrainConfig(), LossConfig(), Preprocessing()

PRETRAIN_DROPOUT = 0.0  # dropout noise adds to every embedding distance; the pairwise loss would fit it
PRETRAINED_BASE_LR_SCALE = 0.1  # a pretrained encoder learns at 0.1 x --lr under new random heads
DEFAULT_TEST_SIZE = 0.2
DEFAULT_TARGET_TRANSFORM = "zscore"
COUNT_EMBEDDING_METHOD = "add"
# Fine-tuning defaults chosen by cross-validation on oral-age-dev (docs/SCIENCE.md, "What changed"):
FINETUNE_LR = 1e-3
FINETUNE_LOSS = "mae"
DEFAULT_ASV_IDENTITY = True
DEFAULT_ASV_BAG_DIM = 256
DEFAULT_ENSEMBLE = 5

G = TypeVar("G")


# ------------------------------------------------------------------------------------------ validation
@dataclass(frozen=True)
class Rule:
    """A finite number in [lo, hi] (either end open, or absent)."""

    lo: float | None = None
    hi: float | None = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.low_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.high_open else v <= self.hi)

    @property
    def allowed(self) -> str:
        if self.hi is None:
            return f"a number {'>' if self.low_open else '>='} {self.lo:g}"
        return f"in {'(' if self.low_open else '['}{self.lo:g}, {self.hi:g}{')' if self.high_open else ']'}"


def at_least(lo: float) -> Rule:
    return Rule(lo)


def above(lo: float) -> Rule:
    return Rule(lo, low_open=True)


def between(lo: float, hi: float, low_open: bool = False, high_open: bool = False) -> Rule:
    return Rule(lo, hi, low_open, high_open)


class Validated:
    """Option groups list their rules in RULES (field -> rule); a value that breaks one is a one-line error
    naming the option and what it accepts. None (a default resolved later) is always accepted."""

    RULES: ClassVar[dict[str, Rule]] = {}

    def __post_init__(self) -> None:
        for name, rule in self.RULES.items():
            value = getattr(self, name)
            if value is not None and not rule.ok(value):
                raise AAMError(f"--{name.replace('_', '-')} {value!r}: must be {rule.allowed}")


def _group(cls: type[G], values: Mapping[str, Any]) -> G:
    """The option group `cls` from a flat mapping of option values (the click callback's arguments)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (for options whose group has required fields)."""
    return next(f.default for f in fields(cls) if f.name == name)


def group_defaults(cls: type) -> SimpleNamespace:
    """The default option groups of request `cls`, by field name (what each command's --help shows)."""
    return SimpleNamespace(**{f.name: f.default_factory() for f in fields(cls) if f.default_factory is not MISSING})


def flat_options(request: Any) -> dict[str, Any]:
    """A request as the flat option mapping it came from (run_options.json)."""
    out: dict[str, Any] = {}
    for f in fields(request):
        value = getattr(request, f.name)
        if is_dataclass(value):
            out.update(asdict(value))
        else:
            out[f.name] = value
    return out


# ------------------------------------------------------------------------------------------ option groups
@dataclass(frozen=True, kw_only=True)
class TableInput:
    table: str
    sequences: str | None = None  # FASTA / .qza mapping hashed feature IDs to sequences


@dataclass(frozen=True, kw_only=True)
class Preprocess(Validated):
    RULES: ClassVar[dict[str, Rule]] = {
        "rarefy_depth": at_least(0), "max_bp": at_least(1), "token_limit": at_least(1),
        "test_size": between(0, 1, low_open=True, high_open=True)}

    rarefy_depth: int | None = None  # None: min(5000, 10th percentile of sample depths); 0: no rarefaction
    max_bp: int = _PRE.max_bp
    token_limit: int = _PRE.token_limit
    asv_sampling: str = _PRE.asv_sampling
    test_size: float = DEFAULT_TEST_SIZE


@dataclass(frozen=True, kw_only=True)
class DistanceOptions(Validated):
    """Where pairwise UniFrac targets come from: a precomputed matrix or a tree (per batch), or neither."""

    RULES: ClassVar[dict[str, Rule]] = {"unifrac_alpha": between(0, 1)}

    unifrac_matrix: str | None = None
    unifrac_ids: str | None = None
    tree: str | None = None
    unifrac_metric: str | None = None  # None: unweighted with --tree
    unifrac_alpha: float | None = None  # None: 0.5 for generalized UniFrac
    drop_missing_features: bool = False
    unifrac_targets: str | None = None  # None: visible ASVs, or all with --asv-sampling random

    @property
    def given(self) -> bool:
        return bool(self.unifrac_matrix or self.tree)


@dataclass(frozen=True, kw_only=True)
class ModelOptions(Validated):
    RULES: ClassVar[dict[str, Rule]] = {
        "embedding_dim": at_least(1), "attention_heads": at_least(1), "attention_layers": at_least(1),
        "asv_layers": at_least(1), "dropout": between(0, 1, high_open=True)}

    embedding_dim: int = _MODEL.embedding_dim
    attention_heads: int = _MODEL.encoder_heads
    attention_layers: int = _MODEL.encoder_layers
    asv_layers: int | None = None  # None: --attention-layers
    dropout: float = _MODEL.dropout
    count_embedding: bool = _MODEL.count_embedding != "none"
    count_embedding_method: str = COUNT_EMBEDDING_METHOD
    gradient_checkpointing: bool = _MODEL.gradient_checkpointing


@dataclass(frozen=True, kw_only=True)
class LossOptions(Validated):
    RULES: ClassVar[dict[str, Rule]] = {
        "penalty": at_least(0), "nuc_penalty": at_least(0), "nuc_mask_ratio": between(0, 1),
        "nuc_asv_fraction": between(0, 1, low_open=True), "unifrac_scale": above(0)}

    penalty: float = _LOSS.unifrac_weight
    nuc_penalty: float = _LOSS.nuc_weight
    nuc_mask_ratio: float = _TRAIN.nuc_mask_ratio
    nuc_mask_strategy: str = _TRAIN.nuc_mask_strategy
    nuc_asv_fraction: float = _TRAIN.nuc_asv_fraction
    nuc_pass: str = _TRAIN.nuc_pass
    unifrac_transform: str = _LOSS.unifrac_transform
    unifrac_scale: float = _LOSS.unifrac_scale


@dataclass(frozen=True, kw_only=True)
class TrainingOptions(Validated):
    RULES: ClassVar[dict[str, Rule]] = {
        "epochs": at_least(1), "batch_size": at_least(1), "lr": above(0), "weight_decay": at_least(0),
        "warmup_steps": at_least(0), "patience": at_least(0), "gradient_accumulation_steps": at_least(1),
        "max_grad_norm": at_least(0), "seed": at_least(0), "checkpoint_every": at_least(0),
        "max_steps": at_least(1), "log_every": at_least(1), "max_tokens": at_least(1), "max_memory_gb": above(0),
        "target_effective_batch_size": at_least(1)}

    epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    weight_decay: float = _TRAIN.weight_decay
    warmup_steps: int | None = None  # None: 5% of the optimizer steps
    patience: int = _TRAIN.patience
    gradient_accumulation_steps: int = _TRAIN.gradient_accumulation_steps
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = _TRAIN.seed
    resume: str | None = None
    overwrite: bool = False  # replace the run already in --output-dir (its aam files only)
    checkpoint_every: int = _TRAIN.checkpoint_every
    max_steps: int | None = None
    log_every: int = _TRAIN.log_every
    best_metric: str = _TRAIN.best_metric
    max_tokens: int | None = _TRAIN.max_tokens  # nucleotide tokens (unique ASVs x read length) per batch
    max_memory_gb: float | None = _TRAIN.max_memory_gb  # predicted peak memory of a training step
    auto_batch_size: bool = _TRAIN.auto_batch_size
    target_effective_batch_size: int | None = _TRAIN.target_effective_batch_size
    tracker: str = _TRAIN.tracker
    tracking_uri: str | None = _TRAIN.tracking_uri
    experiment_name: str = _TRAIN.experiment_name


@dataclass(frozen=True, kw_only=True)
class Hardware(Validated):
    RULES: ClassVar[dict[str, Rule]] = {"num_workers": at_least(0), "profile": at_least(0)}

    device: str = "auto"
    kernels: str = _MODEL.kernels
    num_workers: int = _TRAIN.num_workers
    mixed_precision: str = _TRAIN.mixed_precision
    compile_model: bool = _TRAIN.compile_model
    tf32: bool = _TRAIN.tf32
    distributed: str = _TRAIN.distributed  # under torchrun / --nproc-per-node: ddp or fsdp
    memory_profile: bool = _TRAIN.memory_profile
    profile: int = _TRAIN.profile_steps  # micro-batches traced by torch.profiler (0 = off)


@dataclass(frozen=True, kw_only=True)
class LabelOptions:
    """What `aam train` predicts, from which metadata, and how samples are grouped."""

    metadata: str
    metadata_column: str  # one column, or several comma-separated numeric columns (multi-output regression)
    categorical_columns: str | None = None  # comma-separated conditioning columns
    group_column: str | None = None
    classifier: bool = False


@dataclass(frozen=True, kw_only=True)
class HeadOptions(Validated):
    """The fine-tuning model on top of the (pretrained) encoder."""

    RULES: ClassVar[dict[str, Rule]] = {
        "base_lr_scale": at_least(0), "asv_identity_dropout": between(0, 1, high_open=True), "asv_bag_dim": at_least(0),
        "categorical_embed_dim": at_least(1), "ensemble": at_least(1)}

    pretrained_encoder: str | None = None
    freeze_base: bool = False
    freeze_asv_encoder: bool | None = None  # None: frozen when --pretrained-encoder is given
    asv_identity: bool = DEFAULT_ASV_IDENTITY
    asv_identity_dropout: float = _MODEL.asv_identity_dropout
    asv_bag_dim: int = DEFAULT_ASV_BAG_DIM
    base_lr_scale: float | None = None  # None: PRETRAINED_BASE_LR_SCALE with --pretrained-encoder, else 1
    target_input: str = _MODEL.target_input
    asv_readout: str = _MODEL.asv_readout
    count_prediction: bool = _MODEL.count_prediction
    count_target: str = _MODEL.count_target
    categorical_fusion: str = _MODEL.categorical_fusion
    categorical_embed_dim: int = _MODEL.categorical_embed_dim
    # cross-fitted models that predict together (1 = one model); None: DEFAULT_ENSEMBLE, or fewer when the
    # labelled samples hold fewer --group-column groups
    ensemble: int | None = None


@dataclass(frozen=True, kw_only=True)
class TargetLossOptions(Validated):
    RULES: ClassVar[dict[str, Rule]] = {
        "over_penalty": above(0), "under_penalty": above(0), "target_penalty": at_least(0),
        "count_penalty": at_least(0)}

    loss_type: str = _LOSS.loss_type
    quantiles: str | None = None  # comma-separated; None: 0.1,0.5,0.9 with --loss-type quantile
    over_penalty: float = _LOSS.over_penalty
    under_penalty: float = _LOSS.under_penalty
    class_weights: str | None = None  # comma-separated, one per class in sorted label order
    target_transform: str = DEFAULT_TARGET_TRANSFORM
    target_penalty: float = _LOSS.target_weight
    count_penalty: float = _LOSS.count_weight


# ------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True, kw_only=True)
class PretrainRequest:
    output_dir: str
    input: TableInput
    preprocess: Preprocess = field(default_factory=Preprocess)
    distances: DistanceOptions = field(default_factory=DistanceOptions)
    model: ModelOptions = field(default_factory=lambda: ModelOptions(dropout=PRETRAIN_DROPOUT))
    loss: LossOptions = field(default_factory=LossOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    hardware: Hardware = field(default_factory=Hardware)
    stream: bool = False  # read an HDF5 table's samples from the file as batches need them (aam.data.streaming)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> PretrainRequest:
        return cls(output_dir=values["output_dir"], input=_group(TableInput, values),
                   preprocess=_group(Preprocess, values), distances=_group(DistanceOptions, values),
                   model=_group(ModelOptions, values), loss=_group(LossOptions, values),
                   training=_group(TrainingOptions, values), hardware=_group(Hardware, values),
                   stream=bool(values.get("stream", False)))


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    output_dir: str
    input: TableInput
    labels: LabelOptions
    preprocess: Preprocess = field(default_factory=Preprocess)
    distances: DistanceOptions = field(default_factory=DistanceOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    head: HeadOptions = field(default_factory=HeadOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    target_loss: TargetLossOptions = field(default_factory=lambda: TargetLossOptions(loss_type=FINETUNE_LOSS))
    training: TrainingOptions = field(default_factory=lambda: TrainingOptions(lr=FINETUNE_LR))
    hardware: Hardware = field(default_factory=Hardware)
    # Samples kept out of training and validation altogether (`aam cv`: the fold's test samples).
    exclude_samples: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> TrainRequest:
        return cls(output_dir=values["output_dir"], input=_group(TableInput, values),
                   labels=_group(LabelOptions, values), preprocess=_group(Preprocess, values),
                   distances=_group(DistanceOptions, values), model=_group(ModelOptions, values),
                   head=_group(HeadOptions, values), loss=_group(LossOptions, values),
                   target_loss=_group(TargetLossOptions, values), training=_group(TrainingOptions, values),
                   hardware=_group(Hardware, values), exclude_samples=tuple(values.get("exclude_samples", ())))


@dataclass(frozen=True, kw_only=True)
class CVRequest(Validated):
    """K-fold cross-validation of `train` (its output_dir is the CV folder; each fold gets fold<k>/)."""

    RULES: ClassVar[dict[str, Rule]] = {"folds": at_least(2), "rf_trees": at_least(1)}

    train: TrainRequest
    folds: int = 5
    rf_trees: int = 500

    @property
    def output_dir(self) -> str:
        return self.train.output_dir


@dataclass(frozen=True, kw_only=True)
class TuneRequest(Validated):
    """An Optuna search over the fine-tuning options of `train`, each trial scored by `folds`-fold CV of the
    labelled samples minus `train.exclude_samples` (its output_dir holds the study)."""

    RULES: ClassVar[dict[str, Rule]] = {"trials": at_least(1), "folds": at_least(2)}

    train: TrainRequest
    trials: int = 20
    folds: int = 3

    @property
    def output_dir(self) -> str:
        return self.train.output_dir


# ------------------------------------------------------------------------------------------ saved models
@dataclass(frozen=True, kw_only=True)
class SavedModelInput:
    """A checkpoint and the table to run it on (predict, embed, explain)."""

    model: str
    table: str
    sequences: str | None = None
    metadata: str | None = None
    rarefy: bool = True  # rarefy to the training depth with the training seed


@dataclass(frozen=True, kw_only=True)
class InferenceOptions(Validated):
    RULES: ClassVar[dict[str, Rule]] = {"batch_size": at_least(1), "num_workers": at_least(0)}

    batch_size: int = 8
    device: str = "auto"
    kernels: str = _MODEL.kernels
    num_workers: int = 0


@dataclass(frozen=True, kw_only=True)
class PredictRequest:
    source: SavedModelInput
    output: str
    metadata_column: str | None = None  # score the predictions against this column of --metadata
    report: bool = False  # and write the error report (aam.workflows.error_report)
    group_by: tuple[str, ...] = ()  # the report's grouping columns; () = every categorical column
    chunk_size: int | None = None  # read an HDF5 table this many samples at a time
    run: InferenceOptions = field(default_factory=InferenceOptions)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> PredictRequest:
        return cls(source=_group(SavedModelInput, values), output=values["output"],
                   metadata_column=values["metadata_column"], report=bool(values.get("report")),
                   group_by=tuple(values.get("group_by") or ()), chunk_size=values.get("chunk_size"),
                   run=_group(InferenceOptions, values))


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    model: str
    output: str
    format: str = "onnx"
    opset: int = 18

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> ExportRequest:
        return cls(model=values["model"], output=values["output"], format=values["format"], opset=values["opset"])


@dataclass(frozen=True, kw_only=True)
class AttentionRequest:
    source: SavedModelInput
    output: str  # a folder
    taxonomy: str | None = None
    metadata_column: str | None = None  # groups the heatmap's samples
    asvs: tuple[str, ...] = ()  # feature IDs (or sequences) whose nucleotide-level map is written
    top: int = 30  # ASVs in the heatmap
    run: InferenceOptions = field(default_factory=InferenceOptions)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> AttentionRequest:
        if values["top"] < 1:
            raise AAMError(f"--top must be >= 1, got {values['top']}")
        return cls(source=_group(SavedModelInput, values), output=values["output"], taxonomy=values["taxonomy"],
                   metadata_column=values["metadata_column"], asvs=tuple(values["asv"] or ()), top=values["top"],
                   run=_group(InferenceOptions, values))


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    source: SavedModelInput
    output: str
    metadata_column: str | None = None  # colours the PCA plot
    distance_matrix: str | None = None  # also write the distances a pretrained model predicts
    run: InferenceOptions = field(default_factory=InferenceOptions)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> EmbedRequest:
        return cls(source=_group(SavedModelInput, values), output=values["output"],
                   metadata_column=values["metadata_column"], distance_matrix=values["distance_matrix"],
                   run=_group(InferenceOptions, values))


EXPLAIN_BATCH_SIZE = 256  # sample variants per forward: each ASV sequence is then encoded once per sample


@dataclass(frozen=True, kw_only=True)
class ExplainRequest:
    source: SavedModelInput
    output: str
    samples: str | None = None  # file of sample IDs to explain
    taxonomy: str | None = None
    target_class: str | None = None
    target_column: str | None = None
    run: InferenceOptions = field(default_factory=lambda: InferenceOptions(batch_size=EXPLAIN_BATCH_SIZE))

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> ExplainRequest:
        return cls(source=_group(SavedModelInput, values), output=values["output"], samples=values["samples"],
                   taxonomy=values["taxonomy"], target_class=values["target_class"],
                   target_column=values["target_column"], run=_group(InferenceOptions, values))
