"""`sbs annotate --teacher batch`: the requests file, a batch service's output read back (a
fake run_batch answering each prompt, in vLLM's and the OpenAI Batch API's output
forms), failures and retries, results of another run refused; the records compared with
those of `--teacher openai` against the fake server giving the same answers."""

import json
import re

import pytest

from sbs_jax.annotate import batch, build
from sbs_jax.commands import annotate as annotate_command
from sbs_jax.data import records
from sbs_jax.errors import SbsError
from sbs_jax.testing.fake_batch import run_batch
from sbs_jax.testing.fake_openai import FakeOpenAIServer
from tests.helpers.data import parse_annotate as parse, run_annotate as run, write_sums

SECRET = "sk-batch-secret-0123456789"


def batch_argv(data, out, folder, *extra):
  return ["--dataset", f"jsonl:{data}", "--teacher", "batch", "--batch_dir", folder,
          "--model", "fake", "--out_dir", out, *extra]


def openai_argv(data, out, server, *extra):
  return ["--dataset", f"jsonl:{data}", "--teacher", "openai", "--base_url", server.url,
          "--model", "fake", "--out_dir", out, "--timeout", "5", *extra]


def number(prompt: str) -> int:
  return int(re.findall(r"Question number (\d+)", prompt)[-1])


def sample_answer(prompt: str, k: int) -> str:
  """The k-th sample for a prompt: every third one a wrong answer."""
  query = prompt.rsplit("Q:", 1)[-1].split("\nA:", 1)[0].strip()
  n = len(query) + (1 if k % 3 == 1 else 0)
  return f"Sample {k} counts. So the answer is {n}.\n\nQ: a run-on exemplar"


def read(result):
  return records.read_records([result.records_path])


def but_teacher(recs):
  return [{**r, "teacher": None} for r in recs]


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("endpoint,style", [("completions", "openai"), ("chat", "vllm")])
def test_round_trip_gives_the_records_of_an_openai_run(tmp_path, endpoint, style, capsys,
                                                       monkeypatch):
  data, rows = write_sums(tmp_path, n=10)
  folder, extra = tmp_path / "batch", ["--endpoint", endpoint, "--price_in", "1",
                                       "--price_out", "2"]
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # never written into a batch file
  # First run: the requests are written, nothing else; exit code 75, so that a `&&` chain
  # stops there.
  assert annotate_command.main(parse(batch_argv(data, tmp_path / "out", folder,
                                                *extra))) == annotate_command.WAITING_EXIT_CODE
  assert annotate_command.WAITING_EXIT_CODE not in (0, 1, 2)
  printed = capsys.readouterr().out
  summary = json.loads(printed.splitlines()[-1])
  assert summary["waiting_for_batch"] and summary["requests"] == 10
  url = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
  assert "completion_window 24h" in printed and f"endpoint {url} " in printed
  assert ("vllm.entrypoints.openai.run_batch -i" in printed) == (endpoint == "chat")
  assert not list((tmp_path / "out").glob("sums/train.tfrecord*"))
  requests = lines(folder / "requests.jsonl")
  assert [(r["method"], r["url"]) for r in requests] == [("POST", url)] * 10
  assert len({r["custom_id"] for r in requests}) == 10
  assert SECRET not in (folder / "requests.jsonl").read_text()
  # The same bodies as the openai teacher sends.
  with FakeOpenAIServer() as server:
    live = run(*openai_argv(data, tmp_path / "live", server, *extra))
  assert sorted(json.dumps(r["body"], sort_keys=True) for r in requests) == sorted(
      json.dumps(b, sort_keys=True) for b in server.bodies)

  run_batch(folder / "requests.jsonl", folder / "results.jsonl", style=style)
  done = run(*batch_argv(data, tmp_path / "out", folder, *extra))
  assert done.waiting is None and done.asked == 10
  assert but_teacher(read(done)) == but_teacher(read(live))
  assert {r["teacher"] for r in read(done)} == {"batch:fake"}
  for key in ("usage", "cost_usd", "teacher_accuracy", "parsed"):
    assert done.stats[key] == live.stats[key], key
  assert done.stats["manifest"]["teacher"] == "batch:fake"
  assert done.stats["batch_this_run"]["samples_answered"] == 10
  assert run(*batch_argv(data, tmp_path / "out", folder, *extra)).already_done
  capsys.readouterr()
  assert annotate_command.main(parse(batch_argv(data, tmp_path / "out", folder, *extra))) == 0
  assert not json.loads(capsys.readouterr().out.splitlines()[-1]).get("waiting_for_batch")


