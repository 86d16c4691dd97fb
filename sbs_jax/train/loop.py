"""The training run, in labelled sections: claim the model dir, restore or start the state,
the step loop, the final test evaluation."""

from __future__ import annotations

import dataclasses
import errno
import logging
import re
import sys
import time
from typing import Callable

import jax
import seqio
import tensorflow as tf

from sbs_jax.data import vocab as vocab_lib
from sbs_jax import environment, task_kinds
from sbs_jax.errors import SbsError, exception_chain
from sbs_jax.model import model_dir as model_dir_lib
from sbs_jax.model.config import T5Config
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.train import checkpoint as ckpt
from sbs_jax.train import evaluate as eval_lib
from sbs_jax.train import gin_check
from sbs_jax.train import run_dir
from sbs_jax.train.config import TrainConfig
from sbs_jax.train.data import (check_lengths, check_train_split, fitted_lengths,
                                 label_examples, length_note, train_batches)
from sbs_jax.train.metric_log import MetricLog
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.preemption import Preempted, PreemptionWatch
from sbs_jax.train.progress import StepProgress, eval_line
from sbs_jax.train.state import (build_student, global_batch, init_state, make_mesh,
                                 make_train_step)

log = logging.getLogger(__name__)
UNITS = ("every *accuracy is a percentage (0-100); examples is a count (of split_examples, "
         "when a cap limited it)")
VALIDATION_CAP, TEST_CAP = "EvalConfig.max_examples", "EvalConfig.max_test_examples"


def _vocabulary(task_name: str) -> seqio.Vocabulary:
  return seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary


def _better(metrics: dict, best: dict | None, key: str) -> bool:
  if key not in metrics:
    raise SbsError(f"EvalConfig.selection_metric {key!r} is not among {sorted(metrics)}")
  return best is None or metrics[key] > best["metrics"][key]


def absolute_paths(cfg: TrainConfig, vocabulary_file: str) -> dict[str, str]:
  """Gin bindings of the run's local paths made absolute, for config.gin: `sbs eval` then
  works from any directory, with no environment variables."""
  bindings = {"sbs_jax.train.config.TrainConfig.model_dir": cfg.model_dir,
              "sbs_jax.data.vocab.annotation_dir.path": vocab_lib.annotation_dir()}
  if vocabulary_file:
    bindings["sbs_jax.data.vocab.vocabulary_settings.path"] = vocabulary_file
  if cfg.initial_checkpoint:
    bindings["sbs_jax.train.config.TrainConfig.initial_checkpoint"] = cfg.initial_checkpoint
  return {gin_check.binding_name(k): run_dir.absolute(v) for k, v in bindings.items()}


