"""Checkpoints with orbax, and the layout of a model dir.

    <model_dir>/model.json        the network's config, vocabulary and task prefixes
    <model_dir>/config.gin        the run's gin bindings (what `sbs eval` re-reads)
    <model_dir>/spm.model         the SentencePiece vocabulary (a copy: the dir stands alone)
    <model_dir>/checkpoints/<step>/{state,meta}
                                  the full train state, for resuming (keep N, atomic)
    <model_dir>/params/<step>/{params,meta}
                                  the parameters of the best step on validation: what
                                  `sbs eval`, `sbs predict` and export read

`sbs import-hf` writes the same layout (model.json, spm.model, params/0), so an imported
checkpoint is a model dir that training can start from (`TrainConfig.initial_checkpoint`).
Orbax writes each step to a temporary directory and renames it when complete, so a
half-written checkpoint is never read.
"""

from __future__ import annotations

import dataclasses
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

log = logging.getLogger(__name__)
MODEL_INFO = "model.json"
GIN_CONFIG = "config.gin"  # the gin bindings of the run, for `sbs eval`
VOCAB_FILE = "spm.model"
PARAMS_DIR = "params"  # the best params (what eval, predict, export and initial_checkpoint read)
SUMS = "leaf_sums"  # meta key: each array's sum, checked on restore


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  if "://" not in directory:
    directory = os.path.abspath(directory)  # orbax wants absolute local paths
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=False))


class StateCheckpoints:
  """The train state every N steps, for resuming."""

  def __init__(self, model_dir: str, keep: int):
    self._manager = _manager(f"{model_dir}/checkpoints", keep)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    meta = dict(meta, **{SUMS: leaf_sums(state)})
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """The given step, else the newest checkpoint that reads back whole: a damaged one
    (truncated or garbled files) is skipped with a warning."""
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    damaged = []
    for s in steps:
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        _check_sums(restored["state"], restored["meta"])
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
        damaged.append(s)
        log.warning("%s/%d cannot be read (%s); trying an older checkpoint",
                    self._manager.directory, s, _first_line(e))
        continue
      if damaged:
        log.warning("resuming from step %d: the newer checkpoint(s) %s are damaged", s,
                    damaged)
      return restored["state"], restored["meta"]
    raise SbsError(f"no checkpoint in {self._manager.directory} can be read (steps "
                   f"{damaged} damaged): delete the model dir to start over, or use a new "
                   "MODEL_DIR")

  def close(self) -> None:
    self._manager.close()


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


def _check_sums(tree: Any, meta: dict) -> None:
  """Raises DamagedError when the restored leaves' sums are not the saved ones."""
  saved = meta.pop(SUMS, None)
  if saved is None:  # written before the sums were saved
    return
  now = leaf_sums(tree)
  if len(now) != len(saved) or not np.allclose(now, saved, rtol=1e-3, atol=1e-6):
    bad = sum(not np.isclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(now, saved))
    raise DamagedError(f"{bad} of {len(saved)} arrays differ from what was saved")


class DamagedError(Exception):
  """Restored arrays that are not those saved."""


def save_params(model_dir: str, step: int, params: Any, meta: dict) -> None:
  """Writes the parameters (replacing earlier ones) as the model dir's model."""
  meta = dict(meta, **{SUMS: leaf_sums(params)})
  manager = _manager(f"{model_dir}/params", keep=1)
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
  manager.close()


def load_params(model_dir: str, abstract_params: Any) -> tuple[Any, dict]:
  """Reads a model dir's parameters into the shapes and shardings of `abstract_params`."""
  if not tf.io.gfile.exists(f"{model_dir}/{PARAMS_DIR}"):  # (the manager would create it)
    raise SbsError(f"{model_dir} holds no trained parameters ({model_dir}/{PARAMS_DIR} does "
                   "not exist): pass a model dir of sbs train, import-hf or import-t5x")
  manager = _manager(f"{model_dir}/{PARAMS_DIR}", keep=1)
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise SbsError(f"{model_dir} holds no trained parameters yet ({model_dir}/params is "
                   "empty): train it until its first validation step (EvalConfig.every), "
                   "or pass a trained model dir")
  where = f"{manager.directory}/{step}"
  try:
    _check_fits(f"{where}/params", abstract_params, model_dir)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
    _check_sums(restored["params"], restored["meta"])
  except SbsError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
    raise SbsError(f"the parameters in {where} cannot be read ({_first_line(e)}): the files "
                   "are damaged; restore the dir from a copy, or train again") from None
  finally:
    manager.close()
  return restored["params"], restored["meta"]


