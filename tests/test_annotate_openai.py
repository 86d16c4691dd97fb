"""The OpenAI-compatible teacher against a misbehaving local server; kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sbs_jax.annotate import build, prompts
from sbs_jax.annotate import job as job_lib
from sbs_jax.data import records
from sbs_jax.testing.fake_openai import GARBAGE_TEXT, FakeOpenAIServer
from tests.helpers import REPO
from tests.helpers.cli import run_sbs_here
from tests.helpers.data import annotate_args, write_jsonl

SECRET = "sk-test-secret-0123456789"
FAULTS = {1: "429", 2: "500", 3: "hang", 4: "garbage_body", 5: "truncated"}


def row_number(prompt: str) -> int:
  return int(re.findall(r"Question number (\d+)", prompt)[-1])


def faulty(prompt: str, attempt: int):
  i = row_number(prompt)
  if i % 10 == 6:
    return "garbage_text"  # every time: the teacher really answers nonsense
  if attempt == 1:
    return FAULTS.get(i % 10)
  if attempt == 2 and i % 20 == 1:
    return "500"  # a second failure in a row for some
  return None


def make_data(tmp_path, n=60):
  rows = [{"input": f"Question number {i}: what is {i} plus {i}?"} for i in range(n)]
  for r in rows[::2]:
    r["label"] = str(len(r["input"]))  # what the fake teacher answers
  return write_jsonl(tmp_path / "sums.jsonl", rows), rows


def annotate_argv(data, out, server, *extra):
  return ["annotate", "--dataset", f"jsonl:{data}", "--teacher", "openai",
          "--base_url", server.url, "--model", "fake-model", "--out_dir", out,
          "--timeout", "0.5", "--retry_base_delay", "0.01", "--retry_max_delay", "0.05",
          "--no_progress", *extra]


def read_out(out, name="sums"):
  return records.read_records(sorted((out / name).glob("train.tfrecord-*")))


def test_faulty_server_every_example_exactly_once(tmp_path):
  data, rows = make_data(tmp_path)
  with FakeOpenAIServer(fault_fn=faulty, hang_seconds=2.0) as server:
    proc = run_sbs_here(*annotate_argv(data, tmp_path / "out", server, "--concurrency", "8",
                                  "--api_key_env", "SBS_TEST_KEY"),
                   env={"SBS_TEST_KEY": SECRET})
  assert proc.returncode == 0, proc.stderr
  assert set(server.faults) == {"429", "500", "hang", "garbage_body", "truncated",
                                "garbage_text"}
  recs = read_out(tmp_path / "out")
  assert [r["id"] for r in recs] == [f"train-{i}" for i in range(len(rows))]
  for r, row in zip(recs, rows):
    if row_number(r["input"]) % 10 == 6:
      assert r["parse_ok"] == 0 and r["completion"] == GARBAGE_TEXT
    else:
      assert r["parse_ok"] == 1 and r["llm_label"] == str(len(row["input"]))
  stats = json.loads((tmp_path / "out/sums/train.stats.json").read_text())
  assert stats["examples"] == 60 and stats["unparsable"] == 6
  # Percent; rows 6, 16, .. are labeled and garbage.
  assert stats["labeled"] == 30 and stats["teacher_accuracy"] == 80.0
  # Token usage is that of the answers kept, one per example.
  prompt = prompts.GENERIC
  want_prompt = sum(len(prompt.template.replace("{input}", r["input"]).split()) for r in rows)
  assert stats["usage"]["prompt_tokens"] == want_prompt
  assert stats["client_this_run"]["retries"] >= 6 + 3
  # The key goes in the header and nowhere else.
  assert set(server.auth_headers) == {f"Bearer {SECRET}"}
  written = proc.stdout + proc.stderr + (tmp_path / "out/sums/train.stats.json").read_text()
  written += json.dumps(recs)
  assert SECRET not in written


def test_chat_endpoint(tmp_path):
  data, rows = make_data(tmp_path, n=5)
  with FakeOpenAIServer() as server:
    proc = run_sbs_here(*annotate_argv(data, tmp_path / "out", server, "--endpoint", "chat"))
  assert proc.returncode == 0, proc.stderr
  assert [r["llm_label"] for r in read_out(tmp_path / "out")] == [
      str(len(r["input"])) for r in rows]
  assert all(auth is None for auth in server.auth_headers)  # no key in env: none sent


def test_client_error_fails_at_once_and_writes_no_records(tmp_path):
  data, _ = make_data(tmp_path, n=5)
  with FakeOpenAIServer(fault_fn=lambda p, a: "401") as server:
    proc = run_sbs_here(*annotate_argv(data, tmp_path / "out", server, "--concurrency", "1"))
  assert proc.returncode == 2
  assert "HTTP 401" in proc.stderr and "Traceback" not in proc.stderr
  assert len(server.log) == 1
  assert not list((tmp_path / "out").glob("sums/train.tfrecord*"))


def test_server_down_then_back_resumes_with_missing_only(tmp_path):
  data, rows = make_data(tmp_path, n=40)
  served = []

  def goes_down(prompt, attempt):
    served.append(prompt)
    return "500" if len(served) > 15 else None

  with FakeOpenAIServer(fault_fn=goes_down) as down:
    proc = run_sbs_here(*annotate_argv(data, tmp_path / "out", down, "--concurrency", "1",
                                  "--max_retries", "2"))
  assert proc.returncode == 2 and "failed 3 times" in proc.stderr
  assert "rerun the same command" in proc.stderr
  answered_before = {p for p, fault in down.log if fault is None}
  assert len(answered_before) == 15
  with FakeOpenAIServer() as up:
    proc = run_sbs_here(*annotate_argv(data, tmp_path / "out", up))
  assert proc.returncode == 0, proc.stderr
  asked_after = {p for p, _ in up.log}
  assert len(asked_after) == 25 and not asked_after & answered_before
  assert [r["id"] for r in read_out(tmp_path / "out")] == [f"train-{i}" for i in range(40)]


def _start(argv):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, "-m", "sbs_jax.cli", *map(str, argv)], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal_lines(out):
  paths = list((out / "sums/.partial").glob("*/journal.jsonl"))
  return paths[0].read_text().count("\n") if paths else 0


# With 3 samples (of 30 rows) the server ignores `n`: samples come one request each, so a
# kill can fall between two samples of one example.
@pytest.mark.parametrize("sig,code,samples,n", [(signal.SIGKILL, -9, 1, 80),
                                                (signal.SIGINT, 130, 1, 80),
                                                (signal.SIGKILL, -9, 3, 30)])
def test_killed_run_restarted_equals_uninterrupted_run(tmp_path, sig, code, samples, n):
  data, rows = make_data(tmp_path, n=n)
  extra = ["--concurrency", "4"] + (["--num_samples", str(samples), "--temperature", "0.5"]
                                    if samples > 1 else [])
  with FakeOpenAIServer(fault_fn=faulty, hang_seconds=2.0, delay_seconds=0.03,
                        n_support="honour" if samples == 1 else "ignore") as server:
    # The uninterrupted run in this process (the interrupted ones need their own).
    options = dict(dataset=f"jsonl:{data}", teacher="openai", base_url=server.url,
                   model="fake-model", out_dir=tmp_path / "full", timeout=0.5,
                   retry_base_delay=0.01, retry_max_delay=0.05, concurrency=4)
    if samples > 1:
      options.update(num_samples=samples, temperature=0.5)
    job_lib.run(build.build_job(annotate_args(**options)))

    server.attempts.clear()
    proc = _start(annotate_argv(data, tmp_path / "cut", server, *extra))
    deadline = time.monotonic() + 300  # a start-up of several seconds, more on a busy CPU
    while (_journal_lines(tmp_path / "cut") < 20 and proc.poll() is None
           and time.monotonic() < deadline):
      time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + (
        proc.communicate()[1][-2000:])
    assert _journal_lines(tmp_path / "cut") >= 20, "no 20 answers in 300 s"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    journal = next((tmp_path / "cut/sums/.partial").glob("*/journal.jsonl"))
    pairs = [(e["i"], e["s"]) for e in map(json.loads, journal.read_text().splitlines())]
    assert len(set(pairs)) == len(pairs)  # no sample journalled twice
    per_example = {i: sum(1 for j, _ in pairs if j == i) for i, _ in pairs}
    done_first = {i for i, count in per_example.items() if count == samples}
    assert 20 <= len(pairs) < n * samples
    assert not list((tmp_path / "cut/sums").glob("train.tfrecord*"))

    first_requests = len(server.log)
    again = run_sbs_here(*annotate_argv(data, tmp_path / "cut", server, *extra))
    assert again.returncode == 0, again.stderr
    asked_again = [row_number(p) for p, _ in server.log[first_requests:]]
  assert not set(asked_again) & done_first
  assert set(asked_again) | done_first == set(range(n))
  if samples > 1:  # an example stopped between its samples is asked only the rest
    for i, done in per_example.items():
      if done < samples and i % 10 not in FAULTS and i % 20 != 1:  # no retries there
        assert asked_again.count(i) == samples - done, i
  assert read_out(tmp_path / "cut") == read_out(tmp_path / "full")
