"""`sbs plan`: per-device memory of a training run on a DATA x MODEL mesh, on paper; with
`--topology` the TPU compiler's figures instead (`tpu_compile.py`), which this formula
follows (docs/scale.md compares them).

Shapes come from `jax.eval_shape` (nothing is allocated, no accelerator is needed) and the
sharding of every parameter and optimizer-state array from T5X's logical axis rules, as the
trainer applies them. Activations are an estimate: the tensors the forward pass keeps for
the backward pass, per micro-batch, in the compute dtype. What one layer needs for its own
backward pass (its working set, everything it computes):

    encoder layer, per token:  8 * emb + (3 * mlp + a * heads * L_enc) / model
    decoder layer, per token:  12 * emb + (3 * mlp + a * heads * (L_dec + L_enc)) / model,
                               plus the cross-attention keys and values,
                               2 * joined / model per encoder token

where a = ATTENTION_COPIES = 1.5 counts the attention matrices ([heads, q, k] per row) one
and a half times: the compiled TPU step keeps the probabilities of every layer and, in its
buffers, part of the scores beside them. The 1.5 is fitted to the compiler: with it the
formula is within 9% of `sbs plan --topology` on the four configurations of docs/scale.md
(T5 small and base data-parallel, base 2x2 and XXL 8x4 with 2-D rules and accumulation 4);
with 1 it undercounted by up to 22%. It is a fit to those four programs (no remat, AdamW,
bfloat16), not a derivation: for other settings compile with `--topology`.

With remat the estimate is what the step needs, not what the TPU compiler schedules: on a
chip with memory to spare, XLA's scheduler recomputes the rematerialised layers of a stack
side by side (T5 XXL on v4-64, 8x4, remat full: 17.7 GiB per chip where this formula says
8.9; the same step with 4 + 4 layers took 4.68 GiB on a 32 GiB v4 chip and 3.35 on a
16 GiB v5e chip). The estimate carries a `remat_note` saying so.

With `student_config.remat_policy = "none"` every layer keeps its working set. With
rematerialisation every layer keeps only what the policy saves, and one layer's working
set (the largest) is rebuilt at a time in the backward pass:

    "full", per layer:         emb per token (the layer's input)
    "dots", encoder layer:     per token 2 * emb + (3 * joined + 2 * mlp) / model
    "dots", decoder layer:     per decoder token 3 * emb + (4 * joined + 2 * mlp) / model,
                               plus 2 * joined / model per encoder token

("dots" keeps the layer input and the projection outputs: query, key, value, attention out
and wi_0, wi_1; `joined` = heads * head_dim.) To all of these the float32 logits add
L_dec * vocab / model per row, with rows per device = batch / (data * grad_accum_steps).

Beside parameters, gradients, optimizer state and activations, the compiled TPU step keeps
each device's shard of the weights in the compute dtype (bfloat16 copies; float32 computes
on the parameters themselves) and, with gradient accumulation, the running sum of the
gradients (as large as the gradients). With 2-D rules the weights are gathered over 'data'
layer by layer as they are used, not held whole (docs/scale.md).
"""

from __future__ import annotations

import json
import math
import sys

import flax.linen as nn
import jax
import optax
from jax.sharding import PartitionSpec as P

from sbs_jax.errors import SbsError
from sbs_jax.model import partitioning
from sbs_jax.model.config import T5Config, config_for
from sbs_jax.model.network import Transformer
from sbs_jax.train.config import DataConfig, OptimizerConfig, TrainConfig
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.state import init_params

GIB = 1024 ** 3
# With remat the estimate is what the step needs, not what the TPU compiler will use
# (docs/scale.md, "Remat and the scheduler").
REMAT_NOTE = ("with remat the TPU compiler may recompute several layers side by side when "
              "the chip has memory to spare (T5 XXL, v4-64 8x4, remat full: 17.7 GiB compiled "
              "where this estimate says 8.9); run with --topology for the compiler's figure")
# How many copies of each layer's attention matrices the step keeps (module docstring).
ATTENTION_COPIES = 1.5


