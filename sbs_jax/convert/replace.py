"""Writing a whole output folder so that a crash leaves the old one or the new one.

Imports write a model dir whose files belong together (model.json, spm.model, params/).
Callers refuse an existing non-empty folder (`refuse_nonempty`) before their expensive
reads unless told to overwrite; `write_whole_dir` then writes the new contents to a staging
folder beside it, and only then puts them in place:

- On a local disk the staging folder and the old one are swapped in one `renameat2`
  (RENAME_EXCHANGE) call, so the path holds the old folder or the new one at every
  moment; where the filesystem cannot swap, two renames (the old folder is kept aside
  until the new one is in place).
- On gs:// nothing renames atomically (a folder "rename" copies object by object). The
  new contents are written whole to the staging prefix first, so a crash while writing
  leaves the old folder untouched. Then the old folder's `marker` file (model.json) is
  deleted first, the rest replaced, and the new marker copied last: a crash in between
  leaves a folder without a marker, which every reader refuses ("not a model dir"), never
  old and new files read as one model. Rerunning with --overwrite completes it.
"""

from __future__ import annotations

import ctypes
import os
import uuid
from typing import Callable

from sbs_jax.errors import SbsError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def is_remote(path: str) -> bool:
  return "://" in str(path)


def is_nonempty(path: str) -> bool:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = str(path)
  if not tf.io.gfile.exists(path):
    return False
  return not tf.io.gfile.isdir(path) or bool(tf.io.gfile.listdir(path))


def refuse_nonempty(path: str, flag_hint: str = "--overwrite") -> None:
  if is_nonempty(path):
    raise SbsError(f"{path} exists and is not empty: choose a new --out, or pass "
                   f"{flag_hint} to replace it whole")


def _swap(a: str, b: str) -> bool:
  """Atomically exchanges two local paths; False where the kernel or filesystem can't."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
  return result == 0


def write_whole_dir(out: str, write: Callable[[str], object], marker: str = "model.json"):
  """Calls `write(staging_dir)`, then puts the staging dir's contents at `out`, replacing
  what is there (see the module docstring); returns what `write` returned."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = str(out).rstrip("/")
  if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
    raise SbsError(f"{out} is a file, not a folder: choose another --out")
  staging = f"{out}.sbs-staging-{uuid.uuid4().hex[:8]}"
  if not is_remote(out):
    staging = os.path.abspath(staging)
  try:
    result = write(staging)
  except BaseException:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
    raise
  if is_remote(out):
    _replace_remote(out, staging, marker)
  else:
    _replace_local(os.path.abspath(out), staging)
  return result


def _replace_local(out: str, staging: str) -> None:
  import shutil  # pylint: disable=import-outside-toplevel
  if not os.path.exists(out):
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    os.rename(staging, out)
    return
  if _swap(staging, out):
    shutil.rmtree(staging)  # now the old folder
    return
  aside = f"{out}.sbs-old-{uuid.uuid4().hex[:8]}"
  os.rename(out, aside)
  os.rename(staging, out)
  shutil.rmtree(aside)


def _replace_remote(out: str, staging: str, marker: str) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if tf.io.gfile.exists(f"{out}/{marker}"):
    tf.io.gfile.remove(f"{out}/{marker}")
  if tf.io.gfile.exists(out):
    tf.io.gfile.rmtree(out)
  files = [f"{root.rstrip('/')}/{name}" for root, _, names in tf.io.gfile.walk(staging)
           for name in names]
  for path in sorted(files, key=lambda p: p.rsplit("/", 1)[-1] == marker):  # marker last
    target = out + path[len(staging):]
    tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
    tf.io.gfile.copy(path, target, overwrite=True)
  tf.io.gfile.rmtree(staging)
