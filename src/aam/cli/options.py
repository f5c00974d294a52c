"""Shared click options, shown in `--help` under headings (Data, Model, Loss, Training, Hardware, Output).

Defaults come from the typed requests (`aam.workflows.requests`): each function takes the option group whose
field defaults it shows, so a default is written once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from aam.ops import BACKEND_CHOICES
from aam.training.config import DISTRIBUTED_MODES, NUC_PASSES, PRECISIONS, TRACKERS
from aam.workflows.requests import (
    DistanceOptions,
    Hardware,
    InferenceOptions,
    LossOptions,
    ModelOptions,
    Preprocess,
    SavedModelInput,
    TrainingOptions,
    default_of,
)

SECTIONS = ("Data", "Model", "Loss", "Training", "Tracking", "Hardware", "Output", "Other")


class GroupedOption(click.Option):
    def __init__(self, *args, section: str = "Other", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class GroupedCommand(click.Command):
    """A command whose --help lists options per section."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx)
            if rec is not None:
                groups.setdefault(getattr(param, "section", "Other"), []).append(rec)
        for name in SECTIONS:
            if groups.get(name):
                with formatter.section(f"{name} options"):
                    formatter.write_dl(groups[name])


def opt(section: str, *decls: str, **kwargs) -> Callable:
    kwargs.setdefault("show_default", True)
    return click.option(*decls, cls=GroupedOption, section=section, **kwargs)


def apply(options: list[Callable]) -> Callable:
    def deco(f: Callable) -> Callable:
        for o in reversed(options):
            f = o(f)
        return f

    return deco


def table_options() -> list[Callable]:
    return [
        opt("Data", "--table", required=True, type=click.Path(dir_okay=False),
            help="BIOM table (or QIIME 2 .qza) whose feature IDs are ASV sequences (or see --sequences)."),
        opt("Data", "--sequences", type=click.Path(dir_okay=False), default=None,
            help="FASTA or QIIME 2 .qza mapping feature IDs to sequences (for hashed IDs)."),
    ]


def saved_model_options(model_help: str, metadata_help: str) -> list[Callable]:
    """--model, the table, --metadata and --rarefy: what predict, embed and explain read."""
    return [
        opt("Data", "--model", required=True, type=click.Path(dir_okay=False), help=model_help),
        *table_options(),
        opt("Data", "--metadata", type=click.Path(dir_okay=False), default=None, help=metadata_help),
        opt("Data", "--rarefy/--no-rarefy", default=default_of(SavedModelInput, "rarefy"),
            help="Rarefy to the training depth with the training seed (samples under it are skipped and reported)."),
    ]


def check_inference_options(run: InferenceOptions, metadata: str | None, metadata_column: str | None) -> None:
    """--batch-size >= 1, and --metadata with --metadata-column."""
    if run.batch_size < 1:
        raise click.UsageError("--batch-size must be >= 1")
    if metadata_column and not metadata:
        raise click.UsageError("--metadata-column needs --metadata (the file holding that column)")


def inference_options(d: InferenceOptions, batch_help: str = "Samples per batch.") -> list[Callable]:
    """--batch-size, --device, --kernels, --num-workers of predict, embed and explain."""
    return [opt("Training", "--batch-size", type=int, default=d.batch_size, help=batch_help),
            *hardware_options(Hardware(device=d.device, kernels=d.kernels, num_workers=d.num_workers),
                              training=False)]


def preprocessing_options(d: Preprocess) -> list[Callable]:
    return [
        opt("Data", "--rarefy-depth", type=int, default=d.rarefy_depth, show_default="auto",
            help="Reads per sample after rarefaction; default min(5000, 10th percentile of sample depths); "
                 "0 = no rarefaction (table already rarefied)."),
        opt("Data", "--max-bp", type=int, default=d.max_bp, help="Bases kept per ASV (longer reads are truncated, reported)."),
        opt("Data", "--token-limit", type=int, default=d.token_limit, help="Most ASVs per sample (the most abundant are kept)."),
        opt("Data", "--asv-sampling", type=click.Choice(["abundance", "random", "first"]), default=d.asv_sampling,
            help="Which ASVs a sample over --token-limit keeps: most abundant, a seeded random subset per epoch, "
                 "or table order."),
        opt("Data", "--test-size", type=float, default=d.test_size, help="Fraction of samples held out for validation."),
    ]


# `--unifrac-metric` values; the reference AAM's names are aliases: unifrac -> unweighted, weighted -> weighted_normalized.
UNIFRAC_METRICS = ("unweighted", "weighted_normalized", "weighted_unnormalized", "generalized")
METRIC_ALIASES = {"unifrac": "unweighted", "weighted": "weighted_normalized"}
UNIFRAC_TARGETS = ("all", "visible")


