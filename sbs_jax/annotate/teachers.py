"""Teacher backends: replay of completions already written, or an OpenAI-compatible server.

A teacher is asked for one example at a time through `await teacher.complete(example,
prompt_text)` and answers a `Completion`. The job owns the concurrency; a teacher only
has to be safe to call from many coroutines of one event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
from typing import Protocol, Sequence

from sbs_jax.redact import redact_text, redact_url
from sbs_jax.data.readers import Example
from sbs_jax.errors import TeacherError

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


@dataclasses.dataclass(frozen=True)
class Completion:
  text: str
  prompt_tokens: int = 0
  completion_tokens: int = 0


class Teacher(Protocol):
  name: str  # written into every record's `teacher` field
  settings: dict  # what else changes its answers (the annotation job's manifest pins it)

  async def complete(self, example: Example, prompt: str) -> Completion:
    ...

  async def aclose(self) -> None:
    ...


class ReplayTeacher:
  """Answers with completions a teacher already wrote, aligned with the examples by index."""

  def __init__(self, completions: Sequence[str], source: str):
    self._completions = completions
    self.name = f"replay:{source}"
    digest = hashlib.sha256(json.dumps(list(completions), ensure_ascii=False).encode("utf-8"))
    self.settings = {"completions_sha256": digest.hexdigest()[:16]}

  async def complete(self, example: Example, prompt: str) -> Completion:
    return Completion(self._completions[example.index])

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
    self.counters = ClientCounters()
    self.settings = {"model": model, "endpoint": endpoint, "max_tokens": max_tokens,
                     "temperature": temperature, "stop": self._stop}

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

  def _payload(self, prompt: str) -> dict:
    body = {"model": self._model, "max_tokens": self._max_tokens,
            "temperature": self._temperature}
    if self._stop:
      body["stop"] = self._stop
    if self._endpoint == "completions":
      body["prompt"] = prompt
    else:
      body["messages"] = [{"role": "user", "content": prompt}]
    return body

  def _read_answer(self, data) -> Completion:
    try:
      choice = data["choices"][0]
      text = choice["text"] if self._endpoint == "completions" else (
          choice["message"]["content"])
      if not isinstance(text, str):
        raise TypeError("completion text is not a string")
      usage = data.get("usage") or {}
      return Completion(text, int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
      raise _Retryable(f"response without a completion ({type(e).__name__}: {e})")

  async def _attempt(self, session, payload: dict) -> Completion:
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
      return self._read_answer(data)
    except _Retryable:
      self.counters.bad_responses += 1
      raise

  async def complete(self, example: Example, prompt: str) -> Completion:
    session = await self._get_session()
    payload = self._payload(prompt)
    last = ""
    for attempt in range(self._max_retries + 1):
      try:
        return await self._attempt(session, payload)
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


def _retry_after(value: str | None) -> float | None:
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:
    return None
