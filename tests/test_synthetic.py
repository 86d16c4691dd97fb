"""The controlled task: seeded generation, the programmatic teacher, the live annotation path."""

import json
import random

import pytest

from sbs_jax.annotate import parsers
from sbs_jax.data.readers import Example
from sbs_jax.errors import SbsError
from sbs_jax.experiments import prepare, synthetic
from tests.helpers.cli import run_sbs_here


def _rows(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_generate_is_seeded_and_test_is_disjoint(tmp_path):
  a = synthetic.generate(tmp_path / "a", train=300, test=100, seed=3)
  b = synthetic.generate(tmp_path / "b", train=300, test=100, seed=3)
  c = synthetic.generate(tmp_path / "c", train=300, test=100, seed=4)
  assert a["train"].read_text() == b["train"].read_text()
  assert a["train"].read_text() != c["train"].read_text()
  train, test = _rows(a["train"]), _rows(a["test"])
  assert (len(train), len(test)) == (300, 100)
  assert not {r["input"] for r in train} & {r["input"] for r in test}
  assert a["train"].name == a["test"].name == "marbles.jsonl"  # one dataset, two splits


def test_labels_are_the_sum_of_the_two_asked_counts():
  rng = random.Random(0)
  for _ in range(200):
    p = synthetic.make_problem(rng, people=5)
    counts = {n: int(c) for n, c, _, _ in synthetic._FACT.findall(p["input"])}
    asked = synthetic._QUESTION.search(p["input"]).group(2, 3)
    assert len(counts) == 5 and asked[0] != asked[1]
    assert int(p["label"]) == counts[asked[0]] + counts[asked[1]]


def test_teacher_writes_the_steps_and_the_generic_parser_reads_its_answer():
  question = ("Ann has 5 marbles. Bob has 2 marbles. Cal has 7 marbles. "
              "How many marbles do Cal and Ann have together?")
  prompt = "Q: an exemplar\nA: so the answer is 3.\n\nQ: " + question + "\nA:"
  completion = synthetic.teacher_completion(prompt)
  parsed = parsers.make_generic_parser()(completion, Example(0, "x", question, "12"))
  assert parsed.ok
  assert parsed.label == "12"
  assert parsed.rationale == "Cal has 7 marbles. Ann has 5 marbles. 7 + 5 = 12."
  assert synthetic.teacher_completion("Q: what is love?\nA:").startswith("I cannot tell")


def test_teacher_error_rate_is_seeded_and_about_right():
  rng = random.Random(1)
  problems = [synthetic.make_problem(rng) for _ in range(1000)]
  parse = parsers.make_generic_parser()

  def wrong(rate):
    out = set()
    for i, p in enumerate(problems):
      text = synthetic.teacher_completion(f"Q: {p['input']}\nA:", rate)
      if parse(text, Example(i, str(i), p["input"], p["label"])).label != p["label"]:
        out.add(i)
    return out

  assert not wrong(0.0)
  errors = wrong(0.2)
  assert 150 <= len(errors) <= 250
  assert errors == wrong(0.2)


def test_prepare_annotates_through_the_live_teacher(tmp_path):
  ready = prepare.prepare_synthetic(tmp_path, train=120, test=40, error_rate=0.25)
  test_stats = json.loads((tmp_path / "annotations" / "marbles" / "test.stats.json")
                          .read_text())
  assert test_stats["examples"] == 40 and test_stats["parsed"] == 40
  assert ready.teacher_test_accuracy == test_stats["teacher_accuracy"]
  assert 50.0 <= ready.teacher_test_accuracy < 100.0  # the teacher misreads ~25%
  import tensorflow as tf
  files = sorted(tf.io.gfile.glob(f"{ready.annotation_dir}/marbles/train.tfrecord-*"))
  record = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(files))).numpy())
  feature = record.features.feature
  text = lambda k: feature[k].bytes_list.value[0].decode()  # pylint: disable=unnecessary-lambda-assignment
  assert text("teacher") != "" and "has" in text("rationale") and "+" in text("rationale")
  assert text("prompt_id").startswith("generic-cot")
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=ready.vocab)
  assert len(sp.encode(text("input"))) < 45  # word pieces, not letters
  again = prepare.prepare_synthetic(tmp_path, train=120, test=40, error_rate=0.25)
  assert again == ready  # a rerun reuses the annotations and the vocabulary


