"""The annotation job: ask the teacher for every sample of every example of a shard, parse,
vote, write TFRecords.

Exactly-once, resumable design:
- Each completed teacher answer is appended at once to a journal (JSON Lines, journal.py)
  in `<out>/<dataset>/.partial/<split>-SSSSS-of-NNNNN/`, keyed by the example's index, the
  sample's index and a hash of the prompt it was asked with. Several samples answered by
  one response are journalled one entry each as the response arrives. A restart reads
  the journal, drops a half-written last line, and asks the teacher only for the
  (example, sample) pairs not in it.
- When every sample of every example of the shard has an answer, the records are written
  in (index, sample) order to a temporary file that is renamed into place, then the stats;
  then the journal goes. The final file therefore holds every sample of the shard exactly
  once, whatever the order answers arrived in and however often the run was interrupted.
- A manifest pins everything that changes the records: the teacher and its settings (for
  replay, a hash of the completions), the prompt, the number of samples, the sharding, a
  hash of the examples (inputs, gold labels, ids), the parsing (answer format, patterns,
  keys) and `--keep`. A partial run resumed with another teacher, prompt, number of
  samples or sharding is refused instead of mixing two runs (answers to changed inputs
  are asked again); a finished shard whose records were made with any other setting is
  refused instead of being returned as if current. Both say to pass --restart. The one
  exception is `--keep` on a finished shard: its records hold every raw completion, so they
  are put back into a journal (with the stats' token totals spread over them) and written
  again with the new `--keep`, asking the teacher nothing. A lock keeps two processes off the same shard.
- With `--teacher batch` nothing is asked: the answers come from the batch service's output
  files (batch.py journals them as the openai teacher's would be); while some sample has
  none, the requests for the missing ones are written for the service and the run ends
  without records (`Result.waiting`).
- A budget (`--max_cost`, with prices) is checked before each request: once the spend of
  the journal's answers and this run's reaches it, no request starts, those in flight
  finish and are journalled, and the run stops with an SbsError; a rerun with a higher
  budget resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import pathlib
import shutil
import signal
from typing import Callable, Sequence

from sbs_jax.data import records as records_lib
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.annotate import asking
from sbs_jax.annotate import batch as batch_lib
from sbs_jax.annotate import samples as samples_lib
from sbs_jax.annotate import stats as stats_lib
from sbs_jax.annotate.cost import Ledger, Prices
from sbs_jax.annotate.journal import Journal, entry_line
from sbs_jax.annotate.parsers import Parsed
from sbs_jax.annotate.prompts import Prompt
from sbs_jax.annotate.teachers import Teacher, split_evenly
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
  num_samples: int = 1  # samples asked per example
  keep: str = "all"  # which rationales are kept (samples.py)
  prices: Prices | None = None  # dollars per million tokens, for the stats and the budget
  max_cost: float | None = None  # dollars: no request starts once they are spent

  def __post_init__(self):
    self.out_dir = pathlib.Path(self.out_dir)
    if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
      raise SbsError(f"--shard_index must be in [0, {self.num_shards}), "
                     f"got {self.shard_index}")
    if self.concurrency < 1:
      raise SbsError(f"--concurrency must be at least 1, got {self.concurrency}")
    if self.num_samples < 1:
      raise SbsError(f"--num_samples must be at least 1, got {self.num_samples}")
    if self.keep not in samples_lib.KEEP:
      raise SbsError(f"--keep {self.keep}: must be one of {', '.join(samples_lib.KEEP)}")
    if self.max_cost is not None and self.prices is None:
      raise SbsError("--max_cost needs --price_in and --price_out (dollars per million "
                     "tokens) to count what is spent")

  def batch_shard(self) -> dict:
    """What identifies this shard's requests in an offline batch (batch.py)."""
    return {"dataset": self.dataset, "split": self.split, "num_shards": self.num_shards,
            "shard_index": self.shard_index}

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
            "parser_settings": dict(self.settings), "num_samples": self.num_samples,
            "keep": self.keep}


# Settings that only shape the records written at the end: a partial run resumes across a
# change of these (answers to changed inputs are asked again, by their prompt hash), a
# finished one does not (but see REWRITE_KEYS).
OUTPUT_KEYS = ("examples_sha256", "answer_format", "parser_settings", "keep")
# The keys in which the shards of one split differ.
SHARD_KEYS = ("shard_index", "examples", "first_id", "last_id", "examples_sha256")
# Settings a finished shard is rewritten for from its own records, asking nothing.
REWRITE_KEYS = ("keep",)
# Settings added to the manifest later, with the value that shards made before meant.
LATER_SETTINGS = {"num_samples": 1, "keep": "all"}


def pinned(manifest: dict) -> dict:
  """A stored manifest, with the settings it predates at the value they had then."""
  return {**LATER_SETTINGS, **manifest}


