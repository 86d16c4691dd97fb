"""A small OpenAI-compatible HTTP server for tests and client benchmarks, on 127.0.0.1.

It answers `/v1/completions` and `/v1/chat/completions` with a completion computed from
the prompt by `answer_fn`, and can misbehave on purpose: `fault_fn(prompt, attempt)`
names a fault for the attempt-th request (1-based) carrying that prompt:

    "429" / "500" / "401"  that HTTP status
    "hang"                 say nothing for `hang_seconds`, then close
    "garbage_body"         HTTP 200 with a body that is not JSON
    "truncated"            HTTP 200 whose body stops short of its Content-Length
    "garbage_text"         HTTP 200, well-formed, but the completion is nonsense

Several samples (`n` in the request): `n_support` "honour" answers n choices, "ignore"
one (as servers that do not know `n`), "refuse" answers HTTP 400. With `sample_fn(prompt,
k)` the k-th choice generated for a prompt (0-based, counted over all its requests) is
`sample_fn`'s answer, so that samples differ; otherwise every choice is `answer_fn`'s.
Usage counts the prompt once per request and the completion tokens of all its choices.

Run it in a thread (`FakeOpenAIServer(...).start()`) or as a process:
`python -m sbs_jax.testing.fake_openai --port 0` prints the port it listens on. A port out
of range or in use is one line and exit code 2 there (`PortError` from `start()`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import json
import sys
import threading
from typing import Callable

GARBAGE_TEXT = "zxq!! 42 ??? lorem ipsum"


def echo_answer(prompt: str) -> str:
  """A deterministic answer: repeats the last question and 'answers' its length."""
  query = prompt.rsplit("Q:", 1)[-1].split("\nA:", 1)[0].strip()
  return (f"The question has {len(query)} characters. So the answer is {len(query)}."
          "\n\nQ: a run-on exemplar that the parser must cut")


def prompt_of(chat: bool, request: dict) -> str:
  """The prompt of a completions request, or the last message of a chat request."""
  return request["messages"][-1]["content"] if chat else request["prompt"]


def response_body(chat: bool, request: dict, prompt: str, texts: list[str]) -> dict:
  """The JSON body a server answers `request` with, one choice per text (cut at the
  request's stop sequences, as a server honours them). Usage counts the prompt's words
  once and the words of every choice."""
  choices, completion_tokens = [], 0
  for j, text in enumerate(texts):
    for stop in request.get("stop") or ():
      text = text.split(stop)[0]
    if chat:
      choices.append({"index": j, "message": {"role": "assistant", "content": text},
                      "finish_reason": "stop"})
    else:
      choices.append({"index": j, "text": text, "logprobs": None, "finish_reason": "stop"})
    completion_tokens += len(text.split())
  prompt_tokens = len(prompt.split())
  return {"id": "chatcmpl-fake" if chat else "cmpl-fake",
          "object": "chat.completion" if chat else "text_completion", "created": 1700000000,
          "model": request.get("model"), "choices": choices,
          "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}}


class PortError(ValueError):
  """The server cannot listen on the port asked for (out of range, in use, not allowed)."""


def check_port(port) -> None:
  """PortError unless `port` is 0 (any free port) or in 1..65535."""
  if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
    raise PortError(f"--port {port}: out of range: give 1..65535, or 0 for any free port")


def port_problem(port: int, e: Exception) -> str:
  """One line for a failure to listen on 127.0.0.1:`port`."""
  reason = getattr(e, "strerror", None) or str(e)
  hint = ("another program listens there: stop it, or pick another --port (0: any free one)"
          if getattr(e, "errno", None) == errno.EADDRINUSE else
          "pick another --port (ports below 1024 need privileges; 0: any free one)")
  return f"--port {port}: cannot listen on 127.0.0.1:{port} ({reason}): {hint}"


class FakeOpenAIServer:

  def __init__(self, answer_fn: Callable[[str], str] = echo_answer,
               fault_fn: Callable[[str, int], str | None] | None = None,
               hang_seconds: float = 5.0, delay_seconds: float = 0.0,
               port: int = 0, n_support: str = "honour",
               sample_fn: Callable[[str, int], str] | None = None):
    if n_support not in ("honour", "ignore", "refuse"):
      raise ValueError(f"n_support must be honour, ignore or refuse, got {n_support!r}")
    self.answer_fn = answer_fn
    self.n_support = n_support
    self.sample_fn = sample_fn
    self.generated: collections.Counter = collections.Counter()  # prompt -> choices made
    self.n_asked: list[int] = []  # the `n` of each request
    self.bodies: list[dict] = []  # each request's JSON body, as sent
    self.fault_fn = fault_fn or (lambda prompt, attempt: None)
    self.hang_seconds = hang_seconds
    self.delay_seconds = delay_seconds
    self.port = port
    self.attempts: collections.Counter = collections.Counter()  # prompt -> requests
    self.faults: collections.Counter = collections.Counter()  # fault name -> times
    self.log: list[tuple[str, str | None]] = []  # (prompt, fault) per request
    self.auth_headers: list[str | None] = []
    self._lock = threading.Lock()
    self._loop = None
    self._server = None
    self._thread = None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}/v1"

  # ---------------------------------------------------------------- HTTP

  def _decide(self, path: str, headers: dict, body: bytes):
    """Returns (fault, status, payload bytes)."""
    try:
      request = json.loads(body)
      prompt = prompt_of(path.endswith("/chat/completions"), request)
      n = int(request.get("n", 1))
    except (ValueError, KeyError, IndexError, TypeError):
      return None, 400, b'{"error": {"message": "bad request"}}'
    with self._lock:
      self.n_asked.append(n)
      self.bodies.append(request)
      self.attempts[prompt] += 1
      attempt = self.attempts[prompt]
      fault = self.fault_fn(prompt, attempt)
      self.log.append((prompt, fault))
      self.auth_headers.append(headers.get("authorization"))
      if fault:
        self.faults[fault] += 1
    if fault in ("429", "500", "401"):
      return fault, int(fault), json.dumps({"error": {"message": fault}}).encode()
    if n > 1 and self.n_support == "refuse":
      return fault, 400, b'{"error": {"message": "n must be 1"}}'
    texts = [GARBAGE_TEXT if fault == "garbage_text" else self._answer(prompt)
             for _ in range(n if self.n_support == "honour" else 1)]
    payload = json.dumps(response_body(path.endswith("/chat/completions"), request, prompt,
                                       texts)).encode()
    if fault == "garbage_body":
      payload = b"<html>502 Bad Gateway, or so</html>"
    return fault, 200, payload

  def _answer(self, prompt: str) -> str:
    if self.sample_fn is None:
      return self.answer_fn(prompt)
    with self._lock:
      k = self.generated[prompt]
      self.generated[prompt] += 1
    return self.sample_fn(prompt, k)

  async def _handle(self, reader, writer):
    try:
      while True:
        line = await reader.readline()
        if not line:
          return
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while True:
          h = await reader.readline()
          if h in (b"\r\n", b"\n", b""):
            break
          k, v = h.decode("latin-1").split(":", 1)
          headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method != "POST":
          fault, status, payload = None, 405, b"{}"
        else:
          fault, status, payload = self._decide(path, headers, body)
        if self.delay_seconds:
          await asyncio.sleep(self.delay_seconds)
        if fault == "hang":
          await asyncio.sleep(self.hang_seconds)
          return
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 405: "Not Allowed",
                  429: "Too Many Requests", 500: "Internal Server Error"}[status]
        declared = len(payload) + (200 if fault == "truncated" else 0)
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\n\r\n").encode()
        if fault == "truncated":
          writer.write(head + payload[:len(payload) // 2])
          await writer.drain()
          return
        writer.write(head + payload)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
      return
    except asyncio.CancelledError:  # stop() while a delay or hang is on: a quiet end
      return
    finally:
      writer.close()

  # ---------------------------------------------------------------- lifecycle

  def start(self) -> "FakeOpenAIServer":
    """Starts serving in a background thread; returns self (with .port set).

    Raises PortError (a ValueError) for a port out of range or one that cannot be
    listened on (in use, not allowed); nothing is left running then."""
    check_port(self.port)
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
    self._thread.start()
    try:
      self._server = asyncio.run_coroutine_threadsafe(
          asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=512),
          self._loop).result()
    except (OSError, OverflowError) as e:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout=5)
      self._loop.close()
      raise PortError(port_problem(self.port, e)) from None
    self.port = self._server.sockets[0].getsockname()[1]
    return self

  def stop(self) -> None:
    if self._server is not None:
      self._loop.call_soon_threadsafe(self._server.close)

      async def _cancel_all():
        for task in asyncio.all_tasks():
          if task is not asyncio.current_task():
            task.cancel()

      asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop).result()
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(timeout=5)
      self._server = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def _faults_every(spec: str) -> Callable[[str, int], str | None]:
  """'429:7,500:11' -> the first attempt of every 7th / 11th distinct prompt fails."""
  rules = [(name, int(n)) for name, n in (p.split(":") for p in spec.split(",") if p)]

  def fault(prompt: str, attempt: int) -> str | None:
    if attempt > 1:
      return None
    h = sum(map(ord, prompt))
    for name, n in rules:
      if h % n == 0:
        return name
    return None

  return fault


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--faults", default="", help="e.g. 429:7,500:11")
  args = parser.parse_args()
  prog = "python -m sbs_jax.testing.fake_openai"
  try:
    check_port(args.port)
    faults = _faults_every(args.faults)
  except ValueError as e:  # PortError, or a --faults that is not NAME:N,...
    message = str(e) if isinstance(e, PortError) else (
        f"--faults {args.faults!r}: expected NAME:N[,NAME:N...], e.g. 429:7,500:11")
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)

  async def serve():
    server = FakeOpenAIServer(fault_fn=faults, port=args.port)
    try:
      srv = await asyncio.start_server(server._handle, "127.0.0.1", args.port, backlog=1024)  # pylint: disable=protected-access
    except (OSError, OverflowError) as e:
      raise PortError(port_problem(args.port, e)) from None
    print(srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
      await srv.serve_forever()

  try:
    import uvloop  # pylint: disable=import-outside-toplevel
    uvloop.install()
  except ImportError:
    pass
  try:
    asyncio.run(serve())
  except PortError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    sys.exit(130)


if __name__ == "__main__":
  main()
