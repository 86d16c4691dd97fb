"""Benchmark: how many requests/s the annotation client drives against a server that answers
at once. The server (sbs_jax.testing.fake_openai, uvloop) runs in its own process on
127.0.0.1, so client and server share this machine's cores.

    python benchmarks/annotate_client.py --examples 5000 --concurrency 64

Prints one JSON line: examples, seconds for the teacher phase and the whole job, requests/s.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from sbs_jax.annotate import job as job_lib
from sbs_jax.annotate import parsers, prompts
from sbs_jax.annotate.teachers import OpenAITeacher
from sbs_jax.data.readers import Example


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--examples", type=int, default=5000)
  parser.add_argument("--concurrency", type=int, default=64)
  parser.add_argument("--endpoint", default="completions")
  args = parser.parse_args()

  server = subprocess.Popen([sys.executable, "-m", "sbs_jax.testing.fake_openai", "--port",
                             "0"], stdout=subprocess.PIPE, text=True)
  try:
    port = int(server.stdout.readline())
    examples = [Example(i, f"b-{i}", f"Question {i}: how many letters are in this?", None)
                for i in range(args.examples)]
    teacher = OpenAITeacher(f"http://127.0.0.1:{port}/v1", "bench", endpoint=args.endpoint,
                            concurrency=args.concurrency, stop=("\n\nQ:",))
    with tempfile.TemporaryDirectory() as out:
      job = job_lib.Job(dataset="bench", split="train", examples=examples,
                        prompt=prompts.GENERIC, prompt_id="bench",
                        parse=parsers.make_generic_parser(),
                        labels_match=lambda a, b: a == b, teacher=teacher,
                        out_dir=pathlib.Path(out), concurrency=args.concurrency,
                        progress=False)
      start = time.perf_counter()
      result = job_lib.run(job)
      total = time.perf_counter() - start
    assert result.stats["examples"] == args.examples == result.stats["parsed"]
    print(json.dumps({
        "examples": args.examples, "concurrency": args.concurrency,
        "endpoint": args.endpoint, "job_seconds": round(total, 2),
        "requests_per_s_whole_job": round(args.examples / total, 1),
        "requests": teacher.counters.requests, "retries": teacher.counters.retries,
        "cpu_count": os.cpu_count()}))
  finally:
    server.terminate()
    server.wait()


if __name__ == "__main__":
  main()