def test_a_sampling_teacher_misreads_per_sample_and_its_vote_recovers():
  rng = random.Random(2)
  problems = [synthetic.make_problem(rng, form=synthetic.Form("marked", "sum_last_digit"))
              for _ in range(400)]
  parse = parsers.make_generic_parser()

  def label(p, k):
    text = synthetic.teacher_completion(f"Q: {p['input']}\nA:", 0.3, sample=k)
    return parse(text, Example(0, "0", p["input"], p["label"])).label

  samples = [[label(p, k) for k in range(5)] for p in problems]
  assert samples == [[label(p, k) for k in range(5)] for p in problems]  # seeded
  one = sum(s[0] == p["label"] for s, p in zip(samples, problems)) / len(problems)
  assert 0.62 <= one <= 0.78  # each sample misreads ~30%
  # The samples of a question disagree (each draws its own misreading) ...
  assert sum(len(set(s)) > 1 for s in samples) > len(problems) / 2
  wrong = [x for s, p in zip(samples, problems) for x in s if x != p["label"]]
  assert len(set(wrong)) > 5  # and wrong answers are not all one
  # ... so a majority of five is right far more often than one sample.
  vote = sum(max(set(s), key=s.count) == p["label"] for s, p in zip(samples, problems))
  assert vote / len(problems) >= one + 0.12
  # Without `sample`, the teacher stays the one-answer teacher of before.
  p = problems[0]
  assert synthetic.teacher_completion(f"Q: {p['input']}\nA:", 0.3) == \
      synthetic.teacher_completion(f"Q: {p['input']}\nA:", 0.3)


def test_prepare_with_five_samples_votes_and_filters(tmp_path):
  ready = prepare.prepare_synthetic(tmp_path, train=60, test=60, error_rate=0.3,
                                    num_samples=5, keep="vote")
  stats = json.loads((tmp_path / "annotations" / "marbles" / "test.stats.json").read_text())
  assert stats["examples"] == 60 and stats["records"] == 300
  assert stats["vote_accuracy"] > stats["teacher_accuracy"]
  assert stats["kept_accuracy"] >= stats["vote_accuracy"]
  from sbs_jax.data import records as records_lib  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  rows = records_lib.read_records(sorted(glob.glob(f"{ready.annotation_dir}/marbles/"
                                                   "train.tfrecord-*")))
  assert [r["sample"] for r in rows[:5]] == [0, 1, 2, 3, 4]
  assert {r["num_samples"] for r in rows} == {5}
  for r in rows:  # kept: exactly the parsed samples that agree with the vote
    assert r["kept"] == int(r["parse_ok"] == 1 and r["llm_label"] == r["vote_label"])
  assert len({r["completion"] for r in rows}) > 60  # samples differ


# ---- The family: forms x operations.

FORMS = [synthetic.Form(form, op) for form in synthetic.FORMS for op in synthetic.OPS]


def _answer(completion):
  return completion.split("So the answer is ")[1].split(".")[0]


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"{f.form}-{f.op}")
def test_every_form_labels_its_two_counts_and_the_teacher_agrees(form):
  expected = {"sum": lambda a, b: a + b, "sum_last_digit": lambda a, b: (a + b) % 10,
              "abs_diff": lambda a, b: abs(a - b),
              "product_last_digit": lambda a, b: a * b % 10, "max": max}[form.op]
  rng = random.Random(5)
  parse = parsers.make_generic_parser()
  for i in range(150):
    p = synthetic.make_problem(rng, form=form)
    facts = synthetic._FACT.findall(p["input"])
    assert len(facts) == form.people
    if form.form == "marked":
      chosen = [int(c) for _, c, _, mark in facts if mark]
      assert len(chosen) == 2  # two facts starred, the question the same for all problems
      assert p["input"].endswith(synthetic._ASK[form.op].format(who="the starred counts"))
    else:
      counts = {n: int(c) for n, c, _, _ in facts}
      assert not any(mark for *_, mark in facts)
      named = [n for n in counts if n in p["input"].split(".")[-1]]
      assert len(named) == 2
      chosen = [counts[n] for n in named]
    assert int(p["label"]) == expected(*chosen)
    completion = synthetic.teacher_completion(f"Q: {p['input']}\nA:")
    parsed = parse(completion, Example(i, str(i), p["input"], p["label"]))
    assert parsed.ok and parsed.label == p["label"]
    # The rationale carries both counts; an always-wrong teacher is wrong under every op.
    for value in chosen:
      assert str(value) in parsed.rationale
    wrong = synthetic.teacher_completion(f"Q: {p['input']}\nA:", error_rate=1.0)
    assert _answer(wrong) != p["label"]


def test_marked_rationale_reads_as_documented():
  question = ("Ann has 5 coins. Bob has 7 coins, starred. Cal has 2 coins. "
              "Dee has 5 coins, starred. What is the last digit of the sum of the starred "
              "counts?")
  assert synthetic.teacher_completion(f"Q: {question}\nA:") == (
      "7 and 5. 7 + 5 = 12. The last digit is 2. So the answer is 2.\n\nQ:")
  diff = question.replace("the last digit of the sum of", "the difference between")
  assert _answer(synthetic.teacher_completion(f"Q: {diff}\nA:")) == "2"
  one_star = question.replace("7 coins, starred", "7 coins")
  assert synthetic.teacher_completion(f"Q: {one_star}\nA:").startswith("I cannot tell")


