"""`sbs plan`: per-device memory of a training run on a DATA x MODEL mesh, on paper; with
`--topology` the TPU compiler's figures instead (`tpu_compile.py`), which this formula
follows (docs/scale.md compares them).

Shapes come from `jax.eval_shape` (nothing is allocated, no accelerator is needed) and the
sharding of every parameter and optimizer-state array from T5X's logical axis rules, as the
trainer applies them. Activations are an estimate, per micro-batch, in the compute dtype,
and depend on the TPU generation (`--chip`): the compiler fuses the same step differently.
What one layer holds for its own backward pass (its working set), per token:

  v5e, v5p, v6e (what autodiff keeps: the normalised inputs of the attention and MLP
  blocks, query, key, value and the attention output, the attention probabilities, wi_0
  and wi_1; v6e holds twice the [heads, q, k] bytes per layer, so 2 * heads * L there):
    encoder layer:  2 * emb + (4 * joined + 2 * mlp + heads * L_enc) / model
    decoder layer:  3 * emb + (6 * joined + 2 * mlp + heads * (L_dec + L_enc)) / model
  v4 (a fit: the compiled v4 step also keeps the softmax input beside the attention
  probabilities, and asynchronous copies of kept tensors, `copy-start` buffers):
    encoder layer:  8 * emb + (3 * mlp + 1.5 * heads * L_enc) / model
    decoder layer:  12 * emb + (3 * mlp + 1.5 * heads * (L_dec + L_enc)) / model
  plus, for every decoder layer, the cross-attention keys and values, 2 * joined / model
  per encoder token (`joined` = heads * head_dim).

The two differ because the compiler does: the same program (T5 v1.1 xl with 4 + 4 layers,
16-row micro-batches, a 1x4 mesh) compiled to 8.03 GiB per chip for a v4-8 and 6.58 for a
v5p-8, the v4 program keeping each encoder layer's softmax input beside its output. The
v5 structure is the count of what autodiff keeps, checked against the v5p program's live
buffers at its peak; the v4 coefficients are a fit to the v4 rows of docs/scale.md. With
them the formula is within 10% of the compiler on every recorded v4, v5e and v5p
configuration without remat (docs/scale_compiled.jsonl), +13% on v6e's one row.

With `ParallelismConfig.remat_policy = "none"` every layer keeps its working set. With
rematerialisation every layer keeps only what the policy saves, and the largest working
set is rebuilt in the backward pass: one working set on v4, three on v5e/v5p (a fit to the
v5e and v5p remat rows recorded before the refusal below, not traced; of the rows the
formula still answers, base on v5e-1 is +3.8%, XXL on v5p-8 with one data shard -7.4%):

    "full", per layer:         emb per token (the layer's input)
    "dots", encoder layer:     per token 2 * emb + (3 * joined + 2 * mlp) / model
    "dots", decoder layer:     per decoder token 3 * emb + (4 * joined + 2 * mlp) / model,
                               plus 2 * joined / model per encoder token

("dots" keeps the layer input and the projection outputs: query, key, value, attention out
and wi_0, wi_1.) To all of these the float32 logits add L_dec * vocab / model per row,
with rows per device = batch / (data * grad_accum_steps).

With remat and 2-D rules over more than one data shard the compiled step holds more than
this formula counts, by an amount no count of tensors here predicts (docs/scale.md, "Remat
with 2-D rules"): T5 XXL on v5e-32 (8x4, remat full, 4 micro-batches) compiles to 13.3 GiB
per chip where it says 8.0; large on v5e-8 (4x2) to 4.84 where it says 2.69. Much of it is
libtpu's collective matmuls (a weight's all-gather over 'data' overlapped with its
matmul): with `--xla_tpu_choose_faster_windowed_einsum_over_mem=false` in LIBTPU_INIT_ARGS
the XXL step holds 10.3 GiB, the formula still 22% under. So for those runs `plan` gives
no estimate: it refuses, pointing to `--topology` (the compiler's figure).

Beside parameters, gradients, optimizer state and activations, the compiled TPU step keeps
each device's shard of the weights in the compute dtype (bfloat16 copies; float32 computes
on the parameters themselves) and, with gradient accumulation, the running sum of the
gradients (as large as the gradients). With 2-D rules the weights are gathered over 'data'
layer by layer as they are used, not held whole (docs/scale.md).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import optax
from jax.sharding import PartitionSpec as P

from sbs_jax.errors import SbsError
from sbs_jax.model import partitioning
from sbs_jax.model.config import T5Config, config_for
from sbs_jax.model.network import Transformer
from sbs_jax.perf import tpu_slices
from sbs_jax.perf.tpu_slices import GIB
from sbs_jax.train.config import DataConfig, OptimizerConfig, ParallelismConfig, TrainConfig
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.state import init_params



@dataclasses.dataclass(frozen=True)
class Activations:
  """Per-token coefficients of one layer's working set (module docstring)."""
  encoder_emb: float  # embedding-wide tensors of an encoder layer
  decoder_emb: float
  encoder_joined: float  # heads * head_dim wide, sharded over 'model'
  decoder_joined: float
  mlp: float  # mlp wide, sharded over 'model'
  attention: float  # copies of the [heads, q, k] attention matrices
  remat_working_sets: int  # working sets live at once in a rematerialised backward pass


