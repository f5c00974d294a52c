"""`aam tune`: Optuna search over the fine-tuning options, each trial scored by cross-validation."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.cli.train import train as train_command
from aam.workflows.requests import TrainRequest, TuneRequest, default_of


def _tune(**options) -> int:
    """Search the fine-tuning options (learning rate, weight decay, dropout, identity dropout, regression loss)
    with Optuna. Each trial is scored by --folds-fold cross-validation of `aam train` on the labelled samples
    (MAE, or 1 - ROC AUC for classifiers; one model per fold unless --ensemble is given); samples in --exclude-samples never enter the search. The study is
    stored in <output-dir>/study.db: rerunning the command resumes it. Writes trials.tsv, tune_history.png and
    best_options.json (use it with `aam train --config`). Takes every option of `aam train` as the fixed part."""
    from aam.data.split import read_ids
    from aam.workflows.tune import run_tune

    excluded = tuple(read_ids(options["exclude_samples"])) if options["exclude_samples"] else ()
    # trials score one model per fold unless --ensemble is given: the options found carry over to ensembles
    ensemble = options["ensemble"] if options["ensemble"] is not None else 1
    train = TrainRequest.from_options({**options, "resume": None, "overwrite": False, "exclude_samples": excluded,
                                       "ensemble": ensemble})
    res = run_tune(TuneRequest(train=train, trials=options["trials"], folds=options["folds"]))
    click.echo(f"{res['trials']} trials; best trial {res['best_trial']}: cross-validated {res['objective']} "
               f"{res['best_value']:.4g} with {res['params']}")
    click.echo(f"best options: {res['best_options']} (aam train --config {res['best_options']} ...); "
               f"trials: {res['table']}; plot: {res['plot']}")
    return 0


_own = [
    O.GroupedOption(["--trials"], type=int, default=default_of(TuneRequest, "trials"), show_default=True,
                    section="Training", help="Finished trials to reach (a rerun continues the study to this many)."),
    O.GroupedOption(["--folds"], type=int, default=default_of(TuneRequest, "folds"), show_default=True,
                    section="Data", help="Cross-validation folds per trial (whole --group-column groups per fold)."),
    O.GroupedOption(["--exclude-samples"], type=click.Path(dir_okay=False), default=None, section="Data",
                    help="File of sample IDs (one per line) kept out of the search: an outer test set."),
    O.GroupedOption(["--output-dir"], required=True, type=click.Path(file_okay=False), section="Output",
                    help="study.db (Optuna, SQLite), trials/, trials.tsv, tune_history.png, best_options.json."),
]
_from_train = [p for p in train_command.params if p.name not in ("output_dir", "resume", "overwrite", "nproc_per_node", "data_parallel")]

tune = O.GroupedCommand("tune", callback=_tune, params=[*_from_train, *_own], help=_tune.__doc__)
