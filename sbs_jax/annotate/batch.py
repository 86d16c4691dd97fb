"""Offline batches (`sbs annotate --teacher batch --batch_dir D`): the teacher's requests
written as a batch file for the OpenAI Batch API or vLLM's `run_batch`, and the batch's
output read back into the shard's journal.

The files in D (one --batch_dir per shard of a split):
- `requests.jsonl`: one line per request in the OpenAI batch input format, `{"custom_id",
  "method": "POST", "url": "/v1/completions" | "/v1/chat/completions", "body"}`, the body
  exactly what `--teacher openai` would send (teachers.request_body; `n` for several
  samples). No API key is in it. Past OpenAI's limits of one batch (50,000 requests, 200
  MB) the requests are split into `requests-00000.jsonl`, `requests-00001.jsonl`, ...
- `results*.jsonl`: every file whose name starts with `results` is read, in name order, as
  batch output: `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
  "error"}` per line (`results.jsonl` for `requests.jsonl`, `results-00001.jsonl` for
  `requests-00001.jsonl`, `results_retry.jsonl` for `retry_requests.jsonl`).
- `retry_requests.jsonl` (parts as above): the requests that no results file answers
  usably (failed, malformed, answered twice in one file, or missing), written when some
  are left. Its output may also be appended to the file that failed: a custom_id with one
  answer among failures in a file takes the answer.

A custom_id is `sbs.<run>.<index>.<first sample>.<samples>.<prompt hash>`: `run`, a hash
of the dataset, split, sharding and teacher settings (model, endpoint, max_tokens,
temperature, stop); the example's index; the samples the request asks for (`n` =
samples); and the hash of the prompt sent, the one the journal keys answers by. A line of
another run, or one that answers another prompt, is refused, never applied. An answer
goes into the journal exactly as `--teacher openai` would put it there (its choices in
order, the usage split over them), so the records are those of an openai run that got
the same completions; the job then writes them once every sample has an answer.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import pathlib
import re
from typing import Sequence

from sbs_jax.annotate.cost import Ledger
from sbs_jax.annotate.journal import Journal
from sbs_jax.annotate.prompts import Prompt
from sbs_jax.annotate.teachers import (ENDPOINT_PATHS, BadResponse, Completion, read_choices,
                                       request_body)
from sbs_jax.data.readers import Example
from sbs_jax.errors import SbsError, TeacherError
from sbs_jax.jobdir.files import discard, write_text_atomically
from sbs_jax.jobdir.progress import Progress

log = logging.getLogger(__name__)

REQUESTS = "requests"
RETRY_REQUESTS = "retry_requests"
RESULTS_PREFIX = "results"
# One OpenAI batch takes at most 50,000 requests and a 200 MB file; a margin on the size.
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 190 * 1024 * 1024

_ID = re.compile(r"sbs\.([0-9a-f]{12})\.(\d+)\.(\d+)\.(\d+)\.([0-9a-f]{16})")


@dataclasses.dataclass(frozen=True)
class RequestId:
  """What a custom_id says: the run, the example, the samples asked for, the prompt."""
  run: str
  index: int
  start: int
  count: int
  prompt_hash: str

  def text(self) -> str:
    return f"sbs.{self.run}.{self.index}.{self.start}.{self.count}.{self.prompt_hash}"

  @classmethod
  def parse(cls, text) -> "RequestId | None":
    m = _ID.fullmatch(text) if isinstance(text, str) else None
    if m is None:
      return None
    run, index, start, count, phash = m.groups()
    return cls(run, int(index), int(start), int(count), phash)


@dataclasses.dataclass
class BatchCounters:
  """What this run read from the results files (for the stats file)."""
  files: list = dataclasses.field(default_factory=list)
  lines: int = 0
  samples_answered: int = 0
  unknown_custom_ids: int = 0


class BatchTeacher:
  """A teacher that is not called: its requests go into files for a batch service, and
  its answers come from that service's output files (module doc)."""

  several_per_request = True

  def __init__(self, batch_dir, model: str, endpoint: str = "completions",
               max_tokens: int = 256, temperature: float = 0.0, stop: Sequence[str] = ()):
    if endpoint not in ENDPOINT_PATHS:
      raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
    self.batch_dir = pathlib.Path(batch_dir)
    self.name = f"batch:{model}"
    self._model, self._endpoint = model, endpoint
    self._max_tokens, self._temperature, self._stop = max_tokens, temperature, list(stop)[:4]
    # The same settings as --teacher openai's: they decide the answers.
    self.settings = {"model": model, "endpoint": endpoint, "max_tokens": max_tokens,
                     "temperature": temperature, "stop": self._stop}
    self.counters = BatchCounters()

  @property
  def url_path(self) -> str:
    return "/v1" + ENDPOINT_PATHS[self._endpoint]

  def run_id(self, shard: dict) -> str:
    """The run part of this shard's custom_ids: a hash of the shard and the settings."""
    text = json.dumps({"shard": shard, "teacher": self.settings}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

  def request_line(self, rid: RequestId, prompt: str) -> str:
    line = {"custom_id": rid.text(), "method": "POST", "url": self.url_path,
            "body": request_body(self._model, self._endpoint, self._max_tokens,
                                 self._temperature, self._stop, prompt, rid.count)}
    return json.dumps(line, ensure_ascii=False) + "\n"

  def results_files(self) -> list[pathlib.Path]:
    if not self.batch_dir.is_dir():
      return []
    return sorted(p for p in self.batch_dir.iterdir()
                  if p.name.startswith(RESULTS_PREFIX) and p.suffix == ".jsonl"
                  and p.is_file())

  def read_answer(self, body, count: int) -> list[Completion]:
    return read_choices(body, self._endpoint, count)

  async def complete(self, example: Example, prompt: str, samples: Sequence[int] = (0,)):
    raise TeacherError("--teacher batch answers from its results files, not by request")

  async def aclose(self) -> None:
    pass

  def run_report(self) -> dict:
    return {"batch_this_run": dataclasses.asdict(self.counters)}


def results_name(requests_name: str) -> str:
  """The name the output of a requests file is read under: requests.jsonl ->
  results.jsonl, requests-00001.jsonl -> results-00001.jsonl, retry_requests.jsonl ->
  results_retry.jsonl."""
  if requests_name.startswith(RETRY_REQUESTS):
    return RESULTS_PREFIX + "_retry" + requests_name[len(RETRY_REQUESTS):]
  return RESULTS_PREFIX + requests_name[len(REQUESTS):]


@dataclasses.dataclass
class Waiting:
  """A shard that waits for a batch: the requests files written, and why."""
  requests_files: list[pathlib.Path]
  requests: int
  samples: int  # samples that still have no answer
  retry: bool  # results were read, and these requests had no usable result
  report: str  # one line: what the results held and what was written


def units_of(pending: Sequence[tuple[Example, tuple[int, ...]]], run: str,
             hashes: dict[int, str]) -> list[tuple[Example, RequestId]]:
  """The requests for the pending samples: one per example and run of consecutive
  samples (asked together with n = their number)."""
  units = []
  for ex, samples in pending:
    start = prev = samples[0]
    for s in list(samples[1:]) + [None]:
      if s is not None and s == prev + 1:
        prev = s
        continue
      units.append((ex, RequestId(run, ex.index, start, prev - start + 1, hashes[ex.index])))
      if s is not None:
        start = prev = s
  return units


def answer(teacher: BatchTeacher, shard: dict, prompt: Prompt,
           pending: Sequence[tuple[Example, tuple[int, ...]]], hashes: dict[int, str],
           journal: Journal, ledger: Ledger, progress: Progress) -> Waiting | None:
  """Journals every pending sample that the results files in the batch dir answer; writes
  the requests for those still unanswered and returns what is waited for (None when every
  sample has an answer)."""
  run = teacher.run_id(shard)
  files = teacher.results_files()
  spent = ledger.spent
  problems: dict[tuple[int, int], str] = {}
  if files:
    pending, problems = _take_results(teacher, run, files, pending, hashes, journal, ledger,
                                      progress)
  if not pending:
    for stale in _parts(teacher.batch_dir, RETRY_REQUESTS):
      discard(stale)
    if files:
      log.info("batch results: every sample answered (%d in this run, from %s)",
               teacher.counters.samples_answered, ", ".join(p.name for p in files))
    return None
  units = units_of(pending, run, hashes)
  stem = RETRY_REQUESTS if files else REQUESTS
  written = _write_requests(teacher, stem, [teacher.request_line(rid, prompt.render(ex))
                                             for ex, rid in units])
  samples = sum(rid.count for _, rid in units)
  shown = ", ".join(str(p) for p in written)
  if not files:
    report = (f"wrote {len(units)} requests ({samples} samples) to {shown}: run them as a "
              "batch, save the output beside them, then rerun this command")
  else:
    reasons = collections.Counter(problems.get((rid.index, rid.start), "missing")
                                  for _, rid in units)
    why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    unknown = teacher.counters.unknown_custom_ids
    cost = ("" if spent is None else f", ${ledger.spent - spent:.4f}")
    report = (f"batch results ({', '.join(p.name for p in files)}): "
              f"{teacher.counters.samples_answered} samples answered in this run{cost}; "
              f"{len(units)} requests ({samples} samples) have no usable result ({why})"
              + (f", {unknown} line(s) with an unknown custom_id ignored" if unknown else "")
              + f": wrote {shown}; run it and save its output as "
              f"{teacher.batch_dir / results_name(written[0].name)}, then rerun this command "
              "(no records are written until every request is answered)")
  return Waiting(written, len(units), samples, bool(files), report)


def _take_results(teacher, run, files, pending, hashes, journal, ledger, progress):
  """Journals what the results answer; returns the samples still pending, and for each
  sample a failed, malformed or duplicated line named, why it has no answer. Every line of
  every file is checked before any is journalled: results of another run are refused whole."""
  read = []
  for path in files:
    lines = []
    for number, obj in _read_lines(path):
      rid = RequestId.parse(obj.get("custom_id")) if isinstance(obj, dict) else None
      if rid is not None and (rid.index not in hashes or rid.count < 1):
        rid = None
      if rid is not None:
        _check_same_run(path, number, rid, run, hashes)
      lines.append((rid, obj))
    read.append((path, lines))

  wanted = {(ex.index, s) for ex, samples in pending for s in samples}
  problems: dict[tuple[int, int], str] = {}
  counters = teacher.counters
  for path, lines in read:
    counters.files.append(path.name)
    counters.lines += len(lines)
    counters.unknown_custom_ids += sum(1 for rid, _ in lines if rid is None)
    groups = collections.defaultdict(list)  # custom_id -> its lines in this file
    for rid, obj in lines:
      if rid is not None:
        groups[rid].append(obj)
    for rid, objs in groups.items():
      covered = [(rid.index, s) for s in range(rid.start, rid.start + rid.count)]
      if not any(pair in wanted for pair in covered):
        continue  # answered before (by an earlier file, or an earlier run)
      results = [_usable(teacher, obj, rid.count) for obj in objs]
      answers = [completions for problem, completions in results if not problem]
      if len(answers) > 1:  # which one holds? Neither: the request is asked again
        problem, completions = "duplicated custom_id", []
      elif answers:  # failures beside it: a retry's output appended to the same file
        problem, completions = "", answers[0]
      else:
        problem, completions = results[-1]
      for pair, c in zip(covered, completions):
        if pair in wanted:
          journal.append(pair[0], pair[1], rid.prompt_hash, c.text, c.prompt_tokens,
                         c.completion_tokens)
          ledger.add(c.prompt_tokens, c.completion_tokens)
          progress.update()
          counters.samples_answered += 1
          wanted.discard(pair)
          problems.pop(pair, None)
      for pair in covered[len(completions):]:
        if pair in wanted:
          problems[pair] = problem or "short of choices"
  still = [(ex, tuple(s for s in samples if (ex.index, s) in wanted))
           for ex, samples in pending]
  return [(ex, samples) for ex, samples in still if samples], problems


def _read_lines(path: pathlib.Path) -> list[tuple[int, object]]:
  """(line number, parsed JSON) of each non-blank line; a line that is not JSON is an
  SbsError naming the file and the line."""
  out = []
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise SbsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): is this a batch "
                   "output file?") from None
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      out.append((number, json.loads(line)))
    except ValueError as e:
      raise SbsError(f"{path}: line {number}: not JSON ({e}): a batch output file holds one "
                     "JSON object per line (a download cut short leaves a broken line: fetch "
                     "the file again, or move it out of the batch dir)") from None
  return out


