"""Benchmark: the scale table of docs/scale.md, from the TPU compiler (`sbs plan --topology`).

    python benchmarks/plan_table.py run ROW [ROW ...]   # compile rows, append their records
    python benchmarks/plan_table.py list                # the rows and their commands
    python benchmarks/plan_table.py markdown            # the table, from the records

Every row is the cqa distilling step-by-step recipe (`experiments/cqa_distill_llm.gin`:
batch 64 of 1024/352-token rows, alpha 0.5) in bfloat16 compute with float32 parameters,
changed by the row's own settings (size, slice, mesh and rules, optimizer, remat,
accumulation). `run` compiles the train step of each row not yet recorded, one at a time
(5-15 minutes each on a 2-core CPU, up to 13 GB of memory for XXL), and appends one JSON
line per row to `docs/scale_compiled.jsonl`: the row's name, the exact command, the date,
the wall seconds and peak resident memory of the `sbs plan` process, and the compiler's
record as `sbs plan` printed it. A row that does not fit is recorded too (`fits` false,
the compiler's message). Rerunning a recorded row needs `--again` (the old record is
replaced, so the table never shows two answers for one row).
`tests/test_plan.py` checks the formula of `sbs plan --mesh` against these records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "scale_compiled.jsonl"
BF16 = "--gin.student_config.dtype='bfloat16'"
RULES_2D = "--gin.ParallelismConfig.partitioning_dims=(1,2)"


# libtpu's choice of the slower, leaner collective matmuls (docs/scale.md, "Remat with 2-D
# rules"): rows compiled with it set LIBTPU_INIT_ARGS to this.
LEAN = "--xla_tpu_choose_faster_windowed_einsum_over_mem=false"


# The table's rows are 64 of 1024/352 tokens, which the cqa gin held when it was compiled;
# the gin now holds rows derived from the data (docs/scale.md, "Row lengths from the data").
DEFAULT_ROWS = ["--gin.BATCH_SIZE=64",
                "--gin.DataConfig.task_feature_lengths={'inputs': 1024, 'targets': 352}"]


def _row(size, topology, mesh, *, rules_2d=False, accum=1, optimizer="adamw", remat="none",
         libtpu=""):
  args = [f"--topology={topology}", "--programs=train_step",
          "--gin_file=experiments/cqa_distill_llm.gin", f"--gin_file=models/{size}.gin",
          f"--mesh={mesh}", BF16, *DEFAULT_ROWS]
  if rules_2d:
    args.append(RULES_2D)
  if accum != 1:
    args.append(f"--gin.ParallelismConfig.grad_accum_steps={accum}")
  if optimizer != "adamw":
    args.append(f"--gin.OptimizerConfig.name='{optimizer}'")
  if remat != "none":
    args.append(f"--gin.ParallelismConfig.remat_policy='{remat}'")
  return {"size": size, "topology": topology, "mesh": mesh, "rules": "2-D" if rules_2d else
          "1-D", "accum": accum, "optimizer": optimizer, "remat": remat, "args": args,
          "libtpu": libtpu}


# name -> settings. The first four are the rows of the first table (2026-12-01 morning).
ROWS = {
    "small-v4-8-4x1": _row("small", "v4-8", "4x1"),
    "base-v4-8-4x1": _row("base", "v4-8", "4x1"),
    "base-v4-8-2x2-a4": _row("base", "v4-8", "2x2", rules_2d=True, accum=4),
    "xxl-v4-64-8x4-a4": _row("xxl", "v4-64", "8x4", rules_2d=True, accum=4),
    "base-v4-8-4x1-full": _row("base", "v4-8", "4x1", remat="full"),
    "base-v4-8-4x1-dots": _row("base", "v4-8", "4x1", remat="dots"),
    "base-v4-8-4x1-adafactor": _row("base", "v4-8", "4x1", optimizer="adafactor"),
    "base-v5e-1-a4-full": _row("base", "v5e-1", "1x1", accum=4, remat="full"),
    "base-v5e-4-2x2-a4": _row("base", "v5e-4", "2x2", rules_2d=True, accum=4),
    "base-v6e-4-2x2-a4": _row("base", "v6e-4", "2x2", rules_2d=True, accum=4),
    "large-v4-8-2x2-a4": _row("large", "v4-8", "2x2", rules_2d=True, accum=4),
    "large-v4-8-4x1-full": _row("large", "v4-8", "4x1", remat="full"),
    "large-v5e-4-2x2-a4-full": _row("large", "v5e-4", "2x2", rules_2d=True, accum=4,
                                    remat="full"),
    "xl-v4-16-4x2-a4": _row("xl", "v4-16", "4x2", rules_2d=True, accum=4),
    "xl-v5p-8-1x4-a4": _row("xl", "v5p-8", "1x4", rules_2d=True, accum=4),
    "xl-v5e-8-2x4-a4-full": _row("xl", "v5e-8", "2x4", rules_2d=True, accum=4,
                                 remat="full"),
    "xxl-v4-64-8x4-full": _row("xxl", "v4-64", "8x4", rules_2d=True, remat="full"),
    "xxl-v4-64-8x4": _row("xxl", "v4-64", "8x4", rules_2d=True),
    "xxl-v4-64-8x4-a4-adafactor": _row("xxl", "v4-64", "8x4", rules_2d=True, accum=4,
                                       optimizer="adafactor"),
    "xxl-v5e-32-8x4-a4-full": _row("xxl", "v5e-32", "8x4", rules_2d=True, accum=4,
                                   remat="full"),
    "xxl-v5p-8-1x4-a4-full": _row("xxl", "v5p-8", "1x4", rules_2d=True, accum=4,
                                  remat="full"),
    # Remat with 2-D rules (docs/scale.md, "Remat with 2-D rules"): the first two were
    # predicted by a trial formula term before they were compiled (it failed). Listed,
    # not compiled yet: xl-v5p-16-2x4-full and large-v5e-4-2x2-a4-dots.
    "large-v5e-8-4x2-a4-full": _row("large", "v5e-8", "4x2", rules_2d=True, accum=4,
                                    remat="full"),
    "large-v5e-4-2x2-a4-dots": _row("large", "v5e-4", "2x2", rules_2d=True, accum=4,
                                    remat="dots"),
    "large-v4-8-2x2-a4-full": _row("large", "v4-8", "2x2", rules_2d=True, accum=4,
                                   remat="full"),
    "xl-v5p-16-2x4-full": _row("xl", "v5p-16", "2x4", rules_2d=True, remat="full"),
    # The smallest v5p slice for base and large (predicted first, as the remat rows above).
    "base-v5p-8-4x1": _row("base", "v5p-8", "4x1"),
    "large-v5p-8-4x1": _row("large", "v5p-8", "4x1"),
}
# NAME-lean: row NAME compiled with libtpu's lean collective matmuls.
ROWS.update({f"{name}-lean": {**ROWS[name], "libtpu": LEAN} for name in (
    "xxl-v5e-32-8x4-a4-full", "large-v4-8-2x2-a4-full", "large-v5e-8-4x2-a4-full")})


def command_text(row: dict) -> str:
  """The row's command as a person types it in a POSIX shell."""
  def quote(arg):
    if "'" not in arg and "(" not in arg:
      return arg
    key, _, value = arg.partition("=")
    return f'{key}="{value}"'
  env = f"LIBTPU_INIT_ARGS={shlex.quote(row['libtpu'])} " if row["libtpu"] else ""
  return env + "sbs plan " + " ".join(quote(a) for a in row["args"])


