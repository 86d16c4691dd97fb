"""The figures of `sbs report` (matplotlib, Agg backend): PNG and SVG of each.

- accuracy against training-data percent, one line per method (mean over seeds, each
  seed a dot, the band mean ± standard deviation), the teacher's test accuracy as a
  horizontal line; one figure per model size;
- accuracy against model size (at the largest data percent), when several sizes ran;
- validation accuracy against the step, one line per cell of the largest data percent
  (the methods' learning curves side by side);
- per cell, training curves from metrics.jsonl: label and rationale loss, and validation
  accuracy.
"""

from __future__ import annotations

import os
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from sbs_jax.metrics import mean_std  # pylint: disable=wrong-import-position
from sbs_jax.model.config import size_order  # pylint: disable=wrong-import-position
from sbs_jax.experiments.sweep import SweepDir  # pylint: disable=wrong-import-position

_STYLE = {"standard_finetuning": ("tab:blue", "s"), "standard_distillation": ("tab:green", "^"),
          "distill_gt": ("tab:orange", "D"), "distill_llm": ("tab:red", "o")}
_LABELS = {"standard_finetuning": "standard finetuning",
           "standard_distillation": "standard distillation",
           "distill_gt": "distilling step-by-step (gold labels)",
           "distill_llm": "distilling step-by-step (teacher labels)"}


def _save(fig, path: pathlib.Path) -> list[pathlib.Path]:
  path.parent.mkdir(parents=True, exist_ok=True)
  out = []
  for ext in ("png", "svg"):
    target = path.parent / f"{path.name}.{ext}"  # not with_suffix: 'f12.5' has a dot
    tmp = path.parent / f".{path.name}.tmp.{ext}"
    try:
      fig.savefig(tmp, dpi=110, bbox_inches="tight", format=ext)
      os.replace(tmp, target)  # a figure is replaced whole or not at all
    except BaseException:
      plt.close(fig)
      if tmp.exists():
        tmp.unlink()
      raise
    out.append(target)
  plt.close(fig)
  return out


def _teacher_line(ax, teacher: float | None) -> None:
  if teacher is not None:
    ax.axhline(teacher, color="gray", linestyle="--", linewidth=1,
               label=f"teacher ({teacher:.1f}%)")


def _method_series(ax, cells, metric: str, x_of, methods: list[str]) -> None:
  """One line per method over x (mean), seeds as dots, mean ± std as a band."""
  for method in methods:
    color, marker = _STYLE.get(method, ("black", "x"))
    points: dict[float, list[float]] = {}
    for c in cells:
      value = c.metric("test", metric)
      if c.cell.method == method and value is not None:
        points.setdefault(x_of(c.cell), []).append(value)
    if not points:
      continue
    xs = sorted(points)
    stats = [mean_std(points[x]) for x in xs]
    means = [m for m, _ in stats]
    stds = [s or 0.0 for _, s in stats]
    ax.plot(xs, means, color=color, marker=marker, label=_LABELS.get(method, method))
    ax.fill_between(xs, [m - s for m, s in zip(means, stds)],
                    [m + s for m, s in zip(means, stds)], color=color, alpha=0.15)
    for x in xs:
      ax.scatter([x] * len(points[x]), points[x], color=color, s=10, alpha=0.5)


def accuracy_vs_data(out: pathlib.Path, record: dict, cells, metric: str,
                     teacher: float | None, size: str) -> list[pathlib.Path]:
  """Test accuracy against the training-data percent, for one model size."""
  fig, ax = plt.subplots(figsize=(6, 4))
  _method_series(ax, [c for c in cells if c.cell.size == size], metric,
                 lambda cell: cell.fraction, record["grid"]["methods"])
  _teacher_line(ax, teacher)
  fractions = sorted(record["grid"]["fractions"])
  ax.set_xscale("log", base=2)
  ax.set_xticks(fractions, [f"{f:g}%" for f in fractions])
  ax.minorticks_off()
  ax.set_xlabel("training data used")
  ax.set_ylabel(f"test {metric} (%)")
  title = f"{record['settings']['dataset']}" + (f", {size}" if size else "")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  name = "accuracy_vs_data" + (f"-{size}" if size else "")
  return _save(fig, out / name)


