"""The annotation job: ask the teacher for every example of a shard, parse, write TFRecords.

Exactly-once, resumable design:
- Each completed teacher answer is appended at once to a journal (JSON Lines) in
  `<out>/<dataset>/.partial/<split>-SSSSS-of-NNNNN/`, keyed by the example's index and a
  hash of the prompt it was asked with. A restart reads the journal, drops a half-written
  last line, and asks the teacher only for the examples not in it.
- When every example of the shard has an answer, the records are written in index order
  to a temporary file that is renamed into place, then the stats; then the journal goes.
  The final file therefore holds every example of the shard exactly once, whatever the
  order answers arrived in and however often the run was interrupted.
- A manifest pins everything that changes the records: the teacher and its settings (for
  replay, a hash of the completions), the prompt, the sharding, a hash of the examples
  (inputs, gold labels, ids) and the parsing (answer format, patterns, keys). A partial
  run resumed with another teacher, prompt or sharding is refused instead of mixing two
  runs (answers to changed inputs are asked again); a finished shard whose records were
  made with any other setting is refused instead of being returned as if current. Both
  say to pass --restart. A lock keeps two processes off the same shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
from typing import Callable, Sequence

from sbs_jax.data import records as records_lib
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.annotate import stats as stats_lib
from sbs_jax.annotate.parsers import Parsed
from sbs_jax.annotate.prompts import Prompt
from sbs_jax.annotate.teachers import Completion, Teacher
from sbs_jax.data.readers import Example
from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.jobdir.files import write_json_atomically
from sbs_jax.jobdir.locks import lock_exclusively
from sbs_jax.jobdir.manifest import describe_difference
from sbs_jax.jobdir.progress import Progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
  """One shard of one split to annotate."""
  dataset: str
  split: str
  examples: Sequence[Example]
  prompt: Prompt
  prompt_id: str  # recorded in every record (the prompt's id, or the replay source's)
  parse: Callable[[str, Example], Parsed]
  labels_match: Callable[[str, str], bool]
  teacher: Teacher
  out_dir: pathlib.Path
  num_shards: int = 1
  shard_index: int = 0
  concurrency: int = 16
  restart: bool = False
  progress: bool | None = None  # None: a bar when stderr is a terminal
  answer_format: str = "auto"  # what parsing ran, for the stats (see answer_formats.py)
  settings: dict = dataclasses.field(default_factory=dict)  # other parser settings, keys

  def __post_init__(self):
    self.out_dir = pathlib.Path(self.out_dir)
    if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
      raise SbsError(f"--shard_index must be in [0, {self.num_shards}), "
                     f"got {self.shard_index}")
    if self.concurrency < 1:
      raise SbsError(f"--concurrency must be at least 1, got {self.concurrency}")

  # The shard's files, as the annotation dir names them (data/annotation_dir.py).
  @property
  def annotation_dir(self) -> AnnotationDir:
    return AnnotationDir(self.out_dir)

  @property
  def dataset_dir(self) -> pathlib.Path:
    return pathlib.Path(self.annotation_dir.dataset_dir(self.dataset))

  @property
  def records_path(self) -> pathlib.Path:
    return pathlib.Path(self.annotation_dir.records_file(self.dataset, self.split,
                                                         self.shard_index, self.num_shards))

  @property
  def stats_path(self) -> pathlib.Path:
    return pathlib.Path(self.annotation_dir.stats_file(self.dataset, self.split,
                                                       self.shard_index, self.num_shards))

  @property
  def split_stats_path(self) -> pathlib.Path:
    """The whole split's stats (the same file as `stats_path` for one shard)."""
    return pathlib.Path(self.annotation_dir.stats_file(self.dataset, self.split))

  @property
  def work_dir(self) -> pathlib.Path:
    return pathlib.Path(self.annotation_dir.work_dir(self.dataset, self.split,
                                                     self.shard_index, self.num_shards))

  def shard_examples(self) -> Sequence[Example]:
    n = len(self.examples)
    lo = n * self.shard_index // self.num_shards
    hi = n * (self.shard_index + 1) // self.num_shards
    return self.examples[lo:hi]

  def manifest(self) -> dict:
    """Everything that changes this shard's records (see OUTPUT_KEYS and SHARD_KEYS)."""
    shard = self.shard_examples()
    return {"dataset": self.dataset, "split": self.split, "teacher": self.teacher.name,
            "teacher_settings": dict(getattr(self.teacher, "settings", {})),
            "prompt_id": self.prompt_id, "num_shards": self.num_shards,
            "shard_index": self.shard_index, "examples": len(shard),
            "first_id": shard[0].id if shard else "", "last_id": shard[-1].id if shard else "",
            "examples_sha256": examples_hash(shard), "answer_format": self.answer_format,
            "parser_settings": dict(self.settings)}


