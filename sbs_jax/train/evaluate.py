"""Decoding and scoring of the label task (validation for model selection, test at the end),
and rationale decoding on request.

The label is decoded greedily (or by beam search), or, with `label_mode` rank (`sbs eval
--label_mode rank`), chosen among the dataset's closed set of labels by their
log-likelihood (rank classification; ties: the first candidate)."""

from __future__ import annotations

import jax
import seqio

from sbs_jax.annotate import answer_formats, benchmarks
from sbs_jax.errors import SbsError
from sbs_jax.task_kinds import LABEL_PREFIX, RATIONALE_PREFIX
from sbs_jax.train.config import EvalConfig
from sbs_jax.model.student import EOS_ID, Student, decode, detokenize, pad_rows, rank
from sbs_jax.train.data import LabelExamples, label_examples


def task_label_set(task_name: str) -> answer_formats.LabelSet:
  """The closed set of labels of a label task's dataset (benchmarks.label_set), or OPEN
  for a task that does not read an annotation dir."""
  source = seqio.get_mixture_or_task(task_name).source
  if not hasattr(source, "dataset") or not hasattr(source, "annotation_dir"):
    return answer_formats.OPEN
  return benchmarks.label_set(source.dataset, source.annotation_dir)


def evaluate(student: Student, params, task_name: str, split: str, cfg: EvalConfig,
             examples: LabelExamples | None = None, label_mode: str = "greedy"
             ) -> tuple[dict, list[dict]]:
  """Label-task metrics on `split` and the per-example predictions; `label_mode` rank
  scores the dataset's closed set of labels instead of decoding (SbsError where it has
  none, or an input lists no choices)."""
  task = seqio.get_mixture_or_task(task_name)
  examples = examples or label_examples(task_name, split, cfg.max_examples)
  vocabulary = task.output_features["targets"].vocabulary
  if label_mode == "rank":
    texts = rank(student, params, vocabulary, examples.inputs,
                 candidates(task_name, examples), cfg.batch_size)
  else:
    texts = [detokenize(vocabulary, row) for row in
             decode(student, params, examples.inputs, cfg.batch_size,
                    cfg.label_decode_length, cfg.beam_size)]
  predictions = [task.postprocess_fn(text, is_target=False) for text in texts]
  metrics = {"examples": len(predictions)}
  if examples.total > len(predictions):  # capped: the split holds more
    metrics["split_examples"] = examples.total
  for metric_fn in task.metric_fns:
    metrics.update(metric_fn(examples.targets, predictions))
  rows = [{"id": i, "input": x, "target": t, "prediction": p}
          for i, x, t, p in zip(examples.ids, examples.input_texts, examples.targets,
                                predictions)]
  return metrics, rows


def candidates(task_name: str, examples: LabelExamples) -> list[tuple[str, ...]]:
  """Each example's candidate labels for rank classification, from its raw input."""
  label_set = task_label_set(task_name)
  if not label_set.closed:
    dataset = getattr(seqio.get_mixture_or_task(task_name).source, "dataset", task_name)
    raise SbsError(benchmarks.no_label_set(f"dataset {dataset} ({task_name})"))
  out = [label_set.candidates(raw_input(text)) for text in examples.input_texts]
  for ident, found in zip(examples.ids, out):
    if not found:
      raise SbsError(f"{task_name}: example {ident}: the input "
                     f"{answer_formats.NO_CHOICES}")
  return out


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
