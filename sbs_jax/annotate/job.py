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
- A manifest pins the settings that change the records (teacher, prompt, sharding); a
  restart with other settings is refused instead of mixing two runs. A lock keeps two
  processes off the same shard.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Callable, Sequence

from sbs_jax.annotate import records as records_lib
from sbs_jax.annotate.parsers import Parsed
from sbs_jax.annotate.prompts import Prompt
from sbs_jax.annotate.teachers import Completion, Teacher
from sbs_jax.data.readers import Example
from sbs_jax.errors import SbsError

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

  def __post_init__(self):
    self.out_dir = pathlib.Path(self.out_dir)
    if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
      raise SbsError(f"--shard_index must be in [0, {self.num_shards}), "
                     f"got {self.shard_index}")
    if self.concurrency < 1:
      raise SbsError(f"--concurrency must be at least 1, got {self.concurrency}")

  @property
  def dataset_dir(self) -> pathlib.Path:
    return self.out_dir / self.dataset

  @property
  def records_path(self) -> pathlib.Path:
    return self.dataset_dir / records_lib.shard_name(self.split, self.shard_index,
                                                     self.num_shards)

  @property
  def stats_path(self) -> pathlib.Path:
    if self.num_shards == 1:
      return self.dataset_dir / f"{self.split}.stats.json"
    return self.dataset_dir / (f"{self.split}.stats-{self.shard_index:05d}-of-"
                               f"{self.num_shards:05d}.json")

  @property
  def work_dir(self) -> pathlib.Path:
    return self.dataset_dir / ".partial" / (f"{self.split}-{self.shard_index:05d}-of-"
                                            f"{self.num_shards:05d}")

  def shard_examples(self) -> Sequence[Example]:
    n = len(self.examples)
    lo = n * self.shard_index // self.num_shards
    hi = n * (self.shard_index + 1) // self.num_shards
    return self.examples[lo:hi]

  def manifest(self) -> dict:
    shard = self.shard_examples()
    return {"dataset": self.dataset, "split": self.split, "teacher": self.teacher.name,
            "prompt_id": self.prompt_id, "num_shards": self.num_shards,
            "shard_index": self.shard_index, "examples": len(shard),
            "first_id": shard[0].id if shard else "", "last_id": shard[-1].id if shard else ""}


def prompt_hash(prompt_text: str) -> str:
  return hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- the journal


