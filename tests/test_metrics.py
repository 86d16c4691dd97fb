"""Label-task metrics."""

import pytest

from sbs_jax import metrics


def test_label_accuracy_normalises_whitespace():
  got = metrics.label_accuracy(["train station", "park", "zoo"],
                               ["train  station ", "\npark", "bank"])
  assert got == {"accuracy": pytest.approx(200 / 3)}


def test_equation_accuracy_by_value_and_hostile_predictions():
  targets = ["( 10.0 * 45.0 )"] * 6
  predictions = ["10 * 45", "450", "45 * 10 + 0", "__import__('os').system('x')",
                 "9**9**9", "(" * 10_000 + "1" + ")" * 10_000]
  assert metrics.equation_accuracy(targets, predictions) == {
      "equation_accuracy": pytest.approx(50.0)}


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError):
    metrics.label_accuracy(["a"], [])


def test_strip_postprocessor():
  assert metrics.strip_postprocessor(b"  wooded   area \n") == "wooded area"
