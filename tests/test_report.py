"""`sbs report`: one row per cell, right means and deviations, missing cells, valid figures."""

import argparse
import csv
import json

import pytest

from sbs_jax.errors import SbsError
from sbs_jax import environment, metrics
from sbs_jax.commands import report as report_command
from sbs_jax.experiments import report, sweep
from sbs_jax.model import config
from tests.helpers.cli import run_sbs_here

GRID = {"methods": ["standard_finetuning", "distill_llm"], "fractions": [12.5, 100.0],
        "sizes": [""], "seeds": [0, 1, 2]}
# test accuracy by (method, fraction): one value per seed.
TEST_ACC = {("standard_finetuning", 12.5): [10.0, 20.0, 30.0],
            ("standard_finetuning", 100.0): [40.0, 40.0, 46.0],
            ("distill_llm", 12.5): [50.0, 52.0, 60.0],
            ("distill_llm", 100.0): [70.0, 80.0, 90.0]}


def _settings(tmp_path, dataset="marbles"):
  return {"dataset": dataset, "alpha": 0.5, "annotation_dir": str(tmp_path / "ann"),
          "vocab": str(tmp_path / "spm.model"), "gin_files": ["overlays/tiny_cpu.gin"],
          "bindings": ["TRAIN_STEPS=10"]}


