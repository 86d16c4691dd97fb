"""`sbs bench`: training and label-decoding throughput of the student, beside the reference.

One JSON line per configuration (docs/benchmarks.md explains every field). Modes:
synthetic (default): fixed shapes, one unpacked *paired* row per example, as our trainer
sees distillation (encoder: `predict:` then `explain:` input as segments 1 and 2; decoder:
label then rationale; positions restart per segment; random ids, no padding). `--mixture`:
real rows of a registered task packed by `DistillFeatureConverter(pack=True)`, fetched into
memory before timing (input time reported apart); an example is a label segment.
`--inference`: greedy decoding of exactly `--decode_len` tokens (EOS stops neither side).

`--reference` runs, in the same process, HF `T5ForConditionalGeneration` of the same dims
(random init): two forward passes per step (`predict:` -> label, `explain:` -> rationale),
loss 0.5 * l1 + 0.5 * l2, `torch.optim.AdamW(lr=5e-5)`; with `--mixture` on the very
examples of our timed rows, padded to the longest per batch as DataCollatorForSeq2Seq does.
Ours keeps XLA's default flags and threads; torch gets `set_num_threads(os.cpu_count())`
and flushes subnormals to zero as XLA does. `--isolate` runs each side in its own worker
process (this command again with `--worker I`) instead of both in this one.

Timing: compile, 2 warmup steps, then `--steps` steps dispatched back to back up to one
`jax.block_until_ready` (torch: `cuda.synchronize`). FLOPs: `flops_per_step_xla` is
`compiled.cost_analysis()["flops"]` of the very executable timed, the whole step (forward,
backward, loss, AdamW update) over every position, padding included;
`flops_per_step_analytic` counts matmuls only (6 * N * tokens plus attention); the
reference's `flops_per_step_torch` is FlopCounterMode over one warmup step. MFU divides the
achieved FLOP/s by `--peak_tflops`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from sbs_jax.perf.bench_reference import (WARMUP, paired_examples, prepare_reference,
                                     prepare_reference_decode, reference_batches,
                                     reference_stats, torch_modules)
from sbs_jax.errors import SbsError
from sbs_jax.perf.flops import analytic_flops, xla_flops
from sbs_jax.model.config import SIZES as MODEL_SIZES
from sbs_jax.train import state as state_lib
from sbs_jax.train.loss import LABEL


# ---- Batches and what is in them.

def synthetic_batch(batch: int, input_len: int, label_len: int, rationale_len: int,
                    vocab_size: int = 32128, seed: int = 0) -> dict:
  """Unpacked paired rows (see module doc): random ids >= 2, every position real."""
  rng = np.random.default_rng(seed)

  def two_segments(first: int, second: int):
    seg = np.array([1] * first + [2] * second, np.int32)
    pos = np.concatenate([np.arange(first), np.arange(second)]).astype(np.int32)
    return np.tile(seg, (batch, 1)), np.tile(pos, (batch, 1))

  enc_seg, enc_pos = two_segments(input_len, input_len)
  dec_seg, dec_pos = two_segments(label_len, rationale_len)
  targets = rng.integers(2, vocab_size, dec_seg.shape, dtype=np.int32)
  return {"encoder_input_tokens": rng.integers(2, vocab_size, enc_seg.shape, dtype=np.int32),
          "encoder_segment_ids": enc_seg, "encoder_positions": enc_pos,
          "decoder_input_tokens": np.where(dec_pos == 0, 0, np.roll(targets, 1, axis=1)),
          "decoder_target_tokens": targets, "decoder_segment_ids": dec_seg,
          "decoder_positions": dec_pos, "decoder_task_ids": dec_seg.copy()}


def batch_stats(batches: list[dict]) -> dict:
  """Examples (label segments), real target tokens and non-padding fractions."""
  count = lambda key: sum(int((b[key] != 0).sum()) for b in batches)
  slots = lambda key: sum(b[key].size for b in batches)
  enc, dec = count("encoder_input_tokens"), count("decoder_target_tokens")
  enc_slots, dec_slots = slots("encoder_input_tokens"), slots("decoder_target_tokens")
  examples = sum(int(((b["decoder_task_ids"] == LABEL) & (b["decoder_positions"] == 0)).sum())
                 for b in batches)
  return {"examples": examples, "target_tokens": dec,
          "non_padding_fraction": (enc + dec) / (enc_slots + dec_slots),
          "non_padding_encoder": enc / enc_slots, "non_padding_decoder": dec / dec_slots}


def mixture_batches(name: str, batch: int, lengths: tuple[int, int], count: int,
                    split: str = "train", seed: int = 0) -> tuple[list[dict], float]:
  """`count` packed batches of a registered task or mixture, and the seconds they took."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel,unused-import  # registers them
  from sbs_jax.data.features import DistillFeatureConverter  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  ds = seqio.get_dataset(name, task_feature_lengths=dict(zip(("inputs", "targets"), lengths)),
                         dataset_split=split, shuffle=True, seed=seed, num_epochs=None,
                         feature_converter=DistillFeatureConverter(pack=True))
  batches = [{k: b[k] for k in state_lib.BATCH_KEYS}
             for b in ds.batch(batch, drop_remainder=True).take(count).as_numpy_iterator()]
  return batches, time.perf_counter() - start


