"""Random paired examples, packed batches as the trainer sees them, a run's config, and a
seqio task of given token ids."""

import numpy as np
import seqio
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


def packed_batch(examples, enc_len=64, dec_len=48, packing="next_fit", window=1024):
  """The trainer's converter's rows of paired examples (paired_examples), packed by
  `packing` (best_fit: over windows of `window` examples)."""
  units = [{"inputs": p + e, "inputs_part": [1] * len(p) + [2] * len(e),
            "targets": l + r, "targets_part": [1] * len(l) + [2] * len(r), "task": 1}
           for p, l, e, r in examples]
  sig = {k: tf.TensorSpec([None] if k != "task" else [], tf.int32) for k in units[0]}
  ds = tf.data.Dataset.from_generator(lambda: iter(units), output_signature=sig)
  converter = DistillFeatureConverter(pack=True, packing=packing, packing_window=window)
  ds = converter(ds, {"inputs": enc_len, "targets": dec_len})
  rows = list(ds.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def run_config(dims=(1, 1), accum=1, batch=64):
  return TrainConfig(model_dir="unused", train_steps=10,
                     parallelism=ParallelismConfig(partitioning_dims=dims,
                                                   grad_accum_steps=accum),
                     data=DataConfig(mixture_or_task="sbs_cqa_distill_llm_paired",
                                     batch_size=batch),
                     optimizer=OptimizerConfig(name="adamw"))


def register_token_task(name: str, examples) -> None:
  """Registers (again) a seqio task `name` with a train split of `examples` (a list of
  dicts: int token lists "inputs" and "targets", int "task"), their ids as the tokens (a
  pass-through vocabulary of 128, no EOS added)."""
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    sig = {"inputs": tf.TensorSpec([None], tf.int32),
           "targets": tf.TensorSpec([None], tf.int32), "task": tf.TensorSpec([], tf.int32)}
    return tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.asarray(ex["inputs"], np.int32),
                  "targets": np.asarray(ex["targets"], np.int32), "task": ex["task"]}
                 for ex in examples), output_signature=sig)
  seqio.TaskRegistry.remove(name)
  vocab = seqio.PassThroughVocabulary(128)
  # Counted, as our annotation sources are: pair_fit's shuffle buffer is the split's size.
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
      dataset_fn, splits=["train"], num_input_examples={"train": len(examples)}),
                         output_features={k: seqio.Feature(vocab, add_eos=False)
                                          for k in ("inputs", "targets")})