def examples_hash(examples: Sequence[Example]) -> str:
  """A hash of the examples' ids, inputs, gold labels and choices."""
  h = hashlib.sha256()
  for ex in examples:
    h.update(json.dumps([ex.index, ex.id, ex.input, ex.label, list(ex.choices)],
                        ensure_ascii=False).encode("utf-8") + b"\n")
  return h.hexdigest()[:16]


def prompt_hash(prompt_text: str) -> str:
  return hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- records and stats


def build_records(job: Job, ex: Example, entries: Sequence[dict]
                  ) -> list[tuple[dict, Parsed]]:
  """The records of one example, one per sample (its journal entries, in sample order),
  with the example's vote and each sample's `kept`."""
  parsed = [job.parse(entry["c"], ex) for entry in entries]
  vote = samples_lib.vote(parsed, job.labels_match)
  rows = []
  for sample, (entry, p) in enumerate(zip(entries, parsed)):
    record = {
        "id": ex.id, "index": ex.index, "dataset": job.dataset, "split": job.split,
        "input": ex.input, "label": ex.label or "", "has_label": int(ex.label is not None),
        "llm_label": p.label if p.ok else "", "rationale": p.rationale,
        "parse_ok": int(p.ok), "parse_error": p.error, "completion": entry["c"],
        "prompt_id": job.prompt_id, "teacher": job.teacher.name,
        "sample": sample, "num_samples": len(entries), "vote_label": vote.label,
        "vote_share": vote.share,
        "kept": int(samples_lib.kept(job.keep, p, ex.label, vote, job.labels_match)),
    }
    rows.append((record, p))
  return rows


def _shard_stats(job: Job, rows: list[tuple[dict, Parsed]], entries: dict) -> dict:
  header = {"dataset": job.dataset, "split": job.split, "teacher": job.teacher.name,
            "prompt_id": job.prompt_id, "num_shards": job.num_shards,
            "answer_format": job.answer_format, "num_samples": job.num_samples,
            "keep": job.keep, "manifest": job.manifest()}
  return stats_lib.shard_stats(header, rows, entries.values(), job.labels_match, job.prices)


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
    diff = describe_difference(pinned(part.get("manifest") or {}), ours, SHARD_KEYS)
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
  asked: int  # samples the teacher was asked for in this run (examples, with one sample)
  already_done: bool = False
  rewritten: bool = False  # a finished shard written again for another --keep
  waiting: batch_lib.Waiting | None = None  # --teacher batch: no records yet, requests out


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
    stored = pinned(stats["manifest"])
    diff = describe_difference(stored, job.manifest())
    rewrite = bool(diff) and not describe_difference(stored, job.manifest(), REWRITE_KEYS)
    if diff and not rewrite:
      raise SbsError(f"{job.records_path} is finished but was made with other settings "
                     f"({diff}): pass --restart to annotate it again with these (its records "
                     "and stats are replaced), or choose another --out_dir")
    if not rewrite:
      log.info("%s is already complete (%d examples)", job.records_path, stats["examples"])
      return Result(stats, _maybe_merge(job), job.records_path, 0, already_done=True)
    log.info("%s: writing the records again for %s, from the completions they hold (the "
             "teacher is asked nothing)", job.records_path, diff)
  else:
    stats = None

  job.work_dir.mkdir(parents=True, exist_ok=True)
  lock = lock_exclusively(job.work_dir / "lock",
                          f"another `sbs annotate` is working on {job.work_dir}")
  try:
    return _run_locked(job, finished_stats=stats)
  finally:
    lock.close()


def _reopen(job: Job, journal: Journal, stats: dict) -> None:
  """Puts a finished shard's answers back into its journal, from its records, and removes
  its stats: the shard is then a partial run with every answer in, which the usual path
  finishes with this run's settings. A kill at any point leaves a state that the same
  command (or the old one) completes correctly."""
  recs = records_lib.read_records([job.records_path])
  by_pair = {(r["index"], r["sample"]): r for r in recs}
  pairs = [(ex, s) for ex in job.shard_examples() for s in range(job.num_samples)]
  if len(by_pair) != len(recs) or any((ex.index, s) not in by_pair for ex, s in pairs):
    raise SbsError(f"{job.records_path} does not hold every sample of its examples: pass "
                   "--restart to annotate it again")
  # Records carry no tokens: the stats' totals, spread over the answers, keep the usage.
  usage = stats.get("usage") or {}
  tokens = zip(split_evenly(int(usage.get("prompt_tokens", 0)), len(pairs)),
               split_evenly(int(usage.get("completion_tokens", 0)), len(pairs)))
  journal.replace_with(
      entry_line(ex.index, s, prompt_hash(job.prompt.render(ex)),
                 by_pair[ex.index, s]["completion"], p, c)
      for (ex, s), (p, c) in zip(pairs, tokens))
  for path in {job.stats_path, job.split_stats_path}:
    path.unlink(missing_ok=True)


