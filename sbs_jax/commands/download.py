"""`sbs download`: fetch the paper's released data archive into the data dir and check it."""

from __future__ import annotations

import json
import logging
import pathlib

from sbs_jax.data import download, readers
from sbs_jax.errors import SbsError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "download", help="fetch the paper's released datasets.zip into the data dir",
      description="Downloads the datasets archive of the paper's code release, extracts it "
      "safely into the data dir and checks every split (rows and teacher completions).")
  p.add_argument("--data_dir", help=f"where to put it (default ${readers.DATA_DIR_ENV}, "
                 "else ../shared/datasets, where `sbs annotate` looks by default)")
  p.add_argument("--url", default=download.DEFAULT_URL)
  p.add_argument("--sha256", help="expected SHA-256 of the archive")
  p.add_argument("--timeout", type=float, default=60.0)
  p.add_argument("--check_only", action="store_true",
                 help="only check what the data dir holds")
  p.set_defaults(func=main, local_only=("data_dir",))


def destination(flag: str | None) -> pathlib.Path:
  """--data_dir, else the data dir `sbs annotate` reads by default (readers.default_data_dir:
  $SBS_DATA_DIR, else ../shared/datasets), so that the two agree without flags."""
  data_dir = pathlib.Path(flag) if flag else readers.default_data_dir()
  if data_dir.exists() and not data_dir.is_dir():
    raise SbsError(f"--data_dir {data_dir} is a file, not a folder: give a folder (it is "
                   "created if missing)")
  return data_dir


def main(args) -> int:
  data_dir = destination(args.data_dir)
  if args.check_only:
    summary = download.check_data_dir(data_dir)
  else:
    summary = download.download_release(data_dir, url=args.url, sha256=args.sha256,
                                        timeout=args.timeout)
  log.info("data dir: %s", data_dir.absolute())
  print(json.dumps(summary, indent=2, sort_keys=True))
  return 0
