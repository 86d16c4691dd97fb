"""`sbs sweep`: the paper's grid (method x training-data fraction x model size x seed).

    sbs sweep --dataset cqa --methods standard_finetuning,distill_llm \
        --fractions 12.5,25,50,100 --sizes small,base --seeds 0,1,2 \
        --annotation_dir ann --vocab vocab/spm.model --out_dir sweeps/cqa \
        [--gin_file=overlays/tiny_cpu.gin] [--gin.KEY=VALUE ...] [--print_commands]

Each cell is one `sbs train` run in its own model dir, `<out_dir>/<cell name>`
(`distill_llm-f25-small-s0`); the sweep's own files of a cell are
`<out_dir>/cells/<cell name>.{json,log,lock}` (what it is, the trainer's output, a lock). Cells run one after another, each as an `sbs train`
subprocess: the command a cell runs is exactly the one `--print_commands` prints (for
`launch/tpu.py` or a scheduler), a cell that crashes or leaks memory cannot take the
others with it, and gin's global configuration starts clean for each.

`<out_dir>/sweep.json` records the dataset, the grid and the settings every cell shares
(gin files, bindings, annotation dir, vocabulary, alpha). A rerun skips the cells that
have `results.json`, resumes the others from their last checkpoint (the trainer resumes),
and may add grid values; a rerun with other shared settings is refused, so one sweep dir
never mixes two experiments (`sbs report` relies on it). It also pins the sha256 of every
gin file the cells read (with their includes) and of the vocabulary: a rerun after one
changed is refused. Until a cell has trained, a rerun may change the settings (a corrected
typo). Each cell is locked while it runs: a second `sbs sweep` on the same dir (another
terminal) takes the cells the first has not; "all cells done" is said only when every cell
has results (else exit status 3, with the cells still running elsewhere).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import pathlib
import shlex
import subprocess
import sys
import time

from sbs_jax import task_kinds
from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files, locks
from sbs_jax.model.model_dir import RESULTS_FILE, ModelDir
from sbs_jax.train.gin_setup import GIN_DIR

# The paper's four settings, each a task kind with its alpha (None: the sweep's --alpha).
METHODS = task_kinds.METHODS
# training-data percent -> the split of `sbs_jax/data/sources.py` that holds it.
FRACTION_SPLITS = {12.5: "train_12.5", 25.0: "train_25", 50.0: "train_50", 100.0: "train"}
SWEEP_FILE = "sweep.json"
SETTING_KEYS = ("dataset", "alpha", "annotation_dir", "vocab", "gin_files", "bindings")
GRID_KEYS = ("methods", "fractions", "sizes", "seeds")
# `sbs sweep` exits with this when it ran what it could but cells are still running in
# another sweep process (or stopped there): the sweep is not done.
NOT_DONE_EXIT_CODE = 3
CELLS_DIR = "cells"  # <cell>.json (what it is), <cell>.log (its output), <cell>.lock


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid."""
  method: str
  fraction: float
  size: str  # "" when the sweep does not vary the size
  seed: int

  @property
  def name(self) -> str:
    parts = [self.method, f"f{self.fraction:g}", self.size, f"s{self.seed}"]
    return "-".join(p for p in parts if p)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _split_list(text: str, kind, what: str) -> list:
  try:
    values = [kind(v.strip()) for v in text.split(",") if v.strip()]
  except ValueError:
    raise SbsError(f"--{what}: cannot read {text!r} as comma-separated values") from None
  if len(set(values)) != len(values):
    raise SbsError(f"--{what}: {text!r} repeats a value")
  return values


def parse_grid(methods: str, fractions: str, sizes: str, seeds: str) -> dict:
  """The grid's values, checked: methods, fractions (percent), sizes, seeds."""
  grid = {"methods": _split_list(methods, str, "methods"),
          "fractions": _split_list(fractions, float, "fractions"),
          "sizes": _split_list(sizes, str, "sizes") or [""],
          "seeds": _split_list(seeds, int, "seeds")}
  for m in grid["methods"]:
    if m not in METHODS:
      raise SbsError(f"--methods: unknown method {m!r}; known: {', '.join(METHODS)}")
  for f in grid["fractions"]:
    if f not in FRACTION_SPLITS:
      raise SbsError(f"--fractions: {f:g} is not one of the prepared subsamples "
                     f"({', '.join(f'{k:g}' for k in FRACTION_SPLITS)})")
  for s in grid["sizes"]:
    if s and (not re.fullmatch(r"[A-Za-z0-9_.-]+", s) or s.startswith(".")
              or not (GIN_DIR / "models" / f"{s}.gin").exists()):
      raise SbsError(f"--sizes: no gin_configs/models/{s}.gin")
  for key in ("methods", "fractions", "seeds"):
    if not grid[key]:
      raise SbsError(f"--{key} is empty")
  return grid


