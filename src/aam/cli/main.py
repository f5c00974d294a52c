"""`aam`: the command group. Commands load lazily so `aam --help` is instant (no torch import).

User errors (aam.errors.AAMError, click usage errors) print one line and exit non-zero, with no
traceback; `AAM_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# command name -> (module, attribute, one-line help)
COMMANDS = {
    "unifrac": ("aam.cli.unifrac", "unifrac", "Compute UniFrac distances from a table and a tree."),
    "pretrain": ("aam.cli.pretrain", "pretrain", "Self-supervised pretraining on UniFrac distances + masked nucleotides."),
    "train": ("aam.cli.train", "train", "Fine-tune for regression or classification on a metadata column."),
    "cv": ("aam.cli.cv", "cv", "K-fold cross-validation of train, next to classical baselines on the same folds."),
    "tune": ("aam.cli.tune", "tune", "Optuna search over the fine-tuning options, scored by cross-validation."),
    "predict": ("aam.cli.predict", "predict", "Predict a new table with a trained checkpoint."),
    "embed": ("aam.cli.embed", "embed", "Sample embeddings (and predicted UniFrac distances) of a table."),
    "explain": ("aam.cli.explain", "explain", "Which ASVs drive a fine-tuned model's predictions (occlusion)."),
    "export": ("aam.cli.export", "export", "Export a fine-tuned model to ONNX (onnxruntime parity-checked)."),
    "attention": ("aam.cli.attention", "attention", "Attention maps: where a model's attention goes, per sample and ASV."),
    "rf-baseline": ("aam.cli.rf_baseline", "rf_baseline", "Forest, boosted trees and ridge on the split of an aam run."),
    "kernels": ("aam.cli.kernels", "kernels", "Show kernel backends on this machine and self-check them."),
    "demo": ("aam.cli.demo", "demo", "Run pretrain -> train -> predict -> embed on a generated dataset."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="aam")
def cli() -> None:
    """aam: Attention All Microbes. Transformers on 16S amplicon data, with custom kernels."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the group and turns user errors into one line and exit code 2."""
    from aam.cli.launch import ARGV
    from aam.errors import AAMError, Interrupted

    ARGV.set(list(sys.argv[1:] if argv is None else argv))  # what --nproc-per-node workers rerun
    try:
        rv = cli.main(args=argv, standalone_mode=False, prog_name="aam")
    except Interrupted as exc:
        click.echo(f"{'preempted' if exc.preempted else 'interrupted'}: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:  # one line, like every other user error
        where = f"aam {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else "aam"
        click.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except AAMError as exc:
        if os.environ.get("AAM_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        return 2
    except FileNotFoundError as exc:
        if os.environ.get("AAM_DEBUG"):
            raise
        click.echo(f"error: file not found: {exc.filename or exc}", err=True)
        return 2
    except OSError as exc:  # an output under a file, a folder without write permission, a full disk...
        if os.environ.get("AAM_DEBUG"):
            raise
        where = exc.filename or "an output"
        click.echo(f"error: cannot write {where}: {exc.strerror or exc}; check the path (a folder, not a file) and "
                   "its permissions", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
