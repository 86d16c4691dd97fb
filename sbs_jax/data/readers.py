"""Readers for the paper's benchmarks (released layout) and for users' JSON Lines files.

The released layout (see the data dir's README):

    <name>/<name>_<split>.json        JSON Lines, one ground-truth row per line
    <name>/llm/<split>_CoT_<k>.json   JSON lists of raw teacher completions, aligned by
                                      position with the rows when concatenated in k order

Every problem with a file is raised as a `DataError` naming the file, the line (or item)
and the field, before anything is written anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from sbs_jax.errors import DataError

NLI_LABELS = ("entailment", "neutral", "contradiction")
CHOICE_LETTERS = "abcdefghij"
DATA_DIR_ENV = "SBS_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Example:
  """One row of a dataset, in the form every later stage uses.

  Attributes:
    index: position of the row in its file (0-based); completions align on it.
    id: a stable identifier (the dataset's own, else "<split>-<index>").
    input: the student's input text, formatted as the paper formats it.
    label: the gold label text, or None for unlabeled data.
    choices: the answer choices (CQA), else empty.
  """
  index: int
  id: str
  input: str
  label: str | None
  choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LoadedSplit:
  """A split of a dataset with, when the source has them, the teacher's completions: one
  string per example, or (custom data with several samples) one list of strings per
  example, all of one length."""
  dataset: str
  split: str
  examples: list[Example]
  completions: list[str] | list[list[str]] | None
  source: str  # the ground-truth file, for messages
  completion_source: str = ""


# ---------------------------------------------------------------- low-level file reading


def _decode_line(path, lineno: int, raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(path, f"invalid UTF-8 at byte {e.start} of the line",
                    where=f"line {lineno}") from None


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte order mark some editors (and Windows tools) write


def _open_error(path, e: OSError) -> DataError:
  if isinstance(e, FileNotFoundError):
    return DataError(path, "file not found")
  if isinstance(e, IsADirectoryError):
    return DataError(path, "is a folder, not a file: name the file itself")
  if isinstance(e, NotADirectoryError):
    return DataError(path, "not found (a part of the path is a file, not a folder)")
  return DataError(path, f"cannot read: {e.strerror or e}")


def _read_bytes(path) -> bytes:
  """The file's bytes, without a leading UTF-8 byte order mark."""
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise _open_error(path, e) from None
  return data[len(BOM):] if data.startswith(BOM) else data


def read_json_rows(path) -> list[tuple[str, dict]]:
  """Reads JSON Lines, or one JSON array of objects; returns (where, row) pairs.

  `where` is "line N" (1-based) for JSON Lines and "item N" (0-based) for an array.
  Blank lines are skipped; anything else that is not a JSON object is an error.
  """
  data = _read_bytes(path)
  if data.lstrip()[:1] == b"[":
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      lineno = data[:e.start].count(b"\n") + 1
      raise DataError(path, "invalid UTF-8", where=f"line {lineno}") from None
    try:
      items = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})",
                      where=f"line {e.lineno}") from None
    rows = []
    for i, item in enumerate(items):
      if not isinstance(item, dict):
        raise DataError(path, f"expected a JSON object, got {type(item).__name__}",
                        where=f"item {i}")
      rows.append((f"item {i}", item))
    return rows
  rows = []
  for lineno, raw in enumerate(data.split(b"\n"), start=1):
    if raw.strip():
      rows.append((f"line {lineno}", _json_line(path, lineno, raw)))
  return rows


def _json_line(path, lineno: int, raw: bytes) -> dict:
  """One non-blank line of JSON Lines as a JSON object, or a DataError naming the line."""
  line = _decode_line(path, lineno, raw)
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})",
                    where=f"line {lineno}") from None
  if not isinstance(row, dict):
    raise DataError(path, f"expected a JSON object, got {type(row).__name__}",
                    where=f"line {lineno}")
  return row


