"""`sbs report SWEEP_DIR`: the sweep's table and figures, from each cell's results.json.

Writes, in the sweep dir:
    results.csv    one row per cell of the grid (status done / partial / missing)
    results.md     mean and standard deviation over seeds per (method, data %, size), the
                   teacher's accuracy, then every cell, then the cells still missing
    figures/accuracy_vs_data[-<size>].{png,svg}   test accuracy against training data
    figures/accuracy_vs_size.{png,svg}            when several sizes ran
    figures/curves/<cell>.{png,svg}               label and rationale loss, validation
                                                  accuracy, from metrics.jsonl
Accuracies are percents (0-100). The standard deviation is the sample one (n - 1) and is
left blank for a single seed. A sweep dir holding cells of another dataset, other shared
settings or other gin contents is refused: one table never mixes two experiments. Every
check (the metric, damaged files) runs before anything is written, and each output replaces
the old one whole (a temporary file renamed over it).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import statistics

from sbs_jax import environment
from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.experiments import sweep as sweep_lib
from sbs_jax.metrics import mean_std

# The label metrics the trainer writes to results.json, percents (sbs_jax/metrics.py); a
# task's own metric_fns may add other "*accuracy" ones, taken when the results hold them.
KNOWN_METRICS = ("accuracy", "equation_accuracy")


@dataclasses.dataclass
class CellResult:
  """One cell of the grid and what its model dir holds."""
  cell: sweep_lib.Cell
  status: str  # done, partial (started, no results.json yet) or missing
  results: dict | None

  def metric(self, split: str, name: str) -> float | None:
    scores = (self.results or {}).get(split) or {}
    value = scores.get(name)
    return None if value is None else float(value)


def _check_cell_file(sweep_dir: pathlib.Path, record: dict, cell_file: pathlib.Path) -> None:
  """Refuses a cell made with another dataset, other shared settings or other gin contents."""
  try:
    info = json.loads(cell_file.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError, OSError) as e:
    raise SbsError(f"{cell_file}: not JSON ({e}); it is rewritten when the cell runs: rerun "
                   "the same `sbs sweep` command, or delete the file if the cell never "
                   "ran") from None
  if not isinstance(info, dict):
    raise SbsError(f"{cell_file}: expected a JSON object (the cell's record); rerun the "
                   "same `sbs sweep` command, which rewrites it")
  settings = record["settings"]
  if "gin_sha256" not in info and isinstance(info.get("settings"), dict):
    # written before gin files were resolved and pinned: compare them resolved
    info = dict(info, settings=dict(
        info["settings"], gin_files=sweep_lib._old_gin_files(  # pylint: disable=protected-access
            info["settings"].get("gin_files") or [])))
  pinned = record.get("gin_sha256") or {}
  for name, digest in (info.get("gin_sha256") or {}).items():
    if name in pinned and pinned[name] != digest:
      raise SbsError(f"{sweep_dir} mixes gin contents: {cell_file.stem} ran {name} with "
                     f"sha256 {digest[:12]}..., {sweep_lib.SWEEP_FILE} pins "
                     f"{pinned[name][:12]}...; rerun that cell in a fresh sweep dir")
  if info.get("dataset") != settings["dataset"]:
    raise SbsError(f"{sweep_dir} mixes datasets: {cell_file.stem} is "
                   f"{info.get('dataset')!r}, the sweep {settings['dataset']!r}; report "
                   "each sweep dir on its own")
  if info.get("settings") != settings:
    diff = [k for k in settings if (info.get("settings") or {}).get(k) != settings[k]]
    raise SbsError(f"{sweep_dir} mixes settings: {cell_file.stem} differs from "
                   f"{sweep_lib.SWEEP_FILE} in {', '.join(diff) or 'its keys'}; report "
                   "each sweep dir on its own")


def collect(sweep_dir) -> tuple[dict, list[CellResult]]:
  """The sweep record and every cell of its grid with its status and results."""
  sweep_dir = pathlib.Path(sweep_dir)
  sweep = sweep_lib.SweepDir(sweep_dir)
  record = sweep.load()
  for cell_file in sweep.cell_records():
    _check_cell_file(sweep_dir, record, cell_file)
  out = []
  for cell in sweep_lib.cells(record["grid"]):
    results = sweep.read_results(cell)  # one line for a damaged file
    if results is not None:
      out.append(CellResult(cell, "done", results))
    else:
      started = sweep.cell_file(cell, ".json").exists()
      out.append(CellResult(cell, "partial" if started else "missing", None))
  return record, out


def teacher_stats_path(settings: dict, sweep_dir=None) -> pathlib.Path | None:
  """Where the teacher's test stats are: under the annotation dir the sweep recorded, or,
  when that dir is gone (a sweep archived or copied elsewhere, as launch/archive_sweep.sh
  does), under `annotations/` beside the sweep dir, the layout `sbs synthetic prepare` and
  launch/controlled_grid.sh make. None if neither holds them."""
  def stats(annotation_dir) -> pathlib.Path:
    return pathlib.Path(AnnotationDir(annotation_dir).stats_file(settings["dataset"], "test"))

  recorded = stats(settings["annotation_dir"])
  if recorded.exists():
    return recorded
  if sweep_dir is not None and not pathlib.Path(settings["annotation_dir"]).exists():
    beside = stats(pathlib.Path(sweep_dir).parent / "annotations")
    if beside.exists():
      return beside
  return None


def teacher_accuracy(settings: dict, sweep_dir=None) -> float | None:
  """The teacher's test accuracy in percent, from `sbs annotate`'s stats (None if absent)."""
  path = teacher_stats_path(settings, sweep_dir)
  if path is None:
    return None
  try:
    value = json.loads(path.read_text(encoding="utf-8")).get("teacher_accuracy")
    return None if value is None else float(value)
  except (ValueError, TypeError, AttributeError, OSError, UnicodeDecodeError) as e:
    raise SbsError(f"{path}: not the stats `sbs annotate` writes ({e}); annotate the test "
                   "split again, or move the file away to report without the teacher") from None


def check_metric(metric: str, cells: list[CellResult]) -> None:
  """A label metric the results hold, in percent; refused (one line) before anything is
  written, so that a typo never replaces a good table with an empty one."""
  held = sorted({k for c in cells if c.results for split in ("validation", "test")
                 for k in (c.results.get(split) or {})
                 if isinstance(k, str) and k.endswith("accuracy")})
  if metric not in KNOWN_METRICS and metric not in held:
    raise SbsError(f"--metric {metric}: not a label accuracy; use one of "
                   f"{', '.join(sorted(set(KNOWN_METRICS) | set(held)))}")
  done = [c for c in cells if c.status == "done"]
  if done and metric not in held:
    raise SbsError(f"--metric {metric}: no finished cell's results hold it (they hold "
                   f"{', '.join(held) or 'no accuracy'}); nothing was written")


def write_csv(path, cells: list[CellResult], metric: str) -> None:
  """One row per cell of the grid."""
  with files.atomic_file(path, newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["cell", "method", "fraction", "size", "seed", "status", "best_step",
                f"validation_{metric}", f"test_{metric}"])
    for c in cells:
      val, test = c.metric("validation", metric), c.metric("test", metric)
      w.writerow([c.cell.name, c.cell.method, f"{c.cell.fraction:g}", c.cell.size,
                  c.cell.seed, c.status, (c.results or {}).get("best_step", ""),
                  "" if val is None else f"{val:.2f}", "" if test is None else f"{test:.2f}"])


@dataclasses.dataclass
class Group:
  """The seeds of one (method, fraction, size)."""
  method: str
  fraction: float
  size: str
  test: list[float]
  validation: list[float]
  best_steps: list[int]
  seeds: int  # in the grid


def group(cells: list[CellResult], metric: str) -> list[Group]:
  """Finished cells grouped over seeds, in grid order."""
  groups: dict[tuple, Group] = {}
  for c in cells:
    key = (c.cell.method, c.cell.fraction, c.cell.size)
    g = groups.setdefault(key, Group(*key, [], [], [], 0))
    g.seeds += 1
    if c.status != "done":
      continue
    for split, values in (("test", g.test), ("validation", g.validation)):
      value = c.metric(split, metric)
      if value is not None:
        values.append(value)
    g.best_steps.append(int(c.results["best_step"]))
  return list(groups.values())


def cut_rows(results: dict | None) -> tuple[int, int] | None:
  """(cut, checked) training examples of a cell's length check, over its tasks; None for a
  cell without one (not finished, or trained before the check existed)."""
  check = (results or {}).get("length_check")
  if not check or not check.get("tasks"):
    return None
  tasks = check["tasks"].values()
  return sum(t["cut"] for t in tasks), sum(t["checked"] for t in tasks)


def _cut(results: dict | None) -> str:
  got = cut_rows(results)
  if got is None:
    return "-"
  cut, checked = got
  return f"{cut:,} of {checked:,}" + (f" ({100 * cut / checked:.1f}%)" if cut else "")


def _pct(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "-"
  return f"{mean:.1f}%" + (f" ± {std:.1f}" if std is not None else "")


def environment_note(cells: list[CellResult]) -> list[str]:
  """Lines saying which packages differed between the cells' runs (results.json's
  `environment`), or none: cells computed with other versions may differ for that alone."""
  diff = environment.differing({c.cell.name: (c.results or {}).get("environment")
                                for c in cells if c.results})
  if not diff:
    return []
  parts = []
  for name, by_cell in diff.items():
    groups: dict[str, list[str]] = {}
    for cell, version in by_cell.items():
      groups.setdefault(version, []).append(cell)
    # The most common version first, then the odd ones, each with the cells that ran it.
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    parts.append(f"{name} " + " vs ".join(
        f"{v} ({len(cs)} {'cell' if len(cs) == 1 else 'cells'}: {', '.join(cs[:3])}"
        f"{', ...' if len(cs) > 3 else ''})" for v, cs in ordered))
  return ["", "**Cells ran under different package versions**, so their numbers may differ "
          "for that alone (rerun the odd ones in one environment to compare): " +
          "; ".join(parts) + "."]


def write_markdown(path, record: dict, cells: list[CellResult], metric: str,
                   teacher: float | None) -> None:
  """The table of means and standard deviations, every cell, and what is missing."""
  settings = record["settings"]
  done = sum(c.status == "done" for c in cells)
  lines = [f"# Sweep: {settings['dataset']}", "",
           f"{done} of {len(cells)} cells done. Metric: label {metric} (percent), mean ± "
           "standard deviation over the seeds done; best step chosen on validation.", "",
           "Teacher (test): " + (f"{teacher:.1f}%" if teacher is not None
                                 else "unknown (no test.stats.json)"), "",
           "Shared settings: " + "; ".join(
               f"{k} = {v}" for k, v in settings.items() if v not in ([], "", None)), "",
           "| method | data | size | seeds | test | validation | best step |",
           "|---|---:|---|---:|---:|---:|---:|"]
  for g in group(cells, metric):
    steps = f"{statistics.fmean(g.best_steps):.0f}" if g.best_steps else "-"
    lines.append(f"| {g.method} | {g.fraction:g}% | {g.size or '-'} | "
                 f"{len(g.best_steps)}/{g.seeds} | {_pct(*mean_std(g.test))} | "
                 f"{_pct(*mean_std(g.validation))} | {steps} |")
  lines += ["", "## Cells", "", "Cut rows: training examples that the feature lengths cut "
            "(they lose their ends, EOS included), of those the trainer checked.", "",
            "| cell | status | best step | validation | test | cut rows |",
            "|---|---|---:|---:|---:|---:|"]
  for c in cells:
    val, test = c.metric("validation", metric), c.metric("test", metric)
    lines.append(f"| {c.cell.name} | {c.status} | {(c.results or {}).get('best_step', '-')} "
                 f"| {_pct(val, None)} | {_pct(test, None)} | {_cut(c.results)} |")
  cut = [c.cell.name for c in cells if (cut_rows(c.results) or (0, 0))[0]]
  if cut:
    lines += ["", f"Cells whose training rows were cut ({len(cut)}): " + ", ".join(cut) +
              "; their results hold `length_check` per task."]
  lines += environment_note(cells)
  missing = [c.cell.name for c in cells if c.status != "done"]
  if missing:
    lines += ["", f"Not finished ({len(missing)}): " + ", ".join(missing)]
  with files.atomic_file(path, encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def write_report(sweep_dir, metric: str = "accuracy") -> tuple[list[CellResult], list]:
  """Writes results.csv, results.md and the figures of a sweep dir; returns its cells and
  the figure files."""
  from sbs_jax.experiments import figures  # pylint: disable=import-outside-toplevel
  sweep_dir = pathlib.Path(sweep_dir)
  record, cells = collect(sweep_dir)
  check_metric(metric, cells)
  teacher = teacher_accuracy(record["settings"], sweep_dir)
  try:
    write_csv(sweep_dir / "results.csv", cells, metric)
    write_markdown(sweep_dir / "results.md", record, cells, metric, teacher)
    return cells, figures.draw_all(sweep_dir, record, cells, metric, teacher)
  except OSError as e:
    raise SbsError(f"cannot write the report in {sweep_dir}: {e.strerror} "
                   f"({e.filename}); make the sweep dir writable, or copy it and report "
                   "the copy") from None
