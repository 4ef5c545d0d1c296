"""Training: the loop (checkpoints, exact resume, divergence guard), pretraining, fine-tuning, evaluation, progress."""
