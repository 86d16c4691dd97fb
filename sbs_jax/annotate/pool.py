"""A pool of replicas serving one teacher model (`sbs annotate --base_url` given several
times): which replica takes the next request, and which ones are resting after a failure.

- Each replica takes at most `limit` requests at once (`--concurrency`, per replica). A
  request goes to the healthy replica with the most free slots; replicas tied on free slots
  take turns (round robin), so that an idle pool spreads its first requests evenly.
- A replica whose request fails (connection refused, 429, 5xx, a timeout, a body that is
  not a completion) rests for an exponential, fully jittered cool-down of its own (`base *
  2**k` capped at `max_delay`, k its failures in a row; at least a server's `Retry-After`);
  a success ends the run of failures. A resting replica takes no new request, so a retry
  goes to another replica when one is healthy, and waits for the first to wake when none is.
  Awake again, a replica whose last request failed takes one request at a time until one
  succeeds, so a replica that hangs holds up one request per cool-down, not all its slots.
- A request is tried at most `tries` times on each replica; it fails only once every
  replica has used up its tries on it (`Attempts`).

The pool keeps no connection of its own: the teacher (teachers.py) owns the HTTP sessions,
one per replica, and asks the pool for a replica before each try.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Callable, Sequence

from sbs_jax.redact import redact_url


@dataclasses.dataclass
class ClientCounters:
  """What the client saw (this run only; not part of the records): for one replica, or
  summed over a pool."""
  requests: int = 0
  retries: int = 0  # failed tries that were tried again (here or on another replica)
  timeouts: int = 0
  bad_responses: int = 0
  status_counts: dict = dataclasses.field(default_factory=dict)

  def add(self, other: "ClientCounters") -> None:
    self.requests += other.requests
    self.retries += other.retries
    self.timeouts += other.timeouts
    self.bad_responses += other.bad_responses
    for status, count in other.status_counts.items():
      self.status_counts[status] = self.status_counts.get(status, 0) + count


class Replica:
  """One server of the pool: its URL (and the form of it that may be printed), its slots,
  its cool-down and its counters."""

  def __init__(self, url: str, limit: int):
    self.url = url
    self.shown = redact_url(url)
    self.limit = limit
    self.in_flight = 0
    self.failures_in_a_row = 0
    self.resting_until = 0.0
    self.counters = ClientCounters()

  @property
  def free(self) -> int:
    """Slots for new requests: after a failure, one at a time until a request succeeds
    (a replica that hangs then holds up one request per cool-down, not `limit`)."""
    return (1 if self.failures_in_a_row else self.limit) - self.in_flight


class Attempts:
  """The tries of one request, per replica, and the last failure on each."""

  def __init__(self, tries: int):
    self.tries = tries
    self.count: dict[int, int] = {}  # id(replica) -> tries
    self.last: dict[int, str] = {}  # id(replica) -> the last failure's reason
    self.previous: Replica | None = None  # the replica of the last failed try

  def failed(self, replica: Replica, reason: str) -> None:
    self.count[id(replica)] = self.count.get(id(replica), 0) + 1
    self.last[id(replica)] = reason
    self.previous = replica

  def used_up(self, replica: Replica) -> bool:
    return self.count.get(id(replica), 0) >= self.tries


class Pool:
  """The replicas of one teacher; `acquire` a replica for a try, `release` it after."""

  def __init__(self, urls: Sequence[str], limit: int, base_delay: float, max_delay: float,
               rng: random.Random | None = None,
               clock: Callable[[], float] = time.monotonic):
    if not urls:
      raise ValueError("a pool needs at least one URL")
    self.replicas = [Replica(url, limit) for url in urls]
    self._base_delay = base_delay
    self._max_delay = max_delay
    self._rng = rng or random.Random()
    self._clock = clock
    self._turn = 0  # where the round robin among tied replicas starts next
    self._changed: asyncio.Event | None = None  # set on every release; made in the loop

  def pick(self, attempts: Attempts | None = None) -> Replica | None:
    """The replica for the next try, or None when none may take it now (all resting,
    full, or used up by this request). Prefers a replica other than the one that just
    failed this request."""
    now = self._clock()
    ready = [r for r in self.replicas if r.resting_until <= now and r.free > 0
             and not (attempts and attempts.used_up(r))]
    if attempts is not None and attempts.previous is not None and len(ready) > 1:
      ready = [r for r in ready if r is not attempts.previous] or ready
    if not ready:
      return None
    most = max(r.free for r in ready)
    tied = [r for r in ready if r.free == most]
    order = {id(r): (i - self._turn) % len(self.replicas)
             for i, r in enumerate(self.replicas)}
    chosen = min(tied, key=lambda r: order[id(r)])
    self._turn = (self.replicas.index(chosen) + 1) % len(self.replicas)
    return chosen

  async def acquire(self, attempts: Attempts) -> Replica:
    """Waits for a replica that may take this request's next try, and takes a slot of it.
    The caller checks first that some replica is not used up (`exhausted`)."""
    if self._changed is None:
      self._changed = asyncio.Event()
    while True:
      replica = self.pick(attempts)
      if replica is not None:
        replica.in_flight += 1
        return replica
      now = self._clock()
      waking = [r.resting_until - now for r in self.replicas
                if r.resting_until > now and not attempts.used_up(r)]
      # No await between the pick and the clear: a release cannot slip in unseen.
      self._changed.clear()
      try:
        await asyncio.wait_for(self._changed.wait(), min(waking) if waking else None)
      except asyncio.TimeoutError:
        pass

  def release(self, replica: Replica, ok: bool, retry_after: float | None = None) -> None:
    """Gives the slot back; a failure makes the replica rest (see the module's doc)."""
    replica.in_flight -= 1
    if ok:
      replica.failures_in_a_row = 0
    else:
      cap = min(self._max_delay, self._base_delay * 2 ** min(replica.failures_in_a_row, 40))
      replica.failures_in_a_row += 1
      delay = self._rng.uniform(0, cap)
      if retry_after is not None:
        delay = max(delay, min(retry_after, self._max_delay))
      replica.resting_until = max(replica.resting_until, self._clock() + delay)
    if self._changed is not None:
      self._changed.set()

  def forget_loop(self) -> None:
    """Drops what belongs to the event loop that ran (a later run makes its own)."""
    self._changed = None

  def exhausted(self, attempts: Attempts) -> bool:
    """Whether every replica has used up its tries on this request."""
    return all(attempts.used_up(r) for r in self.replicas)

  def totals(self) -> ClientCounters:
    total = ClientCounters()
    for replica in self.replicas:
      total.add(replica.counters)
    return total
