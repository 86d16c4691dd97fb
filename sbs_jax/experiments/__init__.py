"""Experiments over the pipeline: sweeps, reports and figures, the controlled task."""
