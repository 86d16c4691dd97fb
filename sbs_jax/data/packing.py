"""Best-fit packing of training examples into rows (`DataConfig.packing = "best_fit"`).

SeqIO packs next-fit (`seqio.utils.trim_and_pack_dataset`): an example that does not fit
the open row closes it, so short rows of two or three examples lose much of their last
slot. `pack_best_fit` packs each window of `window` consecutive examples of the stream (the
last window of a finite stream may be shorter) best-fit decreasing: the examples by
decreasing size, each into the fullest row where every feature fits, else into a new row.
Rows come out in the stream order of the example that opened each of them, and the examples
of a row in their stream order.

It is a function of the input stream alone (no state across windows, no randomness), so a
resumed run that skips the batches it trained on, and each host packing its own shard, see
the rows of an uninterrupted run. Its output is SeqIO's: every key of the lengths trimmed
as SeqIO trims it and padded, with `<key>_segment_ids` (1, 2, ... by example within the row,
0 on padding) and `<key>_positions` (0, 1, ... within each example).
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

PACKINGS = ("next_fit", "best_fit")
_SUFFIXES = ("", "_segment_ids", "_positions")


def assign_rows(sizes: np.ndarray, capacity) -> np.ndarray:
  """The row of each example (an [n, features] array of sizes, each within `capacity`),
  best-fit decreasing; rows numbered 0, 1, ... in the stream order of their first example
  placed (the one that opened them).

  An example's size is the sum of its features' shares of their capacities, in integers
  (share x the product of the capacities), so ties and choices are exact; a feature that
  repeats another (the same capacity and sizes) changes nothing.
  """
  sizes = np.asarray(sizes, np.int64).reshape(-1, len(capacity))
  columns = np.unique(np.vstack([np.asarray(capacity, np.int64)[None], sizes]), axis=1)
  capacity, sizes = columns[0], columns[1:]
  count = len(sizes)
  score = sizes @ (np.prod(capacity) // capacity)
  # Per feature, each row's free room (rows numbered as opened), each row's load; Python
  # numbers for the examples (the loop runs once per example).
  free = [np.empty(count, np.int64) for _ in capacity]
  load = np.empty(count, np.int64)
  need = [column.tolist() for column in sizes.T]
  scores = score.tolist()
  opener, row = np.empty(count, np.int64), np.empty(count, np.int64)
  rows = 0
  for i in np.argsort(-score, kind="stable").tolist():  # ties: stream order
    fits = free[0][:rows] >= need[0][i]
    for room, n in zip(free[1:], need[1:]):
      fits &= room[:rows] >= n[i]
    fullest = np.where(fits, load[:rows], -1)
    r = int(fullest.argmax()) if rows else 0  # ties: the oldest row
    if not rows or fullest[r] < 0:  # fits no row: a new one
      r, rows = rows, rows + 1
      for room, c in zip(free, capacity.tolist()):
        room[r] = c
      load[r], opener[r] = 0, i
    for room, n in zip(free, need):
      room[r] -= n[i]
    load[r] += scores[i]
    row[i] = r
  rank = np.empty(rows, np.int64)
  rank[np.argsort(opener[:rows])] = np.arange(rows)
  return rank[row]


def count_rows(sizes: np.ndarray, capacity, window: int) -> int:
  """How many rows `pack_best_fit` makes of a stream of examples of these sizes."""
  return sum(int(assign_rows(sizes[start:start + window], capacity).max()) + 1
             for start in range(0, len(sizes), window))


def pack_window(sizes: np.ndarray, *values: np.ndarray, capacity) -> list[np.ndarray]:
  """One window's rows: for each feature (values [n, capacity of the feature], its first
  `sizes[:, k]` tokens real), the packed tokens, segment ids and positions, [rows, length]."""
  sizes = np.asarray(sizes, np.int64)
  count = len(sizes)
  if not count:
    return [np.zeros((0, length), np.int32) for length in capacity for _ in _SUFFIXES]
  row = assign_rows(sizes, capacity)
  rows = int(row.max()) + 1
  # Within a row, examples in stream order: segment 1, 2, ...; offsets by cumulative size.
  order = np.lexsort((np.arange(count), row))
  first = np.searchsorted(row[order], np.arange(rows))
  place = np.empty(count, np.int64)
  place[order] = np.arange(count)
  segment = place - first[row] + 1
  out = []
  for k, (tokens, length) in enumerate(zip(values, capacity)):
    ends = np.cumsum(sizes[order, k])
    offset = np.empty(count, np.int64)
    offset[order] = ends - sizes[order, k] - np.concatenate([[0], ends])[first][row[order]]
    example, position = np.nonzero(np.arange(length)[None, :] < sizes[:, k, None])
    where = (row[example], offset[example] + position)
    packed = [np.zeros((rows, length), np.int32) for _ in _SUFFIXES]
    packed[0][where] = tokens[example, position]
    packed[1][where] = segment[example]
    packed[2][where] = position
    out += packed
  return out


def pack_best_fit(ds, feature_lengths: Mapping[str, int], window: int):
  """`ds` (a tf.data.Dataset of 1-D features, one example per element) packed best-fit over
  windows of `window` examples (module doc): the same features as
  `seqio.utils.trim_and_pack_dataset`."""
  # TensorFlow only here: the config (sbs_jax.train.config) reads PACKINGS without it.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  keys = list(feature_lengths)
  capacity = [int(feature_lengths[k]) for k in keys]

  def trim(example):
    out = {k: tf.cast(example[k][:feature_lengths[k]], tf.int32) for k in keys}
    out["sizes"] = tf.stack([tf.size(out[k]) for k in keys])
    return out

  def pack(batch):
    packed = tf.numpy_function(
        functools.partial(pack_window, capacity=capacity),
        [batch["sizes"]] + [batch[k] for k in keys], [tf.int32] * (3 * len(keys)),
        stateful=False)
    out = {}
    for i, key in enumerate(keys):
      for j, suffix in enumerate(_SUFFIXES):
        tensor = packed[3 * i + j]
        tensor.set_shape([None, capacity[i]])
        out[key + suffix] = tensor
    return out

  shapes = {k: [n] for k, n in zip(keys, capacity)}
  shapes["sizes"] = [len(keys)]
  ds = ds.map(tf.autograph.experimental.do_not_convert(trim),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.padded_batch(window, padded_shapes=shapes)  # the last, partial window too
  return ds.map(tf.autograph.experimental.do_not_convert(pack),
                num_parallel_calls=tf.data.AUTOTUNE).unbatch()