# Settings that only shape the records written at the end: a partial run resumes across a
# change of these (answers to changed inputs are asked again, by their prompt hash), a
# finished one does not.
OUTPUT_KEYS = ("examples_sha256", "answer_format", "parser_settings")
# The keys in which the shards of one split differ.
SHARD_KEYS = ("shard_index", "examples", "first_id", "last_id", "examples_sha256")


def examples_hash(examples: Sequence[Example]) -> str:
  """A hash of the examples' ids, inputs, gold labels and choices."""
  h = hashlib.sha256()
  for ex in examples:
    h.update(json.dumps([ex.index, ex.id, ex.input, ex.label, list(ex.choices)],
                        ensure_ascii=False).encode("utf-8") + b"\n")
  return h.hexdigest()[:16]


def prompt_hash(prompt_text: str) -> str:
  return hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- the journal


class Journal:
  """Append-only JSON Lines of completed answers; tolerant of a half-written last line."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._fd = None
    self._broken: OSError | None = None

  def load(self) -> dict[int, dict]:
    """Entries by example index; truncates a half-written last line off the file."""
    if not self.path.exists():
      return {}
    data = self.path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
      log.warning("%s: dropping a half-written last entry (%d bytes)", self.path,
                  len(data) - complete)
      with open(self.path, "r+b") as f:
        f.truncate(complete)
    entries = {}
    for line in data[:complete].splitlines():
      try:
        entry = json.loads(line)
        entries[int(entry["i"])] = entry
      except (ValueError, KeyError, TypeError):
        log.warning("%s: skipping an unreadable entry", self.path)
    return entries

  def append(self, index: int, phash: str, completion: Completion) -> None:
    """Appends one entry with a single write; on a failed write (disk full, file size
    limit) cuts the file back to its last whole entry, and refuses later appends."""
    if self._broken is not None:
      raise self._broken
    if self._fd is None:
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = (json.dumps({"i": index, "h": phash, "c": completion.text,
                        "pt": completion.prompt_tokens, "ct": completion.completion_tokens},
                       ensure_ascii=False) + "\n").encode("utf-8")
    start = os.fstat(self._fd).st_size
    try:
      written = 0
      while written < len(line):  # in the OS after each answer: a killed process loses none
        written += os.write(self._fd, line[written:])
    except OSError as e:
      if e.filename is None:
        e.filename = str(self.path)
      self._broken = e
      try:
        os.ftruncate(self._fd, start)  # no half entry left behind
      except OSError:
        pass  # a later load() drops a half-written last line anyway
      raise

  def close(self) -> None:
    """Closes the file, synced to disk when it can be (errors here are not raised: every
    entry is already in the OS, and a later load() checks the file)."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        os.fsync(fd)
      except OSError as e:
        log.debug("%s: fsync failed: %s", self.path, e)
      finally:
        os.close(fd)


# ---------------------------------------------------------------- asking the teacher


async def _ask(job: Job, pending: Sequence[Example], journal: Journal,
               progress: Progress) -> None:
  """Asks the teacher for every pending example, `job.concurrency` at a time.

  Ctrl-C (SIGINT) stops the run in every case: no example is started after it, the
  requests in flight are cancelled, and KeyboardInterrupt is raised once they are gone
  (the journal keeps every answer received). Relying on asyncio.run's own SIGINT handling
  was not enough: in CI a run given SIGINT finished all its rows and exited 0 (probably a
  cancellation taken for a timeout inside the HTTP client and retried; not confirmed).
  """
  todo = iter(pending)
  interrupted = asyncio.Event()

  async def worker():
    for ex in todo:  # one iterator shared by all workers: each example taken once
      if interrupted.is_set():
        return
      text = job.prompt.render(ex)
      completion = await job.teacher.complete(ex, text)
      journal.append(ex.index, prompt_hash(text), completion)
      progress.update()

  workers = [asyncio.ensure_future(worker()) for _ in range(min(job.concurrency,
                                                                len(pending)))]

  def on_sigint():
    interrupted.set()
    for w in workers:
      w.cancel()

  loop = asyncio.get_running_loop()
  handled = {}  # signal -> the Python-level handler the loop's replaces
  for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM (a kill, a scheduler) as Ctrl-C
    try:
      previous = signal.getsignal(sig)
      loop.add_signal_handler(sig, on_sigint)
      handled[sig] = previous
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
      pass
  try:
    await asyncio.gather(*workers)
  except asyncio.CancelledError:
    if not interrupted.is_set():
      raise
  finally:
    for sig, previous in handled.items():
      loop.remove_signal_handler(sig)  # this sets SIG_DFL: put back what was there
      if previous is not None:
        signal.signal(sig, previous)
    for w in workers:
      w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await job.teacher.aclose()
  if interrupted.is_set():
    raise KeyboardInterrupt


