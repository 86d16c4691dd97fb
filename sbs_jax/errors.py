"""Errors meant for people: each names the file, the place in it and the field."""

from __future__ import annotations


class SbsError(Exception):
  """Base class of the errors the `sbs` command reports without a traceback."""


class DataError(SbsError):
  """A bad input file, row or field.

  Attributes:
    path: the file.
    where: the place in the file, e.g. "line 17" or "item 3" (may be empty).
    field: the field of the row (may be empty).
    problem: what is wrong and what was expected.
  """

  def __init__(self, path, problem: str, where: str = "", field: str = ""):
    self.path = str(path)
    self.where = where
    self.field = field
    self.problem = problem
    parts = [self.path]
    if where:
      parts.append(where)
    if field:
      parts.append(f"field {field!r}")
    super().__init__(": ".join(parts) + ": " + problem)


class TeacherError(SbsError):
  """The teacher could not be asked: a refused request or a server that stays down."""
