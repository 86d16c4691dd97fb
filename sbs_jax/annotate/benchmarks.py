"""A benchmark as one object: how its files are read, the teacher's prompt, the parser of the
teacher's answers, how a label compares with gold, and the label task's metrics.

The four benchmarks of the paper are in `BENCHMARKS`; a custom dataset (`sbs annotate
--dataset jsonl:PATH`) is described by `custom()` from its answer format. Everything that
used to ask "is this svamp?" asks the benchmark instead.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from sbs_jax import arith, metrics
from sbs_jax.annotate import answer_formats, parsers, prompts
from sbs_jax.annotate.parsers import Parsed
from sbs_jax.data import readers
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
  """
  name: str
  reader: readers.Reader | None
  prompt: prompts.Prompt
  parse: Callable[[str, Example], Parsed]
  same_label: Callable[[str, str], bool] = parsers.same_text
  metric_fns: tuple[MetricFn, ...] = (metrics.label_accuracy,)
  answer_format: str = ""

  def __post_init__(self):
    if not self.answer_format:
      object.__setattr__(self, "answer_format", self.name)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("cqa", readers.CQA, prompts.CQA, parsers.parse_cqa),
    Benchmark("svamp", readers.SVAMP, prompts.SVAMP, parsers.parse_svamp,
              same_label=arith.same_value,  # by value: `(3 + 4)` equals `7.0`
              metric_fns=(metrics.label_accuracy, metrics.equation_accuracy)),
    Benchmark("esnli", readers.ESNLI, prompts.ESNLI, parsers.parse_esnli),
    Benchmark("anli1", readers.ANLI1, prompts.ANLI1, parsers.parse_anli),
)}


def custom(name: str, answer_format: "str | answer_formats.AnswerFormat" = "text",
           answer_regex: str | None = None, stop_regex: str = parsers.DEFAULT_STOP_REGEX,
           prompt: prompts.Prompt = prompts.GENERIC) -> Benchmark:
  """A custom dataset: the generic prompt (or the user's), the generic parser reading the
  answer format. Labels compare exactly: the format has already normalised both sides."""
  fmt = answer_formats.get(answer_format)
  return Benchmark(name, None, prompt,
                   parsers.make_generic_parser(answer_regex, stop_regex, fmt),
                   answer_format=fmt.name)


def metric_fns(dataset: str) -> list[MetricFn]:
  """The label task's metrics of `dataset` (a benchmark's own; label accuracy otherwise)."""
  bench = BENCHMARKS.get(dataset)
  return list(bench.metric_fns if bench else (metrics.label_accuracy,))
