"""`sbs synthetic`: generate a controlled task, serve its teacher, prepare it for a sweep,
score a student's own rationales (the tasks themselves: `sbs_jax/experiments/synthetic.py`)."""

from __future__ import annotations

import argparse
import json
import threading

from sbs_jax.errors import SbsError
from sbs_jax.experiments import prepare, synthetic
from sbs_jax.testing.fake_openai import PortError


def form_of(args) -> synthetic.Form:
  return synthetic.Form(args.form, args.op, args.people, args.max_count).check()


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "synthetic", help="the controlled tasks: generate one, serve its teacher, prepare it",
      description="The controlled experiments' tasks (docs/experiments.md): seeded word "
      "problems and a programmatic chain-of-thought teacher behind the OpenAI API.")
  actions = p.add_subparsers(dest="action", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", default="marbles", help="the dataset's name")
  common.add_argument("--train", type=int, default=2000, help="train problems")
  common.add_argument("--test", type=int, default=500, help="test problems")
  common.add_argument("--seed", type=int, default=0)
  common.add_argument("--form", default="lookup", choices=synthetic.FORMS,
                      help="lookup: the question names the two people (the control); "
                      "marked: two facts are starred (default: %(default)s)")
  common.add_argument("--op", default="sum", choices=synthetic.OPS,
                      help="what the label does with the two counts (default: %(default)s)")
  common.add_argument("--people", type=int, default=4, help="people per problem")
  common.add_argument("--max_count", type=int, default=9, help="counts are 1..max_count")
  g = actions.add_parser("generate", parents=[common],
                         help="write <out_dir>/{train,test}/<name>.jsonl")
  g.add_argument("--out_dir", required=True)
  t = actions.add_parser("teacher", help="serve the teacher on 127.0.0.1 until Ctrl-C "
                         "(it answers every form)")
  t.add_argument("--port", type=int, default=8000,
                 help="1..65535, or 0 for any free one (default: %(default)s)")
  t.add_argument("--error_rate", type=float, default=0.0,
                 help="share of questions the teacher gets wrong (seeded by the text)")
  t.add_argument("--sampled", action="store_true",
                 help="sample: each answer to a question draws its own misreading (for "
                 "sbs annotate --num_samples)")
  i = actions.add_parser(
      "inspect", help="score a student's own rationales (sbs predict --rationale output) "
      "step by step", description="Percent of rows whose rationale states the two right "
      "counts, does its arithmetic right on its own counts, reaches the right answer; and "
      "of labels that agree with the student's own rationale, and with the gold label.")
  i.add_argument("--predictions", required=True,
                 help="sbs predict --rationale --output_file of the problems")
  i.add_argument("--problems", required=True,
                 help="the problems file it ran on (<out_dir>/data/test/<name>.jsonl)")
  r = actions.add_parser("prepare", parents=[common],
                         help="generate, annotate through the live teacher, build the vocab")
  r.add_argument("--out_dir", required=True)
  r.add_argument("--error_rate", type=float, default=0.0)
  r.add_argument("--num_samples", type=int, default=1,
                 help="answers per question; above 1 the teacher samples (each answer "
                 "misreads on its own draw) and is asked at temperature 0.7")
  r.add_argument("--keep", default="all", choices=("all", "gold", "vote"),
                 help="which rationales train the student (sbs annotate --keep)")
  r.add_argument("--sampled", action="store_true",
                 help="a sampling teacher also for one sample (its sample 0 is then the "
                 "first of a --num_samples run's answers); implied by --num_samples > 1")
  p.set_defaults(func=main, local_only=("out_dir",))


def main(args) -> int:
  if args.action == "generate":
    paths = synthetic.generate(args.out_dir, args.name, args.train, args.test, args.seed,
                               form=form_of(args))
    print(json.dumps({split: str(path) for split, path in paths.items()}))
  elif args.action == "inspect":
    print(json.dumps(synthetic.inspect(args.predictions, args.problems)))
  elif args.action == "teacher":
    try:
      rate = synthetic.check_error_rate(args.error_rate)
      server = synthetic.teacher_server(rate, args.port, sampled=args.sampled).start()
    except PortError as e:
      raise SbsError(str(e)) from None
    print(f"teacher at {server.url} (model {synthetic.TEACHER_MODEL}); Ctrl-C stops it", flush=True)
    try:
      threading.Event().wait()
    finally:
      server.stop()
  else:
    rate = synthetic.check_error_rate(args.error_rate)
    ready = prepare.prepare_synthetic(args.out_dir, args.name, args.train, args.test,
                                      args.seed, error_rate=rate, form=form_of(args),
                                      num_samples=args.num_samples, keep=args.keep,
                                      sampled=args.sampled or None)
    print(json.dumps(ready.__dict__))
  return 0