def cells(grid: dict) -> list[Cell]:
  """Every cell of the grid, seed by seed (so that a sweep cut short has whole curves),
  then size, smallest data first, method."""
  return [Cell(m, f, s, seed) for seed in grid["seeds"] for s in grid["sizes"]
          for f in sorted(map(float, grid["fractions"])) for m in grid["methods"]]


def _quoted(value: str) -> str:
  """A gin string literal."""
  return json.dumps(value)


def train_argv(settings: dict, cell: Cell, out_dir: str) -> list[str]:
  """The `sbs train` arguments of one cell (without the leading `sbs train`)."""
  dataset = settings["dataset"]
  kind = task_kinds.method_kind(cell.method)
  alpha = settings["alpha"] if kind.alpha is None else kind.alpha
  experiment = f"experiments/{dataset}_{cell.method}.gin"
  files = ([experiment] if (GIN_DIR / experiment).exists()
           else ["models/base.gin", "runs/finetune.gin"])
  files += settings["gin_files"]
  if cell.size:
    files.append(f"models/{cell.size}.gin")
  bindings = {
      "MIXTURE_OR_TASK_NAME": _quoted(task_kinds.task_name(dataset, kind.name)),
      "ALPHA": repr(float(alpha)),
      "MODEL_DIR": _quoted(f"{out_dir}/{cell.name}"),
      "DataConfig.train_split": _quoted(FRACTION_SPLITS[cell.fraction]),
      "TrainConfig.seed": str(cell.seed),
      "DataConfig.seed": str(cell.seed),
      "annotation_dir.path": _quoted(settings["annotation_dir"]),
      "vocabulary_settings.path": _quoted(settings["vocab"]),
  }
  argv = [f"--gin_file={f}" for f in files]
  argv += [f"--gin.{k}={v}" for k, v in bindings.items()]
  argv += [f"--gin.{b}" for b in settings["bindings"]]
  return argv


def shell_command(settings: dict, cell: Cell, out_dir: str) -> str:
  """The cell's command line, quoted for a POSIX shell."""
  return shlex.join(["sbs", "train", *train_argv(settings, cell, out_dir)])


def gin_binding_args(extra: list[str]) -> list[str]:
  """--gin.KEY=VALUE arguments -> KEY=VALUE strings (as `sbs train` takes them)."""
  out = []
  for arg in extra:
    if not arg.startswith("--gin.") or "=" not in arg:
      raise SbsError(f"unrecognised argument {arg!r} (bindings look like --gin.KEY=VALUE)")
    out.append(arg[len("--gin."):])
  return out


# ---- Gin files: resolved as `sbs train` resolves them, and pinned by their contents.

_INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1""", re.M)


def find_gin_file(name: str) -> pathlib.Path | None:
  """The file gin reads for `name`: as given (absolute, or relative to the working dir),
  else under gin_configs/ (the order of `sbs train`'s search path); None if neither."""
  path = pathlib.Path(name)
  if path.is_absolute():
    return path if path.is_file() else None
  for candidate in (pathlib.Path.cwd() / name, GIN_DIR / name):
    if candidate.is_file():
      return candidate
  return None


def resolve_gin_file(name: str) -> str:
  """A --gin_file as the cells take it: a file of gin_configs/ keeps its short name (the
  commands run from any checkout); any other is made absolute (cells run from anywhere)."""
  if "://" in name:
    return name
  found = find_gin_file(name)
  if found is None:
    raise SbsError(f"--gin_file {name}: no such file (looked in {os.getcwd()} and in "
                   f"{GIN_DIR}); check the path")
  if not pathlib.Path(name).is_absolute() and found == GIN_DIR / name:
    return name
  return str(found.resolve())


def gin_file_hashes(names: list[str]) -> dict:
  """{gin file: sha256 of its bytes} for `names` and every file they include (recursively;
  an include that cannot be found is left to `sbs train` to report)."""
  out, todo = {}, list(names)
  while todo:
    name = todo.pop(0)
    if name in out or "://" in name:
      continue
    found = find_gin_file(name)
    if found is None:
      continue
    data = found.read_bytes()
    out[name] = hashlib.sha256(data).hexdigest()
    todo += [m.group(2) for m in _INCLUDE.finditer(data.decode("utf-8", errors="replace"))]
  return out


def cell_gin_files(settings: dict, cell: "Cell") -> list[str]:
  """The gin files a cell's `sbs train` reads, in order (before their includes)."""
  return [a[len("--gin_file="):] for a in train_argv(settings, cell, "/unused")
          if a.startswith("--gin_file=")]


def _vocab_hash(settings: dict) -> dict:
  """{vocabulary path: sha256} for a local vocabulary file (gs:// ones are not pinned)."""
  vocab = settings.get("vocab") or ""
  if "://" in vocab or not os.path.isfile(vocab):
    return {}
  return {vocab: hashlib.sha256(pathlib.Path(vocab).read_bytes()).hexdigest()}


def grid_gin_hashes(settings: dict, grid: dict) -> dict:
  """The pinned contents of every gin file (and include) any cell of the grid reads, and of
  the vocabulary."""
  names = []
  for cell in cells(grid):
    names += [n for n in cell_gin_files(settings, cell) if n not in names]
  return {**gin_file_hashes(names), **_vocab_hash(settings)}


def check_gin_hashes(pinned: dict, now: dict, out_dir) -> None:
  """Refuses a rerun whose gin files changed since the sweep pinned them."""
  for name, digest in now.items():
    if name in pinned and pinned[name] != digest:
      shown = find_gin_file(name) or name
      what = "vocabulary" if name.endswith(".model") else "gin file"
      raise SbsError(f"{what} {shown} changed since {out_dir} started (sha256 "
                     f"{pinned[name][:12]}... pinned in {SWEEP_FILE}, now {digest[:12]}...): "
                     "its finished cells ran the old contents; restore the file, or run the "
                     "changed experiment in a fresh --out_dir")


def _check_record(path: pathlib.Path, record) -> dict:
  """The sweep record's shape, checked: one line naming the file and what is wrong."""
  def bad(problem):
    return SbsError(f"{path}: {problem}; it is not a sweep record `sbs sweep` wrote (restore "
                    "it, or start the sweep again in a fresh --out_dir)")
  if not isinstance(record, dict):
    raise bad(f"expected a JSON object, got {type(record).__name__}")
  for part, keys in (("settings", SETTING_KEYS), ("grid", GRID_KEYS)):
    value = record.get(part)
    if not isinstance(value, dict):
      raise bad(f"no {part!r} object")
    missing = [k for k in keys if k not in value]
    if missing:
      raise bad(f"{part!r} has no {', '.join(map(repr, missing))}")
  grid = record["grid"]
  for key, kinds in (("methods", str), ("fractions", (int, float)), ("sizes", str),
                     ("seeds", int)):
    if not isinstance(grid[key], list) or not all(isinstance(v, kinds) for v in grid[key]):
      raise bad(f"grid {key!r} is not a list of {getattr(kinds, '__name__', 'numbers')}")
  if not all(m in METHODS for m in grid["methods"]):
    raise bad(f"grid 'methods' holds an unknown method ({grid['methods']})")
  if not all(float(f) in FRACTION_SPLITS for f in grid["fractions"]):
    raise bad(f"grid 'fractions' holds an unknown fraction ({grid['fractions']})")
  settings = record["settings"]
  if not isinstance(settings["dataset"], str) or not isinstance(settings["gin_files"], list) \
      or not isinstance(settings["bindings"], list):
    raise bad("'settings' has a wrong type (dataset: a string; gin_files, bindings: lists)")
  if not isinstance(record.get("gin_sha256", {}), dict):
    raise bad("'gin_sha256' is not an object")
  return record


class SweepDir:
  """The files of one sweep dir (local):

      sweep.json               the settings, the grid, the gin files' pinned sha256
      cells/<cell>.json        what the cell is (written when it starts)
      cells/<cell>.log         the trainer's output, its command first
      cells/<cell>.lock        held while a process runs the cell
      <cell>/                  the cell's model dir (ModelDir: only what the trainer writes)
  """

  def __init__(self, path):
    self.path = pathlib.Path(path)

  @property
  def sweep_file(self) -> pathlib.Path:
    return self.path / SWEEP_FILE

  def cell_file(self, cell: Cell, suffix: str) -> pathlib.Path:
    """`cells/<cell><suffix>`: the sweep's own files of a cell (.json, .log, .lock), kept
    out of the model dir."""
    return self.path / CELLS_DIR / f"{cell.name}{suffix}"

  def cell_records(self) -> list[pathlib.Path]:
    """Every `cells/<cell>.json`, by name."""
    return sorted((self.path / CELLS_DIR).glob("*.json"))

  def model_dir(self, cell: Cell) -> ModelDir:
    return ModelDir(str(self.path / cell.name))

  def load(self) -> dict:
    """The sweep record (settings, grid, pinned gin contents), checked."""
    path = self.sweep_file
    if not path.exists():
      raise SbsError(f"{self.path} is not a sweep dir: no {SWEEP_FILE} (made by `sbs sweep`)")
    try:
      record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
      raise SbsError(f"{path}: not JSON ({e}); restore it, or start the sweep again in a "
                     "fresh --out_dir") from None
    except OSError as e:
      raise SbsError(f"{path}: cannot read it ({e.strerror})") from None
    return _check_record(path, record)

  def any_cell_trained(self, grid: dict) -> bool:
    """Whether any cell of the grid has trained: its model dir exists (the trainer makes
    it once its gin files and bindings parse). A cell that failed before it is not
    counted, so that a corrected command can replace a typo."""
    return any((self.path / cell.name).exists() for cell in cells(grid))

  def read_results(self, cell: Cell) -> dict | None:
    """The cell's results.json (None if absent); one line naming the cell for a damaged
    one."""
    model = self.model_dir(cell)
    try:
      return model.read_results()
    except (ValueError, OSError) as e:
      what = (str(e) if "best_step" in str(e) else f"not JSON ({e})")
      raise SbsError(f"{model.file(RESULTS_FILE)}: {what}: cell {cell.name} has damaged "
                     "results; delete that file and rerun the same `sbs sweep` command, "
                     "which evaluates the cell again from its last checkpoint (its command: "
                     f"first line of {self.cell_file(cell, '.log')})") from None


def load_sweep(out_dir) -> dict:
  """The sweep record of `out_dir` (settings, grid, pinned gin contents), checked."""
  return SweepDir(out_dir).load()


def any_cell_trained(out_dir, grid: dict) -> bool:
  return SweepDir(out_dir).any_cell_trained(grid)


def _old_gin_files(names: list[str]) -> list[str]:
  """The gin files of a record written before they were resolved (no gin_sha256): resolved
  now, where they still resolve, so that the same command is not taken for another."""
  out = []
  for name in names:
    try:
      out.append(resolve_gin_file(name))
    except SbsError:
      out.append(name)
  return out


def record_sweep(out_dir, settings: dict, grid: dict) -> dict:
  """Writes (or checks and extends) `<out_dir>/sweep.json`; returns the whole grid.

  The record pins the sha256 of every gin file the cells read (and of the files those
  include): a rerun after one of them changed is refused. A record without the pins (made
  before them) gets them now, with a note: what its finished cells read cannot be checked.
  While no cell has trained (no model dir), a rerun may change the settings and the pinned
  contents (e.g. a corrected binding).
  """
  path = SweepDir(out_dir).sweep_file
  hashes = grid_gin_hashes(settings, grid)
  if path.exists():
    old = load_sweep(out_dir)
    old_settings = dict(old["settings"])
    if "gin_sha256" not in old:
      old_settings["gin_files"] = _old_gin_files(old_settings["gin_files"])
    changed = {k: (old_settings.get(k), v) for k, v in settings.items()
               if old_settings.get(k) != v}
    started = any_cell_trained(out_dir, old["grid"])
    if changed and started:
      what = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
      raise SbsError(f"{out_dir} holds a sweep with other settings ({what}): rerun with "
                     "the recorded ones, or use another --out_dir")
    if not changed:
      if "gin_sha256" in old:
        if started:  # before any cell trained, new contents simply replace the old
          check_gin_hashes(old["gin_sha256"], hashes, out_dir)
      elif started:
        print(f"note: {path} predates pinned gin contents: pinned them now; the cells "
              "already done were not checked against them", flush=True)
      hashes = {**(old.get("gin_sha256", {}) if started else {}), **hashes}
      grid = {k: old["grid"][k] + [v for v in grid[k] if v not in old["grid"][k]]
              for k in grid}
    else:  # no cell trained: the new settings replace the old; so do the cells' records
      for stale in SweepDir(out_dir).cell_records():
        stale.unlink()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomically(path, {"settings": settings, "grid": grid,
                                       "gin_sha256": hashes}, sort_keys=False)
  except OSError as e:
    raise SbsError(f"cannot write {path}: {e.strerror}; choose a writable --out_dir") from None
  return grid


def cell_file(out_dir, cell: Cell, suffix: str) -> pathlib.Path:
  return SweepDir(out_dir).cell_file(cell, suffix)


def read_results(out_dir, cell: Cell) -> dict | None:
  return SweepDir(out_dir).read_results(cell)


def is_finished(out_dir, cell: Cell) -> bool:
  """Whether the cell has whole results. A damaged results.json is refused (one line),
  unless the cell's lock is held: the trainer may be writing it right now."""
  try:
    return read_results(out_dir, cell) is not None
  except SbsError:
    with _cell_lock(out_dir, cell) as free:
      if free:
        raise
    return False


def cell_record(settings: dict, cell: Cell) -> dict:
  """What `cells/<cell>.json` holds: the cell, the shared settings, its gin files' sha256."""
  return {"dataset": settings["dataset"], **cell.to_json(), "settings": settings,
          "gin_sha256": {**gin_file_hashes(cell_gin_files(settings, cell)),
                         **_vocab_hash(settings)}}


def _run_cell(settings: dict, cell: Cell, out_dir: str) -> None:
  """Runs one cell's `sbs train` to completion (it resumes from a checkpoint if any)."""
  cell_file(out_dir, cell, ".json").write_text(json.dumps(cell_record(settings, cell),
                                                          indent=2))
  argv = [sys.executable, "-m", "sbs_jax.cli", "train", *train_argv(settings, cell, out_dir)]
  log_path = cell_file(out_dir, cell, ".log")
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"$ {shell_command(settings, cell, out_dir)}\n")
    log.flush()
    code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
  if code != 0 or not is_finished(out_dir, cell):
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    raise SbsError(f"cell {cell.name} stopped (exit code {code}): "
                   f"{lines[-1] if lines else 'no output'}; full log: {log_path}; "
                   "rerun the same command to resume (a corrected one is taken while no "
                   "cell has trained)")


