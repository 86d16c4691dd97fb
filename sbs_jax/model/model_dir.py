"""A model dir: the files of one trained (or imported) student, and the only code that
knows their names and formats. `sbs train` writes it; `sbs eval`, `sbs predict`, the
exports and `sbs report` read it through `ModelDir`, so none of them imports the trainer.

    <model_dir>/model.json        the network's config, vocabulary, task prefixes and the
                                  label task's set of labels (when training wrote it)
    <model_dir>/config.gin        the run's gin bindings (what `sbs eval` re-reads)
    <model_dir>/spm.model         the SentencePiece vocabulary (a copy: the dir stands alone)
    <model_dir>/run.json          the run's identity (train/run_dir.py): what a rerun must match
    <model_dir>/metrics.jsonl     every logged step: {"step", "split", metrics...}
    <model_dir>/results.json      the finished run: best step, validation and test metrics
    <model_dir>/checkpoints/<step>/{state,meta}
                                  the full train state, for resuming (keep N, atomic)
    <model_dir>/params/<step>/{params,meta}
                                  the parameters of the best step on validation: what
                                  `sbs eval`, `sbs predict` and export read

`sbs import-hf` and `sbs import-t5x` write the same layout (model.json, spm.model, params/0),
so an imported checkpoint is a model dir that training can start from
(`TrainConfig.initial_checkpoint`). Orbax writes each step to a temporary directory and
renames it when complete, and the JSON and text files are replaced whole (jobdir.files), so
a reader never sees half of a file. Paths are local or gs://.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.model.config import T5Config
from sbs_jax.task_kinds import LABEL_PREFIX, RATIONALE_PREFIX

log = logging.getLogger(__name__)

MODEL_INFO = "model.json"
GIN_CONFIG = "config.gin"  # the gin bindings of the run, for `sbs eval`
VOCAB_FILE = "spm.model"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINTS_DIR = "checkpoints"
PARAMS_DIR = "params"  # the best params (what eval, predict, export and initial_checkpoint read)
SUMS = "leaf_sums"  # meta key: each array's sum, checked on restore


def checkpoint_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """Orbax's manager of numbered steps under `directory` (made absolute if local)."""
  if "://" not in directory:
    directory = os.path.abspath(directory)  # orbax wants absolute local paths
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=False))


# ---- Checked arrays: each leaf's sum is saved with it and compared on restore.

def leaf_sums(tree: Any) -> list[float]:
  """The sum of each leaf's absolute values (float32), saved with a checkpoint: bytes
  damaged in a way the storage layer does not notice change them, so a damaged checkpoint
  is never used. (No cancellation: a resharded resume sums in another order and stays
  within 1e-6 relative, far inside the check's 1e-3.)"""
  leaves = jax.tree.leaves(tree)
  on_device = [x for x in leaves if isinstance(x, jax.Array)]
  device_sums = iter(jax.device_get(_sums(on_device)) if on_device else ())
  # Host arrays (an imported checkpoint) are summed on the host: never copied to a device.
  return [float(next(device_sums)) if isinstance(x, jax.Array)
          else float(np.sum(np.abs(np.asarray(x, np.float32)))) for x in leaves]


@jax.jit
def _sums(leaves):
  return [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]


class DamagedError(Exception):
  """Restored arrays that are not those saved."""


def check_sums(tree: Any, meta: dict) -> None:
  """Raises DamagedError when the restored leaves' sums are not the saved ones (and takes
  the sums out of `meta`)."""
  saved = meta.pop(SUMS, None)
  if saved is None:  # written before the sums were saved
    return
  now = leaf_sums(tree)
  if len(now) != len(saved) or not np.allclose(now, saved, rtol=1e-3, atol=1e-6):
    bad = sum(not np.isclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(now, saved))
    raise DamagedError(f"{bad} of {len(saved)} arrays differ from what was saved")


def first_line(error: Exception) -> str:
  """'Type: the first line of the message', without tensorstore's pointer to more."""
  text = str(error).strip().splitlines()
  first = text[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(error).__name__}: {first[:200]}"


