"""Benchmark: T5X's train step and ours for the same run, compiled by the TPU compiler for
the same slice and device grid on this CPU (libtpu's compile-only devices), side by side.

    python benchmarks/t5x_compare.py --size small --topology v4-8 --mesh 4x1 \
        [--partitioning_dims 1,2] [--grad_accum 4] [--batch 64 --inputs 1024 --targets 352] \
        [--out docs/t5x_compare.jsonl]

Ours: the train step `sbs train` runs for the cqa recipe (`experiments/cqa_distill_llm.gin`
+ `models/SIZE.gin`, bfloat16 compute, AdamW lr 5e-5, no dropout), compiled by
`sbs_jax/perf/tpu_compile.py` exactly as `sbs plan --topology` compiles it.

T5X's: `t5x.models.EncoderDecoderModel` with T5X's `network.Transformer`, both built by gin
from T5X's own `t5x/examples/t5/t5_1_1/SIZE.gin`, with what T5X's `runs/finetune.gin` sets:
dropout 0.1 (`--t5x_dropout`), the hardware RNG (its RANDOM_SEED = None), the Trainer
without micro-batches unless `--grad_accum` > 1 (then `num_microbatches`); z_loss 0 (the
gin's 1e-4 is off: our loss has none); and our optimizer (the same optax AdamW
transformation `sbs train` builds) through T5X's `OptaxWrapper`. Partitioning: T5X's
`PjitPartitioner` with its `standard_logical_axis_rules(activation, parameter dims)`, its
mesh the slice's devices in our grid (T5X would lay a mesh over `jax.devices()`, which here
are CPUs). The step is T5X's own: `t5x.trainer.Trainer`'s partitioned train step
(`train_with_lr`: `accumulate_grads_microbatched` over `model.loss_fn`, then
`apply_grads`), lowered with abstract arguments as `partitioner.compile` lowers it.

Both sides get the same batch (`--batch` packed rows of `--inputs`/`--targets` tokens,
split over 'data'). `--size tiny` (no T5X gin) is T5X's small.gin with our tiny network's
dimensions bound. Per side: per-chip memory (arguments, outputs, alias, temporaries, peak
= argument + output - alias + temp), FLOPs and bytes accessed (XLA's cost analysis; a
micro-batch loop's body counted once, so `flops_per_step` multiplies FLOPs by the
accumulation, as `sbs plan` does; bytes accessed are left as XLA counts them), and the
collectives per step (sbs_jax/perf/hlo_stats.py). Prints a markdown table; `--out` appends
one JSON line with the command, the date and the versions. Needs T5X
(`bash launch/install_t5x.sh ../shared/vendor`) and libtpu (the `tpu` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import resource
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
import gin

from sbs_jax.errors import SbsError
from sbs_jax.perf import tpu_slices
from sbs_jax.perf.tpu_slices import GIB
# pylint: enable=wrong-import-position

# The network's fields T5X's T5Config shares with ours (what must agree on both sides).
NETWORK_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                  "num_decoder_layers", "head_dim", "mlp_dim", "mlp_activations",
                  "logits_via_embedding", "float32_attention_logits")
T5X_SIZES = ("small", "base", "large", "xl", "xxl")  # t5x/examples/t5/t5_1_1/*.gin
FINETUNE_DROPOUT = 0.1  # T5X's runs/finetune.gin


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="small", help="T5 v1.1 size (tiny, small, base, ...)")
  p.add_argument("--topology", default="v4-8", help="a Cloud TPU slice, as `sbs plan`")
  p.add_argument("--mesh", default="4x1", help="DATAxMODEL over the slice's chips")
  p.add_argument("--partitioning_dims", default="1,1",
                 help="ACTIVATION,PARAMETER dims of T5X's standard rules on both sides "
                 "(1,2: parameters split over 'data' too)")
  p.add_argument("--grad_accum", type=int, default=1,
                 help="micro-batches per step (ours: grad_accum_steps; T5X: num_microbatches)")
  p.add_argument("--batch", type=int, default=64, help="packed rows per step, all chips")
  p.add_argument("--inputs", type=int, default=1024, help="encoder tokens per row")
  p.add_argument("--targets", type=int, default=352, help="decoder tokens per row")
  p.add_argument("--vocab_size", type=int, help="both networks' vocabulary (default: the size's)")
  p.add_argument("--t5x_dropout", type=float, default=FINETUNE_DROPOUT,
                 help="T5X's DROPOUT_RATE (finetune.gin's 0.1; ours trains with none)")
  p.add_argument("--out", help="append the JSON record to this file")
  p.add_argument("--hlo_dir", help="write both optimized HLO texts here")
  args = p.parse_args(argv)
  try:
    args.partitioning_dims = tuple(int(d) for d in args.partitioning_dims.split(","))
  except ValueError:
    p.error(f"--partitioning_dims {args.partitioning_dims!r}: give two of 1 and 2, e.g. 1,2")
  if len(args.partitioning_dims) != 2 or set(args.partitioning_dims) - {1, 2}:
    p.error(f"--partitioning_dims {args.partitioning_dims}: give two of 1 and 2, e.g. 1,2")
  if min(args.grad_accum, args.batch, args.inputs, args.targets) < 1:
    p.error("--grad_accum, --batch, --inputs and --targets must be positive")
  return args


def our_bindings(args) -> list[str]:
  """The `sbs plan` gin bindings of the run (beside its two gin files)."""
  lengths = {"inputs": args.inputs, "targets": args.targets}
  out = ["student_config.dtype = 'bfloat16'", f"BATCH_SIZE = {args.batch}",
         f"DataConfig.task_feature_lengths = {lengths}",
         f"ParallelismConfig.grad_accum_steps = {args.grad_accum}",
         f"ParallelismConfig.partitioning_dims = {args.partitioning_dims}"]
  if args.vocab_size:
    out.append(f"student_config.vocab_size = {args.vocab_size}")
  return out


def our_gin_files(size: str) -> list[str]:
  return ["experiments/cqa_distill_llm.gin", f"models/{size}.gin"]


def plan_command(args) -> str:
  """The `sbs plan` command whose train step is our side, as typed in a POSIX shell."""
  words = ["sbs plan", f"--topology={args.topology}", f"--mesh={args.mesh}",
           "--programs=train_step", *(f"--gin_file={f}" for f in our_gin_files(args.size))]
  for binding in our_bindings(args):
    key, value = binding.split(" = ", 1)
    words.append(f'--gin.{key}="{value}"' if set(value) & set("'(){} ") else
                 f"--gin.{key}={value}")
  return " ".join(words)


def our_run(args):
  """(TrainConfig, network config) of the run, from our gin files as `sbs plan` reads them."""
  from sbs_jax.train import config, gin_check  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.gin_setup import parse_gin  # pylint: disable=import-outside-toplevel
  parse_gin(our_gin_files(args.size), our_bindings(args))
  cfg = gin_check.configured(config.TrainConfig)
  return cfg, cfg.parallelism.network(gin_check.configured(config.student_config))


@gin.configurable(module="t5x_compare")
def built(model=gin.REQUIRED):
  """What T5X's gin files build (`t5x_compare.built.model = %MODEL`)."""
  return model


