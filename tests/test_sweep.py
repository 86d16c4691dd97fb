"""`sbs sweep`: the grid, its commands, resuming, and a real 2x2 grid of a few steps."""

import json
import shlex

import pytest

from sbs_jax.errors import SbsError
from sbs_jax.experiments import prepare, report, sweep
from tests.helpers.cli import run_sbs_here

SETTINGS = {"dataset": "marbles", "alpha": 0.5, "annotation_dir": "/data/ann",
            "vocab": "/data/spm.model", "gin_files": ["overlays/marbles_cpu.gin"],
            "bindings": ["TRAIN_STEPS=3"]}


def test_grid_cells_and_names():
  grid = sweep.parse_grid("standard_finetuning,distill_llm", "100,12.5", "", "0,1")
  names = [c.name for c in sweep.cells(grid)]
  # Seed by seed, so that a sweep cut short has whole curves; smallest data first.
  assert names == ["standard_finetuning-f12.5-s0", "distill_llm-f12.5-s0",
                   "standard_finetuning-f100-s0", "distill_llm-f100-s0",
                   "standard_finetuning-f12.5-s1", "distill_llm-f12.5-s1",
                   "standard_finetuning-f100-s1", "distill_llm-f100-s1"]
  grid = sweep.parse_grid("distill_gt", "50", "small,base", "7")
  assert [c.name for c in sweep.cells(grid)] == ["distill_gt-f50-small-s7",
                                                 "distill_gt-f50-base-s7"]


@pytest.mark.parametrize("args, message", [
    (("distill_xyz", "100", "", "0"), "unknown method"),
    (("distill_llm", "30", "", "0"), "not one of the prepared subsamples"),
    (("distill_llm", "100", "huge", "0"), "no gin_configs/models/huge.gin"),
    (("distill_llm", "100", "", "0,x"), "cannot read"),
    (("distill_llm", "100,100", "", "0"), "repeats"),
])
def test_bad_grids_are_one_line_errors(args, message):
  with pytest.raises(SbsError, match=message):
    sweep.parse_grid(*args)


def test_cell_command_binds_method_data_seed_and_model_dir():
  cell = sweep.Cell("distill_llm", 25.0, "small", 2)
  argv = shlex.split(sweep.shell_command(SETTINGS, cell, "/out"))
  assert argv[:2] == ["sbs", "train"]
  assert argv[2:5] == ["--gin_file=models/base.gin", "--gin_file=runs/finetune.gin",
                       "--gin_file=overlays/marbles_cpu.gin"]
  assert "--gin_file=models/small.gin" in argv  # after the user's files: the size wins
  for binding in ('--gin.MIXTURE_OR_TASK_NAME="sbs_marbles_distill_llm_paired"',
                  "--gin.ALPHA=0.5", '--gin.MODEL_DIR="/out/distill_llm-f25-small-s2"',
                  '--gin.DataConfig.train_split="train_25"', "--gin.TrainConfig.seed=2",
                  "--gin.DataConfig.seed=2", '--gin.annotation_dir.path="/data/ann"'):
    assert binding in argv
  assert argv[-1] == "--gin.TRAIN_STEPS=3"  # the user's bindings come last
  standard = shlex.split(sweep.shell_command(
      dict(SETTINGS, dataset="svamp"), sweep.Cell("standard_finetuning", 100.0, "", 0), "/o"))
  assert "--gin_file=experiments/svamp_standard_finetuning.gin" in standard
  assert "--gin.ALPHA=1.0" in standard and '--gin.DataConfig.train_split="train"' in standard


def _fake_run(calls):
  def run_cell(settings, cell, out_dir):
    calls.append(cell.name)
    cell_dir = sweep.pathlib.Path(out_dir) / cell.name
    cell_dir.mkdir(parents=True, exist_ok=True)
    sweep.cell_file(out_dir, cell, ".log").write_text("trained\n")
    (cell_dir / "results.json").write_text(json.dumps(
        {"best_step": 1, "validation": {"accuracy": 1.0}, "test": {"accuracy": 2.0}}))
  return run_cell


def test_rerun_starts_no_finished_cell_and_resumes_the_rest(tmp_path, capsys):
  grid = sweep.record_sweep(tmp_path, SETTINGS, sweep.parse_grid(
      "standard_finetuning,distill_llm", "50,100", "", "0"))
  calls = []
  assert len(sweep.run(SETTINGS, grid, str(tmp_path), _fake_run(calls))) == 4
  assert "[4/4] distill_llm-f100-s0: done" in capsys.readouterr().out
  calls.clear()
  assert sweep.run(SETTINGS, grid, str(tmp_path), _fake_run(calls)) == [] and calls == []
  assert "4 already done, 0 to run" in capsys.readouterr().out
  (tmp_path / "distill_llm-f50-s0" / "results.json").unlink()  # interrupted mid-cell
  sweep.run(SETTINGS, grid, str(tmp_path), _fake_run(calls))
  assert calls == ["distill_llm-f50-s0"]
  assert "distill_llm-f50-s0: resuming" in capsys.readouterr().out


