"""The model dir of a run: another run's dir is refused untouched, the same config resumes,
a failed fresh run leaves nothing behind, config.gin holds absolute paths, and training
reports its progress."""

import json
import os
import re
import subprocess
import sys

import gin
import pytest

from sbs_jax.data import vocab
from sbs_jax.errors import SbsError
from sbs_jax.train import config, gin_setup, loop
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.train.run_dir import RUN_FILE
from tests.helpers import REPO, run_sbs

SMOKE = ["TrainConfig.log_every = 1", "TrainConfig.checkpoint_every = 1",
         "EvalConfig.every = 2", "EvalConfig.max_examples = 8",
         "EvalConfig.max_test_examples = 8", "EvalConfig.batch_size = 8",
         "EvalConfig.rationale_samples = 0", "OptimizerConfig.warmup_steps = 0",
         "BATCH_SIZE = 4"]


def train(model_dir, steps=2, extra=(), experiment="cqa_distill_llm"):
  gin.clear_config()
  gin_setup.parse_gin([f"experiments/{experiment}.gin", "overlays/tiny_cpu.gin"],
                    [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", *SMOKE, *extra])
  try:
    return loop.train(config.TrainConfig(), config.student_config())
  finally:
    gin.clear_config()


def snapshot(model_dir) -> dict:
  """Every file under the dir with its bytes."""
  return {str(p.relative_to(model_dir)): p.read_bytes()
          for p in sorted(model_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(annotated):
  """A finished 2-step run started with relative paths (model dir, annotation dir), from
  the annotation dir's parent."""
  root, cwd = annotated.parent, os.getcwd()
  os.chdir(root)
  try:
    # (The vocabulary's path stays absolute: the process-wide tasks vocabulary keeps the
    # path it first loaded, and other tests of this process run from another directory.)
    results = train("run_dir_test/cqa", extra=["annotation_dir.path = 'annotations'"])
  finally:
    os.chdir(cwd)
  return root / "run_dir_test" / "cqa", results


def test_a_fresh_run_reports_progress_with_units(annotated, tmp_path, capsys):
  train(tmp_path / "fresh", steps=2)
  err = capsys.readouterr().err
  assert "starting from a random init (seed 0)" in err
  lines = [l for l in err.splitlines() if l.startswith("step ")]
  assert lines[0].startswith("step 1/2: loss ") and "examples/s" in lines[0]
  assert "ETA" in lines[1]  # known from the second step on
  assert any(l.startswith("step 2: validation accuracy ") and "%" in l for l in lines)
  logged = ModelDir(str(tmp_path / "fresh")).read_metrics("train")
  # 4 packed rows of 256 tokens hold more than 4 examples; each counted once.
  assert all(m["examples"] > 4 for m in logged) and "examples_per_s" in logged[0]
  assert "\nstep 1/2" not in err.split("starting from")[0]  # the origin comes first
  results = json.loads((tmp_path / "fresh" / "results.json").read_text())
  assert "percentage" in results["units"] and 0 <= results["validation"]["accuracy"] <= 100


def test_same_config_resumes_and_may_train_longer(run, capsys):
  model_dir, _ = run
  capsys.readouterr()
  # Another layout of the step (ParallelismConfig) is the same run.
  results = train(model_dir, steps=3, extra=["ParallelismConfig.grad_accum_steps = 2",
                                             "ParallelismConfig.remat_policy = 'full'"])
  assert "resumed from step 2" in capsys.readouterr().err
  assert [m["step"] for m in ModelDir(str(model_dir)).read_metrics("train")] == [1, 2, 3]
  assert results["train_steps"] == 3
  assert json.loads((model_dir / RUN_FILE).read_text())["train_steps"] == 3


@pytest.mark.parametrize("extra,experiment,differs", [
    (["ALPHA = 0.7"], "cqa_distill_llm", "alpha 0.5 (this run: 0.7)"),
    ([], "svamp_distill_llm", 'mixture_or_task "sbs_cqa_distill_llm_paired" (this run: '
     '"sbs_svamp_distill_llm_paired")'),
    (["OptimizerConfig.learning_rate = 0.01"], "cqa_distill_llm",
     "optimizer.learning_rate 0.003 (this run: 0.01)"),
    (["student_config.num_heads = 2"], "cqa_distill_llm", "network.num_heads 4 (this run: 2)"),
])
def test_another_run_is_refused_and_nothing_is_touched(run, extra, experiment, differs):
  model_dir, _ = run
  before = snapshot(model_dir)
  with pytest.raises(SbsError) as refused:
    train(model_dir, steps=3, extra=extra, experiment=experiment)
  message = str(refused.value)
  assert message.startswith(f"MODEL_DIR {model_dir} holds a run of another ")
  assert differs in message and "use a new MODEL_DIR" in message
  assert "\n" not in message
  assert snapshot(model_dir) == before


def test_another_vocabulary_is_refused_in_one_line(run, tmp_path):
  """Through the command (a process reads its vocabulary once)."""
  model_dir, _ = run
  other = vocab.train_vocabulary(["a different corpus of words"] * 30, tmp_path / "o.model",
                                 300)
  before = snapshot(model_dir)
  proc = run_sbs("train", "--gin_file=experiments/cqa_distill_llm.gin",
                 "--gin_file=overlays/tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
                 f"--gin.vocabulary_settings.path='{other}'", *[f"--gin.{b.replace(' = ', '=')}"
                                                                 for b in SMOKE])
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert re.fullmatch(rf"sbs train: error: MODEL_DIR {model_dir} holds a run of another "
                      r"vocabulary_sha256 [0-9a-f]{12}\.\.\. \(this run: [0-9a-f]{12}\.\.\.\): "
                      r"use a new MODEL_DIR .*, or delete it to start over", last), last
  assert "Traceback" not in proc.stderr
  assert snapshot(model_dir) == before


def test_a_dir_of_something_else_is_refused(annotated, tmp_path):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("my notes")
  with pytest.raises(SbsError, match="holds files but no run.json"):
    train(tmp_path / "mine")
  assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_failed_fresh_run_leaves_nothing_behind(annotated, tmp_path):
  bad = ["DataConfig.train_split = 'train_3'"]  # no such split: fails before step 1
  with pytest.raises(Exception):
    train(tmp_path / "new" / "deeper" / "run", extra=bad)
  assert not (tmp_path / "new").exists()
  (tmp_path / "empty").mkdir()  # the user's own (empty) dir stays, emptied again
  with pytest.raises(Exception):
    train(tmp_path / "empty", extra=bad)
  assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir())


def test_config_gin_serves_eval_from_another_directory(run, tmp_path):
  """Relative paths as given (MODEL_DIR, the annotation dir and vocabulary from the
  environment); `sbs eval` from elsewhere with no environment finds everything."""
  model_dir, _ = run
  saved = (model_dir / "config.gin").read_text()
  assert f"MODEL_DIR = '{model_dir}'" in saved
  assert f"annotation_dir.path = '{os.environ['SBS_ANNOTATION_DIR']}'" in saved
  assert f"vocabulary_settings.path = '{os.environ['SBS_VOCAB']}'" in saved
  env = {k: v for k, v in os.environ.items() if not k.startswith("SBS_")}
  env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-m", "sbs_jax.cli", "eval", "--model_dir",
                         str(model_dir), "--split", "test", "--max_examples=4"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["examples"] == 4 and 0 <= got["accuracy_pct"] <= 100