@gin.configurable(module="t5x_compare")
def optimizer(optimizer_config=gin.REQUIRED, train_steps=gin.REQUIRED):
  """Our AdamW (the optax transformation `sbs train` builds) in T5X's OptaxWrapper."""
  from t5x import optimizers  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  return optimizers.OptaxWrapper(make_optimizer(optimizer_config, train_steps))


def t5x_gin(args, network) -> tuple[str, list[str]]:
  """T5X's model gin file for the size and the bindings on top of it."""
  size = args.size if args.size in T5X_SIZES else "small"
  bindings = [f"DROPOUT_RATE = {args.t5x_dropout}", "Z_LOSS = 0.0",
              "OPTIMIZER = @t5x_compare.optimizer()", "t5x_compare.built.model = %MODEL"]
  if args.size not in T5X_SIZES:  # our own size: its dimensions in T5X's config
    bindings += [f"network.T5Config.{k} = {getattr(network, k)!r}" for k in NETWORK_FIELDS]
  elif args.vocab_size:
    bindings.append(f"network.T5Config.vocab_size = {args.vocab_size}")
  return f"t5x/examples/t5/t5_1_1/{size}.gin", bindings


def t5x_model(args, cfg, network):
  """T5X's EncoderDecoderModel from its t5_1_1 gin; refuses a network other than ours."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import t5x  # pylint: disable=import-outside-toplevel
  gin_file, bindings = t5x_gin(args, network)
  gin.clear_config()
  gin.add_config_file_search_path(str(pathlib.Path(t5x.__file__).resolve().parents[1]))
  gin.parse_config_files_and_bindings([gin_file], bindings, finalize_config=False)
  gin.bind_parameter("t5x_compare.optimizer.optimizer_config", cfg.optimizer)
  gin.bind_parameter("t5x_compare.optimizer.train_steps", cfg.train_steps)
  model = built()
  theirs = model.module.config
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  differ = {k: (getattr(theirs, k), getattr(network, k)) for k in NETWORK_FIELDS
            if norm(getattr(theirs, k)) != norm(getattr(network, k))}
  if str(jnp.dtype(theirs.dtype)) != network.dtype:
    differ["dtype"] = (theirs.dtype, network.dtype)
  if differ:
    raise SbsError(f"T5X's {gin_file} gives another network than ours (T5X, ours): {differ}")
  return model, {"gin_file": gin_file, "gin_bindings": bindings[:2] + bindings[4:],
                 "dtype": str(theirs.dtype), "dropout_rate": theirs.dropout_rate,
                 "z_loss": model._z_loss}  # pylint: disable=protected-access


def slice_partitioner(mesh, partitioning_dims):
  """T5X's PjitPartitioner with its standard rules, its mesh the given device grid."""
  from t5x import partitioning  # pylint: disable=import-outside-toplevel

  class SlicePartitioner(partitioning.PjitPartitioner):
    """PjitPartitioner over a given mesh (T5X's own is laid over `jax.devices()`)."""

    @property
    def mesh(self):
      return mesh

  rules = partitioning.standard_logical_axis_rules(*partitioning_dims)
  return SlicePartitioner(num_partitions=mesh.shape["model"], logical_axis_rules=rules)


