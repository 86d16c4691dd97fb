"""`sbs download`: fetch the paper's released data archive into the data dir and check it."""

from __future__ import annotations

import json
import os
import pathlib

from sbs_jax.data import download, readers


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "download", help="fetch the paper's released datasets.zip into the data dir",
      description="Downloads the datasets archive of the paper's code release, extracts it "
      "safely into the data dir and checks every split (rows and teacher completions).")
  p.add_argument("--data_dir", help=f"where to put it (default ${readers.DATA_DIR_ENV}, "
                 "else ./datasets)")
  p.add_argument("--url", default=download.DEFAULT_URL)
  p.add_argument("--sha256", help="expected SHA-256 of the archive")
  p.add_argument("--timeout", type=float, default=60.0)
  p.add_argument("--check_only", action="store_true",
                 help="only check what the data dir holds")
  p.set_defaults(func=main, local_only=("data_dir",))


def main(args) -> int:
  data_dir = pathlib.Path(args.data_dir or os.environ.get(readers.DATA_DIR_ENV)
                          or "datasets")
  if args.check_only:
    summary = download.check_data_dir(data_dir)
  else:
    data_dir.mkdir(parents=True, exist_ok=True)
    summary = download.download_release(data_dir, url=args.url, sha256=args.sha256,
                                        timeout=args.timeout)
  print(json.dumps(summary, indent=2, sort_keys=True))
  return 0
