"""`sbs plan`: per-device memory of a run on a mesh, estimated (`sbs_jax/perf/plan.py`), or
the TPU compiler's figures for a slice with `--topology` (`sbs_jax/perf/tpu_compile.py`)."""

from __future__ import annotations

import json
import sys

from sbs_jax.commands.train import add_gin_flags
from sbs_jax.data.packing import PACKINGS
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
  p.add_argument("--real_tokens_rows", type=int, default=512,
                 help="with --topology or --propose_lengths: how many packed training rows "
                 "of the configured mixture to read for the real (non-padding) tokens per "
                 "row; 0: report per step only")
  p.add_argument("--real_tokens_epoch", action="store_true",
                 help="with --topology or --propose_lengths: read every packed training row "
                 "of one pass over the split instead of the first --real_tokens_rows (SeqIO "
                 "shuffles through a buffer, so the first rows follow the file's order in "
                 "part: the whole pass is the split's mean where that order is not random)")
  p.add_argument("--propose_lengths", action="store_true",
                 help="propose row lengths and batch with the fewest FLOPs per real token "
                 "that fit the chip, holding the configured run's real tokens per step "
                 "(with --topology: compile the proposal's train step)")
  p.add_argument("--max_truncated_share", type=float, default=0.0,
                 help="with --propose_lengths: the share of each task's training examples "
                 "the proposed rows may cut (default 0: none)")
  p.add_argument("--configured_packing", choices=PACKINGS,
                 help="with --propose_lengths: pack the configured rows by this rule to "
                 "measure the real tokens per step the proposal keeps (default "
                 "DataConfig.packing; the proposal is packed by DataConfig.packing), e.g. "
                 "next_fit to keep the examples per step of a run that packed next-fit")
  p.add_argument("--batch_multiple", type=int,
                 help="with --propose_lengths: the proposed batch is a multiple of this "
                 "(default data shards x ParallelismConfig.grad_accum_steps)")
  add_gin_flags(p)
  p.set_defaults(func=main, accepts_gin_bindings=True)


def measured_tokens(cfg, rows: int | None, required: bool = False) -> dict | None:
  """Real tokens per row of the configured mixture's packed training rows (the first
  `rows`, or None: one whole pass); None (with a note) where the data cannot be read and
  `required` is false."""
  from sbs_jax.train import data  # pylint: disable=import-outside-toplevel  (TensorFlow)
  try:
    return data.real_tokens(cfg.data, rows)
  except Exception as e:  # pylint: disable=broad-except  (a note, not a failure)
    if required:
      raise
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    print(f"note: no figures per real token: the training rows of {cfg.data.mixture_or_task} "
          f"cannot be read ({first}); --real_tokens_rows 0 skips them", file=sys.stderr)
    return None




def _rows(args) -> int | None:
  """How many training rows to read for the real tokens: None, one whole pass."""
  return None if args.real_tokens_epoch else args.real_tokens_rows


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
  real = (measured_tokens(cfg, _rows(args)) if args.real_tokens_rows > 0 or
          args.real_tokens_epoch else None)
  records = tpu_compile.check(cfg, model_config, tpu, mesh, programs, args.hbm_gib,
                              estimate, args.hlo_dir)
  if real:
    from sbs_jax.perf import row_lengths  # pylint: disable=import-outside-toplevel
    for record in records:
      if record["program"] == "train_step":
        record.update(row_lengths.per_real_token(record, real, cfg.data.batch_size))
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




