"""Training loop, checkpoints and logging."""
