"""The journal of an annotation shard: every teacher answer, appended the moment it arrives.

One JSON object per line: `i` (the example's index), `s` (the sample, 0 .. num_samples -
1; absent in journals written before there were samples: 0), `h` (a hash of the prompt
it answers), `c` (the completion), `pt` / `ct` (its prompt and completion tokens). A
process killed mid-write leaves at most a half-written last line, which `load` drops.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Iterable

from sbs_jax.jobdir.files import write_text_atomically

log = logging.getLogger(__name__)


def entry_line(index: int, sample: int, phash: str, text: str, prompt_tokens: int,
               completion_tokens: int) -> str:
  """One journal line (with its newline)."""
  return json.dumps({"i": index, "s": sample, "h": phash, "c": text, "pt": prompt_tokens,
                     "ct": completion_tokens}, ensure_ascii=False) + "\n"


class Journal:
  """Append-only JSON Lines of completed answers; tolerant of a half-written last line."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._fd = None
    self._broken: OSError | None = None

  def load(self) -> dict[tuple[int, int], dict]:
    """Entries by (example index, sample); truncates a half-written last line off the
    file. A later entry for the same pair replaces an earlier one."""
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
        entries[int(entry["i"]), int(entry.get("s", 0))] = entry
      except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s: skipping an unreadable entry", self.path)
    return entries

  def append(self, index: int, sample: int, phash: str, text: str, prompt_tokens: int = 0,
             completion_tokens: int = 0) -> None:
    """Appends one entry with a single write; on a failed write (disk full, file size
    limit) cuts the file back to its last whole entry, and refuses later appends."""
    if self._broken is not None:
      raise self._broken
    if self._fd is None:
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = entry_line(index, sample, phash, text, prompt_tokens,
                      completion_tokens).encode("utf-8")
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

  def replace_with(self, lines: Iterable[str]) -> None:
    """Replaces the whole journal at once (a finished shard's answers put back)."""
    self.close()
    write_text_atomically(self.path, "".join(lines))

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