def train(cfg: TrainConfig, model_config: T5Config,
          on_step: Callable[[int, dict], None] | None = None) -> dict:
  """Trains (or resumes), selects the best step on validation, scores it on test.

  Returns the results also written to `<model_dir>/results.json`. `on_step(step, metrics)`
  is called after each step's logging, evaluation and checkpoint (tests use it to stop a
  run midway).
  """
  # ---- Mesh, network, optimizer: every shape and sharding before any allocation.
  model_config = cfg.parallelism.network(model_config)
  mesh = make_mesh(cfg.parallelism.mesh)
  tx = make_optimizer(cfg.optimizer, cfg.train_steps)
  student = build_student(model_config, tx, mesh, cfg.parallelism.partitioning_dims)
  label_task = cfg.data.label_task()
  vocabulary = _vocabulary(label_task)
  if vocabulary.vocab_size > model_config.vocab_size:
    raise SbsError(f"the vocabulary has {vocabulary.vocab_size} ids but the network only "
                   f"{model_config.vocab_size}: raise student_config.vocab_size")
  label_prefix = task_kinds.label_prefix(label_task)
  label_set = eval_lib.task_label_set(label_task)
  vocabulary_file = getattr(vocabulary, "sentencepiece_model_file", "")
  extra_ids = getattr(vocabulary, "extra_ids", 0)

  # ---- Data: an empty validation carve or training split is refused before the model
  # dir is touched (validation is also what every evaluation below scores).
  validation = label_examples(label_task, "validation", cfg.eval.max_examples)
  # The length check reads every task's training split; a task it found empty is refused
  # in check_train_split's words (which builds the split's pipeline once more, only then).
  lengths = check_lengths(cfg.data)
  if any(not r["checked"] for r in lengths.values()):
    check_train_split(cfg.data)
  note = length_note(lengths)
  if note and jax.process_index() == 0:
    print(note, file=sys.stderr, flush=True)
  configured_lengths = cfg.data.task_feature_lengths
  if cfg.data.fit_lengths:  # the rows' shape: what the data needs, nothing cut
    fitted = fitted_lengths(cfg.data, lengths)
    if jax.process_index() == 0:
      print(f"fit_lengths: rows of {fitted['inputs']} input and {fitted['targets']} target "
            f"tokens (task_feature_lengths {configured_lengths['inputs']} and "
            f"{configured_lengths['targets']})", file=sys.stderr, flush=True)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, task_feature_lengths=fitted, fit_lengths=False))
  _check_selection_metric(label_task, cfg.eval.selection_metric)
  if cfg.initial_checkpoint and not tf.io.gfile.exists(
      f"{cfg.initial_checkpoint}/{model_dir_lib.PARAMS_DIR}"):
    raise SbsError(f"INITIAL_CHECKPOINT {cfg.initial_checkpoint} is not a model dir (no "
                   f"{model_dir_lib.PARAMS_DIR}/): pass a dir written by sbs import-hf, sbs "
                   "import-t5x or sbs train")

  # ---- Model dir: locked (one run per dir), another run's dir refused untouched.
  run = run_dir.RunDir(cfg.model_dir, run_dir.identity(
      cfg, model_config, label_task, vocabulary_file, extra_ids, vocab_lib.annotation_dir()),
      cfg.train_steps)
  checkpoints = None
  saved_at_failure: list = []  # the newest checkpoint when the steps failed
  quiet = _StorageNoise()
  try:
    try:
      ckpt.write_gin_config(cfg.model_dir, absolute_paths(cfg, vocabulary_file))
      ModelDir(cfg.model_dir).write_info(model_config, vocabulary_file, extra_ids,
                            label_prefix,
                            max_input_length=configured_lengths["inputs"],
                            label_set=label_set.to_json())

      # ---- State: resume from the newest intact checkpoint, else start (random or
      # imported).
      checkpoints = ckpt.StateCheckpoints(cfg.model_dir, cfg.keep_checkpoints)
      if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore(student.abstract_state)
        best = meta.get("best")
        origin = f"resumed from step {int(jax.device_get(state['step']))} of {cfg.model_dir}"
      else:
        params = None
        origin = f"starting from a random init (seed {cfg.seed})"
        if cfg.initial_checkpoint:
          params, _ = ModelDir(cfg.initial_checkpoint).load_params(
                                       student.abstract_state["params"])
          origin = f"starting from {cfg.initial_checkpoint}"
        state, best = init_state(student, cfg.seed, params), None

      # ---- The loop, then the best step's params on test.
      _steps(cfg, student, state, best, label_task, validation, checkpoints, origin,
             on_step)
    except BaseException:
      saved_at_failure.append(_latest_step(checkpoints))
      if saved_at_failure[0] is None:
        run.abandon()  # nothing to resume from: leave no half-made run dir behind
      raise
    finally:
      if checkpoints is not None:
        try:
          checkpoints.close()
        except Exception:  # pylint: disable=broad-except  # the first error is the one to tell
          log.debug("closing the checkpoint manager failed", exc_info=True)
    return _final(cfg, student, label_task, vocabulary, validation,
                  {"task_feature_lengths": configured_lengths, "tasks": lengths})
  except Exception as e:  # pylint: disable=broad-except  # matched by the whole chain below
    problem = storage_problem(e)
    if problem is None:
      raise
    saved = saved_at_failure[0] if saved_at_failure else _latest_step(checkpoints)
    then = (f"it resumes from the checkpoint of step {saved}" if saved is not None
            else "nothing was saved yet, so it starts over")
    quiet.keep()  # late echoes of the failed write stay quiet until the process ends
    raise SbsError(f"writing to MODEL_DIR {cfg.model_dir} failed: {problem}, then rerun "
                   f"the same command: {then}") from None
  finally:
    quiet.close()
    run.release()