def _metric(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return METRIC_ALIASES.get(value, value) if value is not None else None


def tree_options(d: DistanceOptions) -> list[Callable]:
    """--tree and its UniFrac settings: batch targets computed on the fly (an alternative to --unifrac-matrix)."""
    return [
        opt("Data", "--tree", type=click.Path(dir_okay=False), default=d.tree,
            help="Newick tree (or QIIME 2 rooted-tree.qza) whose tips are the table's features: UniFrac targets "
                 "are computed per batch on the rarefied table (no N x N matrix). Use instead of --unifrac-matrix."),
        opt("Data", "--unifrac-metric", type=click.Choice([*UNIFRAC_METRICS, *METRIC_ALIASES]),
            default=d.unifrac_metric, show_default="unweighted", callback=_metric,
            help="UniFrac of --tree targets; 'unifrac' and 'weighted' (the reference AAM's names) mean "
                 "unweighted and weighted_normalized."),
        opt("Data", "--unifrac-alpha", type=float, default=d.unifrac_alpha, show_default="0.5",
            help="Generalized UniFrac alpha in [0, 1] (--unifrac-metric generalized only)."),
        opt("Data", "--drop-missing-features", is_flag=True, default=d.drop_missing_features,
            help="Ignore table features that are not tips of --tree (default: error naming them)."),
        opt("Data", "--unifrac-targets", type=click.Choice(UNIFRAC_TARGETS), default=d.unifrac_targets,
            show_default="visible; all with --asv-sampling random",
            help="Which ASVs the --tree targets count: only the 'visible' ones the model is given (the "
                 "--token-limit most abundant), so input and target agree when samples hold more ASVs than "
                 "the limit, or 'all' of a sample's ASVs."),
    ]


def model_options(d: ModelOptions) -> list[Callable]:
    return [
        opt("Model", "--embedding-dim", type=int, default=d.embedding_dim, help="Width D of every transformer stack."),
        opt("Model", "--attention-heads", type=int, default=d.attention_heads, help="Heads per attention layer."),
        opt("Model", "--attention-layers", type=int, default=d.attention_layers,
            help="Layers of every transformer stack (ASV, sample, encoder, count, target)."),
        opt("Model", "--asv-layers", type=int, default=d.asv_layers, show_default="--attention-layers",
            help="Layers of the nucleotide-level (ASV) stack, the most expensive one."),
        opt("Model", "--dropout", type=float, default=d.dropout,
            help="Dropout in every block (pretraining defaults to 0: dropout noise adds to every embedding "
                 "distance, and the pairwise loss then fits the noise instead of the samples)."),
        opt("Model", "--count-embedding/--no-count-embedding", default=d.count_embedding,
            help="Feed log1p(read counts) of each ASV into the sample encoder."),
        opt("Model", "--count-embedding-method", type=click.Choice(["add", "film"]), default=d.count_embedding_method,
            help="How counts enter: added projection or FiLM (scale and shift)."),
        opt("Model", "--gradient-checkpointing/--no-gradient-checkpointing", default=d.gradient_checkpointing,
            help="Recompute activations in backward (less memory, ~25% slower)."),
    ]


def loss_options(d: LossOptions) -> list[Callable]:
    return [
        opt("Loss", "--penalty", type=float, default=d.penalty, help="Weight of the pairwise UniFrac loss."),
        opt("Loss", "--nuc-penalty", type=float, default=d.nuc_penalty, help="Weight of the masked-nucleotide loss."),
        opt("Loss", "--nuc-mask-ratio", type=float, default=d.nuc_mask_ratio, help="Fraction of bases masked."),
        opt("Loss", "--nuc-mask-strategy", type=click.Choice(["random", "span"]), default=d.nuc_mask_strategy,
            help="Mask single bases or spans of 3-5."),
        opt("Loss", "--nuc-asv-fraction", type=float, default=d.nuc_asv_fraction,
            help="Fraction of a batch's unique ASVs that get a masked copy for the nucleotide task."),
        opt("Loss", "--nuc-pass", type=click.Choice(NUC_PASSES), default=d.nuc_pass,
            help="shared: the masked copies replace their clean rows in the one ASV-encoder pass (1.2x faster "
                 "pretraining, the same fine-tuning MAE: docs/SCIENCE.md); separate: a second pass over them."),
        opt("Loss", "--unifrac-transform", type=click.Choice(["identity", "tanh"]), default=d.unifrac_transform,
            help="Embedding distance compared to UniFrac: raw (UniFrac lies in [0, 1]; the model learns the "
                 "scale) or tanh(d / --unifrac-scale)."),
        opt("Loss", "--unifrac-scale", type=float, default=d.unifrac_scale, help="Scale s of tanh(d / s)."),
    ]


def training_options(d: TrainingOptions, best_metrics: tuple[str, ...]) -> list[Callable]:
    return [
        opt("Training", "--epochs", type=int, default=d.epochs, help="Passes over the training split."),
        opt("Training", "--batch-size", type=int, default=d.batch_size,
            help="Samples per batch (>= 2 for the pairwise UniFrac loss; odd sizes are fine)."),
        opt("Training", "--lr", type=float, default=d.lr, help="Peak learning rate (AdamW)."),
        opt("Training", "--weight-decay", type=float, default=d.weight_decay,
            help="AdamW weight decay (not applied to biases, norms, embeddings)."),
        opt("Training", "--warmup-steps", type=int, default=d.warmup_steps, show_default="5% of the optimizer steps",
            help="Linear warmup steps before the cosine decay."),
        opt("Training", "--patience", type=int, default=d.patience, help="Epochs without improvement before stopping (0 = off)."),
        opt("Training", "--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps, help="Micro-batches per optimizer step."),
        opt("Training", "--max-grad-norm", type=float, default=d.max_grad_norm, help="Gradient clipping norm (0 = off)."),
        opt("Training", "--seed", type=int, default=d.seed, help="Seed of rarefaction, split, initialisation and masking."),
        opt("Training", "--resume", type=click.Path(dir_okay=False), default=d.resume,
            help="Continue a run from its checkpoints/last.pt (or best.pt); 'auto': from the newest checkpoint "
                 "of --output-dir, or start the run there when it has none (what a requeued job runs)."),
        opt("Training", "--overwrite", is_flag=True, default=d.overwrite,
            help="Replace the run already in --output-dir (removes the files aam wrote there, and lists them); "
                 "without it a folder holding a run is refused unless --resume is given."),
        opt("Training", "--checkpoint-every", type=int, default=d.checkpoint_every,
            help="Also write last.pt every N optimizer steps (mid-epoch resume); 0 = once per epoch."),
        opt("Training", "--max-steps", type=int, default=d.max_steps,
            help="Stop after N optimizer steps in total (the LR schedule still spans --epochs)."),
        opt("Training", "--log-every", type=int, default=d.log_every, help="Optimizer steps between progress/tracker updates."),
        opt("Training", "--best-metric", type=click.Choice(best_metrics), default=d.best_metric,
            help="Validation metric that selects best.pt and drives early stopping."),
        opt("Training", "--max-tokens", type=int, default=d.max_tokens, show_default="off",
            help="Batches hold as many samples as fit under N nucleotide tokens (unique ASVs x read length, what "
                 "the ASV encoder runs on) instead of --batch-size samples; every sample once per epoch."),
        opt("Training", "--max-memory-gb", type=float, default=d.max_memory_gb, show_default="off",
            help="Batches hold as many samples as fit under G GB of predicted peak memory per training step "
                 "(a memory model fitted to a few probe steps on this device: memory_model.json)."),
        opt("Training", "--auto-batch-size", is_flag=True, default=d.auto_batch_size,
            help="Use the largest fixed batch whose every batch fits --max-memory-gb (default 90% of the device's "
                 "memory) and --max-tokens; the choice is logged and saved in batch_plan.json and checkpoints."),
        opt("Training", "--target-effective-batch-size", type=int, default=d.target_effective_batch_size,
            show_default="off", help="Samples per optimizer step over all ranks: sets the gradient accumulation "
                                     "from the (chosen) batch size."),
        opt("Tracking", "--tracker", type=click.Choice(TRACKERS), default=d.tracker,
            help="Where parameters, per-epoch metrics, plots and best.pt go: TensorBoard (<output-dir>/tensorboard),"
                 " MLflow or Weights & Biases (offline; extras aam[mlflow], aam[wandb]), or nowhere."),
        opt("Tracking", "--tracking-uri", default=d.tracking_uri, show_default="sqlite <output-dir>/mlflow.db",
            help="MLflow store: sqlite:///runs.db, a file:// folder or a server URL (else MLFLOW_TRACKING_URI)."),
        opt("Tracking", "--experiment-name", default=d.experiment_name,
            help="MLflow experiment or W&B project of the run."),
    ]


def hardware_options(d: Hardware, training: bool = True) -> list[Callable]:
    out = [
        opt("Hardware", "--device", default=d.device, help="auto (cuda if available), cpu, cuda or cuda:N."),
        opt("Hardware", "--kernels", type=click.Choice(list(BACKEND_CHOICES)), default=d.kernels,
            help="Kernel backend of attention and the UniFrac loss."),
        opt("Hardware", "--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes."),
    ]
    if training:
        out.append(opt("Hardware", "--mixed-precision", "--precision", type=click.Choice(PRECISIONS),
                       default=d.mixed_precision,
                       help="Autocast precision (fp16 with a GradScaler on CUDA; bf16 also on CPU); auto: bf16 on GPUs "
                            "with bf16 and on CPUs with AVX512-BF16/AMX-BF16, where it is faster, else none (= fp32)."))
        out.append(opt("Hardware", "--compile-model", is_flag=True, default=d.compile_model,
                       help="torch.compile the training forward (skipped on ROCm; falls back to eager if "
                            "compilation fails; backend from AAM_COMPILE_BACKEND, default inductor)."))
        out.append(opt("Hardware", "--tf32", is_flag=True, default=d.tf32,
                       help="Allow TF32 tensor-core float32 matmuls (CUDA only; no effect on CPU)."))
        out.append(opt("Hardware", "--distributed", type=click.Choice(DISTRIBUTED_MODES), default=d.distributed,
                       help="Under torchrun or --nproc-per-node: DDP (a model copy per rank) or FSDP2 (parameters, "
                            "gradients and AdamW state sharded; sharded checkpoints that predict/embed and a resume "
                            "on any number of ranks read)."))
        out.append(opt("Hardware", "--memory-profile", is_flag=True, default=d.memory_profile,
                       help="Log the peak memory of each stage of a training step (data, ASV encoder, sample "
                            "encoder, loss, backward, optimizer) for the first micro-batches; memory_profile.json."))
        out.append(opt("Hardware", "--profile", type=int, default=d.profile, show_default="off",
                       help="torch.profiler trace of N micro-batches after the first: profile/trace.json (Chrome "
                            "trace) and profile/top_ops.txt."))
    return out


def launch_options() -> list[Callable]:
    """--nproc-per-node / --data-parallel: local DDP workers started from the one command (aam.cli.launch)."""
    return [
        opt("Hardware", "--nproc-per-node", type=int, default=None, show_default="1 (or torchrun's)",
            help="Start N DDP workers on this node through torch.distributed's launcher (like torchrun "
                 "--standalone); --batch-size is per worker and the UniFrac loss covers the global batch."),
        opt("Hardware", "--data-parallel", is_flag=True, default=False,
            help="The reference AAM's spelling: --nproc-per-node with one worker per visible GPU (DDP, not "
                 "nn.DataParallel)."),
    ]


def take_launch(options: dict) -> int | None:
    """Remove the launch options from a command's options; start the workers when they ask for several (the
    job's exit code), else None: this process trains."""
    from aam.cli.launch import maybe_launch

    launch = {"nproc_per_node": options.pop("nproc_per_node", None),
              "data_parallel": options.pop("data_parallel", False), "device": options.get("device", "auto")}
    return maybe_launch(launch)


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--config FILE: a JSON object of option values (e.g. `aam tune`'s best_options.json) used as defaults;
    options given on the command line win."""
    if not value:
        return value
    import json

    from aam.errors import InputError

    try:
        values = json.loads(Path(value).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--config {value}: not a readable JSON file ({exc}); give a JSON object of option values, "
                         "e.g. the best_options.json of `aam tune`") from None
    if not isinstance(values, dict):
        raise InputError(f"--config {value}: expected a JSON object of option values, e.g. {{\"lr\": 0.001}}")
    names = {p.name for p in ctx.command.params}
    unknown = sorted(k for k in values if k.replace("-", "_") not in names)
    if unknown:
        raise InputError(f"--config {value}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not an option "
                         f"of `aam {ctx.info_name}`; use the option names without dashes (e.g. weight_decay)")
    ctx.default_map = {**(ctx.default_map or {}), **{k.replace("-", "_"): v for k, v in values.items()}}
    return value


def config_option() -> Callable:
    return opt("Other", "--config", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
               callback=_load_config, help="JSON file of option values used as defaults (e.g. best_options.json of "
                                           "`aam tune`); options on the command line win.")


def output_option() -> Callable:
    return opt("Output", "--output-dir", required=True, type=click.Path(file_okay=False),
               help="Run folder: checkpoints/, plots/, tensorboard/, training.log.")
