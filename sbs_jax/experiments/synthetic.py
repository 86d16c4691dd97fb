"""The controlled tasks: seeded word problems whose label needs steps a rationale spells out.

Every problem lists a few people's counts of one kind of thing; the label is an operation
(`--op`) on two of the counts. Two forms say which two:

- `lookup` (the control, dataset `marbles` by default): the question names them.

      Ann has 5 marbles. Bob has 2 marbles. Cal has 7 marbles. Dee has 4 marbles.
      How many marbles do Bob and Dee have together?

  Teacher: "Bob has 2 marbles. Dee has 4 marbles. 2 + 4 = 6. So the answer is 6."
- `marked`: two facts carry a marker and the question is the same for every problem.

      Ann has 5 coins. Bob has 7 coins, starred. Cal has 2 coins. Dee has 5 coins, starred.
      What is the last digit of the sum of the starred counts?

  Teacher: "7 and 5. 7 + 5 = 12. The last digit is 2. So the answer is 2."

Operations: `sum`, `sum_last_digit`, `abs_diff`, `product_last_digit`, `max`.

The programmatic teacher (`teacher_completion`) reads only the question text and writes
the steps as its chain of thought, in the generic prompt's answer format. It is served
over the OpenAI completions API by `teacher_server` (the project's `FakeOpenAIServer`
with this answer function), so that `sbs annotate --teacher openai` runs its live path
end to end. `error_rate` makes a seeded share of its answers wrong (it misreads the
second count), as a real teacher would. With `sampled=True` the teacher samples, as an LLM
at a temperature above 0 does: each of the answers it gives to one question draws its own
misreading (which count, which way), seeded by the question and the answer's number, so
several samples of one question disagree and a vote can outvote a wrong one. What each
form shows: docs/experiments.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import random
import re

from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files
from sbs_jax.testing.fake_openai import FakeOpenAIServer

NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Leo",
         "Max", "Ned", "Oli", "Pam", "Quin", "Ray", "Sue", "Tom", "Uma", "Vic", "Wes", "Zoe")
OBJECTS = ("marbles", "apples", "coins", "stamps", "shells", "cards")
FORMS = ("lookup", "marked")
OPS = ("sum", "sum_last_digit", "abs_diff", "product_last_digit", "max")
MARKER = "starred"
TEACHER_MODEL = "programmatic-teacher"  # the model name the teacher server is asked for
_FACT = re.compile(r"\b([A-Z][a-z]+) has (\d+) ([a-z]+)(, " + MARKER + r")?\.")
# The lookup form's sum keeps the original marbles wording (old sweeps stay reproducible).
_QUESTION = re.compile(r"How many ([a-z]+) do ([A-Z][a-z]+) and ([A-Z][a-z]+) have together\?")
# What the question asks, by operation; {who} is the two people or the marked pair.
_ASK = {
    "sum_last_digit": "What is the last digit of the sum of {who}?",
    "abs_diff": "What is the difference between {who}?",
    "product_last_digit": "What is the last digit of the product of {who}?",
    "max": "What is the larger of {who}?",
    "sum": "What is the sum of {who}?",
}
_MARKED_WHO = f"the {MARKER} counts"
_LOOKUP_WHO = re.compile(r"([A-Z][a-z]+)'s and ([A-Z][a-z]+)'s ([a-z]+)")


@dataclasses.dataclass(frozen=True)
class Form:
  """One task of the family: how the two counts are chosen, and what is done with them."""
  form: str = "lookup"
  op: str = "sum"
  people: int = 4
  max_count: int = 9

  def check(self) -> "Form":
    if self.form not in FORMS:
      raise SbsError(f"--form {self.form!r}: must be one of {', '.join(FORMS)}")
    if self.op not in OPS:
      raise SbsError(f"--op {self.op!r}: must be one of {', '.join(OPS)}")
    if self.people < 2 or self.people > len(NAMES):
      raise SbsError(f"--people must be in [2, {len(NAMES)}], got {self.people}")
    if self.max_count < 1 or self.max_count > 99:
      raise SbsError(f"--max_count must be in [1, 99], got {self.max_count}")
    return self


def apply(op: str, a: int, b: int) -> int:
  """The label of two counts under `op`."""
  return {"sum": a + b, "sum_last_digit": (a + b) % 10, "abs_diff": abs(a - b),
          "product_last_digit": (a * b) % 10, "max": max(a, b)}[op]


def _question(form: Form, thing: str, first: str, second: str) -> str:
  if form.form == "marked":
    return _ASK[form.op].format(who=_MARKED_WHO)
  if form.op == "sum":
    return f"How many {thing} do {first} and {second} have together?"
  return _ASK[form.op].format(who=f"{first}'s and {second}'s {thing}")


def make_problem(rng: random.Random, people: int = 4, max_count: int = 9,
                 form: Form | None = None) -> dict:
  """One problem: `input` (the text) and `label` (the answer, as text)."""
  form = form or Form(people=people, max_count=max_count)
  names = rng.sample(NAMES, form.people)
  counts = [rng.randint(1, form.max_count) for _ in names]
  thing = rng.choice(OBJECTS)
  a, b = rng.sample(range(form.people), 2)
  marked = {a, b} if form.form == "marked" else set()
  facts = " ".join(f"{n} has {c} {thing}{', ' + MARKER if i in marked else ''}."
                   for i, (n, c) in enumerate(zip(names, counts)))
  question = _question(form, thing, names[a], names[b])
  return {"input": f"{facts} {question}", "label": str(apply(form.op, counts[a], counts[b]))}


def generate(out_dir, name: str = "marbles", train: int = 2000, test: int = 500,
             seed: int = 0, people: int = 4, max_count: int = 9,
             form: Form | None = None) -> dict[str, pathlib.Path]:
  """Writes `<out_dir>/<split>/<name>.jsonl` for train and test; no test input is in train.

  Returns the path of each split's file. The same arguments give the same files.
  """
  form = (form or Form(people=people, max_count=max_count)).check()
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
        raise SbsError(f"cannot draw {n} distinct {split} problems with --people "
                       f"{form.people} --max_count {form.max_count}: the space is too small")
      problem = make_problem(rng, form=form)
      if problem["input"] in seen:
        continue
      seen.add(problem["input"])
      rows.append({"id": f"{split}-{len(rows)}", **problem})
    path = pathlib.Path(out_dir) / split / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in rows))
    paths[split] = path
  return paths


@dataclasses.dataclass
class Solution:
  """What the teacher reads from a problem: the two counts in order, and what to do."""
  op: str
  values: list[int]
  lookup: tuple[str, str, str] | None  # (first name, second name, thing) in the lookup form


def solve(question: str) -> Solution | None:
  """The problem a text poses; None if it is not one of ours."""
  facts = _FACT.findall(question)
  counts = {n: int(c) for n, c, _, _ in facts}
  m = _QUESTION.search(question)
  if m:
    thing, a, b = m.groups()
    if a in counts and b in counts:
      return Solution("sum", [counts[a], counts[b]], (a, b, thing))
    return None
  for op, ask in _ASK.items():
    prefix = ask.split("{who}")[0]
    start = question.find(prefix)
    if start < 0:
      continue
    rest = question[start + len(prefix):]
    if rest.startswith(_MARKED_WHO + "?"):
      values = [int(c) for _, c, _, mark in facts if mark]
      return Solution(op, values, None) if len(values) == 2 else None
    who = _LOOKUP_WHO.match(rest)
    if who and who.group(1) in counts and who.group(2) in counts:
      return Solution(op, [counts[who.group(1)], counts[who.group(2)]], who.groups())
  return None


def explain(solution: Solution) -> tuple[str, int]:
  """The steps (without the answer sentence) and the answer."""
  a, b = solution.values
  answer = apply(solution.op, a, b)
  if solution.lookup:
    first, second, thing = solution.lookup
    steps = [f"{first} has {a} {thing}.", f"{second} has {b} {thing}."]
  else:
    steps = [f"{a} and {b}."]
  if solution.op in ("sum", "sum_last_digit"):
    steps.append(f"{a} + {b} = {a + b}.")
  elif solution.op == "product_last_digit":
    steps.append(f"{a} * {b} = {a * b}.")
  elif solution.op == "abs_diff":
    steps.append(f"{max(a, b)} - {min(a, b)} = {answer}.")
  else:
    steps.append(f"The larger is {answer}.")
  if solution.op.endswith("_last_digit"):
    steps.append(f"The last digit is {answer}.")
  return " ".join(steps), answer


def _draw(key: str) -> float:
  """A seeded number in [0, 1) from a hash of `key`."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:4], "big") / 2**32


