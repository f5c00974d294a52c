"""Training: losses, trainer, checkpoints, distributed helpers, batch sizing, profiling, metrics."""
