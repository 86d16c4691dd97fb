"""Teacher backends: replay of completions already written, or an OpenAI-compatible server
or a pool of its replicas (pool.py chooses the replica of each try; the offline batch
teacher, batch.py, writes these same request bodies into a file instead).

A teacher is asked for samples of one example at a time through `await
teacher.complete(example, prompt_text, samples)` and answers a list of `Completion`s for
the first of those samples: all of them, or fewer where it cannot give several at once
(the job then asks for the rest again; `several_per_request` says whether to ask for
several together). The job owns the concurrency; a teacher only has to be safe to call
from many coroutines of one event loop.

Several samples from an OpenAI-compatible server go in one request with the API's `n`.
A server that answers with fewer choices than `n` (it ignores `n`, or caps it), or
refuses `n` with HTTP 400/422, is remembered as one that does not take `n`: the missing
samples, and every later example's, are asked for one request each. A response's usage
covers all its choices; it is split evenly over them (remainders to the first ones), so
the tokens journalled per sample add up to what the server counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import random
from typing import Protocol, Sequence

from sbs_jax.annotate.pool import Attempts, ClientCounters, Pool, Replica
from sbs_jax.redact import redact_text, redact_url
from sbs_jax.data.readers import Example
from sbs_jax.errors import TeacherError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# What a server that does not take `n` may answer a request with n > 1.
N_REFUSED_STATUSES = frozenset({400, 422})


@dataclasses.dataclass(frozen=True)
class Completion:
  text: str
  prompt_tokens: int = 0
  completion_tokens: int = 0


class Teacher(Protocol):
  name: str  # written into every record's `teacher` field
  settings: dict  # what else changes its answers (the annotation job's manifest pins it)
  several_per_request: bool  # whether to ask for several samples in one call

  async def complete(self, example: Example, prompt: str,
                     samples: Sequence[int] = (0,)) -> list[Completion]:
    """Completions for the first len(result) of `samples` (at least one when only one
    is asked for)."""
    ...

  async def aclose(self) -> None:
    ...


class ReplayTeacher:
  """Answers with completions a teacher already wrote, aligned with the examples by index:
  one string per example, or a list of K strings (K samples) per example."""

  several_per_request = True

  def __init__(self, completions: Sequence[str] | Sequence[Sequence[str]], source: str):
    self._completions = completions
    self.name = f"replay:{source}"
    several = bool(completions) and not isinstance(completions[0], str)
    self.num_samples = len(completions[0]) if several else 1
    # One string per example hashes as before samples existed (old manifests match).
    digest = hashlib.sha256(json.dumps([list(c) if several else c for c in completions],
                                       ensure_ascii=False).encode("utf-8"))
    self.settings = {"completions_sha256": digest.hexdigest()[:16]}

  def _sample(self, index: int, sample: int) -> str:
    value = self._completions[index]
    return value if isinstance(value, str) else value[sample]

  async def complete(self, example: Example, prompt: str,
                     samples: Sequence[int] = (0,)) -> list[Completion]:
    return [Completion(self._sample(example.index, s)) for s in samples]

  async def aclose(self) -> None:
    pass


class _NRefused(Exception):
  """The server refused a request for several samples (it does not take `n`)."""


class _Retryable(Exception):
  """A failure worth another try: 429, 5xx, a dropped connection, a timeout, garbage."""

  def __init__(self, reason: str, retry_after: float | None = None):
    super().__init__(reason)
    self.retry_after = retry_after


class BadResponse(ValueError):
  """A response body that holds no completion."""


ENDPOINT_PATHS = {"completions": "/completions", "chat": "/chat/completions"}


def request_body(model: str, endpoint: str, max_tokens: int, temperature: float,
                 stop: Sequence[str], prompt: str, n: int = 1) -> dict:
  """The JSON body of one request for `n` completions of `prompt` (the batch teacher
  writes these same bodies into its request files)."""
  body = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
  if n > 1:  # left out for one sample: the request is then as it always was
    body["n"] = n
  if stop:
    body["stop"] = list(stop)
  if endpoint == "completions":
    body["prompt"] = prompt
  else:
    body["messages"] = [{"role": "user", "content": prompt}]
  return body


def read_choices(data, endpoint: str, n: int = 1) -> list[Completion]:
  """Up to `n` completions of a response body, in the order of their `index`, with its
  usage split evenly over them; BadResponse when it holds no completion."""
  try:
    choices = list(data["choices"])
    if not choices:
      raise IndexError("no choices")
    if all(isinstance(c.get("index"), int) for c in choices):
      choices.sort(key=lambda c: c["index"])
    texts = []
    for choice in choices[:n]:
      text = choice["text"] if endpoint == "completions" else choice["message"]["content"]
      if not isinstance(text, str):
        raise TypeError("completion text is not a string")
      texts.append(text)
    usage = data.get("usage") or {}
    prompt_tokens = split_evenly(int(usage.get("prompt_tokens") or 0), len(texts))
    completion_tokens = split_evenly(int(usage.get("completion_tokens") or 0), len(texts))
  except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
    raise BadResponse(f"response without a completion ({type(e).__name__}: {e})") from None
  return [Completion(t, p, c) for t, p, c in zip(texts, prompt_tokens, completion_tokens)]


class OpenAITeacher:
  """Any OpenAI-compatible server (vLLM, TGI, llama.cpp, hosted APIs), or a pool of
  replicas serving the same model (pool.py decides which replica takes each try).

  Args:
    base_url: e.g. http://127.0.0.1:8000/v1 (the `/completions` or `/chat/completions`
      path is appended), or a list of such URLs: replicas of one model.
    model: the model name the servers expect.
    api_key: the key, or None for servers without authentication; for a pool, one per
      URL (a single value goes to every replica). Only ever sent in the Authorization
      header; never logged or written. Which endpoint may get which key is decided by the
      caller (`endpoint.choose_api_key` for the command).
    endpoint: "completions" (the prompt as text) or "chat" (the prompt as one user turn).
    concurrency: requests in flight per replica (and each replica's connection pool).
    timeout: seconds for one request, from connecting to the last byte of the body.
    max_retries: further tries of a request on each replica; the job stops with a
      TeacherError once every replica has failed it 1 + max_retries times.
    retry_base_delay, retry_max_delay: a failed replica's exponential backoff with full
      jitter, in seconds.
  """

  def __init__(self, base_url: str | Sequence[str], model: str,
               api_key: str | None | Sequence[str | None] = None,
               endpoint: str = "completions", concurrency: int = 16,
               timeout: float = 120.0, max_retries: int = 8, max_tokens: int = 256,
               temperature: float = 0.0, stop: Sequence[str] = (),
               retry_base_delay: float = 0.5, retry_max_delay: float = 30.0,
               seed: int | None = None):
    if endpoint not in ENDPOINT_PATHS:
      raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    keys = (list(api_key) if api_key is not None and not isinstance(api_key, str)
            else [api_key] * len(urls))
    if len(keys) != len(urls):
      raise ValueError(f"{len(urls)} URLs but {len(keys)} API keys")
    self.name = f"openai:{model}"
    self.pool = Pool([u.rstrip("/") + ENDPOINT_PATHS[endpoint] for u in urls], concurrency,
                     retry_base_delay, retry_max_delay, random.Random(seed))
    self._base_urls, self._keys = {}, {}  # by id(replica)
    for replica, url, key in zip(self.pool.replicas, urls, keys):
      key = key.strip() if key else None
      if key and any(ord(c) <= 32 or ord(c) >= 127 for c in key):
        raise TeacherError("the API key holds whitespace, control or non-ASCII characters "
                           "inside it: pass the key alone")
      if key and "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise TeacherError(f"{redact_url(url)} holds credentials and an API key is "
                           "given too: use one or the other")
      self._base_urls[id(replica)], self._keys[id(replica)] = url, key or None
    # The only forms of the URLs that are printed.
    self.shown_url = ", ".join(r.shown for r in self.pool.replicas)
    self._model = model
    self._endpoint = endpoint
    self._concurrency = concurrency
    self._timeout = timeout
    self._max_retries = max_retries
    self._max_tokens = max_tokens
    self._temperature = temperature
    self._stop = list(stop)[:4]
    self._sessions: dict[int, object] = {}  # by id(replica)
    self.honours_n: bool | None = None  # unknown until a request with n > 1 is answered
    self.settings = {"model": model, "endpoint": endpoint, "max_tokens": max_tokens,
                     "temperature": temperature, "stop": self._stop}

  @property
  def several_per_request(self) -> bool:
    return self.honours_n is not False

  @property
  def counters(self) -> ClientCounters:
    """This run's counters, summed over the replicas."""
    return self.pool.totals()

  def run_report(self) -> dict:
    """What the stats file records of this run's client: the totals and, per replica (by
    its redacted URL), its own counters."""
    per_replica = {}
    for replica in self.pool.replicas:
      name = replica.shown
      while name in per_replica:  # URLs that differ only in their secrets
        name += "'"
      per_replica[name] = dataclasses.asdict(replica.counters)
    return {"client_this_run": {**dataclasses.asdict(self.counters),
                                "replicas": per_replica}}

  def _redact(self, replica: Replica, text: str) -> str:
    return redact_text(text, self._base_urls[id(replica)], self._keys[id(replica)])

  async def _get_session(self, replica: Replica):
    import aiohttp  # pylint: disable=import-outside-toplevel
    session = self._sessions.get(id(replica))
    if session is None:
      headers = {"Content-Type": "application/json"}
      if self._keys[id(replica)]:
        headers["Authorization"] = f"Bearer {self._keys[id(replica)]}"
      session = aiohttp.ClientSession(
          headers=headers,
          connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0,
                                         ttl_dns_cache=300),
          timeout=aiohttp.ClientTimeout(total=self._timeout))
      self._sessions[id(replica)] = session
    return session

  def _payload(self, prompt: str, n: int = 1) -> dict:
    return request_body(self._model, self._endpoint, self._max_tokens, self._temperature,
                        self._stop, prompt, n)

  async def _attempt(self, replica: Replica, payload: dict) -> list[Completion]:
    import aiohttp  # pylint: disable=import-outside-toplevel
    counters = replica.counters
    session = await self._get_session(replica)
    counters.requests += 1
    try:
      async with session.post(replica.url, json=payload) as resp:
        status = resp.status
        counters.status_counts[status] = counters.status_counts.get(status, 0) + 1
        body = await resp.read()
        if status in RETRY_STATUSES:
          retry_after = _retry_after(resp.headers.get("Retry-After"))
          raise _Retryable(f"HTTP {status}", retry_after)
        if status in N_REFUSED_STATUSES and payload.get("n", 1) > 1:
          raise _NRefused(f"HTTP {status}")
        if status != 200:
          snippet = self._redact(replica, body[:300].decode("utf-8", "replace"))
          raise TeacherError(f"the teacher server refused the request: HTTP {status} "
                             f"from {replica.shown}: {snippet}")
    except asyncio.TimeoutError:
      counters.timeouts += 1
      raise _Retryable(f"no answer within {self._timeout:g}s") from None
    except (aiohttp.ClientError, OSError) as e:
      raise _Retryable(f"{type(e).__name__}: {self._redact(replica, str(e))[:200]}") from None
    try:
      data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
      counters.bad_responses += 1
      raise _Retryable("the body is not JSON") from None
    try:
      return read_choices(data, self._endpoint, payload.get("n", 1))
    except BadResponse as e:
      counters.bad_responses += 1
      raise _Retryable(str(e)) from None

  def _learn_n(self, replica: Replica, asked: int, got: int, why: str = "") -> None:
    """Remembers from an answer to a request with n = `asked` whether the server takes n."""
    if got >= asked:
      if self.honours_n is None:
        self.honours_n = True
      return
    if self.honours_n is not False:
      log.warning("%s answered %s for n=%d samples: asking for each sample with a request "
                  "of its own from now on", replica.shown, why or f"{got} choice(s)", asked)
    self.honours_n = False

  async def complete(self, example: Example, prompt: str,
                     samples: Sequence[int] = (0,)) -> list[Completion]:
    n = len(samples)
    payload = self._payload(prompt, n)
    attempts = Attempts(self._max_retries + 1)
    while not self.pool.exhausted(attempts):
      replica = await self.pool.acquire(attempts)
      failed, retry_after = False, None
      try:
        completions = await self._attempt(replica, payload)
      except _NRefused as e:
        self._learn_n(replica, n, 0, str(e))
        return []
      except _Retryable as e:
        failed, retry_after = True, e.retry_after
        attempts.failed(replica, self._redact(replica, str(e)))
        if not self.pool.exhausted(attempts):
          replica.counters.retries += 1
        continue
      finally:  # a refusal (4xx) or a cancellation is no failure of the replica
        self.pool.release(replica, ok=not failed, retry_after=retry_after)
      if n > 1:
        self._learn_n(replica, n, len(completions))
      return completions
    raise TeacherError(self._gave_up(example, attempts))

  def _gave_up(self, example: Example, attempts: Attempts) -> str:
    tries = self._max_retries + 1
    if len(self.pool.replicas) == 1:
      replica = self.pool.replicas[0]
      what = (f"the teacher at {replica.shown} failed {tries} times for example "
              f"{example.id!r} (last: {attempts.last[id(replica)]})")
    else:
      lasts = "; ".join(f"{r.shown}: {attempts.last[id(r)]}" for r in self.pool.replicas)
      what = (f"every replica of the teacher failed {tries} times for example "
              f"{example.id!r} (last failures: {lasts})")
    return f"{what}; completed examples are kept: rerun the same command to resume"

  async def aclose(self) -> None:
    sessions, self._sessions = list(self._sessions.values()), {}
    for session in sessions:
      await session.close()
    self.pool.forget_loop()


def split_evenly(total: int, parts: int) -> list[int]:
  """`total` in `parts` whole shares that differ by at most one, the larger ones first."""
  if parts <= 0:
    return []
  share, rest = divmod(max(total, 0), parts)
  return [share + (i < rest) for i in range(parts)]


def _retry_after(value: str | None) -> float | None:
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:
    return None
