"""The length check: how many training rows `task_feature_lengths` cut, refused over a share.

SeqIO trims every feature to its length; a cut row loses its end (a paired row, its explain
part's end and EOS), and the student learns the cut. `sbs train` (sbs_jax/train/loop.py) and
T5X under our gin files (sbs_jax/t5x_model.py) both run this check before training. This
module registers no gin configurables, so T5X can import it after its config is locked.
"""

from __future__ import annotations

import json

import numpy as np
import seqio
import tensorflow as tf

from sbs_jax.data.preprocessors import as_graph
from sbs_jax.errors import SbsError


def tasks_of(name: str) -> list:
  """The tasks of a task or mixture."""
  task = seqio.get_mixture_or_task(name)
  return list(task.tasks) if isinstance(task, seqio.Mixture) else [task]


def _fitting(length: int) -> int:
  """A row length that holds `length` tokens, rounded up to a multiple of 8."""
  return -(-length // 8) * 8


def example_lengths(cfg) -> dict:
  """Per task of the mixture, over the first `length_check_examples` training examples
  after preprocessing: (input tokens, target tokens, parts cut) as int32 arrays, one entry
  per example (parts cut: a paired example's parts trimmed to their caps, else 0). `cfg`
  as for `check_lengths`."""
  out = {}
  for task in tasks_of(cfg.mixture_or_task):
    ds = task.get_dataset(sequence_length=None, split=cfg.train_split, shuffle=False,
                          num_epochs=1).take(cfg.length_check_examples)
    ds = ds.map(as_graph(lambda ex: (tf.size(ex["inputs"]), tf.size(ex["targets"]),
                                     tf.cast(ex.get("parts_cut", 0), tf.int32))),
                num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
    chunks = list(ds.as_numpy_iterator())
    out[task.name] = tuple(
        np.concatenate([c[i] for c in chunks]).astype(np.int32) if chunks
        else np.zeros(0, np.int32) for i in range(3))
  return out


# The gin bindings a refusal names: `sbs train`'s, or (sbs_jax/t5x_model.py) T5X's.
OUR_FLAGS = {"lengths": "DataConfig.task_feature_lengths",
             "share": "DataConfig.max_truncated_share"}


def cut_mask(inputs: np.ndarray, targets: np.ndarray, parts_cut: np.ndarray,
             lengths: dict) -> np.ndarray:
  """Which examples (per-example arrays as `example_lengths` gives them) rows of `lengths`
  cut: a paired example whose parts were trimmed to their caps, or a feature longer than its
  row. The one cut rule of the length check and of the row-length proposal."""
  return (parts_cut > 0) | (inputs > lengths["inputs"]) | (targets > lengths["targets"])


def check_lengths(cfg, flags: dict | None = None, measured: dict | None = None) -> dict:
  """Counts the training examples that `task_feature_lengths` (or a paired example's part
  caps) cut, over the first `length_check_examples` of each task of the mixture. `cfg`:
  a DataConfig, or anything with its fields mixture_or_task, train_split,
  task_feature_lengths, max_truncated_share and length_check_examples. `measured`: the
  result of `example_lengths(cfg)` when the caller already holds it (it is read otherwise).

  A cut example loses its end (a paired one, its explain part's end and EOS), which the
  student then learns; so every cut is counted (returned, and reported by the trainer),
  and a share over `max_truncated_share` is refused with the lengths that fit, named as
  the gin bindings in `flags` (default OUR_FLAGS) set them.
  """
  flags = flags or OUR_FLAGS
  lengths = cfg.task_feature_lengths
  report = {}
  for name, (inputs, targets, parts) in (measured or example_lengths(cfg)).items():
    checked = len(inputs)
    parts_cut = int((parts > 0).sum())
    cut = int(cut_mask(inputs, targets, parts, lengths).sum())
    longest = {"inputs": int(inputs.max(initial=0)), "targets": int(targets.max(initial=0))}
    report[name] = {"checked": checked, "cut": cut, "parts_cut": parts_cut,
                    "longest": longest}
  for name, r in report.items():
    if r["checked"] and r["cut"] / r["checked"] > cfg.max_truncated_share:
      fit = {k: max(lengths[k], _fitting(v)) for k, v in r["longest"].items()}
      why = (f"the lengths that fit every checked row: "
             f"--gin.{flags['lengths']}='{json.dumps(fit)}'"
             if r["cut"] > r["parts_cut"] else
             "its paired parts are longer than their caps (tasks.registry.PART_LENGTHS)")
      raise SbsError(
          f"{flags['lengths']} = {json.dumps(lengths)} cut {r['cut']:,} of "
          f"{r['checked']:,} checked training examples of {name} "
          f"({100 * r['cut'] / r['checked']:.0f}%, over {flags['share']} = "
          f"{cfg.max_truncated_share:g}; longest: inputs {r['longest']['inputs']}, targets "
          f"{r['longest']['targets']} tokens): {why}, or allow the cut with "
          f"--gin.{flags['share']}=1.0")
  return report


def length_note(report: dict, flags: dict | None = None) -> str | None:
  """One line on the cut training examples of `check_lengths`' report; None if none."""
  cut = {name: r for name, r in report.items() if r["cut"]}
  if not cut:
    return None
  parts = "; ".join(f"{name}: {r['cut']:,} of {r['checked']:,} checked "
                    f"({100 * r['cut'] / r['checked']:.1f}%)" for name, r in cut.items())
  return (f"note: {(flags or OUR_FLAGS)['lengths']} (or paired part caps) cut training "
          f"examples, which lose their ends: {parts}")


def fitted_lengths(cfg, report: dict) -> dict:
  """`cfg.task_feature_lengths` cut down to the longest checked training example of every
  task (a multiple of 8), for DataConfig.fit_lengths. Refuses when the check did not read a
  task's whole split: a longer row beyond it would then be cut."""
  partial = [name for name, r in report.items() if r["checked"] >= cfg.length_check_examples]
  if partial:
    raise SbsError(
        f"DataConfig.fit_lengths: the length check read only the first "
        f"{cfg.length_check_examples:,} training examples of {', '.join(partial)}, so a "
        "longer one may follow; raise --gin.DataConfig.length_check_examples above the "
        "split's size, or set --gin.DataConfig.fit_lengths=False")
  lengths = cfg.task_feature_lengths
  longest = {k: max((r["longest"][k] for r in report.values()), default=0) for k in lengths}
  return {k: min(lengths[k], max(8, _fitting(longest[k]))) for k in lengths}
