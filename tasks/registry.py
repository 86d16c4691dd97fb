"""Registration of every SeqIO task and mixture of one dataset, by one function call.

For a dataset `<ds>` (a benchmark, or a custom dataset annotated by `sbs annotate`):

    sbs_<ds>_label_gt        predict: <input> -> gold label
    sbs_<ds>_label_llm       predict: <input> -> teacher label (gold on validation/test)
    sbs_<ds>_rationale       explain: <input> -> teacher rationale
    sbs_<ds>_standard_gt     <input> -> gold label        (standard finetuning)
    sbs_<ds>_standard_llm    <input> -> teacher label     (standard distillation)
    sbs_<ds>_distill_gt      mixture: label_gt + rationale   (for T5X and our trainer)
    sbs_<ds>_distill_llm     mixture: label_llm + rationale
    sbs_<ds>_distill_gt_paired / _llm_paired
                             both tasks of each record in one example, so that they share
                             a packed batch (our trainer's default for distillation)

Splits: train, train_50, train_25, train_12.5, validation, test (see sbs_jax/data/sources.py).

With several teacher samples per example, label rows stay one per example (its sample-0
record; the teacher's label is the vote) and each kept rationale is a rationale row
(sbs_jax/data/preprocessors.py).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import seqio
import tensorflow as tf

from sbs_jax import metrics, task_kinds
from sbs_jax.annotate import benchmarks
from sbs_jax.data import preprocessors as pp
from sbs_jax.data import vocab as vocab_lib
from sbs_jax.data.sources import AnnotationSource
from sbs_jax.task_kinds import task_names  # re-exported: the names by kind

# Task feature lengths of packed training rows. CQA's paired examples have about 2.9
# encoder tokens per decoder token (8k vocabulary from `sbs vocab`); at 1024 / 352 packed
# rows are 91% / 90% real tokens (see README). Other data may want other lengths (gin).
DEFAULT_FEATURE_LENGTHS = {"inputs": 1024, "targets": 352}
# Per-part caps of a paired example, as the reference caps its sequences.
PART_LENGTHS = {"input_length": 512, "label_length": 64, "rationale_length": 256}


@pp.one_example_each
@seqio.map_over_dataset
@pp.as_graph
def _task_as_vector(example):
  """The scalar `task` id as a vector of one (the `task` feature's rank)."""
  return dict(example, task=tf.reshape(example["task"], [1]))


def _add_task(name: str, **kwargs) -> seqio.Task:
  seqio.TaskRegistry.remove(name)  # re-registering (e.g. another dir) replaces
  return seqio.TaskRegistry.add(name, **kwargs)


def register_dataset(dataset: str, annotation_dir: str | Callable[[], str] | None = None,
                     vocabulary: seqio.Vocabulary | None = None,
                     metric_fns: Sequence[Callable] | None = None,
                     subsample_seed: int = 0) -> dict[str, str]:
  """Registers all tasks and mixtures of `dataset`; returns their names by kind.

  Args:
    dataset: the directory name under the annotation dir (benchmark or custom file stem).
    annotation_dir: where `sbs annotate` wrote records; default: the gin/env setting,
      read when data is first requested.
    vocabulary: default: the SentencePiece model set in gin (`vocabulary_settings.path`).
    metric_fns: label-task metrics; default: the benchmark's (annotate/benchmarks.py), else
      label accuracy.
    subsample_seed: the seed of the train_<pct> subsamples.
  """
  names = task_names(dataset)
  source = AnnotationSource(dataset, annotation_dir or vocab_lib.annotation_dir,
                            subsample_seed=subsample_seed)
  vocabulary = vocabulary or vocab_lib.ConfiguredVocabulary()
  features = {"inputs": seqio.Feature(vocabulary, add_eos=True),
              "targets": seqio.Feature(vocabulary, add_eos=True),
              # An output feature, so that mixtures keep it: which task an example is of.
              # Rank 1 (one id), as seqio's Evaluator measures every feature's length.
              "task": seqio.Feature(seqio.PassThroughVocabulary(3), add_eos=False,
                                    required=False, rank=1)}
  tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim,
              _task_as_vector]
  if metric_fns is None:
    metric_fns = benchmarks.metric_fns(dataset)
  common = dict(source=source, output_features=features,
                postprocess_fn=metrics.strip_postprocessor)

  # Tasks first (the mixtures name them), in the table's order (sbs_jax/task_kinds.py).
  kinds = task_kinds.KINDS.values()
  for kind in kinds:
    if kind.structure != "task":
      continue
    if kind.target == "rationale":
      steps = [functools.partial(pp.rationale_examples, prefix=kind.prefix), *tokenize]
      fns = []
    else:
      steps = [functools.partial(pp.label_examples, label_field=kind.target,
                                 prefix=kind.prefix), *tokenize]
      fns = list(metric_fns)
    _add_task(names[kind.name], preprocessors=steps, metric_fns=fns, **common)
  for kind in kinds:
    if kind.structure == "paired":
      _add_task(names[kind.name], preprocessors=[
          functools.partial(pp.paired_examples, label_field=kind.target, **PART_LENGTHS),
          _task_as_vector], metric_fns=list(metric_fns), **common)
    elif kind.structure == "mixture":
      seqio.MixtureRegistry.remove(names[kind.name])
      seqio.MixtureRegistry.add(names[kind.name], [(names[kind.eval_kind], 1.0),
                                                   (names["rationale"], 1.0)])
  return names
