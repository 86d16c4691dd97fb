"""Input for the trainer: packed train batches by host, and label-task examples to decode."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
import seqio

from sbs_jax.data.features import DistillFeatureConverter
from sbs_jax.train.config import DataConfig
from sbs_jax.train.state import BATCH_KEYS


def train_batches(cfg: DataConfig, start_step: int = 0) -> Iterator[dict]:
  """This host's rows of every global batch, forever, from batch `start_step` on.

  The stream is a function of the seed alone, so skipping the batches already trained
  on gives a resumed run the same data, in the same order, as an uninterrupted one.
  """
  count, index = jax.process_count(), jax.process_index()
  if cfg.batch_size % count:
    raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {count} hosts")
  ds = seqio.get_dataset(
      cfg.mixture_or_task, task_feature_lengths=cfg.task_feature_lengths,
      dataset_split=cfg.train_split, shuffle=True, seed=cfg.seed, num_epochs=None,
      shard_info=seqio.ShardInfo(index=index, num_shards=count) if count > 1 else None,
      feature_converter=DistillFeatureConverter(pack=cfg.pack))
  ds = ds.batch(cfg.batch_size // count, drop_remainder=True).skip(start_step)
  for batch in ds.as_numpy_iterator():
    yield {k: batch[k] for k in BATCH_KEYS}


@dataclasses.dataclass
class LabelExamples:
  """Tokenized inputs of a label task split, padded to one shape, with their targets."""
  inputs: np.ndarray  # [n, length] int32
  input_texts: list[str]
  targets: list  # postprocessed targets, as the task's metric functions take them
  ids: list[str]


def label_examples(task_name: str, split: str, max_examples: int | None = None,
                   max_input_length: int = 2048, length_multiple: int = 64
                   ) -> LabelExamples:
  """The task's examples of `split` in file order (inputs end with EOS)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length={"inputs": max_input_length, "targets": 512},
                        split=split, shuffle=False, num_epochs=1)
  if max_examples:
    ds = ds.take(max_examples)
  rows, texts, targets, ids = [], [], [], []
  for ex in ds.as_numpy_iterator():
    rows.append(ex["inputs"])
    texts.append(ex["inputs_pretokenized"].decode("utf-8"))
    targets.append(task.postprocess_fn(ex["targets_pretokenized"], example=ex,
                                       is_target=True))
    ids.append(ex["id"].decode("utf-8"))
  if not rows:
    raise ValueError(f"{task_name} has no examples in split {split!r}")
  return LabelExamples(pad_rows(rows, length_multiple), texts, targets, ids)


def pad_rows(rows, length_multiple: int = 64) -> np.ndarray:
  """Token id rows -> one int32 array, zero-padded to a multiple of `length_multiple`
  (few distinct shapes, so few compilations)."""
  length = -(-max(len(r) for r in rows) // length_multiple) * length_multiple
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out