def _progress(out_dir: str, all_cells: list[Cell], seconds: list[float]) -> str:
  """'N done, M left, ETA ...': cells finished on disk (by any process), and the time the
  rest take at this process's mean so far."""
  done = sum(is_finished(out_dir, c) for c in all_cells)
  left = len(all_cells) - done
  eta = f", ETA {sum(seconds) / len(seconds) * left / 60:.1f} min" if seconds and left else ""
  return f"{done} done, {left} left{eta}"


def _cell_lock(out_dir: str, cell: Cell):
  """Holds the cell's lock file for a block; yields False if another sweep process holds it."""
  path = cell_file(out_dir, cell, ".lock")
  path.parent.mkdir(parents=True, exist_ok=True)
  return locks.held_if_free(path)


def run(settings: dict, grid: dict, out_dir: str, run_cell=_run_cell) -> list[Cell]:
  """Runs every unfinished cell in order; returns the cells this call ran.

  A cell that another `sbs sweep` process is running (its lock is held) is left to it, so
  several processes (or machines sharing a local file system) can work on one sweep dir.
  """
  all_cells = cells(grid)
  todo = [c for c in all_cells if not is_finished(out_dir, c)]
  print(f"sweep {out_dir}: {len(all_cells)} cells, {len(all_cells) - len(todo)} already "
        f"done, {len(todo)} to run", flush=True)
  ran, seconds = [], []
  for i, cell in enumerate(todo):
    where = f"[{len(all_cells) - len(todo) + i + 1}/{len(all_cells)}] {cell.name}"
    resumed = cell_file(out_dir, cell, ".log").exists()
    with _cell_lock(out_dir, cell) as mine:
      if not mine or is_finished(out_dir, cell):
        print(f"{where}: taken by another sweep process", flush=True)
        continue
      print(f"{where}: {'resuming' if resumed else 'running'} "
            f"({_progress(out_dir, all_cells, seconds)})", flush=True)
      tic = time.perf_counter()
      run_cell(settings, cell, out_dir)
    seconds.append(time.perf_counter() - tic)
    ran.append(cell)
    results = read_results(out_dir, cell)
    test = (results.get("test") or {}).get("accuracy")
    shown = f"test accuracy {test:.1f}%" if test is not None else "no test split"
    print(f"{where}: done in {seconds[-1]:.0f} s, {shown} "
          f"({_progress(out_dir, all_cells, seconds)})", flush=True)
  return ran


