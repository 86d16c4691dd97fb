"""The controlled task: seeded generation, the programmatic teacher, the live annotation path."""

import json
import random

from sbs_jax.annotate import parsers
from sbs_jax.data.readers import Example
from sbs_jax.experiments import prepare, synthetic


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
    counts = {n: int(c) for n, c, _ in synthetic._FACT.findall(p["input"])}
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
