"""Packing training examples into rows over windows of the stream (`DataConfig.packing`
= "best_fit" or "pair_fit").

SeqIO packs next-fit (`seqio.utils.trim_and_pack_dataset`): an example that does not fit
the open row closes it, so short rows of two or three examples lose much of their last
slot. `pack_windows` packs each window of `window` consecutive examples of the stream (the
last window of a finite stream may be shorter) by one of two rules. An example's size is
the sum of its features' shares of their row lengths.

- best_fit: best-fit decreasing. The examples by decreasing size, each into the fullest
  row where every feature fits, else into a new row.
- pair_fit: one row at a time. The largest example left opens it; then, while any example
  left fits the room that remains, the two examples left that together fill most of that
  room join it (the largest one that fits where no two do). A window of more than
  `PAIR_FIT_CELLS` distinct sizes is packed best-fit. Pairs need examples of many
  sizes in a window, and a split's file order can put the long examples first (CQA's
  does), which SeqIO's shuffle buffer of 1,000 examples keeps: pair_fit first passes the
  stream through a shuffle buffer (seeded) as large as the split, at most `PAIR_FIT_SHUFFLE`
  examples. The buffer fills before the first row, so a run's first batch waits for the
  split to be tokenized once (CQA: about 4 s), and an example may move by up to the buffer's
  size, also across the boundary of two passes over the split. Rows of two to
  four examples come out fuller than best-fit makes them: CQA's paired training examples
  in rows of 288/104, over one pass of the trainer's stream, 96.6% real tokens against
  87.1% (docs/scale.md, "Pair-fit packing").

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
import math
from typing import Mapping

import numpy as np

PACKINGS = ("next_fit", "best_fit", "pair_fit")
WINDOWED = ("best_fit", "pair_fit")  # the rules of this module, over windows of examples
# pair_fit's largest shuffle buffer, in examples (a whole split of CQA, SVAMP or ANLI round
# 1). Part of the rule: a run pins "pair_fit" (run.json), so a new size needs a new rule name.
PAIR_FIT_SHUFFLE = 16384
# A window whose examples come in more distinct (inputs, targets) sizes than this is packed
# best-fit: pair-fit's table would cost more than it fills. Sizes that spread so widely
# make rows of one or two examples, where the two rules fill alike (4,096 examples of
# uniform sizes in rows of 1024/352: best-fit 92.8% real, pair-fit 92.6%, at 88,000 and
# 1,000 examples a second).
PAIR_FIT_CELLS = 1 << 15
_SUFFIXES = ("", "_segment_ids", "_positions")


def pair_fit_shuffle(examples: int) -> int:
  """pair_fit's shuffle buffer for a stream of `examples` per pass (module doc)."""
  return max(1, min(PAIR_FIT_SHUFFLE, int(examples)))


