"""The safe arithmetic evaluator: right values, and hostile strings refused cleanly."""

import pytest

from sbs_jax import arith


@pytest.mark.parametrize("text,value", [
    ("( 84.0 / 2.0 )", 42.0),
    ("10 * 45", 450.0),
    ("45 - (-1)", 46.0),
    ("( 10.0 - ( 6.0 + 3.0 ) )", 1.0),
    ("2 + 3 * 4", 14.0),
    ("(2 + 3) * 4", 20.0),
    ("- - 3", 3.0),
    ("1,000 / 8", 125.0),
    ("7 / 2", 3.5),
    (".5 + 1.", 1.5),
    ("8 - 2 - 1", 5.0),
    ("16 / 4 / 2", 2.0),
])
def test_values(text, value):
  assert arith.evaluate(text) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "__import__('os').system('x')",
    "9**9**9",
    "(" * 10_000 + "1" + ")" * 10_000,
    "(" * 100 + "1" + ")" * 100,
    "1e308*10",
    "1 / 0",
    "5 / (3 - 3)",
    "999999999999 * 999999999999",
    "",
    "   ",
    "2 +",
    "(2 + 3",
    "2 + 3)",
    "x + 1",
    "1,2 + 3",
    "3 and 4",
    "1" * 600,
])
def test_hostile_or_invalid_strings_raise_arithmetic_eval_error(text):
  with pytest.raises(arith.ArithmeticEvalError):
    arith.evaluate(text)


def test_non_string_is_refused():
  with pytest.raises(arith.ArithmeticEvalError):
    arith.evaluate(12)  # type: ignore[arg-type]


def test_same_value_compares_by_value():
  assert arith.same_value("(10 * 45)", "( 10.0 * 45.0 )")
  assert arith.same_value("45 - (-1)", "( 45.0 + 1.0 )")
  assert not arith.same_value("10 * 45", "( 10.0 + 45.0 )")
  assert not arith.same_value("some - 8", "( 14.0 - 8.0 )")  # invalid is never equal
