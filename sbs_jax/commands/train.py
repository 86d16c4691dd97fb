"""`sbs train`, `sbs eval`: gin-configured, T5X style on the command line.

    sbs train --gin_file=experiments/cqa_distill_llm.gin --gin_file=overlays/tiny_cpu.gin \
        --gin.TrainConfig.model_dir="'runs/cqa'"
    sbs eval --model_dir runs/cqa --split test [--label_mode rank]

Gin files are looked up as given, then under the shipped `gin_configs/` (the installed package's
copy, or the source checkout's; `sbs_jax/train/gin_setup.py`).
"""

from __future__ import annotations

import json

import jax

from sbs_jax.errors import SbsError
from sbs_jax.train import distributed, gin_check
from sbs_jax.train.gin_setup import gin_bindings, parse_gin


def add_gin_flags(p) -> None:
  p.add_argument("--gin_file", action="append", default=[],
                 help="gin file (repeatable); relative paths also tried under gin_configs/")
  p.add_argument("--gin_search_path", action="append", default=[])
  p.add_argument("--coordinator_address", help="multi-host: host:port of process 0")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() with automatic detection (TPU VMs)")
  p.epilog = "Bindings: --gin.KEY=VALUE (repeatable), e.g. --gin.TrainConfig.train_steps=100"


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("train", help="train a student with a gin config")
  add_gin_flags(p)
  p.set_defaults(func=train_main, accepts_gin_bindings=True)
  p = subparsers.add_parser("eval", help="score a trained model dir's best params")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--split", default="test",
                  help="validation, test, train, train_50, train_25 or train_12.5")
  p.add_argument("--max_examples", metavar="N|all",
                 help="score the first N examples of the split ('all': every one). Default: "
                 "validation as capped in training (EvalConfig.max_examples), test as capped "
                 "in training (EvalConfig.max_test_examples), other splits whole")
  p.add_argument("--label_mode", choices=("greedy", "rank"), default="greedy",
                 help="greedy: decode the label (EvalConfig's length and beams); rank: score "
                 "each label of the dataset's closed set (NLI's three, or the choices each "
                 "input lists) and answer the most likely (ties: the first)")
  add_gin_flags(p)
  p.set_defaults(func=eval_main, accepts_gin_bindings=True)


def _max_examples(text: str) -> int:
  """--max_examples: a positive count, or 'all' (returned as 0: no cap)."""
  if text.strip().lower() == "all":
    return 0
  try:
    value = int(text)
  except ValueError:
    value = -1
  if value < 1:
    raise SbsError(f"--max_examples {text!r} is not a positive whole number or 'all': "
                   "e.g. --max_examples 256, or --max_examples all for the whole split")
  return value


def initialize_distributed(args) -> None:
  """Joins a multi-host JAX cluster when the launcher's flags ask for it."""
  distributed.initialize(getattr(args, "coordinator_address", None),
                         getattr(args, "num_processes", None),
                         getattr(args, "process_id", None), getattr(args, "multihost", False))


def train_main(args) -> int:
  from sbs_jax.train import config, loop  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.progress import labelled  # pylint: disable=import-outside-toplevel
  if not args.gin_file:
    raise SbsError("an experiment gin file is required, e.g. sbs train "
                   "--gin_file=experiments/cqa_distill_llm.gin --gin.MODEL_DIR=\"'runs/cqa'\" "
                   "(experiments: gin_configs/experiments/; see docs/train.md)")
  initialize_distributed(args)
  parse_gin(args.gin_file, gin_bindings(args.gin_bindings), args.gin_search_path)
  results = loop.train(gin_check.configured(config.TrainConfig),
                       gin_check.configured(config.student_config))
  print(json.dumps({"model_dir": results["model_dir"], "best_step": results["best_step"],
                    "validation": labelled(results["validation"]),
                    "test": labelled(results["test"])}))
  return 0


def eval_main(args) -> int:
  import sys  # pylint: disable=import-outside-toplevel
  from sbs_jax.model import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.model_dir import ModelDir  # pylint: disable=import-outside-toplevel
  from sbs_jax.train import config  # pylint: disable=import-outside-toplevel
  from sbs_jax.train import evaluate as eval_lib  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.data import label_examples  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.state import build_student, make_mesh  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.progress import eval_line, labelled  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if args.max_examples is not None:
    _max_examples(args.max_examples)  # a bad value: one line before anything loads
  initialize_distributed(args)
  # Reads only (no lock): a dir that training is writing is scored at its best step so far.
  saved = f"{args.model_dir}/{model_dir_lib.GIN_CONFIG}"
  if not tf.io.gfile.exists(saved):
    raise SbsError(f"--model_dir {args.model_dir} is not a model dir of `sbs train` (no "
                   f"{model_dir_lib.GIN_CONFIG}): pass the MODEL_DIR of a training run")
  parse_gin([saved, *args.gin_file], gin_bindings(args.gin_bindings), args.gin_search_path)
  cfg = gin_check.configured(config.TrainConfig)
  model_config = cfg.parallelism.network(gin_check.configured(config.student_config))
  label_task = cfg.data.label_task()
  # The cap: the flag's; else the run's own for validation and test (so that the numbers
  # are those of results.json); other splits whole. Shown whenever it cuts the split.
  if args.max_examples is not None:
    limit, capped_by = _max_examples(args.max_examples) or None, "--max_examples"
  elif args.split == "validation":
    limit, capped_by = cfg.eval.max_examples, "EvalConfig.max_examples"
  elif args.split == "test":
    limit, capped_by = cfg.eval.max_test_examples, "EvalConfig.max_test_examples"
  else:
    limit, capped_by = None, ""
  examples = label_examples(label_task, args.split, limit)  # an unknown split: one line
  if args.label_mode == "rank":  # no closed label set, or an input without choices: one line
    eval_lib.candidates(label_task, examples)
  student = build_student(model_config, make_optimizer(cfg.optimizer, cfg.train_steps),
                          make_mesh(cfg.parallelism.mesh), cfg.parallelism.partitioning_dims)
  params, best = ModelDir(args.model_dir).load_params(student.abstract_state["params"])
  metrics, _ = eval_lib.evaluate(student, params, label_task, args.split, cfg.eval, examples,
                                 args.label_mode)
  if jax.process_index() == 0:
    print(eval_line(best["step"], args.split, metrics, capped_by), file=sys.stderr)
  out = {"split": args.split, "step": best["step"], "label_mode": args.label_mode,
         **labelled(metrics)}
  if "split_examples" in metrics:
    out["capped_by"] = capped_by
  print(json.dumps(out))
  return 0
