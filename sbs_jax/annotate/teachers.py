"""Teacher backends: replay of completions already written, or an OpenAI-compatible server.

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


@dataclasses.dataclass
class ClientCounters:
  """What the client saw, for the stats file (this run only; not part of the records)."""
  requests: int = 0
  retries: int = 0
  timeouts: int = 0
  bad_responses: int = 0
  status_counts: dict = dataclasses.field(default_factory=dict)


class _NRefused(Exception):
  """The server refused a request for several samples (it does not take `n`)."""


class _Retryable(Exception):
  """A failure worth another try: 429, 5xx, a dropped connection, a timeout, garbage."""

  def __init__(self, reason: str, retry_after: float | None = None):
    super().__init__(reason)
    self.retry_after = retry_after


class OpenAITeacher:
  """Any OpenAI-compatible server (vLLM, TGI, llama.cpp, hosted APIs).

  Args:
    base_url: e.g. http://127.0.0.1:8000/v1 (the `/completions` or `/chat/completions`
      path is appended).
    model: the model name the server expects.
    api_key: the key, or None for servers without authentication. Only ever sent in the
      Authorization header; never logged or written. Which endpoint may get which key is
      decided by the caller (`endpoint.choose_api_key` for the command).
    endpoint: "completions" (the prompt as text) or "chat" (the prompt as one user turn).
    concurrency: the connection pool size (the job runs as many requests at once).
    timeout: seconds for one request, from connecting to the last byte of the body.
    max_retries: tries after the first before the job stops with a TeacherError.
    retry_base_delay, retry_max_delay: exponential backoff with full jitter, in seconds.
  """

  def __init__(self, base_url: str, model: str, api_key: str | None = None,
               endpoint: str = "completions", concurrency: int = 16,
               timeout: float = 120.0, max_retries: int = 8, max_tokens: int = 256,
               temperature: float = 0.0, stop: Sequence[str] = (),
               retry_base_delay: float = 0.5, retry_max_delay: float = 30.0,
               seed: int | None = None):
    if endpoint not in ("completions", "chat"):
      raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
    self.name = f"openai:{model}"
    self._base_url = base_url
    self._url = base_url.rstrip("/") + ("/completions" if endpoint == "completions"
                                        else "/chat/completions")
    self.shown_url = redact_url(self._url)  # the only form of the URL that is printed
    api_key = api_key.strip() if api_key else None
    if api_key and any(ord(c) <= 32 or ord(c) >= 127 for c in api_key):
      raise TeacherError("the API key holds whitespace, control or non-ASCII characters "
                         "inside it: pass the key alone")
    if api_key and "@" in base_url.split("://", 1)[-1].split("/", 1)[0]:
      raise TeacherError(f"{redact_url(base_url)} holds credentials and an API key is "
                         "given too: use one or the other")
    self._model = model
    self._api_key = api_key or None
    self._endpoint = endpoint
    self._concurrency = concurrency
    self._timeout = timeout
    self._max_retries = max_retries
    self._max_tokens = max_tokens
    self._temperature = temperature
    self._stop = list(stop)[:4]
    self._base_delay = retry_base_delay
    self._max_delay = retry_max_delay
    self._rng = random.Random(seed)
    self._session = None
    self.honours_n: bool | None = None  # unknown until a request with n > 1 is answered
    self.counters = ClientCounters()
    self.settings = {"model": model, "endpoint": endpoint, "max_tokens": max_tokens,
                     "temperature": temperature, "stop": self._stop}

  @property
  def several_per_request(self) -> bool:
    return self.honours_n is not False

  def _redact(self, text: str) -> str:
    return redact_text(text, self._base_url, self._api_key)

  async def _get_session(self):
    import aiohttp  # pylint: disable=import-outside-toplevel
    if self._session is None:
      headers = {"Content-Type": "application/json"}
      if self._api_key:
        headers["Authorization"] = f"Bearer {self._api_key}"
      self._session = aiohttp.ClientSession(
          headers=headers,
          connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0,
                                         ttl_dns_cache=300),
          timeout=aiohttp.ClientTimeout(total=self._timeout))
    return self._session

  def _payload(self, prompt: str, n: int = 1) -> dict:
    body = {"model": self._model, "max_tokens": self._max_tokens,
            "temperature": self._temperature}
    if n > 1:  # left out for one sample: the request is then as it always was
      body["n"] = n
    if self._stop:
      body["stop"] = self._stop
    if self._endpoint == "completions":
      body["prompt"] = prompt
    else:
      body["messages"] = [{"role": "user", "content": prompt}]
    return body

  def _read_answer(self, data, n: int = 1) -> list[Completion]:
    """Up to `n` completions of a response, in the order of their `index`, with its
    usage split evenly over them."""
    try:
      choices = list(data["choices"])
      if not choices:
        raise IndexError("no choices")
      if all(isinstance(c.get("index"), int) for c in choices):
        choices.sort(key=lambda c: c["index"])
      texts = []
      for choice in choices[:n]:
        text = choice["text"] if self._endpoint == "completions" else (
            choice["message"]["content"])
        if not isinstance(text, str):
          raise TypeError("completion text is not a string")
        texts.append(text)
      usage = data.get("usage") or {}
      prompt_tokens = split_evenly(int(usage.get("prompt_tokens") or 0), len(texts))
      completion_tokens = split_evenly(int(usage.get("completion_tokens") or 0), len(texts))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
      raise _Retryable(f"response without a completion ({type(e).__name__}: {e})")
    return [Completion(t, p, c) for t, p, c in zip(texts, prompt_tokens, completion_tokens)]

  async def _attempt(self, session, payload: dict) -> list[Completion]:
    import aiohttp  # pylint: disable=import-outside-toplevel
    self.counters.requests += 1
    try:
      async with session.post(self._url, json=payload) as resp:
        status = resp.status
        self.counters.status_counts[status] = self.counters.status_counts.get(status, 0) + 1
        body = await resp.read()
        if status in RETRY_STATUSES:
          retry_after = _retry_after(resp.headers.get("Retry-After"))
          raise _Retryable(f"HTTP {status}", retry_after)
        if status in N_REFUSED_STATUSES and payload.get("n", 1) > 1:
          raise _NRefused(f"HTTP {status}")
        if status != 200:
          snippet = self._redact(body[:300].decode("utf-8", "replace"))
          raise TeacherError(f"the teacher server refused the request: HTTP {status} "
                             f"from {self.shown_url}: {snippet}")
    except asyncio.TimeoutError:
      self.counters.timeouts += 1
      raise _Retryable(f"no answer within {self._timeout:g}s") from None
    except (aiohttp.ClientError, OSError) as e:
      raise _Retryable(f"{type(e).__name__}: {self._redact(str(e))[:200]}") from None
    try:
      data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
      self.counters.bad_responses += 1
      raise _Retryable("the body is not JSON") from None
    try:
      return self._read_answer(data, payload.get("n", 1))
    except _Retryable:
      self.counters.bad_responses += 1
      raise

  def _learn_n(self, asked: int, got: int, why: str = "") -> None:
    """Remembers from an answer to a request with n = `asked` whether the server takes n."""
    if got >= asked:
      if self.honours_n is None:
        self.honours_n = True
      return
    if self.honours_n is not False:
      log.warning("%s answered %s for n=%d samples: asking for each sample with a request "
                  "of its own from now on", self.shown_url, why or f"{got} choice(s)", asked)
    self.honours_n = False

  async def complete(self, example: Example, prompt: str,
                     samples: Sequence[int] = (0,)) -> list[Completion]:
    session = await self._get_session()
    n = len(samples)
    payload = self._payload(prompt, n)
    last = ""
    for attempt in range(self._max_retries + 1):
      try:
        completions = await self._attempt(session, payload)
        if n > 1:
          self._learn_n(n, len(completions))
        return completions
      except _NRefused as e:
        self._learn_n(n, 0, str(e))
        return []
      except _Retryable as e:
        last = self._redact(str(e))
        if attempt == self._max_retries:
          break
        self.counters.retries += 1
        cap = min(self._max_delay, self._base_delay * 2 ** attempt)
        delay = self._rng.uniform(0, cap)
        if e.retry_after is not None:
          delay = max(delay, min(e.retry_after, self._max_delay))
        await asyncio.sleep(delay)
    raise TeacherError(f"the teacher at {self.shown_url} failed {self._max_retries + 1} times "
                       f"for example {example.id!r} (last: {last}); completed examples are "
                       "kept: rerun the same command to resume")

  async def aclose(self) -> None:
    if self._session is not None:
      await self._session.close()
      self._session = None


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
