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


# Errors of the disk or the path that a user fixes outside the program: a full disk, a file
# size limit (`ulimit -f`; Python ignores SIGXFSZ, so the write fails with EFBIG), a
# read-only folder, a path through a regular file. They reach the top wrapped by TensorFlow,
# orbax or tensorstore as often as raw, so they are recognised anywhere in the chain.
_STORAGE_ERRNOS = {
    "ENOSPC": "free some space, then rerun the same command",
    "EDQUOT": "free some space, then rerun the same command",
    "EFBIG": "raise the file size limit (`ulimit -f`), then rerun the same command",
    "EROFS": "choose a writable path",
    "EACCES": "choose a path you may write, or fix its permissions",
    "EPERM": "choose a path you may write, or fix its permissions",
    "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
    "EISDIR": "the path is a folder where a file was expected: choose another path",
    "ENAMETOOLONG": "choose a shorter path",
}
# Raised by a path operation, these say the path given cannot be used (a file where a folder
# must be made, a folder that is not there); quoted by a library, they say too little.
_PATH_ERRNOS = {
    "EEXIST": "a file is in the way: choose another path",
    "ENOENT": "check the path",
}


def exception_chain(exc: BaseException):
  """The exception, its causes and contexts, and the members of exception groups."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo.extend([e.__cause__, e.__context__])
    todo.extend(getattr(e, "exceptions", ()) or ())


def storage_error_line(exc: BaseException) -> str | None:
  """One line for a full disk, a size limit or an unwritable path anywhere in `exc`'s
  chain (raw OSError, or a library's error that quotes the system's message); None when
  `exc` is not one of those."""
  import errno  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  codes = {getattr(errno, name): name for name in _STORAGE_ERRNOS if hasattr(errno, name)}
  hints = {getattr(errno, name): hint for name, hint in
           list(_STORAGE_ERRNOS.items()) + list(_PATH_ERRNOS.items()) if hasattr(errno, name)}
  chain = list(exception_chain(exc))
  for e in chain:
    if isinstance(e, OSError) and e.errno in hints and (e.errno in codes or e.filename):
      where = e.filename if e.filename is not None else ""
      text = f"{where}: {e.strerror}" if where else e.strerror
      return f"{text} ({hints[e.errno]})"
  for e in chain:  # a library's error that quotes the system's message
    message = str(e)
    for code, name in codes.items():
      if os.strerror(code) in message:
        first = message.strip().splitlines()[0] if message.strip() else message
        if len(first) > 300:
          first = first[:300] + "..."
        return f"{os.strerror(code)} ({_STORAGE_ERRNOS[name]}); the library said: {first}"
  return None
