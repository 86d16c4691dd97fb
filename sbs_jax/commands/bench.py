"""`sbs bench`: training and label-decoding throughput, FLOPs and MFU, beside the HF
reference (what is measured and how: `sbs_jax/perf/bench.py`, docs/benchmarks.md). Also
`python -m sbs_jax.commands.bench ...`, which `--isolate` runs for each side's worker."""

from __future__ import annotations

import argparse
import json
import sys

from sbs_jax.errors import SbsError
from sbs_jax.perf import bench as bench_lib


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("bench", help="training / decoding throughput, FLOPs and MFU")
  p.add_argument("--size", default="small", help="tiny, small, base, large, xl or xxl")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--batch", default="16", help="rows per step; a comma list runs each")
  p.add_argument("--input_len", type=int, default=128, help="synthetic: per task input")
  p.add_argument("--label_len", type=int, default=8)
  p.add_argument("--rationale_len", type=int, default=64)
  p.add_argument("--mixture", help="a registered task or mixture: real packed batches")
  p.add_argument("--task_feature_lengths", default="1024,352", help="INPUTS,TARGETS")
  p.add_argument("--split", default="train")
  p.add_argument("--steps", type=int, default=5, help="timed steps (after compile + 2)")
  p.add_argument("--rounds", type=int, default=1,
                 help="alternate this many rounds of --steps of each side; report the median")
  p.add_argument("--reference", action="store_true", help="also the HF transformers recipe")
  p.add_argument("--reference_batch", type=int,
                 help="--mixture: examples per reference step (default: ours' average)")
  p.add_argument("--inference", action="store_true", help="greedy label decoding instead")
  p.add_argument("--decode_len", type=int, default=8)
  p.add_argument("--peak_tflops", type=float, help="the device's peak, for MFU")
  p.add_argument("--vocab_size", type=int, help="override the size's vocabulary")
  p.add_argument("--dropout", type=float, default=0.0, help="dropout of both networks")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="also append the JSON lines to this file")
  p.add_argument("--isolate", action="store_true",
                 help="run each side in its own worker process (rounds still alternate)")
  p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a side, for --isolate
  p.set_defaults(func=main)


def parse_batches(text: str) -> list[int]:
  """--batch: comma-separated positive integers."""
  try:
    batches = [int(x) for x in str(text).split(",") if x.strip()]
  except ValueError:
    batches = []
  if not batches or min(batches) < 1:
    raise SbsError(f"--batch {text!r}: give rows per step as positive integers, e.g. 16 or "
                   "8,16,32")
  return batches


def check_args(args) -> list[int]:
  """Every argument checked before anything compiles; returns the batch sizes."""
  if args.inference and args.mixture:
    raise SbsError("--inference runs on synthetic inputs; drop --mixture")
  if args.size not in bench_lib.SIZES:
    raise SbsError(f"--size {args.size!r}: one of {', '.join(bench_lib.SIZES)}")
  batches = parse_batches(args.batch)
  for name in ("input_len", "label_len", "rationale_len", "steps", "rounds", "decode_len"):
    if getattr(args, name) < 1:
      raise SbsError(f"--{name} {getattr(args, name)}: must be 1 or more")
  for name in ("peak_tflops", "vocab_size", "reference_batch"):
    value = getattr(args, name)
    if value is not None and not value > 0:
      raise SbsError(f"--{name} {value}: must be positive")
  if not 0.0 <= args.dropout < 1.0:
    raise SbsError(f"--dropout {args.dropout}: a rate in [0, 1)")
  try:
    lengths = [int(x) for x in args.task_feature_lengths.split(",")]
  except ValueError:
    lengths = []
  if len(lengths) != 2 or min(lengths) < 1:
    raise SbsError(f"--task_feature_lengths {args.task_feature_lengths!r}: give "
                   "INPUTS,TARGETS token counts, e.g. 1024,352")
  if args.out:
    try:
      with open(args.out, "a", encoding="utf-8"):
        pass
    except OSError as e:
      raise SbsError(f"--out {args.out}: cannot append to it ({e.strerror})") from None
  return batches


def main(args) -> int:
  batches = check_args(args)
  if not getattr(args, "argv", None):  # for --isolate's workers: this command's flags
    args.argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
  failed = []
  for batch in batches:
    args.current_batch = batch
    try:
      for line in bench_lib.bench(args, batch):
        text = json.dumps(line)
        print(text, flush=True)
        if args.out:
          with open(args.out, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except SbsError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: go on
      error = f"{type(e).__name__}: {str(e)[:500]}"
      text = json.dumps({"size": args.size, "dtype": args.dtype, "batch": batch,
                         "error": error})
      print(text, flush=True)
      if args.out:  # the failure is a result too: kept beside the others
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(text + "\n")
      failed.append((batch, error.splitlines()[0] if error else type(e).__name__))
  if failed:
    shown = "; ".join(f"batch {b}: {e[:200]}" for b, e in failed)
    raise SbsError(f"{len(failed)} of {len(batches)} batch sizes failed ({shown}); "
                   "their JSON lines hold the error")
  return 0


if __name__ == "__main__":  # `python -m sbs_jax.commands.bench ...`, the same as `sbs bench ...`
  _parser = argparse.ArgumentParser(prog="sbs")
  add_parser(_parser.add_subparsers(dest="command", required=True))
  _args = _parser.parse_args(["bench", *sys.argv[1:]])
  _args.argv = sys.argv[1:]
  sys.exit(_args.func(_args))
