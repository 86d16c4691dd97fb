"""Configuration of a training run, bound by gin (see gin_configs/runs/ and experiments/).

Groups, each a small dataclass: the student network (`student_config`), the data
(`DataConfig`), the optimizer (`OptimizerConfig`), evaluation (`EvalConfig`), how the step
is laid out on the devices (`ParallelismConfig`), and the run itself (`TrainConfig`), which
holds the others.
"""

from __future__ import annotations

import dataclasses
import math

import gin

from sbs_jax import task_kinds
from sbs_jax.data.packing import PACKINGS
from sbs_jax.model.config import REMAT_POLICIES, T5Config, config_for
from sbs_jax.train.gin_check import ConfigError, check_fields, check_range


@gin.configurable
def student_config(size: str = gin.REQUIRED, **overrides) -> T5Config:
  """The student's network: a published T5 v1.1 size with fields overridden (its remat
  policy is the run's `ParallelismConfig.remat_policy`, set when the run is built)."""
  for name in ParallelismConfig.NETWORK_FIELDS:
    if name in overrides:
      raise ConfigError(f"student_config.{name} moved to ParallelismConfig.{name}: bind "
                        "that instead (it lays out the step; it does not change the network)")
  return config_for(size, **overrides)


@gin.configurable
@dataclasses.dataclass
class DataConfig:
  """What the student learns from.

  Attributes:
    mixture_or_task: a registered SeqIO task or mixture (see `tasks`).
    train_split: train, or train_50 / train_25 / train_12.5 for the data-size curves.
    eval_task: the label task scored on validation and test; by default the label task
      of the same dataset and label source (gold labels on evaluation splits).
    task_feature_lengths: packed row lengths, e.g. {"inputs": 1024, "targets": 352}.
    pack: pack several examples per row (with segment ids).
    packing: how examples are packed into rows: "next_fit" (SeqIO's
      trim_and_pack_dataset: an example that does not fit closes the row), "best_fit"
      (best-fit decreasing over windows of `packing_window` consecutive examples of the
      shuffled stream; fuller rows, above all short ones) or "pair_fit" (over the same
      windows, a row at a time, filled by the pair of examples that fills it most: fuller
      still for rows of two to four examples; sbs_jax/data/packing.py). A run pins it
      (run.json); runs written before this field packed next_fit.
    packing_window: best_fit and pair_fit only: how many consecutive examples are packed together
      (more: fuller rows, and examples moved further from their place in the stream).
    batch_size: rows per step, over all hosts (each row may hold several examples).
    seed: shuffling and mixing seed.
    max_truncated_share: the share of checked training examples that task_feature_lengths
      (or a paired example's part caps) may cut; a run over it is refused before it
      starts. Every cut is counted and reported either way (1.0: allow any).
    length_check_examples: how many training examples of each task the length check
      tokenizes (the first of the split, in file order).
    fit_lengths: unpacked rows only: pad rows to the longest training example (rounded up
      to a multiple of 8, never beyond task_feature_lengths) instead of to
      task_feature_lengths. Every row keeps all its tokens; less padding means a faster
      step (a label-only row of 44 tokens need not pay for 96). The length check must have
      read every training example of each task (the split holds fewer than
      length_check_examples), else the run is refused.
  """
  mixture_or_task: str = gin.REQUIRED
  train_split: str = "train"
  eval_task: str | None = None
  task_feature_lengths: dict = dataclasses.field(
      default_factory=lambda: {"inputs": 1024, "targets": 352})
  pack: bool = True
  packing: str = "next_fit"
  packing_window: int = 1024
  batch_size: int = 64
  seed: int = 0
  max_truncated_share: float = 0.5
  length_check_examples: int = 5000
  fit_lengths: bool = False

  def __post_init__(self):
    check_fields(self)
    check_range(self, "batch_size", self.batch_size >= 1, "at least 1")
    check_range(self, "packing", self.packing in PACKINGS, " or ".join(PACKINGS))
    check_range(self, "packing_window", self.packing_window >= 1,
                "at least 1 example (e.g. 1024)")
    check_range(self, "max_truncated_share", 0.0 <= self.max_truncated_share <= 1.0,
                "between 0 and 1")
    check_range(self, "length_check_examples", self.length_check_examples >= 1,
                "at least 1")
    check_range(self, "fit_lengths", not (self.fit_lengths and self.pack),
                "False with pack = True (packing fills each row to task_feature_lengths; "
                "fit_lengths is for unpacked rows)")
    lengths = self.task_feature_lengths
    if (set(lengths) != {"inputs", "targets"} or
        not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                for v in lengths.values())):
      check_range(self, "task_feature_lengths", False,
                  "{'inputs': N, 'targets': M} with N, M positive whole numbers of tokens")

  def label_task(self) -> str:
    """The label task scored on validation and test; both names must be registered."""
    from tasks import get_task_or_mixture  # pylint: disable=import-outside-toplevel
    get_task_or_mixture(self.mixture_or_task)  # an unknown name: one line listing the known
    return get_task_or_mixture(self.eval_task or default_eval_task(self.mixture_or_task)).name


def default_eval_task(name: str) -> str:
  """sbs_<ds>_distill_llm[_paired] -> sbs_<ds>_label_llm; standard and label tasks: same
  (the task kinds' table, sbs_jax/task_kinds.py)."""
  return task_kinds.eval_task(name)


