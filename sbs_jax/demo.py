"""`sbs demo`: the README's main job on a fresh machine.

For now it runs stage one of the pipeline on the paper's data: annotation of CQA with the
replay teacher (the released PaLM 540B completions), and prints what the teacher gave.
"""

from __future__ import annotations

import argparse
import json

from sbs_jax.annotate import command as annotate_command
from sbs_jax.annotate import job as job_lib
from sbs_jax.annotate import records


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("demo", help="the main job: annotate CQA with the replay "
                            "teacher and show the result")
  p.add_argument("--out_dir", default="runs/demo")
  p.add_argument("--data_dir")
  p.set_defaults(func=main)


def main(args) -> int:
  rows = []
  for split in ("train", "test"):
    annotate_args = annotate_command_args(args, split)
    result = job_lib.run(annotate_command.build_job(annotate_args))
    stats = result.split_stats
    rows.append((split, stats["examples"], stats["parsed"], stats["unparsable"],
                 stats["teacher_accuracy"], str(result.records_path)))
  print()
  print(f"{'split':<6} {'examples':>8} {'parsed':>7} {'unparsable':>10} "
        f"{'teacher acc':>11}  records")
  for split, n, ok, bad, acc, path in rows:
    print(f"{split:<6} {n:>8} {ok:>7} {bad:>10} {acc:>11.4f}  {path}")
  sample = records.read_records([rows[-1][5]])[0]
  print("\nA test example as the student will see it:")
  print(json.dumps({k: sample[k] for k in ("input", "label", "llm_label", "rationale")},
                   indent=2))
  return 0


def annotate_command_args(args, split: str) -> argparse.Namespace:
  """The arguments of `sbs annotate --dataset cqa --split SPLIT --teacher replay`."""
  parser = argparse.ArgumentParser()
  sub = parser.add_subparsers()
  annotate_command.add_parser(sub)
  argv = ["annotate", "--dataset", "cqa", "--split", split, "--teacher", "replay",
          "--out_dir", f"{args.out_dir}/annotations"]
  if args.data_dir:
    argv += ["--data_dir", args.data_dir]
  return parser.parse_args(argv)
