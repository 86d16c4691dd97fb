"""SeqIO preprocessors from annotation records to the student's two tasks.

- Label task: `predict: <input>` -> the gold label or the teacher's label.
- Rationale task: `explain: <input>` -> the teacher's rationale (records whose completion
  did not parse, or whose rationale `sbs annotate --keep` did not keep, are left out;
  `sbs annotate` counts them in its stats).
- Standard finetuning / distillation: the label task without a prefix.
- Paired: one example holding both tasks of a record, so that a packed batch always has
  the label and the rationale of each example it contains (see `features.py`).

Several samples per example (`sbs annotate --num_samples`, one record each): every kept
rationale is a rationale row, while an example's label row comes from its sample-0 record
alone, so that its label's weight does not grow with the number of samples. The teacher's
label of such an example is its vote (`vote_label`), the same in all its records; with
one sample it is the sample's own label (`llm_label`), as before samples existed. In the
paired structure, sample 0's record gives the label part (with its own rationale when
kept) and each other kept sample a unit holding its rationale part alone (training
splits only: an evaluation split has one unit per example).

Every example carries `task` (LABEL = 1, RATIONALE = 2). On evaluation splits the label
targets are always the gold label where there is one, whichever label trained the model:
the paper reports accuracy against gold labels.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from sbs_jax.data.records import DEFAULTS
from sbs_jax.task_kinds import LABEL_PREFIX, RATIONALE_PREFIX

LABEL, RATIONALE = 1, 2
LABEL_FIELDS = ("label", "llm_label")


def as_graph(fn):
  """`fn` for tf.data's map or filter, traced as written: AutoGraph does not rewrite it
  (or what it calls, SentencePiece's tokenizer included). These functions have no Python
  control flow on tensors, and rewriting them took about 1 s of every training process
  (AutoGraph's time in a tiny CQA training: 2.2 s, 1.1 s without ours). A function that did
  need AutoGraph fails when traced, not silently."""
  return tf.autograph.experimental.do_not_convert(fn)


def one_example_each(step):
  """Marks a preprocessor that maps each example to exactly one example (it drops and adds
  none), as seqio's tokenize and append_eos steps do: a task's examples can then be counted
  without running it (`sbs_jax.train.data.split_size`)."""
  step.one_example_each = True
  return step


def maps_one_to_one(step) -> bool:
  """Whether a task's preprocessor (or a functools.partial of one) keeps the example count."""
  step = getattr(step, "func", step)
  return bool(getattr(step, "one_example_each", False)) or step in (
      seqio.preprocessors.tokenize, seqio.preprocessors.tokenize_and_append_eos,
      seqio.preprocessors.append_eos, seqio.preprocessors.append_eos_after_trim)


def _field(record, name: str) -> tf.Tensor:
  """A samples feature of the record; its default (records.DEFAULTS) where the record has
  none (an in-memory source built without it, as before samples existed)."""
  return record[name] if name in record else tf.constant(DEFAULTS[name])


def _several(record) -> tf.Tensor:
  return tf.greater(_field(record, "num_samples"), 1)


def _first(record) -> tf.Tensor:
  """Whether the record is its example's first sample (the one that gives the label row)."""
  return tf.equal(_field(record, "sample"), 0)


def _teacher_label(record) -> tf.Tensor:
  """The teacher's label of the example: the vote over its samples, or with one sample the
  sample's own label."""
  return tf.where(_several(record), _field(record, "vote_label"), record["llm_label"])


def _has(record, label_field: str) -> tf.Tensor:
  """Whether the example has the wanted label (gold present / the teacher's: its answer
  parsed, or with several samples a vote)."""
  if label_field == "label":
    return tf.equal(record["has_label"], 1)
  return tf.where(_several(record), tf.strings.length(_field(record, "vote_label")) > 0,
                  tf.equal(record["parse_ok"], 1))


def _label_target(record, label_field: str) -> tf.Tensor:
  if label_field == "label":
    return record["label"]
  use_gold = tf.logical_and(tf.equal(record["evaluation"], 1),
                            tf.equal(record["has_label"], 1))
  return tf.where(use_gold, record["label"], _teacher_label(record))


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
@as_graph
def _label_example(record, label_field: str, prefix: str):
  return dict(_passthrough(record), inputs=tf.strings.join([prefix, record["input"]]),
              targets=_label_target(record, label_field), task=tf.constant(LABEL, tf.int32))


def label_examples(dataset: tf.data.Dataset, label_field: str = "label",
                   prefix: str = LABEL_PREFIX) -> tf.data.Dataset:
  """Records -> label-task examples (text), one per example (its sample-0 record); examples
  without that label are left out."""
  if label_field not in LABEL_FIELDS:
    raise ValueError(f"label_field must be one of {LABEL_FIELDS}, got {label_field!r}")
  dataset = dataset.filter(as_graph(
      lambda r: tf.logical_and(_first(r), _keep_for_label(r, label_field))))
  return _label_example(dataset, label_field=label_field, prefix=prefix)


def _has_rationale(record) -> tf.Tensor:
  """Whether the record's rationale trains: its completion parsed, `--keep` kept it, and
  it is not blank."""
  return tf.logical_and(
      tf.logical_and(tf.equal(record["parse_ok"], 1), tf.equal(_field(record, "kept"), 1)),
      tf.greater(tf.strings.length(tf.strings.strip(record["rationale"])), 0))


def rationale_examples(dataset: tf.data.Dataset,
                       prefix: str = RATIONALE_PREFIX) -> tf.data.Dataset:
  """Records -> rationale-task examples (text), one per kept rationale; unparsed
  completions and rationales not kept are left out."""
  dataset = dataset.filter(as_graph(_has_rationale))
  return dataset.map(as_graph(
      lambda r: dict(_passthrough(r), inputs=tf.strings.join([prefix, r["input"]]),
                     targets=r["rationale"], task=tf.constant(RATIONALE, tf.int32))),
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
  RATIONALE). A record without a usable rationale gives the label part alone. With
  several samples per example, only the sample-0 record has the label part; each other
  sample with a kept rationale gives the rationale part alone (`task` RATIONALE), on
  training splits, for the examples that have the label.
  """
  if label_field not in LABEL_FIELDS:
    raise ValueError(f"label_field must be one of {LABEL_FIELDS}, got {label_field!r}")
  in_vocab = output_features["inputs"].vocabulary
  out_vocab = output_features["targets"].vocabulary

  def wanted(r):
    more = tf.logical_and(tf.equal(r["evaluation"], 0), _has_rationale(r))
    return tf.logical_and(_keep_for_label(r, label_field),
                          tf.logical_or(_first(r), more))

  dataset = dataset.filter(as_graph(wanted))

  def unit(r):
    predict_text = tf.strings.join([LABEL_PREFIX, r["input"]])
    explain_text = tf.strings.join([RATIONALE_PREFIX, r["input"]])
    predict, cut_p = _cut_tokens(in_vocab, predict_text, input_length)
    label, cut_l = _cut_tokens(out_vocab, _label_target(r, label_field), label_length)
    explain, cut_e = _cut_tokens(in_vocab, explain_text, input_length)
    rationale, cut_r = _cut_tokens(out_vocab, r["rationale"], rationale_length)
    first = _first(r)
    has_label = tf.cast(first, tf.int32)
    keep = tf.cast(_has_rationale(r), tf.int32)
    predict = predict[:has_label * tf.size(predict)]
    label = label[:has_label * tf.size(label)]
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
        inputs_pretokenized=tf.where(first, predict_text, explain_text),
        targets_pretokenized=tf.where(first, _label_target(r, label_field), r["rationale"]),
        # Parts cut to their caps (PART_LENGTHS): counted by the trainer's length check.
        parts_cut=has_label * (cut_p + cut_l) + keep * (cut_e + cut_r),
        task=tf.where(first, tf.constant(LABEL, tf.int32), tf.constant(RATIONALE, tf.int32)))

  return dataset.map(as_graph(unit), num_parallel_calls=tf.data.AUTOTUNE)