class _StorageNoise(logging.Filter):
  """While training: orbax's own reports of a write that the storage refused (an ERROR log
  with a traceback per writer thread) and the 'Event loop is closed' tracebacks of
  tensorstore callbacks that outlive orbax's event loop are dropped: the run ends with one
  line saying what happened. Everything is shown with -v (debug logging)."""

  # absl: orbax's ERROR logs; asyncio: "Task exception was never retrieved" for orbax's
  # writer tasks, logged when they are collected, which may be after the one line.
  _LOGGERS = ("absl", "asyncio")

  def __init__(self):
    super().__init__()
    self._active = not logging.getLogger().isEnabledFor(logging.DEBUG)
    self._keep = False
    if not self._active:
      return
    self._previous_hook = sys.unraisablehook  # (how tensorstore's callbacks report)
    sys.unraisablehook = self._hook
    for name in self._LOGGERS:
      logging.getLogger(name).addFilter(self)

  def _hook(self, unraisable) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    self._previous_hook(unraisable)

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not any(pattern.search(text) for pattern, _ in _STORAGE_TEXTS)

  def keep(self) -> None:
    self._keep = True

  def close(self) -> None:
    if not self._active or self._keep:
      return
    self._active = False
    sys.unraisablehook = self._previous_hook
    for name in self._LOGGERS:
      logging.getLogger(name).removeFilter(self)


def _check_selection_metric(label_task: str, name: str) -> None:
  """Refuses, before training, a selection metric the label task does not compute (else
  the first validation, `EvalConfig.every` steps in, would stop the run)."""
  known = {"examples"}
  for metric_fn in seqio.get_mixture_or_task(label_task).metric_fns:
    try:
      known |= set(metric_fn([], []))
    except Exception:  # pylint: disable=broad-except  # a metric that needs rows: unchecked
      return
  if name not in known:
    raise SbsError(f"EvalConfig.selection_metric {name!r} is not a metric of {label_task} "
                   f"(it has {', '.join(sorted(known - {'examples'}))}): set "
                   f"--gin.{gin_check.binding_name('EvalConfig.selection_metric')}=\"'accuracy'\"")


def _latest_step(checkpoints) -> int | None:
  if checkpoints is None:
    return None
  try:
    return checkpoints.latest_step()
  except Exception:  # pylint: disable=broad-except  # e.g. the storage that failed
    return None


# What a full disk, a file size limit (ulimit -f: EFBIG, as Python ignores SIGXFSZ), a quota
# or a storage gone read-only look like, raised directly or wrapped by orbax, tensorstore or
# TensorFlow (whose messages keep the OS's words).
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device; free some space",
    errno.EFBIG: "file too large (a file size limit, e.g. ulimit -f); lift the limit",
    errno.EDQUOT: "disk quota exceeded; free some space or raise the quota",
    errno.EROFS: "read-only file system; make it writable again",
    errno.EACCES: "permission denied; make the dir writable again",
    errno.EPERM: "operation not permitted; make the dir writable again"}
_STORAGE_TEXTS = [(re.compile(r"no space left on device|ENOSPC|os_error=28\b", re.I),
                   errno.ENOSPC),
                  (re.compile(r"file too large|EFBIG|os_error=27\b", re.I), errno.EFBIG),
                  (re.compile(r"disk quota exceeded|EDQUOT", re.I), errno.EDQUOT),
                  (re.compile(r"read-only file system|EROFS", re.I), errno.EROFS),
                  (re.compile(r"permission denied", re.I), errno.EACCES),
                  (re.compile(r"operation not permitted", re.I), errno.EPERM)]


def storage_problem(error: BaseException) -> str | None:
  """What went wrong in words, when `error` (or anything in its chain) is the storage
  refusing a write; else None."""
  if isinstance(error, SbsError):
    return None
  for e in exception_chain(error):
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
      return _STORAGE_ERRNOS[e.errno]
  for e in exception_chain(error):
    text = f"{type(e).__name__}: {e}"
    for pattern, code in _STORAGE_TEXTS:
      if pattern.search(text):
        return _STORAGE_ERRNOS[code]
  return None


