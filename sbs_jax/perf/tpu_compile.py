"""The TPU compiler's word on a run: the train step `sbs train` would run, and the
evaluation decoding step, compiled ahead of time for a Cloud TPU slice on this machine.

`jax.jit(...).lower(abstract arguments).compile()` on the slice's compile-only devices runs
XLA's TPU pipeline (SPMD partitioning, fusion, buffer assignment) without a TPU. Per chip,
`compiled.memory_analysis()` gives the arguments, outputs, the part of the outputs that
reuses donated arguments (alias) and the temporaries; at its peak a chip holds

    per_chip = arguments + outputs - alias + temporaries

(the train state is donated, so its update lands in its own buffers). The program must
also fit with its code; `fits` compares `per_chip` with the chip's HBM.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from sbs_jax.errors import SbsError
from sbs_jax.model import decoding, partitioning
from sbs_jax.model.config import T5Config
from sbs_jax.perf import hlo_stats, tpu_slices
from sbs_jax.perf.tpu_slices import GIB
from sbs_jax.perf.flops import xla_bytes_accessed, xla_flops
from sbs_jax.train.config import TrainConfig
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.state import BATCH_KEYS, Student, build_student, make_train_step



def mesh_shape(requested: tuple[int, int], devices: int) -> tuple[int, int]:
  """(data, model) with -1 resolved against the slice's devices, as `make_mesh` does."""
  data, model = requested
  if data == -1:
    data = devices // model
  if model == -1:
    model = devices // data
  if data < 1 or model < 1 or data * model != devices:
    raise SbsError(f"a {data}x{model} mesh does not cover the slice's {devices} chips: "
                   f"give --mesh DATAxMODEL with DATA*MODEL = {devices}")
  return data, model


def slice_student(cfg: TrainConfig, model_config: T5Config, tpu: tpu_slices.TpuSlice,
                  mesh: tuple[int, int]) -> Student:
  """The trainer's student (shapes and shardings, nothing allocated) on the slice."""
  devices = tpu_slices.devices(tpu)
  data, model = mesh_shape(mesh, len(devices))
  try:
    device_mesh = partitioning.make_mesh(data, model, devices)
  except ValueError as e:
    raise SbsError(f"{e} on {tpu.name}") from None
  tx = make_optimizer(cfg.optimizer, cfg.train_steps)
  return build_student(model_config, tx, device_mesh, cfg.parallelism.partitioning_dims)


def abstract_batch(student: Student, cfg: TrainConfig) -> dict:
  """One global batch's shapes, sharded over 'data' as `global_batch` makes it."""
  rows = cfg.data.batch_size
  lengths = cfg.data.task_feature_lengths
  data, accum = student.mesh.shape["data"], cfg.parallelism.grad_accum_steps
  if rows % (data * accum):
    raise SbsError(f"batch_size {rows} does not split into {accum} micro-batches over "
                   f"{data} data shards: make it a multiple of {data * accum}")
  return {k: jax.ShapeDtypeStruct(
      (rows, lengths["inputs"] if k.startswith("encoder") else lengths["targets"]),
      jnp.int32, sharding=student.batch_sharding) for k in BATCH_KEYS}


def shard_bytes(tree) -> int:
  """Bytes of one device's shards of the abstract arrays (from their shardings)."""
  total = 0
  for a in jax.tree.leaves(tree):
    sharding = a.sharding if isinstance(a.sharding, NamedSharding) else None
    shape = sharding.shard_shape(a.shape) if sharding else a.shape
    total += math.prod(shape) * jnp.dtype(a.dtype).itemsize
  return total


def replicated_bytes(student: Student) -> int:
  """Bytes of the train state that every chip holds whole (replicated over the mesh)."""
  if student.mesh.size == 1:
    return 0
  return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize
             for a in jax.tree.leaves(student.abstract_state)
             if a.sharding.is_fully_replicated)


