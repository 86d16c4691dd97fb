"""The OpenAI-compatible teacher against a misbehaving local server; kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sbs_jax.annotate import prompts
from sbs_jax.data import records
from sbs_jax.testing.fake_openai import GARBAGE_TEXT, FakeOpenAIServer
from tests.helpers import REPO, run_sbs
from tests.helpers.data import write_jsonl

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
    proc = run_sbs(*annotate_argv(data, tmp_path / "out", server, "--concurrency", "8",
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
    proc = run_sbs(*annotate_argv(data, tmp_path / "out", server, "--endpoint", "chat"))
  assert proc.returncode == 0, proc.stderr
  assert [r["llm_label"] for r in read_out(tmp_path / "out")] == [
      str(len(r["input"])) for r in rows]
  assert all(auth is None for auth in server.auth_headers)  # no key in env: none sent


def test_client_error_fails_at_once_and_writes_no_records(tmp_path):
  data, _ = make_data(tmp_path, n=5)
  with FakeOpenAIServer(fault_fn=lambda p, a: "401") as server:
    proc = run_sbs(*annotate_argv(data, tmp_path / "out", server, "--concurrency", "1"))
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
    proc = run_sbs(*annotate_argv(data, tmp_path / "out", down, "--concurrency", "1",
                                  "--max_retries", "2"))
  assert proc.returncode == 2 and "failed 3 times" in proc.stderr
  assert "rerun the same command" in proc.stderr
  answered_before = {p for p, fault in down.log if fault is None}
  assert len(answered_before) == 15
  with FakeOpenAIServer() as up:
    proc = run_sbs(*annotate_argv(data, tmp_path / "out", up))
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


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGINT, 130)])
def test_killed_run_restarted_equals_uninterrupted_run(tmp_path, sig, code):
  data, rows = make_data(tmp_path, n=80)
  with FakeOpenAIServer(fault_fn=faulty, hang_seconds=2.0, delay_seconds=0.03) as server:
    full = run_sbs(*annotate_argv(data, tmp_path / "full", server, "--concurrency", "4"))
    assert full.returncode == 0, full.stderr

    server.attempts.clear()
    proc = _start(annotate_argv(data, tmp_path / "cut", server, "--concurrency", "4"))
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
    done_first = {json.loads(l)["i"] for l in journal.read_text().splitlines()}
    assert 20 <= len(done_first) < 80
    assert not list((tmp_path / "cut/sums").glob("train.tfrecord*"))

    first_requests = len(server.log)
    again = run_sbs(*annotate_argv(data, tmp_path / "cut", server, "--concurrency", "4"))
    assert again.returncode == 0, again.stderr
    asked_again = {row_number(p) for p, _ in server.log[first_requests:]}
  assert not asked_again & done_first
  assert asked_again | done_first == set(range(80))
  assert read_out(tmp_path / "cut") == read_out(tmp_path / "full")
