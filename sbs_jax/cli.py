"""The `sbs` command: one subcommand per stage of the pipeline.

Each subcommand lives in its own module, imported only when that subcommand runs, so that
`sbs --help` answers at once (TensorFlow and JAX take seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (the module whose `add_parser(subparsers)` defines it, one line of help).
# A module may define several names (train, eval); add new subcommands here.
COMMANDS = {
    "annotate": ("sbs_jax.commands.annotate",
                 "ask (or replay) a teacher for rationales and labels -> TFRecords"),
    "download": ("sbs_jax.commands.download", "fetch and check the paper's data release"),
    "vocab": ("sbs_jax.commands.vocab", "train a SentencePiece vocabulary on annotations"),
    "train": ("sbs_jax.commands.train", "train a student with a gin config"),
    "eval": ("sbs_jax.commands.train", "score a trained model dir's best params"),
    "predict": ("sbs_jax.commands.predict",
                "labels (and rationales) for texts or a JSON Lines file"),
    "plan": ("sbs_jax.commands.plan", "per-device memory of a run on a mesh"),
    "import-hf": ("sbs_jax.commands.hf", "an HF T5 checkpoint -> a model dir to train from"),
    "export-hf": ("sbs_jax.commands.hf", "a trained model dir -> an HF T5 folder"),
    "import-t5x": ("sbs_jax.commands.t5x", "a T5X checkpoint -> a model dir"),
    "export-t5x": ("sbs_jax.commands.t5x", "a trained model dir -> a T5X checkpoint"),
    "bench": ("sbs_jax.commands.bench", "training / decoding throughput, FLOPs and MFU"),
    "demo": ("sbs_jax.commands.demo", "the main job, end to end on this machine"),
    "sweep": ("sbs_jax.commands.sweep", "a grid of runs: methods x data x sizes x seeds"),
    "report": ("sbs_jax.commands.report", "a sweep's results table and figures"),
    "synthetic": ("sbs_jax.commands.synthetic", "the controlled task and its teacher"),
}


def build_parser(commands=None) -> argparse.ArgumentParser:
  """The parser of `sbs`: full for the names in `commands` (all when None), names only for
  the rest (their modules are not imported)."""
  parser = argparse.ArgumentParser(
      prog="sbs", description="Distilling Step-by-Step in JAX: annotate, build tasks, "
      "train and evaluate small students.")
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="debug logging, and native libraries' start-up lines unfiltered")
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  wanted = list(COMMANDS) if commands is None else list(commands)
  loaded = set()
  for name in wanted:
    module = COMMANDS[name][0]
    if module not in loaded:
      importlib.import_module(module).add_parser(subparsers)
      loaded.add(module)
  for name, (_, help_text) in COMMANDS.items():
    if name not in subparsers.choices:  # listed for help; its module is not imported
      subparsers.add_parser(name, help=help_text)
  return parser


def _command_of(argv: list[str]) -> str | None:
  """The subcommand named in argv (the first word that is one), if any."""
  for arg in argv:
    if arg in COMMANDS:
      return arg
    if not arg.startswith("-"):
      return None
  return None


def _refuse_remote_paths(args) -> None:
  """One line for a gs:// (or other URL) value of a flag that the command reads or writes
  with local-only calls (a journal, a lock, renames): pathlib would turn `gs://b/x` into a
  local folder `gs:/b/x` and the run would look fine."""
  from sbs_jax.errors import SbsError  # pylint: disable=import-outside-toplevel
  for name in getattr(args, "local_only", ()):
    value = getattr(args, name, None)
    if value and "://" in str(value):
      raise SbsError(f"--{name} {value}: `sbs {args.command}` works on local files only "
                     f"(cloud storage is for model dirs, annotation dirs, vocabularies and "
                     f"T5X checkpoints); use a local path, then copy the result with "
                     f"`gcloud storage cp -r`")


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  command = _command_of(argv)
  verbose = "-v" in argv or "--verbose" in argv
  if command is None:  # help, or an unknown command: argparse says so, nothing imported
    build_parser(()).parse_args(argv)
    return 2
  from sbs_jax import console  # pylint: disable=import-outside-toplevel
  console.quiet_environment()
  if verbose:
    parser = build_parser([command])
  else:  # the command's module (and TensorFlow, JAX) imported with start-up notices dropped
    with console.native_stderr_filtered():
      parser = build_parser([command])
    if not {"-h", "--help"} & set(argv):
      console.import_quietly()
  from sbs_jax.errors import SbsError  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.preemption import EXIT_CODE as PREEMPTED_EXIT_CODE, Preempted  # pylint: disable=import-outside-toplevel
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
    _refuse_remote_paths(args)
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
  except Exception as e:  # pylint: disable=broad-except
    from sbs_jax.errors import storage_error_line  # pylint: disable=import-outside-toplevel
    line = storage_error_line(e)
    if line is None or args.verbose:  # a bug, or asked for the traceback: not hidden
      raise
    print(f"sbs {args.command}: error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
