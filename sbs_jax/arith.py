"""A safe evaluator for the arithmetic equations of SVAMP-style labels.

Grammar (nothing else is accepted):

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := '-' unary | '+' unary | atom
    atom   := NUMBER | '(' expr ')'
    NUMBER := digits with an optional decimal part and thousands commas, e.g. 1,000.5

Bounded: input length, parenthesis depth, number of tokens and the magnitude of every
intermediate value. No name, call, attribute, power or exponent notation can be written,
and Python's `eval` is never used. Every failure is an `ArithmeticEvalError`.
"""

from __future__ import annotations

import math
import re

MAX_LENGTH = 512
MAX_DEPTH = 64
MAX_MAGNITUDE = 1e15

_TOKEN = re.compile(r"\s*(?:(\d[\d,]*(?:\.\d*)?|\.\d+)|([-+*/()]))")


class ArithmeticEvalError(ValueError):
  """The text is not an equation this evaluator accepts, or its value is out of bounds."""


def _tokens(text: str) -> list[str]:
  out, pos = [], 0
  text = text.rstrip()
  while pos < len(text):
    m = _TOKEN.match(text, pos)
    if not m:
      raise ArithmeticEvalError(f"unexpected character {text[pos:].lstrip()[:1]!r} at "
                                f"position {pos}")
    number = m.group(1)
    if number is not None and not re.fullmatch(r"\d{1,3}(,\d{3})*(\.\d*)?|\d+(\.\d*)?|\.\d+",
                                                number):
      raise ArithmeticEvalError(f"malformed number {number!r}")
    out.append(m.group(1) or m.group(2))
    pos = m.end()
  return out


def _check(value: float) -> float:
  if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
    raise ArithmeticEvalError(f"magnitude over {MAX_MAGNITUDE:g}")
  return value


class _Parser:

  def __init__(self, tokens: list[str]):
    self.tokens = tokens
    self.pos = 0
    self.depth = 0

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self) -> str:
    tok = self.peek()
    if tok is None:
      raise ArithmeticEvalError("unexpected end of equation")
    self.pos += 1
    return tok

  def expr(self) -> float:
    value = self.term()
    while self.peek() in ("+", "-"):
      op = self.take()
      rhs = self.term()
      value = _check(value + rhs if op == "+" else value - rhs)
    return value

  def term(self) -> float:
    value = self.unary()
    while self.peek() in ("*", "/"):
      op = self.take()
      rhs = self.unary()
      if op == "*":
        value = _check(value * rhs)
      else:
        if rhs == 0:
          raise ArithmeticEvalError("division by zero")
        value = _check(value / rhs)
    return value

  def unary(self) -> float:
    # Signs are folded in a loop, not by recursion, so '- - - ... 1' cannot go deep.
    sign = 1.0
    while self.peek() in ("-", "+"):
      if self.take() == "-":
        sign = -sign
    return sign * self.atom()

  def atom(self) -> float:
    tok = self.take()
    if tok == "(":
      self.depth += 1
      if self.depth > MAX_DEPTH:
        raise ArithmeticEvalError(f"parentheses nested deeper than {MAX_DEPTH}")
      value = self.expr()
      if self.take() != ")":
        raise ArithmeticEvalError("expected ')'")
      self.depth -= 1
      return value
    if tok in "+-*/)":
      raise ArithmeticEvalError(f"unexpected {tok!r}")
    return _check(float(tok.replace(",", "")))


def evaluate(text: str) -> float:
  """The value of an arithmetic equation such as '( 84.0 / 2.0 )' or '45 - (-1)'."""
  if not isinstance(text, str):
    raise ArithmeticEvalError(f"expected a string, got {type(text).__name__}")
  if len(text) > MAX_LENGTH:
    raise ArithmeticEvalError(f"longer than {MAX_LENGTH} characters")
  tokens = _tokens(text)
  if not tokens:
    raise ArithmeticEvalError("empty equation")
  parser = _Parser(tokens)
  value = parser.expr()
  if parser.pos != len(tokens):
    raise ArithmeticEvalError(f"unexpected {tokens[parser.pos]!r} after the equation")
  return value


def try_evaluate(text: str) -> float | None:
  """`evaluate`, or None when the text is not a valid bounded equation."""
  try:
    return evaluate(text)
  except ArithmeticEvalError:
    return None


def same_value(a: str, b: str, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
  """Whether two equations evaluate to the same number (False if either is invalid)."""
  va, vb = try_evaluate(a), try_evaluate(b)
  if va is None or vb is None:
    return False
  return math.isclose(va, vb, rel_tol=rel_tol, abs_tol=abs_tol)
