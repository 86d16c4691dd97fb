"""The controlled task: seeded word problems whose label needs steps a rationale spells out.

Each problem names a few people, each with a number of marbles, and asks how many two
of them have together:

    Ann has 5 marbles. Bob has 2 marbles. Cal has 7 marbles. Dee has 4 marbles.
    How many marbles do Bob and Dee have together?

The label (6) needs three steps: find Bob's count, find Dee's count, add them. The
programmatic teacher (`teacher_completion`) reads only the question text and writes those
steps as its chain of thought, in the generic prompt's answer format:

    Bob has 2 marbles. Dee has 4 marbles. 2 + 4 = 6. So the answer is 6.

It is served over the OpenAI completions API by `teacher_server` (the project's
`FakeOpenAIServer` with this answer function), so that `sbs annotate --teacher openai`
runs its live path end to end. `error_rate` makes a seeded share of its answers wrong
(it misreads one count), as a real teacher would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import random
import re
import threading

from sbs_jax import paths as paths_lib
from sbs_jax.errors import SbsError
from sbs_jax.testing.fake_openai import FakeOpenAIServer

NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Leo",
         "Max", "Ned", "Oli", "Pam", "Quin", "Ray", "Sue", "Tom", "Uma", "Vic", "Wes", "Zoe")
OBJECTS = ("marbles", "apples", "coins", "stamps", "shells", "cards")
_FACT = re.compile(r"\b([A-Z][a-z]+) has (\d+) ([a-z]+)\.")
TEACHER_MODEL = "programmatic-teacher"  # the model name the teacher server is asked for
_QUESTION = re.compile(r"How many ([a-z]+) do ([A-Z][a-z]+) and ([A-Z][a-z]+) have together\?")


def make_problem(rng: random.Random, people: int = 4, max_count: int = 9) -> dict:
  """One problem: `input` (the text) and `label` (the sum, as text)."""
  names = rng.sample(NAMES, people)
  counts = [rng.randint(1, max_count) for _ in names]
  thing = rng.choice(OBJECTS)
  a, b = rng.sample(range(people), 2)
  facts = " ".join(f"{n} has {c} {thing}." for n, c in zip(names, counts))
  question = f"How many {thing} do {names[a]} and {names[b]} have together?"
  return {"input": f"{facts} {question}", "label": str(counts[a] + counts[b])}


def generate(out_dir, name: str = "marbles", train: int = 2000, test: int = 500,
             seed: int = 0, people: int = 4, max_count: int = 9) -> dict[str, pathlib.Path]:
  """Writes `<out_dir>/<split>/<name>.jsonl` for train and test; no test input is in train.

  Returns the path of each split's file. The same arguments give the same files.
  """
  if people < 2 or people > len(NAMES):
    raise SbsError(f"--people must be in [2, {len(NAMES)}], got {people}")
  if train < 1 or test < 1:
    raise SbsError("--train and --test must be positive")
  rng = random.Random(seed)
  seen: set[str] = set()
  paths = {}
  for split, n in (("train", train), ("test", test)):
    rows, attempts = [], 0
    while len(rows) < n:
      attempts += 1
      if attempts > 50 * (n + 10):
        raise SbsError(f"cannot draw {n} distinct {split} problems with --people {people} "
                       f"--max_count {max_count}: the space is too small")
      problem = make_problem(rng, people, max_count)
      if problem["input"] in seen:
        continue
      seen.add(problem["input"])
      rows.append({"id": f"{split}-{len(rows)}", **problem})
    path = pathlib.Path(out_dir) / split / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    paths_lib.write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in rows))
    paths[split] = path
  return paths


def solve(question: str) -> tuple[list[str], int] | None:
  """The steps and the answer of a problem's text; None if it is not one of ours."""
  counts = {n: int(c) for n, c, _ in _FACT.findall(question)}
  m = _QUESTION.search(question)
  if not m or m.group(2) not in counts or m.group(3) not in counts:
    return None
  thing, a, b = m.groups()
  steps = [f"{a} has {counts[a]} {thing}.", f"{b} has {counts[b]} {thing}."]
  return steps, counts[a] + counts[b]


