"""The model dir of one run: its identity (`run.json`), refusing another run's dir, and
removing what a failed fresh run created.

`run.json` holds a canonical fingerprint of everything that makes two runs different runs:
the data (task or mixture, split, lengths, packing, batch size, seed, annotation dir), the
vocabulary (sha256 of the SentencePiece file), the network, alpha, the optimizer, the seed,
the initial checkpoint and how the best step is chosen. It is written before anything else
and checked before anything in the dir is touched: rerunning the same config resumes (or
finishes) the run; any other config is refused with one line saying what differs.

May differ on resume (how long and how often, not what is learned): `train_steps` (a
longer or shorter run; the linear schedule then ends at the new last step), how often the
run logs, evaluates and checkpoints, how many checkpoints it keeps, the mesh and
partitioning, gradient accumulation, `remat_policy`, and the test / rationale-sample
settings of evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import jax
import tensorflow as tf

from sbs_jax.errors import SbsError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
FORMAT = 1
# Network fields that change neither the parameters nor the numbers (beyond rounding).
_FREE_NETWORK_FIELDS = ("remat_policy",)
_FREE_OPTIMIZER_FIELDS = ("grad_accum_steps",)


def absolute(path: str | None) -> str | None:
  """A local path made absolute (against the working directory); URLs (gs://) as given."""
  if not path or "://" in path:
    return path
  import os  # pylint: disable=import-outside-toplevel
  return os.path.abspath(path)


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes (local or gs://)."""
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def identity(cfg, model_config, label_task: str, vocabulary_file: str, extra_ids: int,
             annotation_dir: str) -> dict:
  """The fingerprint of a run (JSON-canonical: lists, sorted keys)."""
  network = {k: v for k, v in dataclasses.asdict(model_config).items()
             if k not in _FREE_NETWORK_FIELDS}
  optimizer = {k: v for k, v in dataclasses.asdict(cfg.optimizer).items()
               if k not in _FREE_OPTIMIZER_FIELDS}
  data = cfg.data
  fields = {
      "mixture_or_task": data.mixture_or_task, "eval_task": label_task,
      "train_split": data.train_split, "task_feature_lengths": data.task_feature_lengths,
      "pack": data.pack, "batch_size": data.batch_size, "data_seed": data.seed,
      "annotation_dir": absolute(annotation_dir),
      "vocabulary_sha256": file_sha256(vocabulary_file) if vocabulary_file else None,
      "extra_ids": extra_ids, "network": network, "alpha": cfg.alpha,
      "optimizer": optimizer, "seed": cfg.seed,
      "initial_checkpoint": absolute(cfg.initial_checkpoint),
      "selection_metric": cfg.eval.selection_metric,
      "validation_examples": cfg.eval.max_examples, "beam_size": cfg.eval.beam_size,
      "label_decode_length": cfg.eval.label_decode_length,
  }
  return json.loads(json.dumps(fields, sort_keys=True))


def _show(value) -> str:
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef"
                                                         for c in value):
    return value[:12] + "..."  # a sha256
  return json.dumps(value, sort_keys=True)


def differences(stored: dict, current: dict) -> list[str]:
  """'field X (this run: Y)' for each field that differs, nested dicts by their keys."""
  out = []
  for key in sorted(set(stored) | set(current)):
    a, b = stored.get(key), current.get(key)
    if a == b:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      out += [f"{key}.{d}" for d in differences(a, b)]
    else:
      out.append(f"{key} {_show(a)} (this run: {_show(b)})")
  return out


def _refuse(model_dir: str, what: str) -> SbsError:
  return SbsError(f"MODEL_DIR {model_dir} holds {what}: use a new MODEL_DIR "
                  f"(or --gin.MODEL_DIR=\"'<new dir>'\"), or delete it to start over")


class RunDir:
  """Claims a model dir for a run; `abandon()` removes what a failed fresh run created.

  Every host checks (all read the same files, so all refuse together); host 0 writes and
  removes.
  """

  def __init__(self, model_dir: str, fingerprint: dict, train_steps: int):
    self.model_dir = model_dir
    self._writer = jax.process_index() == 0
    self._created = _missing_ancestors(model_dir)  # dirs this run makes, deepest first
    self._before = self._check(fingerprint, train_steps)
    if self._writer:
      tf.io.gfile.makedirs(model_dir)
      tmp = f"{model_dir}/.{RUN_FILE}.tmp"  # renamed whole: other hosts never read half
      with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps({"format": FORMAT, "identity": fingerprint,
                            "train_steps": train_steps}, indent=2, sort_keys=True))
      tf.io.gfile.rename(tmp, f"{model_dir}/{RUN_FILE}", overwrite=True)

  def _check(self, fingerprint: dict, train_steps: int) -> set[str]:
    """The dir's entries before this run; refuses another run's dir."""
    if not tf.io.gfile.exists(self.model_dir):
      return set()
    before = {name.rstrip("/") for name in tf.io.gfile.listdir(self.model_dir)
              if not name.startswith(f".{RUN_FILE}")}
    if RUN_FILE not in before:
      if before:
        names = sorted(before)
        raise _refuse(self.model_dir, f"files but no {RUN_FILE} ({', '.join(names[:4])}"
                      f"{', ...' if len(names) > 4 else ''}), so not a run of this sbs train")
      return before
    path = f"{self.model_dir}/{RUN_FILE}"
    try:
      with tf.io.gfile.GFile(path) as f:
        stored = json.load(f)
      stored_identity, stored_steps = stored["identity"], stored["train_steps"]
    except (ValueError, KeyError, TypeError) as e:
      raise SbsError(f"{path} is damaged ({e}): use a new MODEL_DIR, or delete "
                     f"{self.model_dir} to start over") from None
    diff = differences(stored_identity, fingerprint)
    if diff:
      raise _refuse(self.model_dir, "a run of another " + "; ".join(diff))
    if stored_steps != train_steps:
      log.warning("%s: train_steps %d -> %d; a linear learning-rate schedule now ends at "
                  "step %d", self.model_dir, stored_steps, train_steps, train_steps)
    return before

  @property
  def fresh(self) -> bool:
    """Whether this run started the dir (there was no run.json)."""
    return RUN_FILE not in self._before

  def abandon(self) -> None:
    """After a fresh run failed before its first checkpoint: removes what it made."""
    if not self._writer or not self.fresh or not tf.io.gfile.exists(self.model_dir):
      return
    for name in tf.io.gfile.listdir(self.model_dir):
      name = name.rstrip("/")
      if name not in self._before:
        path = f"{self.model_dir}/{name}"
        if tf.io.gfile.isdir(path):
          tf.io.gfile.rmtree(path)
        else:
          tf.io.gfile.remove(path)
    for path in self._created:  # made by this run; removed only when left empty
      if tf.io.gfile.isdir(path) and not tf.io.gfile.listdir(path):
        tf.io.gfile.rmtree(path)
    log.info("removed what this failed run had created in %s", self.model_dir)


def _missing_ancestors(path: str) -> list[str]:
  """`path` and its parents that do not exist yet, deepest first (local paths only)."""
  if "://" in path:
    return []
  import os  # pylint: disable=import-outside-toplevel
  out, current = [], os.path.abspath(path)
  while current and not os.path.exists(current):
    out.append(current)
    parent = os.path.dirname(current)
    if parent == current:
      break
    current = parent
  return out
