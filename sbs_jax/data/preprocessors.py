"""SeqIO preprocessors from annotation records to the student's two tasks.

- Label task: `predict: <input>` -> the gold label or the teacher's label.
- Rationale task: `explain: <input>` -> the teacher's rationale (records whose completion
  did not parse are left out; `sbs annotate` counts them in its stats).
- Standard finetuning / distillation: the label task without a prefix.
- Paired: one example holding both tasks of a record, so that a packed batch always has
  the label and the rationale of each example it contains (see `features.py`).

Every example carries `task` (LABEL = 1, RATIONALE = 2). On evaluation splits the label
targets are always the gold label where there is one, whichever label trained the model:
the paper reports accuracy against gold labels.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from sbs_jax.task_kinds import LABEL_PREFIX, RATIONALE_PREFIX

LABEL, RATIONALE = 1, 2
LABEL_FIELDS = ("label", "llm_label")


def _has(record, label_field: str) -> tf.Tensor:
  """Whether the record has the wanted label (gold present / teacher answer parsed)."""
  flag = record["has_label"] if label_field == "label" else record["parse_ok"]
  return tf.equal(flag, 1)


def _label_target(record, label_field: str) -> tf.Tensor:
  if label_field == "label":
    return record["label"]
  use_gold = tf.logical_and(tf.equal(record["evaluation"], 1),
                            tf.equal(record["has_label"], 1))
  return tf.where(use_gold, record["label"], record["llm_label"])


def _keep_for_label(record, label_field: str) -> tf.Tensor:
  if label_field == "label":
    return _has(record, "label")
  # On evaluation splits a gold label is enough; in training the teacher's label is used.
  return tf.logical_or(_has(record, "llm_label"),
                       tf.logical_and(tf.equal(record["evaluation"], 1),
                                      _has(record, "label")))


def _passthrough(record) -> dict:
  return {"id": record["id"], "index": record["index"]}


@seqio.map_over_dataset
def _label_example(record, label_field: str, prefix: str):
  return dict(_passthrough(record), inputs=tf.strings.join([prefix, record["input"]]),
              targets=_label_target(record, label_field), task=tf.constant(LABEL, tf.int32))


def label_examples(dataset: tf.data.Dataset, label_field: str = "label",
                   prefix: str = LABEL_PREFIX) -> tf.data.Dataset:
  """Records -> label-task examples (text); records without that label are left out."""
  if label_field not in LABEL_FIELDS:
    raise ValueError(f"label_field must be one of {LABEL_FIELDS}, got {label_field!r}")
  dataset = dataset.filter(lambda r: _keep_for_label(r, label_field))
  return _label_example(dataset, label_field=label_field, prefix=prefix)


def _has_rationale(record) -> tf.Tensor:
  return tf.logical_and(_has(record, "llm_label"),
                        tf.greater(tf.strings.length(tf.strings.strip(record["rationale"])),
                                   0))


def rationale_examples(dataset: tf.data.Dataset,
                       prefix: str = RATIONALE_PREFIX) -> tf.data.Dataset:
  """Records -> rationale-task examples (text); unparsed completions are left out."""
  dataset = dataset.filter(_has_rationale)
  return dataset.map(
      lambda r: dict(_passthrough(r), inputs=tf.strings.join([prefix, r["input"]]),
                     targets=r["rationale"], task=tf.constant(RATIONALE, tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE)


def _tokens(vocabulary: seqio.Vocabulary, text: tf.Tensor, max_length: int) -> tf.Tensor:
  """Token ids of `text`, cut to max_length - 1, then EOS."""
  return _cut_tokens(vocabulary, text, max_length)[0]


def _cut_tokens(vocabulary: seqio.Vocabulary, text: tf.Tensor, max_length: int):
  """(token ids of `text` cut to max_length - 1 then EOS, 1 if it was cut else 0)."""
  ids = tf.cast(vocabulary.encode_tf(text), tf.int32)
  cut = tf.cast(tf.size(ids) > max_length - 1, tf.int32)
  ids = ids[:max_length - 1]
  return tf.concat([ids, tf.constant([vocabulary.eos_id], tf.int32)], axis=0), cut


def paired_examples(dataset: tf.data.Dataset,
                    output_features: Mapping[str, seqio.Feature],
                    label_field: str = "label", input_length: int = 512,
                    label_length: int = 64, rationale_length: int = 256
                    ) -> tf.data.Dataset:
  """Records -> one tokenized example per record holding both tasks.

  `inputs` = predict-part + explain-part, `targets` = label-part + rationale-part, each part
  cut to its own length and ended with EOS (`parts_cut`: how many parts were cut);
  `inputs_part` / `targets_part` say which task each token belongs to (LABEL or
  RATIONALE). A record without a usable rationale gives
  the label part alone.
  """
  if label_field not in LABEL_FIELDS:
    raise ValueError(f"label_field must be one of {LABEL_FIELDS}, got {label_field!r}")
  in_vocab = output_features["inputs"].vocabulary
  out_vocab = output_features["targets"].vocabulary
  dataset = dataset.filter(lambda r: _keep_for_label(r, label_field))

  def unit(r):
    predict, cut_p = _cut_tokens(in_vocab, tf.strings.join([LABEL_PREFIX, r["input"]]),
                                 input_length)
    label, cut_l = _cut_tokens(out_vocab, _label_target(r, label_field), label_length)
    explain, cut_e = _cut_tokens(in_vocab, tf.strings.join([RATIONALE_PREFIX, r["input"]]),
                                 input_length)
    rationale, cut_r = _cut_tokens(out_vocab, r["rationale"], rationale_length)
    keep = tf.cast(_has_rationale(r), tf.int32)
    explain = explain[:keep * tf.size(explain)]
    rationale = rationale[:keep * tf.size(rationale)]
    return dict(
        _passthrough(r),
        inputs=tf.concat([predict, explain], 0),
        targets=tf.concat([label, rationale], 0),
        inputs_part=tf.concat([tf.fill(tf.shape(predict), LABEL),
                               tf.fill(tf.shape(explain), RATIONALE)], 0),
        targets_part=tf.concat([tf.fill(tf.shape(label), LABEL),
                                tf.fill(tf.shape(rationale), RATIONALE)], 0),
        inputs_pretokenized=tf.strings.join([LABEL_PREFIX, r["input"]]),
        targets_pretokenized=_label_target(r, label_field),
        # Parts cut to their caps (PART_LENGTHS): counted by the trainer's length check.
        parts_cut=cut_p + cut_l + keep * (cut_e + cut_r),
        task=tf.constant(LABEL, tf.int32))

  return dataset.map(unit, num_parallel_calls=tf.data.AUTOTUNE)
