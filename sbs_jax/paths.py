"""Up-front checks of a local output path, so that a command refuses a path it cannot write
before its work rather than with a traceback after it."""

from __future__ import annotations

import os
import pathlib

from sbs_jax.errors import SbsError


def check_output_path(path, flag: str, is_dir: bool = False) -> None:
  """Raises SbsError (one line naming `flag`) when the local `path` cannot be written as a
  file (or, with `is_dir`, a folder): a folder or file of the other kind is there, a part of
  the path is a file, or the nearest existing folder is not writable. URLs are not checked."""
  if "://" in str(path):
    return
  p = pathlib.Path(path)
  if p.exists():
    if is_dir and not p.is_dir():
      raise SbsError(f"{flag} {path}: is a file, not a folder; choose another path")
    if not is_dir and p.is_dir():
      raise SbsError(f"{flag} {path}: is a folder, not a file; choose another path")
  ancestor = p if p.exists() and is_dir else p.parent
  ancestor = pathlib.Path(os.path.abspath(ancestor))
  while not ancestor.exists():
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    raise SbsError(f"{flag} {path}: {ancestor} is a file, so nothing can be written under it; "
                   "choose another path")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise SbsError(f"{flag} {path}: {ancestor} is not writable (read-only, or not yours); "
                   "choose a writable path")
