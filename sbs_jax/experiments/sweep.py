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
never mixes two experiments (`sbs report` relies on it). Each cell is locked while it runs:
a second `sbs sweep` on the same dir (another terminal) takes the cells the first has not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

from sbs_jax.errors import SbsError

# method -> (task kind, alpha or None for the sweep's --alpha): the paper's four settings.
METHODS = {
    "standard_finetuning": ("standard_gt", 1.0),
    "standard_distillation": ("standard_llm", 1.0),
    "distill_gt": ("distill_gt_paired", None),
    "distill_llm": ("distill_llm_paired", None),
}
# training-data percent -> the split of `sbs_jax/data/sources.py` that holds it.
FRACTION_SPLITS = {12.5: "train_12.5", 25.0: "train_25", 50.0: "train_50", 100.0: "train"}
SWEEP_FILE = "sweep.json"
CELLS_DIR = "cells"  # <cell>.json (what it is), <cell>.log (its output), <cell>.lock
RESULTS_FILE = "results.json"
GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin_configs"


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "sweep", help="the paper's grid of runs: methods x data fractions x sizes x seeds",
      description="Runs one `sbs train` per cell of the grid, one after another, each in "
      "its own model dir under --out_dir; rerun the same command to resume.")
  p.add_argument("--dataset", required=True, help="an annotated dataset (cqa, or your own)")
  p.add_argument("--methods", default="standard_finetuning,distill_llm",
                 help=f"comma-separated, of {', '.join(METHODS)}")
  p.add_argument("--fractions", default="100",
                 help="training-data percents, of 12.5,25,50,100")
  p.add_argument("--sizes", default="",
                 help="model sizes (gin_configs/models/<size>.gin, read after --gin_file); "
                 "empty: the size the gin files set")
  p.add_argument("--seeds", default="0", help="comma-separated integers")
  p.add_argument("--alpha", type=float, default=0.5,
                 help="label-loss weight of the distill methods (standard ones use 1.0)")
  p.add_argument("--annotation_dir", required=True)
  p.add_argument("--vocab", required=True, help="the SentencePiece model (sbs vocab)")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--gin_file", action="append", default=[],
                 help="read by every cell after the experiment's files (repeatable)")
  p.add_argument("--print_commands", action="store_true",
                 help="print one `sbs train` command per cell and run nothing")
  p.set_defaults(func=main, accepts_gin_bindings=True,
                 local_only=("out_dir", "annotation_dir", "gin_file"))


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
    values = [kind(v) for v in text.split(",") if v.strip()]
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
    if s and not (GIN_DIR / "models" / f"{s}.gin").exists():
      raise SbsError(f"--sizes: no gin_configs/models/{s}.gin")
  for key in ("methods", "fractions", "seeds"):
    if not grid[key]:
      raise SbsError(f"--{key} is empty")
  return grid


def cells(grid: dict) -> list[Cell]:
  """Every cell of the grid, seed by seed (so that a sweep cut short has whole curves),
  then size, smallest data first, method."""
  return [Cell(m, f, s, seed) for seed in grid["seeds"] for s in grid["sizes"]
          for f in sorted(grid["fractions"]) for m in grid["methods"]]


def _quoted(value: str) -> str:
  """A gin string literal."""
  return json.dumps(value)


