"""`sbs sweep`: the paper's grid of runs, one `sbs train` per cell (the grid, its records
and resuming: `sbs_jax/experiments/sweep.py`, docs/experiments.md)."""

from __future__ import annotations

import os

from sbs_jax.errors import SbsError
from sbs_jax.experiments import sweep as sweep_lib


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "sweep", help="the paper's grid of runs: methods x data fractions x sizes x seeds",
      description="Runs one `sbs train` per cell of the grid, one after another, each in "
      "its own model dir under --out_dir; rerun the same command to resume.")
  p.add_argument("--dataset", required=True, help="an annotated dataset (cqa, or your own)")
  p.add_argument("--methods", default="standard_finetuning,distill_llm",
                 help=f"comma-separated, of {', '.join(sweep_lib.METHODS)}")
  p.add_argument("--fractions", default="100",
                 help="training-data percents, of 12.5,25,50,100")
  p.add_argument("--sizes", default="",
                 help="model sizes (gin_configs/models/<size>.gin, read after --gin_file); "
                 "empty: the size the gin files set")
  p.add_argument("--seeds", default="0", help="comma-separated integers")
  p.add_argument("--alpha", type=float, default=0.5,
                 help="label-loss weight of the distill methods (standard ones use 1.0)")
  p.add_argument("--annotation_dir", required=True)
  p.add_argument("--vocab", required=True, help="the SentencePiece model (sbs vocab)")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--gin_file", action="append", default=[],
                 help="read by every cell after the experiment's files (repeatable)")
  p.add_argument("--print_commands", action="store_true",
                 help="print one `sbs train` command per cell and run nothing")
  p.set_defaults(func=main, accepts_gin_bindings=True,
                 local_only=("out_dir", "annotation_dir", "gin_file"))


def main(args) -> int:
  settings = sweep_lib.settings_from_args(args)
  grid = sweep_lib.parse_grid(args.methods, args.fractions, args.sizes, args.seeds)
  out_dir = args.out_dir if "://" in args.out_dir else os.path.abspath(args.out_dir)
  if args.print_commands:
    for cell in sweep_lib.cells(grid):
      print(sweep_lib.shell_command(settings, cell, out_dir))
    return 0
  sweep_lib.check_inputs(settings)
  grid = sweep_lib.record_sweep(out_dir, settings, grid)
  try:
    sweep_lib.run(settings, grid, out_dir)
    line, code = sweep_lib.finish_line(out_dir, grid)
  except OSError as e:  # e.g. a read-only sweep dir: its cells' locks, records and logs
    raise SbsError(f"cannot work in {out_dir}: {e.strerror} ({e.filename}); make it "
                   "writable and rerun the same command") from None
  print(line, flush=True)
  return code
