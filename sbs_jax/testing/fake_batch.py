"""A stand-in for a batch service, for tests: reads a batch requests file (the OpenAI batch
input format) and writes the output file that vLLM's `run_batch` or the OpenAI Batch API
would, answering each request's prompt with `answer_fn` (or the k-th sample of a prompt
with `sample_fn(prompt, k)`), the response bodies those of the fake server
(fake_openai.response_body).

The two output styles, as their sources and references describe them:
- "vllm" (vllm/entrypoints/openai/run_batch.py): lines in input order, `id` "vllm-<hex>",
  `response` {"status_code": 200, "request_id": "vllm-batch-<hex>", "body": <response>},
  `error` null; a failed request has status_code 400, body null, and its message in
  `error` (a string).
- "openai" (the Batch API's output and error files): lines in any order, `id`
  "batch_req_<hex>", `response` {"status_code", "request_id", "body"}, `error` null; a
  request that failed without an HTTP response has `response` null and `error` {"code",
  "message"}.

`fault_fn(custom_id, prompt)` spoils a line on purpose: "500" (a 500 response), "error"
(a failure in the style's error form), "malformed" (a 200 without choices), "short" (one
choice fewer than `n`, at least one), "drop" (no line), "duplicate" (the line twice).
"""

from __future__ import annotations

import collections
import json
import pathlib
import random
from typing import Callable

from sbs_jax.testing.fake_openai import echo_answer, prompt_of, response_body


def run_batch(requests_path, output_path, answer_fn: Callable[[str], str] = echo_answer,
              sample_fn: Callable[[str, int], str] | None = None,
              fault_fn: Callable[[str, str], str | None] | None = None,
              style: str = "vllm", seed: int = 0) -> list[dict]:
  """Answers every request of `requests_path` into `output_path`; returns the lines."""
  if style not in ("vllm", "openai"):
    raise ValueError(f"style must be vllm or openai, got {style!r}")
  rng = random.Random(seed)
  generated: collections.Counter = collections.Counter()
  out = []
  for number, line in enumerate(pathlib.Path(requests_path).read_text().splitlines()):
    request = json.loads(line)
    body, custom_id = request["body"], request["custom_id"]
    chat = request["url"] == "/v1/chat/completions"
    prompt = prompt_of(chat, body)
    fault = fault_fn(custom_id, prompt) if fault_fn else None
    if fault == "drop":
      continue
    n = int(body.get("n", 1))
    if fault == "short":
      n = max(1, n - 1)
    texts = []
    for _ in range(n):
      texts.append(answer_fn(prompt) if sample_fn is None else sample_fn(prompt,
                                                                        generated[prompt]))
      generated[prompt] += 1
    answer = response_body(chat, body, prompt, texts)
    tag = f"{number:04x}{rng.getrandbits(48):012x}"
    item = {"id": f"vllm-{tag}" if style == "vllm" else f"batch_req_{tag}",
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": (f"vllm-batch-{tag}"
                                                            if style == "vllm" else tag),
                         "body": answer},
            "error": None}
    if fault == "500":
      item["response"].update(status_code=500, body={"error": {"message": "overloaded"}})
    elif fault == "error" and style == "vllm":
      item["response"].update(status_code=400, body=None)
      item["error"] = "the engine failed this request"
    elif fault == "error":
      item["response"] = None
      item["error"] = {"code": "server_error", "message": "the batch could not run this"}
    elif fault == "malformed":
      item["response"]["body"] = {"object": "text_completion", "choices": []}
    out.append(item)
    if fault == "duplicate":
      out.append(dict(item, id=item["id"] + "-again"))
  if style == "openai":
    rng.shuffle(out)  # the Batch API keeps no order
  pathlib.Path(output_path).write_text("".join(json.dumps(o) + "\n" for o in out))
  return out
