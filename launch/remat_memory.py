"""XLA's peak temporary memory of one gradient step, per remat policy, on this backend.

  python launch/remat_memory.py [--size base] [--dtype bfloat16] [--shape 16,512]

Compiles (never runs) `jax.value_and_grad` of a teacher-forced cross-entropy over random
ids for each `T5Config.remat_policy` and prints one JSON line per policy:
`temp_size_in_bytes` (the activations and scratch the step needs beyond its inputs and
outputs), `argument_size_in_bytes` and `output_size_in_bytes`. XLA:CPU merges the
recomputation back into the forward pass (its CSE runs after the optimization barriers are
expanded), so remat's saving shows on a GPU or TPU only; `launch/gpu_bench.sh` runs this on a
lent GPU. Needs jax, flax and optax only (no TensorFlow, no SeqIO).
"""

from __future__ import annotations

import argparse
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sbs_jax.model.config import REMAT_POLICIES, config_for
from sbs_jax.model.network import Transformer


def temp_bytes(size: str, dtype: str, shape: tuple[int, int], policy: str) -> dict:
  config = config_for(size, dtype=dtype, remat_policy=policy)
  model = Transformer(config)
  ids = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), ids, ids, ids)["params"]))

  def loss(p, tokens):
    inputs = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    logits = model.apply({"params": p}, tokens, inputs, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  tokens = jax.ShapeDtypeStruct(shape, jnp.int32)
  analysis = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile().memory_analysis()
  if analysis is None:
    raise SystemExit(f"remat_memory: the {jax.default_backend()} backend gives no memory "
                     "analysis")
  return {"size": size, "dtype": dtype, "shape": list(shape), "remat_policy": policy,
          "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
          "jax_version": jax.__version__,
          "temp_size_in_bytes": int(analysis.temp_size_in_bytes),
          "argument_size_in_bytes": int(analysis.argument_size_in_bytes),
          "output_size_in_bytes": int(analysis.output_size_in_bytes)}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="base")
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  p.add_argument("--shape", default="16,512", help="BATCH,LENGTH of inputs and targets")
  p.add_argument("--out", help="also append the JSON lines to this file")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  batch, length = (int(x) for x in args.shape.split(","))
  rows = [temp_bytes(args.size, args.dtype, (batch, length), policy)
          for policy in REMAT_POLICIES]
  none = rows[[r["remat_policy"] for r in rows].index("none")]["temp_size_in_bytes"]
  for r in rows:
    r["temp_vs_none"] = round(r["temp_size_in_bytes"] / none, 3) if none else None
    line = json.dumps(r)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
