"""The package's layering (README, "The pipeline"): every import of `sbs_jax` and `tasks`
modules, module-level or inside a function, points down the stack or within a layer, and
no modules import each other in a loop. Read from the source with `ast`; nothing imported."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Layer of each package / module prefix; the longest prefix that matches a module wins. A
# module may import from its own layer or a lower one.
LAYERS = {
    "sbs_jax": 0,  # the package's __init__ and the shared pieces not listed below
    "sbs_jax.errors": 0, "sbs_jax.jobdir": 0, "sbs_jax.paths": 0, "sbs_jax.redact": 0,
    "sbs_jax.arith": 0, "sbs_jax.environment": 0, "sbs_jax.task_kinds": 0,
    "sbs_jax.metrics": 0, "sbs_jax.console": 0, "sbs_jax.testing": 0,
    "sbs_jax.model": 1,
    "sbs_jax.data": 2,
    "sbs_jax.annotate": 3, "tasks": 3,
    "sbs_jax.train": 4,
    "sbs_jax.serve": 5, "sbs_jax.convert": 5, "sbs_jax.experiments": 5,
    "sbs_jax.t5x_model": 5,
    "sbs_jax.perf": 6,
    "sbs_jax.commands": 7,
    "sbs_jax.cli": 8,
}


def layer(module: str) -> int:
  parts = module.split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in LAYERS:
      return LAYERS[".".join(parts[:n])]
  raise KeyError(module)


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
  found = {}
  for top in ("sbs_jax", "tasks"):
    for path in (root / top).rglob("*.py"):
      parts = path.relative_to(root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


def imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
  """The project modules `path` imports (a `from pkg import mod` names the module)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        origin = ".".join(base + ([node.module] if node.module else []))
      else:
        origin = node.module or ""
      targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                 for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in known:  # `import sbs_jax.x.y` where y is an attribute
        target = target.rpartition(".")[0]
      if target and target != name:
        out.add(target)
  return out


def graph(root: pathlib.Path) -> dict[str, set[str]]:
  known = modules(root)
  return {name: imports(name, path, known) for name, path in known.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
  return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                for a, deps in edges.items() for b in deps if layer(b) > layer(a))


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def test_every_module_has_a_layer():
  unplaced = [m for m in modules(ROOT) if not any(
      m == p or m.startswith(p + ".") for p in LAYERS if p != "sbs_jax")
              and m != "sbs_jax"]
  assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_no_import_points_up_the_stack():
  assert upward(graph(ROOT)) == []


def test_no_import_loops():
  assert loops(graph(ROOT)) == []


def test_the_checks_see_what_they_look_for(tmp_path):
  """A tree with an upward import (data -> train) and a loop (two experiments modules)
  is caught by both checks, through relative, from- and function-level imports."""
  files = {
      "sbs_jax/__init__.py": "",
      "sbs_jax/errors.py": "",
      "sbs_jax/data/__init__.py": "",
      "sbs_jax/data/sources.py": "def f():\n  from sbs_jax.train import loop\n",
      "sbs_jax/train/__init__.py": "",
      "sbs_jax/train/loop.py": "from sbs_jax import errors\nfrom ..data import sources\n",
      "sbs_jax/experiments/__init__.py": "",
      "sbs_jax/experiments/a.py": "import sbs_jax.experiments.b\n",
      "sbs_jax/experiments/b.py": "from sbs_jax.experiments import a\n",
      "tasks/__init__.py": "from sbs_jax.data import sources\n",
  }
  for rel, text in files.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
  edges = graph(tmp_path)
  assert edges["sbs_jax.train.loop"] == {"sbs_jax.errors", "sbs_jax.data.sources"}
  assert upward(edges) == ["sbs_jax.data.sources (layer 2) imports sbs_jax.train.loop (layer 4)"]
  assert sorted(loops(edges)) == [["sbs_jax.data.sources", "sbs_jax.train.loop"],
                                  ["sbs_jax.experiments.a", "sbs_jax.experiments.b"]]


@pytest.mark.parametrize("module,expected", [("sbs_jax.perf.bench", 6), ("tasks.registry", 3),
                                             ("sbs_jax.redact", 0), ("sbs_jax", 0)])
def test_layer_lookup(module, expected):
  assert layer(module) == expected


def test_subcommands_live_in_commands_and_the_library_parses_no_arguments():
  """Every `sbs` subcommand's module is under `sbs_jax/commands/`; outside it (and
  `cli.py`) no module imports argparse or defines `add_parser`. `testing/` is exempt: its
  fake servers are standalone programs (`python -m sbs_jax.testing.fake_openai`)."""
  from sbs_jax import cli  # pylint: disable=import-outside-toplevel
  assert {m for m, _ in cli.COMMANDS.values()} <= {
      m for m in modules(ROOT) if m.startswith("sbs_jax.commands.")}
  offenders = []
  for name, path in modules(ROOT).items():
    if name.startswith(("sbs_jax.commands", "sbs_jax.testing")) or name == "sbs_jax.cli":
      continue
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names) or (
          isinstance(node, ast.ImportFrom) and node.module == "argparse") or (
          isinstance(node, ast.FunctionDef) and node.name == "add_parser"):
        offenders.append(f"{name}:{node.lineno}")
  assert offenders == []
