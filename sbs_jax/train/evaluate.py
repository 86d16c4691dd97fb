"""Decoding and scoring of the label task (validation for model selection, test at the end),
and rationale decoding on request."""

from __future__ import annotations

import jax
import seqio

from sbs_jax.task_kinds import LABEL_PREFIX, RATIONALE_PREFIX
from sbs_jax.train.config import EvalConfig
from sbs_jax.model.student import EOS_ID, Student, decode, detokenize, pad_rows
from sbs_jax.train.data import LabelExamples, label_examples


def evaluate(student: Student, params, task_name: str, split: str, cfg: EvalConfig,
             examples: LabelExamples | None = None) -> tuple[dict, list[dict]]:
  """Label-task metrics on `split` and the per-example predictions."""
  task = seqio.get_mixture_or_task(task_name)
  examples = examples or label_examples(task_name, split, cfg.max_examples)
  vocabulary = task.output_features["targets"].vocabulary
  ids = decode(student, params, examples.inputs, cfg.batch_size, cfg.label_decode_length,
               cfg.beam_size)
  predictions = [task.postprocess_fn(detokenize(vocabulary, row), is_target=False)
                 for row in ids]
  metrics = {"examples": len(predictions)}
  if examples.total > len(predictions):  # capped: the split holds more
    metrics["split_examples"] = examples.total
  for metric_fn in task.metric_fns:
    metrics.update(metric_fn(examples.targets, predictions))
  rows = [{"id": i, "input": x, "target": t, "prediction": p}
          for i, x, t, p in zip(examples.ids, examples.input_texts, examples.targets,
                                predictions)]
  return metrics, rows


def explain(student: Student, params, vocabulary: seqio.Vocabulary, texts: list[str],
            cfg: EvalConfig, max_input_length: int = 1024) -> list[str]:
  """Decoded rationales for raw inputs (the `explain:` task)."""
  if not texts:
    return []
  rows = []
  for text in texts:
    ids = list(vocabulary.encode(RATIONALE_PREFIX + text))[:max_input_length - 1] + [EOS_ID]
    rows.append(ids)
  inputs = pad_rows(rows)
  ids = decode(student, params, inputs, min(cfg.batch_size, len(rows)),
               cfg.rationale_decode_length)
  return [detokenize(vocabulary, row) for row in ids]


def raw_input(prefixed: str) -> str:
  """The example's own text, without the label task's prefix."""
  return prefixed[len(LABEL_PREFIX):] if prefixed.startswith(LABEL_PREFIX) else prefixed