def _check_same_run(path, number, rid: RequestId, run: str, hashes: dict[int, str]) -> None:
  if rid.run != run:
    raise SbsError(f"{path}: line {number}: custom_id {rid.text()} was written by another "
                   "run (another dataset, split, shard, model or teacher setting): these "
                   "results are not this run's; move the file out of the batch dir, or give "
                   "each run its own --batch_dir")
  if rid.prompt_hash != hashes[rid.index]:
    raise SbsError(f"{path}: line {number}: custom_id {rid.text()} answers another prompt "
                   f"than this run asks for example {rid.index} (prompt hash "
                   f"{hashes[rid.index]}): the prompt or the input changed since the requests "
                   "were written; move the file out of the batch dir, and rerun to write the "
                   "requests again")


def _usable(teacher: BatchTeacher, obj: dict, count: int) -> tuple[str, list[Completion]]:
  """('', completions) for a successful line; else (why it is not usable, [])."""
  error = obj.get("error")
  response = obj.get("response")
  if error not in (None, "", {}):
    code = error.get("code") if isinstance(error, dict) else None
    if code is None and isinstance(error, dict) and isinstance(error.get("error"), dict):
      code = error["error"].get("code")  # vLLM puts its ErrorResponse here
    return (f"failed ({code})" if code not in (None, "") else "failed"), []
  if not isinstance(response, dict):
    return "malformed", []
  status = response.get("status_code")
  if status != 200:
    return f"failed (HTTP {status})", []
  try:
    return "", teacher.read_answer(response.get("body"), count)
  except BadResponse:
    return "malformed", []


