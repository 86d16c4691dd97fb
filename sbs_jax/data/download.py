"""Fetches the paper's released `datasets.zip` into a data dir, safely, and checks it.

The archive is streamed to a temporary file beside the data dir, verified (size cap,
optional sha256), unpacked into a temporary folder with every entry checked (no absolute
paths, no `..`, no symlinks, a cap on the unpacked size), read back with the benchmark
readers, and only then moved into the data dir one benchmark folder at a time. On any
failure the data dir is left as it was.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

from sbs_jax.redact import redact_text
from sbs_jax.data import readers
from sbs_jax.errors import DataError, SbsError

DEFAULT_URL = ("https://github.com/google-research/distilling-step-by-step/raw/main/"
               "datasets.zip")
MAX_BYTES = 1 << 30  # the download itself
MAX_UNPACKED_BYTES = 8 << 30  # all entries extracted, against zip bombs
_CHUNK = 1 << 20


class DownloadError(SbsError):
  """The release could not be fetched, or the archive is unsafe or does not check out."""


def check_data_dir(data_dir) -> dict[str, dict[str, dict]]:
  """Reads every benchmark split present in `data_dir`; returns {name: {split: counts}}.

  Counts are {"rows": n, "completions": n}; a split without `llm/<split>_CoT_*.json`
  files reports 0 completions. Raises DataError on any bad file, misaligned completions,
  or when no benchmark folder is present.
  """
  data_dir = pathlib.Path(data_dir)
  summary: dict[str, dict[str, dict]] = {}
  for name, bench in readers.READERS.items():
    folder = data_dir / name
    if not folder.is_dir():
      continue
    splits = {}
    for split in bench.file_splits:
      if not (folder / f"{name}_{split}.json").is_file():
        continue
      has_completions = bool(readers.completion_files(folder / "llm", split))
      loaded = readers.load_benchmark(name, split, data_dir,
                                      with_completions=has_completions)
      splits[split] = {"rows": len(loaded.examples),
                       "completions": len(loaded.completions or ())}
    if not splits:
      expected = ", ".join(f"{name}_{s}.json" for s in bench.file_splits)
      raise DataError(folder, f"no split files (expected one of {expected})")
    summary[name] = splits
  if not summary:
    raise DataError(data_dir, "no benchmark folder found (expected one of "
                    f"{', '.join(readers.READERS)})")
  return summary


def download_release(data_dir, url: str = DEFAULT_URL, sha256: str | None = None,
                     timeout: float = 60.0, max_bytes: int = MAX_BYTES,
                     max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> dict:
  """Downloads the release archive from `url` and installs its benchmarks in `data_dir`.

  Benchmark folders already in `data_dir` are replaced only by ones that passed
  `check_data_dir`; nothing else in `data_dir` is touched. Returns the check summary of
  the installed benchmarks. Raises DownloadError (fetch, hash, unsafe or bad archive).
  """
  data_dir = pathlib.Path(data_dir).absolute()
  try:
    data_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DownloadError(f"{data_dir}: cannot create the data dir: {e.strerror}") from None
  work = _make_workspace(data_dir)
  try:
    return _download_into(work, data_dir, url, sha256, timeout, max_bytes,
                          max_unpacked_bytes)
  except DownloadError as e:  # credentials or key parameters in --url are never shown
    raise DownloadError(redact_text(str(e), url)) from None
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _download_into(work: pathlib.Path, data_dir: pathlib.Path, url: str, sha256, timeout,
                   max_bytes: int, max_unpacked_bytes: int) -> dict:
  """The steps of `download_release` in the workspace `work`."""
  archive = work / "archive.zip"
  digest = _fetch(url, archive, timeout, max_bytes)
  if sha256 is not None and digest != sha256.strip().lower():
    raise DownloadError(f"{url}: sha256 mismatch: expected {sha256.strip().lower()}, "
                        f"got {digest}")
  unpacked = work / "unpacked"
  unpacked.mkdir()
  _extract(url, archive, unpacked, max_unpacked_bytes)
  try:
    summary = check_data_dir(unpacked)
  except DataError as e:
    problem = str(e).replace(str(unpacked) + os.sep, "")
    raise DownloadError(f"{url}: the archive's data does not check out, nothing was "
                        f"installed: {problem}") from None
  _install(unpacked, data_dir, sorted(summary), work / "old")
  return summary


def _make_workspace(data_dir: pathlib.Path) -> pathlib.Path:
  """A temporary folder on the data dir's filesystem, so that os.replace works."""
  prefix = f".{data_dir.name or 'data'}.download-"
  for parent in (data_dir.parent, data_dir):
    try:
      return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError:
      continue
  raise DownloadError(f"{data_dir}: cannot create a temporary folder beside or inside it")


