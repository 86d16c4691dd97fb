"""Training metrics to TensorBoard event files and to `<model_dir>/metrics.jsonl` (host 0)."""

from __future__ import annotations

import json

import jax
import tensorflow as tf

from sbs_jax.model.model_dir import METRICS_FILE, ModelDir


class MetricLog:
  """One JSON line per logged step and split; a resumed run drops the lines past its start."""

  def __init__(self, model_dir: str, start_step: int):
    self._model_dir = ModelDir(model_dir)
    self._path = self._model_dir.file(METRICS_FILE)
    self._active = jax.process_index() == 0
    self._lines: list[str] = []
    self._writer = None
    if not self._active:
      return
    if tf.io.gfile.exists(self._path):
      with tf.io.gfile.GFile(self._path) as f:
        self._lines = [l for l in f.read().splitlines()
                       if l and json.loads(l)["step"] <= start_step]
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
    self._writer = metric_writers.create_default_writer(f"{model_dir}/tensorboard",
                                                        asynchronous=False)

  def write(self, step: int, split: str, values: dict) -> None:
    if not self._active:
      return
    scalars = {k: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) or getattr(v, "ndim", None) == 0}
    self._writer.write_scalars(step, {f"{split}/{k}": v for k, v in scalars.items()})
    self._lines.append(json.dumps({"step": step, "split": split, **scalars}, sort_keys=True))
    # Rewritten whole: appending is not possible on every file system (e.g. GCS).
    self._model_dir.write_metrics(self._lines)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
