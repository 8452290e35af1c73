"""Training: the trainer, optimisers and schedules, checkpoints, metrics."""
