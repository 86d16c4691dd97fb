"""Row lengths from the data: FLOPs and memory per real token, and the packed row lengths
and batch that cost the fewest FLOPs per real token (`sbs plan --propose_lengths`).

A real token is a non-padding token of a packed training row: encoder input tokens plus
decoder target tokens (inputs + targets). Every row pays attention over all its positions,
so long rows of short examples cost more per real token than short rows holding the same
examples.

The proposal ranks every pair of row lengths (multiples of `length_multiple`, up to the
configured ones) that cuts at most `share` of each task's training examples by a FLOP model
per real token: the matmul FLOPs of one row (`flops.analytic_flops`) over the real tokens a
row holds, simulated on the examples' lengths by the configured packing rule
(`DataConfig.packing`): SeqIO's next-fit (chunks of max(lengths) examples in stream order:
an example that does not fit both features closes the row), or best-fit decreasing or
pair-fit over windows of the stream (`sbs_jax.data.packing`, the packer's own row
assignment). The
batch in rows grows as rows shrink, so that a step sees the same real tokens (the same
examples) as the configured run. The FLOP curve is flat near its minimum and the memory
is not, so of the candidates within 2% of the fewest FLOPs per real token (and no more
than the configured rows') whose memory estimate (`plan.plan`) fits the chip, the one with
the least activation memory per real token is proposed (among those whose rounded batch
keeps the tokens per step within 5%). The command then measures
its rows through the trainer's pipeline, sets the batch from them, runs the length check on
them and, with --topology, compiles the train step.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from sbs_jax.data.lengths import cut_mask
from sbs_jax.data.packing import WINDOWED, count_rows
from sbs_jax.errors import SbsError
from sbs_jax.model.config import T5Config
from sbs_jax.perf import plan as plan_lib
from sbs_jax.perf.flops import analytic_flops
from sbs_jax.perf.tpu_slices import GIB
from sbs_jax.train.config import TrainConfig

TOKENS_COUNTED = ("non-padding encoder input tokens + decoder target tokens "
                  "(inputs + targets) of packed training rows")


def check_share(share: float) -> None:
  """A share of examples the proposal may cut: 0 <= share < 1."""
  if not 0.0 <= share < 1.0:
    raise SbsError(f"--max_truncated_share {share:g}: give a share of training examples the "
                   "rows may cut, at least 0 and below 1 (e.g. 0 to cut none, 0.01 for 1%)")


def cut_share(inputs: np.ndarray, targets: np.ndarray, parts_cut: np.ndarray,
              lengths: dict) -> float:
  """The share of examples that rows of `lengths` cut (as `check_lengths` counts them)."""
  if not len(inputs):
    return 0.0
  return float(cut_mask(inputs, targets, parts_cut, lengths).mean())


def simulate_packing(inputs: np.ndarray, targets: np.ndarray, lengths: dict,
                     packing: str = "next_fit", window: int = 1024) -> float:
  """Mean real tokens per packed row of examples with these lengths, in this order, each
  trimmed to the lengths, by the trainer's packing rule (`DataConfig.packing`):

  - next_fit: SeqIO's rule (`seqio.utils.trim_and_pack_dataset` without custom ops):
    chunks of max(lengths) examples are packed next-fit, each chunk ending with its last,
    partly filled row;
  - best_fit or pair_fit: `sbs_jax.data.packing`'s rules, over windows of `window`
    examples (the packer's own row assignment)."""
  l_in, l_tg = lengths["inputs"], lengths["targets"]
  ins = np.minimum(inputs, l_in)
  tgs = np.minimum(targets, l_tg)
  real = int(ins.sum()) + int(tgs.sum())
  if packing in WINDOWED:
    rows = count_rows(np.stack([ins, tgs], axis=1), [l_in, l_tg], window, packing)
    return real / max(rows, 1)
  ins, tgs = ins.tolist(), tgs.tolist()
  chunk = max(l_in, l_tg)
  rows = 0
  for start in range(0, len(ins), chunk):
    used_in = used_tg = 0
    rows += 1
    for a, b in zip(ins[start:start + chunk], tgs[start:start + chunk]):
      if used_in + a > l_in or used_tg + b > l_tg:
        rows += 1
        used_in = used_tg = 0
      used_in += a
      used_tg += b
  return real / max(rows, 1)


def per_real_token(record: dict, real: dict, batch_size: int) -> dict:
  """The fields of a compiled train step per real token of one step (over all chips:
  per-chip figures times chips, over the step's real tokens)."""
  tokens = real["per_row"] * batch_size
  chips = record["chips"]
  out = {"real_tokens_per_step": round(tokens, 1),
         "real_tokens_per_row": round(real["per_row"], 2),
         "real_token_fill": round(real["fill"], 4),
         "real_tokens_rows_read": real["rows"],
         "real_tokens_counted": TOKENS_COUNTED}
  if record.get("flops_per_step"):
    out["flops_per_real_token"] = record["flops_per_step"] * chips / tokens
  if "xla_bytes" in record:
    b = record["xla_bytes"]
    peak = b["argument"] + b["output"] - b["alias"] + b["temp"]
    out["temp_bytes_per_real_token"] = round(b["temp"] * chips / tokens, 1)
    out["per_chip_bytes_per_real_token"] = round(peak * chips / tokens, 1)
  return out


@dataclasses.dataclass(frozen=True)
class Candidate:
  """Row lengths, their FLOP model per real token, and the batch that keeps the tokens."""
  inputs: int
  targets: int
  real_per_row: float  # simulated
  flops_per_real_token: float  # the FLOP model: matmuls of one row / its real tokens
  cut_share: float  # the largest share of any task's examples these lengths cut

  @property
  def lengths(self) -> dict:
    return {"inputs": self.inputs, "targets": self.targets}


def batch_for(tokens_per_step: float, real_per_row: float, multiple: int) -> int:
  """Rows per step holding about `tokens_per_step` real tokens, a multiple of `multiple`."""
  return max(multiple, int(round(tokens_per_step / real_per_row / multiple)) * multiple)


def _pooled(example_lengths: dict, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The tasks' examples in one shuffled stream (a mixture's rows mix them), at most
  `sample` of them."""
  inputs = np.concatenate([v[0] for v in example_lengths.values()])
  targets = np.concatenate([v[1] for v in example_lengths.values()])
  order = np.random.default_rng(seed).permutation(len(inputs))[:sample]
  return inputs[order], targets[order]


def candidates(example_lengths: dict, model_config: T5Config, max_lengths: dict,
               share: float, length_multiple: int = 8, sample: int = 4096,
               seed: int = 0, packing: str = "next_fit", window: int = 1024,
               within: float | None = None) -> list[Candidate]:
  """Pairs of row lengths up to `max_lengths` that cut at most `share` of each task's
  examples, packed by `packing` (and `window`, `simulate_packing`), cheapest FLOPs per real
  token first: all of them, or with `within`, at least every one within that fraction of
  the cheapest. A pair is not simulated where a bound already puts it above: rows hold at
  most l_in input and l_tg target tokens, so they are at least as many as the examples'
  input tokens / l_in and their target tokens / l_tg. Refuses (SbsError) bad input."""
  check_share(share)
  empty = [name for name, v in example_lengths.items() if not len(v[0])]
  if empty or not example_lengths:
    raise SbsError(f"{', '.join(empty) or 'the mixture'} has no training examples to read "
                   "lengths from: annotate its train split (sbs annotate), or configure a "
                   "DataConfig.train_split that holds examples")
  for name, (ins, tgs, parts) in example_lengths.items():
    cut = cut_share(ins, tgs, parts, max_lengths)
    if cut > share:
      raise SbsError(
          f"DataConfig.task_feature_lengths = {json.dumps(max_lengths)} already cut "
          f"{100 * cut:.1f}% of {name}'s training examples, over --max_truncated_share "
          f"{share:g}, and no proposed row is longer: raise the lengths (longest: inputs "
          f"{int(ins.max())}, targets {int(tgs.max())}) or the share")
  inputs, targets = _pooled(example_lengths, max(sample, window), seed)
  pairs = []
  for l_in in range(length_multiple, max_lengths["inputs"] + 1, length_multiple):
    for l_tg in range(length_multiple, max_lengths["targets"] + 1, length_multiple):
      lengths = {"inputs": l_in, "targets": l_tg}
      cut = max(cut_share(*v, lengths) for v in example_lengths.values())
      if cut <= share:
        flops = analytic_flops(model_config, 1, l_in, l_tg)
        real_in, real_tg = np.minimum(inputs, l_in).sum(), np.minimum(targets, l_tg).sum()
        fewest_rows = max(real_in / l_in, real_tg / l_tg, 1e-9)
        pairs.append((flops * fewest_rows / max(real_in + real_tg, 1), l_in, l_tg, flops,
                      cut))
  out, cheapest = [], math.inf
  for bound, l_in, l_tg, flops, cut in sorted(pairs):
    if within is not None and bound > cheapest * (1 + within):
      break  # every pair from here costs more than that, packed as densely as can be
    per_row = simulate_packing(inputs, targets, {"inputs": l_in, "targets": l_tg}, packing,
                               window)
    out.append(Candidate(l_in, l_tg, per_row, flops / per_row, cut))
    cheapest = min(cheapest, out[-1].flops_per_real_token)
  out.sort(key=lambda c: c.flops_per_real_token)
  return out


def propose(example_lengths: dict, cfg: TrainConfig, model_config: T5Config, data: int,
            model: int, chip: str, hbm_gib: float, share: float,
            configured_per_row: float, batch_multiple: int, length_multiple: int = 8,
            flops_tolerance: float = 0.02, tokens_tolerance: float = 0.05) -> dict:
  """The proposal: of the candidates within `flops_tolerance` of the fewest FLOPs per real
  token (and no more than the configured rows') that fit `hbm_gib` by the memory formula,
  the one with the least activation memory per real token (the FLOP curve is flat near its
  minimum, the memory is not), among those whose batch, a multiple of `batch_multiple`,
  holds the configured run's real tokens per step to within `tokens_tolerance` (where none
  does, the closest)."""
  ranked = candidates(example_lengths, model_config, cfg.data.task_feature_lengths, share,
                      length_multiple, seed=cfg.data.seed, packing=cfg.data.packing,
                      window=cfg.data.packing_window, within=flops_tolerance)
  tokens = configured_per_row * cfg.data.batch_size
  best = ranked[0].flops_per_real_token
  limit = best * (1 + flops_tolerance)
  # Never more FLOPs per real token than the configured rows, by the model (rows left out
  # of `ranked` cost more than `limit` already).
  configured = [c for c in ranked if c.lengths == dict(cfg.data.task_feature_lengths)]
  if configured:
    limit = min(limit, configured[0].flops_per_real_token)
  near = [c for c in ranked if c.flops_per_real_token <= limit]
  base = None  # the state's bytes per device: the same for every candidate
  if plan_lib.gives_estimate(cfg, model_config, data):
    whole = plan_lib.plan(cfg, model_config, data, model, chip)
    base = (sum(whole["per_device_bytes"].values())
            - whole["per_device_bytes"]["activations_estimate"])
  fitting = []
  for c in near:
    batch = batch_for(tokens, c.real_per_row, batch_multiple)
    run = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, task_feature_lengths=c.lengths, batch_size=batch))
    activations = plan_lib.activation_bytes(run, model_config, data, model, chip)
    estimate = None if base is None else (base + activations) / GIB
    if estimate is None or estimate <= hbm_gib:
      off = abs(batch * c.real_per_row / tokens - 1)  # the batch is rounded to the multiple
      fitting.append(((off > tokens_tolerance, off if off > tokens_tolerance else 0.0,
                       activations / (batch * c.real_per_row), c.flops_per_real_token),
                      c, batch, estimate))
  if not fitting:
    raise SbsError(f"none of the {len(near)} cheapest row lengths fits {hbm_gib:g} GiB per "
                   f"device by the memory formula at a batch holding {tokens:.0f} real "
                   "tokens: try a larger slice, --mesh with a larger model axis, "
                   "ParallelismConfig.remat_policy or ParallelismConfig.grad_accum_steps")
  _, c, batch, estimate = min(fitting, key=lambda f: f[0])
  return {"lengths": c.lengths, "batch_size": batch,
          "simulated_real_tokens_per_row": round(c.real_per_row, 2),
          "model_flops_per_real_token": c.flops_per_real_token,
          "cut_share": round(c.cut_share, 4),
          "estimate_gib": None if estimate is None else round(estimate, 3),
          "candidates_within_tolerance": len(near),
          "cheapest": dataclasses.asdict(ranked[0])}