V4 = Activations(encoder_emb=8, decoder_emb=12, encoder_joined=0, decoder_joined=0, mlp=3,
                 attention=1.5, remat_working_sets=1)
V5 = Activations(encoder_emb=2, decoder_emb=3, encoder_joined=4, decoder_joined=6, mlp=2,
                 attention=1, remat_working_sets=3)
# v6e holds twice v5p's [heads, q, k] bytes per layer (xl, 2 + 2 layers, v6e-4 1x4).
V6E = dataclasses.replace(V5, attention=2)
CHIPS = {"v4": V4, "v5e": V5, "v5p": V5, "v6e": V6E}


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


def _layer_activations(c: T5Config, l_enc: int, l_dec: int, model: int,
                       k: Activations) -> float:
  """Elements per row that all encoder and decoder layers keep (module docstring)."""
  joined = c.num_heads * c.head_dim
  enc_all = l_enc * (k.encoder_emb * c.emb_dim + (k.encoder_joined * joined + k.mlp * c.mlp_dim
                                                  + k.attention * c.num_heads * l_enc) / model)
  dec_all = (l_dec * (k.decoder_emb * c.emb_dim
                      + (k.decoder_joined * joined + k.mlp * c.mlp_dim
                         + k.attention * c.num_heads * (l_dec + l_enc)) / model)
             + l_enc * 2 * joined / model)
  if c.remat_policy == "none":
    return c.num_encoder_layers * enc_all + c.num_decoder_layers * dec_all
  if c.remat_policy == "full":
    enc_kept, dec_kept = l_enc * c.emb_dim, l_dec * c.emb_dim
  else:  # "dots"
    enc_kept = l_enc * (2 * c.emb_dim + (3 * joined + 2 * c.mlp_dim) / model)
    dec_kept = (l_dec * (3 * c.emb_dim + (4 * joined + 2 * c.mlp_dim) / model)
                + l_enc * 2 * joined / model)
  return (c.num_encoder_layers * enc_kept + c.num_decoder_layers * dec_kept
          + k.remat_working_sets * max(enc_all, dec_all))


def activation_bytes(cfg: TrainConfig, model_config: T5Config, data: int, model: int,
                     chip: str = "v4") -> float:
  """The formula's activations per device (module docstring), apart from the state: what
  row lengths and batch change."""
  l_enc = cfg.data.task_feature_lengths["inputs"]
  l_dec = cfg.data.task_feature_lengths["targets"]
  rows = cfg.data.batch_size / (data * cfg.parallelism.grad_accum_steps)
  width = jax.numpy.dtype(model_config.compute_dtype).itemsize
  return rows * (_layer_activations(model_config, l_enc, l_dec, model, CHIPS[chip]) * width
                 + l_dec * model_config.vocab_size / model * 4)


def gives_estimate(cfg: TrainConfig, model_config: T5Config, data: int) -> bool:
  """False for remat with 2-D rules over several data shards, which the formula does not
  follow (module docstring)."""
  return not (model_config.remat_policy != "none" and cfg.parallelism.partitioning_dims[1] == 2
              and data > 1)