@gin.configurable
@dataclasses.dataclass
class OptimizerConfig:
  """adamw (the paper: lr 5e-5, linear decay) or adafactor (T5X's default)."""
  name: str = "adamw"
  learning_rate: float = 5e-5
  schedule: str = "linear"  # linear (to 0 at the last step), constant, or rsqrt
  warmup_steps: int = 0
  weight_decay: float = 0.0

  def __post_init__(self):
    check_fields(self)
    check_range(self, "name", self.name in ("adamw", "adafactor"), "adamw or adafactor")
    check_range(self, "learning_rate",
                math.isfinite(self.learning_rate) and self.learning_rate >= 0,
                "0 or more, e.g. 5e-5 (0 keeps the parameters as they are)")
    check_range(self, "schedule", self.schedule in ("linear", "constant", "rsqrt"),
                "linear, constant or rsqrt")
    check_range(self, "warmup_steps", self.warmup_steps >= 0, "0 or more")
    check_range(self, "weight_decay",
                math.isfinite(self.weight_decay) and self.weight_decay >= 0, "0 or more")


@gin.configurable
@dataclasses.dataclass
class ParallelismConfig:
  """How a step is laid out on the devices: none of it changes what is learned (beyond
  rounding), so a run may resume under other settings (train/run_dir.py).

  Attributes:
    mesh: (data, model) device mesh; -1 takes the remaining devices.
    partitioning_dims: (activation, parameter) partitioning dims of T5X's rules, 1 or 2.
    grad_accum_steps: micro-batches per step (the batch is the same, its activations
      smaller).
    remat_policy: which activations each layer keeps for the backward pass: none, dots or
      full (sbs_jax/model/config.py).
  """
  mesh: tuple = (-1, 1)
  partitioning_dims: tuple = (1, 1)
  grad_accum_steps: int = 1
  remat_policy: str = "none"

  # The network's fields this config sets (they are not part of the network's identity).
  NETWORK_FIELDS = ("remat_policy",)

  def __post_init__(self):
    check_fields(self)
    check_range(self, "partitioning_dims",
                len(self.partitioning_dims) == 2 and all(d in (1, 2) for d in
                                                         self.partitioning_dims),
                "(activation, parameter) dims, each 1 or 2")
    check_range(self, "mesh", len(self.mesh) == 2 and all(
        isinstance(d, int) and (d >= 1 or d == -1) for d in self.mesh),
                "(data, model): positive sizes, or -1 for the remaining devices")
    check_range(self, "grad_accum_steps", self.grad_accum_steps >= 1, "at least 1")
    check_range(self, "remat_policy", self.remat_policy in REMAT_POLICIES,
                " or ".join(REMAT_POLICIES))

  def network(self, model_config: T5Config) -> T5Config:
    """The network as this layout runs it (its remat policy set). A network config that
    already names another policy is refused: one of the two would be ignored."""
    if model_config.remat_policy not in ("none", self.remat_policy):
      raise ConfigError(f"the network config says remat_policy {model_config.remat_policy!r} "
                        f"but ParallelismConfig.remat_policy is {self.remat_policy!r}: set "
                        "ParallelismConfig.remat_policy alone")
    return dataclasses.replace(model_config, remat_policy=self.remat_policy)


@gin.configurable
@dataclasses.dataclass
class EvalConfig:
  """Greedy (beam_size 1) or beam decoding of the label task every `every` steps."""
  every: int = 500
  selection_metric: str = "accuracy"  # the validation metric that picks the best step
  batch_size: int = 64
  max_examples: int | None = None  # of validation (smoke runs); None: all
  max_test_examples: int | None = None  # of test; None (the default): all, for real numbers
  label_decode_length: int = 64
  beam_size: int = 1
  rationale_samples: int = 3  # validation examples whose rationale is decoded and shown
  rationale_decode_length: int = 256

  def __post_init__(self):
    check_fields(self)
    for name in ("every", "batch_size", "label_decode_length", "beam_size",
                 "rationale_decode_length"):
      check_range(self, name, getattr(self, name) >= 1, "at least 1")
    for name in ("max_examples", "max_test_examples"):
      value = getattr(self, name)
      check_range(self, name, value is None or value >= 1, "at least 1, or None for all")
    check_range(self, "rationale_samples", self.rationale_samples >= 0, "0 or more")


@gin.configurable
@dataclasses.dataclass
class TrainConfig:
  """A training run.

  Attributes:
    model_dir: checkpoints, logs, results.json (local or gs://).
    alpha: weight of the label loss; 1 - alpha weighs the rationale loss (standard
      finetuning and distillation use 1.0: the label loss alone).
    parallelism: the mesh, partitioning, gradient accumulation and remat.
    initial_checkpoint: a directory written by `sbs import-hf` (or a trained model dir) to
      start from, instead of a random init.
  """
  model_dir: str = gin.REQUIRED
  train_steps: int = gin.REQUIRED
  alpha: float = 0.5
  data: DataConfig = gin.REQUIRED
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  log_every: int = 50
  seed: int = 0
  parallelism: ParallelismConfig = dataclasses.field(default_factory=ParallelismConfig)
  initial_checkpoint: str | None = None

  def __post_init__(self):
    check_fields(self)
    check_range(self, "model_dir", bool(self.model_dir.strip()), "a directory path")
    check_range(self, "train_steps", self.train_steps >= 1, "at least 1")
    # A weight outside [0, 1] makes one of the two terms negative: training would then
    # maximise that task's cross-entropy (ALPHA = 50 drives the loss to -766).
    check_range(self, "alpha", math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0,
                "between 0 and 1 (the label loss's weight; 1 - alpha weighs the rationale "
                "loss)")
    for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
      check_range(self, name, getattr(self, name) >= 1, "at least 1")