def _jitted_step(train_step):
  """The `jax.jit` object inside the trainer's step wrapper."""
  return train_step.jitted


# ---- Ours. Each `prepare_*` compiles and warms up, then returns (info, run): run(n) runs
# the next n steps (cycling over `timed`) and returns their seconds.

def _student(config) -> state_lib.Student:
  from sbs_jax.train.config import OptimizerConfig  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  tx = make_optimizer(OptimizerConfig(schedule="constant"), 1)
  return state_lib.build_student(config, tx, state_lib.make_mesh((-1, 1)))


def prepare_ours(config, warm: list[dict], timed: list[dict], seed: int = 0):
  """The trainer's own jitted step, lowered, compiled and costed by XLA."""
  student = _student(config)
  box = {"state": state_lib.init_state(student, seed), "step": 0}
  jitted = _jitted_step(state_lib.make_train_step(student, alpha=0.5))
  warm, timed = ([state_lib.global_batch(student, b) for b in x] for x in (warm, timed))
  start = time.perf_counter()
  with student.sharding_context():
    compiled = jitted.lower(box["state"], warm[0]).compile()
  info = {"compile_s": round(time.perf_counter() - start, 2),
          "flops_per_step_xla": xla_flops(compiled)}
  for i in range(WARMUP):
    box["state"], _ = compiled(box["state"], warm[i % len(warm)])
  jax.block_until_ready(box["state"])

  def run(count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
      box["state"], metrics = compiled(box["state"], timed[box["step"] % len(timed)])
      box["step"] += 1
    jax.block_until_ready((box["state"], metrics))
    seconds = time.perf_counter() - start
    info["loss"] = float(metrics["loss"])
    return seconds

  return info, run


def prepare_ours_decode(config, inputs: np.ndarray, decode_len: int, seed: int = 0):
  """Jitted `greedy_decode` of exactly `decode_len` tokens per row."""
  from sbs_jax.model.decoding import greedy_decode  # pylint: disable=import-outside-toplevel
  student = _student(config)
  params = state_lib.init_state(student, seed)["params"]
  x = jax.device_put(inputs, student.replicated)
  info = {}

  def run(count: int) -> float:
    start = time.perf_counter()
    with student.sharding_context():
      out = jax.block_until_ready([greedy_decode(student.model, params, x, decode_len,
                                                 eos_id=-1) for _ in range(count)])
    info["decoded_shape"] = list(out[-1].shape)
    return time.perf_counter() - start

  info["compile_s"] = round(run(1), 2)
  run(WARMUP)
  return info, run


IMPLS = ("sbs_jax", "hf_reference")
_REPLY = "@@sbs-bench-worker "  # marks the worker's answers on its stdout


_START = time.monotonic()


def _progress(message: str) -> None:
  """One stderr line with the seconds since start: where a run killed by a timeout was."""
  print(f"[sbs bench +{time.monotonic() - _START:.0f}s] {message}", file=sys.stderr, flush=True)


def timings(makers: list, args):
  """Yields the info of each (maker, steps) with `seconds`: the median of `rounds` rounds.

  With one round the sides run one at a time, the reference first: torch's cache goes back
  to the device (`empty_cache`) before ours starts, while JAX's allocator keeps what it
  grew to. With more, all are prepared and their rounds alternate, so that both sides see
  the same machine (a shared CPU's load comes and goes). With `--isolate` each side lives
  in a worker process of its own (this command again, with `--worker I`), so that neither
  runtime's threads or allocator share a process with the other's.
  """
  rounds = args.rounds

  def result(info, times):
    return {**info, "seconds": float(np.median(times)),
            "round_seconds": [round(t, 3) for t in times]}

  if args.worker is not None:  # serve one side to the parent; never returns
    _serve(makers[args.worker][0], IMPLS[args.worker])
  if args.isolate:  # each side: (info getter, run, close)
    workers = [_Worker(args, i) for i in range(len(makers))]
    prepared = [(w.info, w.run, w.close) for w in workers]
  elif rounds <= 1:
    results = {}
    for i in reversed(range(len(makers))):
      _progress(f"{IMPLS[i]}, batch {args.current_batch}: preparing (compile + warmup)")
      info, run = makers[i][0]()
      _progress(f"{IMPLS[i]}, batch {args.current_batch}: timing {makers[i][1]} steps")
      results[i] = result(info, [run(makers[i][1])])
      del run  # free this side's memory before the next one starts
      if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()
    yield from (results[i] for i in range(len(makers)))
    return
  else:
    prepared = [(lambda info=info: info, run, lambda: None)
                for info, run in (make() for make, _ in makers)]
  times = [[] for _ in prepared]
  for _ in range(rounds):
    for seconds, (_, run, _), (_, steps) in zip(times, prepared, makers):
      seconds.append(run(steps))
  for (info, _, close), seconds in zip(prepared, times):
    yield result(info(), seconds)
    close()


def _serve(make, impl: str):
  """Worker side of --isolate: prepare, then answer `run N`, `info` and `quit` on stdin."""
  info, run = make()
  reply = lambda value: print(_REPLY + json.dumps(value), flush=True)
  reply("ready")
  for line in sys.stdin:
    command, *rest = line.split()
    if command == "run":
      reply(run(int(rest[0])))
    elif command == "info":
      reply({**info, "environment": environment(impl)})
    else:
      break
  sys.exit(0)


class _Worker:
  """Parent side of --isolate: one side's worker process."""

  def __init__(self, args, index: int):
    argv = [a for a in args.argv if a != "--isolate"]
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "sbs_jax.commands.bench", *argv, "--batch", str(args.current_batch),
         "--worker", str(index)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self._ask(None)  # "ready": compiled and warmed up

  def _ask(self, command: str | None):
    if command is not None:
      self._proc.stdin.write(command + "\n")
      self._proc.stdin.flush()
    for line in self._proc.stdout:
      if line.startswith(_REPLY):
        return json.loads(line[len(_REPLY):])
    raise SbsError(f"bench worker exited with status {self._proc.wait()} (its stderr is "
                   "above)")

  def run(self, steps: int) -> float:
    return self._ask(f"run {steps}")

  def info(self) -> dict:
    return self._ask("info")

  def close(self) -> None:
    self._proc.stdin.write("quit\n")
    self._proc.stdin.close()
    self._proc.wait()


# ---- The command.

def environment(impl: str) -> dict:
  """Device, versions, date and machine load of a result line."""
  info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host_cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
          "pid": os.getpid()}
  if impl == "sbs_jax":
    return {**info, "device_kind": jax.devices()[0].device_kind,
            "num_devices": jax.device_count(), "jax_version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
  torch, transformers = torch_modules()
  kind = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
  return {**info, "device_kind": kind, "torch_version": torch.__version__,
          "transformers_version": transformers.__version__,
          "torch_threads": torch.get_num_threads()}


# Below this share of the analytic matmul count, a measured count is not of the whole step.
UNDERCOUNT = 0.5


def rates(seconds: float, steps: int, stats: dict, flops: float | None, analytic: float,
          peak: float | None) -> dict:
  """Throughputs, achieved TFLOP/s and MFU of `steps` steps that took `seconds`.

  A measured count (`flops`) under UNDERCOUNT of the analytic one gives no `tflops_per_s`
  or `mfu` but a `flops_note`: XLA:GPU's cost analysis leaves out the matmuls it hands to
  cuBLAS (an H200 counted 2.1 of base's 13.8 TFLOP per step), and an MFU from it is wrong.
  """
  step_s = seconds / steps
  out = {"step_s": round(step_s, 4), "examples_per_s": round(stats["examples"] / seconds, 3),
         "target_tokens_per_s": round(stats["target_tokens"] / seconds, 1)}
  if flops and analytic and flops < UNDERCOUNT * analytic:
    out["flops_note"] = (f"the measured FLOP count is {flops / analytic:.0%} of the analytic "
                         "matmul count, so it misses part of the step (XLA:GPU leaves out "
                         "cuBLAS matmuls): use tflops_per_s_analytic and mfu_analytic")
    flops = None
  for suffix, value in (("", flops), ("_analytic", analytic)):
    if value:
      out[f"tflops_per_s{suffix}"] = round(value / step_s / 1e12, 4)
      if peak:
        out[f"mfu{suffix}"] = round(value / step_s / 1e12 / peak, 4)
  return out


def model_config(args, mixture: str | None = None):
  """The size's T5Config with --dtype, --dropout and a vocabulary covering the task's ids."""
  from sbs_jax.model.config import config_for  # pylint: disable=import-outside-toplevel
  config = config_for(args.size, dtype=args.dtype, dropout_rate=args.dropout)
  vocab = args.vocab_size
  if mixture and not vocab:
    import seqio  # pylint: disable=import-outside-toplevel
    import tasks  # pylint: disable=import-outside-toplevel,unused-import
    size = seqio.get_mixture_or_task(mixture).output_features["targets"].vocabulary.vocab_size
    vocab = -(-size // 128) * 128 if size > config.vocab_size else None
  return dataclasses.replace(config, vocab_size=vocab) if vocab else config


def _inference(args, config, common: dict):
  inputs = synthetic_batch(common["batch"], args.input_len, 1, 1, config.vocab_size,
                           args.seed)["encoder_input_tokens"][:, :args.input_len]
  makers = [(lambda: prepare_ours_decode(config, inputs, args.decode_len, args.seed),
             args.steps)]
  if args.reference:
    makers.append((lambda: prepare_reference_decode(config, inputs, args.decode_len,
                                                    args.seed), args.steps))
  for impl, timing in zip(IMPLS, timings(makers, args)):
    env = timing.pop("environment", None)  # measured in the worker with --isolate
    yield {**common, "impl": impl, "input_len": args.input_len,
           "decode_len": args.decode_len, **timing,
           "examples_per_s": round(common["batch"] * args.steps / timing["seconds"], 3),
           **(env or environment(impl))}


def _training(args, config, common: dict):
  batch, steps = common["batch"], args.steps
  if args.mixture:
    lengths = tuple(int(x) for x in args.task_feature_lengths.split(","))
    batches, input_s = mixture_batches(args.mixture, batch, lengths, WARMUP + steps,
                                       args.split, args.seed)
    warm, timed = batches[:WARMUP], batches[WARMUP:]
    extra = {"mixture": args.mixture, "task_feature_lengths": list(lengths),
             "input_pipeline_s": round(input_s, 2), "input_batches": len(batches)}
  else:
    timed = warm = [synthetic_batch(batch, args.input_len, args.label_len,
                                    args.rationale_len, config.vocab_size, args.seed)]
    extra = {k: getattr(args, k) for k in ("input_len", "label_len", "rationale_len")}
  b = timed[0]
  stats = batch_stats([timed[i % len(timed)] for i in range(steps)])
  sides = [(steps, stats, analytic_flops(config, batch, b["encoder_input_tokens"].shape[1],
                                         b["decoder_target_tokens"].shape[1]))]
  makers = [(lambda: prepare_ours(config, warm, timed, args.seed), steps)]
  if args.reference:
    if args.mixture:  # the very examples of our timed rows, in the recipe's padded batches
      examples = paired_examples(timed)
      ref = reference_batches(examples, args.reference_batch or
                              max(1, round(len(examples) / steps)))
      if not ref:
        raise SbsError("fewer examples in the timed rows than --reference_batch")
      ref_warm, ref_steps, ref_stats = ref[:WARMUP], len(ref), reference_stats(ref)
    else:
      cut = lambda x: {"input_ids": x.astype(np.int64), "attention_mask": np.ones_like(
          x, np.int64)}
      ids, tgt, n = b["encoder_input_tokens"], b["decoder_target_tokens"], args.label_len
      ref = ref_warm = [{
          "pred": {**cut(ids[:, :args.input_len]), "labels": tgt[:, :n].astype(np.int64)},
          "expl": {**cut(ids[:, args.input_len:]), "labels": tgt[:, n:].astype(np.int64)}}]
      ref_steps, ref_stats = steps, stats
    fed = [ref[i % len(ref)] for i in range(ref_steps)]
    sides.append((ref_steps, ref_stats, sum(
        analytic_flops(config, *p["input_ids"].shape, p["labels"].shape[1])
        for r in fed for p in r.values()) / ref_steps))
    makers.append((lambda: prepare_reference(config, ref_warm, ref, args.seed), ref_steps))
  for impl, (side_steps, side_stats, analytic), timing in zip(
      IMPLS, sides, timings(makers, args)):
    env = timing.pop("environment", None)  # measured in the worker with --isolate
    if impl == "hf_reference":
      extra = {**extra, "reference_batch": len(ref[0]["pred"]["input_ids"])}
      if args.mixture:  # counted on the first warmup batch only: not per step
        timing["flops_first_step_torch"] = timing.pop("flops_per_step_torch")
    measured = timing.get("flops_per_step_xla", timing.get("flops_per_step_torch"))
    yield {**common, "impl": impl, "steps": side_steps, **extra, **side_stats,
           "flops_per_step_analytic": analytic, **timing,
           **rates(timing["seconds"], side_steps, side_stats, measured, analytic,
                   args.peak_tflops), **(env or environment(impl))}


def bench(args, batch: int):
  """Yields the lines of one batch size: ours, then the reference's and the ratio."""
  mode = "inference" if args.inference else "mixture" if args.mixture else "synthetic"
  config = model_config(args, args.mixture)
  common = {"mode": mode, "size": args.size, "dtype": args.dtype, "batch": batch,
            "steps": args.steps, "rounds": args.rounds}
  lines = []
  for line in (_inference if args.inference else _training)(args, config, common):
    lines.append(line)
    yield line
  if len(lines) == 2 and lines[1]["examples_per_s"]:
    yield {"ratio": "sbs_jax / hf_reference examples_per_s", "mode": mode, "size": args.size,
           "batch": batch, "value": round(lines[0]["examples_per_s"] /
                                          lines[1]["examples_per_s"], 3)}


SIZES = tuple(MODEL_SIZES)
