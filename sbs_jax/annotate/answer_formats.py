"""Answer formats of custom data: how a teacher's answer and a gold label become one label.

`sbs annotate --answer_format` picks one; the teacher's answer (the text after the answer
phrase) and the gold label are normalised by the same rules, so that they compare exactly:

    text    the answer as written, whitespace and one final period stripped
    choice  a multiple-choice answer, given as a marker `(c)`, a bare letter or the choice's
            text -> the text of that choice as the input lists it (`Answer Choices:` then
            `(a) ...` lines, the CQA layout)
    number  one number: `Answer:`, `$`, thousands commas, units and a final period
            dropped; written canonically (`1,200.50 dollars` -> `1200.5`)
    nli     entailment / neutral / contradiction, in any case; also yes / no / it is not
            possible to tell (the FLAN wording); gold labels 0 / 1 / 2 as in the benchmarks

An answer that does not normalise raises `AnswerError` with a short reason category (the
key of the stats' `unparsable_reasons`) and a readable detail.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from typing import Callable, Sequence

from sbs_jax.data.readers import CHOICE_LETTERS, NLI_LABELS, Example
from sbs_jax.errors import DataError

FORMATS = ("auto", "choice", "number", "nli", "text")
# The answer phrase of the formats that check the answer's shape: `answer is`, `Answer:`.
ANSWER_PHRASE_REGEX = r"(?i)\banswer\b(?:\s+is)?\s*:?"


class AnswerError(ValueError):
  """An answer that the format cannot read: `reason` is the category, `detail` says why."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


_LEADING = re.compile(r"^(?:so\s+)?(?:the\s+)?(?:final\s+|correct\s+)?answer(?:\s+is)?\s*[:\-]?\s*",
                      re.IGNORECASE)


def clean(answer: str) -> str:
  """Drops a leading `Answer:` / `the answer is`, markdown emphasis, quotes, final punctuation."""
  text = answer.strip()
  while True:
    stripped = _LEADING.sub("", text.strip(" \t\n*_\"'`")).strip()
    if stripped == text:
      break
    text = stripped
  return re.sub(r"[\s.!,;:*_\"'`]+$", "", text)


def _key(text: str) -> str:
  return " ".join(clean(text).lower().split())


# ---------------------------------------------------------------- choice

_MARKER = re.compile(r"\(([a-jA-J])\)")
_CHOICES_HEADER = re.compile(r"answer choices\s*:", re.IGNORECASE)
_CHOICE_LINE = re.compile(r"\(([a-j])\)[ \t]*(.*?)[ \t]*(?=\([a-j]\)|\n|$)")


def choices_in_input(text: str) -> tuple[str, ...]:
  """The choices an input lists after `Answer Choices:` as `(a) ...` (lines or inline)."""
  m = _CHOICES_HEADER.search(text)
  if not m:
    return ()
  found = _CHOICE_LINE.findall(text[m.end():])
  letters = "".join(letter for letter, _ in found)
  if not found or letters != CHOICE_LETTERS[:len(found)]:
    return ()
  return tuple(choice for _, choice in found)


def _letter_choice(letter: str, choices: Sequence[str]) -> str:
  i = CHOICE_LETTERS.index(letter.lower())
  if i >= len(choices):
    raise AnswerError("choice does not exist",
                      f"({letter.lower()}) is not among the {len(choices)} choices")
  return choices[i]


