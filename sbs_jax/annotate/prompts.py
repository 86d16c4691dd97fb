"""Few-shot chain-of-thought prompts for the teacher, one per benchmark and one generic.

The exemplars are our own. Every prompt has a stable id, `<name>-v<version>-<hash>`, where
the hash covers the template text: editing a template changes its id, so records made with
different prompts can always be told apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

from sbs_jax.data.readers import Example, cqa_input, nli_input
from sbs_jax.errors import DataError

QUERY_FIELD = "{input}"


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A few-shot template: exemplars, then the query with `{input}` in it."""
  name: str
  version: int
  template: str
  stop: tuple[str, ...]  # stop sequences sent to the teacher server

  @property
  def id(self) -> str:
    digest = hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:8]
    return f"{self.name}-v{self.version}-{digest}"

  def render(self, example: Example) -> str:
    # str.replace, not str.format: the input may contain braces.
    return self.template.replace(QUERY_FIELD, example.input)


def _cqa_shot(question, choices, rationale, letter):
  answer = choices["abcde".index(letter)]
  return (f"Q: {cqa_input(question, choices)}\nA: {rationale} "
          f"So the answer is ({letter}) {answer}.\n\n")


_CQA = "".join([
    _cqa_shot("Where would you keep a spare blanket so it is handy on a cold night?",
              ["linen closet", "refrigerator", "mailbox", "garage roof", "dishwasher"],
              "A spare blanket is stored with other bedding, close to the bedrooms. Of the "
              "choices, a linen closet is the place meant for bedding.", "a"),
    _cqa_shot("What does a person usually do when they feel very thirsty?",
              ["run a marathon", "drink water", "read a book", "paint a fence",
               "count sheep"],
              "Thirst is the body asking for fluid. Of the choices, only drinking water "
              "answers that need.", "b"),
    _cqa_shot("A musician plays a violin in a large group with many other instruments. "
              "Where is she?",
              ["garage", "library", "orchestra", "bakery", "tennis court"],
              "A large group of instruments that includes violins is an orchestra. The other "
              "places are not groups of musicians.", "c"),
    _cqa_shot("If you want to see animals from many countries in one afternoon, where "
              "could you go?",
              ["post office", "car wash", "bank", "zoo", "laundromat"],
              "Animals from around the world are kept together for visitors at a zoo. None "
              "of the other places keep animals.", "d"),
]) + "Q: {input}\nA:"


_SVAMP = (
    "Q: A baker made 24 muffins in the morning and 18 in the afternoon. How many muffins "
    "did the baker make?\n"
    "A: The baker made 24 muffins and then 18 more. So the baker made 24 + 18 muffins. "
    "24 + 18 is 42. The answer is (24 + 18).\n\n"
    "Q: Lena had 50 stickers. She gave 12 to her brother and 9 to her friend. How many "
    "stickers does Lena have left?\n"
    "A: Lena started with 50 stickers. She gave away 12 and 9, which is 12 + 9 = 21. "
    "So she has 50 - 21 = 29 left. The answer is (50 - (12 + 9)).\n\n"
    "Q: Each box holds 6 pencils. There are 7 boxes. How many pencils are there?\n"
    "A: There are 7 boxes with 6 pencils in each. So there are 6 * 7 pencils. 6 * 7 is 42. "
    "The answer is (6 * 7).\n\n"
    "Q: 36 apples are shared equally among 4 baskets. How many apples are in each basket?\n"
    "A: 36 apples are split into 4 equal parts. So each basket has 36 / 4 apples. 36 / 4 is "
    "9. The answer is (36 / 4).\n\n"
    "Q: {input}\nA:")


def _esnli_shot(premise, hypothesis, reasoning, label):
  return (f"{nli_input(premise, hypothesis)}\nReasonings: {reasoning}\n"
          f"Answer: {label}\n\n")


_ESNLI = "".join([
    _esnli_shot("A man in a yellow jacket is repairing a bicycle on the sidewalk.",
                "A man is fixing a bike.",
                "Repairing a bicycle is fixing a bike, and the man does it.", "entailment"),
    _esnli_shot("Two children are running along a sandy beach.",
                "The children are racing to meet their parents.",
                "Running on a beach does not tell us why they run or whether they are "
                "racing.", "neutral"),
    _esnli_shot("A woman is sleeping in a hammock between two trees.",
                "The woman is climbing a mountain.",
                "A woman cannot be sleeping in a hammock and climbing a mountain at the same "
                "time.", "contradiction"),
]) + "{input}\nReasonings:"


def _anli_shot(premise, hypothesis, reasoning, label):
  return f"{nli_input(premise, hypothesis)}\nA: {reasoning} So the answer is {label}.\n\n"


_ANLI = (
    "For each premise and hypothesis, reason step by step, then say whether the hypothesis "
    "is an entailment of the premise, a contradiction of it, or neutral.\n\n" + "".join([
        _anli_shot("The Harbor Bridge, finished in 1932, carries eight lanes of traffic "
                   "across the bay.", "The bridge was completed before 1940.",
                   "The bridge was finished in 1932, and 1932 is before 1940.", "entailment"),
        _anli_shot("Maria Lopez is a painter born in Seville who now lives in Lisbon.",
                   "Maria Lopez has exhibited her work in Paris.",
                   "The premise says where she was born and lives, but nothing about "
                   "exhibitions.", "neutral"),
        _anli_shot("The museum is closed on Mondays and open every other day of the week.",
                   "Visitors can enter the museum on a Monday.",
                   "The museum is closed on Mondays, so visitors cannot enter then.",
                   "contradiction"),
    ]) + "{input}\nA:")


_GENERIC = (
    "Answer each question. Think step by step first, then give the answer.\n\n"
    "Q: A train leaves at 3 pm and the trip takes 2 hours. When does it arrive?\n"
    "A: The train leaves at 3 pm and travels 2 hours. 3 pm plus 2 hours is 5 pm. "
    "So the answer is 5 pm.\n\n"
    "Q: Is a whale a fish or a mammal?\n"
    "A: Whales breathe air, are warm-blooded and feed their young milk, which are traits of "
    "mammals. So the answer is mammal.\n\n"
    "Q: {input}\nA:")

_QA_STOP = ("\n\nQ:",)
_NLI_STOP = ("\n\nPremise:",)

# The benchmarks' prompts (each benchmark names its own: annotate/benchmarks.py) and the
# generic one for custom data.
CQA = Prompt("cqa-cot", 1, _CQA, _QA_STOP)
SVAMP = Prompt("svamp-cot", 1, _SVAMP, _QA_STOP)
ESNLI = Prompt("esnli-cot", 1, _ESNLI, _NLI_STOP)
ANLI1 = Prompt("anli1-cot", 1, _ANLI, _NLI_STOP)
GENERIC = Prompt("generic-cot", 1, _GENERIC, _QA_STOP)
ALL = (CQA, SVAMP, ESNLI, ANLI1, GENERIC)


def prompt_from_file(path) -> Prompt:
  """A user's own template: any text with one `{input}` where the example goes."""
  try:
    template = pathlib.Path(path).read_text(encoding="utf-8-sig")  # a leading BOM dropped
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the prompt template: {e}") from None
  if template.count(QUERY_FIELD) != 1:
    raise DataError(path, f"a prompt template needs exactly one {QUERY_FIELD} placeholder, "
                    f"found {template.count(QUERY_FIELD)}")
  return Prompt("custom-cot", 1, template, _QA_STOP)