def test_a_cell_locked_by_another_sweep_is_left_to_it(tmp_path, capsys):
  grid = sweep.record_sweep(tmp_path, SETTINGS, sweep.parse_grid("distill_llm", "100", "", "0,1"))
  calls = []
  with sweep._cell_lock(str(tmp_path), sweep.Cell("distill_llm", 100.0, "", 0)) as mine:
    assert mine
    sweep.run(SETTINGS, grid, str(tmp_path), _fake_run(calls))
  assert calls == ["distill_llm-f100-s1"]
  assert "distill_llm-f100-s0: taken by another sweep process" in capsys.readouterr().out


def test_rerun_may_add_values_but_not_change_settings(tmp_path):
  sweep.record_sweep(tmp_path, SETTINGS, sweep.parse_grid("distill_llm", "100", "", "0"))
  grid = sweep.record_sweep(tmp_path, SETTINGS,
                            sweep.parse_grid("standard_finetuning", "100", "", "1"))
  assert grid["methods"] == ["distill_llm", "standard_finetuning"]
  assert grid["seeds"] == [0, 1]
  assert sweep.load_sweep(tmp_path)["grid"] == grid
  (tmp_path / sweep.cells(grid)[0].name).mkdir()  # once a cell has trained, they are fixed
  with pytest.raises(SbsError, match="other settings .*bindings"):
    sweep.record_sweep(tmp_path, dict(SETTINGS, bindings=["TRAIN_STEPS=4"]), grid)


@pytest.fixture(scope="module")
def marbles(tmp_path_factory):
  """The controlled task, small: annotated through the live teacher, with its vocabulary."""
  return prepare.prepare_synthetic(tmp_path_factory.mktemp("marbles"), train=160, test=40)


@pytest.mark.slow
def test_a_grid_completes_and_reruns_nothing(marbles, tmp_path):
  # Two methods on half the data: each cell is a trainer process (about 20 s of start-up,
  # compiling and evaluating for its 3 steps), so the grid is as small as a grid gets while
  # it still has several cells, a fraction other than 100 and a rerun.
  args = ["sweep", "--dataset", "marbles", "--methods", "standard_finetuning,distill_llm",
          "--fractions", "50", "--seeds", "0", "--annotation_dir", marbles.annotation_dir,
          "--vocab", marbles.vocab, "--out_dir", tmp_path, "--gin_file=overlays/marbles_cpu.gin",
          "--gin.TRAIN_STEPS=3", "--gin.EvalConfig.every=3", "--gin.EvalConfig.max_examples=8",
          "--gin.EvalConfig.max_test_examples=8", "--gin.EvalConfig.rationale_samples=1"]
  printed = run_sbs_here(*args, "--print_commands")
  assert printed.returncode == 0, printed.stderr
  assert len(printed.stdout.splitlines()) == 2 and not (tmp_path / "sweep.json").exists()
  proc = run_sbs_here(*args)  # 2 trainer processes: a minute, more on a busy CPU
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "[2/2]" in proc.stdout and "all cells done" in proc.stdout
  cells = sweep.cells(sweep.load_sweep(tmp_path)["grid"])
  assert sorted(c.name for c in cells) == ["distill_llm-f50-s0", "standard_finetuning-f50-s0"]
  for cell in cells:
    results = json.loads((tmp_path / cell.name / "results.json").read_text())
    assert results["train_steps"] == 3 and results["test"]["examples"] == 8
    first_line = sweep.cell_file(tmp_path, cell, ".log").read_text().splitlines()[0]
    assert first_line[2:] in printed.stdout  # the cell ran the printed command
    assert "train_50" in first_line  # the fraction reached the trainer
  again = run_sbs_here(*args)
  assert again.returncode == 0 and "2 already done, 0 to run" in again.stdout
  record, cells = report.collect(tmp_path)
  assert [c.status for c in cells] == ["done"] * 2
  assert report.teacher_accuracy(record["settings"]) == 100.0


def test_a_failing_cell_stops_the_sweep_with_one_line(marbles, tmp_path):
  proc = run_sbs_here("sweep", "--dataset", "marbles", "--methods", "distill_llm",
                      "--annotation_dir", marbles.annotation_dir, "--vocab", marbles.vocab,
                      "--out_dir", tmp_path, "--gin_file=overlays/marbles_cpu.gin",
                      "--gin.TrainConfig.no_such_field=1")
  assert proc.returncode == 2
  assert "cell distill_llm-f100-s0 stopped (exit code " in proc.stderr
  assert "cells/distill_llm-f100-s0.log" in proc.stderr and "Traceback" not in proc.stderr
