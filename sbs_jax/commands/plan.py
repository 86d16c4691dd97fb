"""`sbs plan`: per-device memory of a run on a mesh, estimated (`sbs_jax/perf/plan.py`), or
the TPU compiler's figures for a slice with `--topology` (`sbs_jax/perf/tpu_compile.py`)."""

from __future__ import annotations

import json
import sys

from sbs_jax.commands.train import add_gin_flags
from sbs_jax.errors import SbsError
from sbs_jax.perf import plan as plan_lib, tpu_slices
from sbs_jax.train.gin_setup import gin_bindings, parse_gin


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "plan", help="per-device memory of a run on a mesh: on paper, or from the TPU "
      "compiler with --topology")
  p.add_argument("--mesh", help="DATAxMODEL, e.g. 8x4 (with --topology: default "
                 "ParallelismConfig.mesh over the slice's chips)")
  p.add_argument("--topology", help="a Cloud TPU slice (v4-8, v4-64, v5e-16, v5litepod-16, "
                 "v5p-8, v6e-8, or v4:2x4x4): compile the train and eval decoding steps for "
                 "it and report the compiler's per-chip memory (needs the tpu extra)")
  p.add_argument("--programs", default="train_step,eval_decode",
                 help="with --topology: which programs to compile (comma-separated)")
  p.add_argument("--hlo_dir", help="with --topology: write each program's optimized HLO "
                 "text here (<program>.hlo.txt)")
  p.add_argument("--chip", choices=sorted(plan_lib.CHIPS),
                 help="without --topology: the TPU "
                 "generation the estimate is for (the compiler keeps different activations "
                 "on each; default v4)")
  p.add_argument("--hbm_gib", type=float, help="memory per device, to say whether it fits "
                 "(with --topology: default the chip's)")
  add_gin_flags(p)
  p.set_defaults(func=main, accepts_gin_bindings=True)




def compiled_plan(args, cfg, model_config, tpu) -> int:
  """`sbs plan --topology`: one JSON line per compiled program on stdout, a table on
  stderr; an error (exit 2) when a program does not fit the chip."""
  from sbs_jax.perf import tpu_compile  # pylint: disable=import-outside-toplevel  (JAX, libtpu)
  mesh = (plan_lib.parse_mesh(args.mesh, allow_rest=True) if args.mesh
          else tuple(cfg.parallelism.mesh))
  programs = [p for p in args.programs.split(",") if p]
  data, model = tpu_compile.mesh_shape(mesh, tpu.chips)
  plan_lib.check_batch(cfg, data)
  estimate = None  # where the formula gives none, the compiler's figure stands alone
  if plan_lib.gives_estimate(cfg, model_config, data):
    estimate = plan_lib.plan(cfg, model_config, data, model,
                             tpu.generation)["per_device_total_gib"]
  records = tpu_compile.check(cfg, model_config, tpu, mesh, programs, args.hbm_gib,
                              estimate, args.hlo_dir)
  for record in records:
    print(json.dumps(record), flush=True)
  print(tpu_compile.table(records), file=sys.stderr)
  too_big = [r for r in records if not r["fits"]]
  if too_big:
    r = too_big[0]
    why = r.get("compiler") or f"needs {r['per_chip_gib']} GiB per chip"
    raise SbsError(f"{r['program']} does not fit {tpu.name} ({r['hbm_gib']} GiB per chip): "
                   f"{why}; try a larger slice, --mesh with a larger model axis, "
                   "ParallelismConfig.partitioning_dims=(1,2), ParallelismConfig.remat_policy, "
                   "or ParallelismConfig.grad_accum_steps")
  return 0




def main(args) -> int:
  from sbs_jax.train import config  # pylint: disable=import-outside-toplevel
  if args.topology:
    tpu = tpu_slices.parse(args.topology)  # a bad name fails before gin and JAX start
    if args.chip and args.chip != tpu.generation:
      raise SbsError(f"--chip {args.chip} contradicts --topology {args.topology} (a "
                     f"{tpu.generation} slice): drop --chip")
    tpu_slices.quiet_libtpu()
  elif not args.mesh:
    raise SbsError("give --mesh DATAxMODEL (the estimate), or --topology SLICE (the "
                   "TPU compiler's figures)")
  else:
    plan_lib.parse_mesh(args.mesh)  # a bad mesh fails before gin and JAX start
  if not args.gin_file:
    raise SbsError("give the run's gin files, e.g. sbs plan --mesh 8x4 "
                   "--gin_file=experiments/cqa_distill_llm.gin [--gin_file=models/xl.gin]")
  if args.hbm_gib is not None and not args.hbm_gib > 0:
    raise SbsError(f"--hbm_gib {args.hbm_gib}: memory per device must be positive")
  parse_gin(args.gin_file, gin_bindings(args.gin_bindings), args.gin_search_path)
  from sbs_jax.train import gin_check  # pylint: disable=import-outside-toplevel
  cfg = gin_check.configured(config.TrainConfig)
  model_config = cfg.parallelism.network(gin_check.configured(config.student_config))
  if args.topology:
    return compiled_plan(args, cfg, model_config, tpu)
  data, model = plan_lib.parse_mesh(args.mesh)
  plan_lib.check_batch(cfg, data)
  result = plan_lib.plan(cfg, model_config, data, model, args.chip or "v4")
  if args.hbm_gib:
    result["hbm_gib"] = args.hbm_gib
    result["fits"] = result["per_device_total_gib"] <= args.hbm_gib
  print(json.dumps(result, indent=2))
  return 0
