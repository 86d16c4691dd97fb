"""The method's effect, asserted (docs/experiments.md, "The effect in a test"): the
marked-selection task with the last digit of the starred counts' sum, 16,000 problems, the
tiny student of overlays/marked_cpu.gin at its full budget of 1,500 steps (validated once,
at the end). Distilling step-by-step must solve it and standard finetuning must not. The
margin asserted is well inside every run measured at this budget, so that the test is not
flaky; no smaller budget with a clear effect was found (the same file lists those tried)."""

import csv

import pytest

from tests.helpers import run_sbs

# Measured with the exact teacher at this budget (docs/experiments.md): distilling
# step-by-step 93.0-100% in all 7 runs (seeds 0-2 of the grid, its first seed-0 run, the
# two pilots and the demo), standard finetuning 24.8-31.6%. Asserted: distilling at least
# 80%, and 40 points ahead.
MIN_DISTILLING = 80.0
MIN_MARGIN = 40.0
# XLA's backend optimizations, which tests/conftest.py turns off for the other tests' tiny
# runs: 3,000 steps here run faster with them.
FAST_STEPS = {"XLA_FLAGS": ""}


@pytest.mark.slow
def test_distilling_step_by_step_solves_what_labels_alone_do_not(tmp_path):
  prepared = run_sbs("synthetic", "prepare", "--form", "marked", "--op", "sum_last_digit",
                     "--name", "marked_sum", "--train", "16000", "--out_dir",
                     str(tmp_path / "data"), timeout=900)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  sweep_dir = tmp_path / "sweep"
  swept = run_sbs("sweep", "--dataset", "marked_sum", "--methods",
                  "distill_llm,standard_finetuning", "--fractions", "100", "--seeds", "0",
                  "--annotation_dir", str(tmp_path / "data" / "annotations"),
                  "--vocab", str(tmp_path / "data" / "vocab" / "spm.model"),
                  "--gin_file=overlays/marked_cpu.gin", "--gin.EvalConfig.every=1500",
                  "--gin.TrainConfig.checkpoint_every=1500", "--out_dir", str(sweep_dir),
                  timeout=3000, env=FAST_STEPS)
  assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
  reported = run_sbs("report", str(sweep_dir))
  assert reported.returncode == 0, reported.stderr[-3000:]
  with open(sweep_dir / "results.csv", newline="") as f:
    test = {r["method"]: float(r["test_accuracy"]) for r in csv.DictReader(f)}
  distilling, standard = test["distill_llm"], test["standard_finetuning"]
  assert distilling >= MIN_DISTILLING, test
  assert distilling - standard >= MIN_MARGIN, test
