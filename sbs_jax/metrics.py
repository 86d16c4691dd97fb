"""Metrics of the label task, in SeqIO's `metric_fn(targets, predictions)` form."""

from __future__ import annotations

import statistics
from typing import Sequence

from sbs_jax import arith


def normalize(text: str) -> str:
  """Whitespace-normalised text (runs of whitespace become one space; ends stripped)."""
  return " ".join(str(text).split())


def label_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Exact match after whitespace normalisation, in percent."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    return {"accuracy": 0.0}
  hits = sum(normalize(t) == normalize(p) for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / len(targets)}


def equation_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """SVAMP: equations equal by value under the safe evaluator, in percent."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    return {"equation_accuracy": 0.0}
  hits = sum(arith.same_value(p, t) for t, p in zip(targets, predictions))
  return {"equation_accuracy": 100.0 * hits / len(targets)}


def strip_postprocessor(output, example=None, is_target=False):
  """SeqIO postprocess_fn: decoded text, whitespace-normalised."""
  del example, is_target
  if isinstance(output, bytes):
    output = output.decode("utf-8")
  return normalize(output)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (None for no values / for one value)."""
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
