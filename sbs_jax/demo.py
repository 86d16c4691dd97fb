"""`sbs demo`: the README's main job on a fresh machine, end to end on a CPU.

1. annotate CQA train and test with the replay teacher (the paper's PaLM 540B completions);
2. train the SentencePiece vocabulary on the annotated train split;
3. train the tiny student with distilling step-by-step (teacher labels and rationales),
   `experiments/cqa_distill_llm.gin` under `overlays/tiny_cpu.gin`;
4. evaluate (best step on validation, accuracy on test) and print a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gin

from sbs_jax.annotate import command as annotate_command
from sbs_jax.annotate import job as job_lib
from sbs_jax.data import vocab as vocab_lib
from sbs_jax.data import vocab_command


def add_parser(subparsers) -> None:
  p = subparsers.add_parser("demo", help="the main job: annotate CQA, train the tiny "
                            "student with distilling step-by-step, evaluate")
  p.add_argument("--out_dir", default="runs/demo")
  p.add_argument("--data_dir")
  p.add_argument("--train_steps", type=int, default=None,
                 help="default: the tiny overlay's")
  p.set_defaults(func=main)


def annotate_command_args(args, split: str) -> argparse.Namespace:
  """The arguments of `sbs annotate --dataset cqa --split SPLIT --teacher replay`."""
  parser = argparse.ArgumentParser()
  annotate_command.add_parser(parser.add_subparsers())
  argv = ["annotate", "--dataset", "cqa", "--split", split, "--teacher", "replay",
          "--out_dir", f"{args.out_dir}/annotations"]
  if args.data_dir:
    argv += ["--data_dir", args.data_dir]
  return parser.parse_args(argv)


def main(args) -> int:
  from sbs_jax.train import command, config, loop  # pylint: disable=import-outside-toplevel
  annotation_dir = os.path.abspath(f"{args.out_dir}/annotations")
  vocab_path = os.path.abspath(f"{args.out_dir}/vocab/spm.model")
  model_dir = os.path.abspath(f"{args.out_dir}/model")

  teacher = {}
  for split in ("train", "test"):
    result = job_lib.run(annotate_command.build_job(annotate_command_args(args, split)))
    teacher[split] = result.split_stats
  if not os.path.exists(vocab_path):
    vocab_lib.train_vocabulary(vocab_command.train_texts(annotation_dir, ["cqa"]),
                               vocab_path)

  bindings = [f"MODEL_DIR = '{model_dir}'", f"annotation_dir.path = '{annotation_dir}'",
              f"vocabulary_settings.path = '{vocab_path}'"]
  if args.train_steps:
    bindings.append(f"TRAIN_STEPS = {args.train_steps}")
  gin.clear_config()
  command.parse_gin(["experiments/cqa_distill_llm.gin", "overlays/tiny_cpu.gin"], bindings)
  tic = time.perf_counter()
  results = loop.train(config.TrainConfig(), config.student_config())
  minutes = (time.perf_counter() - tic) / 60

  print("\nDistilling step-by-step, CQA, tiny student on this CPU "
        f"({results['train_steps']} steps, {minutes:.1f} min)\n")
  print(f"{'':28}{'label accuracy':>16}")
  print(f"{'teacher (PaLM 540B), test':28}{teacher['test']['teacher_accuracy']:>15.1f}%")
  print(f"{'student, validation':28}{results['validation']['accuracy']:>15.1f}%"
        f"   (best step {results['best_step']})")
  print(f"{'student, test':28}{results['test']['accuracy']:>15.1f}%")
  print("\nRationales the student writes (explain: task):")
  for sample in results["rationale_samples"]:
    question = sample["input"].split("\n")[0]
    print(f"  Q: {question}\n  -> {sample['rationale']!r}")
  print(f"\nmodel dir:   {model_dir}  (sbs predict --model_dir {model_dir} --input ...)")
  print(f"logs:        {model_dir}/metrics.jsonl, TensorBoard: {model_dir}/tensorboard")
  print(f"results:     {model_dir}/results.json")
  print(json.dumps({"test_accuracy": results["test"]["accuracy"]}))
  return 0
