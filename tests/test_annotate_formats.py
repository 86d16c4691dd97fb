"""--answer_format: choice, number, nli and text answers of custom data, teacher and gold."""

import pytest

from sbs_jax.annotate import answer_formats, build, job as job_lib, parsers
from sbs_jax.data import records
from sbs_jax.data.readers import Example, cqa_input
from sbs_jax.errors import DataError, SbsError
from tests.helpers.data import annotate_args, write_jsonl

CHOICES = ("whirlpool bath", "downtown", "play tag", "bus station", "train station")
INPUT = cqa_input("What do children do at recess?", CHOICES)


def choice_example(label="play tag"):
  ex = Example(0, "q0", INPUT, label)
  return answer_formats.prepare_examples("choice", [ex], "data.jsonl")[0]


def test_choices_are_read_from_the_cqa_layout_and_inline():
  assert answer_formats.choices_in_input(INPUT) == CHOICES
  inline = "Pick one. Answer Choices: (a) red (b) dark blue (c) green"
  assert answer_formats.choices_in_input(inline) == ("red", "dark blue", "green")
  assert answer_formats.choices_in_input("What is 2+2?") == ()
  assert answer_formats.choices_in_input("Answer Choices:\n(a) x\n(c) y") == ()  # a gap


@pytest.mark.parametrize("completion,label", [
    ("Kids run around at recess. So the answer is (c) play tag.\n\nQ: next", "play tag"),
    ("Children like to run.\nAnswer: downtown", "downtown"),
    ("Relaxing in warm water.\nAnswer: (a) whirlpool bath.", "whirlpool bath"),
    ("They run and chase. The answer is C", "play tag"),
    ("They chase each other.\n**Answer:** (C)", "play tag"),
    ("So the answer is Play Tag!", "play tag"),
    ("So the answer is: they play tag at recess.", "play tag"),
    # A later "answer" in passing does not hide the answer.
    ("So the answer is (c) play tag. This answer fits best.", "play tag"),
])
def test_choice_answers_map_to_the_listed_choice(completion, label):
  parse = parsers.make_generic_parser(answer_format="choice")
  p = parse(completion, choice_example())
  assert p.ok and p.label == label, p


@pytest.mark.parametrize("completion,reason", [
    ("Either. So the answer is (d) bus station or (e) train station.", "several choices"),
    ("So the answer is bus station or train station.", "several choices"),
    ("So the answer is (a) play tag.", "several choices"),  # marker and text disagree
    ("Hmm. So the answer is a railway depot.", "no choice matches"),
    ("So the answer is (g).", "choice does not exist"),
    ("I cannot decide.", "no answer phrase"),
])
def test_choice_answers_naming_none_or_several_are_unparsable(completion, reason):
  p = parsers.make_generic_parser(answer_format="choice")(completion, choice_example())
  assert not p.ok and p.reason == reason and p.error.startswith(reason + ": "), p


@pytest.mark.parametrize("gold", ["play tag", "(c)", "C", "Play tag."])
def test_gold_choice_labels_are_normalised_the_same_way(gold):
  assert choice_example(gold).label == "play tag"


def test_choice_refuses_inputs_without_choices_and_golds_naming_none():
  with pytest.raises(DataError, match=r"row 1 \(id q0\): the input lists no answer choices"):
    answer_formats.prepare_examples("choice", [Example(0, "q0", "Why?", "x")], "d.jsonl")
  with pytest.raises(DataError, match=r"gold label does not read as --answer_format choice: "
                     r"'swimming' is none of the choices"):
    choice_example("swimming")


@pytest.mark.parametrize("completion,label", [
    ("He earns 1,000 and 200 more. The answer is $1,200.50.", "1200.5"),
    ("So the answer is 42 apples.", "42"),
    ("Answer: 3 + 4 = 7", "7"),
    ("The answer is 12.0", "12"),
    ("The answer is -3 degrees.", "-3"),
    ("So the answer is 1,250,000.", "1250000"),
])
def test_number_answers(completion, label):
  p = parsers.make_generic_parser(answer_format="number")(completion, Example(0, "n", "q", None))
  assert p.ok and p.label == label, p


@pytest.mark.parametrize("completion,reason", [
    ("The answer is between 10 and 12.", "several numbers"),
    ("The answer is unknown.", "no number"),
])
def test_number_answers_unparsable(completion, reason):
  p = parsers.make_generic_parser(answer_format="number")(completion, Example(0, "n", "q", None))
  assert not p.ok and p.reason == reason