# ---------------------------------------------------------------- records and stats


def build_record(job: Job, ex: Example, entry: dict) -> tuple[dict, Parsed]:
  parsed = job.parse(entry["c"], ex)
  record = {
      "id": ex.id, "index": ex.index, "dataset": job.dataset, "split": job.split,
      "input": ex.input, "label": ex.label or "", "has_label": int(ex.label is not None),
      "llm_label": parsed.label if parsed.ok else "", "rationale": parsed.rationale,
      "parse_ok": int(parsed.ok), "parse_error": parsed.error, "completion": entry["c"],
      "prompt_id": job.prompt_id, "teacher": job.teacher.name,
  }
  return record, parsed


def _shard_stats(job: Job, rows: list[tuple[dict, Parsed]], entries: dict) -> dict:
  header = {"dataset": job.dataset, "split": job.split, "teacher": job.teacher.name,
            "prompt_id": job.prompt_id, "num_shards": job.num_shards,
            "answer_format": job.answer_format, "manifest": job.manifest()}
  return stats_lib.shard_stats(header, rows, entries, job.labels_match)


def _maybe_merge(job: Job) -> dict | None:
  """Writes `<split>.stats.json` once every shard of the split is done."""
  if job.num_shards == 1:
    return _read_stats(job.stats_path)
  parts = []
  for i in range(job.num_shards):
    other = dataclasses.replace(job, shard_index=i)
    if not (other.records_path.exists() and other.stats_path.exists()):
      return None
    parts.append(_read_stats(other.stats_path))
  ours = job.manifest()
  for i, part in enumerate(parts):
    diff = describe_difference(part.get("manifest") or {}, ours, SHARD_KEYS)
    if diff:
      log.warning("shard %d of %s was made with other settings (%s): the split's stats are "
                  "written once every shard is rerun with these (--restart)", i, job.split,
                  diff)
      return None
  merged = stats_lib.merge_stats(parts)
  merged["manifest"] = {k: v for k, v in ours.items() if k not in SHARD_KEYS}
  write_json_atomically(job.split_stats_path, merged)
  return merged


# ---------------------------------------------------------------- the job


@dataclasses.dataclass
class Result:
  stats: dict  # this shard's
  split_stats: dict | None  # the whole split's, once every shard is done
  records_path: pathlib.Path
  asked: int  # examples the teacher was asked for in this run
  already_done: bool = False


def run(job: Job) -> Result:
  """Annotates one shard; resumes a partial run; returns its stats.

  A file system that refuses a write (no permission, a file where a folder must be, a full
  disk, the file size limit) is an SbsError saying so; the journal keeps every answer
  received, so rerunning the same command resumes. SIGTERM stops the run as Ctrl-C does
  (KeyboardInterrupt), and temporary files are removed on the way out.
  """
  with _sigterm_as_interrupt():
    try:
      return _run(job)
    except OSError as e:
      raise SbsError(describe_os_error(e, job.out_dir)) from None


@contextlib.contextmanager
def _sigterm_as_interrupt():
  def interrupt(signum, frame):
    raise KeyboardInterrupt
  try:
    previous = signal.signal(signal.SIGTERM, interrupt)
  except ValueError:  # not the main thread: leave signals alone
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def describe_os_error(e: OSError, out_dir: pathlib.Path) -> str:
  """One line for a failed write under `out_dir`: what happened and what to do."""
  where = e.filename or out_dir
  reason = e.strerror or str(e)
  full = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
          errno.EFBIG: "a file is too large (over the file size limit, `ulimit -f`, or "
          "the file system's)"}
  if e.errno in full:
    return (f"cannot write {where}: {full[e.errno]} ({reason}); every answer received so "
            "far is kept: free space (or raise the limit) and rerun the same command to "
            "resume")
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f"--out_dir {out_dir}: cannot write {where} ({reason}): choose a writable "
            "--out_dir, or fix its permissions")
  if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
    return (f"--out_dir {out_dir}: cannot create {where} ({reason}): a file stands where "
            "a folder must be (or the reverse); choose another --out_dir")
  return (f"--out_dir {out_dir}: cannot write {where} ({reason}); answers received so far "
          "are kept: fix this and rerun the same command to resume")