class Journal:
  """Append-only JSON Lines of completed answers; tolerant of a half-written last line."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._file = None

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
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8")
    self._file.write(json.dumps({"i": index, "h": phash, "c": completion.text,
                                 "pt": completion.prompt_tokens,
                                 "ct": completion.completion_tokens},
                                ensure_ascii=False) + "\n")
    self._file.flush()  # in the OS after each answer: a killed process loses none

  def close(self) -> None:
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None


# ---------------------------------------------------------------- asking the teacher


class _Progress:
  """A tqdm bar (rate, ETA) on a terminal; otherwise a log line every 10%."""

  def __init__(self, total: int, done: int, label: str, enabled: bool | None):
    self.total, self.done = total, done
    self._label = label
    self._bar = None
    self._next_log = 0.1
    self._start = time.monotonic()
    self._start_done = done
    tty = sys.stderr.isatty() if enabled is None else enabled
    if tty:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, initial=done, desc=label, unit="ex", dynamic_ncols=True)

  def update(self) -> None:
    self.done += 1
    if self._bar is not None:
      self._bar.update(1)
    elif self.total and self.done / self.total >= self._next_log:
      self._next_log = (int(self.done / self.total * 10) + 1) / 10
      if time.monotonic() - self._start < 2.0:
        return  # a fast run (e.g. replay) needs no progress lines
      rate = (self.done - self._start_done) / max(time.monotonic() - self._start, 1e-9)
      eta = (self.total - self.done) / rate if rate else float("inf")
      log.info("%s: %d/%d (%.0f ex/s, ETA %.0fs)", self._label, self.done, self.total,
               rate, eta)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


async def _ask(job: Job, pending: Sequence[Example], journal: Journal,
               progress: _Progress) -> None:
  todo = iter(pending)

  async def worker():
    for ex in todo:  # one iterator shared by all workers: each example taken once
      text = job.prompt.render(ex)
      completion = await job.teacher.complete(ex, text)
      journal.append(ex.index, prompt_hash(text), completion)
      progress.update()

  workers = [asyncio.ensure_future(worker()) for _ in range(min(job.concurrency,
                                                                len(pending)))]
  try:
    await asyncio.gather(*workers)
  finally:
    for w in workers:
      w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await job.teacher.aclose()


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
  reasons = collections.Counter(p.error.split(":")[0] for _, p in rows if not p.ok)
  labeled = [(r, p) for r, p in rows if r["has_label"]]
  correct = sum(1 for r, p in labeled if p.ok and job.labels_match(p.label, r["label"]))
  prompt_tokens = sum(int(e.get("pt", 0)) for e in entries.values())
  completion_tokens = sum(int(e.get("ct", 0)) for e in entries.values())
  return {
      "dataset": job.dataset, "split": job.split, "teacher": job.teacher.name,
      "prompt_id": job.prompt_id, "num_shards": job.num_shards,
      "examples": len(rows), "parsed": sum(1 for _, p in rows if p.ok),
      "unparsable": sum(1 for _, p in rows if not p.ok),
      "unparsable_reasons": dict(reasons.most_common()),
      "labeled": len(labeled), "correct": correct,
      "teacher_accuracy": round(correct / len(labeled), 6) if labeled else None,
      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
  }


def merge_stats(parts: Sequence[dict]) -> dict:
  """Stats of a whole split from the stats of its shards."""
  merged = dict(parts[0])
  for key in ("examples", "parsed", "unparsable", "labeled", "correct"):
    merged[key] = sum(p[key] for p in parts)
  reasons = collections.Counter()
  usage = collections.Counter()
  for p in parts:
    reasons.update(p["unparsable_reasons"])
    usage.update(p["usage"])
  merged["unparsable_reasons"] = dict(reasons.most_common())
  merged["usage"] = dict(usage)
  merged["teacher_accuracy"] = (round(merged["correct"] / merged["labeled"], 6)
                                if merged["labeled"] else None)
  merged.pop("client_this_run", None)
  return merged


def _write_json_atomically(path: pathlib.Path, obj: dict) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def _maybe_merge(job: Job) -> dict | None:
  """Writes `<split>.stats.json` once every shard of the split is done."""
  if job.num_shards == 1:
    return json.loads(job.stats_path.read_text())
  parts = []
  for i in range(job.num_shards):
    other = dataclasses.replace(job, shard_index=i)
    if not (other.records_path.exists() and other.stats_path.exists()):
      return None
    parts.append(json.loads(other.stats_path.read_text()))
  merged = merge_stats(parts)
  _write_json_atomically(job.dataset_dir / f"{job.split}.stats.json", merged)
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
  """Annotates one shard; resumes a partial run; returns its stats."""
  if job.records_path.exists() and job.stats_path.exists() and not job.restart:
    stats = json.loads(job.stats_path.read_text())
    log.info("%s is already complete (%d examples)", job.records_path, stats["examples"])
    return Result(stats, _maybe_merge(job), job.records_path, 0, already_done=True)

  job.work_dir.mkdir(parents=True, exist_ok=True)
  lock = open(job.work_dir / "lock", "w")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.close()
    raise SbsError(f"another `sbs annotate` is working on {job.work_dir}") from None
  try:
    return _run_locked(job)
  finally:
    lock.close()


def _run_locked(job: Job) -> Result:
  manifest_path = job.work_dir / "manifest.json"
  journal = Journal(job.work_dir / "journal.jsonl")
  manifest = job.manifest()
  if job.restart:
    journal.path.unlink(missing_ok=True)
  elif manifest_path.exists():
    old = json.loads(manifest_path.read_text())
    if old != manifest:
      diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
      raise SbsError(f"{job.work_dir} holds a partial run with other settings "
                     f"{diff}: rerun with the original arguments, or pass --restart to "
                     "discard it")
  _write_json_atomically(manifest_path, manifest)

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
  progress = _Progress(len(shard), len(entries), label, job.progress)
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
  _write_json_atomically(job.stats_path, stats)
  shutil.rmtree(job.work_dir, ignore_errors=True)
  _remove_empty(job.dataset_dir / ".partial")
  return Result(stats, _maybe_merge(job), job.records_path, len(pending))


def _remove_empty(path: pathlib.Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass
