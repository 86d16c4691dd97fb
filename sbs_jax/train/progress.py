"""Training progress on stderr (host 0): a tqdm bar on a terminal, a plain line per log step
in a log file; each line says step/total, the losses, examples/s and the time left."""

from __future__ import annotations

import sys
import time

import jax


def duration(seconds: float) -> str:
  """1h02m, 4m05s or 12s."""
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  if h:
    return f"{h}h{m:02d}m"
  return f"{m}m{s:02d}s" if m else f"{s}s"


def log_line(step: int, total: int, metrics: dict, eta_s: float | None) -> str:
  """'step 25/300: loss 3.2104 (label 1.0312, rationale 5.3896), 41.2 examples/s, ETA 6m40s'."""
  line = (f"step {step}/{total}: loss {metrics['loss']:.4f} (label "
          f"{metrics['label_loss']:.4f}, rationale {metrics['rationale_loss']:.4f})")
  if "examples_per_s" in metrics:
    line += f", {metrics['examples_per_s']:.1f} examples/s"
  if eta_s is not None:
    line += f", ETA {duration(eta_s)}"
  return line


def _percent_keys(metrics: dict) -> dict:
  return {(f"{k}_pct" if k.endswith("accuracy") else k): v for k, v in metrics.items()}


def eval_line(step: int | None, split: str, metrics: dict, capped_by: str = "") -> str:
  """'step 100: validation accuracy 41.20% (256 examples)', or when only part of the split
  was scored 'step 100: validation accuracy 41.20% on 256 of 1,221 examples (capped by
  EvalConfig.max_examples)'; without a step: 'test accuracy ...'."""
  shown = [f"{k} {v:.2f}%" for k, v in metrics.items() if k.endswith("accuracy")]
  shown += [f"{k} {v:.4g}" for k, v in metrics.items()
            if not k.endswith("accuracy") and k not in ("examples", "split_examples")]
  count = ""
  if "split_examples" in metrics:
    count = (f" on {metrics['examples']:,} of {metrics['split_examples']:,} examples"
             f" (capped by {capped_by or 'a limit'})")
  elif "examples" in metrics:
    count = f" ({metrics['examples']:,} examples)"
  head = f"step {step}: " if step is not None else ""
  return f"{head}{split} {', '.join(shown)}{count}"


def labelled(metrics: dict | None) -> dict | None:
  """Metrics with the unit in the key: accuracies (percent, 0-100) get `_pct`."""
  return None if metrics is None else _percent_keys(metrics)


class StepProgress:
  """Reports each training step (a job over items reports with jobdir/progress.py);
  `note` prints a line without breaking the bar."""

  def __init__(self, total: int, start: int, stream=None):
    self._stream = stream or sys.stderr
    self._total, self._start = total, start
    self._active = jax.process_index() == 0
    self._first_done: tuple[int, float] | None = None  # after the compiling first step
    self._bar = None
    if self._active and self._stream.isatty() and total > start:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, initial=start, file=self._stream, unit="step",
                       dynamic_ncols=True, desc="train")

  def eta(self, step: int) -> float | None:
    """Seconds left at the mean pace since the first step (which also compiles)."""
    if self._first_done is None or step <= self._first_done[0]:
      return None
    first_step, t0 = self._first_done
    return (time.perf_counter() - t0) / (step - first_step) * (self._total - step)

  def step(self, step: int, metrics: dict | None) -> None:
    """After each step; `metrics` on log steps."""
    if self._first_done is None:
      self._first_done = (step, time.perf_counter())
    if not self._active:
      return
    if self._bar is not None:
      self._bar.update(1)
      if metrics:
        self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
    elif metrics:
      self.note(log_line(step, self._total, metrics, self.eta(step)))

  def note(self, line: str) -> None:
    if not self._active:
      return
    if self._bar is not None:
      self._bar.write(line, file=self._stream)
    else:
      print(line, file=self._stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
