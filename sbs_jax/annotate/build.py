"""An annotation job from its options: the input read and checked, the prompt, the answer
parser and the teacher chosen (`sbs annotate`'s flags are these options,
`sbs_jax/commands/annotate.py`; `sbs_jax/experiments/prepare.py` builds them in code)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from typing import Sequence

from sbs_jax.annotate import job as job_lib
from sbs_jax.annotate import answer_formats, benchmarks, endpoint, parsers, prompts
from sbs_jax.annotate import samples as samples_lib
from sbs_jax.annotate.batch import BatchTeacher
from sbs_jax.annotate.cost import Prices
from sbs_jax.annotate.teachers import OpenAITeacher, ReplayTeacher
from sbs_jax.data import readers
from sbs_jax.data.annotation_dir import DATASET_NAME
from sbs_jax.errors import SbsError
from sbs_jax.redact import redact_url

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Options:
  """What an annotation job is asked to do: the fields of `sbs annotate`'s flags, with the
  same defaults (the command's parser takes its defaults from here)."""
  dataset: str  # a benchmark's name, or jsonl:PATH
  teacher: str  # replay, openai or batch
  out_dir: str
  split: str = "train"
  data_dir: str | None = None
  num_shards: int = 1
  shard_index: int = 0
  restart: bool = False
  no_progress: bool = False
  # custom data (--dataset jsonl:PATH)
  input_key: str = "input"
  label_key: str = "label"
  id_key: str | None = None
  completion_key: str | None = None
  prompt_file: str | None = None
  answer_format: str = "auto"
  answer_regex: str | None = None
  stop_regex: str = parsers.DEFAULT_STOP_REGEX
  # --teacher openai (and batch: the request settings)
  base_url: str | Sequence[str] | None = None  # several: replicas of one model
  model: str | None = None
  api_key_env: str | None = None
  allow_http_key: bool = False
  endpoint: str = "completions"
  concurrency: int = 16
  timeout: float = 120.0
  max_retries: int = 8
  retry_base_delay: float = 0.5
  retry_max_delay: float = 30.0
  max_tokens: int = 256
  temperature: float = 0.0
  # --teacher batch
  batch_dir: str | None = None  # the requests and results files of an offline batch
  # several samples, vote, filter, cost
  num_samples: int | None = None  # None: 1 (replay: the completions' count per row)
  keep: str = "all"  # all | gold | vote
  price_in: float | None = None  # dollars per million prompt tokens
  price_out: float | None = None  # dollars per million completion tokens
  max_cost: float | None = None  # dollars; needs both prices


def defaults() -> dict:
  """Every Options field that has a default, with it."""
  return {f.name: f.default for f in dataclasses.fields(Options)
          if f.default is not dataclasses.MISSING}


def options_of(args) -> Options:
  """Options from an object holding (at least) every field, e.g. parsed flags."""
  return Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})


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
  optional = [("num_samples", lambda v: v >= 1, "at least 1"),
              ("price_in", lambda v: v >= 0, "0 or more dollars per million tokens"),
              ("price_out", lambda v: v >= 0, "0 or more dollars per million tokens"),
              ("max_cost", lambda v: v > 0, "more than 0 dollars")]
  rules += [(name, check(getattr(args, name)), expected) for name, check, expected in optional
            if getattr(args, name) is not None]
  for name, ok, expected in rules:
    value = getattr(args, name)
    if not ok or value != value:  # NaN compares false with everything
      shown = f"{value:g}" if isinstance(value, float) else value
      raise SbsError(f"--{name} {shown}: must be {expected}")
  if args.keep not in samples_lib.KEEP:
    raise SbsError(f"--keep {args.keep}: must be one of {', '.join(samples_lib.KEEP)}")
  if (args.price_in is None) != (args.price_out is None):
    raise SbsError("--price_in and --price_out go together (dollars per million prompt and "
                   "completion tokens; 0 for a free side)")
  if args.max_cost is not None and args.price_in is None:
    raise SbsError("--max_cost needs --price_in and --price_out (dollars per million "
                   "tokens) to count what is spent")


def _num_samples(args, data: readers.LoadedSplit) -> int:
  """The samples per example: --num_samples (default 1); for replay, the completions'."""
  if args.teacher != "replay":
    return args.num_samples or 1
  several = bool(data.completions) and not isinstance(data.completions[0], str)
  have = len(data.completions[0]) if several else 1
  if args.num_samples is not None and args.num_samples != have:
    source = data.completion_source or "the released completions"
    raise SbsError(f"--num_samples {args.num_samples}: {source} holds {have} completion(s) "
                   f"per row: leave --num_samples out (replay takes them all) or give {have}")
  return have


