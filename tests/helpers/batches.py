"""Random paired examples, packed batches as the trainer sees them, and a run's config."""

import numpy as np
import tensorflow as tf

from sbs_jax.data.features import DistillFeatureConverter
from sbs_jax.train.config import DataConfig, OptimizerConfig, ParallelismConfig, TrainConfig
from sbs_jax.train.state import BATCH_KEYS


def paired_examples(n, rng):
  """Random paired examples: (predict ids, label ids, explain ids, rationale ids)."""
  out = []
  for _ in range(n):
    part = lambda lo, hi: list(rng.integers(3, 100, rng.integers(lo, hi))) + [1]
    out.append((part(3, 9), part(1, 4), part(3, 9), part(4, 12)))
  return out


def packed_batch(examples, enc_len=64, dec_len=48):
  units = [{"inputs": p + e, "inputs_part": [1] * len(p) + [2] * len(e),
            "targets": l + r, "targets_part": [1] * len(l) + [2] * len(r), "task": 1}
           for p, l, e, r in examples]
  sig = {k: tf.TensorSpec([None] if k != "task" else [], tf.int32) for k in units[0]}
  ds = tf.data.Dataset.from_generator(lambda: iter(units), output_signature=sig)
  ds = DistillFeatureConverter(pack=True)(ds, {"inputs": enc_len, "targets": dec_len})
  rows = list(ds.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def run_config(dims=(1, 1), accum=1, batch=64):
  return TrainConfig(model_dir="unused", train_steps=10,
                     parallelism=ParallelismConfig(partitioning_dims=dims,
                                                   grad_accum_steps=accum),
                     data=DataConfig(mixture_or_task="sbs_cqa_distill_llm_paired",
                                     batch_size=batch),
                     optimizer=OptimizerConfig(name="adamw"))
