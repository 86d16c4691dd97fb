"""`sbs demo`, shrunk to a few steps: CQA annotated, then both methods on the controlled task."""

import csv
import re

import pytest

from sbs_jax.experiments import sweep
from tests.helpers import run_sbs


@pytest.mark.slow
def test_demo_ends_with_the_comparison(data_dir, tmp_path):
  proc = run_sbs("demo", "--out_dir", tmp_path, "--data_dir", data_dir,
                 "--train_problems", 2000,
                 "--gin.TRAIN_STEPS=4", "--gin.EvalConfig.every=4",
                 "--gin.EvalConfig.max_examples=16", "--gin.EvalConfig.max_test_examples=16",
                 timeout=1800)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  # Part 1: the paper's CQA annotations and one record as the two tasks.
  assert "the teacher's test accuracy: 77.2%" in out
  assert "predict: " in out and "explain: " in out
  assert "0.1% on CQA test" in out
  # Part 2: the table, in percent, for both methods, and where the figure is.
  rows = {m: re.search(rf"^{name} +(\d+\.\d)%", out, re.M)
          for m, name in (("standard_finetuning", "standard finetuning"),
                          ("distill_llm", "distilling step-by-step"))}
  assert all(rows.values()), out
  assert re.search(r"^teacher \(programmatic\) +100\.0%", out, re.M)
  sweep_dir = tmp_path / "marked" / "sweep"
  assert (sweep_dir / "figures" / "accuracy_vs_data.png").read_bytes()[:4] == b"\x89PNG"
  assert (sweep_dir / "figures" / "validation_vs_step.png").read_bytes()[:4] == b"\x89PNG"
  with open(sweep_dir / "results.csv", newline="") as f:
    table = {r["cell"]: r for r in csv.DictReader(f)}
  assert set(table) == {"standard_finetuning-f100-s0", "distill_llm-f100-s0"}
  for method, match in rows.items():
    assert float(table[f"{method}-f100-s0"]["test_accuracy"]) == float(match.group(1))
  assert str(sweep_dir / "results.md") in out
  assert sweep.load_sweep(sweep_dir)["settings"]["bindings"][0] == "TRAIN_STEPS=4"