def check_alpha(alpha: float) -> float:
  if not 0.0 <= alpha <= 1.0:  # NaN fails both
    raise SbsError(f"--alpha {alpha}: the label-loss weight must be between 0 and 1 "
                   "(0.5 weighs labels and rationales equally)")
  return alpha


def check_inputs(settings: dict) -> None:
  """The dataset, annotation dir and vocabulary exist (local ones; gs:// is left to the
  cells), before anything is written: a typo must not be pinned in sweep.json."""
  ann, dataset = settings["annotation_dir"], settings["dataset"]
  if "://" not in ann:
    if not os.path.isdir(ann):
      raise SbsError(f"--annotation_dir {ann}: no such directory (where `sbs annotate` "
                     "wrote)")
    found = sorted({p.parent.name for p in pathlib.Path(ann).glob("*/*.tfrecord-*-of-*")})
    if dataset not in found:
      raise SbsError(f"--dataset {dataset}: no annotation records in {ann}/{dataset} "
                     f"(annotated there: {', '.join(found) or 'none'}); check the name, or "
                     "annotate it first with `sbs annotate`")
  vocab = settings["vocab"]
  if "://" not in vocab and not os.path.isfile(vocab):
    raise SbsError(f"--vocab {vocab}: no such file (a SentencePiece model from `sbs vocab`)")


