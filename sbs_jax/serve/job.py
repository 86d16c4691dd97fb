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
- A manifest pins the input file's hash, the model (path, params steps, a fingerprint of its
  files) and the settings; a rerun with others is refused (or `--restart` discards the
  partial run). The finished summary keeps the manifest and the output's hash: a rerun of a
  finished job checks both, and an output file this job did not write is never taken for
  finished. A lock keeps two processes apart.
- Paths are checked before any work: an output that is the input (by any spelling, link or
  hard link), a directory, or under a file; an input inside the work folder or at the
  summary's path; all refused with one line.
- Ids: `--id_key`'s field; else the rows' `id` field when the first row has one (then every
  row must); else (or with `--index_ids`) the row's 0-based index.
- `--label_mode rank` (the manifest pins the mode: a partial or finished output of one mode
  is never continued or taken as done in the other): with a label set of choices read from
  each input, every row must list its choices; that is checked with the rest.
- Several hosts: every host reads the file and decodes its share of every batch (the mesh's
  data axis spans the hosts); host 0 writes the output and tells the others where to start.
"""

from __future__ import annotations

import dataclasses
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

from sbs_jax.annotate.answer_formats import NO_CHOICES, LabelSet
from sbs_jax.data.readers import Example, iter_json_rows, jsonl_example
from sbs_jax.errors import DataError, SbsError
from sbs_jax.jobdir.files import file_sha256, write_json_atomically
from sbs_jax.jobdir.locks import lock_exclusively
from sbs_jax.jobdir.manifest import describe_difference
from sbs_jax.jobdir.progress import Progress
from sbs_jax.metrics import normalize
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.serve.predictor import Predictor

log = logging.getLogger(__name__)
AUTO_ID_KEY = "id"  # the rows' id field when --id_key is not given
_ALREADY_DONE, _REFUSED = -2, -1  # what host 0 tells the others instead of a start row


@dataclasses.dataclass
class FileJob:
  """One input file to label into one output file."""
  input_file: pathlib.Path
  output_file: pathlib.Path
  model_dir: str
  input_key: str = "input"
  label_key: str = "label"
  id_key: str | None = None  # None: "id" when the rows have that field, else the row index
  rationale: bool = False
  window: int = 1024  # rows sorted and decoded together; also the unit of resuming
  restart: bool = False
  progress: bool | None = None  # None: a bar when stderr is a terminal
  index_ids: bool = False  # ids are the row indices even where rows have an `id` field
  label_set: LabelSet | None = None  # --label_mode rank: each row must have candidates
  _auto_id_key: str | None = dataclasses.field(default=None, init=False, repr=False)
  _ids_resolved: bool = dataclasses.field(default=False, init=False, repr=False)

  def __post_init__(self):
    self.input_file, self.output_file = pathlib.Path(self.input_file), pathlib.Path(
        self.output_file)
    if self.window < 1:
      raise SbsError(f"--window must be at least 1, got {self.window}")
    if self.index_ids and self.id_key:
      raise SbsError(f"--id_key {self.id_key} and --index_ids exclude each other: pass one")

  def row_id_key(self) -> str | None:
    """The field the output ids come from, or None for the row index (see count_rows)."""
    if self.index_ids:
      return None
    if self.id_key:
      return self.id_key
    if not self._ids_resolved:
      count_rows(self)
    return self._auto_id_key

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
    id_key = self.row_id_key()
    rows = iter_json_rows(self.input_file)
    for i, (where, row) in enumerate(itertools.islice(rows, skip, None), start=skip):
      yield jsonl_example(self.input_file, where, row, i, "row", self.input_key,
                          self.label_key, id_key)

  def check_paths(self) -> None:
    """Refuses (one line each) an output that would overwrite or delete the input, or that
    cannot be written: before any row is read or the model loaded. Host 0's check."""
    out, source = self.output_file, self.input_file
    again = "choose another --output_file"
    if _same_file(source, out):
      raise SbsError(f"--output_file {out} is the input file {source} (the same file by "
                     f"another name, a link or a hard link): the input would be "
                     f"overwritten; {again}")
    if out.is_dir():
      raise SbsError(f"--output_file {out} is a directory: give the path of a file to "
                     f"write, e.g. {out / 'predictions.jsonl'}")
    if _same_file(source, self.stats_path):
      raise SbsError(f"the input file {source} is where the summary of --output_file {out} "
                     f"goes ({self.stats_path}): it would be overwritten; {again}")
    if _inside(source, self.work_dir):
      raise SbsError(f"the input file {source} lies in the work folder of --output_file "
                     f"{out} ({self.work_dir}), which is replaced and deleted by the job; "
                     f"move the input out of it, or {again}")
    if self.stats_path.is_dir():
      raise SbsError(f"the summary path of --output_file {out}, {self.stats_path}, is a "
                     f"directory: move it away, or {again}")
    if self.work_dir.exists() and not self.work_dir.is_dir():
      raise SbsError(f"the work folder of --output_file {out}, {self.work_dir}, is a file: "
                     f"move it away, or {again}")
    folder = pathlib.Path(os.path.abspath(out)).parent
    while not folder.exists() and folder != folder.parent:
      folder = folder.parent
    if not folder.is_dir():
      raise SbsError(f"--output_file {out}: {folder} is a file, not a folder; {again}")
    if not os.access(folder, os.W_OK | os.X_OK):
      raise SbsError(f"--output_file {out}: the folder {folder} is not writable; {again}")
    probe = folder / f".{out.name}.probe-{os.getpid()}"  # root passes os.access everywhere
    try:
      probe.mkdir()
      probe.rmdir()
    except OSError as e:
      raise SbsError(f"--output_file {out}: cannot write in the folder {folder} "
                     f"({e.strerror or e}); {again}") from None


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Whether two paths name one file: the same resolved path (spellings, symlinks) or,
  when both exist, the same device and inode (hard links)."""
  if os.path.realpath(a) == os.path.realpath(b):
    return True
  try:
    return os.path.samestat(os.stat(a), os.stat(b))
  except OSError:
    return False


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  real, top = os.path.realpath(path), os.path.realpath(folder)
  return real.startswith(top.rstrip(os.sep) + os.sep)


def _writable(action: str, job: "FileJob", fn, *args):
  """fn(*args), with an OSError (read-only or full disk, a path under a file) as one line."""
  try:
    return fn(*args)
  except OSError as e:
    where = f" ({e.filename})" if e.filename else ""
    raise SbsError(f"cannot {action} for --output_file {job.output_file}: "
                   f"{e.strerror or e}{where}; choose a writable --output_file") from None


def manifest(job: FileJob, predictor: Predictor, rows: int) -> dict:
  """What decides the output: a partial run is only continued with exactly these."""
  model_dir = str(job.model_dir).rstrip("/")
  if "://" not in model_dir:
    model_dir = str(pathlib.Path(model_dir).resolve())
  model = ModelDir(model_dir)
  s = predictor.settings
  return {"input_file": str(job.input_file.resolve()), "input_sha256": file_sha256(
      job.input_file), "rows": rows, "model_dir": model_dir,
          "params_steps": model.params_steps(), "model_files": model.fingerprint(),
          "input_key": job.input_key, "label_key": job.label_key,
          "id_key": job.row_id_key(), "rationale": job.rationale, "window": job.window,
          "batch_size": predictor.batch_size, "max_input_length": predictor.max_input_length,
          "label_mode": s.label_mode,
          "label_decode_length": s.label_decode_length if s.label_mode == "greedy" else None,
          "rationale_decode_length": s.rationale_decode_length if job.rationale else None}


def _pinned(recorded: dict) -> dict:
  """A recorded manifest as this sbs writes it: one from before `label_mode` decoded
  greedily."""
  return {"label_mode": "greedy", **recorded}


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


def _check_finished(job: FileJob, wanted: dict) -> None:
  """Refuses a finished output that was made with other settings or inputs, was changed
  since, or was not written by this job at all (no summary with a manifest)."""
  out, stats_path = job.output_file, job.stats_path
  try:
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    stats = None
  recorded = stats.get("manifest") if isinstance(stats, dict) else None
  if not isinstance(recorded, dict):
    raise SbsError(f"--output_file {out} exists but is not the finished output of this "
                   f"job ({stats_path} with its settings is missing or from an older sbs): "
                   "pass --restart to replace it, or choose another --output_file")
  diff = describe_difference(_pinned(recorded), wanted)
  if diff:
    raise SbsError(f"{out} is finished but was made with other settings or inputs ({diff}): "
                   "pass --restart to label the file again with these (the output is "
                   "replaced), or choose another --output_file")
  if stats.get("output_sha256") != file_sha256(out):
    raise SbsError(f"{out} was changed after `sbs predict` wrote it (its SHA-256 is not the "
                   f"one in {stats_path}): pass --restart to label the file again, or "
                   "choose another --output_file")


def _summary(stats: dict) -> dict:
  """The summary printed and returned: the stats file without the manifest."""
  return {k: v for k, v in stats.items() if k != "manifest"}


def _prepare(job: FileJob, predictor: Predictor, total: int) -> int:
  """Host 0: the row to start from (after checking a partial run), or _ALREADY_DONE
  (after checking the finished output)."""
  wanted = manifest(job, predictor, total)
  if job.output_file.exists() and not job.restart:
    _check_finished(job, wanted)
    return _ALREADY_DONE
  _writable("create the work folder", job, job.work_dir.mkdir, 0o777, True, True)
  path = job.work_dir / "manifest.json"
  if job.restart:
    job.rows_path.unlink(missing_ok=True)
  elif path.exists():
    diff = describe_difference(_pinned(json.loads(path.read_text())), wanted)
    if diff:
      raise SbsError(f"{job.work_dir} holds a partial run with other settings ({diff}): "
                     "rerun with the original arguments, or pass --restart to discard it")
  _writable("write the manifest", job, write_json_atomically, path, wanted)
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
  """Checks every row of the input; returns their number. Without --id_key or --index_ids,
  decides the ids: the `id` field if the first row has one (then every row must have one),
  else the row index (then no row may have one: ids of some rows would mix two kinds)."""
  if job.index_ids or job.id_key or job._ids_resolved:  # pylint: disable=protected-access
    total, id_key = 0, job.row_id_key()
    for i, (where, row) in enumerate(iter_json_rows(job.input_file)):
      _check_candidates(job, where, jsonl_example(job.input_file, where, row, i, "row",
                                                  job.input_key, job.label_key, id_key))
      total += 1
  else:
    total, first = 0, None
    for i, (where, row) in enumerate(iter_json_rows(job.input_file)):
      has_id = isinstance(row, dict) and row.get(AUTO_ID_KEY) is not None
      if first is None:
        first = (where, has_id)
      elif has_id != first[1]:
        problem = (f"missing field, but {first[0]} has one: give every row an "
                   f"{AUTO_ID_KEY!r}" if first[1] else
                   f"{first[0]} has no {AUTO_ID_KEY!r} field but this row has one: give "
                   f"every row an {AUTO_ID_KEY!r} (or none)")
        raise DataError(job.input_file, f"{problem}, or pass --index_ids to number the "
                        "rows 0, 1, ... instead", where=where, field=AUTO_ID_KEY)
      _check_candidates(job, where, jsonl_example(
          job.input_file, where, row, i, "row", job.input_key, job.label_key,
          AUTO_ID_KEY if has_id else None))
      total += 1
    # pylint: disable-next=protected-access
    job._auto_id_key, job._ids_resolved = (AUTO_ID_KEY if first and first[1] else None), True
  if not total:
    raise DataError(job.input_file, "no rows")
  return total


def _check_candidates(job: FileJob, where: str, ex: Example) -> None:
  """With --label_mode rank, a row whose input gives no candidate label is refused."""
  if job.label_set is not None and not job.label_set.candidates(ex.input):
    raise DataError(job.input_file, f"the input {NO_CHOICES}", where=where,
                    field=job.input_key)


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
          "max_input_length": predictor.max_input_length,
          "label_mode": predictor.settings.label_mode, "labelled": labelled,
          "correct": correct,
          "accuracy": round(100.0 * correct / labelled, 4) if labelled else None}


def run(job: FileJob, predictor: Predictor, total: int | None = None,
        on_window: Callable[[int], None] | None = None) -> dict:
  """Labels the file (resuming a partial run); returns the summary (host 0's is whole).

  `total`: `count_rows(job)` if the caller has it. `on_window(rows_written)` is called
  after each window is written (tests use it to interrupt a run).
  """
  writer = jax.process_index() == 0
  if writer:
    job.check_paths()
  total = total or count_rows(job)
  with_id = job.row_id_key() is not None
  lock = None
  if writer:
    _writable("create the output's folder", job, job.output_file.parent.mkdir, 0o777, True,
              True)
    if not job.output_file.exists() or job.restart:
      _writable("create the work folder", job, job.work_dir.mkdir, 0o777, True, True)
      lock = _writable("create the lock", job, lock_exclusively, job.work_dir / "lock",
                       f"another `sbs predict` is writing {job.output_file}")
  try:
    start = _agree_on_start(job, predictor, total)
    if start == _ALREADY_DONE:
      log.info("%s is already complete, made with these settings from this input (pass "
               "--restart to label the file again)", job.output_file)
      return _summary(json.loads(job.stats_path.read_text())) if writer else {"rows": total}
    began, done = time.monotonic(), start
    progress = Progress(total, start, job.input_file.name, job.progress if writer else False,
                        unit="row", logger=log)
    # pylint: disable-next=consider-using-with
    out = _writable("open the rows file", job, open, job.rows_path, "a",
                    -1, "utf-8") if writer else None
    try:
      examples = job.examples(skip=start)
      while chunk := list(itertools.islice(examples, job.window)):
        predictions = predictor.predict([ex.input for ex in chunk], job.rationale)
        if out is not None:
          out.write("".join(json.dumps(output_row(ex, p, with_id),
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
    # The summary, with what the output was made from and its hash, goes first: a rerun
    # checks a finished output against it (a kill before the rename leaves a whole
    # partial run, which the rerun finishes again).
    stats.update(output_sha256=file_sha256(job.rows_path),
                 manifest=json.loads((job.work_dir / "manifest.json").read_text()))
    _writable("write the summary", job, write_json_atomically, job.stats_path, stats)
    _writable("write the output", job, os.replace, job.rows_path, job.output_file)
    shutil.rmtree(job.work_dir, ignore_errors=True)
    return _summary(stats)
  finally:
    if lock is not None:
      lock.close()
