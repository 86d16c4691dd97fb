"""`sbs annotate`: the teacher-annotation job from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import re

from sbs_jax.annotate import job as job_lib
from sbs_jax.annotate import answer_formats, endpoint, parsers, prompts
from sbs_jax.annotate.teachers import OpenAITeacher, ReplayTeacher
from sbs_jax.data import readers
from sbs_jax.errors import SbsError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "annotate", help="ask a teacher LLM for rationales and labels; write TFRecords",
      description="Annotates a dataset split with a teacher's chain-of-thought rationales "
      "and labels. Rerun the same command to resume an interrupted run.")
  p.add_argument("--dataset", required=True,
                 help=f"one of {', '.join(readers.BENCHMARKS)}, or jsonl:PATH")
  p.add_argument("--split", default="train")
  p.add_argument("--teacher", choices=("replay", "openai"), required=True)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--data_dir", help=f"benchmarks' dir (default ${readers.DATA_DIR_ENV}, "
                 "else ../shared/datasets)")
  p.add_argument("--num_shards", type=int, default=1)
  p.add_argument("--shard_index", type=int, default=0)
  p.add_argument("--restart", action="store_true",
                 help="discard a partial run of this shard instead of resuming it")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  g = p.add_argument_group("custom data (--dataset jsonl:PATH)")
  g.add_argument("--input_key", default="input")
  g.add_argument("--label_key", default="label",
                 help="gold label field; rows without it are unlabeled")
  g.add_argument("--id_key", help="id field (default: <split>-<row index>)")
  g.add_argument("--completion_key", help="field with a completion, for --teacher replay")
  g.add_argument("--prompt_file", help="own few-shot template with one {input}")
  g.add_argument("--answer_format", choices=answer_formats.FORMATS, default="auto",
                 help="how answers and gold labels are read: choice (marker, letter or text "
                 "of a choice listed in the input), number, nli (entailment / neutral / "
                 "contradiction), text (as written); auto: text (default: %(default)s)")
  g.add_argument("--answer_regex",
                 help="the label is the rest of the line after its last match (default: "
                 f"{parsers.DEFAULT_ANSWER_REGEX!r} for text, 'answer is' or 'Answer:' in "
                 "any case for the other formats)")
  g.add_argument("--stop_regex", default=parsers.DEFAULT_STOP_REGEX,
                 help="where a completion runs on into the next exemplar")
  g = p.add_argument_group("--teacher openai")
  g.add_argument("--base_url", help="e.g. http://127.0.0.1:8000/v1")
  g.add_argument("--model")
  g.add_argument("--api_key_env",
                 help="the environment variable holding this endpoint's API key (default: "
                 "$OPENAI_API_KEY for https://api.openai.com only; other endpoints get no "
                 "key without this flag)")
  g.add_argument("--allow_http_key", action="store_true",
                 help="send the key over plain http to a host other than this machine")
  g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
  g.add_argument("--concurrency", type=int, default=16)
  g.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
  g.add_argument("--max_retries", type=int, default=8)
  g.add_argument("--retry_base_delay", type=float, default=0.5)
  g.add_argument("--retry_max_delay", type=float, default=30.0)
  g.add_argument("--max_tokens", type=int, default=256)
  g.add_argument("--temperature", type=float, default=0.0)
  p.set_defaults(func=main, local_only=("out_dir", "data_dir", "prompt_file"))


def _load(args) -> readers.LoadedSplit:
  if args.dataset.startswith("jsonl:"):
    if not args.dataset[len("jsonl:"):].strip():
      raise SbsError("--dataset jsonl: needs the file's path, e.g. --dataset "
                     "jsonl:my_data.jsonl")
    if args.teacher == "replay" and not args.completion_key:
      raise SbsError("--teacher replay on custom data needs --completion_key")
    return readers.load_jsonl(args.dataset[len("jsonl:"):], split=args.split,
                              input_key=args.input_key, label_key=args.label_key,
                              id_key=args.id_key, completion_key=args.completion_key)
  return readers.load_benchmark(args.dataset, args.split,
                                readers.resolve_data_dir(args.data_dir),
                                with_completions=args.teacher == "replay")


# SeqIO task names allow these characters; a dataset's name is part of its task names.
# A leading '.' is refused: "." or ".." (from files named `..jsonl`, `...jsonl`) would be a
# folder outside the dataset's own.
_DATASET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")
# A split name is part of file names: no path separators, no hidden or dot-only names.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_numbers(args) -> None:
  """One line for numeric flags out of their range (before anything is read or written)."""
  rules = [("num_shards", args.num_shards >= 1, "at least 1"),
           ("concurrency", args.concurrency >= 1, "at least 1"),
           ("timeout", args.timeout > 0, "more than 0 seconds"),
           ("max_retries", args.max_retries >= 0, "0 or more"),
           ("retry_base_delay", args.retry_base_delay >= 0, "0 or more seconds"),
           ("retry_max_delay", args.retry_max_delay >= 0, "0 or more seconds"),
           ("max_tokens", args.max_tokens >= 1, "at least 1"),
           ("temperature", args.temperature >= 0, "0 or more")]
  for name, ok, expected in rules:
    value = getattr(args, name)
    if not ok or value != value:  # NaN compares false with everything
      shown = f"{value:g}" if isinstance(value, float) else value
      raise SbsError(f"--{name} {shown}: must be {expected}")


def build_job(args) -> job_lib.Job:
  """Reads and checks all input first, so that bad input writes nothing."""
  custom = args.dataset.startswith("jsonl:")
  _check_numbers(args)
  if custom and not _SPLIT_NAME.fullmatch(args.split):
    raise SbsError(f"--split {args.split!r}: a split name goes into file names: use "
                   "letters, digits, '_', '.' and '-' only, not starting with '.' (e.g. "
                   "train, test)")
  if not custom and args.answer_format != "auto":
    raise SbsError(f"--answer_format is for custom data (jsonl:PATH); {args.dataset} is read "
                   "by its own parser: leave --answer_format out")
  data = _load(args)
  if custom and not _DATASET_NAME.fullmatch(data.dataset):
    raise SbsError(f"the dataset name {data.dataset!r} (the file's stem) may only hold "
                   "letters, digits, '_' and '.' (not first), as the task names made "
                   "from it (sbs_<name>_...): rename the file")
  if args.prompt_file:
    prompt = prompts.prompt_from_file(args.prompt_file)
  else:
    prompt = prompts.PROMPTS["generic" if custom else args.dataset]
  examples, settings = data.examples, {}
  if custom:
    answer_format = "text" if args.answer_format == "auto" else args.answer_format
    answer_regex = args.answer_regex or parsers.default_answer_regex(answer_format)
    parse = parsers.make_generic_parser(answer_regex, args.stop_regex, answer_format)
    if answer_format != "text":
      examples = answer_formats.prepare_examples(answer_format, examples, data.source)
    match_dataset = "custom"
    settings = {"answer_regex": answer_regex, "stop_regex": args.stop_regex,
                "input_key": args.input_key, "label_key": args.label_key,
                "id_key": args.id_key, "completion_key": args.completion_key}
  else:
    parse, match_dataset = parsers.PARSERS[args.dataset], args.dataset
    answer_format = args.dataset  # the benchmark's own parser

  if args.teacher == "replay":
    source = (f"{data.dataset}.{args.completion_key}" if custom
              else f"{args.dataset}/llm/{data.split}_CoT")
    teacher = ReplayTeacher(data.completions, source)
    # Replayed completions came from the prompts of whoever wrote them, not ours.
    prompt_id = ("external" if custom else f"released-{args.dataset}-cot")
  else:
    if not args.base_url or not args.model:
      raise SbsError("--teacher openai needs --base_url and --model")
    api_key = endpoint.choose_api_key(args.base_url, args.api_key_env,
                                      args.allow_http_key)
    teacher = OpenAITeacher(
        args.base_url, args.model, api_key=api_key,
        endpoint=args.endpoint, concurrency=args.concurrency, timeout=args.timeout,
        max_retries=args.max_retries, max_tokens=args.max_tokens,
        temperature=args.temperature, stop=prompt.stop,
        retry_base_delay=args.retry_base_delay, retry_max_delay=args.retry_max_delay)
    prompt_id = prompt.id

  return job_lib.Job(
      dataset=data.dataset, split=data.split, examples=examples, prompt=prompt,
      prompt_id=prompt_id, parse=parse,
      labels_match=lambda pred, gold: parsers.labels_match(match_dataset, pred, gold),
      teacher=teacher, out_dir=args.out_dir, num_shards=args.num_shards,
      shard_index=args.shard_index, concurrency=args.concurrency, restart=args.restart,
      progress=False if args.no_progress else None, answer_format=answer_format,
      settings=settings)


def main(args) -> int:
  job = build_job(args)
  result = job_lib.run(job)
  stats = result.split_stats or result.stats
  shown = {k: stats.get(k) for k in ("dataset", "split", "answer_format", "examples", "parsed",
                                     "unparsable", "teacher_accuracy", "usage")}
  print(json.dumps(shown, sort_keys=True))
  log.info("records: %s (asked the teacher for %d examples in this run)",
           result.records_path, result.asked)
  if result.split_stats is None:
    log.info("split stats are written when all %d shards are done", job.num_shards)
  return 0
