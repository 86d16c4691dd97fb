"""`sbs predict`: a trained student's labels (and rationales) for texts or a JSON Lines file.

    sbs predict --model_dir runs/cqa --input "..." [--input "..."] [--rationale]
    sbs predict --model_dir runs/cqa --input_file rows.jsonl --output_file out.jsonl \
        [--input_key input] [--label_key label] [--id_key id | --index_ids] [--rationale] \
        [--batch_size 32] [--label_mode greedy|rank]

See docs/serving.md.
"""

from __future__ import annotations

import json
import sys

from sbs_jax.errors import SbsError


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("predict", help="the label (and rationale) for texts or a file")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--input", action="append", help="an input text (repeatable)")
  p.add_argument("--input_file", help="JSON Lines (or a JSON array) of rows to label")
  p.add_argument("--output_file", help="with --input_file: one JSON line per input row")
  p.add_argument("--input_key", default="input", help="the rows' input text field")
  p.add_argument("--label_key", default="label",
                 help="the rows' gold label field, if any: accuracy is reported")
  p.add_argument("--id_key", help="the rows' id field (default: `id` when the first row has "
                 "that field, and then every row must; else the row's 0-based index)")
  p.add_argument("--index_ids", action="store_true",
                 help="ids are the rows' 0-based indices, even where rows have an `id` field")
  p.add_argument("--rationale", action="store_true", help="also decode the rationale")
  p.add_argument("--batch_size", type=int, default=32, help="rows per batch, all devices")
  p.add_argument("--max_input_length", type=int,
                 help="cut longer inputs to this many tokens (default: the training run's "
                 "input length from model.json, else 512)")
  p.add_argument("--max_decode_length", type=int, default=64, help="label tokens")
  p.add_argument("--label_mode", choices=("greedy", "rank"), default="greedy",
                 help="greedy: decode the label; rank: score each label of the task's closed "
                 "set (NLI's three, or the choices each input lists) and answer the most "
                 "likely (ties: the first)")
  p.add_argument("--rationale_decode_length", type=int, default=256)
  p.add_argument("--window", type=int, default=1024,
                 help="rows sorted by length and decoded together; the unit of resuming")
  p.add_argument("--restart", action="store_true",
                 help="discard a partial run, or replace a finished output (or a file this "
                 "job did not write) at --output_file")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  p.add_argument("--coordinator_address", help="multi-host: host:port of process 0")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() with automatic detection (TPU VMs)")
  p.set_defaults(func=main, local_only=("input_file", "output_file"))


def _report_truncated(count: int, total: int, max_input_length: int) -> None:
  if count:
    print(f"sbs predict: {count} of {total} inputs were longer than {max_input_length} "
          "tokens and were cut to it (\"truncated\": true in their output; "
          "--max_input_length sets the length)", file=sys.stderr)


def main(args) -> int:
  if bool(args.input) == bool(args.input_file):
    raise SbsError("pass either --input TEXT (repeatable) or --input_file FILE")
  if args.input_file and not args.output_file:
    raise SbsError("--input_file needs --output_file")
  if args.input and (args.output_file or args.id_key or args.index_ids):
    raise SbsError("--output_file, --id_key and --index_ids go with --input_file; --input "
                   "prints its answers on stdout")
  if args.output_file and (args.output_file.endswith(("/", "/.", "/.."))
                           or args.output_file in (".", "..")):
    raise SbsError(f"--output_file {args.output_file} names a directory: give the path of a "
                   "file to write, e.g. out/predictions.jsonl")
  # pylint: disable=import-outside-toplevel  (JAX and TensorFlow load only when needed)
  import jax
  from sbs_jax.serve import job as job_lib
  from sbs_jax.serve.predictor import DecodeSettings, Predictor
  from sbs_jax.commands.train import initialize_distributed
  from sbs_jax.serve.predictor import recorded_label_set
  settings = DecodeSettings(args.batch_size, args.max_input_length, args.max_decode_length,
                            args.rationale_decode_length, args.label_mode)
  initialize_distributed(args)
  if args.input_file:
    # A task without a closed label set is refused before any row is read.
    label_set = recorded_label_set(args.model_dir) if args.label_mode == "rank" else None
    job = job_lib.FileJob(args.input_file, args.output_file, args.model_dir, args.input_key,
                          args.label_key, args.id_key, args.rationale, args.window,
                          args.restart, False if args.no_progress else None, args.index_ids,
                          label_set)
    if jax.process_index() == 0:  # host 0 writes: its paths are checked before any work
      job.check_paths()
    total = job_lib.count_rows(job)  # a bad row is reported before the model is loaded
    predictor = Predictor.load(args.model_dir, settings)
    stats = job_lib.run(job, predictor, total)
    if jax.process_index() == 0:
      _report_truncated(stats.get("truncated", 0), stats["rows"], predictor.max_input_length)
      print(json.dumps(stats))
    return 0
  predictor = Predictor.load(args.model_dir, settings)
  outputs = predictor.predict(args.input, args.rationale)
  _report_truncated(sum(o["truncated"] for o in outputs), len(outputs),
                    predictor.max_input_length)
  if jax.process_index() == 0:
    for text, out in zip(args.input, outputs):
      print(json.dumps({"input": text, **out}))
  return 0