def _write_cell(sweep_dir, settings, cell, test, finished=True, length_check=None,
                environment=None):
  cell_dir = sweep_dir / cell.name
  cell_dir.mkdir(parents=True)
  sweep.cell_file(sweep_dir, cell, ".json").parent.mkdir(exist_ok=True)
  sweep.cell_file(sweep_dir, cell, ".json").write_text(json.dumps(
      {"dataset": settings["dataset"], **cell.to_json(), "settings": settings}))
  lines = [{"step": s, "split": "train", "label_loss": 2.0 / s, "rationale_loss": 3.0 / s,
            "rationale_tokens": 10.0, "loss": 1.0} for s in (1, 2, 3)]
  lines.append({"step": 3, "split": "validation", "accuracy": test - 1.0})
  (cell_dir / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  if finished:
    (cell_dir / "results.json").write_text(json.dumps(
        {"best_step": 3, "validation": {"accuracy": test - 1.0},
         "test": {"accuracy": test, "examples": 100},
         **({"length_check": length_check} if length_check else {}),
         **({"environment": environment} if environment else {})}))


@pytest.fixture
def sweep_dir(tmp_path):
  """A finished sweep: 2 methods x 2 fractions x 3 seeds, teacher at 77.5%."""
  settings = _settings(tmp_path)
  (tmp_path / "ann" / "marbles").mkdir(parents=True)
  (tmp_path / "ann" / "marbles" / "test.stats.json").write_text(
      json.dumps({"teacher_accuracy": 77.5}))
  out = tmp_path / "sweep"
  sweep.record_sweep(out, settings, GRID)
  for cell in sweep.cells(GRID):
    _write_cell(out, settings, cell, TEST_ACC[(cell.method, cell.fraction)][cell.seed])
  return out


def _report(sweep_dir):
  """`sbs report SWEEP_DIR`, in this process (the CLI's exit codes: test_mixed_grids...)."""
  return report_command.main(argparse.Namespace(sweep_dir=str(sweep_dir), metric="accuracy"))


def _csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_table_has_one_row_per_cell_and_right_mean_std(sweep_dir):
  assert _report(sweep_dir) == 0
  rows = _csv_rows(sweep_dir / "results.csv")
  assert sorted(r["cell"] for r in rows) == sorted(c.name for c in sweep.cells(GRID))
  row = next(r for r in rows if r["cell"] == "distill_llm-f12.5-s2")
  assert (row["status"], row["test_accuracy"], row["validation_accuracy"]) == (
      "done", "60.00", "59.00")
  md = (sweep_dir / "results.md").read_text()
  # [10, 20, 30]: mean 20, sample std 10; [40, 40, 46]: mean 42, std 3.46.
  assert "| standard_finetuning | 12.5% | - | 3/3 | 20.0% ± 10.0 | 19.0% ± 10.0 | 3 |" in md
  assert "| standard_finetuning | 100% | - | 3/3 | 42.0% ± 3.5 |" in md
  assert "| distill_llm | 100% | - | 3/3 | 80.0% ± 10.0 |" in md
  assert "Teacher (test): 77.5%" in md
  assert "Not finished" not in md


def test_mean_std():
  assert metrics.mean_std([10.0, 20.0, 30.0]) == (20.0, 10.0)
  assert metrics.mean_std([5.0]) == (5.0, None)
  assert metrics.mean_std([]) == (None, None)


def test_cut_training_rows_are_shown_per_cell(tmp_path):
  settings = _settings(tmp_path)
  out = tmp_path / "sweep"
  sweep.record_sweep(out, settings, GRID)
  checks = {"distill_llm-f100-s1": {"marbles_paired": {"checked": 400, "cut": 30,
                                                       "parts_cut": 30}},
            "standard_finetuning-f100-s1": {"marbles_gt": {"checked": 400, "cut": 0,
                                                           "parts_cut": 0}}}
  for cell in sweep.cells(GRID):
    tasks = checks.get(cell.name)
    _write_cell(out, settings, cell, TEST_ACC[(cell.method, cell.fraction)][cell.seed],
                length_check={"task_feature_lengths": {"inputs": 80, "targets": 32},
                              "tasks": tasks} if tasks else None)
  assert _report(out) == 0
  md = (out / "results.md").read_text()
  row = lambda name: next(l for l in md.splitlines() if l.startswith(f"| {name} |"))
  assert row("distill_llm-f100-s1").endswith("| 30 of 400 (7.5%) |")
  assert row("standard_finetuning-f100-s1").endswith("| 0 of 400 |")
  assert row("distill_llm-f100-s0").endswith("| - |")  # no length check in its results
  assert "Cells whose training rows were cut (1): distill_llm-f100-s1;" in md


def test_cells_run_under_other_package_versions_are_named(tmp_path):
  settings = _settings(tmp_path)
  out = tmp_path / "sweep"
  sweep.record_sweep(out, settings, GRID)
  now = environment.describe()
  older = {"versions": dict(now["versions"], jaxlib="0.9.0")}
  for i, cell in enumerate(sweep.cells(GRID)):
    _write_cell(out, settings, cell, TEST_ACC[(cell.method, cell.fraction)][cell.seed],
                environment=older if i == 2 else now if i < 6 else None)
  assert _report(out) == 0
  md = (out / "results.md").read_text()
  odd = sweep.cells(GRID)[2].name
  assert "**Cells ran under different package versions**" in md
  assert f"jaxlib {now['versions']['jaxlib']} (5 cells: " in md  # the majority first
  assert f" vs 0.9.0 (1 cell: {odd})." in md
  assert md.count("different package versions") == 1 and "python" not in md.split(
      "different package versions")[1]  # only what differs is named

  again = tmp_path / "same"
  sweep.record_sweep(again, settings, GRID)
  for cell in sweep.cells(GRID):
    _write_cell(again, settings, cell, 50.0, environment=now)
  assert _report(again) == 0
  assert "different package versions" not in (again / "results.md").read_text()


def test_half_finished_sweep_reports_what_it_has(tmp_path):
  settings = _settings(tmp_path)
  out = tmp_path / "sweep"
  sweep.record_sweep(out, settings, GRID)
  all_cells = sweep.cells(GRID)
  for cell in all_cells[:5]:
    _write_cell(out, settings, cell, TEST_ACC[(cell.method, cell.fraction)][cell.seed])
  _write_cell(out, settings, all_cells[5], 1.0, finished=False)  # interrupted
  assert _report(out) == 0
  status = {r["cell"]: r["status"] for r in _csv_rows(out / "results.csv")}
  assert len(status) == len(all_cells)
  assert [status[c.name] for c in all_cells] == ["done"] * 5 + ["partial"] + ["missing"] * 6
  md = (out / "results.md").read_text()
  assert "5 of 12 cells done" in md
  assert f"Not finished (7): {all_cells[5].name}" in md
  # Cells run seed by seed: seed 0 is done everywhere, seed 1 only for standard at 12.5%.
  assert "| standard_finetuning | 12.5% | - | 2/3 | 15.0% ± 7.1 |" in md
  assert "| distill_llm | 12.5% | - | 1/3 | 50.0% |" in md
  assert "| distill_llm | 100% | - | 1/3 | 70.0% |" in md
  assert "| standard_finetuning | 100% | - | 0/3 | - | - | - |" not in md
  assert "unknown (no test.stats.json)" in md


def test_figures_are_valid_png(sweep_dir):
  import matplotlib.image
  record, cells = report.collect(sweep_dir)
  from sbs_jax.experiments import figures
  drawn = figures.draw_all(sweep_dir, record, cells, "accuracy", 77.5)
  pngs = [p for p in drawn if p.suffix == ".png"]
  assert {p.name for p in pngs} == {"accuracy_vs_data.png", "validation_vs_step.png"} | {
      f"{c.name}.png" for c in sweep.cells(GRID)}
  for path in pngs:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
  assert all(p.with_suffix(".svg").read_text().lstrip().startswith("<?xml") for p in pngs)


def test_several_sizes_draw_accuracy_vs_size(tmp_path):
  grid = dict(GRID, sizes=["small", "tiny"], seeds=[0])
  settings = _settings(tmp_path)
  out = tmp_path / "sweep"
  sweep.record_sweep(out, settings, grid)
  for cell in sweep.cells(grid):
    _write_cell(out, settings, cell, 10.0 + (cell.size == "small"))
  record, cells = report.collect(out)
  from sbs_jax.experiments import figures
  names = {p.name for p in figures.draw_all(out, record, cells, "accuracy", None)}
  assert {"accuracy_vs_size.png", "accuracy_vs_data-tiny.png",
          "accuracy_vs_data-small.png"} <= names
  assert config.size_order("tiny") < config.size_order("small") < config.size_order("xyz")


def test_mixed_grids_are_refused(sweep_dir, tmp_path):
  other = sweep.Cell("distill_llm", 50.0, "", 0)
  _write_cell(sweep_dir, _settings(tmp_path, dataset="cqa"), other, 5.0)
  with pytest.raises(SbsError, match="mixes datasets"):
    report.collect(sweep_dir)
  sweep.cell_file(sweep_dir, other, ".json").write_text(json.dumps(
      {"dataset": "marbles", **other.to_json(),
       "settings": dict(_settings(tmp_path), bindings=["TRAIN_STEPS=99"])}))
  proc = run_sbs_here("report", sweep_dir)
  assert proc.returncode == 2
  assert "mixes settings" in proc.stderr and "bindings" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_not_a_sweep_dir(tmp_path):
  with pytest.raises(SbsError, match="not a sweep dir"):
    _report(tmp_path)