def _fetch(url: str, dest: pathlib.Path, timeout: float, max_bytes: int) -> str:
  """Streams `url` to `dest` with a size cap; returns the sha256 hex digest."""
  digest = hashlib.sha256()
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@", url):
    raise DownloadError(f"{url}: credentials in the URL are not supported: fetch the "
                        "archive yourself (e.g. curl -u USER -o datasets.zip URL) and pass "
                        "--url file:///full/path/datasets.zip")
  try:
    request = urllib.request.Request(url, headers={"User-Agent": "sbs_jax"})
    with urllib.request.urlopen(request, timeout=timeout) as response, \
         open(dest, "wb") as out:
      length = response.headers.get("Content-Length")
      if length and length.isdigit() and int(length) > max_bytes:
        raise DownloadError(f"{url}: the archive is {int(length)} bytes, over the "
                            f"limit of {max_bytes} bytes")
      total = 0
      while chunk := response.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
          raise DownloadError(f"{url}: the download passed the limit of {max_bytes} bytes")
        digest.update(chunk)
        out.write(chunk)
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
  except urllib.error.URLError as e:
    raise DownloadError(f"{url}: cannot fetch: {e.reason}") from None
  except TimeoutError:
    raise DownloadError(f"{url}: timed out after {timeout} s") from None
  except ValueError as e:  # e.g. "unknown url type"
    raise DownloadError(f"{url}: bad URL: {e}") from None
  except OSError as e:
    raise DownloadError(f"{url}: download failed: {e.strerror or e}") from None
  return digest.hexdigest()


def _member_path(url: str, info: zipfile.ZipInfo) -> tuple[str, ...] | None:
  """An entry's path below the benchmark folders, None to skip it; unsafe ones raise."""
  name = info.filename
  mode = info.external_attr >> 16
  if stat.S_ISLNK(mode):
    raise DownloadError(f"{url}: unsafe archive: entry {name!r} is a symbolic link")
  if ("\\" in name or "\0" in name or name.startswith("/")
      or re.match(r"^[A-Za-z]:", name)):
    raise DownloadError(f"{url}: unsafe archive: entry {name!r} has an absolute or "
                        "non-portable path")
  parts = tuple(p for p in name.split("/") if p not in ("", "."))
  if ".." in parts:
    raise DownloadError(f"{url}: unsafe archive: entry {name!r} leads outside the folder")
  if len(parts) > 1 and parts[0] == "datasets" and parts[1] in readers.READERS:
    parts = parts[1:]
  return parts if parts and parts[0] in readers.READERS else None


def _extract(url: str, archive: pathlib.Path, dest: pathlib.Path,
             max_unpacked_bytes: int) -> None:
  """Checks every entry, then writes the benchmark entries below `dest`."""
  try:
    with zipfile.ZipFile(archive) as zf:
      infos = zf.infolist()
      chosen = [(info, path) for info in infos
                if (path := _member_path(url, info)) is not None]
      declared = sum(info.file_size for info, _ in chosen)
      if declared > max_unpacked_bytes:
        raise DownloadError(f"{url}: the archive unpacks to {declared} bytes, over the "
                            f"limit of {max_unpacked_bytes} bytes")
      if not chosen:
        raise DownloadError(f"{url}: the archive holds no benchmark folder (expected "
                            f"{', '.join(readers.READERS)}, optionally under datasets/)")
      written = 0
      for info, path in chosen:
        target = dest.joinpath(*path)
        if info.is_dir():
          target.mkdir(parents=True, exist_ok=True)
          continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
          while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > max_unpacked_bytes:
              raise DownloadError(f"{url}: the archive unpacks to more than "
                                  f"{max_unpacked_bytes} bytes")
            out.write(chunk)
  except zipfile.BadZipFile as e:
    raise DownloadError(f"{url}: not a valid zip archive: {e}") from None
  except (zlib.error, EOFError, NotImplementedError) as e:
    raise DownloadError(f"{url}: a damaged or unsupported zip entry: {e}") from None
  except OSError as e:
    raise DownloadError(f"{url}: cannot unpack: {e.strerror or e}") from None


def _install(unpacked: pathlib.Path, data_dir: pathlib.Path, names: list[str],
             old: pathlib.Path) -> None:
  """Moves each checked benchmark folder into `data_dir`, replacing an older one."""
  old.mkdir()
  for name in names:
    target = data_dir / name
    aside = None
    try:
      if target.exists() or target.is_symlink():
        aside = old / name
        os.replace(target, aside)
      try:
        os.replace(unpacked / name, target)
      except OSError:
        if aside is not None:
          os.replace(aside, target)  # put the old folder back
        raise
    except OSError as e:
      raise DownloadError(f"{target}: cannot install the checked folder: "
                          f"{e.strerror or e}") from None