def proposal(args, cfg, model_config, tpu) -> int:
  """`sbs plan --propose_lengths`: one JSON object (the configured run and the proposal);
  with --topology, the proposal's compiled train step as one more JSON line."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from sbs_jax.data.lengths import check_lengths, example_lengths  # pylint: disable=import-outside-toplevel
  from sbs_jax.perf import row_lengths  # pylint: disable=import-outside-toplevel
  if args.real_tokens_rows < 1 and not args.real_tokens_epoch:
    raise SbsError("--propose_lengths needs --real_tokens_rows of at least 1 (the configured "
                   "run's real tokens per step are what the proposal keeps)")
  if tpu:
    from sbs_jax.perf import tpu_compile  # pylint: disable=import-outside-toplevel
    mesh = (plan_lib.parse_mesh(args.mesh, allow_rest=True) if args.mesh
            else tuple(cfg.parallelism.mesh))
    data, model = tpu_compile.mesh_shape(mesh, tpu.chips)
    chip, hbm = tpu.generation, args.hbm_gib or tpu.hbm_gib
  else:
    data, model = plan_lib.parse_mesh(args.mesh)
    chip = args.chip or "v4"
    hbm = args.hbm_gib or tpu_slices.GENERATIONS[chip].hbm_gib
  plan_lib.check_batch(cfg, data)
  multiple = args.batch_multiple or data * cfg.parallelism.grad_accum_steps
  if multiple % (data * cfg.parallelism.grad_accum_steps):
    raise SbsError(f"--batch_multiple {multiple} is not a multiple of {data} data shards x "
                   f"{cfg.parallelism.grad_accum_steps} micro-batches")
  base = cfg
  if args.configured_packing:
    base = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, packing=args.configured_packing))
  configured = measured_tokens(base, _rows(args), required=True)
  lengths = example_lengths(cfg.data)
  chosen = row_lengths.propose(lengths, cfg, model_config, data, model, chip, hbm,
                               args.max_truncated_share, configured["per_row"], multiple)
  run = dataclasses.replace(cfg, data=dataclasses.replace(
      cfg.data, task_feature_lengths=chosen["lengths"], batch_size=chosen["batch_size"],
      max_truncated_share=args.max_truncated_share))
  measured = measured_tokens(run, _rows(args), required=True)
  # The batch from the measured rows (the simulation ranks; the pipeline decides).
  batch = row_lengths.batch_for(configured["per_row"] * cfg.data.batch_size,
                                measured["per_row"], multiple)
  run = dataclasses.replace(run, data=dataclasses.replace(run.data, batch_size=batch))
  # Refuses if the proposal cut more than the share; counted from the lengths in hand.
  report = check_lengths(run.data, measured=lengths)
  tokens = configured["per_row"] * cfg.data.batch_size
  out = {"configured": {"lengths": dict(cfg.data.task_feature_lengths),
                        "packing": base.data.packing,
                        "batch_size": cfg.data.batch_size,
                        "real_tokens_per_row": round(configured["per_row"], 2),
                        "real_tokens_per_step": round(tokens, 1),
                        "fill": round(configured["fill"], 4)},
         "proposed": {**chosen, "batch_size": batch,
                      "real_tokens_per_row": round(measured["per_row"], 2),
                      "real_tokens_per_step": round(measured["per_row"] * batch, 1),
                      "fill": round(measured["fill"], 4),
                      "cut": {k: v["cut"] for k, v in report.items()},
                      "checked": {k: v["checked"] for k, v in report.items()}},
         "mixture_or_task": cfg.data.mixture_or_task, "train_split": cfg.data.train_split,
         "packing": cfg.data.packing, "packing_window": cfg.data.packing_window,
         "rows_read": _rows(args) or "one pass", "mesh": f"{data}x{model}", "chip": chip,
         "hbm_gib": hbm, "max_truncated_share": args.max_truncated_share,
         "batch_multiple": multiple, "real_tokens_counted": row_lengths.TOKENS_COUNTED,
         "gin": [f"DataConfig.task_feature_lengths = {json.dumps(chosen['lengths'])}",
                 f"BATCH_SIZE = {batch}"]}
  print(json.dumps(out), flush=True)
  print(f"proposed rows {chosen['lengths']['inputs']}/{chosen['lengths']['targets']} x "
        f"{batch} (configured {cfg.data.task_feature_lengths['inputs']}/"
        f"{cfg.data.task_feature_lengths['targets']} x {cfg.data.batch_size}); real tokens "
        f"per row {measured['per_row']:.1f} (fill {measured['fill']:.1%}), per step "
        f"{measured['per_row'] * batch:.0f} (configured {tokens:.0f})", file=sys.stderr)
  if not tpu:
    return 0
  from sbs_jax.perf import tpu_compile  # pylint: disable=import-outside-toplevel
  records = tpu_compile.check(run, model_config, tpu, (data, model), ["train_step"],
                              args.hbm_gib, chosen["estimate_gib"], args.hlo_dir)
  for record in records:
    record.update(row_lengths.per_real_token(record, measured, batch))
    print(json.dumps(record), flush=True)
  print(tpu_compile.table(records), file=sys.stderr)
  if not all(r["fits"] for r in records):
    raise SbsError(f"the proposed rows do not fit {tpu.name} by the compiler: "
                   f"{records[0].get('compiler', '')}; try ParallelismConfig.grad_accum_steps "
                   "or a larger slice")
  return 0


def _unused_flags(args) -> list[str]:
  """The flags given that this mode of the command would ignore."""
  unused = []
  if not args.propose_lengths:
    unused += [flag for flag, given in (
        ("--configured_packing", args.configured_packing is not None),
        ("--batch_multiple", args.batch_multiple is not None),
        ("--max_truncated_share", args.max_truncated_share != 0.0)) if given]
    if args.real_tokens_epoch and not args.topology:
      unused.append("--real_tokens_epoch")
  return unused


def main(args) -> int:
  from sbs_jax.train import config  # pylint: disable=import-outside-toplevel
  unused = _unused_flags(args)
  if unused:
    raise SbsError(f"{', '.join(unused)} only change what --propose_lengths proposes (and "
                   "--real_tokens_epoch, what --topology reads): add --propose_lengths, or "
                   "drop them")
  if args.propose_lengths:
    from sbs_jax.perf import row_lengths  # pylint: disable=import-outside-toplevel
    row_lengths.check_share(args.max_truncated_share)  # before gin and the data
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
  if args.propose_lengths:
    return proposal(args, cfg, model_config, tpu if args.topology else None)
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
