"""Training the tiny student on real annotated CQA: the loss goes down, a resumed run has the
same loss curve, and the model dir serves `sbs eval` and `sbs predict`."""

import json
import os
import signal

import gin
import jax
import pytest

from sbs_jax.train import config, gin_setup, loop
from sbs_jax.train.checkpoint import StateCheckpoints
from sbs_jax.train.preemption import Preempted
from sbs_jax.model.model_dir import ModelDir
from tests.helpers.cli import run_sbs_here

SMOKE = ["MODEL_DIR = '{model_dir}'", "TRAIN_STEPS = {steps}", "TrainConfig.log_every = 1",
         "TrainConfig.checkpoint_every = 3", "EvalConfig.every = 6",
         "EvalConfig.max_examples = 16", "EvalConfig.max_test_examples = 16",
         "EvalConfig.batch_size = 16", "OptimizerConfig.warmup_steps = 0",
         "EvalConfig.rationale_samples = 2"]


def train(model_dir, steps, on_step=None):
  gin.clear_config()
  bindings = [b.format(model_dir=model_dir, steps=steps) for b in SMOKE]
  gin_setup.parse_gin(["experiments/cqa_distill_llm.gin", "overlays/tiny_cpu.gin"], bindings)
  try:
    return loop.train(config.TrainConfig(), config.student_config(), on_step=on_step)
  finally:
    gin.clear_config()


class Stop(Exception):
  pass


@pytest.fixture(scope="module")
def trained(annotated, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("model") / "cqa"
  results = train(str(model_dir), 12)
  return model_dir, results


def test_loss_goes_down_and_results_are_written(trained):
  model_dir, results = trained
  losses = [m["loss"] for m in ModelDir(str(model_dir)).read_metrics("train")]
  assert len(losses) == 12
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
  on_disk = json.loads((model_dir / "results.json").read_text())
  assert on_disk["best_step"] in (6, 12) and on_disk["test"]["examples"] == 16
  assert on_disk["eval_task"] == "sbs_cqa_label_llm"
  assert len(on_disk["rationale_samples"]) == 2
  checked = on_disk["length_check"]  # every training example the row lengths cut: counted
  assert checked["task_feature_lengths"] == {"inputs": 512, "targets": 176}
  assert set(checked["tasks"]) == {"sbs_cqa_distill_llm_paired"}
  assert all(t["checked"] > 1000 and 0 <= t["cut"] <= t["checked"]
             for t in checked["tasks"].values())
  assert {m["step"] for m in ModelDir(str(model_dir)).read_metrics("validation")} == {6, 12}
  env = on_disk["environment"]  # what the numbers were computed with
  assert env["backend"] == "cpu" and env["devices"] == jax.device_count()
  assert env["versions"]["jax"] == jax.__version__ and "flax" in env["versions"]
  assert list((model_dir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_interrupted_and_resumed_run_has_the_same_losses(trained, tmp_path):
  model_dir, _ = trained
  reference = [m["loss"] for m in ModelDir(str(model_dir)).read_metrics("train")]

  def stop_at_7(step, metrics):
    if step == 7:  # after the checkpoint of step 6: step 7 is lost, as in a crash
      raise Stop()

  with pytest.raises(Stop):
    train(str(tmp_path / "cqa"), 12, on_step=stop_at_7)
  train(str(tmp_path / "cqa"), 12)
  resumed = ModelDir(str(tmp_path / "cqa")).read_metrics("train")
  assert [m["step"] for m in resumed] == list(range(1, 13))
  assert [m["loss"] for m in resumed] == pytest.approx(reference, abs=1e-6)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_loses_nothing(trained, tmp_path):
  """A preemption notice mid-run: the step it arrived in is checkpointed (5: not a multiple
  of checkpoint_every 3), the run stops with Preempted, and the rerun repeats no step."""
  model_dir, _ = trained
  reference = [m["loss"] for m in ModelDir(str(model_dir)).read_metrics("train")]
  before = signal.getsignal(signal.SIGTERM)

  def notice_after_4(step, metrics):
    if step == 4:  # the handler only notes it: step 5 still runs, then is saved
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(Preempted) as stopped:
    train(str(tmp_path / "cqa"), 12, on_step=notice_after_4)
  assert stopped.value.step == 5
  assert signal.getsignal(signal.SIGTERM) == before  # our handler is gone again
  assert StateCheckpoints(str(tmp_path / "cqa"), 3).latest_step() == 5
  assert [m["step"] for m in ModelDir(str(tmp_path / "cqa")).read_metrics("train")] == [1, 2, 3, 4, 5]
  train(str(tmp_path / "cqa"), 12)
  resumed = ModelDir(str(tmp_path / "cqa")).read_metrics("train")
  assert [m["step"] for m in resumed] == list(range(1, 13))
  assert [m["loss"] for m in resumed] == pytest.approx(reference, abs=1e-6)


@pytest.mark.slow
def test_eval_and_predict_commands(trained):
  model_dir, results = trained
  # In this process (the commands' own output is what is checked; a process of their own
  # would add 5-7 s of imports each).
  proc = run_sbs_here("eval", "--model_dir", model_dir, "--split", "test",
                      "--max_examples=16")
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["step"] == results["best_step"] and got["examples"] == 16
  text = "Where do you put your grapes just before checking out?\nAnswer Choices:\n" \
         "(a) mouth\n(b) grocery cart\n(c) super market\n(d) fruit basket\n(e) fruit market"
  proc = run_sbs_here("predict", "--model_dir", model_dir, "--input", text, "--rationale")
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["input"] == text and isinstance(out["label"], str)
  assert "rationale" in out
  # The run's input length, to which `sbs predict` cuts longer inputs (tiny_cpu.gin's).
  assert json.loads((model_dir / "model.json").read_text())["max_input_length"] == 512
