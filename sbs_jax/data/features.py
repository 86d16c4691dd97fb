"""The feature converter from task examples to the student's batches, task ids kept.

`DistillFeatureConverter` is SeqIO's encoder-decoder conversion (same output names as
`seqio.EncDecFeatureConverter` with packing, which T5X models read) plus
`decoder_task_ids`: 1 on label-target tokens, 2 on rationale-target tokens, 0 on padding.
With it the trainer takes the mean loss of each task separately, as the paper's
L = alpha * CE_label + (1 - alpha) * CE_rationale needs, from one packed forward pass.

It accepts two kinds of examples:
- plain task examples (`inputs`, `targets`, scalar `task`), from any of our tasks or a
  mixture of them;
- paired examples (`inputs_part` / `targets_part` per token, see
  `preprocessors.paired_examples`) holding both tasks of a record.
Packing never splits an example, so the two parts of a paired example always land in the
same row. After packing each part becomes its own segment: segment (k, part) gets id
2 * (k - 1) + part, the same on the encoder and the decoder side, so the label part of a
row attends only to its `predict:` input and the rationale part only to its `explain:`
input. Positions restart at 0 in every segment.

Packing is SeqIO's next-fit (`packing="next_fit"`, `seqio.utils.trim_and_pack_dataset`), or
best-fit decreasing or pair-fit over windows of the stream (`packing="best_fit"` or
`"pair_fit"`, `sbs_jax.data.packing`), which fill short rows better; all give the same
features.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from sbs_jax.data import packing as packing_lib
from sbs_jax.data.preprocessors import as_graph

_PART_KEYS = {"inputs": "inputs_part", "targets": "targets_part"}


def _add_parts(example):
  """Plain examples: every token's part is the example's task."""
  example = dict(example)
  for key, part_key in _PART_KEYS.items():
    if part_key not in example:
      task = tf.cast(tf.reshape(example["task"], []), tf.int32)  # one id, of rank 0 or 1
      example[part_key] = tf.fill(tf.shape(example[key]), task)
  return example


def segments_and_positions(row_segments: tf.Tensor, parts: tf.Tensor):
  """Per-token segment ids (one per example part) and positions within each segment."""
  segments = tf.where(row_segments > 0, (row_segments - 1) * 2 + parts, 0)
  index = tf.range(tf.size(segments))
  starts = tf.math.unsorted_segment_min(index, segments, tf.reduce_max(segments) + 1)
  positions = tf.where(segments > 0, index - tf.gather(starts, segments), 0)
  return segments, positions


class DistillFeatureConverter(seqio.FeatureConverter):
  """Encoder-decoder features with packing and per-token task ids (see module doc)."""

  TASK_FEATURES = {
      "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "encoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "encoder_segment_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "encoder_positions": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_segment_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_positions": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {}  # segment ids and positions are always produced

  def __init__(self, *args, packing: str = "next_fit", packing_window: int = 1024,
               seed: int = 0, shuffle_buffer: int = packing_lib.PAIR_FIT_SHUFFLE,
               **kwargs):
    """`packing`: next_fit (SeqIO's), or best_fit or pair_fit over `packing_window`
    examples (module doc; `seed` and `shuffle_buffer`: pair_fit's shuffle); the rest as
    `seqio.FeatureConverter`."""
    if packing not in packing_lib.PACKINGS:
      raise ValueError(f"packing {packing!r}: use one of {', '.join(packing_lib.PACKINGS)}")
    super().__init__(*args, **kwargs)
    self.packing, self.packing_window = packing, packing_window
    self.seed, self.shuffle_buffer = seed, shuffle_buffer

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    lengths = dict(task_feature_lengths)
    lengths.update({part: lengths[key] for key, part in _PART_KEYS.items()})
    ds = ds.map(as_graph(_add_parts), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(as_graph(lambda ex: {k: tf.cast(ex[k], tf.int32) for k in lengths}),
                num_parallel_calls=tf.data.AUTOTUNE)
    if self.pack and self.packing in packing_lib.WINDOWED:
      ds = packing_lib.pack_windows(ds, lengths, self.packing_window, self.packing,
                                    self.seed, self.shuffle_buffer)
    elif self.pack:
      ds = seqio.utils.trim_and_pack_dataset(ds, lengths)
    else:
      ds = seqio.utils.trim_and_pad_dataset(ds, lengths)
    return ds.map(as_graph(self._convert_example), num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_example(self, ex):
    def row_segments(key):
      if self.pack:
        return ex[f"{key}_segment_ids"]
      return tf.cast(tf.not_equal(ex[key], 0), tf.int32)

    enc_seg, enc_pos = segments_and_positions(row_segments("inputs"), ex["inputs_part"])
    dec_seg, dec_pos = segments_and_positions(row_segments("targets"), ex["targets_part"])
    targets = ex["targets"]
    non_padding = tf.cast(tf.not_equal(targets, 0), tf.int32)
    return {
        "encoder_input_tokens": ex["inputs"],
        "encoder_segment_ids": enc_seg,
        "encoder_positions": enc_pos,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
            targets, sequence_id=dec_seg, bos_id=self.bos_id),
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
        "decoder_loss_weights": non_padding,
        "decoder_task_ids": ex["targets_part"] * non_padding,
    }

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    enc, dec = task_feature_lengths["inputs"], task_feature_lengths["targets"]
    return {k: (enc if k.startswith("encoder") else dec) for k in self.MODEL_FEATURES}