def normalise_choice(answer: str, choices: Sequence[str]) -> str:
  """A marker, letter or choice text -> that choice's text; none or several: AnswerError."""
  text = clean(answer)
  if not text:
    raise AnswerError("empty answer", "nothing after the answer phrase")
  markers = sorted({m.lower() for m in _MARKER.findall(text)})
  if len(markers) > 1:
    raise AnswerError("several choices", f"'{text}' names ({'), ('.join(markers)})")
  by_key = {_key(c): c for c in choices}
  if markers:
    choice = _letter_choice(markers[0], choices)
    rest = _key(_MARKER.sub(" ", text, count=1))
    if rest and rest != _key(choice) and rest in by_key:
      raise AnswerError("several choices", f"'{text}': marker ({markers[0]}) is "
                        f"'{choice}' but the text names '{by_key[rest]}'")
    return choice
  key = _key(text)
  if key in by_key:
    return by_key[key]
  if re.fullmatch(r"[a-j]", key):
    return _letter_choice(key, choices)
  named = [c for k, c in by_key.items() if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", key)]
  # "play tag" names "play tag", not also "play".
  named = [c for c in named if not any(c != o and _key(c) in _key(o) for o in named)]
  if len(named) == 1:
    return named[0]
  if named:
    raise AnswerError("several choices", f"'{text}' names " +
                      ", ".join(f"'{c}'" for c in named))
  raise AnswerError("no choice matches", f"'{text}' is none of the choices " +
                    ", ".join(f"'{c}'" for c in choices))


# ---------------------------------------------------------------- number

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def canonical_number(value: decimal.Decimal) -> str:
  """1200.50 -> '1200.5', 3.0 -> '3', -0 -> '0'."""
  if value == value.to_integral_value():
    return str(int(value))
  return format(value.normalize(), "f")


def normalise_number(answer: str, choices: Sequence[str] = ()) -> str:
  """One number in the answer, canonically written; none or several: AnswerError."""
  del choices
  text = clean(answer)
  body = _THOUSANDS.sub("", text)
  if "=" in body:  # "3 + 4 = 7": the result
    body = body.rsplit("=", 1)[1]
  values = [decimal.Decimal(n) for n in _NUMBER.findall(body)]
  if not values:
    raise AnswerError("no number", f"'{text}' holds no number")
  if len(set(values)) > 1:
    raise AnswerError("several numbers", f"'{text}' holds " +
                      ", ".join(canonical_number(v) for v in values))
  return canonical_number(values[0])


# ---------------------------------------------------------------- nli

_NLI_WORDS = {"entailment": "entailment", "entails": "entailment", "entailed": "entailment",
              "yes": "entailment", "neutral": "neutral", "contradiction": "contradiction",
              "contradicts": "contradiction", "contradicted": "contradiction",
              "no": "contradiction"}
_CANNOT_TELL = re.compile(r"\b(?:not |im)possible to tell\b|\bcannot tell\b|\bcan't tell\b")


def normalise_nli(answer: str, choices: Sequence[str] = ()) -> str:
  """entailment / neutral / contradiction (or yes / no / it is not possible to tell)."""
  del choices
  text = clean(answer)
  key = _key(text)
  if _CANNOT_TELL.search(key):
    return "neutral"
  m = re.match(r"\(?([a-z]+)", key)
  if m and m.group(1) in _NLI_WORDS:
    return _NLI_WORDS[m.group(1)]
  raise AnswerError("not a label word", f"'{text}' is not entailment, neutral or "
                    "contradiction")


def normalise_text(answer: str, choices: Sequence[str] = ()) -> str:
  """The answer as written: whitespace and one final period stripped."""
  del choices
  text = re.sub(r"\s*\.?\s*$", "", answer.strip()).strip()
  if not text:
    raise AnswerError("empty answer", "nothing after the answer phrase")
  return text


@dataclasses.dataclass(frozen=True)
class LabelSet:
  """The labels a label task chooses among, when they are a closed set: the same few for
  every input (`labels`: NLI's three words), or the choices each input lists
  (`from_input`: `Answer Choices:` then `(a) ...`, CQA's layout). Each label is the text
  the label task trains on (the choice's text, not its letter). An open set (numbers, free
  text) has neither: `closed` is False.

  `sbs eval` and `sbs predict --label_mode rank` score each candidate and answer the most
  likely one; model.json records the training task's set (`to_json`).
  """
  labels: tuple[str, ...] = ()
  from_input: bool = False

  @property
  def closed(self) -> bool:
    return self.from_input or bool(self.labels)

  def candidates(self, text: str) -> tuple[str, ...]:
    """The labels an input may have, in order (empty: a choice input that lists none)."""
    return choices_in_input(text) if self.from_input else self.labels

  def describe(self) -> str:
    if self.from_input:
      return "the choices each input lists"
    return ", ".join(self.labels) if self.labels else "open (no closed set)"

  def to_json(self) -> dict:
    return {"from_input": True} if self.from_input else {"labels": list(self.labels)}

  @classmethod
  def from_json(cls, value: dict) -> "LabelSet":
    return cls(tuple(value.get("labels", ())), bool(value.get("from_input", False)))


OPEN = LabelSet()
# Why an input gives no candidate to rank (a choice input without choices).
NO_CHOICES = ("lists no answer choices ('Answer Choices:' then '(a) ...' lines) for "
              "--label_mode rank to score")


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
  """How one format reads an answer, and what it asks of the gold side.

  Attributes:
    name: the `--answer_format` value, recorded in the manifest and the stats.
    normalise: (answer, choices) -> the label; AnswerError where it does not read.
    answer_regex: the default answer phrase the parser looks for.
    checks_shape: whether an answer must read as the format (choice, number, nli): then an
      earlier answer phrase is tried when the last one's line does not read, and the gold
      labels are normalised by the same rules before anything is asked. `text` takes the
      last phrase's line as written and leaves the gold labels as they are.
    label_set: the closed set its labels lie in (choice: each input's choices, read from
      it; nli: the three words), OPEN for number and text.
    gold_aliases: gold labels written another way in the data, mapped before normalising
      (the benchmarks' NLI ids 0 / 1 / 2).
  """
  name: str
  normalise: Callable[[str, Sequence[str]], str]
  answer_regex: str = ANSWER_PHRASE_REGEX
  checks_shape: bool = True
  label_set: LabelSet = OPEN
  gold_aliases: tuple[tuple[str, str], ...] = ()

  @property
  def choices_from_input(self) -> bool:
    """The choices are read from each input (`Answer Choices:`)."""
    return self.label_set.from_input


CHOICE = AnswerFormat("choice", normalise_choice, label_set=LabelSet(from_input=True))
NUMBER = AnswerFormat("number", normalise_number)
NLI = AnswerFormat("nli", normalise_nli, label_set=LabelSet(NLI_LABELS),
                   gold_aliases=tuple((str(i), word) for i, word in enumerate(NLI_LABELS)))
TEXT = AnswerFormat("text", normalise_text, answer_regex=r"[Aa]nswer is\s*:?",
                    checks_shape=False)
ANSWER_FORMATS: dict[str, AnswerFormat] = {f.name: f for f in (CHOICE, NUMBER, NLI, TEXT)}


def get(answer_format: "str | AnswerFormat") -> AnswerFormat:
  """The format of a `--answer_format` value (`auto`: text), or the format itself."""
  if isinstance(answer_format, AnswerFormat):
    return answer_format
  return ANSWER_FORMATS["text" if answer_format == "auto" else answer_format]


# ---------------------------------------------------------------- the gold side


def prepare_examples(answer_format: "str | AnswerFormat", examples: Sequence[Example],
                     source: str) -> list[Example]:
  """Examples with their choices read from the input (choice) and gold labels normalised.

  Bad input is refused before anything is asked: a `choice` input that lists no choices,
  or a gold label the format cannot read, is a DataError naming the row.
  """
  fmt = get(answer_format)
  if not fmt.checks_shape:
    return list(examples)
  aliases = dict(fmt.gold_aliases)
  out = []
  for ex in examples:
    where = f"row {ex.index + 1} (id {ex.id})"
    choices = ex.choices
    if fmt.choices_from_input:
      choices = choices or choices_in_input(ex.input)
      if not choices:
        raise DataError(source, f"the input lists no answer choices (--answer_format "
                        f"{fmt.name} reads 'Answer Choices:' then '(a) ...' lines)",
                        where=where)
    label = ex.label
    if label is not None:
      label = aliases.get(label.strip(), label)
      try:
        label = fmt.normalise(label, choices)
      except AnswerError as e:
        raise DataError(source, f"gold label does not read as --answer_format "
                        f"{fmt.name}: {e.detail} (fix the row, or use --answer_format "
                        "text)", where=where) from None
    out.append(dataclasses.replace(ex, label=label, choices=tuple(choices)))
  return out
