"""Parsers that split a teacher completion into a rationale and a normalised label.

Teacher completions are raw model text: after the answer they often run on into the next
few-shot exemplar. Each parser first cuts the completion there, then finds the answer.
A completion without a usable answer gives `Parsed(ok=False, error=...)`; the job writes
it with `parse_ok = 0` and counts it, never drops it.

Label rules follow the paper's released parsing, so teacher accuracies match its numbers:
- CQA: the text after the choice marker, `... So the answer is (c) train station.` ->
  `train station` (the teacher's own words, which are the choice text in all but a few
  hedged or re-cased answers); a bare answer without a marker is accepted when it names
  exactly one choice.
- SVAMP: the equation inside the outer parentheses of `The answer is (<equation>).`,
  which must evaluate under the safe arithmetic evaluator.
- NLI (e-SNLI, ANLI): the label word, one of entailment / neutral / contradiction.
- Generic: the text after the last match of a configurable regex (default `answer is`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from sbs_jax import arith
from sbs_jax.data.readers import CHOICE_LETTERS, NLI_LABELS, Example


@dataclasses.dataclass(frozen=True)
class Parsed:
  rationale: str
  label: str
  ok: bool
  error: str = ""


def _fail(rationale: str, error: str) -> Parsed:
  return Parsed(rationale=rationale.strip(), label="", ok=False, error=error)


def cut_run_on(completion: str, stop_regex: str) -> str:
  """The completion up to where it runs on into the next exemplar."""
  m = re.search(stop_regex, completion)
  return (completion[:m.start()] if m else completion).strip()


_ANSWER_TAIL = re.compile(r"\s*\.?\s*$")


def _strip_end(text: str) -> str:
  """Strips whitespace and one final period."""
  return _ANSWER_TAIL.sub("", text.strip()).strip()


def parse_cqa(completion: str, example: Example) -> Parsed:
  text = cut_run_on(completion, r"\n\s*Q:")
  head, sep, answer = text.rpartition("So the answer is")
  if not sep:
    return _fail(text, "no 'So the answer is'")
  rationale = head.strip()
  m = re.search(r"\(([a-j])\)", answer)
  if m:
    letter_index = CHOICE_LETTERS.index(m.group(1))
    label = _strip_end(answer[m.end():])
    if not label:  # "(c)." alone: the letter names the choice
      if letter_index >= len(example.choices):
        return _fail(rationale, f"choice ({m.group(1)}) does not exist")
      label = example.choices[letter_index]
    return Parsed(rationale, label, True)
  bare = _strip_end(answer).lower()
  named = [c for c in example.choices if c.lower() == bare]
  if len(named) == 1:
    return Parsed(rationale, named[0], True)
  return _fail(rationale, "no choice marker such as '(c)' in the answer")


def parse_svamp(completion: str, example: Example) -> Parsed:
  text = cut_run_on(completion, r"\n\s*Q:")
  head, sep, answer = text.rpartition("The answer is")
  if not sep:
    return _fail(text, "no 'The answer is'")
  rationale = head.strip()
  start, end = answer.find("("), answer.rfind(")")
  if start < 0 or end < start:
    return _fail(rationale, "no parenthesised equation after 'The answer is'")
  equation = answer[start:end + 1]
  if _outer_parens_match(equation):
    equation = equation[1:-1]
  equation = equation.strip()
  try:
    arith.evaluate(equation)
  except arith.ArithmeticEvalError as e:
    return _fail(rationale, f"equation does not evaluate: {e}")
  return Parsed(rationale, equation, True)


def _outer_parens_match(s: str) -> bool:
  """Whether s[0] == '(' closes exactly at s[-1]."""
  if not (s.startswith("(") and s.endswith(")")):
    return False
  depth = 0
  for i, ch in enumerate(s):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0 and i < len(s) - 1:
      return False
  return depth == 0


def _nli_word(answer: str) -> str | None:
  m = re.match(r"\s*([A-Za-z]+)", answer)
  word = m.group(1).lower() if m else ""
  return word if word in NLI_LABELS else None


def parse_esnli(completion: str, example: Example) -> Parsed:
  text = cut_run_on(completion, r"\n\s*Premise:")
  head, sep, answer = text.partition("Answer:")
  if not sep:
    return _fail(text, "no 'Answer:'")
  word = _nli_word(answer)
  if word is None:
    return _fail(head, f"answer {_strip_end(answer)[:40]!r} is not a label word")
  return Parsed(head.strip(), word, True)


def parse_anli(completion: str, example: Example) -> Parsed:
  text = cut_run_on(completion, r"\n\s*Premise:")
  head, sep, answer = text.rpartition("So the answer is")
  if not sep:
    return _fail(text, "no 'So the answer is'")
  word = _nli_word(answer)
  if word is None:
    return _fail(head, f"answer {_strip_end(answer)[:40]!r} is not a label word")
  return Parsed(head.strip(), word, True)


DEFAULT_ANSWER_REGEX = r"[Aa]nswer is\s*:?"
DEFAULT_STOP_REGEX = r"\n\s*Q:"
_LEAD_IN = re.compile(r"(?:\b[Ss]o\s+)?(?:\b[Tt]he\s+)?$")


def make_generic_parser(answer_regex: str = DEFAULT_ANSWER_REGEX,
                        stop_regex: str = DEFAULT_STOP_REGEX
                        ) -> Callable[[str, Example], Parsed]:
  """A parser for custom data: the label is the rest of the line after the last match."""
  answer_re = re.compile(answer_regex)
  re.compile(stop_regex)  # fail early on a bad pattern

  def parse(completion: str, example: Example) -> Parsed:
    text = cut_run_on(completion, stop_regex)
    matches = list(answer_re.finditer(text))
    if not matches:
      return _fail(text, f"no match of {answer_regex!r}")
    last = matches[-1]
    rationale = _LEAD_IN.sub("", text[:last.start()]).strip()
    label = _strip_end(text[last.end():].split("\n", 1)[0])
    if not label:
      return _fail(rationale, "empty answer")
    return Parsed(rationale, label, True)

  return parse


PARSERS: dict[str, Callable[[str, Example], Parsed]] = {
    "cqa": parse_cqa,
    "svamp": parse_svamp,
    "esnli": parse_esnli,
    "anli1": parse_anli,
}


def labels_match(dataset: str, predicted: str, gold: str) -> bool:
  """Teacher (or student) label vs gold: SVAMP by value, others exact after whitespace."""
  if dataset == "svamp":
    return arith.same_value(predicted, gold)
  return " ".join(predicted.split()) == " ".join(gold.split())