def test_number_gold_compares_by_value():
  golds = ["$1,200.50", "12.0", "7"]
  examples = [Example(i, f"n{i}", "q", g) for i, g in enumerate(golds)]
  prepared = answer_formats.prepare_examples("number", examples, "d.jsonl")
  assert [e.label for e in prepared] == ["1200.5", "12", "7"]
  with pytest.raises(DataError, match="'twelve' holds no number"):
    answer_formats.prepare_examples("number", [Example(0, "n", "q", "twelve")], "d.jsonl")


@pytest.mark.parametrize("completion,label", [
    ("A man sleeps.\nAnswer: Entailment", "entailment"),
    ("It was built in 1932, so the answer is contradiction.", "contradiction"),
    ("The answer is yes.", "entailment"),
    ("The answer is no", "contradiction"),
    ("The answer is: it is not possible to tell.", "neutral"),
    ("So the answer is NEUTRAL.", "neutral"),
])
def test_nli_answers(completion, label):
  p = parsers.make_generic_parser(answer_format="nli")(completion, Example(0, "n", "p", None))
  assert p.ok and p.label == label, p


def test_nli_unparsable_and_gold_labels():
  p = parsers.make_generic_parser(answer_format="nli")("The answer is maybe.",
                                                       Example(0, "n", "p", None))
  assert not p.ok and p.reason == "not a label word"
  golds = ["0", "Neutral", "contradiction", "2"]
  examples = [Example(i, f"n{i}", "p", g) for i, g in enumerate(golds)]
  assert [e.label for e in answer_formats.prepare_examples("nli", examples, "d")] == [
      "entailment", "neutral", "contradiction", "contradiction"]


def test_text_format_is_the_generic_parser():
  ex = Example(0, "t", "q", None)
  for completion in ("We add. So the answer is 5 pm.", "no answer", "So the answer is ."):
    assert (parsers.make_generic_parser(answer_format="text")(completion, ex)
            == parsers.make_generic_parser()(completion, ex))


def test_anli_lowercase_so_the_answer_is():
  ex = Example(0, "a", "p", "entailment")
  p = parsers.parse_anli("The bridge was built in 1932, so the answer is entailment.\n\n"
                         "Premise: next", ex)
  assert p.ok and p.label == "entailment" and p.rationale == "The bridge was built in 1932."


# ---------------------------------------------------------------- through the job

RECESS_ROWS = [
    {"input": INPUT, "label": "play tag", "out": "They run. So the answer is (c) play tag."},
    {"input": INPUT, "label": "downtown", "out": "Shops are there.\nAnswer: downtown"},
    {"input": INPUT, "label": "whirlpool bath",
     "out": "Warm water.\nAnswer: (a) whirlpool bath."},
    {"input": INPUT, "label": "play tag", "out": "So the answer is (d) bus station."},
    {"input": INPUT, "label": "play tag", "out": "Hard to say. So the answer is a swing."},
]


@pytest.mark.parametrize("answer_format,correct,unparsable", [
    ("auto", 0, 2),  # "(c) play tag", "Answer: ..." lines: wrong or unparsable as text
    ("choice", 3, 1),
])
def test_choice_format_reads_a_teacher_the_text_format_understates(tmp_path, answer_format,
                                                                   correct, unparsable):
  path = write_jsonl(tmp_path / "recess.jsonl", RECESS_ROWS)
  job = build.build_job(annotate_args(dataset=f"jsonl:{path}", teacher="replay",
                                        completion_key="out", out_dir=tmp_path / "out",
                                        answer_format=answer_format))
  result = job_lib.run(job)
  stats = result.stats
  assert stats["answer_format"] == ("text" if answer_format == "auto" else answer_format)
  assert (stats["correct"], stats["unparsable"]) == (correct, unparsable)
  assert stats["teacher_accuracy"] == round(100 * correct / 5, 2)
  recs = records.read_records([result.records_path])
  if answer_format == "choice":
    assert [r["llm_label"] for r in recs] == ["play tag", "downtown", "whirlpool bath",
                                              "bus station", ""]
    assert stats["unparsable_reasons"] == {"no choice matches": 1}
    assert stats["unparsable_examples"]["no choice matches"] == [
        "train-4: no choice matches: 'a swing' is none of the choices 'whirlpool bath', "
        "'downtown', 'play tag', 'bus station', 'train station'"]


def test_answer_format_is_for_custom_data_only(tmp_path):
  with pytest.raises(SbsError, match="--answer_format is for custom data"):
    build.build_job(annotate_args(dataset="cqa", split="test", teacher="replay",
                                    out_dir=tmp_path, answer_format="choice"))
