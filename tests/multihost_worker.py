"""`sbs train` in one process, fed as if by several hosts (for tests/test_multihost.py).

    python tests/multihost_worker.py HOSTS REPORT.json train --gin_file=... --gin.K=V ...

A run of N processes trains on global batches made of each host's own rows: host i's
rows come from shard i of N of the input (`train_batches` with
`seqio.ShardInfo(index=i, num_shards=N)`), and lie in rows [i * B/N, (i + 1) * B/N) of the
global batch (the mesh lists process 0's devices first). This script builds exactly those
global batches in one process, with the trainer's own `train_batches` called once per
emulated host, then runs `sbs` with the rest of its arguments, so that a one-process run
can be compared with an N-process one step for step.

REPORT.json gets whether the first global batch differs from the first batch of the
unsharded stream, i.e. whether the comparison exercises the sharding at all.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np

from sbs_jax import cli
from sbs_jax.train import data as data_lib
from sbs_jax.train import loop


def host_batches(cfg, start_step: int, index: int, count: int):
  """What `train_batches` yields on host `index` of `count` (jax's answer replaced)."""
  real = data_lib.jax
  data_lib.jax = types.SimpleNamespace(process_index=lambda: index,
                                       process_count=lambda: count)
  try:
    stream = data_lib.train_batches(cfg, start_step)
    first = next(stream)  # the generator reads the host identity on its first step
  finally:
    data_lib.jax = real
  yield first
  yield from stream


def emulated_train_batches(hosts: int, report: dict):
  """A `train_batches` whose batches are the concatenated batches of `hosts` hosts."""

  def train_batches(cfg, start_step: int = 0):
    streams = [host_batches(cfg, start_step, i, hosts) for i in range(hosts)]
    first = True
    while True:
      parts = [next(s) for s in streams]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      if first:
        whole = next(host_batches(cfg, start_step, 0, 1))
        report["differs_from_one_host_stream"] = any(
            not np.array_equal(batch[k], whole[k]) for k in batch)
        report["global_rows"] = int(len(batch["encoder_input_tokens"]))
        first = False
      yield batch

  return train_batches


def main(argv: list[str]) -> int:
  hosts, report_path, sbs_args = int(argv[0]), argv[1], argv[2:]
  report: dict = {}
  loop.train_batches = emulated_train_batches(hosts, report)
  code = cli.main(sbs_args)
  with open(report_path, "w", encoding="utf-8") as f:
    json.dump(report, f)
  return code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
