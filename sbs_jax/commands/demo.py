"""`sbs demo`: the README's main job on a fresh machine, end to end on a CPU.

Part 1, the paper's data: annotate CommonsenseQA train and test with the replay teacher
(PaLM 540B's released completions), train the vocabulary, and show a record as the
student's two tasks see it (`sbs_cqa_distill_llm_paired`). A student trained from scratch
on this CPU does not learn CQA (it needs the paper's pretrained T5); that is said, not run.

Part 2, the method where a from-scratch student can learn: the marked-selection task of
`sbs synthetic` (two of four counts are starred; the label is the last digit of their
sum), annotated by its programmatic teacher through the live OpenAI path, then standard
finetuning and distilling step-by-step with one budget (`overlays/marked_cpu.gin`) by
`sbs sweep`, and the table and figure of `sbs report`.
"""

from __future__ import annotations

import os
import pathlib
import time

from sbs_jax.errors import SbsError
from sbs_jax.experiments import prepare, report, sweep, synthetic
from sbs_jax.metrics import mean_std

METHODS = ("standard_finetuning", "distill_llm")
NAMES = {"standard_finetuning": "standard finetuning",
         "distill_llm": "distilling step-by-step"}
OVERLAY = "overlays/marked_cpu.gin"
# The controlled task: marked selection, the last digit of the two starred counts' sum.
FORM = synthetic.Form("marked", "sum_last_digit")
TASK_NAME = "marked_sum"
TRAIN_PROBLEMS, TEST_PROBLEMS = 16000, 500


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "demo", help="the main job: CQA with the paper's rationales, then distilling "
      "step-by-step against standard finetuning on the controlled task")
  p.add_argument("--out_dir", default="runs/demo")
  p.add_argument("--data_dir", help="the paper's data (default: $SBS_DATA_DIR, else "
                 "../shared/datasets)")
  p.add_argument("--fraction", type=float, default=100.0,
                 help="percent of the controlled task's training problems both students get")
  p.add_argument("--seeds", default="0", help="comma-separated; one run per method and seed")
  p.add_argument("--train_problems", type=int, default=TRAIN_PROBLEMS,
                 help="the controlled task's training problems (default: %(default)s; the "
                 "effect needs many: see docs/experiments.md)")
  p.epilog = (f"Bindings for the controlled runs, after {OVERLAY}: --gin.KEY=VALUE "
              "(repeatable), e.g. --gin.TRAIN_STEPS=200")
  p.set_defaults(func=main, accepts_gin_bindings=True, local_only=("out_dir", "data_dir"))


def cqa_part(args, out: pathlib.Path) -> dict:
  """Annotates CQA (replay), trains its vocabulary, prints one record as the two tasks."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel
  annotation_dir, vocab = out / "annotations", out / "vocab" / "spm.model"
  stats = {}
  for split in ("train", "test"):
    stats[split] = prepare.annotate(dataset="cqa", split=split, teacher="replay",
                                    out_dir=str(annotation_dir),
                                    data_dir=args.data_dir).split_stats
  prepare.ensure_vocabulary(annotation_dir, ["cqa"], vocab, vocab_size=8000)
  names = tasks.register_dataset("cqa", annotation_dir=str(annotation_dir),
                                 vocabulary=seqio.SentencePieceVocabulary(str(vocab)))
  print(f"\n== Part 1: CommonsenseQA with the paper's PaLM 540B rationales\n"
        f"annotated {stats['train']['examples']} train and {stats['test']['examples']} "
        f"test examples; the teacher's test accuracy: "
        f"{stats['test']['teacher_accuracy']:.1f}%\n"
        f"one record as the student's two tasks ({names['distill_llm_paired']}):")
  for kind in ("label_llm", "rationale"):
    ds = seqio.get_mixture_or_task(names[kind]).get_dataset(
        sequence_length=None, split="train", shuffle=False, num_epochs=1)
    example = next(ds.take(1).as_numpy_iterator())
    text = example["inputs_pretokenized"].decode().replace("\n", " ")
    print(f"  {text[:110]}...\n    -> {example['targets_pretokenized'].decode()!r}")
  print("A student trained from scratch here learns the rationales' style but not to pick "
        "the answer: the tiny student after 300 steps scored 0.1% on CQA test, below the "
        "20% of guessing among five choices. CQA needs the paper's pretrained T5 v1.1 "
        "(docs/hf.md: 'Reproducing a paper row').")
  return stats


def controlled_part(args, out: pathlib.Path) -> tuple[str, list, float]:
  """The controlled task: prepare it, sweep both methods, report.

  Returns the sweep dir, its cells and the teacher's test accuracy.
  """
  print("\n== Part 2: the controlled task, marked selection (docs/experiments.md)")
  ready = prepare.prepare_synthetic(out / "marked", TASK_NAME, args.train_problems,
                                    TEST_PROBLEMS, form=FORM)
  settings = {"dataset": ready.dataset, "alpha": 0.5, "annotation_dir": ready.annotation_dir,
              "vocab": ready.vocab, "gin_files": [OVERLAY],
              "bindings": sweep.gin_binding_args(args.gin_bindings)}
  sweep_dir = str(out / "marked" / "sweep")
  grid = check_args(args)
  grid = sweep.record_sweep(sweep_dir, settings, grid)
  print(f"{ready.dataset}: {ready.train_examples:,} train problems (the students get "
        f"{args.fraction:g}%), {ready.test_examples} test; the teacher's test accuracy: "
        f"{ready.teacher_test_accuracy:.1f}%")
  sweep.run(settings, grid, sweep_dir)
  cells, _ = report.write_report(sweep_dir)
  return sweep_dir, cells, ready.teacher_test_accuracy


def check_args(args) -> dict:
  """Every argument checked before minutes of work; returns the controlled runs' grid."""
  grid = sweep.parse_grid(",".join(METHODS), f"{args.fraction:g}", "", args.seeds)
  sweep.gin_binding_args(args.gin_bindings)
  if args.train_problems < 100:
    raise SbsError(f"--train_problems must be at least 100, got {args.train_problems}")
  if args.data_dir and not os.path.isdir(args.data_dir):
    raise SbsError(f"--data_dir {args.data_dir}: no such directory (the paper's data, "
                   "from `sbs download`)")
  return grid


def main(args) -> int:
  tic = time.perf_counter()
  check_args(args)
  out = prepare.check_writable(os.path.abspath(args.out_dir))
  cqa_part(args, out)
  sweep_dir, cells, teacher = controlled_part(args, out)
  steps = cells[0].results["train_steps"] if cells[0].results else "?"
  print(f"\n== Distilling step-by-step against standard finetuning: marked selection "
        f"(last digit of the starred counts' sum),\ntiny student from scratch, "
        f"{args.fraction:g}% of the training problems, {steps} steps, same batch and "
        f"learning rate ({time.perf_counter() - tic:.0f} s in all)\n")
  print(f"{'':34}{'test accuracy':>14}   seeds")
  print(f"{'teacher (programmatic)':34}{teacher:>13.1f}%")
  for group in report.group(cells, "accuracy"):
    mean, std = mean_std(group.test)
    spread = f" ± {std:.1f}" if std is not None else ""
    print(f"{NAMES[group.method]:34}{mean:>13.1f}%{spread}   {len(group.test)}")
  print(f"\ntable:   {sweep_dir}/results.md\nfigures: {sweep_dir}/figures/ "
        "(validation_vs_step.png, accuracy_vs_data.png, curves/*.png)\n"
        "the full grid: docs/experiments.md")
  return 0
