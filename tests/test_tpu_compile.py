"""`sbs plan --topology`: the train step and the eval decoding step compiled for a Cloud
TPU slice on this CPU (libtpu from the `tpu` extra), with the compiler's per-chip figures.

Each test runs the command in a subprocess (libtpu is loaded there, not in pytest's JAX).
"""

import importlib.util
import json

import pytest

from sbs_jax.perf.flops import analytic_flops
from sbs_jax.model.config import config_for
from sbs_jax.train.config import DataConfig, OptimizerConfig, TrainConfig
from sbs_jax.perf.plan import plan
from tests.helpers import run_sbs
from tests.helpers.cli import run_sbs_here

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu (pip install -e '.[tpu]') is not installed")

EXPERIMENT = ["--gin_file=experiments/cqa_distill_llm.gin"]


def compile_plan(*args, timeout=900, env=None):
  proc = run_sbs("plan", *EXPERIMENT, *args, timeout=timeout, env=env)
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  return proc, records


def short_rows(batch: int, inputs: int, targets: int) -> list[str]:
  return [f"--gin.BATCH_SIZE={batch}",
          f"--gin.DataConfig.task_feature_lengths={{'inputs': {inputs}, 'targets': {targets}}}"]


def param_count(size: str, **overrides) -> int:
  cfg = TrainConfig(model_dir="unused", train_steps=10,
                    data=DataConfig(mixture_or_task="sbs_cqa_distill_llm_paired"),
                    optimizer=OptimizerConfig())
  return plan(cfg, config_for(size, **overrides), 1, 1)["parameters"]


@needs_libtpu
def test_tiny_student_compiles_for_v4_8_with_the_arithmetic_of_its_shardings():
  proc, records = compile_plan(
      "--topology", "v4-8", "--mesh", "1x4", "--gin_file=models/tiny.gin",
      "--gin.ParallelismConfig.grad_accum_steps=2", *short_rows(8, 64, 32))
  assert proc.returncode == 0, proc.stderr[-3000:]
  train, decode = records
  assert (train["program"], decode["program"]) == ("train_step", "eval_decode")
  assert train["chips"] == 4 and train["mesh"] == "1x4" and train["hbm_gib"] == 32.0
  assert train["fits"] and decode["fits"]
  # The per-chip argument bytes are what the shardings say, computed here on our own:
  # 1-D rules on a 1x4 mesh split every kernel, the embedding and the relpos tables four
  # ways; the RMS scales are whole on every chip. AdamW keeps mu and nu like the params,
  # plus two int32 counts; the state has an int32 step; the batch is not split (data 1).
  c = config_for("tiny")
  params = 4 * param_count("tiny")
  scales = 4 * c.emb_dim * (2 * c.num_encoder_layers + 3 * c.num_decoder_layers + 2)
  per_chip_params = (params - scales) // 4 + scales
  batch = 4 * 8 * (3 * 64 + 5 * 32)  # 3 encoder and 5 decoder features, int32
  expected = 3 * per_chip_params + 8 + 4 + batch
  assert train["sharded_argument_bytes"] == expected
  # The compiler's figure is the same plus the TPU tiles' padding of small arrays, to within
  # one 4 KiB tile (docs/scale.md: our tile count is up to a few tiles too high).
  ours = expected + train["argument_padding_bytes"]
  assert ours - 4096 <= train["xla_bytes"]["argument"] <= ours
  # The state is donated: its update reuses its buffers.
  assert train["xla_bytes"]["alias"] >= 3 * per_chip_params
  assert train["replicated_state_gib"] < 0.001
  assert train["compile_s"] > 0
  # Per chip, the micro-batch loop counted twice: at least the matmuls of a quarter of the
  # step (bench's count), at most 1.5x that (norms, softmax, the optimizer).
  matmuls = analytic_flops(config_for("tiny"), 8, 64, 32) / 4
  assert matmuls <= train["flops_per_step"] <= 1.5 * matmuls
  assert train["flops_per_step"] == 2 * train["xla_flops"]
  # Activations split over 'model' need partial sums: all-reduces in every micro-step.
  assert train["collectives"]["all-reduce"]["count"] >= 2
  assert decode["decode_rows"] == 64 and decode["decode_length"] == 64
  assert "per_chip" in proc.stderr and "train_step" in proc.stderr  # the table


@needs_libtpu
def test_small_student_with_2d_rules_splits_its_state_over_all_chips():
  # With remat and libtpu flags: the flags are recorded, and the formula gives no estimate
  # for remat with 2-D rules over 2 data shards (docs/scale.md).
  lean = "--xla_tpu_choose_faster_windowed_einsum_over_mem=false"
  proc, records = compile_plan(
      "--topology", "v4-8", "--mesh", "2x2", "--gin_file=models/small.gin",
      "--gin.ParallelismConfig.partitioning_dims=(1,2)", "--programs=train_step",
      "--gin.ParallelismConfig.remat_policy='full'", *short_rows(8, 128, 64),
      env={"LIBTPU_INIT_ARGS": lean})
  assert proc.returncode == 0, proc.stderr[-3000:]
  (train,) = records
  assert train["fits"] and train["partitioning_dims"] == [1, 2]
  assert train["remat_policy"] == "full" and train["libtpu_init_args"] == lean
  assert train["estimate_gib"] is None
  # Parameters, mu and nu: a quarter of them per chip (no weight replicated), up to the
  # relpos tables and scales that do not split four ways.
  state = 3 * 4 * param_count("small")
  batch = 4 * (8 // 2) * (3 * 128 + 5 * 64)
  per_chip_state = train["sharded_argument_bytes"] - batch
  assert state / 4 <= per_chip_state <= state / 4 + 200_000
  ours = train["sharded_argument_bytes"] + train["argument_padding_bytes"]
  assert ours - 4096 <= train["xla_bytes"]["argument"] <= ours
  assert train["replicated_state_gib"] < 0.001
  # 2-D rules: weights are gathered over 'data' before use.
  assert train["collectives"]["all-gather"]["count"] > 0


@needs_libtpu
def test_a_run_that_cannot_fit_is_refused_with_the_compilers_message():
  # A 12M-token vocabulary: 9 GiB of state and 20 GiB of temporaries on a 16 GiB v5e chip.
  proc, records = compile_plan(
      "--topology", "v5e-1", "--programs=train_step", "--gin_file=models/tiny.gin",
      "--gin.student_config.vocab_size=12000000", *short_rows(8, 64, 32))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert records[0]["fits"] is False
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("sbs plan: error: train_step does not fit v5e-1 (16.0 GiB per chip)")
  assert "RESOURCE_EXHAUSTED" in last and "Traceback" not in proc.stderr


def test_bad_topology_is_one_line_before_anything_compiles():
  proc = run_sbs_here("plan", "--topology", "v3-8", *EXPERIMENT)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "sbs plan: error: unknown TPU slice 'v3-8'")
  assert "Traceback" not in proc.stderr