def load() -> dict:
  """Recorded rows by name (the last record of a name wins)."""
  if not RECORDS.exists():
    return {}
  out = {}
  for n, line in enumerate(RECORDS.read_text().splitlines(), 1):
    if line.strip():
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise SystemExit(f"{RECORDS}:{n}: not JSON ({e}); fix or remove the line") from None
      out[record["row"]] = record
  return out


def _save(records: dict) -> None:
  tmp = RECORDS.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
  os.replace(tmp, RECORDS)


def run_row(name: str) -> dict:
  row = ROWS[name]
  sbs = pathlib.Path(sys.executable).with_name("sbs")
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    tic = time.time()
    env = {k: v for k, v in os.environ.items() if k != "LIBTPU_INIT_ARGS"}
    if row["libtpu"]:
      env["LIBTPU_INIT_ARGS"] = row["libtpu"]
    proc = subprocess.Popen([str(sbs), "plan", *row["args"]], stdout=out, stderr=err,
                            cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - tic
    out.seek(0)
    err.seek(0)
    lines = [l for l in out.read().splitlines() if l.startswith("{")]
    stderr = err.read()
  if proc.returncode not in (0, 2) or len(lines) != 1:
    raise SystemExit(f"row {name}: sbs plan exited {proc.returncode} with "
                     f"{len(lines)} records:\n{stderr[-3000:]}")
  return {"row": name, "command": command_text(row),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 1),
          "load_avg_1min": round(os.getloadavg()[0], 1),
          "size": row["size"], **json.loads(lines[0])}


