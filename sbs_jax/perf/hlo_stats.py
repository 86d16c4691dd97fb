"""What a compiled program does, read from its optimized HLO text (`compiled.as_text()`):
the collectives one execution runs, and the tile padding of its parameters.

Collectives are counted per execution: an instruction inside a while loop whose trip count
the loop condition states (`i < N`, as a scan over micro-batches compiles) counts N times;
inside a loop of unknown length (decoding until every row ends) it counts once, i.e. per
iteration. The bytes of a collective are the size of its result on one device.
"""

from __future__ import annotations

import collections
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
             "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
             "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_CALLED = re.compile(r"\b(?:condition|body|calls|to_apply|branch_computations|"
                     r"called_computations)=\{?([^}]*?)\}?(?:,\s|$)")


def _arrays(shape: str) -> list[tuple[str, list[int], str]]:
  """(dtype, dims, layout) of each array in an HLO shape (an array or a tuple)."""
  return [(m.group(1), [int(d) for d in m.group(2).split(",") if d], m.group(3) or "")
          for m in _ARRAY.finditer(shape) if m.group(1) in _ITEMSIZE]


def _bytes(arrays) -> int:
  return sum(math.prod(dims) * _ITEMSIZE[dtype] for dtype, dims, _ in arrays)


def computations(hlo: str) -> dict[str, list[str]]:
  """Computation name -> its instruction lines; the entry computation is under ''."""
  comps, name = {}, None
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header:
      name = "" if header.group(1) else header.group(2)
      comps[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps


def _trip_count(condition: list[str]) -> int | None:
  """N of a loop condition `i < N` with a constant N, else None."""
  root = [line for line in condition if line.lstrip().startswith("ROOT")]
  if len(root) != 1 or " compare(" not in root[0] or "direction=LT" not in root[0]:
    return None
  constants = [int(m.group(1)) for line in condition
               for m in [re.search(r"\bs32\[\]\S* constant\((\d+)\)", line)] if m]
  return constants[0] if len(constants) == 1 else None


def multiplicities(comps: dict[str, list[str]]) -> dict[str, int]:
  """How many times each computation runs per execution of the entry computation."""
  calls = collections.defaultdict(list)  # caller -> [(callee, times)]
  for caller, lines in comps.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      body = re.search(r"\bbody=%(\S+?)[,\s]", line + " ")
      cond = re.search(r"\bcondition=%(\S+?)[,\s]", line + " ")
      trips = _trip_count(comps.get(cond.group(1), [])) if (body and cond) else None
      for group in _CALLED.findall(line):
        for callee in re.findall(r"%([^\s,}]+)", group):
          times = (trips or 1) if body and callee == body.group(1) else 1
          calls[caller].append((callee, times))
  runs = collections.Counter({"": 1})
  order, seen = [""], {""}
  while order:  # the call graph is a DAG; visit callers before callees
    caller = order.pop(0)
    for callee, times in calls.get(caller, []):
      runs[callee] += runs[caller] * times
      if callee not in seen:
        seen.add(callee)
        order.append(callee)
  return dict(runs)


def collectives(hlo: str) -> dict[str, dict]:
  """{kind: {"count": runs per execution, "bytes": result bytes per device}} of each
  collective kind the program uses (async `-start` forms included, `-done` not)."""
  comps = computations(hlo)
  runs = multiplicities(comps)
  out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
  for name, lines in comps.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      op = m.group(2)
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind not in out:
        continue
      arrays = _arrays(m.group(1))
      if op.endswith("-start") and kind != "all-reduce":
        # (operands, results, [context scalars]): the results are the second half.
        data = [a for a in arrays if a[1]]
        arrays = data[len(data) // 2:]
      times = runs.get(name, 0)
      out[kind]["count"] += times
      out[kind]["bytes"] += times * _bytes(arrays)
  return {k: v for k, v in out.items() if v["count"]}


def _tiled_elements(dims: list[int], layout: str) -> int:
  """Elements an array occupies with its layout's first tile, e.g. {1,0:T(8,128)}."""
  m = re.match(r"\{([0-9,]*)(?::T\(([0-9,]+)\))?", layout)
  if not m or not m.group(2):
    return math.prod(dims)
  tile = [int(t) for t in m.group(2).split(",")]
  minor_to_major = [int(d) for d in m.group(1).split(",") if d]
  if not dims:  # a scalar occupies one tile
    return math.prod(tile)
  major_to_minor = [dims[i] for i in reversed(minor_to_major)]
  k = min(len(tile), len(dims))  # the tile covers the k most minor dimensions
  padded = major_to_minor[:len(dims) - k] + [
      -(-size // t) * t for size, t in zip(major_to_minor[len(dims) - k:], tile[-k:])]
  return math.prod(padded)


def parameter_padding_bytes(hlo: str) -> int:
  """Bytes the entry parameters' tiled layouts add to their plain sizes (a [3, 32] float32
  table tiled 8x128 takes 4096 bytes, not 384)."""
  extra = 0
  for line in computations(hlo).get("", []):
    m = _INSTRUCTION.match(line)
    if not m or m.group(2) != "parameter":
      continue
    for dtype, dims, layout in _arrays(m.group(1)):
      extra += (_tiled_elements(dims, layout) - math.prod(dims)) * _ITEMSIZE[dtype]
  return extra