def _parts(folder: pathlib.Path, stem: str) -> list[pathlib.Path]:
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.iterdir()
                if p.name == f"{stem}.jsonl" or re.fullmatch(rf"{stem}-\d{{5}}\.jsonl", p.name))


def _write_requests(teacher: BatchTeacher, stem: str, lines: list[str]) -> list[pathlib.Path]:
  """Writes the request lines as `<stem>.jsonl`, or in parts `<stem>-NNNNN.jsonl` past one
  batch's limits; removes the parts an earlier write left."""
  parts, size = [[]], 0
  for line in lines:
    nbytes = len(line.encode("utf-8"))
    if parts[-1] and (len(parts[-1]) >= MAX_REQUESTS_PER_FILE
                      or size + nbytes > MAX_BYTES_PER_FILE):
      parts.append([])
      size = 0
    parts[-1].append(line)
    size += nbytes
  teacher.batch_dir.mkdir(parents=True, exist_ok=True)
  for stale in _parts(teacher.batch_dir, stem):
    stale.unlink()
  names = ([f"{stem}.jsonl"] if len(parts) == 1 else
           [f"{stem}-{i:05d}.jsonl" for i in range(len(parts))])
  paths = [teacher.batch_dir / name for name in names]
  for path, part in zip(paths, parts):
    write_text_atomically(path, "".join(part))
  return paths