def _misread(query: str, error_rate: float) -> bool:
  """Whether the teacher gets this question wrong: a seeded share, by a hash of the text."""
  return _draw(query) < error_rate


def _misread_one(solution: Solution, variant: float | None = None) -> None:
  """Misreads one count by one or two, so that the answer is wrong under every operation:
  the second count first (up, or down from 9), else the first. `variant` (a number in
  [0, 1), for a sampling teacher) picks the count and the direction instead."""
  right = apply(solution.op, *solution.values)
  order, flip = (1, 0), False
  if variant is not None:
    order = (1, 0) if variant < 0.5 else (0, 1)
    flip = (variant * 4) % 2 >= 1
  for index in order:
    value = solution.values[index]
    near = (value + 1, value - 1) if value < 9 else (value - 1, value + 1)
    for wrong in (near[::-1] if flip else near) + (value + 2,):
      values = list(solution.values)
      values[index] = wrong
      if wrong >= 0 and apply(solution.op, *values) != right:
        solution.values[:] = values
        return


def teacher_completion(prompt: str, error_rate: float = 0.0, sample: int | None = None) -> str:
  """The teacher's completion for a few-shot prompt: reasoning about its last question.

  `sample` (0, 1, ...: the how-many-th answer to this prompt) makes it a sampling teacher:
  whether and how it misreads is drawn per sample, not once per question.
  """
  query = prompt.rsplit("Q:", 1)[-1].split("\nA:", 1)[0].strip()
  solution = solve(query)
  if solution is None:
    return "I cannot tell from the question."
  if sample is None:
    if _misread(query, error_rate):
      _misread_one(solution)
  elif _draw(f"{query}#{sample}") < error_rate:
    _misread_one(solution, _draw(f"{query}#{sample}:how"))
  steps, answer = explain(solution)
  return f"{steps} So the answer is {answer}.\n\nQ:"


