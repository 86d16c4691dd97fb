"""Shared fixtures: the real data dir and a way to run the `sbs` command."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The paper's released data (../shared/datasets beside the checkout, or $SBS_DATA_DIR)."""
  path = pathlib.Path(os.environ.get("SBS_DATA_DIR") or REPO.parent / "shared" / "datasets")
  if not (path / "cqa").is_dir():
    pytest.skip(f"no released data at {path}")
  return path


def run_sbs(*args, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
  """Runs `python -m sbs_jax.cli ARGS` and returns the finished process."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
  return subprocess.run([sys.executable, "-m", "sbs_jax.cli", *map(str, args)],
                        capture_output=True, text=True, env=full_env, timeout=timeout,
                        cwd=REPO, **kwargs)