@contextlib.contextmanager
def hardware_rng():
  """T5X's finetune.gin has RANDOM_SEED = None: `t5x.train` then switches JAX to the
  hardware RNG (`utils.set_hardware_rng_ops`) for its init and dropout; undone after."""
  import jax  # pylint: disable=import-outside-toplevel
  from t5x import utils  # pylint: disable=import-outside-toplevel
  before = jax.config.jax_default_prng_impl
  utils.set_hardware_rng_ops()
  try:
    yield
  finally:
    jax.config.update("jax_default_prng_impl", before)


T5X_BATCH_KEYS = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                  "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                  "decoder_positions", "decoder_loss_weights")  # T5X's packed features


def t5x_step(args, cfg, network, mesh, hbm_gib: float) -> tuple[dict, dict]:
  """T5X's train step compiled for the mesh's devices: (its record, T5X's settings)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from t5x import trainer, utils  # pylint: disable=import-outside-toplevel
  from sbs_jax.perf import tpu_compile  # pylint: disable=import-outside-toplevel
  model, settings = t5x_model(args, cfg, network)
  partitioner = slice_partitioner(mesh, args.partitioning_dims)
  shapes = {k: (args.batch, args.inputs if k.startswith("encoder") else args.targets)
            for k in T5X_BATCH_KEYS}
  with hardware_rng():
    init = utils.TrainStateInitializer(model.optimizer_def, model.get_initial_variables,
                                       shapes, partitioner, {k: jnp.int32 for k in shapes})
    axes = init.train_state_axes
    # The axes are a prefix of the state (None: that subtree replicated, as pjit reads it).
    def shard(spec, subtree):
      sharding = NamedSharding(mesh, spec if isinstance(spec, PartitionSpec) else
                               PartitionSpec())
      return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          subtree)
    state = jax.tree.map(shard, axes, init.global_train_state_shape,
                         is_leaf=lambda x: x is None or isinstance(x, PartitionSpec))
    data = NamedSharding(mesh, partitioner.data_partition_spec)
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=data) for k, v in shapes.items()}
    learning_rate = utils.create_learning_rate_scheduler(  # finetune.gin's (OptaxWrapper
        factors="constant", base_learning_rate=cfg.optimizer.learning_rate,  # ignores it)
        warmup_steps=1000)
    t5x_trainer = trainer.Trainer(
        model, state, partitioner, eval_names=[], summary_dir=None, train_state_axes=axes,
        rng=jax.random.PRNGKey(cfg.seed), learning_rate_fn=learning_rate,
        num_microbatches=args.grad_accum if args.grad_accum > 1 else None)
    try:
      step = t5x_trainer._partitioned_train_step  # pylint: disable=protected-access
      record = tpu_compile.compile_program("t5x_train_step", lambda: step.lower(state, batch),
                                           hbm_gib, args.hlo_dir)
    finally:
      t5x_trainer.close()
  if record.get("xla_flops"):  # the micro-batch loop's body is counted once (as ours)
    record["flops_per_step"] = record["xla_flops"] * args.grad_accum
  settings.update(parameters=_count(init.global_train_state_shape.params),
                  prng_impl="unsafe_rbg (hardware RNG)", optimizer="OptaxWrapper(AdamW)",
                  num_microbatches=args.grad_accum if args.grad_accum > 1 else None,
                  logical_axis_rules=[list(r) for r in partitioner.logical_axis_rules])
  return record, settings


def _count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def versions() -> dict:
  """The packages' versions, and T5X's commit (launch/install_t5x.sh stamps its source)."""
  out = {}
  for name in ("jax", "jaxlib", "libtpu", "flax", "optax", "t5x"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  import t5x  # pylint: disable=import-outside-toplevel
  stamp = pathlib.Path(t5x.__file__).resolve().parents[1] / ".sbs_commit"
  out["t5x_commit"] = stamp.read_text().strip() if stamp.exists() else None
  return out


def compare(args) -> dict:
  """Both steps compiled; the JSON record of the run."""
  tpu = tpu_slices.parse(args.topology)
  tpu_slices.quiet_libtpu()
  from sbs_jax.perf import plan as plan_lib, tpu_compile  # pylint: disable=import-outside-toplevel
  from sbs_jax.perf.flops import analytic_flops  # pylint: disable=import-outside-toplevel
  cfg, network = our_run(args)
  mesh = plan_lib.parse_mesh(args.mesh, allow_rest=True)
  data, _ = tpu_compile.mesh_shape(mesh, tpu.chips)
  plan_lib.check_batch(cfg, data)
  student = tpu_compile.slice_student(cfg, network, tpu, mesh)
  ours = tpu_compile.compile_train_step(student, cfg, tpu.hbm_gib, args.hlo_dir)
  print(f"ours compiled in {ours.get('compile_s')} s", file=sys.stderr, flush=True)
  theirs, t5x_settings = t5x_step(args, cfg, network, student.mesh, tpu.hbm_gib)
  print(f"T5X compiled in {theirs.get('compile_s')} s", file=sys.stderr, flush=True)
  return {
      "command": shlex.join(["python", "benchmarks/t5x_compare.py", *sys.argv[1:]]),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "versions": versions(), "libtpu_init_args": os.environ.get("LIBTPU_INIT_ARGS", ""),
      "size": args.size, "topology": tpu.name, "chips": tpu.chips,
      "mesh": "x".join(str(n) for n in student.mesh.devices.shape),
      "partitioning_dims": list(args.partitioning_dims), "grad_accum": args.grad_accum,
      "batch": args.batch, "lengths": {"inputs": args.inputs, "targets": args.targets},
      "analytic_flops_per_chip": analytic_flops(network, args.batch, args.inputs,
                                                args.targets) / tpu.chips,
      "ours": {**ours, "parameters": _count(student.abstract_state["params"]),
               "dropout_rate": network.dropout_rate, "dtype": network.dtype,
               "sbs_plan_command": plan_command(args)},
      "t5x": {**theirs, **t5x_settings},
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 1),
  }


def _collective_gib(record: dict) -> float:
  return sum(v["gib"] for v in record.get("collectives", {}).values())


def markdown(r: dict) -> str:
  """The record as a small table: one row per figure, ours beside T5X's."""
  ours, theirs = r["ours"], r["t5x"]
  rules = "2-D" if r["partitioning_dims"][1] == 2 else "1-D"
  head = (f"T5 v1.1 {r['size']}, {r['topology']} {r['mesh']} ({rules}), {r['batch']} rows "
          f"of {r['lengths']['inputs']}/{r['lengths']['targets']}, accumulation "
          f"{r['grad_accum']}")

  def cells(fn):
    a, b = (fn(x) if "xla_bytes" in x else None for x in (ours, theirs))
    if a is None or b is None:
      return [str(a), str(b), "-"]
    ratio = f"{b / a:.3f}" if a else "-"
    return [f"{a:.3f}", f"{b:.3f}", ratio]

  rows = [("per chip GiB (peak)", lambda x: x["per_chip_gib"]),
          ("argument GiB", lambda x: x["xla_argument_gib"]),
          ("output GiB", lambda x: x["xla_output_gib"]),
          ("alias GiB", lambda x: x["xla_alias_gib"]),
          ("temp GiB", lambda x: x["xla_temp_gib"]),
          ("TFLOP per step per chip", lambda x: (x.get("flops_per_step") or 0) / 1e12),
          ("GiB accessed (XLA, loop body once)",
           lambda x: (x.get("xla_bytes_accessed") or 0) / GIB),
          ("collective GiB per step", _collective_gib)]
  kinds = sorted(set(ours.get("collectives", {})) | set(theirs.get("collectives", {})))
  for kind in kinds:
    rows.append((f"{kind} GiB (count)", lambda x, k=kind: x.get("collectives", {}).get(
        k, {"gib": 0.0})["gib"]))
  lines = [f"| {head} | ours | T5X | T5X / ours |", "|---|---:|---:|---:|"]
  for name, fn in rows:
    values = cells(fn)
    if name.endswith("(count)"):
      kind = name.split(" ")[0]
      counts = [x.get("collectives", {}).get(kind, {}).get("count", 0) for x in (ours, theirs)]
      values[:2] = [f"{v} ({c})" for v, c in zip(values[:2], counts)]
    lines.append(f"| {name} | " + " | ".join(values) + " |")
  lines.append(f"| compile_s | {ours.get('compile_s')} | {theirs.get('compile_s')} | |")
  for side, rec in (("ours", ours), ("T5X", theirs)):
    if not rec.get("fits", True) and "compiler" in rec:
      lines.append(f"\n{side} does not fit: {rec['compiler']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    record = compare(args)
  except SbsError as e:
    print(f"t5x_compare: error: {e}", file=sys.stderr)
    return 2
  print(markdown(record))
  if args.out:
    with open(args.out, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
