"""Endpoint pools (`sbs annotate --base_url A --base_url B ...`): which replica takes a
request, a dead or hanging replica's work moved to a healthy one, load spread over
healthy ones, the counters per replica, API keys per URL; a pool's records are those of one
healthy replica."""

import asyncio
import socket

import pytest

from sbs_jax.annotate import build, pool
from sbs_jax.data import records
from sbs_jax.errors import SbsError, TeacherError
from sbs_jax.testing.fake_openai import FakeOpenAIServer
from tests.helpers.data import parse_annotate as parse, run_annotate as run, write_sums

KEY = "sk-pool-0123456789"
PASSWORD = "pool-Pa55word"


def closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def dead_url(credentials: str = "") -> str:
  return f"http://{credentials}127.0.0.1:{closed_port()}/v1"


def pool_argv(data, out, urls, *extra):
  argv = ["--dataset", f"jsonl:{data}", "--teacher", "openai", "--model", "fake",
          "--out_dir", out, "--timeout", "5", "--retry_base_delay", "0.01",
          "--retry_max_delay", "0.05", *extra]
  for url in urls:
    argv += ["--base_url", url]
  return argv


def read(result):
  return records.read_records([result.records_path])


def completions_url(url):
  return url + "/completions"


# ---------------------------------------------------------------- choosing a replica


def test_most_free_slots_first_ties_take_turns_and_failures_rest():
  now = [100.0]
  p = pool.Pool(["http://a/v1", "http://b/v1", "http://c/v1"], limit=2, base_delay=1.0,
                max_delay=8.0, clock=lambda: now[0])
  a, b, c = p.replicas
  # All idle: they take turns.
  assert [p.pick().url for _ in range(4)] == ["http://a/v1", "http://b/v1", "http://c/v1",
                                               "http://a/v1"]
  a.in_flight, b.in_flight = 2, 1
  assert p.pick() is c  # the most free slots
  c.in_flight = 1
  assert p.pick() in (b, c) and {p.pick(), p.pick()} == {b, c}  # tied: in turn
  # A failure rests the replica for a while (at most its backoff cap); awake, it takes one
  # request at a time until one succeeds.
  c.in_flight = 1
  p.release(c, ok=False)
  assert c.failures_in_a_row == 1 and now[0] <= c.resting_until <= now[0] + 1.0
  c.resting_until = now[0] + 0.5
  assert p.pick() is b
  b.in_flight = 2
  assert p.pick() is None  # a and b full, c resting
  now[0] += 1.0
  assert p.pick() is c and c.free == 1
  c.in_flight = 1
  assert p.pick() is None  # its one probe is out
  p.release(c, ok=True)
  assert c.failures_in_a_row == 0 and c.free == 2
  # The retry of a request goes elsewhere when it can, and never past its tries.
  a.in_flight = b.in_flight = c.in_flight = 0
  attempts = pool.Attempts(tries=1)
  attempts.failed(b, "HTTP 500")
  assert all(p.pick(attempts) is not b for _ in range(6))
  attempts.failed(a, "HTTP 500")
  attempts.failed(c, "HTTP 500")
  assert p.pick(attempts) is None and p.exhausted(attempts)


def test_acquire_waits_for_a_resting_replica_to_wake():
  p = pool.Pool(["http://a/v1"], limit=1, base_delay=0.05, max_delay=0.05)
  (a,) = p.replicas

  async def go():
    first = await p.acquire(pool.Attempts(3))
    p.release(first, ok=False, retry_after=0.05)  # rests about 0.05 s
    loop = asyncio.get_running_loop()
    start = loop.time()
    again = await p.acquire(pool.Attempts(3))
    return again, loop.time() - start

  again, waited = asyncio.run(go())
  assert again is a and a.in_flight == 1 and 0.03 <= waited < 2


# ---------------------------------------------------------------- whole runs