def test_failures_missing_lines_and_the_retry_file(tmp_path):
  data, rows = write_sums(tmp_path, n=12)
  folder = tmp_path / "batch"
  with FakeOpenAIServer() as server:
    live = run(*openai_argv(data, tmp_path / "live", server))
  run(*batch_argv(data, tmp_path / "out", folder))
  faults = {1: "500", 2: "error", 3: "malformed", 4: "drop", 5: "duplicate"}
  out = run_batch(folder / "requests.jsonl", folder / "results.jsonl",
                  fault_fn=lambda cid, prompt: faults.get(number(prompt)))
  with (folder / "results.jsonl").open("a") as f:  # a line of something else entirely
    f.write(json.dumps(dict(out[0], custom_id="request-1")) + "\n")
  result = run(*batch_argv(data, tmp_path / "out", folder))
  waiting = result.waiting
  assert waiting.retry and waiting.requests == 5 and waiting.samples == 5
  assert "\n" not in waiting.report
  for part in ("7 samples answered", "5 requests (5 samples) have no usable result",
               "1 duplicated custom_id", "1 failed", "1 failed (HTTP 500)", "1 malformed",
               "1 missing", "1 line(s) with an unknown custom_id",
               str(folder / "results_retry.jsonl")):
    assert part in waiting.report, part
  retry = lines(folder / "retry_requests.jsonl")
  assert sorted(number(r["body"]["prompt"]) for r in retry) == [1, 2, 3, 4, 5]
  assert not list((tmp_path / "out").glob("sums/train.tfrecord*"))
  # Rerun with nothing new: nothing more is answered, the same retry file.
  again = run(*batch_argv(data, tmp_path / "out", folder))
  assert again.waiting.requests == 5 and lines(folder / "retry_requests.jsonl") == retry
  run_batch(folder / "retry_requests.jsonl", folder / "results_retry.jsonl", style="openai")
  done = run(*batch_argv(data, tmp_path / "out", folder))
  assert done.waiting is None and done.asked == 5
  assert but_teacher(read(done)) == but_teacher(read(live))
  assert done.stats["usage"] == live.stats["usage"]
  assert not (folder / "retry_requests.jsonl").exists()


def test_a_retry_output_appended_to_the_results_file_completes_it(tmp_path):
  data, _ = write_sums(tmp_path, n=3)
  folder = tmp_path / "batch"
  run(*batch_argv(data, tmp_path / "out", folder))
  run_batch(folder / "requests.jsonl", folder / "results.jsonl",
            fault_fn=lambda cid, prompt: "500" if number(prompt) == 1 else None)
  assert run(*batch_argv(data, tmp_path / "out", folder)).waiting.requests == 1
  run_batch(folder / "retry_requests.jsonl", tmp_path / "retried.jsonl")
  with (folder / "results.jsonl").open("a") as f:  # the same custom_id, failed then answered
    f.write((tmp_path / "retried.jsonl").read_text())
  assert run(*batch_argv(data, tmp_path / "out", folder)).stats["examples"] == 3


def test_several_samples_go_as_n_and_a_short_answer_is_asked_for_the_rest(tmp_path):
  data, rows = write_sums(tmp_path, n=6)
  folder, extra = tmp_path / "batch", ["--num_samples", "3", "--temperature", "0.7"]
  with FakeOpenAIServer(sample_fn=sample_answer) as server:
    live = run(*openai_argv(data, tmp_path / "live", server, *extra))
  run(*batch_argv(data, tmp_path / "out", folder, *extra))
  requests = lines(folder / "requests.jsonl")
  assert [r["body"]["n"] for r in requests] == [3] * 6
  # Example 2 gets two choices of three: its third sample is asked again, alone.
  run_batch(folder / "requests.jsonl", folder / "results.jsonl", sample_fn=sample_answer,
            fault_fn=lambda cid, prompt: "short" if number(prompt) == 2 else None)
  waiting = run(*batch_argv(data, tmp_path / "out", folder, *extra)).waiting
  assert "1 short of choices" in waiting.report
  (retry,) = lines(folder / "retry_requests.jsonl")
  assert "n" not in retry["body"] and number(retry["body"]["prompt"]) == 2
  assert retry["custom_id"].split(".")[3:5] == ["2", "1"]  # sample 2, one sample
  # The fake service's third sample of that prompt is the live server's third one.
  path = folder / "results_retry.jsonl"
  run_batch(folder / "retry_requests.jsonl", path,
            sample_fn=lambda prompt, k: sample_answer(prompt, k + 2))
  done = run(*batch_argv(data, tmp_path / "out", folder, *extra))
  assert [(r["index"], r["sample"]) for r in read(done)] == [(i, s) for i in range(6)
                                                              for s in range(3)]
  assert but_teacher(read(done)) == but_teacher(read(live))


