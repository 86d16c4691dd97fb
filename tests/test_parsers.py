"""Completion parsers: cutting run-ons, splitting rationale from answer, normalising labels."""

import re

import pytest

from sbs_jax.annotate import benchmarks, parsers, prompts
from sbs_jax.data.readers import Example, cqa_input, nli_input

CHOICES = ("bus station", "park", "train station", "airport", "zoo")
CQA = Example(0, "q0", cqa_input("Where do trains stop?", CHOICES), "train station", CHOICES)


def test_cqa_cuts_run_on_and_takes_text_after_marker():
  p = parsers.parse_cqa("Trains stop at stations for trains. So the answer is (c) train "
                        "station.\n\nQ: What is next?\nAnswer Choices:\n(a) x\nA: So the "
                        "answer is (a) x.", CQA)
  assert p.ok and p.label == "train station"
  assert p.rationale == "Trains stop at stations for trains."


def test_cqa_bare_marker_takes_the_choice_text():
  p = parsers.parse_cqa("Trains stop there. So the answer is (c).", CQA)
  assert p.ok and p.label == "train station"


def test_cqa_answer_without_marker_must_name_one_choice():
  assert parsers.parse_cqa("So the answer is Train Station.", CQA).label == "train station"
  p = parsers.parse_cqa("Hmm. So the answer is a railway depot.", CQA)
  assert not p.ok and "marker" in p.error


def test_cqa_keeps_hedged_answer_as_written():
  # A hedge names two choices: it is not an answer, and must not match the gold label.
  p = parsers.parse_cqa("Either. So the answer is (a) bus station or (c) train station.", CQA)
  assert p.ok and p.label == "bus station or (c) train station"
  assert not benchmarks.BENCHMARKS["cqa"].same_label(p.label, "train station")


def test_cqa_without_answer_phrase_is_unparsable():
  p = parsers.parse_cqa("I am not sure about this one.\n\nQ: next", CQA)
  assert not p.ok and p.label == "" and p.rationale == "I am not sure about this one."


SVAMP = Example(0, "s0", "Tom has 3 bags of 4 apples. How many apples?", "( 3.0 * 4.0 )")


@pytest.mark.parametrize("completion,label", [
    ("3 bags of 4. The answer is (3 * 4).\n\nQ: more", "3 * 4"),
    ("He gave one. The answer is (45 - (-1)).", "45 - (-1)"),
    ("Two parts. The answer is (10) * (45).", "(10) * (45)"),
])
def test_svamp_takes_the_equation_inside_the_parentheses(completion, label):
  p = parsers.parse_svamp(completion, SVAMP)
  assert p.ok and p.label == label


@pytest.mark.parametrize("completion,error", [
    ("So 23 + x = 27. The answer is (23 + x).", "does not evaluate"),
    ("The answer is (14, 21).", "does not evaluate"),
    ("The answer is 12.", "no parenthesised"),
    ("I think it is 12.", "no 'The answer is'"),
])
def test_svamp_unusable_equations_are_unparsable(completion, error):
  p = parsers.parse_svamp(completion, SVAMP)
  assert not p.ok and error in p.error


NLI = Example(0, "n0", nli_input("A man sleeps.", "A man is awake."), "contradiction")


def test_esnli_label_word_and_run_on():
  p = parsers.parse_esnli("One cannot sleep and be awake.\nAnswer: contradiction\n\nPremise: "
                          "x\nHypothesis: y\nReasonings: z\nAnswer: neutral", NLI)
  assert p.ok and p.label == "contradiction"
  assert p.rationale == "One cannot sleep and be awake."


def test_esnli_truncated_run_on_still_reads_the_first_word():
  assert parsers.parse_esnli("r\nAnswer: entailment\n\nPre", NLI).label == "entailment"


@pytest.mark.parametrize("completion", ["no answer here", "r\nAnswer: maybe\n"])
def test_esnli_unparsable(completion):
  assert not parsers.parse_esnli(completion, NLI).ok


def test_anli_so_the_answer_is_label_word():
  p = parsers.parse_anli("Sleeping excludes awake. So the answer is contradiction.\n\n"
                         "Premise: next one", NLI)
  assert p.ok and p.label == "contradiction" and p.rationale == "Sleeping excludes awake."
  assert not parsers.parse_anli("Sleeping excludes awake.\n\nPremise: x", NLI).ok
  assert not parsers.parse_anli("So the answer is yes.", NLI).ok