def test_dead_replica_gives_the_records_of_one_healthy_replica(tmp_path):
  data, _ = write_sums(tmp_path)
  dead = dead_url()
  with FakeOpenAIServer() as healthy:
    one = run(*pool_argv(data, tmp_path / "one", [healthy.url]))
    both = run(*pool_argv(data, tmp_path / "both", [dead, healthy.url], "--concurrency", "2"))
  assert read(both) == read(one)
  assert both.stats["manifest"] == one.stats["manifest"]  # the URLs are not pinned
  client = both.stats["client_this_run"]
  replicas = client["replicas"]
  assert set(replicas) == {completions_url(dead), completions_url(healthy.url)}
  assert replicas[completions_url(dead)]["requests"] >= 1
  assert replicas[completions_url(dead)]["status_counts"] == {}
  assert replicas[completions_url(healthy.url)]["status_counts"] == {200: 12}
  assert client["requests"] == sum(r["requests"] for r in replicas.values())
  assert client["retries"] == replicas[completions_url(dead)]["requests"]
  # One replica: the counters as before, with that replica alone under `replicas`.
  assert list(one.stats["client_this_run"]["replicas"]) == [completions_url(healthy.url)]


def test_hanging_replica_has_its_work_moved(tmp_path):
  data, _ = write_sums(tmp_path, n=8)
  with FakeOpenAIServer() as healthy, FakeOpenAIServer(delay_seconds=3.0) as hanging:
    one = run(*pool_argv(data, tmp_path / "one", [healthy.url]))
    healthy.log.clear()
    both = run(*pool_argv(data, tmp_path / "both", [hanging.url, healthy.url], "--timeout",
                          "0.3", "--concurrency", "2", "--retry_base_delay", "0.5",
                          "--retry_max_delay", "2"))
  assert read(both) == read(one)
  stuck = both.stats["client_this_run"]["replicas"][completions_url(hanging.url)]
  assert stuck["timeouts"] >= 1 and stuck["status_counts"] == {}
  assert len({prompt for prompt, _ in healthy.log}) == 8  # every answer came from there


def test_load_spreads_over_healthy_replicas(tmp_path):
  data, _ = write_sums(tmp_path, n=16)
  with FakeOpenAIServer(delay_seconds=0.02) as a, FakeOpenAIServer(delay_seconds=0.02) as b:
    one = run(*pool_argv(data, tmp_path / "one", [a.url]))
    a.log.clear()
    both = run(*pool_argv(data, tmp_path / "both", [a.url, b.url], "--concurrency", "2"))
  assert read(both) == read(one)
  assert len(a.log) >= 4 and len(b.log) >= 4 and len(a.log) + len(b.log) == 16
  counts = both.stats["client_this_run"]["replicas"]
  assert counts[completions_url(a.url)]["requests"] == len(a.log)
  assert counts[completions_url(b.url)]["requests"] == len(b.log)


def test_every_replica_failing_is_one_line_with_the_redacted_urls(tmp_path):
  data, _ = write_sums(tmp_path, n=2)
  urls = [dead_url(f"user:{PASSWORD}@"), dead_url()]
  with pytest.raises(TeacherError) as e:
    run(*pool_argv(data, tmp_path / "out", urls, "--max_retries", "1"))
  message = str(e.value)
  assert "\n" not in message and PASSWORD not in message
  assert message.startswith("every replica of the teacher failed 2 times for example")
  assert "http://user:***@127.0.0.1" in message and completions_url(urls[1]) in message
  assert "rerun the same command to resume" in message


def test_api_keys_are_chosen_per_url(tmp_path, monkeypatch):
  data, _ = write_sums(tmp_path, n=4)
  monkeypatch.setenv("MY_KEY", KEY)
  monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-not-for-local")
  with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
    run(*pool_argv(data, tmp_path / "keyed", [a.url, b.url], "--api_key_env", "MY_KEY"))
    assert set(a.auth_headers) == set(b.auth_headers) == {f"Bearer {KEY}"}
    a.auth_headers.clear()
    b.auth_headers.clear()
    run(*pool_argv(data, tmp_path / "plain", [a.url, b.url]))  # $OPENAI_API_KEY stays home
    assert set(a.auth_headers) == set(b.auth_headers) == {None}
    # A key over plain http to another machine is refused for that replica, by its URL.
    with pytest.raises(SbsError, match=r"--base_url http://10\.0\.0\.5:1/v1 is plain http"):
      build.build_job(parse(pool_argv(data, tmp_path / "x", [a.url, "http://10.0.0.5:1/v1"],
                                      "--api_key_env", "MY_KEY")))


def test_a_url_given_twice_is_refused(tmp_path):
  data, _ = write_sums(tmp_path, n=2)
  url = f"http://user:{PASSWORD}@127.0.0.1:1/v1"
  with pytest.raises(SbsError, match=r"given twice") as e:
    build.build_job(parse(pool_argv(data, tmp_path / "out", [url, url])))
  assert PASSWORD not in str(e.value)
