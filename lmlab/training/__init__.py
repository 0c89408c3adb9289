"""Training: the training loop, optimizers and schedules, checkpoints, experiment tracking."""
