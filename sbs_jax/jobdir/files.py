"""Whole-or-nothing writes, their leftovers, and file hashes; local paths and URLs (gs://).

A target is written through a temporary file beside it, `.<name>.tmp-<pid>`, renamed over
it when complete: a reader (another host, `sbs report` during a run) sees the old file or
the new one, never half of one, and a full disk or a kill midway leaves no cut file that
a later step would take for finished. The temporary file is removed on every way out of
the write; one left by a process that was killed is removed by `remove_stale_temps`.
On an object store an object appears only when its upload completes; the rename there
keeps the same names and cleanup as on a local disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
from typing import Iterator

TEMP_MARK = ".tmp-"  # temporary files are `.<name>.tmp-<pid>` beside their target


def is_url(path) -> bool:
  """gs:// and other URLs go through tf.io.gfile; everything else is a local path."""
  return "://" in str(path)


def temp_path(path) -> pathlib.Path:
  """The temporary file that the local `path` is written through by this process."""
  path = pathlib.Path(path)
  return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def discard(path) -> None:
  """Removes a local file if it is there; never raises (for clean-up on the way out)."""
  try:
    pathlib.Path(path).unlink(missing_ok=True)
  except OSError:
    pass


def pid_alive(pid: int) -> bool:
  """Whether a process of this machine with that pid runs (someone else's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, ValueError):
    return True  # someone else's process (or a number we cannot ask about): keep
  return True


def remove_stale_temps(targets) -> list[pathlib.Path]:
  """Removes the temporary files of the local `targets` left by processes that are no
  longer running (a SIGKILL, a power cut); returns what was removed."""
  removed = []
  for target in targets:
    target = pathlib.Path(target)
    prefix = f".{target.name}{TEMP_MARK}"
    try:
      candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
      continue
    for p in candidates:
      pid = p.name[len(prefix):]
      if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
        discard(p)
        removed.append(p)
  return removed


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", **kwargs) -> Iterator:
  """An open file whose contents replace `path` whole when the block ends without an error;
  on any error (or Ctrl-C) `path` is left as it was and the temporary file is removed."""
  if is_url(path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    path = str(path)
    head, _, name = path.rpartition("/")
    tmp = f"{head}/.{name}{TEMP_MARK}{os.getpid()}"
    try:
      with tf.io.gfile.GFile(tmp, mode.replace("t", "")) as f:
        yield f
      tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
      with contextlib.suppress(Exception):
        if tf.io.gfile.exists(tmp):
          tf.io.gfile.remove(tmp)
    return
  tmp = temp_path(path)
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    discard(tmp)


def write_text_atomically(path, text: str) -> None:
  """Writes a text file (UTF-8) whole or not at all."""
  if is_url(path):
    with atomic_file(path) as f:
      f.write(text)
  else:
    with atomic_file(path, encoding="utf-8") as f:
      f.write(text)


def write_json_atomically(path, obj, indent: int = 2, sort_keys: bool = True) -> None:
  """Writes JSON (and a final newline) whole or not at all."""
  write_text_atomically(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def file_sha256(path) -> str:
  """sha256 of a file's bytes, read in 1 MiB blocks (local or gs://)."""
  digest = hashlib.sha256()
  if is_url(path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    opened = tf.io.gfile.GFile(str(path), "rb")
  else:
    opened = open(path, "rb")  # pylint: disable=consider-using-with
  with opened as f:
    while block := f.read(1 << 20):
      digest.update(block)
  return digest.hexdigest()
