"""benchmarks/t5x_compare.py: T5X's train step and ours compiled for the same TPU slice, on a
tiny network (2 + 2 layers, d_model 32, vocabulary 128, 8 rows of 32/16 tokens).

The comparison runs in a subprocess (libtpu is loaded there, not in pytest's JAX).
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from sbs_jax.model.config import config_for
from sbs_jax.perf.flops import analytic_flops

pytestmark = [
    pytest.mark.t5x,
    pytest.mark.skipif(importlib.util.find_spec("t5x") is None,
                       reason="T5X is not installed: bash launch/install_t5x.sh ../shared/vendor"),
    pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                       reason="libtpu (pip install -e '.[tpu]') is not installed"),
]

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROWS, INPUTS, TARGETS, ACCUM = 8, 32, 16, 2


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  out = tmp_path_factory.mktemp("t5x_compare") / "runs.jsonl"
  proc = subprocess.run(
      [sys.executable, "benchmarks/t5x_compare.py", "--size", "tiny", "--vocab_size", "128",
       "--topology", "v4-8", "--mesh", "2x2", "--partitioning_dims", "1,2",
       "--grad_accum", str(ACCUM), "--batch", str(ROWS), "--inputs", str(INPUTS),
       "--targets", str(TARGETS), "--out", str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (record,) = [json.loads(line) for line in out.read_text().splitlines()]
  return proc, record


def test_both_steps_compile_for_the_same_devices_and_network(compared):
  _, r = compared
  ours, theirs = r["ours"], r["t5x"]
  assert r["chips"] == 4 and r["mesh"] == "2x2"
  assert ours["device_ids"] == theirs["device_ids"] and len(ours["device_ids"]) == 4
  assert ours["fits"] and theirs["fits"]
  # The same network: T5X's parameters count as many as ours.
  assert theirs["parameters"] == ours["parameters"] > 0
  # T5X's settings as the brief of the comparison says: its gin, no z-loss, its dropout.
  assert theirs["gin_file"] == "t5x/examples/t5/t5_1_1/small.gin"
  assert theirs["z_loss"] == 0.0 and theirs["dropout_rate"] == 0.1
  assert theirs["dtype"] == "bfloat16" == ours["dtype"]
  assert theirs["num_microbatches"] == ACCUM
  assert ["embed", "data"] in theirs["logical_axis_rules"]  # 2-D parameter rules


def test_memory_is_positive_and_the_states_weigh_alike(compared):
  _, r = compared
  for side in (r["ours"], r["t5x"]):
    b = side["xla_bytes"]
    assert side["per_chip_gib"] > 0 and b["argument"] > 0 and b["temp"] >= 0
    # The donated state: its update lands in its own buffers, most of the outputs.
    assert 0.9 * b["output"] <= b["alias"] <= b["output"]
    peak = b["argument"] + b["output"] - b["alias"] + b["temp"]
    assert side["per_chip_gib"] == pytest.approx(peak / 2 ** 30, abs=0.001)
  # Parameters, AdamW's two moments and the batch, split the same ways: within 10%.
  ours, theirs = r["ours"]["xla_bytes"]["argument"], r["t5x"]["xla_bytes"]["argument"]
  assert 0.9 <= theirs / ours <= 1.1


def test_flops_are_positive_and_near_the_matmul_count(compared):
  _, r = compared
  ours, theirs = r["ours"]["flops_per_step"], r["t5x"]["flops_per_step"]
  matmuls = analytic_flops(config_for("tiny", vocab_size=128), ROWS, INPUTS, TARGETS) / 4
  assert r["analytic_flops_per_chip"] == pytest.approx(matmuls)
  # Ours: at least the matmuls, at most 1.5x (norms, softmax, the optimizer).
  assert matmuls <= ours <= 1.5 * matmuls
  assert ours == ACCUM * r["ours"]["xla_flops"]
  # T5X's: the same network's step, plus its one-hot embedding matmuls.
  assert 0.8 * ours <= theirs <= 3 * ours
  assert r["t5x"]["xla_bytes_accessed"] > 0 and r["ours"]["xla_bytes_accessed"] > 0


def test_collectives_and_the_printed_table(compared):
  proc, r = compared
  for side in (r["ours"], r["t5x"]):
    # 2-D rules on 2x2: weights gathered over 'data', partial sums reduced over 'model'.
    assert side["collectives"]["all-gather"]["count"] > 0
    assert side["collectives"]["all-reduce"]["count"] > 0
  assert r["versions"]["jax"] and r["versions"]["libtpu"]
  assert r["command"].startswith("python benchmarks/t5x_compare.py --size tiny")
  assert r["ours"]["sbs_plan_command"].startswith("sbs plan --topology=v4-8 --mesh=2x2")
  table = proc.stdout
  assert "| per chip GiB (peak) |" in table and "| ours | T5X | T5X / ours |" in table
