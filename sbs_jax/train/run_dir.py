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
run logs, evaluates and checkpoints, how many checkpoints it keeps, `ParallelismConfig` (the
mesh, partitioning, gradient accumulation and remat), and the test / rationale-sample
settings of evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import tensorflow as tf

from sbs_jax.data.packing import WINDOWED
from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files, locks, manifest
from sbs_jax.model.model_dir import RUN_FILE
from sbs_jax.train.config import ParallelismConfig

log = logging.getLogger(__name__)

FORMAT = 1


def absolute(path: str | None) -> str | None:
  """A local path made absolute (against the working directory); URLs (gs://) as given."""
  if not path or "://" in path:
    return path
  import os  # pylint: disable=import-outside-toplevel
  return os.path.abspath(path)


def identity(cfg, model_config, label_task: str, vocabulary_file: str, extra_ids: int,
             annotation_dir: str) -> dict:
  """The fingerprint of a run (JSON-canonical: lists, sorted keys)."""
  # cfg.parallelism is left out whole: it changes neither the parameters nor the numbers
  # (beyond rounding), so a run may resume on another mesh; so are the network's fields it
  # sets.
  network = {k: v for k, v in dataclasses.asdict(model_config).items()
             if k not in ParallelismConfig.NETWORK_FIELDS}
  optimizer = dataclasses.asdict(cfg.optimizer)
  data = cfg.data
  fields = {
      "mixture_or_task": data.mixture_or_task, "eval_task": label_task,
      "train_split": data.train_split, "task_feature_lengths": data.task_feature_lengths,
      "pack": data.pack, **packing_identity(data.pack, data.packing, data.packing_window),
      "batch_size": data.batch_size, "data_seed": data.seed,
      "annotation_dir": absolute(annotation_dir),
      "vocabulary_sha256": files.file_sha256(vocabulary_file) if vocabulary_file else None,
      "extra_ids": extra_ids, "network": network, "alpha": cfg.alpha,
      "optimizer": optimizer, "seed": cfg.seed,
      "initial_checkpoint": absolute(cfg.initial_checkpoint),
      "selection_metric": cfg.eval.selection_metric,
      "validation_examples": cfg.eval.max_examples, "beam_size": cfg.eval.beam_size,
      "label_decode_length": cfg.eval.label_decode_length,
  }
  return json.loads(json.dumps(fields, sort_keys=True))


def packing_identity(pack: bool, packing: str | None, window: int | None) -> dict:
  """How rows were packed, as run.json records it: the rule (None unpacked) and, for
  best_fit and pair_fit, its window. run.json written before `DataConfig.packing` existed
  has neither field: those runs packed next_fit (`packing=None` reads them so)."""
  if not pack:
    return {"packing": None, "packing_window": None}
  packing = packing or "next_fit"
  return {"packing": packing, "packing_window": window if packing in WINDOWED else None}


def with_old_packing(stored: dict) -> dict:
  """A stored identity with the packing it was trained with made explicit (next_fit where
  it predates the field), so that an old run resumes only with its own packing."""
  if "packing" in stored:
    return stored
  return {**stored, **packing_identity(stored.get("pack", True), None, None)}


def model_dir_busy(model_dir: str):
  """The refusal of a second `sbs train` on a locked model dir, naming the holder."""
  def busy(holder: str) -> SbsError:
    return SbsError(f"MODEL_DIR {model_dir} is in use by another `sbs train` ({holder}): "
                    "wait for it to finish (rerunning the same command then resumes or "
                    "finishes it), stop it first, or use another MODEL_DIR; `sbs eval` may "
                    "read the dir meanwhile")
  return busy


def lock_model_dir(model_dir: str):
  """The model dir's lock (jobdir.locks: fcntl locally, a lease on gs://; `release()` it),
  or SbsError when another run holds it. The dir must exist.

  Two runs on one dir would both write checkpoints, and orbax in one would delete the other's
  unfinished ones. `sbs eval` (and `sbs predict`) only read and take no lock: the parameters
  under `params/` are replaced whole (written aside, then renamed), so they read the best
  step so far while training runs.

  Locally an fcntl lock on `<model_dir>/.lock`, freed by the kernel when a run dies; on
  gs:// a heartbeat lease object, `<model_dir>/.lease.json` (jobdir/locks.py).

  Multi-host runs: only process 0 takes the lock (it is the only one that writes shared files);
  its outcome reaches the other processes before any collective work (RunDir)."""
  return locks.acquire(model_dir, model_dir_busy(model_dir))


def _refuse(model_dir: str, what: str) -> SbsError:
  return SbsError(f"MODEL_DIR {model_dir} holds {what}: use a new MODEL_DIR "
                  f"(or --gin.MODEL_DIR=\"'<new dir>'\"), or delete it to start over")