def iter_json_rows(path) -> Iterator[tuple[str, dict]]:
  """`read_json_rows` as a stream: JSON Lines are read one line at a time (memory does not
  grow with the file); a JSON array is read whole. The same (where, row) pairs and errors."""
  try:
    f = open(path, "rb")  # pylint: disable=consider-using-with
  except OSError as e:
    raise _open_error(path, e) from None
  with f:
    try:
      chunk = f.read(4096)
      chunk = chunk[len(BOM):] if chunk.startswith(BOM) else chunk
      while chunk and not chunk.strip():  # leading blank space: look further
        chunk = f.read(4096)
    except OSError as e:
      raise _open_error(path, e) from None
    if chunk.lstrip()[:1] == b"[":
      yield from read_json_rows(path)
      return
    f.seek(0)
    for lineno, raw in enumerate(f, start=1):
      if lineno == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
      if raw.strip():
        yield f"line {lineno}", _json_line(path, lineno, raw.rstrip(b"\n"))


def _read_completion_file(path) -> list[str]:
  data = _read_bytes(path)
  try:
    items = json.loads(data.decode("utf-8"))
  except UnicodeDecodeError as e:
    lineno = data[:e.start].count(b"\n") + 1
    raise DataError(path, "invalid UTF-8", where=f"line {lineno}") from None
  except json.JSONDecodeError as e:
    raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})",
                    where=f"line {e.lineno}") from None
  if not isinstance(items, list):
    raise DataError(path, f"expected a JSON list of completions, got {type(items).__name__}")
  for i, item in enumerate(items):
    if not isinstance(item, str):
      raise DataError(path, f"expected a completion string, got {type(item).__name__}",
                      where=f"item {i}")
  return items


def completion_files(llm_dir, split: str) -> list[pathlib.Path]:
  """The `<split>_CoT_<k>.json` files of a split in k order; gaps in k are an error."""
  llm_dir = pathlib.Path(llm_dir)
  pattern = re.compile(rf"^{re.escape(split)}_CoT_(\d+)\.json$")
  found = {}
  if llm_dir.is_dir():
    for p in llm_dir.iterdir():
      m = pattern.match(p.name)
      if m:
        found[int(m.group(1))] = p
  ks = sorted(found)
  if ks != list(range(len(ks))):
    missing = sorted(set(range(max(ks) + 1)) - set(ks))
    raise DataError(llm_dir, f"completion files of split {split!r} have a gap: "
                    f"{split}_CoT_{missing[0]}.json is missing")
  return [found[k] for k in ks]


def read_completions(llm_dir, split: str, num_rows: int, rows_path) -> tuple[list[str], str]:
  """Concatenates the split's completion files and checks they align with the rows."""
  files = completion_files(llm_dir, split)
  if not files:
    raise DataError(llm_dir, f"no teacher completions for split {split!r} "
                    f"(expected {split}_CoT_0.json, ...)")
  completions: list[str] = []
  for f in files:
    completions.extend(_read_completion_file(f))
  described = f"{pathlib.Path(llm_dir)}/{split}_CoT_*.json ({len(files)} files)"
  if len(completions) != num_rows:
    raise DataError(described, f"{len(completions)} completions for {num_rows} rows in "
                    f"{rows_path}: they must align one to one")
  return completions, described


# ---------------------------------------------------------------- field access


def _text(path, where: str, row: Mapping[str, Any], key: str) -> str:
  if key not in row:
    raise DataError(path, "missing field", where=where, field=key)
  value = row[key]
  if not isinstance(value, str):
    raise DataError(path, f"expected a string, got {type(value).__name__}", where=where,
                    field=key)
  if not value.strip():
    raise DataError(path, "empty text", where=where, field=key)
  return value


def _label_text(path, where: str, row: Mapping[str, Any], key: str) -> str | None:
  """A label field: a string or a number; absent or null means unlabeled."""
  value = row.get(key)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise DataError(path, f"expected a string or number, got {type(value).__name__}",
                    where=where, field=key)
  value = str(value)
  if not value.strip():
    raise DataError(path, "empty label", where=where, field=key)
  return value


def _nli_label(path, where: str, row: Mapping[str, Any], key: str = "label") -> str:
  if key not in row:
    raise DataError(path, "missing field", where=where, field=key)
  value = row[key]
  if isinstance(value, bool) or value not in (0, 1, 2):
    raise DataError(path, f"expected 0, 1 or 2 (entailment, neutral, contradiction), "
                    f"got {value!r}", where=where, field=key)
  return NLI_LABELS[value]


def nli_input(premise: str, hypothesis: str) -> str:
  """The student's input for an NLI pair (a plain template; see the README)."""
  return f"Premise: {premise}\nHypothesis: {hypothesis}"


