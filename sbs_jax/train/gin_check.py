"""Gin mistakes as one line each: unknown macros, configurables and parameters (with the
closest known names), values gin cannot parse (how to quote them), values of the wrong type
and required settings left unset.

gin itself refuses an unknown configurable or parameter with several lines, accepts a
binding of a macro nothing refers to (`--gin.TRAIN_STEPZ=5` does nothing), and passes a
`%gin.REQUIRED` macro left unset on as a bare sentinel object.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import tokenize
import types
import typing

import gin

from sbs_jax.errors import SbsError

QUOTING = ("numbers go bare (--gin.TRAIN_STEPS=300), strings in quotes that the shell "
           "leaves in place (--gin.MODEL_DIR=\"'runs/cqa'\")")


class ConfigError(SbsError):
  """A config value that is missing or of the wrong type; `line` is the message alone
  (gin appends "In call to configurable ..." to errors raised inside a configurable)."""

  def __init__(self, line: str):
    super().__init__(line)
    self.line = line


# Settings that moved: (configurable, parameter) -> where it is bound now.
MOVED = {("TrainConfig", "mesh"): "ParallelismConfig.mesh",
         ("TrainConfig", "partitioning_dims"): "ParallelismConfig.partitioning_dims",
         ("OptimizerConfig", "grad_accum_steps"): "ParallelismConfig.grad_accum_steps"}


def _close(name: str, known) -> str:
  matches = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
  return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def _configurable_names() -> list[str]:
  names = []
  for selector, configurable in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    names += [selector, configurable.name]
  return names


def _where(message: str) -> str:
  """gin's 'In file "x.gin", line 3' or 'In bindings string line 1' -> ' (x.gin line 3)'."""
  m = re.search(r'In file "([^"]+)", line (\d+)', message)
  if m:
    return f" ({m.group(1)} line {m.group(2)})"
  m = re.search(r"In bindings string line \d+\s*\n\s*(.+)", message)
  return f" (in --gin.{m.group(1).strip().replace(' = ', '=', 1)})" if m else ""


def _binding_with(token: str, bindings) -> str:
  for binding in bindings:
    key, _, value = binding.partition(" = ")
    if token in value or not value.strip():
      return f" (in --gin.{key}={value})"
  return ""


def parse_error(error: Exception, bindings=()) -> SbsError:
  """One line for an error raised while gin parses files and `bindings`."""
  message = str(error)
  where = _where(message)
  token = re.search(r"Failed to parse token '([^']*)'", message)
  if not where and bindings:
    where = _binding_with(token.group(1) if token else "\0", bindings)
  m = re.search(r"No configurable matching '([^']+)'", message)
  if m:
    return SbsError(f"gin: no configurable {m.group(1)!r}{where}"
                    f"{_close(m.group(1), _configurable_names())}")
  m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
  if m and (m.group(1).rpartition(".")[2], m.group(2)) in MOVED:
    now = MOVED[(m.group(1).rpartition(".")[2], m.group(2))]
    return SbsError(f"gin: {m.group(1)}.{m.group(2)} moved to {now}{where}: bind that "
                    "instead")
  if m:
    parameters = []
    try:
      configurable = gin.config._REGISTRY.get_match(m.group(1))  # pylint: disable=protected-access
      parameters = list(inspect.signature(configurable.wrapped).parameters)
    except (KeyError, ValueError, TypeError, AttributeError):
      pass
    return SbsError(f"gin: {m.group(1)} has no parameter {m.group(2)!r}{where}"
                    f"{_close(m.group(2), parameters)}")
  if isinstance(error, tokenize.TokenError):
    return SbsError(f"gin: cannot parse a value (an unclosed bracket or quote?): {QUOTING}")
  if isinstance(error, (SyntaxError, ValueError)) and re.search(
      r"parse|malformed|Unable to", message, re.I):
    what = f"cannot read the value {token.group(1)!r}" if token else "cannot parse a value"
    return SbsError(f"gin: {what}{where}: {QUOTING}")
  first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
  return SbsError(f"gin: {first}{where}")


def check_macros() -> None:
  """Refuses a macro (`NAME = value`) that no binding refers to, e.g. a misspelled one."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  defined = {scope for scope, selector in config if selector == "gin.macro" and scope}
  used = set()
  for params in config.values():
    for ref in gin.config.iterate_references(params):
      if ref.selector == "gin.macro":
        used.add(ref.scoped_selector.rsplit("/", 1)[0])
  unused = sorted(defined - used)
  if unused:
    name = unused[0]
    raise SbsError(f"gin: the macro {name} is set but nothing uses it{_close(name, used)}; "
                   f"known macros: {', '.join(sorted(used))}")


def binding_name(parameter: str) -> str:
  """The macro that sets `parameter` ('TrainConfig.model_dir' -> 'MODEL_DIR'), else
  `parameter` itself: what to bind to change it without leaving a macro unused."""
  try:
    value = gin.query_parameter(parameter)
  except (ValueError, KeyError):
    return parameter
  if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
    return value.scoped_selector.rsplit("/", 1)[0]
  return parameter


def _setting(cls_name: str, field: str) -> str:
  return f"--gin.{binding_name(f'{cls_name}.{field}')}"


def _fits(value, hint) -> bool:
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_fits(value, a) for a in args)
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is tuple:
    return isinstance(value, (tuple, list))
  if isinstance(hint, type):
    return isinstance(value, hint)
  return True  # a hint we do not check


def _type_name(hint) -> str:
  names = [getattr(a, "__name__", str(a)) for a in (typing.get_args(hint) or (hint,))]
  return " or ".join("None" if n == "NoneType" else n for n in names)


def check_fields(obj) -> None:
  """Refuses a dataclass config with a required field unset or a value of the wrong type."""
  cls = type(obj)
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(obj):
    value = getattr(obj, field.name)
    setting = _setting(cls.__name__, field.name)
    if value is gin.REQUIRED:
      raise ConfigError(f"{cls.__name__}.{field.name} is required and not set: set it with "
                     f"{setting}=... or in an experiment gin file")
    hint = hints.get(field.name)
    if hint is not None and not _fits(value, hint):
      raise ConfigError(f"{cls.__name__}.{field.name} = {value!r} is not {_type_name(hint)} "
                     f"(set by {setting}): {QUOTING}")


def check_range(obj, field: str, ok: bool, expected: str) -> None:
  """Refuses a dataclass config's value that has the right type but not a valid value."""
  if ok:
    return
  cls = type(obj).__name__
  raise ConfigError(f"{cls}.{field} = {getattr(obj, field)!r} is out of range: it must be "
                    f"{expected} (set by {_setting(cls, field)})")


def configured(make):
  """`make()` (a gin configurable call) with gin's errors as one line each."""
  try:
    return make()
  except ConfigError as e:
    raise SbsError(e.line) from None
  except RuntimeError as e:
    m = re.search(r"Required bindings for `(\w+)` not provided in config: (\[[^\]]*\])", str(e))
    if not m:
      raise
    raise SbsError(f"{m.group(1)} needs {m.group(2)}: include an experiment gin file, e.g. "
                   "--gin_file=experiments/cqa_distill_llm.gin") from None