def _first_line(error: Exception) -> str:
  """'Type: the first line of the message', without tensorstore's pointer to more."""
  text = str(error).strip().splitlines()
  first = text[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(error).__name__}: {first[:200]}"


def _shapes(tree: Any) -> dict[str, tuple]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(path: str, abstract_params: Any, model_dir: str) -> None:
  """Names and shapes of a saved parameter tree vs the network's; lists every mismatch."""
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns of an absent metadata file
  saved = _shapes(dict(ocp.StandardCheckpointer().metadata(path).item_metadata))
  wanted = _shapes(abstract_params)
  problems = [f"missing: {k} {wanted[k]}" for k in sorted(set(wanted) - set(saved))]
  problems += [f"unexpected: {k} {saved[k]}" for k in sorted(set(saved) - set(wanted))]
  problems += [f"wrong shape: {k}: saved {saved[k]}, network {wanted[k]}"
               for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
  if problems:
    raise SbsError(f"the parameters in {model_dir} do not fit this network "
                   f"({len(problems)} problems):\n  " + "\n  ".join(problems))


def load_student(model_dir: str, mesh: tuple[int, int] = (1, 1)):
  """A model dir's network (no optimizer) on a (data, model) `mesh` of devices (one by
  default), its best params and model.json."""
  import optax  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.state import build_student, make_mesh  # pylint: disable=import-outside-toplevel
  config, info = read_model_info(model_dir)
  student = build_student(config, optax.identity(), make_mesh(mesh))
  params, _ = load_params(model_dir, student.abstract_state["params"])
  return student, params, info


def write_model_info(model_dir: str, config: T5Config, vocabulary_file: str,
                     extra_ids: int = 0, label_prefix: str = "predict: ",
                     rationale_prefix: str = "explain: ",
                     max_input_length: int | None = None) -> None:
  """model.json and a copy of the vocabulary (host 0 only); `max_input_length`: the
  training inputs' length, to which `sbs predict` cuts longer inputs."""
  if jax.process_index() != 0:
    return
  tf.io.gfile.makedirs(model_dir)
  if vocabulary_file:
    tf.io.gfile.copy(vocabulary_file, f"{model_dir}/{VOCAB_FILE}", overwrite=True)
  info = {"model": dataclasses.asdict(config), "vocabulary": VOCAB_FILE,
          "extra_ids": extra_ids, "label_prefix": label_prefix,
          "rationale_prefix": rationale_prefix}
  if max_input_length:
    info["max_input_length"] = max_input_length
  files.write_json_atomically(f"{model_dir}/{MODEL_INFO}", info, sort_keys=False)


def write_gin_config(model_dir: str, pinned: dict[str, str] | None = None) -> None:
  """The gin bindings in force, so that `sbs eval` can rebuild the run (host 0 only);
  `pinned` bindings (e.g. paths made absolute) are appended and override the others."""
  if jax.process_index() != 0:
    return
  import gin  # pylint: disable=import-outside-toplevel
  tf.io.gfile.makedirs(model_dir)
  text = gin.config_str()
  if pinned:
    text += ("\n# Local paths as absolute paths, so that `sbs eval` works from any "
             "directory:\n" + "".join(f"{k} = {v!r}\n" for k, v in pinned.items()))
  files.write_text_atomically(f"{model_dir}/{GIN_CONFIG}", text)


def read_model_info(model_dir: str) -> tuple[T5Config, dict]:
  path = f"{model_dir}/{MODEL_INFO}"
  if not tf.io.gfile.exists(path):
    raise SbsError(f"{model_dir} is not a model dir: no {MODEL_INFO}")
  with tf.io.gfile.GFile(path) as f:
    info = json.load(f)
  return T5Config(**info["model"]), info
