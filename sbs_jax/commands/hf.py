"""`sbs import-hf` and `sbs export-hf`: Hugging Face T5 folders <-> model dirs
(`sbs_jax/convert/hf_dirs.py`, docs/hf.md)."""

from __future__ import annotations

import json

from sbs_jax.convert import hf_dirs


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("import-hf", help="an HF T5 checkpoint -> a model dir to train from")
  p.add_argument("--hf_dir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--allow_pickle", action="store_true",
                 help="read a pickle-based pytorch_model.bin (unpickling can run code)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a non-empty --out whole (the old dir or the new one, never a "
                 "mix, if the import is interrupted)")
  p.set_defaults(func=import_main, local_only=("hf_dir",))
  p = subparsers.add_parser("export-hf", help="a trained model dir -> an HF T5 folder")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out dir, replacing files of the same name")
  p.set_defaults(func=export_main, local_only=("out",))


def import_main(args) -> int:
  summary = hf_dirs.import_hf(args.hf_dir, args.out, args.allow_pickle, args.overwrite)
  print(json.dumps({k: summary[k] for k in ("model_dir", "parameters", "extra_ids")}))
  return 0


def export_main(args) -> int:
  path = hf_dirs.export_hf(args.model_dir, args.out, args.overwrite)
  print(json.dumps({"hf_dir": str(path)}))
  return 0
