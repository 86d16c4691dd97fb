"""Decoding batches for serving: inputs tokenized and truncated, sorted by length, padded to
a few fixed bucket lengths.

Rows of similar length go together (little padding), and every batch has one of a handful
of shapes (batch size x a bucket length), so XLA compiles a few programs, not one per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from sbs_jax.model.decoding import EOS_ID
from sbs_jax.model.student import pad_rows

SMALLEST_BUCKET = 16


def bucket_lengths(max_length: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
  """16, 24, 32, 48, 64, 96, ... (steps of 1.5x and 4/3x: at most a third is padding) up
  to and including `max_length`."""
  lengths, power = [], smallest
  while power < max_length:
    lengths += [power, power * 3 // 2]
    power *= 2
  return tuple(sorted({n for n in lengths if n < max_length} | {max_length}))


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(f"{length} tokens exceed the largest bucket {buckets[-1]}")


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One input's token ids (ending with EOS) and whether it was cut to fit."""
  ids: tuple[int, ...]
  truncated: bool
  tokens: int  # the input's length before truncation, EOS included


def encode(vocabulary, text: str, max_length: int) -> Encoded:
  """`text` tokenized, cut to `max_length - 1` tokens, EOS appended (as the training
  inputs were built)."""
  ids = list(vocabulary.encode(text))
  kept = ids[:max_length - 1]
  return Encoded(tuple(kept) + (EOS_ID,), len(kept) < len(ids), len(ids) + 1)


def length_sorted_batches(rows: Sequence[Encoded], batch_size: int, buckets: Sequence[int]
                          ) -> Iterator[tuple[list[int], np.ndarray]]:
  """(positions in `rows`, int32 ids [n <= batch_size, bucket]) for batches of rows sorted
  by length (only the last batch has fewer rows)."""
  order = sorted(range(len(rows)), key=lambda i: (len(rows[i].ids), i))
  for start in range(0, len(order), batch_size):
    chosen = order[start:start + batch_size]
    width = bucket_for(max(len(rows[i].ids) for i in chosen), buckets)
    yield chosen, pad_rows([rows[i].ids for i in chosen], length_multiple=width)