def settings_from_args(args) -> dict:
  """The settings every cell shares, absolute paths so that commands run from anywhere."""
  local = lambda p: p if "://" in p else os.path.abspath(p)  # pylint: disable=unnecessary-lambda-assignment
  return {"dataset": args.dataset, "alpha": check_alpha(args.alpha),
          "annotation_dir": local(args.annotation_dir), "vocab": local(args.vocab),
          "gin_files": [resolve_gin_file(f) for f in args.gin_file],
          "bindings": gin_binding_args(args.gin_bindings)}


def unfinished(out_dir: str, grid: dict) -> tuple[list[Cell], list[Cell]]:
  """The cells without results: (running in another process: lock held, stopped)."""
  running, stopped = [], []
  for cell in cells(grid):
    if is_finished(out_dir, cell):
      continue
    with _cell_lock(out_dir, cell) as free:
      (stopped if free else running).append(cell)
  return running, stopped


def finish_line(out_dir: str, grid: dict) -> tuple[str, int]:
  """What the sweep says at its end, and its exit code: "all cells done" only when every
  cell of the grid has results."""
  running, stopped = unfinished(out_dir, grid)
  if not running and not stopped:
    return f"all cells done: sbs report {out_dir}", 0
  def count(cs):
    return f"{len(cs)} cell{'s' * (len(cs) != 1)} ({', '.join(c.name for c in cs)})"
  parts = ([f"{count(running)} running in another sweep process"] if running else []) + (
      [f"{count(stopped)} unfinished"] if stopped else [])
  return (f"sweep not finished: {'; '.join(parts)}; rerun the same command once they end "
          f"(it resumes unfinished cells), then sbs report {out_dir}"), NOT_DONE_EXIT_CODE