def add_parser(subparsers) -> None:
  from sbs_jax.train.command import add_gin_flags  # pylint: disable=import-outside-toplevel
  p = subparsers.add_parser(
      "plan", help="per-device memory of a run on a mesh: on paper, or from the TPU "
      "compiler with --topology")
  p.add_argument("--mesh", help="DATAxMODEL, e.g. 8x4 (with --topology: default "
                 "TrainConfig.mesh over the slice's chips)")
  p.add_argument("--topology", help="a Cloud TPU slice (v4-8, v4-64, v5e-16, v5litepod-16, "
                 "v5p-8, v6e-8, or v4:2x4x4): compile the train and eval decoding steps for "
                 "it and report the compiler's per-chip memory (needs the tpu extra)")
  p.add_argument("--programs", default="train_step,eval_decode",
                 help="with --topology: which programs to compile (comma-separated)")
  p.add_argument("--hlo_dir", help="with --topology: write each program's optimized HLO "
                 "text here (<program>.hlo.txt)")
  p.add_argument("--hbm_gib", type=float, help="memory per device, to say whether it fits "
                 "(with --topology: default the chip's)")
  add_gin_flags(p)
  p.set_defaults(func=main, accepts_gin_bindings=True)


def _local_bytes(shape, dtype, spec: P, mesh_shape: dict) -> int:
  """Bytes of one device's shard (replicated where the spec does not fit the array)."""
  spec = tuple(spec)
  if len(spec) > len(shape):
    spec = ()
  local = []
  for i, dim in enumerate(shape):
    axes = spec[i] if i < len(spec) else None
    axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    local.append(math.ceil(dim / math.prod(mesh_shape[a] for a in axes)))
  return math.prod(local) * jax.numpy.dtype(dtype).itemsize


def _layer_activations(c: T5Config, l_enc: int, l_dec: int, model: int) -> float:
  """Elements per row that all encoder and decoder layers keep (module docstring)."""
  heads_mlp = lambda length: (3 * c.mlp_dim + ATTENTION_COPIES * c.num_heads * length) / model
  joined = c.num_heads * c.head_dim
  enc_all = l_enc * (8 * c.emb_dim + heads_mlp(l_enc))
  dec_all = l_dec * (12 * c.emb_dim + heads_mlp(l_dec + l_enc)) + l_enc * 2 * joined / model
  if c.remat_policy == "none":
    return c.num_encoder_layers * enc_all + c.num_decoder_layers * dec_all
  if c.remat_policy == "full":
    enc_kept, dec_kept = l_enc * c.emb_dim, l_dec * c.emb_dim
  else:  # "dots"
    enc_kept = l_enc * (2 * c.emb_dim + (3 * joined + 2 * c.mlp_dim) / model)
    dec_kept = (l_dec * (3 * c.emb_dim + (4 * joined + 2 * c.mlp_dim) / model)
                + l_enc * 2 * joined / model)
  return (c.num_encoder_layers * enc_kept + c.num_decoder_layers * dec_kept
          + max(enc_all, dec_all))


def plan(cfg: TrainConfig, model_config: T5Config, data: int, model: int) -> dict:
  """Per-device bytes of parameters, gradients, optimizer state and activations."""
  mesh_shape = {"data": data, "model": model}
  rules = partitioning.standard_logical_axis_rules(*cfg.partitioning_dims)
  network = Transformer(model_config)
  boxed = jax.eval_shape(lambda: init_params(network, jax.random.key(0)))
  specs = partitioning.mesh_partition_specs(boxed, rules)
  params = nn.unbox(boxed)
  tx = make_optimizer(cfg.optimizer, cfg.train_steps)
  opt = jax.eval_shape(tx.init, params)
  opt_specs = optax.tree_map_params(tx, lambda _, s: s, opt, specs,
                                    transform_non_params=lambda _: P(),
                                    is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))

  def total(tree, spec_tree):
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(spec_tree, is_leaf=lambda x: isinstance(x, P))
    return sum(_local_bytes(a.shape, a.dtype, s, mesh_shape)
               for a, s in zip(leaves, spec_leaves))

  param_bytes = total(params, specs)
  c = model_config
  l_enc = cfg.data.task_feature_lengths["inputs"]
  l_dec = cfg.data.task_feature_lengths["targets"]
  rows = cfg.data.batch_size / (data * cfg.optimizer.grad_accum_steps)
  width = jax.numpy.dtype(c.compute_dtype).itemsize
  activations = rows * (_layer_activations(c, l_enc, l_dec, model) * width
                        + l_dec * c.vocab_size / model * 4)
  # What the TPU compiler adds (docs/scale.md): the device's weights in the compute dtype;
  # with gradient accumulation, the running sum of the gradients beside each micro-batch's.
  copies = 0
  if width < 4:
    copies = sum(_local_bytes(a.shape, c.compute_dtype, s, mesh_shape)
                 for a, s in zip(jax.tree.leaves(params),
                                 jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))))
  accumulator = param_bytes if cfg.optimizer.grad_accum_steps > 1 else 0
  parts = {"parameters": param_bytes, "gradients": param_bytes,
           "optimizer_state": total(opt, opt_specs), "compute_weights": copies,
           "gradient_accumulator": accumulator, "activations_estimate": activations}
  out = {"mesh": f"{data}x{model}", "partitioning_dims": list(cfg.partitioning_dims),
          "parameters": int(sum(a.size for a in jax.tree.leaves(params))),
          "optimizer": cfg.optimizer.name, "remat_policy": model_config.remat_policy,
          "batch_size": cfg.data.batch_size,
          "task_feature_lengths": cfg.data.task_feature_lengths,
          "per_device_bytes": {k: int(v) for k, v in parts.items()},
          "per_device_gib": {k: round(v / GIB, 3) for k, v in parts.items()},
          "per_device_total_gib": round(sum(parts.values()) / GIB, 3)}
  if model_config.remat_policy != "none":
    out["remat_note"] = REMAT_NOTE
  return out


