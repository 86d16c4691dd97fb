"""Progress of a job over a known number of items (examples, rows): a tqdm bar on a
terminal; elsewhere (a log file, CI) a line every 10% with the rate and the time left,
logged by the command's own logger. (Training reports per step instead: train/progress.py.)"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable


class Progress:
  """A tqdm bar (rate, ETA) on a terminal; otherwise a log line every 10%. `note`, when
  given, adds its text to both (e.g. the dollars spent so far)."""

  def __init__(self, total: int, done: int, label: str, enabled: bool | None, *,
               logger: logging.Logger, unit: str = "ex",
               note: Callable[[], str] | None = None):
    self.total, self.done = total, done
    self._log = logger  # the command's own (`sbs predict`'s lines are logged as predict's)
    self._label = label
    self._bar = None
    self._next_log = 0.1
    self._start = time.monotonic()
    self._start_done = done
    self._unit = unit
    self._note = note
    tty = sys.stderr.isatty() if enabled is None else enabled
    if tty:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, initial=done, desc=label, unit=unit, dynamic_ncols=True)

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      if self._note is not None:
        self._bar.set_postfix_str(self._note(), refresh=False)
      self._bar.update(n)
    elif self.total and self.done / self.total >= self._next_log:
      self._next_log = (int(self.done / self.total * 10) + 1) / 10
      if time.monotonic() - self._start < 2.0:
        return  # a fast run (e.g. replay) needs no progress lines
      rate = (self.done - self._start_done) / max(time.monotonic() - self._start, 1e-9)
      eta = (self.total - self.done) / rate if rate else float("inf")
      note = f", {self._note()}" if self._note is not None else ""
      self._log.info("%s: %d/%d (%.0f %s/s, ETA %.0fs%s)", self._label, self.done,
                     self.total, rate, self._unit, eta, note)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
