"""A sharded step on a 2 x 4 mesh of 8 forced CPU devices equals the single-device step."""

import json
import os
import subprocess
import sys

import pytest
from tests.helpers import REPO



@pytest.mark.slow
@pytest.mark.parametrize("param_dims", [1, 2])
def test_sharded_step_equals_single_device(param_dims):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "tests/sharded_step_check.py", str(param_dims)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["devices"] == 8
  assert abs(got["loss_1"] - got["loss_8"]) < 1e-5
  assert got["grad_max_abs_diff"] < 1e-5
  assert got["wrong_shardings"] == []
  assert abs(got["step_loss_8"] - got["loss_1"]) < 1e-5
  # Decoding for evaluation: rows split over the 2 data shards, the same ids (greedy, beam).
  assert got["decode_rows_spec"] == "P('data', None)"
  assert got["decode_rows_per_device"] == [2]  # 4 rows, 2 per data shard
  assert got["decoded"] == {"1": {"equal": True, "shape": [5, 6]},
                            "2": {"equal": True, "shape": [5, 6]}}
