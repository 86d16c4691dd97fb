"""The task kinds of a dataset, as one table: what each trains on, its input prefix, the task
scored at evaluation, the alpha it implies, and the paper's methods that name them.

For a dataset `<ds>` every kind is registered as `sbs_<ds>_<kind>` (tasks/registry.py).
The registry, the trainer (which label task to score, which prefix a served model expects),
`sbs sweep` (method -> task and alpha) and task discovery all read this table, so a task's
kind is looked up, never parsed back out of its name by hand.
"""

from __future__ import annotations

import dataclasses
import re

LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "


@dataclasses.dataclass(frozen=True)
class TaskKind:
  """One kind of task or mixture registered per dataset.

  Attributes:
    name: the suffix of the registered name (`sbs_<ds>_<name>`).
    target: the record field the label side trains on (`label`: gold, `llm_label`: the
      teacher's), or `rationale` for the rationale task.
    prefix: the label side's input prefix (`predict: `, or none for standard training);
      for the rationale task, `explain: `.
    structure: `task` (one SeqIO task), `mixture` (label task + rationale task, as separate
      examples) or `paired` (both tasks of a record in one example).
    eval_kind: the kind whose label task validation and test score (None: none, the
      rationale task has no label).
    alpha: the label loss weight the kind implies (1.0: only labels, 0.0: only rationales),
      None where the run's configured alpha applies (distillation).
  """
  name: str
  target: str
  prefix: str
  structure: str = "task"
  eval_kind: str | None = None
  alpha: float | None = 1.0

  @property
  def trains_rationales(self) -> bool:
    return self.structure != "task" or self.target == "rationale"


KINDS: dict[str, TaskKind] = {k.name: k for k in (
    TaskKind("label_gt", "label", LABEL_PREFIX, eval_kind="label_gt"),
    TaskKind("label_llm", "llm_label", LABEL_PREFIX, eval_kind="label_llm"),
    TaskKind("rationale", "rationale", RATIONALE_PREFIX, alpha=0.0),
    TaskKind("standard_gt", "label", "", eval_kind="standard_gt"),
    TaskKind("standard_llm", "llm_label", "", eval_kind="standard_llm"),
    TaskKind("distill_gt", "label", LABEL_PREFIX, "mixture", "label_gt", None),
    TaskKind("distill_llm", "llm_label", LABEL_PREFIX, "mixture", "label_llm", None),
    TaskKind("distill_gt_paired", "label", LABEL_PREFIX, "paired", "label_gt", None),
    TaskKind("distill_llm_paired", "llm_label", LABEL_PREFIX, "paired", "label_llm", None),
)}

# The paper's four settings (`sbs sweep --methods`) -> the kind each trains.
METHODS: dict[str, str] = {
    "standard_finetuning": "standard_gt",    # gold labels, no rationale
    "standard_distillation": "standard_llm",  # the teacher's labels, no rationale
    "distill_gt": "distill_gt_paired",       # gold labels + the teacher's rationales
    "distill_llm": "distill_llm_paired",     # distilling step-by-step
}

# Longest kinds first, so that `distill_gt_paired` is not read as `distill_gt`.
_NAME = re.compile(r"sbs_(.+)_(" + "|".join(sorted(KINDS, key=len, reverse=True)) + ")")


def task_name(dataset: str, kind: str) -> str:
  """`sbs_<dataset>_<kind>`; an unknown kind is a KeyError."""
  return f"sbs_{dataset}_{KINDS[kind].name}"


def task_names(dataset: str) -> dict[str, str]:
  """Every registered name of `dataset`, by kind, in the table's order."""
  return {k: task_name(dataset, k) for k in KINDS}


def split_name(name: str) -> tuple[str, TaskKind] | None:
  """`sbs_<ds>_<kind>` -> (ds, its kind); None for a name not of that form."""
  m = _NAME.fullmatch(name)
  return (m.group(1), KINDS[m.group(2)]) if m else None


def method_kind(method: str) -> TaskKind:
  """The kind a `sbs sweep` method trains; an unknown method is a KeyError."""
  return KINDS[METHODS[method]]


def eval_task(name: str) -> str:
  """The label task scored when training `name`: sbs_<ds>_distill_llm[_paired] ->
  sbs_<ds>_label_llm; a label or standard task scores itself. ValueError where there is none
  (the rationale task, or a name not of the `sbs_<ds>_<kind>` form)."""
  found = split_name(name)
  if found is None or found[1].eval_kind is None:
    raise ValueError(f"cannot tell the label task of {name!r}: set DataConfig.eval_task")
  dataset, kind = found
  return task_name(dataset, kind.eval_kind)


def label_prefix(label_task: str) -> str:
  """The input prefix of a label task's examples (what `sbs predict` puts before an input):
  none for standard training, `predict: ` otherwise, also for a task of another name
  (a label task registered by hand, as the multi-task default)."""
  found = split_name(label_task)
  return found[1].prefix if found else LABEL_PREFIX
