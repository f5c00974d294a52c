"""Workflows: what each command does, from a typed request (`aam.workflows.requests`) to files on disk.

pretrain, train, cv, predict/embed (inference), explain and the classical baselines. They compose the
data, models and training (engine) layers and are imported only by the CLI.
"""
