"""The reference recipe of `sbs bench`: HF transformers T5, two forward passes per step.

Kept apart from `sbs_jax/perf/bench.py` so that torch and transformers are imported only here,
and only when `--reference` asks for them. Inputs: with `--mixture`, the very examples of our
timed packed rows, cut back out of them and padded to the longest per batch, as
`DataCollatorForSeq2Seq` pads them (labels padded with -100).
"""

from __future__ import annotations

import os
import time

import numpy as np

from sbs_jax.convert.hf import config_to_hf
from sbs_jax.errors import SbsError
from sbs_jax.train.loss import LABEL, RATIONALE

WARMUP = 2  # steps before timing, ours and the reference alike


def paired_examples(batches: list[dict]) -> list[tuple[np.ndarray, ...]]:
  """(predict input, explain input, label, rationale) of every example in packed rows."""
  out = []
  for b in batches:
    for enc, es, tgt, ds, task in zip(b["encoder_input_tokens"], b["encoder_segment_ids"],
                                      b["decoder_target_tokens"], b["decoder_segment_ids"],
                                      b["decoder_task_ids"]):
      for seg in range(1, int(ds.max()) + 1, 2):
        if not ((task[ds == seg] == LABEL).all() and (task[ds == seg + 1] == RATIONALE).any()):
          raise SbsError("--reference with --mixture needs a *_paired task")
        out.append((enc[es == seg], enc[es == seg + 1], tgt[ds == seg], tgt[ds == seg + 1]))
  return out


def _pad(seqs, value: int) -> np.ndarray:
  """Pads to the longest sequence, as DataCollatorForSeq2Seq does."""
  out = np.full((len(seqs), max(len(s) for s in seqs)), value, np.int64)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out


def reference_batches(examples, size: int) -> list[dict]:
  """The HF recipe's padded {"pred": ..., "expl": ...} numpy batches of `size` examples."""
  out = []
  for i in range(0, len(examples) - size + 1, size):
    chunk = examples[i:i + size]
    out.append({name: {"input_ids": _pad([e[j] for e in chunk], 0),
                       "attention_mask": _pad([np.ones_like(e[j]) for e in chunk], 0),
                       "labels": _pad([e[j + 2] for e in chunk], -100)}
                for name, j in (("pred", 0), ("expl", 1))})
  return out


def reference_stats(batches: list[dict]) -> dict:
  parts = [p for b in batches for p in b.values()]
  enc = sum(int(p["attention_mask"].sum()) for p in parts)
  dec = sum(int((p["labels"] >= 0).sum()) for p in parts)
  enc_slots, dec_slots = (sum(p[k].size for p in parts) for k in ("input_ids", "labels"))
  return {"examples": sum(len(b["pred"]["input_ids"]) for b in batches), "target_tokens": dec,
          "non_padding_fraction": (enc + dec) / (enc_slots + dec_slots),
          "non_padding_encoder": enc / enc_slots, "non_padding_decoder": dec / dec_slots}


def torch_modules():
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SbsError(f"--reference needs the hf extra (pip install -e '.[hf]'): {e}") from e
  torch.set_num_threads(os.cpu_count() or 1)
  return torch, transformers


def hf_model(config, seed: int = 0):
  """A randomly initialised HF T5 v1.1 (gated-gelu) of our config's dims, and its device."""
  torch, transformers = torch_modules()
  hf = transformers.T5Config(**config_to_hf(config))  # the same mapping export-hf writes
  torch.manual_seed(seed)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  # Subnormal floats (AdamW's second moments of tiny gradients, first steps from random
  # init) run many times slower on x86 CPUs unless flushed to zero. XLA's CPU runtime
  # flushes them, so the reference does too: otherwise its first rounds would be slowed.
  torch.set_flush_denormal(True)
  return transformers.T5ForConditionalGeneration(hf).to(device), device


def _timed_loop(torch, device: str, fn, count: int) -> float:
  """Seconds of `count` calls of fn(), synchronised on CUDA."""
  start = time.perf_counter()
  for _ in range(count):
    fn()
  if device == "cuda":
    torch.cuda.synchronize()
  return time.perf_counter() - start


def prepare_reference(config, warm: list[dict], timed: list[dict], seed: int = 0):
  """The HF recipe: two forward passes, 0.5 * l1 + 0.5 * l2, AdamW; FLOPs by torch."""
  torch, _ = torch_modules()
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
  model, device = hf_model(config, seed)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
  warm, timed = ([{k: {n: torch.from_numpy(t).to(device) for n, t in part.items()}
                   for k, part in b.items()} for b in x] for x in (warm, timed))
  box = {"step": 0}

  def step(b):
    with torch.autocast(device, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16"):
      loss = 0.5 * model(**b["pred"]).loss + 0.5 * model(**b["expl"]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    box["loss"] = loss

  counter = FlopCounterMode(display=False)
  with counter:
    step(warm[0])
  for i in range(1, WARMUP):
    step(warm[i % len(warm)])
  info = {"flops_per_step_torch": float(counter.get_total_flops()), "device": device,
          "parameters": sum(p.numel() for p in model.parameters())}

  def next_step():
    step(timed[box["step"] % len(timed)])
    box["step"] += 1

  def run(count: int) -> float:
    seconds = _timed_loop(torch, device, next_step, count)
    info["loss"] = float(box["loss"].detach())
    return seconds

  return info, run


def prepare_reference_decode(config, inputs: np.ndarray, decode_len: int, seed: int = 0):
  """`generate(max_new_tokens=decode_len, do_sample=False, num_beams=1)`, EOS disabled."""
  torch, _ = torch_modules()
  model, device = hf_model(config, seed)
  model.eval()
  model.generation_config.eos_token_id = None  # all `decode_len` tokens, as ours
  x = torch.from_numpy(inputs.astype(np.int64)).to(device)
  info = {"device": device}

  def generate():
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                enabled=config.dtype == "bfloat16"):
      info["decoded_shape"] = list(model.generate(
          input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=decode_len,
          do_sample=False, num_beams=1).shape)

  _timed_loop(torch, device, generate, WARMUP)
  return info, lambda count: _timed_loop(torch, device, generate, count)
