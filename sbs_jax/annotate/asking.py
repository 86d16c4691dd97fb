"""Asking the teacher: every pending (example, samples) pair of a shard, a number of requests
at a time, each answer journalled the moment it arrives (the annotation job, job.py, owns
what is pending and what becomes of the answers)."""

from __future__ import annotations

import asyncio
import collections
import signal
from typing import Sequence

from sbs_jax.annotate.cost import Ledger
from sbs_jax.annotate.journal import Journal
from sbs_jax.annotate.prompts import Prompt
from sbs_jax.annotate.teachers import Teacher
from sbs_jax.data.readers import Example
from sbs_jax.errors import SbsError
from sbs_jax.jobdir.progress import Progress


async def ask(teacher: Teacher, prompt: Prompt, concurrency: int,
              pending: Sequence[tuple[Example, tuple[int, ...]]], hashes: dict[int, str],
              journal: Journal, progress: Progress, ledger: Ledger) -> int:
  """Asks the teacher for every pending (example, samples), `concurrency` requests at a
  time; returns how many samples were left unasked because the budget was spent.

  Samples of one example go in one request while the teacher takes several at once;
  those a response leaves out are asked again (one request each once the teacher is
  known not to take several). Each answer is journalled as it arrives.

  Ctrl-C (SIGINT) stops the run in every case: no example is started after it, the
  requests in flight are cancelled, and KeyboardInterrupt is raised once they are gone
  (the journal keeps every answer received). Relying on asyncio.run's own SIGINT handling
  was not enough: in CI a run given SIGINT finished all its rows and exited 0 (probably a
  cancellation taken for a timeout inside the HTTP client and retried; not confirmed).
  """
  queue = collections.deque(pending)  # shared by all workers: each item taken once
  interrupted = asyncio.Event()
  over_budget = asyncio.Event()

  def next_item():
    while queue:
      ex, samples = queue.popleft()
      if len(samples) > 1 and not teacher.several_per_request:
        queue.extendleft((ex, (s,)) for s in reversed(samples))
        continue
      return ex, samples
    return None

  async def worker():
    while not interrupted.is_set() and (item := next_item()) is not None:
      if ledger.reached():
        queue.appendleft(item)
        over_budget.set()
        return
      ex, samples = item
      completions = await teacher.complete(ex, prompt.render(ex), samples)
      completions = completions[:len(samples)]
      if not completions and len(samples) == 1:
        raise SbsError(f"the teacher gave no completion for example {ex.id!r}")
      for sample, c in zip(samples, completions):
        journal.append(ex.index, sample, hashes[ex.index], c.text, c.prompt_tokens,
                       c.completion_tokens)
        ledger.add(c.prompt_tokens, c.completion_tokens)
        progress.update()
      if len(completions) < len(samples):  # the rest: asked again by the next free worker
        queue.appendleft((ex, samples[len(completions):]))

  requests = sum(len(s) for _, s in pending) if not teacher.several_per_request else (
      len(pending))
  workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, requests))]

  def on_sigint():
    interrupted.set()
    for w in workers:
      w.cancel()

  loop = asyncio.get_running_loop()
  handled = {}  # signal -> the Python-level handler the loop's replaces
  for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM (a kill, a scheduler) as Ctrl-C
    try:
      previous = signal.getsignal(sig)
      loop.add_signal_handler(sig, on_sigint)
      handled[sig] = previous
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
      pass
  try:
    await asyncio.gather(*workers)
  except asyncio.CancelledError:
    if not interrupted.is_set():
      raise
  finally:
    for sig, previous in handled.items():
      loop.remove_signal_handler(sig)  # this sets SIG_DFL: put back what was there
      if previous is not None:
        signal.signal(sig, previous)
    for w in workers:
      w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await teacher.aclose()
  if interrupted.is_set():
    raise KeyboardInterrupt
  return sum(len(s) for _, s in queue) if over_budget.is_set() else 0