def test_results_of_another_prompt_or_run_are_refused(tmp_path):
  data, _ = write_sums(tmp_path, n=4)
  folder = tmp_path / "batch"
  other_prompt = tmp_path / "prompt.txt"
  other_prompt.write_text("Q: {input}\nA:")
  run(*batch_argv(data, tmp_path / "a", folder, "--prompt_file", other_prompt))
  run_batch(folder / "requests.jsonl", folder / "results.jsonl")
  with pytest.raises(SbsError, match=r"results.jsonl: line 1: custom_id sbs\.\S+ answers "
                     r"another prompt .*move the file out") as e:
    run(*batch_argv(data, tmp_path / "b", folder))
  assert "\n" not in str(e.value)
  assert not list((tmp_path / "b").glob("sums/.partial/*/journal.jsonl"))
  with pytest.raises(SbsError, match="was written by another run"):
    run(*batch_argv(data, tmp_path / "c", folder, "--prompt_file", other_prompt,
                    "--temperature", "0.5"))
  # Its own run takes them.
  assert run(*batch_argv(data, tmp_path / "a", folder, "--prompt_file",
                         other_prompt)).waiting is None


def test_a_partial_batch_run_is_not_mixed_with_an_openai_run(tmp_path):
  data, _ = write_sums(tmp_path, n=4)
  run(*batch_argv(data, tmp_path / "out", tmp_path / "batch"))
  with FakeOpenAIServer() as server:
    with pytest.raises(SbsError, match=r"partial run with other settings \(teacher: "
                       r"\"batch:fake\" -> \"openai:fake\"\)"):
      run(*openai_argv(data, tmp_path / "out", server))


@pytest.mark.parametrize("extra,message", [
    (["--teacher", "batch", "--model", "m"], "--teacher batch needs --batch_dir"),
    (["--teacher", "openai", "--base_url", "http://127.0.0.1:1/v1", "--model", "m",
      "--batch_dir", "B"], "--batch_dir is for --teacher batch, not --teacher openai"),
    (["--teacher", "batch", "--model", "m", "--batch_dir", "B", "--base_url",
      "http://127.0.0.1:1/v1"], "leave --base_url out"),
    (["--teacher", "batch", "--model", "m", "--batch_dir", "B", "--price_in", "1",
      "--price_out", "1", "--max_cost", "5"], "--max_cost cannot stop a batch"),
])
def test_bad_flags_are_one_line(tmp_path, extra, message):
  data, _ = write_sums(tmp_path, n=2)
  with pytest.raises(SbsError, match=message) as e:
    build.build_job(parse(["--dataset", f"jsonl:{data}", "--out_dir", tmp_path / "out",
                           *extra]))
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_results_line_that_is_not_json_is_one_line(tmp_path):
  data, _ = write_sums(tmp_path, n=3)
  folder = tmp_path / "batch"
  run(*batch_argv(data, tmp_path / "out", folder))
  run_batch(folder / "requests.jsonl", folder / "results.jsonl")
  text = (folder / "results.jsonl").read_text()
  (folder / "results.jsonl").write_text(text[:-40])  # a download cut short
  with pytest.raises(SbsError, match=r"results.jsonl: line 3: not JSON .*fetch the file "
                     "again") as e:
    run(*batch_argv(data, tmp_path / "out", folder))
  assert "\n" not in str(e.value)


def test_custom_ids_and_file_parts(tmp_path, monkeypatch):
  rid = batch.RequestId("0123456789ab", 42, 3, 2, "fedcba9876543210")
  assert batch.RequestId.parse(rid.text()) == rid
  for bad in ("request-1", None, 7, "sbs.0123456789ab.1.0.1.short"):
    assert batch.RequestId.parse(bad) is None
  assert [batch.results_name(n) for n in ("requests.jsonl", "requests-00001.jsonl",
                                          "retry_requests.jsonl")] == [
      "results.jsonl", "results-00001.jsonl", "results_retry.jsonl"]
  # Past one batch's limit the requests go in parts, each with its results name.
  monkeypatch.setattr(batch, "MAX_REQUESTS_PER_FILE", 4)
  data, _ = write_sums(tmp_path, n=10)
  folder = tmp_path / "batch"
  waiting = run(*batch_argv(data, tmp_path / "out", folder)).waiting
  assert [p.name for p in waiting.requests_files] == [
      "requests-00000.jsonl", "requests-00001.jsonl", "requests-00002.jsonl"]
  assert [len(lines(p)) for p in waiting.requests_files] == [4, 4, 2]
  for path in waiting.requests_files:
    run_batch(path, path.with_name(batch.results_name(path.name)))
  assert run(*batch_argv(data, tmp_path / "out", folder)).stats["examples"] == 10
