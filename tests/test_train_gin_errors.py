"""Gin mistakes are one line each, naming the bad key and the closest known names; none is
silently ignored."""

import gin
import pytest

from sbs_jax.train import config, gin_check, gin_setup
from tests.helpers import gin_config
from tests.helpers.cli import run_sbs_here

EXPERIMENT = ["experiments/cqa_distill_llm.gin", "overlays/tiny_cpu.gin"]

def configure(bindings, files=EXPERIMENT):
  """Parses and builds the run's config as `sbs train` does; the SbsError's text."""
  return gin_config.configure(files, bindings)

@pytest.mark.parametrize("binding,expected", [
    ("TRAIN_STEPZ = 5", "gin: the macro TRAIN_STEPZ is set but nothing uses it (did you mean "
     "TRAIN_STEPS?); known macros: ALPHA, BATCH_SIZE, INITIAL_CHECKPOINT, "
     "MIXTURE_OR_TASK_NAME, MODEL_DIR, SELECTION_METRIC, TRAIN_STEPS"),
    ("TrainConfig.train_stepz = 5", "gin: TrainConfig has no parameter 'train_stepz' (in "
     "--gin.TrainConfig.train_stepz=5) (did you mean train_steps?)"),
    ("TrainConfg.train_steps = 5", "gin: no configurable 'TrainConfg' (in "
     "--gin.TrainConfg.train_steps=5) (did you mean TrainConfig"),
    ("MODEL_DIR = runs/x", "gin: cannot read the value 'runs' (in --gin.MODEL_DIR=runs/x): "
     "numbers go bare (--gin.TRAIN_STEPS=300), strings in quotes that the shell leaves in "
     "place (--gin.MODEL_DIR=\"'runs/cqa'\")"),
    ("TRAIN_STEPS = abc", "gin: cannot read the value 'abc' (in --gin.TRAIN_STEPS=abc)"),
    ("TRAIN_STEPS = ", "gin: cannot parse a value (in --gin.TRAIN_STEPS=)"),
    ("ParallelismConfig.mesh = (1,", "gin: cannot parse a value (an unclosed bracket or quote?)"),
    ("TRAIN_STEPS = '300'", "TrainConfig.train_steps = '300' is not int (set by "
     "--gin.TRAIN_STEPS): numbers go bare"),
    ("ALPHA = 'half'", "TrainConfig.alpha = 'half' is not float (set by --gin.ALPHA)"),
    ("EvalConfig.max_examples = 2.5", "EvalConfig.max_examples = 2.5 is not int or None"),
    # Settings that moved to ParallelismConfig: where to bind them now.
    ("TrainConfig.mesh = (2, 1)", "gin: TrainConfig.mesh moved to ParallelismConfig.mesh (in "
     "--gin.TrainConfig.mesh=(2, 1)): bind that instead"),
    ("OptimizerConfig.grad_accum_steps = 2", "gin: OptimizerConfig.grad_accum_steps moved to "
     "ParallelismConfig.grad_accum_steps"),
    ("ParallelismConfig.grad_accum_steps = 0", "ParallelismConfig.grad_accum_steps = 0 is out "
     "of range: it must be at least 1"),
])
def test_each_mistake_is_one_line(binding, expected):
  message = configure([binding])
  assert message is not None and message.startswith(expected), message
  assert "\n" not in message

def test_correct_bindings_still_apply():
  gin.clear_config()
  try:
    gin_setup.parse_gin(EXPERIMENT, ["TRAIN_STEPS = 7", "MODEL_DIR = 'runs/x'",
                                   "EvalConfig.max_examples = None"])
    cfg = gin_check.configured(config.TrainConfig)
  finally:
    gin.clear_config()
  assert (cfg.train_steps, cfg.model_dir, cfg.eval.max_examples) == (7, "runs/x", None)

def test_every_experiment_uses_every_macro_it_sets():
  """Our own files pass the unused-macro check (each experiment with the tiny overlay)."""
  for path in sorted((gin_setup.GIN_DIR / "experiments").glob("*.gin")):
    assert configure([], [f"experiments/{path.name}", "overlays/tiny_cpu.gin"]) is None, path

def test_required_settings_left_unset():
  assert configure([], ["runs/finetune.gin"]).startswith(
      "DataConfig.mixture_or_task is required and not set: set it with "
      "--gin.MIXTURE_OR_TASK_NAME=")
  assert configure([], ["models/tiny.gin"]).startswith(
      "TrainConfig needs ['model_dir', 'train_steps', 'data']: include an experiment gin file")

def test_train_without_arguments_says_what_is_required():
  proc = run_sbs_here("train")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "sbs train: error: an experiment gin file is required, e.g. sbs train "
      "--gin_file=experiments/cqa_distill_llm.gin --gin.MODEL_DIR=\"'runs/cqa'\" "
      "(experiments: gin_configs/experiments/; see docs/train.md)")

def test_unquoted_path_on_the_command_line_is_one_line():
  proc = run_sbs_here("train", "--gin_file=experiments/cqa_distill_llm.gin",
                      "--gin.MODEL_DIR=runs/x")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "sbs train: error: gin: cannot read the value 'runs' (in --gin.MODEL_DIR=runs/x)")

def test_a_gin_file_with_a_byte_order_mark_reads_like_one_without(tmp_path):
  plain = tmp_path / "plain.gin"
  bom = tmp_path / "bom.gin"
  text = 'include "experiments/cqa_distill_llm.gin"\nTRAIN_STEPS = 7\nnot_a_thing.x = 1\n'
  plain.write_text(text, encoding="utf-8")
  bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
  # the same complaint, about line 3: the mark neither breaks line 1 nor shifts the lines
  assert configure([], [str(plain)]) == configure([], [str(bom)]).replace("bom.gin",
                                                                           "plain.gin")
  assert "not_a_thing" in configure([], [str(bom)])
  bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8").replace(b"not_a_thing.x = 1\n", b""))
  gin.clear_config()
  try:
    gin_setup.parse_gin([str(bom)], ["MODEL_DIR = '/tmp/x'"])
    assert gin_check.configured(config.TrainConfig).train_steps == 7
  finally:
    gin.clear_config()

def test_plan_with_only_a_model_gin_says_what_is_missing():
  result = run_sbs_here("plan", "--mesh", "1x1", "--gin_file", "models/tiny.gin")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "sbs plan: error: TrainConfig needs ['model_dir', 'train_steps', 'data']: include an "
      "experiment gin file, e.g. --gin_file=experiments/cqa_distill_llm.gin"]
