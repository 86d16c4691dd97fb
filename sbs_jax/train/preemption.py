"""Saving and stopping when the job is told it is about to be preempted.

Cloud TPU spot / preemptible VMs (and most schedulers) send SIGTERM some seconds before
they take the machine away. The training loop asks `PreemptionWatch.reached(step)` after
every step; when it says yes, the loop saves a checkpoint of that very step and stops with
`Preempted`, and rerunning the same command resumes from there with nothing lost.

One process: our own SIGTERM handler sets a flag (installed only in the main thread and
restored on `close`). Several processes (`jax.distributed` initialised): JAX's preemption
sync manager already listens for SIGTERM on every host and agrees on one step at which all
hosts stop (`multihost_utils.reached_preemption_sync_point`), so that every host saves the
same step; we do not install a handler of our own there.
"""

from __future__ import annotations

import logging
import signal
import threading

from sbs_jax.errors import SbsError

log = logging.getLogger(__name__)

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a job ended by SIGTERM


class Preempted(SbsError):
  """Training stopped early on a preemption notice, after saving a checkpoint."""

  def __init__(self, step: int, model_dir: str):
    self.step = step
    super().__init__(f"preempted (SIGTERM): saved a checkpoint of step {step} in "
                     f"{model_dir}; run the same command again to resume from it")


def _multiprocess() -> bool:
  import jax  # pylint: disable=import-outside-toplevel  # not at import: `sbs --help` stays fast
  return jax.distributed.is_initialized() and jax.process_count() > 1


class PreemptionWatch:
  """`reached(step)`: True once a preemption notice arrived (all hosts agree on the step)."""

  def __init__(self):
    self._notice = threading.Event()
    self._previous = None
    self._multiprocess = _multiprocess()
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if not self._notice.is_set():
      log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
    self._notice.set()

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._notice.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
