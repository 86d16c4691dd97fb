"""The student trainer: sharded multi-task training, evaluation, checkpoints, commands."""
