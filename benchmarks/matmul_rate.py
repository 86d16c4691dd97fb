"""The float32 matmul rate of XLA (jax) and of torch on this machine, for the shapes of a
T5 v1.1 small training step (rows = batch 16 x 256 encoder or 72 decoder tokens), or with
`--shapes predict` for the shapes of `sbs predict` at batch 32 (the encoder over 32 rows of
64 tokens, then one decoder position per step: 32 rows).

It bounds what any step can reach: a step of F FLOPs takes at least F / rate seconds.
Prints one JSON line per shape and implementation.

    python benchmarks/matmul_rate.py [--repeats 10] [--shapes train|predict]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# (rows, contracted, columns, what)
SHAPES = [(4096, 512, 1024, "encoder MLP wi: tokens x emb -> mlp"),
          (4096, 1024, 512, "encoder MLP wo: tokens x mlp -> emb"),
          (4096, 512, 384, "encoder attention projection: tokens x emb -> heads*head_dim"),
          (1152, 512, 32128, "logits: decoder tokens x emb -> vocabulary")]
PREDICT_SHAPES = [
    (2048, 512, 1024, "encoder MLP wi: 32 rows x 64 tokens"),
    (2048, 1024, 512, "encoder MLP wo: 32 rows x 64 tokens"),
    (2048, 512, 384, "encoder attention projection: 32 rows x 64 tokens"),
    (32, 512, 1024, "decoder MLP wi: one position of 32 rows"),
    (32, 1024, 512, "decoder MLP wo: one position of 32 rows"),
    (32, 512, 384, "decoder attention projection: one position of 32 rows"),
    (32, 512, 32128, "logits: one position of 32 rows")]


def _seconds(fn, repeats: int) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--shapes", choices=("train", "predict"), default="train")
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(0)
  matmul = jax.jit(jnp.matmul)
  for m, k, n, what in SHAPES if args.shapes == "train" else PREDICT_SHAPES:
    a, b = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n)))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for impl, fn in (("jax", lambda: matmul(ja, jb).block_until_ready()),
                     ("torch", lambda: torch.matmul(ta, tb))):
      seconds = _seconds(fn, args.repeats)
      print(json.dumps({"impl": impl, "shape": [m, k, n], "what": what,
                        "gflops_per_s": round(2 * m * k * n / seconds / 1e9, 1),
                        "xla_flags": os.environ.get("XLA_FLAGS", ""),
                        "host_cpus": os.cpu_count()}), flush=True)


if __name__ == "__main__":
  main()
