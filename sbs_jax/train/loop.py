"""The training run, in labelled sections: claim the model dir, restore or start the state,
the step loop, the final test evaluation."""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

import jax
import seqio
import tensorflow as tf

from sbs_jax.data import vocab as vocab_lib
from sbs_jax.errors import SbsError
from sbs_jax.model.config import T5Config
from sbs_jax.train import checkpoint as ckpt
from sbs_jax.train import evaluate as eval_lib
from sbs_jax.train import gin_check
from sbs_jax.train import run_dir
from sbs_jax.train.config import TrainConfig
from sbs_jax.train.data import label_examples, train_batches
from sbs_jax.train.metric_log import MetricLog
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.preemption import Preempted, PreemptionWatch
from sbs_jax.train.progress import Progress, eval_line
from sbs_jax.train.state import (build_student, global_batch, init_state, make_mesh,
                                 make_train_step)

log = logging.getLogger(__name__)
UNITS = "every *accuracy is a percentage (0-100); examples is a count"


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
  mesh = make_mesh(cfg.mesh)
  tx = make_optimizer(cfg.optimizer, cfg.train_steps)
  student = build_student(model_config, tx, mesh, cfg.partitioning_dims)
  label_task = cfg.data.label_task()
  vocabulary = _vocabulary(label_task)
  if vocabulary.vocab_size > model_config.vocab_size:
    raise SbsError(f"the vocabulary has {vocabulary.vocab_size} ids but the network only "
                   f"{model_config.vocab_size}: raise student_config.vocab_size")
  label_prefix = "" if "_standard_" in label_task else "predict: "
  vocabulary_file = getattr(vocabulary, "sentencepiece_model_file", "")
  extra_ids = getattr(vocabulary, "extra_ids", 0)

  # ---- Model dir: another run's dir is refused before anything in it is touched.
  run = run_dir.RunDir(cfg.model_dir, run_dir.identity(
      cfg, model_config, label_task, vocabulary_file, extra_ids, vocab_lib.annotation_dir()),
      cfg.train_steps)
  checkpoints = None
  try:
    ckpt.write_gin_config(cfg.model_dir, absolute_paths(cfg, vocabulary_file))
    ckpt.write_model_info(cfg.model_dir, model_config, vocabulary_file, extra_ids,
                          label_prefix, max_input_length=cfg.data.task_feature_lengths["inputs"])

    # ---- State: resume from the newest intact checkpoint, else start (random or imported).
    checkpoints = ckpt.StateCheckpoints(cfg.model_dir, cfg.keep_checkpoints)
    if checkpoints.latest_step() is not None:
      state, meta = checkpoints.restore(student.abstract_state)
      best = meta.get("best")
      origin = f"resumed from step {int(jax.device_get(state['step']))} of {cfg.model_dir}"
    else:
      params = None
      origin = f"starting from a random init (seed {cfg.seed})"
      if cfg.initial_checkpoint:
        params, _ = ckpt.load_params(cfg.initial_checkpoint, student.abstract_state["params"])
        origin = f"starting from {cfg.initial_checkpoint}"
      state, best = init_state(student, cfg.seed, params), None

    # ---- The loop, then the best step's params on test.
    validation = label_examples(label_task, "validation", cfg.eval.max_examples)
    _steps(cfg, student, state, best, label_task, validation, checkpoints, origin, on_step)
  except BaseException:
    if checkpoints is None or checkpoints.latest_step() is None:
      run.abandon()  # nothing to resume from: leave no half-made run dir behind
    raise
  finally:
    if checkpoints is not None:
      checkpoints.close()
  return _final(cfg, student, label_task, vocabulary, validation)


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
  train_step = make_train_step(student, cfg.alpha, cfg.optimizer.grad_accum_steps, cfg.seed)
  progress = Progress(cfg.train_steps, start)
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
        progress.note(eval_line(step, "validation", val_metrics))
        if _better(val_metrics, best, cfg.eval.selection_metric):
          best = {"step": step, "metrics": val_metrics}
          ckpt.save_params(cfg.model_dir, step, state["params"], best)
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


def _final(cfg: TrainConfig, student, label_task: str, vocabulary, validation) -> dict:
  """The best step's params on test; a few rationales to look at; results.json."""
  params, best = ckpt.load_params(cfg.model_dir, student.abstract_state["params"])
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
  samples = validation.input_texts[:cfg.eval.rationale_samples]
  raw = [eval_lib.raw_input(t) for t in samples]
  rationales = eval_lib.explain(student, params, vocabulary, raw, cfg.eval)
  results["rationale_samples"] = [{"input": x, "rationale": r} for x, r in zip(raw,
                                                                             rationales)]
  if jax.process_index() == 0:
    with tf.io.gfile.GFile(f"{cfg.model_dir}/results.json", "w") as f:
      f.write(json.dumps(results, indent=2))
  return results
