"""launch/controlled_grid.sh, shrunk: the noisy teacher's grid prepared, swept, reported."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "controlled_grid.sh"


def _run(tmp_path, **env):
  sbs = tmp_path / "sbs"
  sbs.write_text(f"#!/bin/sh\nexec {sys.executable} -m sbs_jax.cli \"$@\"\n")
  sbs.chmod(0o755)
  full = dict(os.environ, SBS=str(sbs), OUT=str(tmp_path / "grid"), TF_CPP_MIN_LOG_LEVEL="2",
              **env)
  return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full,
                        cwd=REPO, timeout=900)


@pytest.mark.slow
def test_the_grid_script_runs_the_noisy_teacher_through_sweep_and_report(tmp_path):
  done = _run(tmp_path, TEACHERS="noisy", ERROR_RATE="0.5", TRAIN="300", FRACTIONS="100",
              SEEDS="0", METHODS="standard_distillation",
              SWEEP_ARGS="--gin.TRAIN_STEPS=2 --gin.EvalConfig.every=2 "
                         "--gin.EvalConfig.max_examples=8 --gin.EvalConfig.max_test_examples=8")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  sweep_dir = tmp_path / "grid" / "marked_sum_last_digit-noisy" / "sweep"
  with open(sweep_dir / "results.csv", newline="") as f:
    cells = {r["cell"]: r["status"] for r in csv.DictReader(f)}
  assert cells == {"standard_distillation-f100-s0": "done"}
  md = (sweep_dir / "results.md").read_text()
  teacher = float(md.split("Teacher (test): ")[1].split("%")[0])
  assert 30.0 < teacher < 70.0  # the teacher errs on a seeded half of the problems
  assert "--gin_file" not in done.stderr  # (the sweep's own argument errors would be here)

  # Archived without checkpoints and the original moved away: `sbs report` on the archive
  # redraws the same table, the teacher's accuracy read from the archived stats.
  archive = tmp_path / "archive" / "noisy"
  copied = subprocess.run(["bash", str(REPO / "launch" / "archive_sweep.sh"),
                           str(sweep_dir.parent), str(archive)],
                          capture_output=True, text=True, timeout=120)
  assert copied.returncode == 0, copied.stderr
  assert not list(archive.rglob("checkpoints")) and not list(archive.rglob("*.model"))
  (tmp_path / "grid").rename(tmp_path / "moved")
  redrawn = subprocess.run([sys.executable, "-m", "sbs_jax.cli", "report",
                            str(archive / "sweep")], capture_output=True, text=True,
                           cwd=REPO, timeout=300)
  assert redrawn.returncode == 0, redrawn.stderr[-3000:]
  again = (archive / "sweep" / "results.md").read_text()
  assert f"Teacher (test): {teacher:.1f}%" in again
  table = lambda text: [l for l in text.splitlines() if l.startswith("| standard_")]
  assert table(again) == table(md) and table(md)
  assert (archive / "sweep" / "figures" / "accuracy_vs_data.png").stat().st_size > 0


def test_an_unknown_teacher_is_refused_before_any_work(tmp_path):
  done = _run(tmp_path, TEACHERS="exact nosiy")
  assert done.returncode == 2
  assert "TEACHERS holds 'nosiy': use exact and/or noisy" in done.stderr
  assert not (tmp_path / "grid").exists()
