"""Shared fixtures: the real data dir and a way to run the `sbs` command."""

import json
import os
import pathlib
import tempfile

# One persistent XLA compilation cache for the whole suite: the tests' processes and the
# `sbs` subprocesses they start compile the same tiny programs many times over. Set before
# anything imports jax; the environment carries it into every subprocess. Compiled results
# are keyed by the program, the compiler's flags and the jax version, so a hit is the same
# executable. $JAX_COMPILATION_CACHE_DIR overrides the place, an empty one turns it off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"sbs-jax-tests-xla-{os.getuid()}"))
if not os.environ["JAX_COMPILATION_CACHE_DIR"]:
  del os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))  # least recent go first
# The tests' programs are tiny and run a few steps: compiling them took most of many tests'
# time, and XLA's backend optimizations about a third of that (test_network.py: 23 s with
# them, 16 s without, cache off). Code compiled without them runs slower (a step of the
# marked task's student: 1.6x), so tests/test_effect.py, which trains 1,500 steps, turns
# them back on for its runs. Results do not depend on it beyond float rounding: the tests
# compare runs made under the same flags. A test that needs more fake devices sets XLA_FLAGS
# itself; $XLA_FLAGS given to pytest wins.
from tests.helpers import COMPILE_FAST  # pylint: disable=wrong-import-position  # no jax
os.environ.setdefault("XLA_FLAGS", COMPILE_FAST)

import pytest  # pylint: disable=wrong-import-position
from tests.helpers import REPO
from tests.helpers.data import ANLI_ROWS, write_jsonl


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The paper's released data (../shared/datasets beside the checkout, or $SBS_DATA_DIR)."""
  path = pathlib.Path(os.environ.get("SBS_DATA_DIR") or REPO.parent / "shared" / "datasets")
  if not (path / "cqa").is_dir():
    pytest.skip(f"no released data at {path}")
  return path


@pytest.fixture(scope="session")
def annotated(tmp_path_factory, data_dir):
  """The released data annotated (replay teacher) and an 8k vocabulary, for the tasks.

  Sets $SBS_ANNOTATION_DIR and $SBS_VOCAB, which the `tasks` registry reads at first use.
  anli1 is not released here: small files in its layout stand in for it.
  """
  import argparse
  from sbs_jax.annotate import build, job
  from sbs_jax.commands import annotate as annotate_command

  root = tmp_path_factory.mktemp("annotated")
  anli_dir = root / "anli_data"
  for split in ("train", "valid", "test"):
    rows = [dict(r, uid=f"{split}-{i}-{r['uid']}") for i in range(4) for r in ANLI_ROWS]
    write_jsonl(anli_dir / "anli1" / f"anli1_{split}.json", rows)
    words = ["entailment", "neutral", "contradiction"]
    completions = [f"Reason {i}. So the answer is {words[r['label']]}." for i, r in
                   enumerate(rows)]
    (anli_dir / "anli1" / "llm").mkdir(parents=True, exist_ok=True)
    (anli_dir / "anli1" / "llm" / f"{split}_CoT_0.json").write_text(
        json.dumps(completions))
  out = root / "annotations"
  parser = argparse.ArgumentParser()
  annotate_command.add_parser(parser.add_subparsers())
  runs = [("cqa", "train", data_dir), ("cqa", "test", data_dir), ("svamp", "train", data_dir),
          ("svamp", "test", data_dir), ("esnli", "valid", data_dir),
          ("esnli", "test", data_dir), ("anli1", "train", anli_dir),
          ("anli1", "valid", anli_dir), ("anli1", "test", anli_dir)]
  for dataset, split, ddir in runs:
    args = parser.parse_args(["annotate", "--dataset", dataset, "--split", split, "--teacher",
                              "replay", "--out_dir", str(out), "--data_dir", str(ddir),
                              "--no_progress"])
    job.run(build.build_job(args))
  spm_path = root / "vocab" / "spm.model"
  from sbs_jax.data import vocab
  vocab.train_vocabulary(vocab.train_texts(str(out), ["cqa"]), spm_path, 8000)
  os.environ["SBS_ANNOTATION_DIR"] = str(out)
  os.environ["SBS_VOCAB"] = str(spm_path)
  return out


@pytest.fixture(scope="session")
def gcs():
  """A GCS server on 127.0.0.1 (fake-gcs-server) that TensorFlow, tensorstore and orbax in
  this process and in `run_sbs` subprocesses reach for every gs:// path, with a bucket
  `sbs-test`. Skips with the reason where the emulator cannot be installed or started."""
  from sbs_jax.testing import gcs_emulator
  try:
    emulator = gcs_emulator.GcsEmulator().start()
  except gcs_emulator.EmulatorUnavailable as e:
    pytest.skip(str(e))
  saved = {k: os.environ.get(k) for k in emulator.env()}
  emulator.apply()
  emulator.create_bucket("sbs-test")
  yield emulator
  emulator.stop()
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


# Seconds each of the slowest files took in the whole suite on 2 cores (pytest --durations,
# 2026-12-08, summed per file; test_row_lengths less what 7f3e932 cut). `--dist loadfile`
# hands out whole files; started longest first, the two workers end close together instead
# of one of them running a five-minute file alone at the end (xdist's own order, by number
# of tests, puts one-test files last). A file not listed runs after these, in collection
# order. Refresh after a large change.
FILE_SECONDS = {
    "test_effect.py": 444, "test_gcs_workflow.py": 229, "test_multihost.py": 215,
    "test_t5x_workflow.py": 192, "test_tasks.py": 149, "test_tpu_compile.py": 111,
    "test_t5x_public_layout.py": 109, "test_train_run_dir.py": 103,
    "test_train_loop.py": 98, "test_rank_classification.py": 97, "test_hf_workflow.py": 96,
    "test_train_hardening.py": 80, "test_bench.py": 76, "test_sharded_train.py": 70,
    "test_row_lengths.py": 69, "test_controlled_grid.py": 68, "test_demo.py": 56,
    "test_sweep.py": 55, "test_plan.py": 47, "test_remat.py": 41,
    "test_storage_errors.py": 40, "test_annotate_openai.py": 40,
    "test_length_check.py": 39, "test_custom_dataset.py": 38, "test_train_loss.py": 34,
    "test_gin_configs.py": 33, "test_predict.py": 33, "test_report.py": 29,
}


def pytest_collection_modifyitems(items):
  """Longest files first (FILE_SECONDS); within a file, the order as written."""
  items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))