def cqa_input(question: str, choices: Sequence[str]) -> str:
  lines = [question, "Answer Choices:"]
  lines += [f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(choices)]
  return "\n".join(lines)


# ---------------------------------------------------------------- the benchmarks


def _cqa_example(path, where, row, index, split) -> Example:
  question = _text(path, where, row, "question")
  choices = row.get("choices")
  if "choices" not in row:
    raise DataError(path, "missing field", where=where, field="choices")
  if (not isinstance(choices, list) or len(choices) != 5
      or not all(isinstance(c, str) and c.strip() for c in choices)):
    raise DataError(path, "expected a list of 5 non-empty strings", where=where,
                    field="choices")
  answer = _text(path, where, row, "answer")
  if answer not in choices:
    raise DataError(path, f"answer {answer!r} is not one of the choices", where=where,
                    field="answer")
  ident = _text(path, where, row, "id")
  return Example(index, ident, cqa_input(question, choices), answer, tuple(choices))


def _svamp_example(path, where, row, index, split) -> Example:
  return Example(index, f"{split}-{index}", _text(path, where, row, "input"),
                 _text(path, where, row, "label"))


def _esnli_example(path, where, row, index, split) -> Example:
  premise = _text(path, where, row, "premise")
  hypothesis = _text(path, where, row, "hypothesis")
  return Example(index, f"{split}-{index}", nli_input(premise, hypothesis),
                 _nli_label(path, where, row))


def _anli_example(path, where, row, index, split) -> Example:
  premise = _text(path, where, row, "premise")
  hypothesis = _text(path, where, row, "hypothesis")
  ident = _text(path, where, row, "uid")
  return Example(index, ident, nli_input(premise, hypothesis), _nli_label(path, where, row))


@dataclasses.dataclass(frozen=True)
class Reader:
  """How a benchmark's files are read, in the released layout: its name, split files and
  row format (the benchmark as a whole, prompt and parser too: annotate/benchmarks.py)."""
  name: str
  file_splits: tuple[str, ...]  # split names as they appear in file names
  make_example: Callable[..., Example]

  def file_split(self, split: str) -> str:
    """Maps a split name (e.g. 'validation') to the one in the file names ('valid')."""
    aliases = {"validation": "valid", "valid": "validation", "dev": "valid"}
    if split in self.file_splits:
      return split
    if aliases.get(split) in self.file_splits:
      return aliases[split]
    raise DataError(self.name, f"no split {split!r}; this benchmark has "
                    f"{', '.join(self.file_splits)}")


CQA = Reader("cqa", ("train", "test"), _cqa_example)
SVAMP = Reader("svamp", ("train", "test"), _svamp_example)
ESNLI = Reader("esnli", ("train", "valid", "test"), _esnli_example)
ANLI1 = Reader("anli1", ("train", "valid", "test"), _anli_example)
READERS: dict[str, Reader] = {r.name: r for r in (CQA, SVAMP, ESNLI, ANLI1)}


def _default_candidates() -> list[pathlib.Path]:
  """Where the data dir is looked for without a flag or $SBS_DATA_DIR, in order:
  ../shared/datasets beside the working directory, then beside the checkout."""
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  return [base.parent / "shared" / "datasets" for base in (pathlib.Path.cwd(), repo_root)]


def default_data_dir() -> pathlib.Path:
  """The data dir that `resolve_data_dir()` (no flag) reads, whether or not it exists yet:
  $SBS_DATA_DIR, else the first existing default candidate, else where `sbs download`
  should put the data so that later commands find it (beside the checkout when running
  from one, else beside the working directory)."""
  if os.environ.get(DATA_DIR_ENV):
    return pathlib.Path(os.environ[DATA_DIR_ENV])
  candidates = _default_candidates()
  for candidate in candidates:
    if candidate.is_dir():
      return candidate
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  if (repo_root / "setup.py").is_file() or (repo_root / "pyproject.toml").is_file():
    return candidates[1]  # a checkout: found from any working directory
  return candidates[0]


