"""`sbs train` of the tiny student on CQA (distilling step-by-step), in this process: the
start of the HF and T5X workflow tests (needs the `annotated` fixture's environment)."""

import gin

from sbs_jax.train import config, gin_setup, loop


def train_tiny_cqa(model_dir, *bindings: str):
  """Trains with small evaluations (8 examples, no rationale samples) plus `bindings`
  (gin lines: TRAIN_STEPS, INITIAL_CHECKPOINT, ...); returns the trainer's results."""
  gin.clear_config()
  gin_setup.parse_gin(["experiments/cqa_distill_llm.gin", "overlays/tiny_cpu.gin"], [
      f"MODEL_DIR = '{model_dir}'", "EvalConfig.max_examples = 8",
      "EvalConfig.max_test_examples = 8", "EvalConfig.rationale_samples = 0", *bindings])
  try:
    return loop.train(config.TrainConfig(), config.student_config())
  finally:
    gin.clear_config()
