"""The `sbs` command: one subcommand per stage of the pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sbs_jax.errors import SbsError
from sbs_jax.train.preemption import EXIT_CODE as PREEMPTED_EXIT_CODE, Preempted


def build_parser() -> argparse.ArgumentParser:
  # Subcommand modules are imported here, not at the top, so `sbs --help` stays fast.
  from sbs_jax.annotate import command as annotate_command
  from sbs_jax import demo
  from sbs_jax.data import download_command, vocab_command
  from sbs_jax.train import command as train_command, plan
  from sbs_jax.convert import command as convert_command
  from sbs_jax import bench

  parser = argparse.ArgumentParser(
      prog="sbs", description="Distilling Step-by-Step in JAX: annotate, build tasks, "
      "train and evaluate small students.")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  subparsers = parser.add_subparsers(dest="command", required=True)
  annotate_command.add_parser(subparsers)
  download_command.add_parser(subparsers)
  vocab_command.add_parser(subparsers)
  train_command.add_parser(subparsers)
  plan.add_parser(subparsers)
  convert_command.add_parser(subparsers)
  bench.add_parser(subparsers)
  demo.add_parser(subparsers)
  return parser


def main(argv=None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if getattr(args, "accepts_gin_bindings", False):
    args.gin_bindings = extra
  elif extra:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
  for noisy in ("absl", "tensorflow", "h5py", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    return args.func(args)
  except Preempted as e:  # a checkpoint was saved: not a failure, but not finished either
    print(f"sbs {args.command}: {e}", file=sys.stderr)
    return PREEMPTED_EXIT_CODE
  except SbsError as e:
    print(f"sbs {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"sbs {args.command}: interrupted; rerun the same command to resume",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