def resolve_data_dir(flag: str | None = None) -> pathlib.Path:
  """--data_dir, else $SBS_DATA_DIR, else ../shared/datasets (beside the cwd or the checkout).

  A --data_dir (or $SBS_DATA_DIR) that is not a folder is a DataError saying so."""
  if flag or os.environ.get(DATA_DIR_ENV):
    path = pathlib.Path(flag or os.environ[DATA_DIR_ENV])
    source = "--data_dir" if flag else f"${DATA_DIR_ENV}"
    if path.exists() and not path.is_dir():
      raise DataError(path, f"{source} is a file, not a folder: give the folder that holds "
                      "the benchmark folders (cqa, svamp, ...)")
    return path
  path = default_data_dir()
  if path.is_dir():
    return path
  raise DataError("data dir", f"not found: pass --data_dir, set ${DATA_DIR_ENV}, "
                  "or fetch the released data with `sbs download`")


def load_benchmark(name: str, split: str, data_dir, with_completions: bool = True
                   ) -> LoadedSplit:
  """Reads a benchmark split (and its teacher completions) from the released layout."""
  if name not in READERS:
    raise DataError(name, f"unknown benchmark; known: {', '.join(READERS)} "
                    "(or jsonl:PATH for your own data)")
  bench = READERS[name]
  file_split = bench.file_split(split)
  path = pathlib.Path(data_dir) / name / f"{name}_{file_split}.json"
  rows = read_json_rows(path)
  examples = [bench.make_example(path, where, row, i, file_split)
              for i, (where, row) in enumerate(rows)]
  _check_unique_ids(path, examples, rows)
  completions, described = None, ""
  if with_completions:
    completions, described = read_completions(path.parent / "llm", file_split,
                                              len(examples), path)
  return LoadedSplit(name, file_split, examples, completions, str(path), described)


def load_jsonl(path, split: str = "train", input_key: str = "input",
               label_key: str = "label", id_key: str | None = None,
               completion_key: str | None = None) -> LoadedSplit:
  """Reads a user's JSON Lines file (or JSON array); the dataset's name is its stem."""
  path = pathlib.Path(path)
  rows = read_json_rows(path)
  if not rows:
    raise DataError(path, "no rows")
  examples, completions = [], [] if completion_key else None
  first = None  # (where, number of samples) of the first row's completions
  for i, (where, row) in enumerate(rows):
    examples.append(jsonl_example(path, where, row, i, split, input_key, label_key, id_key))
    if completion_key:
      value = _completion(path, where, row, completion_key)
      count = len(value) if isinstance(value, list) else 1
      if first is None:
        first = (where, count)
      elif count != first[1]:
        raise DataError(path, f"{count} completion(s), but {first[0]} has {first[1]}: "
                        "every row needs the same number of samples", where=where,
                        field=completion_key)
      completions.append(value)
  _check_unique_ids(path, examples, rows)
  described = f"{path} field {completion_key!r}" if completion_key else ""
  return LoadedSplit(path.stem, split, examples, completions, str(path), described)


def _completion(path, where: str, row: Mapping[str, Any], key: str) -> str | list[str]:
  """A row's completion: a string, or a non-empty list of strings (several samples)."""
  value = row.get(key)
  if isinstance(value, str):
    return value
  if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
    return list(value)
  problem = ("missing completion (expected a string)" if key not in row else
             "an empty list of completions" if value == [] else
             "expected a completion string or a list of strings, got "
             f"{type(value).__name__}" + (" holding other values" if isinstance(value, list)
                                           else ""))
  raise DataError(path, problem, where=where, field=key)


def jsonl_example(path, where: str, row: Mapping[str, Any], index: int, split: str = "train",
                  input_key: str = "input", label_key: str = "label",
                  id_key: str | None = None) -> Example:
  """One row of a user's JSON Lines file as an Example (id "<split>-<index>" by default)."""
  ident = _label_text(path, where, row, id_key) if id_key else None
  if id_key and ident is None:
    raise DataError(path, "missing field", where=where, field=id_key)
  return Example(index, ident or f"{split}-{index}", _text(path, where, row, input_key),
                 _label_text(path, where, row, label_key))


def _check_unique_ids(path, examples: Sequence[Example], rows) -> None:
  seen: dict[str, int] = {}
  for ex in examples:
    if ex.id in seen:
      raise DataError(path, f"duplicate id {ex.id!r} (first at {rows[seen[ex.id]][0]})",
                      where=rows[ex.index][0], field="id")
    seen[ex.id] = ex.index