def plan_of_compiled(record: dict, size: str) -> dict:
  """The formula's plan for the run that a `sbs plan --topology` record describes (its
  mesh, rules, optimizer, accumulation, batch, lengths, dtype, remat), with the published
  T5 v1.1 `size` (the record holds the run's settings, not the network's)."""
  cfg = TrainConfig(model_dir="unused", train_steps=10,
                    partitioning_dims=tuple(record["partitioning_dims"]),
                    data=DataConfig(mixture_or_task="unused", batch_size=record["batch_size"],
                                    task_feature_lengths=dict(record["task_feature_lengths"])),
                    optimizer=OptimizerConfig(name=record["optimizer"],
                                              grad_accum_steps=record["grad_accum_steps"]))
  model_config = config_for(size, dtype=record["dtype"], remat_policy=record["remat_policy"])
  data, model = parse_mesh(record["mesh"])
  return plan(cfg, model_config, data, model)


def parse_mesh(text: str) -> tuple[int, int]:
  """"8x4" -> (8, 4); -1 takes the remaining devices."""
  try:
    data, model = (int(x) for x in text.lower().split("x"))
  except ValueError:
    raise SbsError(f"--mesh must look like 8x4, got {text!r}") from None
  return data, model


def compiled_plan(args, cfg: TrainConfig, model_config: T5Config, tpu) -> int:
  """`sbs plan --topology`: one JSON line per compiled program on stdout, a table on
  stderr; an error (exit 2) when a program does not fit the chip."""
  from sbs_jax.train import tpu_compile  # pylint: disable=import-outside-toplevel
  mesh = parse_mesh(args.mesh) if args.mesh else tuple(cfg.mesh)
  programs = [p for p in args.programs.split(",") if p]
  data, model = tpu_compile.mesh_shape(mesh, tpu.chips)
  estimate = plan(cfg, model_config, data, model)["per_device_total_gib"]
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
                   "TrainConfig.partitioning_dims=(1,2), student_config.remat_policy, or "
                   "OptimizerConfig.grad_accum_steps")
  return 0


def main(args) -> int:
  from sbs_jax.train import command, config  # pylint: disable=import-outside-toplevel
  if args.topology:
    from sbs_jax.train import tpu_slices  # pylint: disable=import-outside-toplevel
    tpu = tpu_slices.parse(args.topology)  # a bad name fails before gin and JAX start
    tpu_slices.quiet_libtpu()
  elif not args.mesh:
    raise SbsError("give --mesh DATAxMODEL (the estimate), or --topology SLICE (the "
                   "TPU compiler's figures)")
  command.parse_gin(args.gin_file, command.gin_bindings(args.gin_bindings),
                    args.gin_search_path)
  cfg, model_config = config.TrainConfig(), config.student_config()
  if args.topology:
    return compiled_plan(args, cfg, model_config, tpu)
  data, model = parse_mesh(args.mesh)
  result = plan(cfg, model_config, data, model)
  if args.hbm_gib:
    result["hbm_gib"] = args.hbm_gib
    result["fits"] = result["per_device_total_gib"] <= args.hbm_gib
  print(json.dumps(result, indent=2))
  return 0
