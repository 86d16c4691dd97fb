"""Gin for the trainer's programs (`sbs train`, `sbs eval`, `sbs plan`, `sbs sweep`): where
the shipped gin files are, `--gin.KEY=VALUE` bindings, and one parse that leaves a clean,
checked config (every mistake one SbsError line, `gin_check.py`)."""

from __future__ import annotations

import io
import logging
import pathlib
import tokenize

import gin

from sbs_jax.errors import SbsError
from sbs_jax.train import gin_check

def gin_dir() -> pathlib.Path:
  """The shipped gin files (experiments, models, runs, overlays, t5x; docs/train.md): the
  copy inside an installed package (`sbs_jax/gin_configs`, which setup.py's build puts
  there), else the source checkout's top-level gin_configs/ (an editable install, or the
  repository on PYTHONPATH)."""
  package = pathlib.Path(__file__).resolve().parents[1]
  installed = package / "gin_configs"
  return installed if (installed / "experiments").is_dir() else package.parent / "gin_configs"


GIN_DIR = gin_dir()


def gin_bindings(extra: list[str]) -> list[str]:
  """--gin.KEY=VALUE arguments -> gin binding strings; anything else is an error."""
  bindings = []
  for arg in extra:
    if not arg.startswith("--gin.") or "=" not in arg:
      raise SbsError(f"unrecognised argument {arg!r} (bindings look like --gin.KEY=VALUE)")
    key, value = arg[len("--gin."):].split("=", 1)
    bindings.append(f"{key} = {value}")
  return bindings


def _guard_gin_readers() -> None:
  """Makes gin's file-existence checks return False instead of raising.

  gin's package-path reader takes an include such as 'runs/finetune.gin' for package
  `runs`; a directory of that name in the working directory (a namespace package, e.g.
  our own `runs/` output dir) makes it raise TypeError before the search path is tried.
  """
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  if not any(getattr(exists, "_sbs_remote", False) for _, exists in readers):
    # gs:// gin files (a model dir's config.gin for `sbs eval`) through TensorFlow's gfile,
    # as gin.tf registers it; only for URLs, so that local files read as before.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def remote_exists(path):
      return "://" in str(path) and tf.io.gfile.exists(str(path))
    remote_exists._sbs_remote = True  # pylint: disable=protected-access
    gin.config.register_file_reader(tf.io.gfile.GFile, remote_exists)
  for i, (reader, exists) in enumerate(readers):
    if getattr(exists, "_sbs_guarded", False):
      continue

    def safe(path, exists=exists):
      try:
        return exists(path)
      except (TypeError, ValueError, ImportError):
        return False

    def without_bom(path, reader=reader):
      """The file's text with a leading UTF-8 byte order mark dropped (editors on Windows
      write one; gin's tokenizer takes it for a token)."""
      with reader(path) as f:
        text = f.read()
      if isinstance(text, bytes):
        text = text.decode("utf-8")
      buffer = io.StringIO(text[1:] if text.startswith("\ufeff") else text)
      buffer.name = path  # gin names the file in its errors
      return buffer

    safe._sbs_guarded = True  # pylint: disable=protected-access
    readers[i] = (without_bom, safe)


def parse_gin(files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
  """Parses gin files and bindings into a clean config (nothing from an earlier parse in
  this process is kept); every mistake is one SbsError line (gin_check.py)."""
  gin.clear_config()
  _guard_gin_readers()
  import tasks  # pylint: disable=import-outside-toplevel,unused-import  (registers tasks)
  from sbs_jax.train import config  # pylint: disable=import-outside-toplevel,unused-import
  known = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  for path in [*search_paths, str(GIN_DIR), "."]:
    if path not in known:
      gin.add_config_file_search_path(path)
  # gin logs an error for each search-path miss before it finds an include: quiet it.
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, OSError, KeyError, SyntaxError, tokenize.TokenError) as e:
    raise gin_check.parse_error(e, bindings) from None
  finally:
    root.setLevel(level)
  tasks.register_annotation_dir()  # datasets of the annotation dir gin names (docs/tasks.md)
  gin_check.check_macros()