def _run_locked(job: Job, finished_stats: dict | None = None) -> Result:
  manifest_path = job.work_dir / "manifest.json"
  journal = Journal(job.work_dir / "journal.jsonl")
  manifest = job.manifest()
  for stale in files.remove_stale_temps(
      [job.records_path, job.stats_path, job.split_stats_path,
       manifest_path, journal.path]):
    log.info("removed %s, left by an earlier run that was killed", stale)
  if finished_stats is not None:
    write_json_atomically(manifest_path, manifest)
    _reopen(job, journal, finished_stats)
  elif job.restart:
    journal.path.unlink(missing_ok=True)
  elif manifest_path.exists():
    try:
      old_manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError:
      raise SbsError(f"{manifest_path}: unreadable: pass --restart to discard this partial "
                     "run") from None
    diff = describe_difference(pinned(old_manifest), manifest, OUTPUT_KEYS)
    if diff:
      raise SbsError(f"{job.work_dir} holds a partial run with other settings ({diff}): "
                     "rerun with the original arguments, or pass --restart to discard it")
  write_json_atomically(manifest_path, manifest)

  shard = job.shard_examples()
  k = job.num_samples
  hashes = {ex.index: prompt_hash(job.prompt.render(ex)) for ex in shard}
  entries = _current(journal.load(), hashes, k, warn=True)
  wanted = ((ex, tuple(s for s in range(k) if (ex.index, s) not in entries)) for ex in shard)
  pending = [(ex, samples) for ex, samples in wanted if samples]
  total = len(shard) * k
  if entries and finished_stats is None:
    log.info("resuming: %d of %d %s already answered", len(entries), total,
             "samples" if k > 1 else "examples")

  label = f"{job.dataset}/{job.split}[{job.shard_index}/{job.num_shards}]"
  ledger = Ledger(job.prices, job.max_cost,
                  sum(int(e.get("pt", 0)) for e in entries.values()),
                  sum(int(e.get("ct", 0)) for e in entries.values()))
  progress = Progress(total, len(entries), label, job.progress, logger=log,
                      unit="sample" if k > 1 else "ex",
                      note=ledger.shown if job.prices else None)
  unasked, waiting, asked = 0, None, sum(len(samples) for _, samples in pending)
  try:
    if pending and isinstance(job.teacher, batch_lib.BatchTeacher):
      waiting = batch_lib.answer(job.teacher, job.batch_shard(), job.prompt, pending, hashes,
                                 journal, ledger, progress)
      asked = job.teacher.counters.samples_answered
    elif pending:
      unasked = asyncio.run(asking.ask(job.teacher, job.prompt, job.concurrency, pending,
                                       hashes, journal, progress, ledger))
  finally:
    progress.close()
    journal.close()
  if waiting is not None:
    return Result({}, None, job.records_path, asked, waiting=waiting)
  if unasked:
    raise SbsError(
        f"--max_cost {job.max_cost:g} reached: ${ledger.spent:.4f} spent on this shard "
        f"(${ledger.spent_this_run:.4f} in this run), {unasked} of {total} samples not asked "
        "yet; the answers received are kept: rerun with a higher --max_cost to resume")

  entries = _current(journal.load(), hashes, k)
  unanswered = [ex.id for ex in shard for s in range(k) if (ex.index, s) not in entries]
  if unanswered:  # cannot happen unless the journal was tampered with mid-run
    raise SbsError(f"{len(unanswered)} samples have no answer (first: example "
                   f"{unanswered[0]}); rerun")
  rows = [row for ex in shard
          for row in build_records(job, ex, [entries[ex.index, s] for s in range(k)])]
  stats = _shard_stats(job, rows, entries)
  report = getattr(job.teacher, "run_report", None)
  if report is not None:  # what the client (or the batch's results) saw in this run
    stats.update(report())
  job.dataset_dir.mkdir(parents=True, exist_ok=True)
  records_lib.write_atomically(job.records_path, (r for r, _ in rows))
  write_json_atomically(job.stats_path, stats)
  shutil.rmtree(job.work_dir, ignore_errors=True)
  _remove_empty(job.dataset_dir / ".partial")
  return Result(stats, _maybe_merge(job), job.records_path, asked,
                rewritten=finished_stats is not None)


def _current(journaled: dict, hashes: dict[int, str], num_samples: int,
             warn: bool = False) -> dict[tuple[int, int], dict]:
  """The journal's entries that answer this shard's prompts, for its samples."""
  entries = {(i, s): e for (i, s), e in journaled.items()
             if s < num_samples and hashes.get(i) == e.get("h")}
  if warn and len(journaled) > len(entries):
    log.warning("%d journaled answers were for other inputs or prompts and are asked again",
                len(journaled) - len(entries))
  return entries


def _remove_empty(path: pathlib.Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass
