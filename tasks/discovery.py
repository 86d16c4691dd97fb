"""Every dataset in the annotation dir, registered by name; task lookup with a helpful error.

`sbs annotate` writes `<annotation dir>/<name>/<split>.tfrecord-*`; each such `<name>` (a
benchmark or a custom file's stem) gets the `sbs_<name>_*` tasks of `register_dataset`.
`import tasks` registers the configured dir's datasets (T5X imports it after parsing gin);
`sbs train` / `sbs eval` do it again once their gin files are parsed.
"""

from __future__ import annotations

import collections
import difflib

import seqio

from sbs_jax.data import vocab as vocab_lib
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.annotate.benchmarks import BENCHMARKS
from sbs_jax.errors import SbsError
from sbs_jax import task_kinds
from tasks.registry import register_dataset

VOCABULARY = vocab_lib.ConfiguredVocabulary()  # shared by all tasks registered here
_KINDS = tuple(task_kinds.KINDS)


def annotated_datasets(annotation_dir: str) -> list[str]:
  """Names of the subdirectories of `annotation_dir` holding annotation records."""
  return AnnotationDir(annotation_dir).datasets()


def register_annotation_dir(annotation_dir: str | None = None) -> list[str]:
  """Registers the tasks of every dataset with records in `annotation_dir`; returns the names.

  Args:
    annotation_dir: where `sbs annotate` wrote; default: the configured dir (gin
      `annotation_dir.path`, else $SBS_ANNOTATION_DIR), which the tasks then read at first
      use, as the benchmarks' tasks do.
  """
  configured = annotation_dir is None
  path = vocab_lib.annotation_dir() if configured else annotation_dir
  names = annotated_datasets(path)
  for name in names:
    if configured and name in BENCHMARKS:
      continue  # registered at import with the configured dir already
    register_dataset(name, annotation_dir=vocab_lib.annotation_dir if configured else path,
                     vocabulary=VOCABULARY)
  return names


def registered_summary() -> str:
  """The registered sbs_* names, grouped: 'sbs_{cqa,my_data}_{label_gt,...}'."""
  registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  kinds_by_dataset = collections.defaultdict(list)
  for name in sorted(registered):
    found = task_kinds.split_name(name)
    if found:
      kinds_by_dataset[found[0]].append(found[1].name)
  datasets_by_kinds = collections.defaultdict(list)
  for dataset, kinds in kinds_by_dataset.items():
    datasets_by_kinds[tuple(k for k in _KINDS if k in kinds)].append(dataset)
  groups = []
  for kinds, datasets in sorted(datasets_by_kinds.items(), key=lambda kv: kv[1]):
    names = datasets[0] if len(datasets) == 1 else "{" + ",".join(sorted(datasets)) + "}"
    groups.append(f"sbs_{names}_{{{','.join(kinds)}}}")
  return ", ".join(groups) or "none"


def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture `name`, else one SbsError listing what is registered."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    pass
  registered = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  close = difflib.get_close_matches(name, registered, n=1, cutoff=0.85)
  hint = f"did you mean {close[0]!r}? " if close else ""
  path = vocab_lib.annotation_dir()
  found = annotated_datasets(path)
  raise SbsError(
      f"no task or mixture {name!r}: {hint}registered: {registered_summary()}. Datasets are "
      f"the subdirectories of the annotation dir {path} with records "
      f"({', '.join(found) if found else 'none there'}; set it with "
      f"--gin.annotation_dir.path or $SBS_ANNOTATION_DIR); add yours with `sbs annotate "
      f"--dataset jsonl:PATH --out_dir {path}`")