def _read_stats(path: pathlib.Path) -> dict:
  try:
    stats = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(stats, dict):
      raise ValueError("not a JSON object")
    return stats
  except ValueError as e:
    raise SbsError(f"{path}: unreadable stats file ({e}): pass --restart to annotate this "
                   "shard again") from None


def _run(job: Job) -> Result:
  if job.out_dir.exists() and not job.out_dir.is_dir():
    raise SbsError(f"--out_dir {job.out_dir} is a file, not a folder: choose another "
                   "--out_dir")
  if job.records_path.exists() and job.stats_path.exists() and not job.restart:
    stats = _read_stats(job.stats_path)
    if "manifest" not in stats:
      raise SbsError(f"{job.records_path} was made by an earlier sbs that did not record its "
                     "settings: pass --restart to annotate it again (its records and stats "
                     "are replaced), or choose another --out_dir")
    diff = describe_difference(stats["manifest"], job.manifest())
    if diff:
      raise SbsError(f"{job.records_path} is finished but was made with other settings "
                     f"({diff}): pass --restart to annotate it again with these (its records "
                     "and stats are replaced), or choose another --out_dir")
    log.info("%s is already complete (%d examples)", job.records_path, stats["examples"])
    return Result(stats, _maybe_merge(job), job.records_path, 0, already_done=True)

  job.work_dir.mkdir(parents=True, exist_ok=True)
  lock = lock_exclusively(job.work_dir / "lock",
                          f"another `sbs annotate` is working on {job.work_dir}")
  try:
    return _run_locked(job)
  finally:
    lock.close()


def _run_locked(job: Job) -> Result:
  manifest_path = job.work_dir / "manifest.json"
  journal = Journal(job.work_dir / "journal.jsonl")
  manifest = job.manifest()
  for stale in files.remove_stale_temps(
      [job.records_path, job.stats_path, job.split_stats_path,
       manifest_path]):
    log.info("removed %s, left by an earlier run that was killed", stale)
  if job.restart:
    journal.path.unlink(missing_ok=True)
  elif manifest_path.exists():
    try:
      old_manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError:
      raise SbsError(f"{manifest_path}: unreadable: pass --restart to discard this partial "
                     "run") from None
    diff = describe_difference(old_manifest, manifest, OUTPUT_KEYS)
    if diff:
      raise SbsError(f"{job.work_dir} holds a partial run with other settings ({diff}): "
                     "rerun with the original arguments, or pass --restart to discard it")
  write_json_atomically(manifest_path, manifest)

  shard = job.shard_examples()
  hashes = {ex.index: prompt_hash(job.prompt.render(ex)) for ex in shard}
  journaled = journal.load()
  entries = {i: e for i, e in journaled.items() if hashes.get(i) == e.get("h")}
  stale = len(journaled) - len(entries)
  if stale:
    log.warning("%d journaled answers were for other inputs or prompts and are asked again",
                stale)
  pending = [ex for ex in shard if ex.index not in entries]
  if entries:
    log.info("resuming: %d of %d examples already answered", len(entries), len(shard))

  label = f"{job.dataset}/{job.split}[{job.shard_index}/{job.num_shards}]"
  progress = Progress(len(shard), len(entries), label, job.progress, logger=log)
  try:
    if pending:
      asyncio.run(_ask(job, pending, journal, progress))
  finally:
    progress.close()
    journal.close()

  entries = {i: e for i, e in journal.load().items() if hashes.get(i) == e.get("h")}
  missing = [ex.id for ex in shard if ex.index not in entries]
  if missing:  # cannot happen unless the journal was tampered with mid-run
    raise SbsError(f"{len(missing)} examples have no answer (first: {missing[0]}); rerun")
  rows = [build_record(job, ex, entries[ex.index]) for ex in shard]
  stats = _shard_stats(job, rows, entries)
  counters = getattr(job.teacher, "counters", None)
  if counters is not None:
    stats["client_this_run"] = dataclasses.asdict(counters)
  job.dataset_dir.mkdir(parents=True, exist_ok=True)
  records_lib.write_atomically(job.records_path, (r for r, _ in rows))
  write_json_atomically(job.stats_path, stats)
  shutil.rmtree(job.work_dir, ignore_errors=True)
  _remove_empty(job.dataset_dir / ".partial")
  return Result(stats, _maybe_merge(job), job.records_path, len(pending))


def _remove_empty(path: pathlib.Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass
