"""Input for the trainer: packed train batches by host, and label-task examples to decode."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
import seqio

from sbs_jax.data import packing as packing_lib
from sbs_jax.data.features import DistillFeatureConverter
from sbs_jax.data.preprocessors import maps_one_to_one
# The length check lives apart (no gin configurables), for T5X's process too.
from sbs_jax.data.lengths import (OUR_FLAGS, check_lengths, fitted_lengths,  # noqa: F401
                                  length_note, tasks_of)
from sbs_jax.errors import SbsError
from sbs_jax.train.config import DataConfig
from sbs_jax.model.student import BATCH_KEYS, pad_rows


def train_batches(cfg: DataConfig, start_step: int = 0) -> Iterator[dict]:
  """This host's rows of every global batch, forever, from batch `start_step` on.

  The stream is a function of the seed alone, so skipping the batches already trained
  on gives a resumed run the same data, in the same order, as an uninterrupted one.
  """
  count, index = jax.process_count(), jax.process_index()
  if cfg.batch_size % count:
    raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {count} hosts")
  ds = training_rows(cfg, seqio.ShardInfo(index=index, num_shards=count) if count > 1
                     else None)
  ds = ds.batch(cfg.batch_size // count, drop_remainder=True).skip(start_step)
  for batch in ds.as_numpy_iterator():
    yield {k: batch[k] for k in BATCH_KEYS}
  # Only an empty split ends a stream that repeats forever (check_train_split says which).
  raise SbsError(f"{cfg.mixture_or_task} split {cfg.train_split!r} yields no training "
                 "rows: " + _FIX_TRAIN)


def training_rows(cfg: DataConfig, shard_info: seqio.ShardInfo | None = None,
                  num_epochs: int | None = None):
  """The trainer's stream of training rows (shuffled with the seed, packed by
  `cfg.packing` or padded to `task_feature_lengths`, repeated forever, or `num_epochs`
  passes over the split), before batching. pair_fit shuffles through a buffer of the
  split's records (on this host), at most `packing.PAIR_FIT_SHUFFLE`."""
  shuffle = packing_lib.PAIR_FIT_SHUFFLE
  if cfg.pack and cfg.packing == "pair_fit":
    counts = [task.num_input_examples(cfg.train_split)
              for task in _tasks_of(cfg.mixture_or_task)]
    if None not in counts:  # a source that cannot count keeps the largest buffer
      hosts = shard_info.num_shards if shard_info else 1
      shuffle = packing_lib.pair_fit_shuffle(-(-sum(counts) // hosts))
  return seqio.get_dataset(
      cfg.mixture_or_task, task_feature_lengths=cfg.task_feature_lengths,
      dataset_split=cfg.train_split, shuffle=True, seed=cfg.seed, num_epochs=num_epochs,
      shard_info=shard_info, feature_converter=DistillFeatureConverter(
          pack=cfg.pack, packing=cfg.packing, packing_window=cfg.packing_window,
          seed=cfg.seed, shuffle_buffer=shuffle))


def real_tokens(cfg: DataConfig, rows: int | None = 512) -> dict:
  """Real (non-padding) tokens of the first `rows` training rows the trainer would read
  (`training_rows`, one host), or with `rows` None of every row of one pass over the split:
  encoder input tokens and decoder target tokens, per row. (SeqIO shuffles through a
  buffer, so the first rows follow the split's file order in part; where that order is not
  random, only a whole pass gives the mean of the split.)"""
  enc = dec = n = 0
  ds = training_rows(cfg, num_epochs=1) if rows is None else training_rows(cfg).take(rows)
  for row in ds.as_numpy_iterator():
    enc += int((row["encoder_input_tokens"] != 0).sum())
    dec += int((row["decoder_target_tokens"] != 0).sum())
    n += 1
  if not n:
    raise SbsError(f"{cfg.mixture_or_task} split {cfg.train_split!r} yields no training "
                   "rows: " + _FIX_TRAIN)
  rows = n
  return {"rows": rows, "inputs_per_row": enc / rows, "targets_per_row": dec / rows,
          "per_row": (enc + dec) / rows,
          "fill": (enc + dec) / (rows * sum(cfg.task_feature_lengths.values()))}


_FIX_TRAIN = ("annotate more examples (sbs annotate), or use a larger DataConfig.train_split "
              "(train, train_50, train_25, train_12.5)")


_tasks_of = tasks_of


def check_train_split(cfg: DataConfig) -> None:
  """Refuses, before anything is written, a training split in which a task of the
  mixture has no example (a tiny dataset, or a train_<pct> subsample that keeps none)."""
  for task in _tasks_of(cfg.mixture_or_task):
    ds = task.get_dataset(sequence_length=None, split=cfg.train_split, shuffle=False,
                          num_epochs=1)
    if not any(True for _ in ds.take(1).as_numpy_iterator()):
      dataset = getattr(task.source, "dataset", task.name)
      raise SbsError(f"dataset {dataset}: split {cfg.train_split!r} has no examples for "
                     f"{task.name}: " + _FIX_TRAIN)


@dataclasses.dataclass
class LabelExamples:
  """Tokenized inputs of a label task split, padded to one shape, with their targets."""
  inputs: np.ndarray  # [n, length] int32
  input_texts: list[str]
  targets: list  # postprocessed targets, as the task's metric functions take them
  ids: list[str]
  total: int = 0  # examples in the split (more than len(ids) when capped)

  def __post_init__(self):
    self.total = max(self.total, len(self.ids))


def label_examples(task_name: str, split: str, max_examples: int | None = None,
                   max_input_length: int = 2048, length_multiple: int = 64
                   ) -> LabelExamples:
  """The task's examples of `split` in file order (inputs end with EOS)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length={"inputs": max_input_length, "targets": 512},
                        split=split, shuffle=False, num_epochs=1)
  rows, texts, targets, ids = [], [], [], []
  for ex in (ds.take(max_examples) if max_examples else ds).as_numpy_iterator():
    rows.append(ex["inputs"])
    texts.append(ex["inputs_pretokenized"].decode("utf-8"))
    targets.append(task.postprocess_fn(ex["targets_pretokenized"], example=ex,
                                       is_target=True))
    ids.append(ex["id"].decode("utf-8"))
  if not rows:
    raise SbsError(empty_split_message(task, split))
  total = len(rows)
  if max_examples and total == max_examples:  # capped: how many the split holds
    total = split_size(task, split, ds)
  return LabelExamples(pad_rows(rows, length_multiple), texts, targets, ids, total)


def split_size(task: seqio.Task, split: str, dataset=None) -> int:
  """How many examples `split` of `task` holds (file order, one epoch).

  Where the task's last preprocessors keep the example count (tokenizing and adding EOS:
  `preprocessors.maps_one_to_one`), only the steps before them run; tokenizing a whole
  split only to count it took seconds of every run's start. Otherwise `dataset` (the
  task's pipeline for the split, unshuffled, one epoch; built if None) is counted."""
  steps = list(task.preprocessors)
  first = len(steps)  # the start of the steps at the end that keep the count
  while first > 0 and maps_one_to_one(steps[first - 1]):
    first -= 1
  if first < len(steps):
    ds = task.source.get_dataset(split=split, shuffle=False)
    for step in steps[:first]:
      ds = seqio.utils.add_kwargs_to_transform(
          step, sequence_length=None, output_features=task.output_features)(ds)
  else:
    ds = dataset if dataset is not None else task.get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1)
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def empty_split_message(task: seqio.Task, split: str) -> str:
  """Why `split` of a task holds no example, and how to fix it."""
  source = task.source
  dataset = getattr(source, "dataset", task.name)
  if split == "validation" and hasattr(source, "has_own_validation") and \
     not source.has_own_validation():
    fraction = getattr(source, "validation_fraction", 0.1)
    return (f"dataset {dataset}: the validation split is empty: with no valid records, "
            f"validation is a {fraction:.0%} carve of the train records, and the train "
            f"records give none; annotate more train examples, or annotate a valid split "
            f"of its own (sbs annotate --split valid)")
  return (f"dataset {dataset}: split {split!r} has no examples for {task.name}: annotate "
          f"that split (sbs annotate --split ...), or score another split")
