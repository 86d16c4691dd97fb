"""A benchmark as one object: how its files are read, the teacher's prompt, the parser of the
teacher's answers, how a label compares with gold, and the label task's metrics.

The four benchmarks of the paper are in `BENCHMARKS`; a custom dataset (`sbs annotate
--dataset jsonl:PATH`) is described by `custom()` from its answer format. Everything that
used to ask "is this svamp?" asks the benchmark instead.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

from sbs_jax import arith, metrics
from sbs_jax.annotate import answer_formats, parsers, prompts
from sbs_jax.annotate.parsers import Parsed
from sbs_jax.data import readers
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.data.readers import Example

MetricFn = Callable[[Sequence[str], Sequence[str]], dict]


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """What the code knows of one dataset.

  Attributes:
    name: the dataset's name (its folder in the data dir and the annotation dir).
    reader: how its released files are read (None for custom data, read from JSONL).
    prompt: the teacher's few-shot prompt.
    parse: (completion, example) -> Parsed: the teacher's rationale and label.
    same_label: (predicted, gold) -> whether a label is right (the teacher's accuracy).
    metric_fns: the label task's metrics (SeqIO's metric_fn(targets, predictions)).
    answer_format: what parsing runs, recorded in the manifest and the stats: the
      benchmark's own parser (its name), or a custom dataset's answer format.
    label_set: the closed set its labels lie in, which rank classification scores
      (`--label_mode rank`); OPEN where the labels are not a closed set (SVAMP's
      equations, custom numbers or text).
  """
  name: str
  reader: readers.Reader | None
  prompt: prompts.Prompt
  parse: Callable[[str, Example], Parsed]
  same_label: Callable[[str, str], bool] = parsers.same_text
  metric_fns: tuple[MetricFn, ...] = (metrics.label_accuracy,)
  answer_format: str = ""
  label_set: answer_formats.LabelSet = answer_formats.OPEN

  def __post_init__(self):
    if not self.answer_format:
      object.__setattr__(self, "answer_format", self.name)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    # The label is the choice's text (the reader's gold, the parser's teacher label).
    Benchmark("cqa", readers.CQA, prompts.CQA, parsers.parse_cqa,
              label_set=answer_formats.CHOICE.label_set),
    Benchmark("svamp", readers.SVAMP, prompts.SVAMP, parsers.parse_svamp,
              same_label=arith.same_value,  # by value: `(3 + 4)` equals `7.0`
              metric_fns=(metrics.label_accuracy, metrics.equation_accuracy)),
    Benchmark("esnli", readers.ESNLI, prompts.ESNLI, parsers.parse_esnli,
              label_set=answer_formats.NLI.label_set),
    Benchmark("anli1", readers.ANLI1, prompts.ANLI1, parsers.parse_anli,
              label_set=answer_formats.NLI.label_set),
)}


def custom(name: str, answer_format: "str | answer_formats.AnswerFormat" = "text",
           answer_regex: str | None = None, stop_regex: str = parsers.DEFAULT_STOP_REGEX,
           prompt: prompts.Prompt = prompts.GENERIC) -> Benchmark:
  """A custom dataset: the generic prompt (or the user's), the generic parser reading the
  answer format. Labels compare exactly: the format has already normalised both sides."""
  fmt = answer_formats.get(answer_format)
  return Benchmark(name, None, prompt,
                   parsers.make_generic_parser(answer_regex, stop_regex, fmt),
                   answer_format=fmt.name, label_set=fmt.label_set)


def metric_fns(dataset: str) -> list[MetricFn]:
  """The label task's metrics of `dataset` (a benchmark's own; label accuracy otherwise)."""
  bench = BENCHMARKS.get(dataset)
  return list(bench.metric_fns if bench else (metrics.label_accuracy,))


def label_set(dataset: str, annotation_dir: str) -> answer_formats.LabelSet:
  """The label set of `dataset`'s label task: a benchmark's own; for custom data, that of
  the answer format `sbs annotate` recorded in the split stats under `annotation_dir`
  (OPEN when the splits were annotated with different formats, or none is recorded)."""
  if dataset in BENCHMARKS:
    return BENCHMARKS[dataset].label_set
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (gs:// paths too)
  formats = set()
  for path in AnnotationDir(annotation_dir).split_stats_files(dataset):
    with tf.io.gfile.GFile(path, "rb") as f:
      try:
        formats.add(json.loads(f.read().decode("utf-8")).get("answer_format"))
      except (ValueError, AttributeError):
        formats.add(None)
  if len(formats) != 1 or formats & {None}:
    return answer_formats.OPEN
  return answer_formats.get(formats.pop()).label_set


def no_label_set(what: str) -> str:
  """Why `--label_mode rank` cannot run on `what`, in one line."""
  return (f"--label_mode rank needs a closed set of labels to score, and {what} has none: "
          "rank classification is for e-SNLI, ANLI, CQA and custom data annotated with "
          "--answer_format choice or nli; use --label_mode greedy")