def figures(compiled, hbm_gib: float) -> dict:
  """The compiler's per-chip memory, FLOPs and collectives of one compiled program."""
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  hlo = compiled.as_text()
  gib = lambda b: round(b / GIB, 3)
  return {
      "xla_argument_gib": gib(m.argument_size_in_bytes),
      "xla_output_gib": gib(m.output_size_in_bytes),
      "xla_alias_gib": gib(m.alias_size_in_bytes),
      "xla_temp_gib": gib(m.temp_size_in_bytes),
      "xla_code_gib": gib(m.generated_code_size_in_bytes),
      "per_chip_gib": gib(peak),
      "hbm_gib": hbm_gib,
      "fits": peak / GIB <= hbm_gib,
      "xla_flops": xla_flops(compiled),
      "xla_bytes_accessed": xla_bytes_accessed(compiled),
      "device_ids": device_ids(compiled),
      "collectives": {k: {"count": v["count"], "gib": gib(v["bytes"])}
                      for k, v in hlo_stats.collectives(hlo).items()},
      "xla_bytes": {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
                    "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes},
      "argument_padding_bytes": hlo_stats.parameter_padding_bytes(hlo),
  }


def device_ids(compiled) -> list[int]:
  """The ids of the devices a compiled program's arguments live on, in order."""
  ids = set()
  for sharding in jax.tree.leaves(compiled.input_shardings):
    ids.update(d.id for d in sharding.device_set)
  return sorted(ids)


def _compile(lower) -> tuple:
  """(compiled, seconds), or (None, the compiler's message) when it runs out of memory."""
  tic = time.perf_counter()
  try:
    return lower().compile(), round(time.perf_counter() - tic, 1)
  except jax.errors.JaxRuntimeError as e:
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "ran out of memory" not in text.lower():
      raise
    return None, _first_line(text)


def _first_line(text: str) -> str:
  line = next((s for s in text.splitlines() if s.strip()), text)
  return re.sub(r"\s+", " ", line).strip().rstrip(".")[:300]


def _record(program: str, compiled_or_none, result, hbm_gib: float,
            hlo_dir: str | None) -> dict:
  if compiled_or_none is None:
    return {"program": program, "fits": False, "hbm_gib": hbm_gib, "compiler": result}
  if hlo_dir:
    path = pathlib.Path(hlo_dir) / f"{program}.hlo.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compiled_or_none.as_text())
  return {"program": program, **figures(compiled_or_none, hbm_gib), "compile_s": result}


def compile_program(program: str, lower, hbm_gib: float, hlo_dir: str | None = None) -> dict:
  """`lower()` (a jax `Lowered`) compiled: the program's record of the compiler's figures
  and `compile_s`, or `fits` false and the compiler's message where it runs out of memory."""
  compiled, result = _compile(lower)
  return _record(program, compiled, result, hbm_gib, hlo_dir)


def compile_train_step(student: Student, cfg: TrainConfig, hbm_gib: float,
                       hlo_dir: str | None = None) -> dict:
  """The train step `sbs train` runs (same loss, accumulation, optimizer, shardings)."""
  step = make_train_step(student, cfg.alpha, cfg.parallelism.grad_accum_steps, cfg.seed)
  batch = abstract_batch(student, cfg)
  with student.sharding_context():
    out = compile_program("train_step", lambda: step.jitted.lower(student.abstract_state, batch),
                          hbm_gib, hlo_dir)
  if out.get("xla_flops"):
    # Per chip. XLA's cost analysis counts a loop body once: the micro-batch loop runs
    # grad_accum_steps times (the optimizer update outside it, < 0.1%, is counted as often).
    out["flops_per_step"] = out["xla_flops"] * cfg.parallelism.grad_accum_steps
  out["sharded_argument_bytes"] = shard_bytes((student.abstract_state, batch))
  out["replicated_state_gib"] = round(replicated_bytes(student) / GIB, 3)
  return out


def compile_eval_decode(student: Student, cfg: TrainConfig, hbm_gib: float,
                        hlo_dir: str | None = None) -> dict:
  """The label task's decoding step of evaluation (greedy, or beam search), on one batch
  of `EvalConfig.batch_size` rows as long as the training inputs."""
  from sbs_jax.model.student import decode_batch_size  # pylint: disable=import-outside-toplevel
  rows = decode_batch_size(student, cfg.eval.batch_size)
  inputs = jax.ShapeDtypeStruct((rows, cfg.data.task_feature_lengths["inputs"]), jnp.int32,
                                sharding=student.batch_sharding)
  params = student.abstract_state["params"]
  length = cfg.eval.label_decode_length
  if cfg.eval.beam_size > 1:
    lower = lambda: decoding.beam_search.lower(student.model, params, inputs, length,
                                               beam_size=cfg.eval.beam_size)
  else:
    lower = lambda: decoding.greedy_decode.lower(student.model, params, inputs, length)
  with student.sharding_context():
    out = compile_program("eval_decode", lower, hbm_gib, hlo_dir)
  out.update(decode_rows=rows, decode_length=length, beam_size=cfg.eval.beam_size)
  return out


PROGRAMS = {"train_step": compile_train_step, "eval_decode": compile_eval_decode}


def check(cfg: TrainConfig, model_config: T5Config, tpu: tpu_slices.TpuSlice,
          mesh: tuple[int, int], programs=tuple(PROGRAMS), hbm_gib: float | None = None,
          estimate_gib: float | None = None, hlo_dir: str | None = None) -> list[dict]:
  """One record per program: the run's settings and the compiler's per-chip figures
  (and the optimized HLO of each in `hlo_dir`, when given)."""
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    raise SbsError(f"unknown program(s) {unknown}: choose from {sorted(PROGRAMS)}")
  student = slice_student(cfg, model_config, tpu, mesh)
  run = {"topology": tpu.name, "chips": tpu.chips,
         "mesh": "x".join(str(n) for n in student.mesh.devices.shape),
         "partitioning_dims": list(cfg.parallelism.partitioning_dims), "dtype": model_config.dtype,
         "optimizer": cfg.optimizer.name, "remat_policy": model_config.remat_policy,
         "grad_accum_steps": cfg.parallelism.grad_accum_steps,
         "batch_size": cfg.data.batch_size,
         "task_feature_lengths": dict(cfg.data.task_feature_lengths),
         # libtpu's compiler flags change what the compiled step holds (docs/scale.md)
         "libtpu_init_args": os.environ.get("LIBTPU_INIT_ARGS", "")}
  records = []
  for name in programs:
    record = {**run, **PROGRAMS[name](student, cfg, hbm_gib or tpu.hbm_gib, hlo_dir)}
    if name == "train_step":
      record["estimate_gib"] = estimate_gib
    records.append(record)
  return records


def table(records: list[dict]) -> str:
  """A few columns of the records, one row each, for people."""
  head = ("program", "topology", "mesh", "argument", "temp", "per_chip", "hbm", "fits",
          "estimate", "compile_s")
  rows = [head]
  for r in records:
    cell = lambda k: "-" if r.get(k) is None else str(r[k])
    rows.append((r["program"], r["topology"], r["mesh"], cell("xla_argument_gib"),
                 cell("xla_temp_gib"), cell("per_chip_gib"), cell("hbm_gib"),
                 "yes" if r["fits"] else "NO", cell("estimate_gib"), cell("compile_s")))
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  lines.insert(1, "(GiB per chip)")
  return "\n".join(lines)
