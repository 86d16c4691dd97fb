"""Decoding and scoring of the label task (validation for model selection, test at the end),
and rationale decoding on request."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
import seqio

from sbs_jax.task_kinds import LABEL_PREFIX, RATIONALE_PREFIX
from sbs_jax.model import decoding
from sbs_jax.train.config import EvalConfig
from sbs_jax.train.data import LabelExamples, label_examples, pad_rows
from sbs_jax.train.state import Student

EOS_ID = 1


def decode_batch_size(student: Student, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the mesh's data axis."""
  shards = student.mesh.shape["data"]
  return -(-batch_size // shards) * shards


def sharded_rows(student: Student, rows: np.ndarray) -> jax.Array:
  """One decoding batch (the same rows on every host) as a global array split over the
  mesh's data axis: each data shard decodes its own rows, none decodes all of them."""
  hosts, host = jax.process_count(), jax.process_index()
  per_host = len(rows) // hosts  # the data axis is a multiple of the hosts (make_mesh)
  return jax.make_array_from_process_local_data(
      student.batch_sharding, rows[host * per_host:(host + 1) * per_host], rows.shape)


def decode(student: Student, params, inputs: np.ndarray, batch_size: int,
           max_decode_length: int, beam_size: int = 1) -> np.ndarray:
  """Token ids [n, max_decode_length] for input ids [n, length], in fixed-shape batches
  split over the data axis (every host holds all `inputs` and gets all the ids back)."""
  n = len(inputs)
  batch_size = decode_batch_size(student, batch_size)
  padded = -(-n // batch_size) * batch_size
  inputs = np.concatenate([inputs, np.zeros((padded - n, inputs.shape[1]), inputs.dtype)])
  outputs = []
  with student.sharding_context():
    for start in range(0, padded, batch_size):
      chunk = sharded_rows(student, inputs[start:start + batch_size])
      if beam_size > 1:
        out = decoding.beam_search(student.model, params, chunk, max_decode_length,
                                   beam_size=beam_size)
      else:
        out = decoding.greedy_decode(student.model, params, chunk, max_decode_length)
      # All hosts' shards of the output, on every host (device_get fails across hosts).
      outputs.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
  return np.concatenate(outputs)[:n]


def detokenize(vocabulary: seqio.Vocabulary, ids) -> str:
  """Text of one decoded row: up to EOS, padding dropped."""
  ids = [int(i) for i in ids]
  if EOS_ID in ids:
    ids = ids[:ids.index(EOS_ID)]
  return vocabulary.decode([i for i in ids if i > 0])


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
