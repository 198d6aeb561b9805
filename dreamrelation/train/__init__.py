"""The training loop, its checkpoints and its progress log."""