def accuracy_vs_size(out: pathlib.Path, record: dict, cells, metric: str,
                     teacher: float | None) -> list[pathlib.Path]:
  """Test accuracy against model size at the largest data percent."""
  sizes = sorted(record["grid"]["sizes"], key=size_order)
  top = max(record["grid"]["fractions"])
  fig, ax = plt.subplots(figsize=(6, 4))
  _method_series(ax, [c for c in cells if c.cell.fraction == top], metric,
                 lambda cell: sizes.index(cell.size), record["grid"]["methods"])
  _teacher_line(ax, teacher)
  ax.set_xticks(range(len(sizes)), sizes)
  ax.set_xlabel(f"student size ({top:g}% of the training data)")
  ax.set_ylabel(f"test {metric} (%)")
  ax.set_title(record["settings"]["dataset"])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out / "accuracy_vs_size")


def _metric_rows(sweep_dir: pathlib.Path, cell) -> list[dict] | None:
  """The rows of a cell's metrics.jsonl (None if it has none); a line cut by a crash is
  skipped, so the curves stop there."""
  return SweepDir(sweep_dir).model_dir(cell).read_metrics()


def validation_vs_step(out: pathlib.Path, sweep_dir: pathlib.Path, record: dict, cells,
                       metric: str, teacher: float | None, size: str) -> list[pathlib.Path]:
  """Validation accuracy against the step, one line per cell (colour: method), at the
  largest data percent: the methods' learning curves side by side."""
  fraction = max(record["grid"]["fractions"])
  chosen = [c for c in cells if c.cell.size == size and c.cell.fraction == fraction and
            c.status != "missing"]
  if not chosen:
    return []
  fig, ax = plt.subplots(figsize=(6, 4))
  labelled = set()
  for c in sorted(chosen, key=lambda c: (c.cell.method, c.cell.seed)):
    rows = [r for r in _metric_rows(sweep_dir, c.cell) or []
            if r.get("split") == "validation" and metric in r]
    if not rows:
      continue
    method = c.cell.method
    color, marker = _STYLE.get(method, ("black", "x"))
    ax.plot([r["step"] for r in rows], [r[metric] for r in rows], color=color,
            marker=marker, markersize=4, alpha=0.8,
            label=None if method in labelled else _LABELS.get(method, method))
    labelled.add(method)
  _teacher_line(ax, teacher)
  ax.set_xlabel("step")
  ax.set_ylabel(f"validation {metric} (%)")
  ax.set_title(f"{record['settings']['dataset']}, {fraction:g}% of the data"
               + (f", {size}" if size else "") + " (one line per seed)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  name = "validation_vs_step" + (f"-{size}" if size else "")
  return _save(fig, out / name)


def training_curves(out: pathlib.Path, sweep_dir: pathlib.Path, cell,
                    metric: str) -> list[pathlib.Path]:
  """Label and rationale loss, and validation accuracy, of one cell."""
  lines = _metric_rows(sweep_dir, cell)
  if lines is None:
    return []
  train = [l for l in lines if l.get("split") == "train" and "label_loss" in l]
  val = [l for l in lines if l.get("split") == "validation" and metric in l]
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
  steps = [l["step"] for l in train]
  left.plot(steps, [l["label_loss"] for l in train], label="label loss")
  if any(l.get("rationale_tokens", 0) > 0 and "rationale_loss" in l for l in train):
    left.plot(steps, [l.get("rationale_loss", float("nan")) for l in train],
              label="rationale loss")
  left.set_xlabel("step")
  left.set_ylabel("cross-entropy")
  left.legend(fontsize=8)
  left.grid(alpha=0.3)
  right.plot([l["step"] for l in val], [l[metric] for l in val], marker="o", color="tab:red")
  right.set_xlabel("step")
  right.set_ylabel(f"validation {metric} (%)")
  right.grid(alpha=0.3)
  fig.suptitle(cell.name)
  return _save(fig, out / "curves" / cell.name)


def draw_all(sweep_dir, record: dict, cells, metric: str,
             teacher: float | None) -> list[pathlib.Path]:
  """Every figure of the report; returns the files written."""
  sweep_dir = pathlib.Path(sweep_dir)
  out = sweep_dir / "figures"
  drawn = []
  for size in record["grid"]["sizes"]:
    drawn += accuracy_vs_data(out, record, cells, metric, teacher, size)
    drawn += validation_vs_step(out, sweep_dir, record, cells, metric, teacher, size)
  if len(record["grid"]["sizes"]) > 1:
    drawn += accuracy_vs_size(out, record, cells, metric, teacher)
  for c in cells:
    if c.status != "missing":
      drawn += training_curves(out, sweep_dir, c.cell, metric)
  return drawn
