"""`sbs predict --input_file`: label a JSON Lines file, streaming and resumable.

- The file is read twice, a row at a time (memory does not grow with it): once to check
  every row (the errors of `sbs annotate`'s `jsonl:` reader, before any decoding), then in
  windows of `window` rows that are decoded in length-sorted buckets and written in input
  order.
- Rows go to `.<output>.partial/rows.jsonl`, a whole window at a time. A rerun after a kill
  keeps the whole windows written (a half-written one is cut off) and decodes the rest;
  since windows start at the same rows as before, every batch, and so the output, equals an
  uninterrupted run's. When all rows are written the file is renamed to the output and the
  summary (counts, label accuracy) written beside it as `<output>.stats.json`.
- A manifest pins the input file's hash, the model and the settings; a rerun with others is
  refused (or `--restart` discards the partial run). A lock keeps two processes apart.
- Several hosts: every host reads the file and decodes its share of every batch (the mesh's
  data axis spans the hosts); host 0 writes the output and tells the others where to start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import pathlib
import shutil
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from sbs_jax.annotate.job import (Progress, describe_difference, lock_exclusively,
                                   write_json_atomically)
from sbs_jax.data.readers import Example, iter_json_rows, jsonl_example
from sbs_jax.errors import DataError, SbsError
from sbs_jax.metrics import normalize
from sbs_jax.serve.predictor import Predictor

log = logging.getLogger(__name__)
_ALREADY_DONE, _REFUSED = -2, -1  # what host 0 tells the others instead of a start row


@dataclasses.dataclass
class FileJob:
  """One input file to label into one output file."""
  input_file: pathlib.Path
  output_file: pathlib.Path
  model_dir: str
  input_key: str = "input"
  label_key: str = "label"
  id_key: str | None = None
  rationale: bool = False
  window: int = 1024  # rows sorted and decoded together; also the unit of resuming
  restart: bool = False
  progress: bool | None = None  # None: a bar when stderr is a terminal

  def __post_init__(self):
    self.input_file, self.output_file = pathlib.Path(self.input_file), pathlib.Path(
        self.output_file)
    if self.window < 1:
      raise SbsError(f"--window must be at least 1, got {self.window}")

  @property
  def work_dir(self) -> pathlib.Path:
    return self.output_file.with_name(f".{self.output_file.name}.partial")

  @property
  def rows_path(self) -> pathlib.Path:
    return self.work_dir / "rows.jsonl"

  @property
  def stats_path(self) -> pathlib.Path:
    return self.output_file.with_name(f"{self.output_file.name}.stats.json")

  def examples(self, skip: int = 0) -> Iterator[Example]:
    """The input's rows from row `skip` on (DataError on a bad row)."""
    rows = iter_json_rows(self.input_file)
    for i, (where, row) in enumerate(itertools.islice(rows, skip, None), start=skip):
      yield jsonl_example(self.input_file, where, row, i, "row", self.input_key,
                          self.label_key, self.id_key)


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def manifest(job: FileJob, predictor: Predictor, rows: int) -> dict:
  """What decides the output: a partial run is only continued with exactly these."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  model_dir = str(job.model_dir).rstrip("/")
  if "://" not in model_dir:
    model_dir = str(pathlib.Path(model_dir).resolve())
  params_dir = f"{model_dir}/params"
  steps = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(params_dir)) \
      if tf.io.gfile.isdir(params_dir) else []
  s = predictor.settings
  return {"input_file": str(job.input_file.resolve()), "input_sha256": file_sha256(
      job.input_file), "rows": rows, "model_dir": model_dir,
          "params_steps": steps, "input_key": job.input_key, "label_key": job.label_key,
          "id_key": job.id_key, "rationale": job.rationale, "window": job.window,
          "batch_size": predictor.batch_size, "max_input_length": predictor.max_input_length,
          "label_decode_length": s.label_decode_length,
          "rationale_decode_length": s.rationale_decode_length if job.rationale else None}


def output_row(ex: Example, prediction: dict, with_id: bool) -> dict:
  """One line of the output: id, label[, rationale], truncation[, gold label, correct]."""
  row = {"id": ex.id if with_id else ex.index, **prediction}
  if ex.label is not None:
    row["gold"] = ex.label
    row["correct"] = normalize(ex.label) == normalize(prediction["label"])
  return row


# ---------------------------------------------------------------- resuming


def _whole_windows(path: pathlib.Path, window: int, total: int) -> int:
  """Rows of the partial output to keep: its whole windows (all rows if all are there);
  the file is cut after them. Reads a line at a time."""
  if not path.exists():
    return 0
  complete = cut = 0  # lines read; the end of the last whole window
  with open(path, "rb") as f:
    for line in f:
      if not line.endswith(b"\n"):
        break
      complete += 1
      if complete % window == 0 or complete == total:
        cut = f.tell()
  keep = complete if complete == total else complete // window * window
  if cut < path.stat().st_size:
    log.warning("%s: dropping %d bytes of an unfinished window", path,
                path.stat().st_size - cut)
    with open(path, "r+b") as f:
      f.truncate(cut)
  return keep


def _prepare(job: FileJob, predictor: Predictor, total: int) -> int:
  """Host 0: the row to start from (after checking a partial run), or _ALREADY_DONE."""
  if job.output_file.exists() and not job.restart:
    return _ALREADY_DONE
  job.work_dir.mkdir(parents=True, exist_ok=True)
  wanted = manifest(job, predictor, total)
  path = job.work_dir / "manifest.json"
  if job.restart:
    job.rows_path.unlink(missing_ok=True)
  elif path.exists():
    diff = describe_difference(json.loads(path.read_text()), wanted)
    if diff:
      raise SbsError(f"{job.work_dir} holds a partial run with other settings ({diff}): "
                     "rerun with the original arguments, or pass --restart to discard it")
  write_json_atomically(path, wanted)
  start = _whole_windows(job.rows_path, job.window, total)
  if start:
    log.info("resuming: %d of %d rows already written", start, total)
  return start


def _agree_on_start(job: FileJob, predictor: Predictor, total: int) -> int:
  """Host 0 prepares; every host learns the start row (or that host 0 refused)."""
  start, error = _REFUSED, None
  if jax.process_index() == 0:
    try:
      start = _prepare(job, predictor, total)
    except Exception as e:  # pylint: disable=broad-except  # raised after the others know
      error = e
  if jax.process_count() > 1:
    start = int(multihost_utils.broadcast_one_to_all(np.int64(start)))
  if error is not None:
    raise error
  if start == _REFUSED:
    raise SbsError("host 0 refused to start the job: see its log")
  return start


# ---------------------------------------------------------------- the job


def count_rows(job: FileJob) -> int:
  """Checks every row of the input; returns their number."""
  total = sum(1 for _ in job.examples())
  if not total:
    raise DataError(job.input_file, "no rows")
  return total


def summarize(job: FileJob, predictor: Predictor, rows_path: pathlib.Path) -> dict:
  """Counts of the written output (streamed): rows, truncated, label accuracy in percent."""
  rows = truncated = labelled = correct = 0
  with open(rows_path, "rb") as f:
    for line in f:
      row = json.loads(line)
      rows += 1
      truncated += bool(row["truncated"])
      if "correct" in row:
        labelled += 1
        correct += bool(row["correct"])
  return {"output_file": str(job.output_file), "rows": rows, "truncated": truncated,
          "max_input_length": predictor.max_input_length, "labelled": labelled,
          "correct": correct,
          "accuracy": round(100.0 * correct / labelled, 4) if labelled else None}


def run(job: FileJob, predictor: Predictor, total: int | None = None,
        on_window: Callable[[int], None] | None = None) -> dict:
  """Labels the file (resuming a partial run); returns the summary (host 0's is whole).

  `total`: `count_rows(job)` if the caller has it. `on_window(rows_written)` is called
  after each window is written (tests use it to interrupt a run).
  """
  total = total or count_rows(job)
  writer = jax.process_index() == 0
  lock = None
  if writer:
    job.output_file.parent.mkdir(parents=True, exist_ok=True)
    if not job.output_file.exists() or job.restart:
      job.work_dir.mkdir(parents=True, exist_ok=True)
      lock = lock_exclusively(job.work_dir / "lock",
                              f"another `sbs predict` is writing {job.output_file}")
  try:
    start = _agree_on_start(job, predictor, total)
    if start == _ALREADY_DONE:
      log.info("%s is already complete (pass --restart to label the file again)",
               job.output_file)
      return json.loads(job.stats_path.read_text()) if (
          writer and job.stats_path.exists()) else {"rows": total}
    began, done = time.monotonic(), start
    progress = Progress(total, start, job.input_file.name, job.progress if writer else False,
                        unit="row")
    # pylint: disable-next=consider-using-with
    out = open(job.rows_path, "a", encoding="utf-8") if writer else None
    try:
      examples = job.examples(skip=start)
      while chunk := list(itertools.islice(examples, job.window)):
        predictions = predictor.predict([ex.input for ex in chunk], job.rationale)
        if out is not None:
          out.write("".join(json.dumps(output_row(ex, p, bool(job.id_key)),
                                       ensure_ascii=False) + "\n"
                            for ex, p in zip(chunk, predictions)))
          out.flush()
          os.fsync(out.fileno())
        done += len(chunk)
        progress.update(len(chunk))
        if on_window is not None:
          on_window(done)
    finally:
      progress.close()
      if out is not None:
        out.close()
    seconds = time.monotonic() - began
    if not writer:
      return {"rows": total}
    stats = summarize(job, predictor, job.rows_path)
    stats.update(rows_this_run=done - start, seconds_this_run=round(seconds, 3),
                 rows_per_second=round((done - start) / max(seconds, 1e-9), 3))
    os.replace(job.rows_path, job.output_file)
    write_json_atomically(job.stats_path, stats)
    shutil.rmtree(job.work_dir, ignore_errors=True)
    return stats
  finally:
    if lock is not None:
      lock.close()