def test_generic_parser_takes_text_after_last_answer_is():
  parse = parsers.make_generic_parser()
  ex = Example(0, "g0", "2+3?", "5")
  p = parse("The answer is not 4. We add 2 and 3. So the answer is 5.\n\nQ: next", ex)
  assert p.ok and p.label == "5"
  assert p.rationale == "The answer is not 4. We add 2 and 3."
  assert not parse("No idea.", ex).ok


def test_generic_parser_custom_regexes():
  parse = parsers.make_generic_parser(answer_regex=r"Final:", stop_regex=r"\n###")
  p = parse("think think\nFinal: blue\n### next", Example(0, "g", "sky?", None))
  assert p.ok and p.label == "blue" and p.rationale == "think think"


@pytest.mark.parametrize("name", ["cqa", "svamp", "esnli", "anli1"])
def test_each_prompt_exemplar_parses_with_its_benchmark_parser(name):
  """Our own exemplars show the teacher the format the parser reads."""
  bench = benchmarks.BENCHMARKS[name]
  prompt = bench.prompt
  sep = "\nReasonings:" if name == "esnli" else "\nA:"
  shots = [s for s in prompt.template.split("\n\n") if sep in s and "{input}" not in s]
  assert len(shots) >= 3
  for shot in shots:
    completion = shot.split(sep, 1)[1]
    choices = tuple(re.findall(r"\([a-e]\) (.+)", shot.split(sep)[0]))
    parsed = bench.parse(completion, Example(0, "x", "x", None, choices))
    assert parsed.ok, (shot, parsed)


def test_prompt_ids_are_stable_and_follow_the_template():
  cqa = benchmarks.BENCHMARKS["cqa"].prompt
  assert cqa.id == prompts.CQA.id
  assert re.fullmatch(r"cqa-cot-v1-[0-9a-f]{8}", cqa.id)
  edited = prompts.Prompt(cqa.name, cqa.version, cqa.template + " ", cqa.stop)
  assert edited.id != cqa.id
  assert len({p.id for p in prompts.ALL}) == len(prompts.ALL)


def test_render_puts_the_input_last_and_keeps_braces():
  ex = Example(0, "x", "What is {this}?", None)
  text = prompts.GENERIC.render(ex)
  assert text.endswith("Q: What is {this}?\nA:")


def test_prompt_file_needs_one_placeholder(tmp_path):
  good = tmp_path / "p.txt"
  good.write_text("Q: 1+1?\nA: So the answer is 2.\n\nQ: {input}\nA:")
  assert prompts.prompt_from_file(good).id.startswith("custom-cot-v1-")
  bad = tmp_path / "bad.txt"
  bad.write_text("no placeholder")
  with pytest.raises(Exception, match="exactly one"):
    prompts.prompt_from_file(bad)


def test_a_benchmark_is_one_object_and_a_custom_dataset_compares_exactly():
  from sbs_jax import metrics
  from sbs_jax.data import readers
  assert set(benchmarks.BENCHMARKS) == set(readers.READERS)
  for name, bench in benchmarks.BENCHMARKS.items():
    assert bench.reader.name == name and bench.answer_format == name
  svamp, cqa = benchmarks.BENCHMARKS["svamp"], benchmarks.BENCHMARKS["cqa"]
  assert svamp.same_label("( 3.0 * 4.0 )", "12") and not svamp.same_label("13", "12")
  assert not cqa.same_label("12.0", "12") and cqa.same_label("train  station", "train station")
  assert metrics.equation_accuracy in benchmarks.metric_fns("svamp")
  assert benchmarks.metric_fns("cqa") == benchmarks.metric_fns("my_data") == [
      metrics.label_accuracy]
  custom = benchmarks.custom("my_data", "number")
  assert custom.answer_format == "number" and custom.prompt is prompts.GENERIC
  assert custom.parse("3 + 4 = 7. So the answer is 7 apples.", Example(0, "x", "q", None)).label \
      == "7"
  assert not custom.same_label("7", "7.0")  # both sides are normalised before they compare