def build_job(args: Options) -> job_lib.Job:
  """The job `args` describe (an Options, or an object with its fields). Reads and checks
  all input first, so that bad input writes nothing."""
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
  # A leading '.' is refused too: "." or ".." (from `..jsonl`) would name a folder outside.
  if custom and not DATASET_NAME.fullmatch(data.dataset):
    raise SbsError(f"the dataset name {data.dataset!r} (the file's stem) may only hold "
                   "letters, digits, '_' and '.' (not first), as the task names made "
                   "from it (sbs_<name>_...): rename the file")
  examples, settings = data.examples, {}
  if custom:
    fmt = answer_formats.get(args.answer_format)
    answer_regex = args.answer_regex or fmt.answer_regex
    bench = benchmarks.custom(data.dataset, fmt, answer_regex, args.stop_regex)
    examples = answer_formats.prepare_examples(fmt, examples, data.source)
    settings = {"answer_regex": answer_regex, "stop_regex": args.stop_regex,
                "input_key": args.input_key, "label_key": args.label_key,
                "id_key": args.id_key, "completion_key": args.completion_key}
  else:
    bench = benchmarks.BENCHMARKS[args.dataset]
  prompt = (prompts.prompt_from_file(args.prompt_file) if args.prompt_file
            else bench.prompt)
  num_samples = _num_samples(args, data)
  if args.keep == "gold" and not any(ex.label is not None for ex in examples):
    raise SbsError(f"--keep gold: {data.source} has no gold labels (no row has "
                   f"{args.label_key if custom else 'a label'!r}): use --keep vote or all")

  urls = _urls(args.base_url)
  if args.batch_dir and args.teacher != "batch":
    raise SbsError(f"--batch_dir is for --teacher batch, not --teacher {args.teacher}: "
                   "leave it out, or pass --teacher batch")
  concurrency = args.concurrency
  if args.teacher == "replay":
    source = (f"{data.dataset}.{args.completion_key}" if custom
              else f"{args.dataset}/llm/{data.split}_CoT")
    teacher = ReplayTeacher(data.completions, source)
    # Replayed completions came from the prompts of whoever wrote them, not ours.
    prompt_id = ("external" if custom else f"released-{args.dataset}-cot")
  elif args.teacher == "batch":
    teacher = _batch_teacher(args, urls, prompt)
    prompt_id = prompt.id
  else:
    if not urls or not args.model:
      raise SbsError("--teacher openai needs --base_url and --model")
    api_keys = [endpoint.choose_api_key(url, args.api_key_env, args.allow_http_key)
                for url in urls]
    teacher = OpenAITeacher(
        urls[0] if len(urls) == 1 else urls, args.model, api_key=api_keys,
        endpoint=args.endpoint, concurrency=args.concurrency, timeout=args.timeout,
        max_retries=args.max_retries, max_tokens=args.max_tokens,
        temperature=args.temperature, stop=prompt.stop,
        retry_base_delay=args.retry_base_delay, retry_max_delay=args.retry_max_delay)
    concurrency = args.concurrency * len(urls)  # --concurrency is per replica
    prompt_id = prompt.id
  if args.teacher != "replay" and num_samples > 1 and args.temperature == 0:
    log.warning("--num_samples %d at --temperature 0: a greedy teacher gives the same "
                "answer every time; set --temperature (e.g. 0.7) for different samples",
                num_samples)

  return job_lib.Job(
      dataset=data.dataset, split=data.split, examples=examples, prompt=prompt,
      prompt_id=prompt_id, parse=bench.parse, labels_match=bench.same_label,
      teacher=teacher, out_dir=args.out_dir, num_shards=args.num_shards,
      shard_index=args.shard_index, concurrency=concurrency, restart=args.restart,
      progress=False if args.no_progress else None, answer_format=bench.answer_format,
      settings=settings, num_samples=num_samples, keep=args.keep,
      prices=(None if args.price_in is None else Prices(args.price_in, args.price_out)),
      max_cost=args.max_cost)


def _urls(base_url) -> list[str]:
  """--base_url as a list (one URL, or a pool's replicas); a URL given twice is refused."""
  urls = [base_url] if isinstance(base_url, str) else list(base_url or ())
  for i, url in enumerate(urls):
    if url in urls[:i]:
      raise SbsError(f"--base_url {redact_url(url)} is given twice: give each replica once "
                     "(--concurrency sets the requests in flight per replica)")
  return urls


def _batch_teacher(args, urls: list[str], prompt: prompts.Prompt) -> BatchTeacher:
  """The offline batch teacher of the options, after its flags are checked."""
  if not args.batch_dir or not args.model:
    raise SbsError("--teacher batch needs --batch_dir (a folder for the batch's requests and "
                   "results files, one per shard) and --model")
  if urls:
    raise SbsError("--teacher batch sends no request itself: leave --base_url out (the batch "
                   "runs where you upload its requests file)")
  if args.max_cost is not None:
    raise SbsError("--max_cost cannot stop a batch that runs elsewhere: leave it out (with "
                   "--price_in/--price_out the stats price what the results used)")
  folder = pathlib.Path(args.batch_dir)
  if folder.exists() and not folder.is_dir():
    raise SbsError(f"--batch_dir {folder} is a file, not a folder: choose another "
                   "--batch_dir")
  return BatchTeacher(folder, args.model, endpoint=args.endpoint, max_tokens=args.max_tokens,
                      temperature=args.temperature, stop=prompt.stop)