def train_argv(settings: dict, cell: Cell, out_dir: str) -> list[str]:
  """The `sbs train` arguments of one cell (without the leading `sbs train`)."""
  dataset = settings["dataset"]
  kind, alpha = METHODS[cell.method]
  alpha = settings["alpha"] if alpha is None else alpha
  experiment = f"experiments/{dataset}_{cell.method}.gin"
  files = ([experiment] if (GIN_DIR / experiment).exists()
           else ["models/base.gin", "runs/finetune.gin"])
  files += settings["gin_files"]
  if cell.size:
    files.append(f"models/{cell.size}.gin")
  bindings = {
      "MIXTURE_OR_TASK_NAME": _quoted(f"sbs_{dataset}_{kind}"),
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


def load_sweep(out_dir) -> dict:
  """The sweep record of `out_dir` (settings and grid)."""
  path = pathlib.Path(out_dir) / SWEEP_FILE
  if not path.exists():
    raise SbsError(f"{out_dir} is not a sweep dir: no {SWEEP_FILE} (made by `sbs sweep`)")
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise SbsError(f"{path}: not JSON ({e})") from None


def record_sweep(out_dir, settings: dict, grid: dict) -> dict:
  """Writes (or checks and extends) `<out_dir>/sweep.json`; returns the whole grid."""
  path = pathlib.Path(out_dir) / SWEEP_FILE
  if path.exists():
    old = load_sweep(out_dir)
    changed = {k: (old["settings"].get(k), v) for k, v in settings.items()
               if old["settings"].get(k) != v}
    if changed:
      what = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
      raise SbsError(f"{out_dir} holds a sweep with other settings ({what}): rerun with "
                     "the recorded ones, or use another --out_dir")
    grid = {k: old["grid"][k] + [v for v in grid[k] if v not in old["grid"][k]]
            for k in grid}
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{SWEEP_FILE}.tmp")
  tmp.write_text(json.dumps({"settings": settings, "grid": grid}, indent=2))
  os.replace(tmp, path)
  return grid


def cell_file(out_dir, cell: Cell, suffix: str) -> pathlib.Path:
  """`<out_dir>/cells/<cell><suffix>`: the sweep's own files of a cell (.json, .log, .lock),
  kept out of the model dir, which holds only what the trainer writes."""
  return pathlib.Path(out_dir) / CELLS_DIR / f"{cell.name}{suffix}"


def is_finished(out_dir, cell: Cell) -> bool:
  return (pathlib.Path(out_dir) / cell.name / RESULTS_FILE).exists()


def _run_cell(settings: dict, cell: Cell, out_dir: str) -> None:
  """Runs one cell's `sbs train` to completion (it resumes from a checkpoint if any)."""
  cell_file(out_dir, cell, ".json").write_text(json.dumps(
      {"dataset": settings["dataset"], **cell.to_json(), "settings": settings}, indent=2))
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
                   "rerun the same command to resume")


def _progress(out_dir: str, all_cells: list[Cell], seconds: list[float]) -> str:
  """'N done, M left, ETA ...': cells finished on disk (by any process), and the time the
  rest take at this process's mean so far."""
  done = sum(is_finished(out_dir, c) for c in all_cells)
  left = len(all_cells) - done
  eta = f", ETA {sum(seconds) / len(seconds) * left / 60:.1f} min" if seconds and left else ""
  return f"{done} done, {left} left{eta}"


@contextlib.contextmanager
def _cell_lock(out_dir: str, cell: Cell):
  """Holds the cell's lock file; yields False if another sweep process holds it."""
  path = cell_file(out_dir, cell, ".lock")
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    yield True


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
    results = json.loads((pathlib.Path(out_dir) / cell.name / RESULTS_FILE).read_text())
    test = (results.get("test") or {}).get("accuracy")
    shown = f"test accuracy {test:.1f}%" if test is not None else "no test split"
    print(f"{where}: done in {seconds[-1]:.0f} s, {shown} "
          f"({_progress(out_dir, all_cells, seconds)})", flush=True)
  return ran


def settings_from_args(args) -> dict:
  """The settings every cell shares, absolute paths so that commands run from anywhere."""
  local = lambda p: p if "://" in p else os.path.abspath(p)  # pylint: disable=unnecessary-lambda-assignment
  return {"dataset": args.dataset, "alpha": args.alpha,
          "annotation_dir": local(args.annotation_dir), "vocab": local(args.vocab),
          "gin_files": list(args.gin_file), "bindings": gin_binding_args(args.gin_bindings)}


def main(args) -> int:
  settings = settings_from_args(args)
  grid = parse_grid(args.methods, args.fractions, args.sizes, args.seeds)
  out_dir = args.out_dir if "://" in args.out_dir else os.path.abspath(args.out_dir)
  if args.print_commands:
    for cell in cells(grid):
      print(shell_command(settings, cell, out_dir))
    return 0
  grid = record_sweep(out_dir, settings, grid)
  run(settings, grid, out_dir)
  print(f"all cells done: sbs report {out_dir}")
  return 0