def assign_rows(sizes: np.ndarray, capacity, rule: str = "best_fit") -> np.ndarray:
  """The row of each example (an [n, features] array of sizes, each within `capacity`) by
  `rule` (best_fit or pair_fit, module doc); rows numbered 0, 1, ... in the stream order
  of their first example placed (the one that opened them).

  An example's size is the sum of its features' shares of their capacities, in integers
  (share x the product of the capacities), so ties and choices are exact; a feature that
  repeats another (the same capacity and sizes) changes nothing.
  """
  if rule not in WINDOWED:
    raise ValueError(f"packing rule {rule!r}: use one of {', '.join(WINDOWED)}")
  sizes = np.asarray(sizes, np.int64).reshape(-1, len(capacity))
  columns = np.unique(np.vstack([np.asarray(capacity, np.int64)[None], sizes]), axis=1)
  capacity, sizes = columns[0], columns[1:]
  count = len(sizes)
  score = sizes @ (np.prod(capacity) // capacity)
  if rule == "pair_fit" and math.prod(
      len(np.unique(column)) for column in sizes.T) <= PAIR_FIT_CELLS:
    row, opener = _pair_fit(sizes, capacity, score)
    rank = np.empty(len(opener), np.int64)
    rank[np.argsort(opener)] = np.arange(len(opener))
    return rank[row]
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


def _pair_fit(sizes: np.ndarray, capacity: np.ndarray, score: np.ndarray
              ) -> tuple[np.ndarray, list[int]]:
  """pair_fit's rows (module doc) of distinct features `sizes` [n, 1 or 2]: each example's
  row (numbered as opened) and each row's opener.

  Examples of the same sizes are interchangeable (taken in stream order), so the search runs
  over the distinct (inputs, targets) cells left: a table holds, for every pair of room
  values, the best cell left that fits (the largest, ties to the highest cell number), and
  each candidate first example meets its best partner in it at one lookup."""
  count_examples = len(sizes)
  if sizes.shape[1] == 1:  # one feature: a second that never binds
    sizes = np.hstack([sizes, np.zeros_like(sizes)])
    capacity = np.append(capacity, 0)
  if sizes.shape[1] != 2:
    raise ValueError(f"pair_fit packs rows of one or two distinct features; these have "
                     f"{sizes.shape[1]} (lengths {capacity.tolist()}): use best_fit")
  (v_in, c_in), (v_tg, c_tg) = (np.unique(sizes[:, k], return_inverse=True) for k in range(2))
  width = len(v_tg)
  cells = len(v_in) * width
  cell = c_in.reshape(-1) * width + c_tg.reshape(-1)
  left = np.bincount(cell, minlength=cells)
  cell_score = np.zeros(cells, np.int64)
  cell_score[cell] = score
  cell_in, cell_tg = v_in[np.arange(cells) // width], v_tg[np.arange(cells) % width]
  shift = max(int(cells).bit_length(), 1)
  mask = (1 << shift) - 1
  keys = (cell_score << shift) | np.arange(cells)  # the larger cell, ties: the higher number
  waiting = [[] for _ in range(cells)]  # each cell's examples left, latest first
  for i in np.argsort(cell, kind="stable")[::-1].tolist():
    waiting[cell[i]].append(i)
  row = np.full(count_examples, -1, np.int64)
  openers: list[int] = []

  def table():
    """best[a, b]: the key of the best cell left with inputs <= v_in[a], targets <= v_tg[b]
    (-1: none)."""
    best = np.where(left > 0, keys, -1).reshape(len(v_in), width)
    return np.maximum.accumulate(np.maximum.accumulate(best, 0), 1)

  def lookup(best, room_in, room_tg):
    a = np.searchsorted(v_in, room_in, side="right") - 1
    b = np.searchsorted(v_tg, room_tg, side="right") - 1
    return np.where((a >= 0) & (b >= 0), best[np.maximum(a, 0), np.maximum(b, 0)], -1)

  def take(c: int) -> tuple[int, int]:
    left[c] -= 1
    i = waiting[c].pop()
    row[i] = len(openers) - 1
    return int(sizes[i, 0]), int(sizes[i, 1])

  for first in np.argsort(-score, kind="stable").tolist():  # openers: largest, ties: stream
    if row[first] >= 0:
      continue
    openers.append(first)
    used = take(int(cell[first]))
    room_in, room_tg = int(capacity[0]) - used[0], int(capacity[1]) - used[1]
    while True:
      alive = np.nonzero(left > 0)[0]
      alive = alive[(cell_in[alive] <= room_in) & (cell_tg[alive] <= room_tg)]
      if not len(alive):
        break
      best = table()
      partner = lookup(best, room_in - cell_in[alive], room_tg - cell_tg[alive])
      value = cell_score[alive] + np.where(partner >= 0, partner >> shift, 0)
      # A cell's best partner may be the cell itself with one example left: look again
      # without it, for those that could still beat the best pair found.
      alone = (partner >= 0) & ((partner & mask) == alive) & (left[alive] < 2)
      good = np.where(alone, -1, value)
      for k in np.nonzero(alone)[0][np.argsort(-value[alone], kind="stable")].tolist():
        if value[k] <= good.max():
          break
        left[alive[k]] -= 1
        other = lookup(table(), room_in - cell_in[alive[k]], room_tg - cell_tg[alive[k]])
        left[alive[k]] += 1
        partner[k] = other
        good[k] = cell_score[alive[k]] + (other >> shift if other >= 0 else 0)
      k = int(np.argmax(good))  # ties: the lowest cell number
      got = take(int(alive[k]))
      room_in, room_tg = room_in - got[0], room_tg - got[1]
      if partner[k] >= 0:
        got = take(int(partner[k] & mask))
        room_in, room_tg = room_in - got[0], room_tg - got[1]
  return row, openers


def count_rows(sizes: np.ndarray, capacity, window: int, rule: str = "best_fit") -> int:
  """How many rows `pack_windows` makes of a stream of examples of these sizes."""
  return sum(int(assign_rows(sizes[start:start + window], capacity, rule).max()) + 1
             for start in range(0, len(sizes), window))


def pack_window(sizes: np.ndarray, *values: np.ndarray, capacity,
                rule: str = "best_fit") -> list[np.ndarray]:
  """One window's rows by `rule`: for each feature (values [n, capacity of the feature],
  its first `sizes[:, k]` tokens real), the packed tokens, segment ids and positions,
  [rows, length]."""
  sizes = np.asarray(sizes, np.int64)
  count = len(sizes)
  if not count:
    return [np.zeros((0, length), np.int32) for length in capacity for _ in _SUFFIXES]
  row = assign_rows(sizes, capacity, rule)
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


def pack_windows(ds, feature_lengths: Mapping[str, int], window: int,
                 rule: str = "best_fit", seed: int = 0,
                 shuffle_buffer: int = PAIR_FIT_SHUFFLE):
  """`ds` (a tf.data.Dataset of 1-D features, one example per element) packed by `rule`
  (best_fit, or pair_fit after a shuffle through `shuffle_buffer` examples with `seed`) over
  windows of `window` examples (module doc): the same features as
  `seqio.utils.trim_and_pack_dataset`."""
  if rule not in WINDOWED:
    raise ValueError(f"packing rule {rule!r}: use one of {', '.join(WINDOWED)}")
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
        functools.partial(pack_window, capacity=capacity, rule=rule),
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
  if rule == "pair_fit":
    ds = ds.shuffle(pair_fit_shuffle(shuffle_buffer), seed=seed)
  ds = ds.padded_batch(window, padded_shapes=shapes)  # the last, partial window too
  return ds.map(tf.autograph.experimental.do_not_convert(pack),
                num_parallel_calls=tf.data.AUTOTUNE).unbatch()
