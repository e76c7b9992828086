"""Training: the trainer (loop, checkpoints, MLflow run), its config, the data it samples, QAT, throughput bench."""