class RunDir:
  """Claims a model dir for a run: locks it (lock_model_dir), refuses another run's dir, writes
  run.json; `abandon()` removes what a failed fresh run created; `release()` unlocks.

  Host 0 alone locks, checks and writes; its outcome (go on, or the one-line refusal) is
  broadcast to every host before any other collective work, so that all hosts refuse
  together and none waits for a host that stopped.
  """

  def __init__(self, model_dir: str, fingerprint: dict, train_steps: int):
    self.model_dir = model_dir
    self._writer = jax.process_index() == 0
    self._created: list[str] = []
    self._before: set[str] = set()
    self._lock = None
    error = None
    if self._writer:
      try:
        self._claim(fingerprint, train_steps)
      except SbsError as e:
        error = str(e)
    error = _broadcast_error(error)
    if error is not None:
      raise SbsError(error)

  def _claim(self, fingerprint: dict, train_steps: int) -> None:
    self._created = _missing_ancestors(self.model_dir)  # dirs this run makes, deepest first
    check_writable(self.model_dir)
    try:
      try:
        tf.io.gfile.makedirs(self.model_dir)
      except (OSError, tf.errors.OpError) as e:
        raise SbsError(f"MODEL_DIR {self.model_dir} cannot be created ({_reason(e)}): use "
                       "a MODEL_DIR you can write to") from None
      self._lock = lock_model_dir(self.model_dir)
      self._before = self._check(fingerprint, train_steps)
      # Written whole (a temporary file renamed): other hosts never read half of it.
      files.write_json_atomically(f"{self.model_dir}/{RUN_FILE}",
                                  {"format": FORMAT, "identity": fingerprint,
                                   "train_steps": train_steps})
    except BaseException as e:
      # Nothing of a dir that was there is touched; dirs this run made go when empty.
      self._remove_created = bool(self._created)
      if self._remove_created:
        try:
          tf.io.gfile.remove(f"{self.model_dir}/{RUN_FILE}")
        except (OSError, tf.errors.OpError):
          pass
      self.release()
      if isinstance(e, (OSError, tf.errors.OpError)):
        raise SbsError(f"MODEL_DIR {self.model_dir} cannot be written ({_reason(e)}): use "
                       "a MODEL_DIR you can write to") from None
      raise

  def _check(self, fingerprint: dict, train_steps: int) -> set[str]:
    """The dir's entries before this run; refuses another run's dir."""
    if not tf.io.gfile.exists(self.model_dir):
      return set()
    before = {name.rstrip("/") for name in tf.io.gfile.listdir(self.model_dir)
              if not name.startswith(f".{RUN_FILE}") and name not in locks.NAMES}
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
    stored_identity = with_old_packing(stored_identity)
    diff = manifest.describe_nested(stored_identity, fingerprint)
    if diff:
      error = _refuse(self.model_dir, "a run of another " + "; ".join(diff))
      if {d.split(" ", 1)[0] for d in diff} <= {"packing", "packing_window"}:
        error = SbsError(f"{error}; or resume it with its own packing: "
                         f"{_packing_flags(stored_identity)}")
      raise error
    if stored_steps != train_steps:
      log.warning("%s: train_steps %d -> %d; a linear learning-rate schedule now ends at "
                  "step %d", self.model_dir, stored_steps, train_steps, train_steps)
    return before

  @property
  def fresh(self) -> bool:
    """Whether this run started the dir (there was no run.json)."""
    return RUN_FILE not in self._before

  def abandon(self) -> None:
    """After a fresh run failed before its first checkpoint: removes what it made (the
    lock's own file stays until `release()`)."""
    if not self._writer or not self.fresh:
      return
    try:
      if not tf.io.gfile.exists(self.model_dir):
        return
      for name in tf.io.gfile.listdir(self.model_dir):
        name = name.rstrip("/")
        if name not in self._before and name not in locks.NAMES:
          path = f"{self.model_dir}/{name}"
          if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
          else:
            tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError) as e:
      log.warning("could not remove what this failed run created in %s (%s)",
                  self.model_dir, _reason(e))
      return
    self._remove_created = True
    log.info("removed what this failed run had created in %s", self.model_dir)

  def release(self) -> None:
    """Unlocks the dir (host 0); after `abandon()`, also removes the dirs this run made,
    when left empty."""
    if self._lock is not None:
      self._lock.release()
      self._lock = None
    if getattr(self, "_remove_created", False):
      for path in self._created:  # made by this run; removed only when left empty
        try:
          if tf.io.gfile.isdir(path) and not tf.io.gfile.listdir(path):
            tf.io.gfile.rmtree(path)
        except (OSError, tf.errors.OpError):
          pass


def _packing_flags(stored: dict) -> str:
  flags = f"--gin.DataConfig.packing=\"'{stored['packing']}'\""
  if stored.get("packing_window"):
    flags += f" --gin.DataConfig.packing_window={stored['packing_window']}"
  return flags


def _reason(error: BaseException) -> str:
  """'Permission denied' and the like: an OSError's strerror, else the first line."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  text = str(getattr(error, "message", None) or error).strip().splitlines()
  return text[0][:200] if text else type(error).__name__


def check_writable(model_dir: str) -> None:
  """Refuses a local MODEL_DIR that is a file, lies under a file, or cannot be written."""
  if "://" in model_dir:
    return
  import os  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(model_dir)
  existing = path
  while not os.path.exists(existing):
    parent = os.path.dirname(existing)
    if parent == existing:
      break
    existing = parent
  if not os.path.isdir(existing):
    where = "is a file" if existing == path else f"lies under the file {existing}"
    raise SbsError(f"MODEL_DIR {model_dir} {where}, not a directory: use another MODEL_DIR")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is not writable" if existing == path else f"cannot be created: {existing} is " \
                                                      "not writable"
    raise SbsError(f"MODEL_DIR {model_dir} {what} (permission denied): use a MODEL_DIR "
                   "you can write to")


def _broadcast_error(error: str | None) -> str | None:
  """Host 0's refusal (or None) on every host; one process: as given."""
  if jax.process_count() == 1:
    return error
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  size = 2048
  buf = np.zeros(size + 1, np.int32)
  if error is not None:
    data = error.encode("utf-8")[:size]
    buf[0] = len(data) + 1
    buf[1:len(data) + 1] = np.frombuffer(data, np.uint8)
  got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  if int(got[0]) == 0:
    return None
  n = int(got[0]) - 1
  return bytes(got[1:n + 1].astype(np.uint8)).decode("utf-8", "replace")


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
