"""`sbs import-t5x` and `sbs export-t5x`: T5X checkpoints <-> model dirs
(`sbs_jax/convert/t5x_dirs.py`, docs/t5x.md)."""

from __future__ import annotations

import json
import sys

from sbs_jax.convert import t5x_dirs


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("export-t5x", help="a trained model dir -> a T5X checkpoint")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--out", required=True, help="gets checkpoint_<step>/, model.gin, spm.model")
  p.add_argument("--overwrite", action="store_true",
                 help="write into a non-empty --out (files of the same name are replaced)")
  p.set_defaults(func=export_main)
  p = subparsers.add_parser("import-t5x", help="a T5X checkpoint -> a model dir to train from")
  p.add_argument("--checkpoint", required=True, help="a T5X checkpoint_<step> folder")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--model_gin", help="the T5X model gin of the checkpoint's network")
  source.add_argument("--size", help="a published T5 v1.1 size (small, base, large, xl, xxl)")
  p.add_argument("--vocab", help="its SentencePiece model (default: the model gin's)")
  p.add_argument("--extra_ids", type=int,
                 help="sentinels added to the vocabulary (default: the model gin's, else 0)")
  p.add_argument("--out", required=True, help="the model dir to write (must be new or empty)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a non-empty --out whole (the old folder or the new one, "
                 "never a mix, if the import is interrupted)")
  p.set_defaults(func=import_main)


def import_main(args) -> int:
  summary = t5x_dirs.import_t5x(args.checkpoint, args.out, args.model_gin, args.size,
                                args.vocab, args.extra_ids, args.overwrite)
  if summary["skipped_optimizer_arrays"]:
    print(f"sbs import-t5x: imported the parameters; skipped the checkpoint's "
          f"{summary['skipped_optimizer_arrays']} optimizer-state arrays (training starts "
          "its own optimizer)", file=sys.stderr)
  print(json.dumps(summary))
  return 0


def export_main(args) -> int:
  print(json.dumps(t5x_dirs.export_t5x(args.model_dir, args.out, args.overwrite)))
  return 0