def _shapes(tree: Any) -> dict[str, tuple]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@dataclasses.dataclass(frozen=True)
class ModelDir:
  """One model dir (local or gs://). Writers run on host 0 only (the caller decides)."""
  path: str

  def __post_init__(self):
    object.__setattr__(self, "path", str(self.path).rstrip("/"))

  def file(self, name: str) -> str:
    return f"{self.path}/{name}"

  # ---- model.json, spm.model, config.gin

  def read_info(self) -> tuple[T5Config, dict]:
    """The network's config and the whole of model.json; one line when it is not there."""
    path = self.file(MODEL_INFO)
    if not tf.io.gfile.exists(path):
      raise SbsError(f"{self.path} is not a model dir: no {MODEL_INFO}")
    with tf.io.gfile.GFile(path) as f:
      info = json.load(f)
    return T5Config(**info["model"]), info

  def write_info(self, config: T5Config, vocabulary_file: str, extra_ids: int = 0,
                 label_prefix: str = LABEL_PREFIX, rationale_prefix: str = RATIONALE_PREFIX,
                 max_input_length: int | None = None, label_set: dict | None = None) -> None:
    """model.json and a copy of the vocabulary; `max_input_length`: the training inputs'
    length, to which `sbs predict` cuts longer inputs; `label_set`: the label task's set
    of labels (answer_formats.LabelSet.to_json), which `sbs predict --label_mode rank`
    scores."""
    tf.io.gfile.makedirs(self.path)
    if vocabulary_file:
      tf.io.gfile.copy(vocabulary_file, self.file(VOCAB_FILE), overwrite=True)
    info = {"model": dataclasses.asdict(config), "vocabulary": VOCAB_FILE,
            "extra_ids": extra_ids, "label_prefix": label_prefix,
            "rationale_prefix": rationale_prefix}
    if max_input_length:
      info["max_input_length"] = max_input_length
    if label_set is not None:
      info["label_set"] = label_set
    files.write_json_atomically(self.file(MODEL_INFO), info, sort_keys=False)

  def write_gin_config(self, text: str) -> None:
    tf.io.gfile.makedirs(self.path)
    files.write_text_atomically(self.file(GIN_CONFIG), text)

  # ---- metrics.jsonl, results.json

  def write_metrics(self, lines: list[str]) -> None:
    """Rewritten whole: appending is not possible on every file system (e.g. GCS)."""
    files.write_text_atomically(self.file(METRICS_FILE), "\n".join(lines) + "\n")

  def read_metrics(self, split: str | None = None) -> list[dict] | None:
    """The logged rows (of one split, if given) in the order written; None if the file is
    absent. A line cut by a crash, or one that is not a row, is skipped."""
    path = self.file(METRICS_FILE)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "rb") as f:
      text = f.read().decode("utf-8", errors="replace")
    rows = []
    for line in text.splitlines():
      try:
        row = json.loads(line) if line.strip() else None
      except ValueError:
        continue
      if isinstance(row, dict) and "step" in row and (split is None
                                                      or row.get("split") == split):
        rows.append(row)
    return rows

  def write_results(self, results: dict) -> None:
    files.write_json_atomically(self.file(RESULTS_FILE), results, sort_keys=False)

  def read_results(self) -> dict | None:
    """results.json (None if absent). Raises ValueError (or OSError) for a file that is
    not the trainer's results: the caller says what to do about it."""
    path = self.file(RESULTS_FILE)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "rb") as f:
      results = json.loads(f.read().decode("utf-8"))
    if not isinstance(results, dict) or not isinstance(results.get("best_step"), int):
      raise ValueError("not the trainer's results (no best_step)")
    return results

  # ---- params/: the best step's parameters

  def params_steps(self) -> list[str]:
    params_dir = self.file(PARAMS_DIR)
    if not tf.io.gfile.isdir(params_dir):
      return []
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(params_dir))

  def save_params(self, step: int, params: Any, meta: dict) -> None:
    """Writes the parameters (replacing earlier ones) as the model dir's model."""
    meta = dict(meta, **{SUMS: leaf_sums(params)})
    manager = checkpoint_manager(self.file(PARAMS_DIR), keep=1)
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    manager.close()

  def load_params(self, abstract_params: Any) -> tuple[Any, dict]:
    """Reads the parameters into the shapes and shardings of `abstract_params`."""
    model_dir = self.path
    if not tf.io.gfile.exists(self.file(PARAMS_DIR)):  # (the manager would create it)
      raise SbsError(f"{model_dir} holds no trained parameters ({model_dir}/{PARAMS_DIR} "
                     "does not exist): pass a model dir of sbs train, import-hf or import-t5x")
    manager = checkpoint_manager(self.file(PARAMS_DIR), keep=1)
    step = manager.latest_step()
    if step is None:
      manager.close()
      raise SbsError(f"{model_dir} holds no trained parameters yet ({model_dir}/params is "
                     "empty): train it until its first validation step (EvalConfig.every), "
                     "or pass a trained model dir")
    where = f"{manager.directory}/{step}"
    try:
      self._check_fits(f"{where}/params", abstract_params)
      restored = manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
      check_sums(restored["params"], restored["meta"])
    except SbsError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
      raise SbsError(f"the parameters in {where} cannot be read ({first_line(e)}): the "
                     "files are damaged; restore the dir from a copy, or train again") from None
    finally:
      manager.close()
    return restored["params"], restored["meta"]

  def _check_fits(self, path: str, abstract_params: Any) -> None:
    """Names and shapes of a saved parameter tree vs the network's; lists every mismatch."""
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns of an absent metadata
    saved = _shapes(dict(ocp.StandardCheckpointer().metadata(path).item_metadata))
    wanted = _shapes(abstract_params)
    problems = [f"missing: {k} {wanted[k]}" for k in sorted(set(wanted) - set(saved))]
    problems += [f"unexpected: {k} {saved[k]}" for k in sorted(set(saved) - set(wanted))]
    problems += [f"wrong shape: {k}: saved {saved[k]}, network {wanted[k]}"
                 for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
    if problems:
      raise SbsError(f"the parameters in {self.path} do not fit this network "
                     f"({len(problems)} problems):\n  " + "\n  ".join(problems))

  def fingerprint(self) -> str:
    """A hash of the names, sizes and modification times of model.json, the vocabulary and
    every file under params/: it changes when any of them is rewritten (no file is read)."""
    paths = [self.file(name) for name in (MODEL_INFO, VOCAB_FILE)
             if tf.io.gfile.exists(self.file(name))]
    if tf.io.gfile.isdir(self.file(PARAMS_DIR)):
      for folder, _, names in tf.io.gfile.walk(self.file(PARAMS_DIR)):
        paths += [f"{str(folder).rstrip('/')}/{name}" for name in names]
    digest = hashlib.sha256()
    for path in sorted(paths):
      if files.is_url(path):
        st = tf.io.gfile.stat(path)
        size, mtime = st.length, st.mtime_nsec
      else:  # TensorFlow's local stat keeps whole seconds: a rewrite within one is missed
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime_ns
      digest.update(f"{path[len(self.path):]}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()[:16]
