"""Optimizers: optax AdamW (the paper's) and Adafactor (T5X's default), with schedules."""

from __future__ import annotations

import optax

from sbs_jax.train.config import OptimizerConfig


def learning_rate_schedule(cfg: OptimizerConfig, train_steps: int) -> optax.Schedule:
  """Warmup (linear from 0), then linear decay to 0 at `train_steps`, constant, or rsqrt."""
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == "linear":
    after = optax.linear_schedule(peak, 0.0, max(train_steps - warmup, 1))
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif cfg.schedule == "rsqrt":
    after = lambda step: peak * (max(warmup, 1) / (step + max(warmup, 1))) ** 0.5
  else:
    raise ValueError(f"unknown schedule {cfg.schedule!r}: linear, constant or rsqrt")
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(cfg: OptimizerConfig, train_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(cfg, train_steps)
  if cfg.name == "adamw":
    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay)
  if cfg.name == "adafactor":
    return optax.adafactor(schedule, decay_rate=0.8, multiply_by_parameter_scale=True,
                           clipping_threshold=1.0, weight_decay_rate=cfg.weight_decay or None)
  raise ValueError(f"unknown optimizer {cfg.name!r}: adamw or adafactor")