def _steps(cfg: TrainConfig, student, state, best: dict | None, label_task: str,
           validation, checkpoints: ckpt.StateCheckpoints, origin: str,
           on_step: Callable[[int, dict], None] | None) -> None:
  """Steps after the state's step up to `train_steps`: step, log, evaluate (keep the best
  params), checkpoint. A preemption notice (SIGTERM) ends them after the current step,
  checkpointed (see preemption.py)."""
  # ---- Input: this host's rows of each global batch, from the resumed position on.
  start = int(jax.device_get(state["step"]))
  batches = train_batches(cfg.data, start)
  metric_log = MetricLog(cfg.model_dir, start)
  train_step = make_train_step(student, cfg.alpha, cfg.parallelism.grad_accum_steps, cfg.seed)
  progress = StepProgress(cfg.train_steps, start)
  progress.note(origin)
  tic, rows_since, examples_since = time.perf_counter(), 0, 0
  preemption = PreemptionWatch()
  try:
    for step in range(start + 1, cfg.train_steps + 1):
      state, metrics = train_step(state, global_batch(student, next(batches)))
      rows_since += cfg.data.batch_size
      examples_since = examples_since + metrics["examples"]  # on device: no sync per step
      last = step == cfg.train_steps
      host_metrics = None
      if step % cfg.log_every == 0 or last:
        host_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - tic
        host_metrics["rows_per_s"] = rows_since / elapsed
        host_metrics["examples_per_s"] = float(jax.device_get(examples_since)) / elapsed
        tic, rows_since, examples_since = time.perf_counter(), 0, 0
        metric_log.write(step, "train", host_metrics)
      progress.step(step, host_metrics)
      if step % cfg.eval.every == 0 or last:
        val_metrics, _ = eval_lib.evaluate(student, state["params"], label_task, "validation",
                                           cfg.eval, validation)
        metric_log.write(step, "validation", val_metrics)
        progress.note(eval_line(step, "validation", val_metrics, VALIDATION_CAP))
        if _better(val_metrics, best, cfg.eval.selection_metric):
          best = {"step": step, "metrics": val_metrics}
          ModelDir(cfg.model_dir).save_params(step, state["params"], best)
      preempted = preemption.reached(step)
      if step % cfg.checkpoint_every == 0 or last or preempted:
        checkpoints.save(step, state, {"best": best, "data_position": step})
      if preempted and not last:
        raise Preempted(step, cfg.model_dir)
      if on_step is not None:
        on_step(step, host_metrics or {})
  finally:  # also on Preempted or a crash: logs are flushed
    progress.close()
    preemption.close()
    metric_log.close()


def _final(cfg: TrainConfig, student, label_task: str, vocabulary, validation,
           length_check: dict) -> dict:
  """The best step's params on test; a few rationales to look at; results.json."""
  params, best = ModelDir(cfg.model_dir).load_params(student.abstract_state["params"])
  results = {"model_dir": cfg.model_dir, "mixture_or_task": cfg.data.mixture_or_task,
             "eval_task": label_task, "train_steps": cfg.train_steps,
             "best_step": best["step"], "selection_metric": cfg.eval.selection_metric,
             "units": UNITS, "validation": best["metrics"]}
  try:
    # The final number: the whole test split unless a smoke run limits it.
    results["test"], _ = eval_lib.evaluate(student, params, label_task, "test", cfg.eval,
                                           label_examples(label_task, "test",
                                                          cfg.eval.max_test_examples))
  except (SbsError, ValueError) as e:  # e.g. custom data without a test split
    results["test"] = None
    log.warning("no test evaluation: %s", e)
  results["caps"] = {split: (f"{name} = {limit}" if metrics and "split_examples" in metrics
                             else None)
                     for split, name, limit, metrics in (
                         ("validation", VALIDATION_CAP, cfg.eval.max_examples,
                          results["validation"]),
                         ("test", TEST_CAP, cfg.eval.max_test_examples, results["test"]))}
  results["environment"] = environment.describe(jax)  # what these numbers were computed with
  results["length_check"] = length_check  # the lengths set, training examples cut per task
  if cfg.data.task_feature_lengths != length_check["task_feature_lengths"]:
    results["length_check"]["fitted_lengths"] = cfg.data.task_feature_lengths
  if results["test"] is not None and jax.process_index() == 0:
    print(eval_line(best["step"], "test", results["test"], TEST_CAP), file=sys.stderr)
  samples = validation.input_texts[:cfg.eval.rationale_samples]
  raw = [eval_lib.raw_input(t) for t in samples]
  rationales = eval_lib.explain(student, params, vocabulary, raw, cfg.eval)
  results["rationale_samples"] = [{"input": x, "rationale": r} for x, r in zip(raw,
                                                                             rationales)]
  if jax.process_index() == 0:
    # Whole or not at all: a sweep or `sbs report` may read it while this run ends, and a
    # crash mid-write must not leave a truncated file that looks finished. (On gs:// an
    # object appears only when its upload completes; the rename is for local disks.)
    ModelDir(cfg.model_dir).write_results(results)
  return results
