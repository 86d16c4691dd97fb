"""Pinned settings: what a job dir recorded when it started, compared with a rerun's.

Every resumable command pins what decides its output (an annotation shard: the teacher,
prompt, examples and parsing; `sbs predict`: the input's hash, the model and the settings;
`sbs train`: the run's identity in run.json; `sbs sweep`: settings and gin contents) and
refuses a rerun whose settings differ, naming each difference. `differences` finds them,
nested dicts by their dotted keys; the two `describe_*` forms are how they are printed.
"""

from __future__ import annotations

import json
from typing import Sequence


def differences(stored: dict, current: dict, skip: Sequence[str] = (),
                nested: bool = True) -> list[tuple[str, object, object]]:
  """(key, stored value, current value) for each key whose values differ, keys sorted;
  with `nested`, where both values are dicts, their differing keys instead, as
  `key.inner`."""
  out = []
  for key in sorted(set(stored) | set(current), key=str):
    if key in skip:
      continue
    a, b = stored.get(key), current.get(key)
    if a == b:
      continue
    if nested and isinstance(a, dict) and isinstance(b, dict):
      out += [(f"{key}.{k}", x, y) for k, x, y in differences(a, b)]
    else:
      out.append((str(key), a, b))
  return out


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True, ensure_ascii=False)
  return text if len(text) <= 60 else text[:57] + "..."


def describe_difference(old: dict, new: dict, skip: Sequence[str] = ()) -> str:
  """'key: old -> new; ...' for each differing key, values shortened (flat: a nested
  dict that differs is shown whole)."""
  return "; ".join(f"{k}: {_short(a)} -> {_short(b)}"
                   for k, a, b in differences(old, new, skip, nested=False))


def _show(value) -> str:
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef"
                                                         for c in value):
    return value[:12] + "..."  # a sha256
  return json.dumps(value, sort_keys=True)


def describe_nested(stored: dict, current: dict, skip: Sequence[str] = ()) -> list[str]:
  """'key.inner X (this run: Y)' for each differing leaf, sha256 values shortened."""
  return [f"{key} {_show(a)} (this run: {_show(b)})"
          for key, a, b in differences(stored, current, skip)]