def formula_gib(record: dict) -> float | None:
  """`sbs plan --mesh`'s estimate for the record's run, by today's formula (the record's
  own `estimate_gib` is the formula of the day it was compiled); None where it refuses."""
  sys.path.insert(0, str(ROOT))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no libtpu start-up for arithmetic
  from sbs_jax.errors import SbsError  # pylint: disable=import-outside-toplevel
  from sbs_jax.perf.plan import plan_of_compiled  # pylint: disable=import-outside-toplevel
  try:
    return plan_of_compiled(record, record["size"])["per_device_total_gib"]
  except SbsError:
    return None


def markdown(records: dict) -> str:
  head = ("| size | optimizer | remat | accum | slice | mesh, rules | argument | temp | "
          "**per chip** | HBM | fits | formula | compile_s |\n"
          "|---|---|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|")
  lines = [head]
  for name in ROWS:
    r = records.get(name)
    if r is None:
      continue
    r = {**r, "estimate_gib": formula_gib(r), "accum": r["grad_accum_steps"],
         "rules": "2-D" if r["partitioning_dims"][1] == 2 else "1-D"}
    if r["estimate_gib"] is None:
      formula = "no estimate"
    elif "per_chip_gib" not in r:
      formula = f"{r['estimate_gib']:.2f}"
    else:
      dev = 100 * (r["estimate_gib"] / r["per_chip_gib"] - 1)
      formula = f"{r['estimate_gib']:.2f} ({dev:+.1f}%)"
    if r["fits"] is False and "per_chip_gib" not in r:
      lines.append(f"| {r['size']} | {r['optimizer']} | {r['remat_policy']} | {r['accum']} | "
                   f"{r['topology']} | {r['mesh']}, {r['rules']} | - | - | **does not fit** "
                   f"| {r['hbm_gib']:g} | no | {formula} | - |")
      continue
    flags = r.get("libtpu_init_args", "")
    lean = " (lean)" if flags == LEAN else (" (libtpu flags)" if flags else "")
    lines.append(
        f"| {r['size']} | {r['optimizer']} | {r['remat_policy']} | {r['accum']} | "
        f"{r['topology']}{lean} | {r['mesh']}, {r['rules']} | {r['xla_argument_gib']:.3f} | "
        f"{r['xla_temp_gib']:.3f} | **{r['per_chip_gib']:.3f}** | {r['hbm_gib']:g} | "
        f"{'yes' if r['fits'] else 'no'} | {formula} | {r['compile_s']:.0f} |")
  return "\n".join(lines)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("action", choices=("run", "list", "markdown"))
  p.add_argument("rows", nargs="*", help="row names (run); default all")
  p.add_argument("--again", action="store_true", help="recompile rows already recorded")
  args = p.parse_args()
  unknown = [r for r in args.rows if r not in ROWS]
  if unknown:
    raise SystemExit(f"unknown row(s) {unknown}; `list` shows the rows")
  names = args.rows or list(ROWS)
  if args.action == "list":
    for name in names:
      print(f"{name}\n  {command_text(ROWS[name])}")
    return 0
  if args.action == "markdown":
    print(markdown(load()))
    return 0
  for name in names:
    if name in load() and not args.again:
      print(f"{name}: recorded, skipped (--again to recompile)", file=sys.stderr)
      continue
    print(f"{name}: compiling ({command_text(ROWS[name])})", file=sys.stderr, flush=True)
    record = run_row(name)
    records = load()  # another queue may have appended meanwhile
    records[name] = record
    _save(records)
    print(json.dumps({k: record.get(k) for k in ("row", "per_chip_gib", "fits",
                                                  "estimate_gib", "compile_s", "wall_s",
                                                  "peak_rss_gb")}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
