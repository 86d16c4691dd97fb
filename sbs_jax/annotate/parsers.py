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
- Generic (custom data): the text after the last match of a configurable regex (default
  `answer is`), read by the chosen answer format (see answer_formats.py).

A failure carries a short `reason` category (counted in the stats) and a readable `error`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from sbs_jax import arith
from sbs_jax.annotate import answer_formats
from sbs_jax.data.readers import CHOICE_LETTERS, NLI_LABELS, Example
from sbs_jax.errors import SbsError


@dataclasses.dataclass(frozen=True)
class Parsed:
  rationale: str
  label: str
  ok: bool
  error: str = ""  # why it did not parse, in full
  reason: str = ""  # the short category of `error`, e.g. "no answer phrase"


def _fail(rationale: str, reason: str, detail: str = "") -> Parsed:
  return Parsed(rationale=rationale.strip(), label="", ok=False,
                error=f"{reason}: {detail}" if detail else reason, reason=reason)


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
    return _fail(text, "no answer phrase", "no 'So the answer is' in the completion")
  rationale = head.strip()
  m = re.search(r"\(([a-j])\)", answer)
  if m:
    letter_index = CHOICE_LETTERS.index(m.group(1))
    label = _strip_end(answer[m.end():])
    if not label:  # "(c)." alone: the letter names the choice
      if letter_index >= len(example.choices):
        return _fail(rationale, "choice does not exist",
                     f"({m.group(1)}) is not among the {len(example.choices)} choices")
      label = example.choices[letter_index]
    return Parsed(rationale, label, True)
  bare = _strip_end(answer).lower()
  named = [c for c in example.choices if c.lower() == bare]
  if len(named) == 1:
    return Parsed(rationale, named[0], True)
  return _fail(rationale, "no choice marker",
               f"'{_strip_end(answer)}' has no marker such as (c) and names no one choice")


def parse_svamp(completion: str, example: Example) -> Parsed:
  text = cut_run_on(completion, r"\n\s*Q:")
  head, sep, answer = text.rpartition("The answer is")
  if not sep:
    return _fail(text, "no answer phrase", "no 'The answer is' in the completion")
  rationale = head.strip()
  start, end = answer.find("("), answer.rfind(")")
  if start < 0 or end < start:
    return _fail(rationale, "no parenthesised equation",
                 f"'{_strip_end(answer)}' has no (equation) after 'The answer is'")
  equation = answer[start:end + 1]
  if _outer_parens_match(equation):
    equation = equation[1:-1]
  equation = equation.strip()
  try:
    arith.evaluate(equation)
  except arith.ArithmeticEvalError as e:
    return _fail(rationale, "equation does not evaluate", f"{equation}: {e}")
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
    return _fail(text, "no answer phrase", "no 'Answer:' in the completion")
  return _nli_parsed(head, answer)


def _nli_parsed(rationale: str, answer: str) -> Parsed:
  word = _nli_word(answer)
  if word is None:
    return _fail(rationale, "not a label word",
                 f"'{_strip_end(answer)}' is not entailment, neutral or contradiction")
  return Parsed(rationale.strip(), word, True)


def parse_anli(completion: str, example: Example) -> Parsed:
  text = cut_run_on(completion, r"\n\s*Premise:")
  # Any case: many ANLI answers end "..., so the answer is entailment".
  matches = list(re.finditer(r"\bso the answer is\b", text, re.IGNORECASE))
  if not matches:
    return _fail(text, "no answer phrase", "no 'So the answer is' in the completion")
  head, answer = text[:matches[-1].start()].rstrip(), text[matches[-1].end():]
  if head.endswith(","):  # "It was built in 1932, so the answer is ..." -> a sentence
    head = head[:-1].rstrip() + "."
  return _nli_parsed(head, answer)


DEFAULT_ANSWER_REGEX = answer_formats.TEXT.answer_regex
DEFAULT_STOP_REGEX = r"\n\s*Q:"
_LEAD_IN = re.compile(r"(?:\b[Ss]o\s+)?(?:\b[Tt]he\s+)?$")


def make_generic_parser(answer_regex: str | None = None,
                        stop_regex: str = DEFAULT_STOP_REGEX,
                        answer_format: "str | answer_formats.AnswerFormat" = "text"
                        ) -> Callable[[str, Example], Parsed]:
  """A parser for custom data: the label is the rest of the line after an answer phrase.

  `text` reads the line after the last match of `answer_regex` (default `answer is`); the
  other formats (default phrase `answer is` or `Answer:`, any case) take the last match
  whose line reads as an answer of the format, so that a later mention of "answer" in
  passing does not hide the answer.
  """
  fmt = answer_formats.get(answer_format)
  if answer_regex is None:
    answer_regex = fmt.answer_regex
  answer_re = _compile("--answer_regex", answer_regex)
  _compile("--stop_regex", stop_regex)  # fail early on a bad pattern

  def parse(completion: str, example: Example) -> Parsed:
    text = cut_run_on(completion, stop_regex)
    matches = list(answer_re.finditer(text))
    if not matches:
      return _fail(text, "no answer phrase", f"no match of /{answer_regex}/ in the completion")
    first_error = None
    for m in reversed(matches):
      try:
        label = fmt.normalise(text[m.end():].split("\n", 1)[0], example.choices)
      except answer_formats.AnswerError as e:
        first_error = first_error or e
        if not fmt.checks_shape:
          break
        continue
      return Parsed(_LEAD_IN.sub("", text[:m.start()]).strip(), label, True)
    rationale = _LEAD_IN.sub("", text[:matches[-1].start()])
    return _fail(rationale, first_error.reason, first_error.detail)

  return parse


def _compile(flag: str, pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise SbsError(f"{flag} {pattern!r} is not a regular expression: {e}") from None


def same_text(predicted: str, gold: str) -> bool:
  """Teacher (or student) label vs gold, exactly after whitespace normalisation."""
  return " ".join(predicted.split()) == " ".join(gold.split())
