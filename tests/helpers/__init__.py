"""What the tests share: plain functions and data, imported as `tests.helpers...` (fixtures
stay in conftest.py). Modules: `data` (rows and files), `multihost` (a two-host cluster of
`sbs train`), `predict` (a tiny model dir to serve), `batches` (paired and packed batches,
run configs), `tiny_cqa` (a tiny student trained on CQA), `registry` (datasets a test
registers, removed again)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
# XLA's backend optimizations off: the tests' tiny programs compile about a third faster
# (tests/conftest.py sets it for the suite; tests/test_effect.py turns it back on).
COMPILE_FAST = "--xla_backend_optimization_level=0"


def xla_devices(devices: int) -> str:
  """XLA_FLAGS for a process of `devices` fake CPU devices, compiled as the suite's are."""
  return f"{COMPILE_FAST} --xla_force_host_platform_device_count={devices}"


def run_sbs(*args, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
  """Runs `python -m sbs_jax.cli ARGS` and returns the finished process."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
  return subprocess.run([sys.executable, "-m", "sbs_jax.cli", *map(str, args)],
                        capture_output=True, text=True, env=full_env, timeout=timeout,
                        cwd=REPO, **kwargs)