def test_the_lookup_sum_is_the_original_marbles_task(tmp_path):
  """The default form writes the files the first controlled experiment ran on."""
  a = synthetic.generate(tmp_path / "a", train=50, test=10, seed=0)
  b = synthetic.generate(tmp_path / "b", train=50, test=10, seed=0,
                         form=synthetic.Form("lookup", "sum"))
  assert a["train"].read_text() == b["train"].read_text()
  first = _rows(a["train"])[0]["input"]
  assert "How many" in first and "have together?" in first and "starred" not in first


def test_forms_differ_and_are_seeded(tmp_path):
  marked = synthetic.Form("marked", "abs_diff", people=6)
  a = synthetic.generate(tmp_path / "a", train=100, test=20, seed=1, form=marked)
  b = synthetic.generate(tmp_path / "b", train=100, test=20, seed=1, form=marked)
  assert a["train"].read_text() == b["train"].read_text()
  rows = _rows(a["train"])
  assert all(len(synthetic._FACT.findall(r["input"])) == 6 for r in rows)
  assert all(r["input"].count("starred,") + r["input"].count("starred.") == 2 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--people", "1"], "--people must be in [2, 24], got 1"),
    (["--max_count", "0"], "--max_count must be in [1, 99], got 0"),
    (["--error_rate", "1.5"], "--error_rate must be in [0, 1], got 1.5"),
])
def test_cli_refuses_bad_settings_in_one_line(tmp_path, argv, message):
  done = run_sbs_here("synthetic", "prepare", "--out_dir", str(tmp_path / "x"), *argv)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == f"sbs synthetic: error: {message}"


def test_cli_refuses_an_unknown_form_or_op(tmp_path):
  done = run_sbs_here("synthetic", "generate", "--out_dir", str(tmp_path), "--op", "mean")
  assert done.returncode == 2 and "invalid choice: 'mean'" in done.stderr


# ---- Inspecting a student's own rationales, step by step.

def test_score_rationale_separates_lookup_arithmetic_and_answer():
  q = ("Ann has 5 coins. Bob has 7 coins, starred. Cal has 2 coins. Dee has 5 coins, "
       "starred. What is the last digit of the sum of the starred counts?")
  score = synthetic.score_rationale
  assert score(q, "7 and 5. 7 + 5 = 12. The last digit is 2.") == {
      "values": True, "arithmetic": True, "answer": True}
  assert score(q, "7 and 5. 7 + 5 = 12. The last digit is 3.") == {
      "values": True, "arithmetic": False, "answer": False}
  diff = q.replace("the last digit of the sum of", "the difference between")
  assert score(diff, "5 and 7. 7 - 5 = 2.") == {"values": True, "arithmetic": True,
                                                "answer": True}
  assert score(diff, "2 and 7. 7 - 2 = 5.") == {"values": False, "arithmetic": True,
                                                "answer": False}
  assert score(diff, "5 and 7. 7 - 5 = 3.") == {"values": True, "arithmetic": False,
                                                "answer": False}
  assert score(diff, "") == {"values": False, "arithmetic": False, "answer": False}
  with pytest.raises(SbsError, match="not a problem of the synthetic family"):
    score("What is love?", "7")


def test_inspect_scores_predictions_against_their_problems(tmp_path):
  form = synthetic.Form("marked", "max")
  paths = synthetic.generate(tmp_path, train=5, test=4, seed=2, form=form)
  problems = _rows(paths["test"])
  preds = []
  for i, p in enumerate(problems):
    steps, answer = synthetic.explain(synthetic.solve(p["input"]))
    if i == 0:  # a wrong look-up, a rationale that follows from it, a label that agrees
      steps, answer = "0 and 0. The larger is 0.", 0
    label = str(answer) if i < 3 else "99"  # row 3: a label that ignores its rationale
    preds.append({"id": p["id"], "label": label, "rationale": steps})
  out = tmp_path / "preds.jsonl"
  out.write_text("".join(json.dumps(p) + "\n" for p in preds))
  got = synthetic.inspect(out, paths["test"])
  assert got == {"rows": 4, "values": 75.0, "arithmetic": 100.0, "answer": 75.0,
                 "label_agrees_with_rationale": 75.0, "label": 50.0}
  out.write_text(json.dumps({"id": "nope", "label": "1", "rationale": "x"}) + "\n")
  with pytest.raises(SbsError, match="id 'nope' is not in --problems"):
    synthetic.inspect(out, paths["test"])
  out.write_text(json.dumps({"id": problems[0]["id"], "label": "1"}) + "\n")
  with pytest.raises(SbsError, match="run sbs predict with --rationale"):
    synthetic.inspect(out, paths["test"])