def plan(cfg: TrainConfig, model_config: T5Config, data: int, model: int,
         chip: str = "v4") -> dict:
  """Per-device bytes of parameters, gradients, optimizer state and activations, on a
  `chip` of that TPU generation (`CHIPS`). Refuses (SbsError) the runs without
  `gives_estimate`."""
  if chip not in CHIPS:
    raise SbsError(f"chip must be one of {sorted(CHIPS)}, got {chip!r}")
  if data < 1 or model < 1:
    raise SbsError(f"a {data}x{model} mesh: DATA and MODEL must be positive device counts")
  if not gives_estimate(cfg, model_config, data):
    raise SbsError(
        f"no estimate for remat with 2-D rules over {data} data shards: the TPU compiler "
        "holds up to twice what the formula counts here (T5 XXL, v4-64 8x4, remat full: "
        "17.7 GiB per chip, 8.9 on paper); run with --topology SLICE for the compiler's "
        "figure")
  mesh_shape = {"data": data, "model": model}
  rules = partitioning.standard_logical_axis_rules(*cfg.parallelism.partitioning_dims)
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
  width = jax.numpy.dtype(c.compute_dtype).itemsize
  activations = activation_bytes(cfg, c, data, model, chip)
  # What the TPU compiler adds (docs/scale.md): the device's weights in the compute dtype;
  # with gradient accumulation, the running sum of the gradients beside each micro-batch's.
  copies = 0
  if width < 4:
    copies = sum(_local_bytes(a.shape, c.compute_dtype, s, mesh_shape)
                 for a, s in zip(jax.tree.leaves(params),
                                 jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))))
  accumulator = param_bytes if cfg.parallelism.grad_accum_steps > 1 else 0
  parts = {"parameters": param_bytes, "gradients": param_bytes,
           "optimizer_state": total(opt, opt_specs), "compute_weights": copies,
           "gradient_accumulator": accumulator, "activations_estimate": activations}
  out = {"chip": chip, "mesh": f"{data}x{model}",
          "partitioning_dims": list(cfg.parallelism.partitioning_dims),
          "parameters": int(sum(a.size for a in jax.tree.leaves(params))),
          "optimizer": cfg.optimizer.name, "remat_policy": model_config.remat_policy,
          "batch_size": cfg.data.batch_size,
          "task_feature_lengths": cfg.data.task_feature_lengths,
          "per_device_bytes": {k: int(v) for k, v in parts.items()},
          "per_device_gib": {k: round(v / GIB, 3) for k, v in parts.items()},
          "per_device_total_gib": round(sum(parts.values()) / GIB, 3)}
  return out


def plan_of_compiled(record: dict, size: str) -> dict:
  """The formula's plan for the run that a `sbs plan --topology` record describes (its
  mesh, rules, optimizer, accumulation, batch, lengths, dtype, remat), with the published
  T5 v1.1 `size` (the record holds the run's settings, not the network's)."""
  cfg = TrainConfig(model_dir="unused", train_steps=10,
                    parallelism=ParallelismConfig(
                        partitioning_dims=tuple(record["partitioning_dims"]),
                        grad_accum_steps=record["grad_accum_steps"],
                        remat_policy=record["remat_policy"]),
                    data=DataConfig(mixture_or_task="unused", batch_size=record["batch_size"],
                                    task_feature_lengths=dict(record["task_feature_lengths"])),
                    optimizer=OptimizerConfig(name=record["optimizer"]))
  model_config = config_for(size, dtype=record["dtype"], remat_policy=record["remat_policy"])
  data, model = parse_mesh(record["mesh"])
  return plan(cfg, model_config, data, model,
              chip=tpu_slices.parse(record["topology"]).generation)


def parse_mesh(text: str, allow_rest: bool = False) -> tuple[int, int]:
  """"8x4" -> (8, 4): positive sizes; with `allow_rest` (a slice whose devices are known)
  one axis may be -1, the remaining devices, as ParallelismConfig.mesh takes it."""
  try:
    data, model = (int(x) for x in text.lower().split("x"))
  except ValueError:
    raise SbsError(f"--mesh must look like 8x4 (DATAxMODEL), got {text!r}") from None
  one_rest = allow_rest and sorted((data, model))[0] == -1 and max(data, model) >= 1
  if not one_rest and (data < 1 or model < 1):
    raise SbsError(f"--mesh {text}: DATA and MODEL must be positive device counts, e.g. 8x4"
                   + (" (or -1 for one axis: the rest of the slice)" if allow_rest else
                      " (-1 needs --topology, which knows the devices)"))
  return data, model


def check_batch(cfg: TrainConfig, data: int) -> None:
  """The batch splits evenly over the data shards (jax refuses an uneven batch sharding
  when the trainer starts) and into the micro-batches (the trainer reshapes it)."""
  batch, accum = cfg.data.batch_size, cfg.parallelism.grad_accum_steps
  if batch % data:
    raise SbsError(f"DataConfig.batch_size {batch} does not split evenly over {data} data "
                   f"shards (the trainer would fail at its first step): give a batch size "
                   f"that is a multiple of {data}, or another --mesh DATA")
  if batch % accum:
    raise SbsError(f"DataConfig.batch_size {batch} does not split into "
                   f"ParallelismConfig.grad_accum_steps = {accum} micro-batches: give a "
                   f"multiple of {accum}")