def score_rationale(problem: str, rationale: str) -> dict[str, bool]:
  """How far a student's rationale for `problem` gets: the two counts it states (`values`),
  its arithmetic on its own counts (`arithmetic`), and its answer (`answer`, the last
  number, against the right one). Raises SbsError if `problem` is not one of ours."""
  solution = solve(problem)
  if solution is None:
    raise SbsError(f"not a problem of the synthetic family: {problem[:80]!r}")
  numbers = [int(n) for n in re.findall(r"\d+", rationale)]
  right = apply(solution.op, *solution.values)
  stated = numbers[:2]
  return {
      "values": sorted(stated) == sorted(solution.values),
      "arithmetic": len(numbers) >= 3 and apply(solution.op, *stated) == numbers[-1],
      "answer": bool(numbers) and numbers[-1] == right,
  }


def inspect(predictions, problems) -> dict:
  """Scores `sbs predict --rationale` output (JSON lines with `id`, `label`, `rationale`)
  on the problems file it was run on (JSON lines with `id`, `input`, `label`): how many
  rationales state the right counts, do their own arithmetic right, reach the right answer,
  and how many labels agree with the student's own rationale and with the gold label."""
  def rows(path, what):
    try:
      with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
      raise SbsError(f"{what} {path}: cannot read it as JSON lines ({e})") from None

  by_id = {str(r.get("id")): r for r in rows(problems, "--problems")}
  counts = {"values": 0, "arithmetic": 0, "answer": 0, "label_agrees_with_rationale": 0,
            "label": 0}
  n = 0
  for p in rows(predictions, "--predictions"):
    if "rationale" not in p or "label" not in p:
      raise SbsError(f"--predictions {predictions}: rows need `label` and `rationale`: run "
                     "sbs predict with --rationale")
    problem = by_id.get(str(p.get("id")))
    if problem is None:
      raise SbsError(f"--predictions {predictions}: id {p.get('id')!r} is not in --problems "
                     f"{problems}: give the file the predictions were made from")
    n += 1
    for key, ok in score_rationale(problem["input"], p["rationale"]).items():
      counts[key] += ok
    numbers = re.findall(r"\d+", p["rationale"])
    counts["label_agrees_with_rationale"] += bool(numbers) and numbers[-1] == p["label"]
    counts["label"] += p["label"].strip() == str(problem["label"])
  if not n:
    raise SbsError(f"--predictions {predictions}: no rows")
  return {"rows": n, **{k: round(100 * v / n, 1) for k, v in counts.items()}}


def teacher_server(error_rate: float = 0.0, port: int = 0,
                   sampled: bool = False) -> FakeOpenAIServer:
  """An OpenAI-compatible server on 127.0.0.1 answering with `teacher_completion`; with
  `sampled`, the k-th answer to a prompt (over all its requests, `n` honoured) is sample k."""
  sample_fn = (lambda p, k: teacher_completion(p, error_rate, sample=k)) if sampled else None
  return FakeOpenAIServer(answer_fn=lambda p: teacher_completion(p, error_rate), port=port,
                          sample_fn=sample_fn)


def check_error_rate(rate: float) -> float:
  if not 0.0 <= rate <= 1.0:
    raise SbsError(f"--error_rate must be in [0, 1], got {rate:g}")
  return rate