def _misread(query: str, error_rate: float) -> bool:
  """Whether the teacher gets this question wrong: a seeded share, by a hash of the text."""
  digest = hashlib.sha256(query.encode("utf-8")).digest()
  return int.from_bytes(digest[:4], "big") / 2**32 < error_rate


def teacher_completion(prompt: str, error_rate: float = 0.0) -> str:
  """The teacher's completion for a few-shot prompt: reasoning about its last question."""
  query = prompt.rsplit("Q:", 1)[-1].split("\nA:", 1)[0].strip()
  solved = solve(query)
  if solved is None:
    return "I cannot tell from the question."
  steps, _ = solved
  counts = [int(re.search(r"\d+", s).group()) for s in steps]
  if _misread(query, error_rate):
    counts[1] = counts[1] + 1 if counts[1] < 9 else counts[1] - 1
    steps[1] = re.sub(r"\d+", str(counts[1]), steps[1])
  total = sum(counts)
  return (f"{' '.join(steps)} {counts[0]} + {counts[1]} = {total}. "
          f"So the answer is {total}.\n\nQ:")


def teacher_server(error_rate: float = 0.0, port: int = 0) -> FakeOpenAIServer:
  """An OpenAI-compatible server on 127.0.0.1 answering with `teacher_completion`."""
  return FakeOpenAIServer(answer_fn=lambda p: teacher_completion(p, error_rate), port=port)


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "synthetic", help="the controlled task: generate it, serve its teacher, prepare it",
      description="The controlled experiment's task (docs/experiments.md): seeded word "
      "problems and a programmatic chain-of-thought teacher behind the OpenAI API.")
  actions = p.add_subparsers(dest="action", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", default="marbles", help="the dataset's name")
  common.add_argument("--train", type=int, default=2000, help="train problems")
  common.add_argument("--test", type=int, default=500, help="test problems")
  common.add_argument("--seed", type=int, default=0)
  common.add_argument("--people", type=int, default=4, help="people per problem")
  g = actions.add_parser("generate", parents=[common],
                         help="write <out_dir>/{train,test}/<name>.jsonl")
  g.add_argument("--out_dir", required=True)
  t = actions.add_parser("teacher", help="serve the teacher on 127.0.0.1 until Ctrl-C")
  t.add_argument("--port", type=int, default=8000,
                 help="1..65535, or 0 for any free one (default: %(default)s)")
  t.add_argument("--error_rate", type=float, default=0.0,
                 help="share of questions the teacher gets wrong (seeded by the text)")
  r = actions.add_parser("prepare", parents=[common],
                         help="generate, annotate through the live teacher, build the vocab")
  r.add_argument("--out_dir", required=True)
  r.add_argument("--error_rate", type=float, default=0.0)
  p.set_defaults(func=main, local_only=("out_dir",))


def main(args) -> int:
  if args.action == "generate":
    paths = generate(args.out_dir, args.name, args.train, args.test, args.seed, args.people)
    print(json.dumps({split: str(path) for split, path in paths.items()}))
  elif args.action == "teacher":
    from sbs_jax.testing.fake_openai import PortError  # pylint: disable=import-outside-toplevel
    try:
      server = teacher_server(args.error_rate, args.port).start()
    except PortError as e:
      raise SbsError(str(e)) from None
    print(f"teacher at {server.url} (model {TEACHER_MODEL}); Ctrl-C stops it", flush=True)
    try:
      threading.Event().wait()
    finally:
      server.stop()
  else:
    from sbs_jax.experiments import prepare  # pylint: disable=import-outside-toplevel
    ready = prepare.prepare_synthetic(args.out_dir, args.name, args.train, args.test,
                                      args.seed, args.people, args.error_rate)
    print(json.dumps(ready.__dict__))
  return 0
