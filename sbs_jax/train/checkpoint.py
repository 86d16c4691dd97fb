"""The train state's checkpoints (for resuming) and a model dir's student, loaded for
evaluation. The files of a model dir, and the best step's parameters, are model_dir.py's
(sbs_jax/model/model_dir.py), which serve and convert read without the trainer."""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp

from sbs_jax.errors import SbsError
from sbs_jax.model import model_dir as model_dir_lib
from sbs_jax.model.model_dir import (SUMS, ModelDir, check_sums, checkpoint_manager,
                                     first_line, leaf_sums)

log = logging.getLogger(__name__)


class StateCheckpoints:
  """The train state every N steps, for resuming."""

  def __init__(self, model_dir: str, keep: int):
    self._manager = checkpoint_manager(
        f"{model_dir}/{model_dir_lib.CHECKPOINTS_DIR}", keep)

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
        check_sums(restored["state"], restored["meta"])
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
        damaged.append(s)
        log.warning("%s/%d cannot be read (%s); trying an older checkpoint",
                    self._manager.directory, s, first_line(e))
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


def write_gin_config(model_dir: str, pinned: dict[str, str] | None = None) -> None:
  """The gin bindings in force, so that `sbs eval` can rebuild the run (host 0 only);
  `pinned` bindings (e.g. paths made absolute) are appended and override the others."""
  if jax.process_index() != 0:
    return
  import gin  # pylint: disable=import-outside-toplevel
  text = gin.config_str()
  if pinned:
    text += ("\n# Local paths as absolute paths, so that `sbs eval` works from any "
             "directory:\n" + "".join(f"{k} = {v!r}\n" for k, v in pinned.items()))
  ModelDir(model_dir).write_gin_config(text)
