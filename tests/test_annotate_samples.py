"""Several samples per example (`sbs annotate --num_samples`), the vote and `--keep`, the cost
ledger and `--max_cost`: the job in this process, against replayed lists of completions and
the fake OpenAI server (honouring `n`, ignoring it, refusing it)."""

import collections
import json

import pytest

from sbs_jax import arith
from sbs_jax.annotate import build, parsers, samples
from sbs_jax.annotate import job as job_lib
from sbs_jax.annotate.cost import Ledger, Prices
from sbs_jax.annotate.teachers import split_evenly
from sbs_jax.data import records
from sbs_jax.errors import SbsError, TeacherError
from sbs_jax.testing.fake_openai import FakeOpenAIServer
from tests.helpers.data import SAMPLED_ROWS, write_jsonl, write_sums
from tests.helpers.data import parse_annotate as parse, run_annotate as run


def read(result) -> list[dict]:
  return records.read_records([result.records_path])


# ---------------------------------------------------------------- the vote, by hand


def ok(label):
  return parsers.Parsed("why", label, True)


BAD = parsers.Parsed("?", "", False, "no answer phrase", "no answer phrase")


def test_vote_majority_ties_and_share():
  same = parsers.same_text
  assert samples.vote([ok("a"), ok("b"), ok("b")], same) == samples.Vote("b", 2 / 3)
  # A tie goes to the label that came first; unparsable samples count in the share.
  assert samples.vote([ok("b"), BAD, ok("a")], same) == samples.Vote("b", 1 / 3)
  assert samples.vote([ok("a"), ok("b"), ok("b"), ok("a")], same).label == "a"
  assert samples.vote([BAD, BAD], same) == samples.Vote("", 0.0)
  assert samples.vote([ok("x")], same) == samples.Vote("x", 1.0)
  # Labels compare by the benchmark's comparison: SVAMP's by value.
  by_value = samples.vote([ok("2 * 5"), ok("3 + 4"), ok("7")], arith.same_value)
  assert by_value == samples.Vote("3 + 4", 2 / 3)


def test_kept_by_rule():
  same = parsers.same_text
  vote = samples.Vote("a", 0.5)
  assert [samples.kept(k, ok("a"), "b", vote, same) for k in samples.KEEP] == [True, False,
                                                                              True]
  assert [samples.kept(k, ok("b"), "b", vote, same) for k in samples.KEEP] == [True, True,
                                                                              False]
  assert not any(samples.kept(k, BAD, "a", vote, same) for k in samples.KEEP)
  assert not samples.kept("gold", ok("a"), None, vote, same)  # unlabeled: nothing vouches


# ---------------------------------------------------------------- replayed samples

KEPT = {"all": [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "gold": [1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0],
        "vote": [1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0]}
# (kept, kept_accuracy, examples_without_kept) by --keep
KEPT_STATS = {"all": (11, 62.5, 1), "gold": (5, 100.0, 2), "vote": (7, 80.0, 1)}


def replay_argv(data, out, *extra):
  return ["--dataset", f"jsonl:{data}", "--teacher", "replay", "--completion_key", "out",
          "--out_dir", out, *extra]


@pytest.mark.parametrize("keep", ["all", "gold", "vote"])
def test_replayed_samples_vote_and_keep(tmp_path, keep):
  data = write_jsonl(tmp_path / "rows.jsonl", SAMPLED_ROWS)
  result = run(*replay_argv(data, tmp_path / "out", "--keep", keep))
  recs = read(result)
  assert [(r["index"], r["sample"]) for r in recs] == [(i, s) for i in range(5)
                                                        for s in range(3)]
  assert all(r["num_samples"] == 3 for r in recs)
  assert [r["vote_label"] for r in recs[::3]] == ["4", "7", "10", "blue", ""]
  assert [r["vote_share"] for r in recs[::3]] == pytest.approx([2 / 3, 1 / 3, 2 / 3, 2 / 3, 0])
  assert [r["kept"] for r in recs] == KEPT[keep]
  assert [r["completion"] for r in recs] == [c for row in SAMPLED_ROWS for c in row["out"]]
  stats = result.stats
  assert (stats["examples"], stats["records"], stats["parsed"], stats["unparsable"]) == (
      5, 15, 11, 4)
  assert stats["labeled"] == 4
  assert stats["teacher_accuracy"] == 25.0  # sample 0: only 2+2 is right
  assert stats["vote_accuracy"] == 50.0  # 2+2 and 5+5 (a tie 7/6 goes to 7, first)
  assert (stats["kept"], stats["kept_accuracy"], stats["examples_without_kept"]) == (
      KEPT_STATS[keep])
  assert stats["unparsable_examples"]["no answer phrase"][0].startswith("train-1#1: ")
  assert stats["num_samples"] == 3 and stats["manifest"]["num_samples"] == 3


def test_keep_changed_on_a_finished_shard_rewrites_without_asking(tmp_path, monkeypatch):
  data = write_jsonl(tmp_path / "rows.jsonl", SAMPLED_ROWS)
  out = tmp_path / "out"
  first = run(*replay_argv(data, out))
  fresh_gold = read(run(*replay_argv(data, tmp_path / "fresh", "--keep", "gold")))

  async def no_asking(*args, **kwargs):
    raise AssertionError("the teacher was asked")

  from sbs_jax.annotate.teachers import ReplayTeacher
  monkeypatch.setattr(ReplayTeacher, "complete", no_asking)
  again = run(*replay_argv(data, out, "--keep", "gold"))
  assert again.rewritten and again.asked == 0
  assert read(again) == fresh_gold
  assert again.stats["usage"] == first.stats["usage"]
  assert (again.stats["keep"], again.stats["manifest"]["keep"]) == ("gold", "gold")
  assert (again.stats["kept"], again.stats["kept_accuracy"]) == (5, 100.0)
  assert run(*replay_argv(data, out, "--keep", "gold")).already_done
  # Back to all, killed halfway (the answers are back in the journal, the stats gone)...
  real_write = records.write_atomically

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(records, "write_atomically", killed)
  with pytest.raises(KeyboardInterrupt):
    run(*replay_argv(data, out))
  monkeypatch.setattr(records, "write_atomically", real_write)
  # ... and the same command finishes it, still asking nothing.
  back = run(*replay_argv(data, out))
  assert back.asked == 0 and read(back) == read(first)
  assert back.stats["usage"] == first.stats["usage"] and back.stats["kept"] == 11
  # Other settings still need --restart.
  with pytest.raises(SbsError, match=r"other settings \(.*answer_regex.*pass --restart"):
    run(*replay_argv(data, out, "--keep", "vote", "--answer_regex", "Final:"))


def test_replayed_samples_must_be_one_count(tmp_path):
  rows = [dict(SAMPLED_ROWS[0]), dict(SAMPLED_ROWS[1], out=SAMPLED_ROWS[1]["out"][:2])]
  data = write_jsonl(tmp_path / "rows.jsonl", rows)
  with pytest.raises(SbsError, match=r"rows.jsonl: line 2: field 'out': 2 completion\(s\), "
                     r"but line 1 has 3"):
    run(*replay_argv(data, tmp_path / "out"))
  for bad, message in (([], "an empty list"), (["a", 3], "list of strings")):
    data = write_jsonl(tmp_path / "bad.jsonl", [dict(SAMPLED_ROWS[0], out=bad)])
    with pytest.raises(SbsError, match=message):
      run(*replay_argv(data, tmp_path / "out"))
  data = write_jsonl(tmp_path / "rows.jsonl", SAMPLED_ROWS)
  with pytest.raises(SbsError, match=r"--num_samples 2: .* holds 3 completion\(s\) per row"):
    run(*replay_argv(data, tmp_path / "out", "--num_samples", "2"))
  assert run(*replay_argv(data, tmp_path / "out", "--num_samples", "3")).stats["records"] == 15
  assert not (tmp_path / "out" / "bad").exists()


@pytest.mark.parametrize("extra,message", [
    (["--num_samples", "0"], "--num_samples 0: must be at least 1"),
    (["--price_in", "-1", "--price_out", "1"], "--price_in -1: must be 0 or more"),
    (["--price_in", "1"], "--price_in and --price_out go together"),
    (["--max_cost", "5"], "--max_cost needs --price_in and --price_out"),
    (["--max_cost", "0", "--price_in", "1", "--price_out", "1"], "--max_cost 0: must be"),
])
def test_bad_values_are_one_line(tmp_path, extra, message):
  data = write_jsonl(tmp_path / "rows.jsonl", SAMPLED_ROWS)
  with pytest.raises(SbsError, match=message) as e:
    build.build_job(parse(replay_argv(data, tmp_path / "out", *extra)))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()


def test_keep_gold_without_any_gold_label_is_refused(tmp_path, data_dir):
  data = write_jsonl(tmp_path / "rows.jsonl", [r for r in SAMPLED_ROWS if "label" not in r])
  with pytest.raises(SbsError, match="--keep gold: .* has no gold labels"):
    build.build_job(parse(replay_argv(data, tmp_path / "out", "--keep", "gold")))
  with pytest.raises(SbsError, match=r"--num_samples 2: .*test_CoT.* holds 1 "
                     r"completion\(s\) per row"):
    build.build_job(parse(["--dataset", "svamp", "--split", "test", "--teacher", "replay",
                           "--data_dir", data_dir, "--out_dir", tmp_path / "o",
                           "--num_samples", "2"]))


def test_old_journal_entries_read_as_sample_zero(tmp_path):
  from sbs_jax.annotate.journal import Journal
  path = tmp_path / "journal.jsonl"
  path.write_text('{"i": 3, "h": "x", "c": "old", "pt": 1, "ct": 2}\n'
                  '{"i": 3, "s": 1, "h": "x", "c": "new", "pt": 1, "ct": 2}\n')
  assert {k: e["c"] for k, e in Journal(path).load().items()} == {(3, 0): "old",
                                                                 (3, 1): "new"}


# ---------------------------------------------------------------- the OpenAI teacher


def query(prompt: str) -> str:
  return prompt.rsplit("Q:", 1)[-1].split("\nA:", 1)[0].strip()


def sample_answer(prompt: str, k: int) -> str:
  """The k-th sample for a prompt: every third one a wrong answer."""
  n = len(query(prompt)) + (1 if k % 3 == 1 else 0)
  return f"Sample {k} counts. So the answer is {n}.\n\nQ: a run-on exemplar"


def openai_argv(data, out, server, *extra):
  return ["--dataset", f"jsonl:{data}", "--teacher", "openai", "--base_url", server.url,
          "--model", "fake", "--out_dir", out, "--timeout", "5", "--retry_base_delay", "0.01",
          "--retry_max_delay", "0.05", "--temperature", "0.7", *extra]


def test_n_honoured_ignored_or_refused_gives_the_same_records(tmp_path):
  data, rows = write_sums(tmp_path)
  got, requests, usage = {}, {}, {}
  for mode in ("honour", "ignore", "refuse"):
    with FakeOpenAIServer(n_support=mode, sample_fn=sample_answer) as server:
      result = run(*openai_argv(data, tmp_path / mode, server, "--num_samples", "3",
                                "--concurrency", "1"))
    got[mode], requests[mode], usage[mode] = read(result), list(server.n_asked), (
        result.stats["usage"])
  assert got["honour"] == got["ignore"] == got["refuse"]
  recs = got["honour"]
  assert len(recs) == 36 and [r["completion"].split(".")[0] for r in recs[:3]] == [
      "Sample 0 counts", "Sample 1 counts", "Sample 2 counts"]
  assert [r["kept"] for r in recs[:3]] == [1, 1, 1]
  assert recs[0]["vote_label"] == str(len(rows[0]["input"]))
  assert recs[0]["vote_share"] == pytest.approx(2 / 3)
  # One request per example where the server takes n; else the first asks for 3, gets
  # one (or a 400), and from then on every sample has a request of its own.
  assert requests["honour"] == [3] * 12
  assert requests["ignore"] == [3, 1, 1] + [1] * 33
  assert requests["refuse"] == [3] + [1] * 36
  # A response's usage covers its choices: the prompt is counted once per request.
  job = build.build_job(parse(openai_argv(data, tmp_path / "x", server)))
  prompt_words = sum(len(job.prompt.render(ex).split()) for ex in job.examples)
  assert usage["honour"]["prompt_tokens"] == prompt_words
  assert usage["ignore"]["prompt_tokens"] == 3 * prompt_words
  assert usage["honour"]["completion_tokens"] == usage["ignore"]["completion_tokens"]


def test_stopped_run_with_samples_resumes_asking_only_missing_pairs(tmp_path):
  data, rows = write_sums(tmp_path, n=16)
  served = []

  def goes_down(prompt, attempt):
    served.append(prompt)
    return "401" if len(served) > 20 else None

  with FakeOpenAIServer(n_support="ignore", sample_fn=sample_answer,
                        fault_fn=goes_down) as down:
    with pytest.raises(TeacherError, match="HTTP 401"):
      run(*openai_argv(data, tmp_path / "out", down, "--num_samples", "3",
                       "--concurrency", "1"))
  journal = next((tmp_path / "out/sums/.partial").glob("*/journal.jsonl"))
  done = [json.loads(line) for line in journal.read_text().splitlines()]
  done_pairs = {(e["i"], e["s"]) for e in done}
  assert len(done_pairs) == len(done) == 20  # each answer journalled as it came
  per_example = collections.Counter(i for i, _ in done_pairs)
  assert per_example == {**{i: 3 for i in range(6)}, 6: 2}  # stopped inside example 6

  with FakeOpenAIServer(n_support="ignore", sample_fn=sample_answer) as up:
    result = run(*openai_argv(data, tmp_path / "out", up, "--num_samples", "3",
                              "--concurrency", "4"))
  asked = collections.Counter(query(p) for p, _ in up.log)
  want = {rows[i]["input"]: 3 - per_example.get(i, 0) for i in range(16)
          if per_example.get(i, 0) < 3}
  assert dict(asked) == want  # only the missing (example, sample) pairs
  assert result.asked == 48 - len(done)
  recs = read(result)
  assert [(r["index"], r["sample"]) for r in recs] == [(i, s) for i in range(16)
                                                        for s in range(3)]
  kept_from_first = {(e["i"], e["s"]): e["c"] for e in done}
  assert all(r["completion"] == kept_from_first[r["index"], r["sample"]] for r in recs
             if (r["index"], r["sample"]) in kept_from_first)


def test_partial_run_with_another_number_of_samples_is_refused(tmp_path):
  data, _ = write_sums(tmp_path, n=4)
  job = build.build_job(parse(replay_argv(write_jsonl(tmp_path / "r.jsonl", SAMPLED_ROWS),
                                          tmp_path / "out")))
  job.work_dir.mkdir(parents=True)
  (job.work_dir / "manifest.json").write_text(json.dumps(dict(job.manifest(),
                                                              num_samples=2)))
  with pytest.raises(SbsError, match=r"partial run with other settings \(num_samples: 2 -> "
                     r"3\).*--restart"):
    job_lib.run(job)


# ---------------------------------------------------------------- cost


def test_split_evenly_and_the_ledger():
  assert split_evenly(10, 3) == [4, 3, 3] and split_evenly(2, 3) == [1, 1, 0]
  assert sum(split_evenly(1001, 7)) == 1001 and split_evenly(5, 0) == []
  ledger = Ledger(Prices(2.0, 10.0), budget=0.001, prompt_tokens=100, completion_tokens=50)
  assert ledger.spent == pytest.approx(0.0007) and not ledger.reached()
  ledger.add(100, 10)
  assert ledger.spent == pytest.approx(0.001) and ledger.reached()
  assert ledger.spent_this_run == pytest.approx(0.0003) and ledger.shown() == "$0.0010"
  assert Ledger(None).spent is None and Ledger(None).shown() == ""


def test_budget_stops_cleanly_and_a_higher_one_resumes(tmp_path):
  data, rows = write_sums(tmp_path, n=10)
  prices = ["--price_in", "1000", "--price_out", "2000"]  # dollars per million tokens
  with FakeOpenAIServer() as server:
    full = run(*openai_argv(data, tmp_path / "full", server, *prices))
    per_example = full.stats["cost_usd"] / 10
    assert full.stats["cost_usd"] == pytest.approx(
        (full.stats["usage"]["prompt_tokens"] * 1000
         + full.stats["usage"]["completion_tokens"] * 2000) / 1e6)
    server.log.clear()
    budget = 3.5 * per_example  # reached after the 4th answer (the prompts' lengths vary)
    with pytest.raises(SbsError, match=r"--max_cost .* reached: \$[0-9.]+ spent on this "
                       r"shard .* rerun with a higher --max_cost to resume") as e:
      run(*openai_argv(data, tmp_path / "cut", server, *prices, "--concurrency", "1",
                       "--max_cost", f"{budget:.6f}"))
    assert "\n" not in str(e.value)
    first = [p for p, _ in server.log]
    assert len(first) == 4 and len(set(first)) == 4  # the prompts cost the same
    journal = next((tmp_path / "cut/sums/.partial").glob("*/journal.jsonl"))
    assert journal.read_text().count("\n") == len(first)
    # The same budget again: nothing more is asked.
    with pytest.raises(SbsError, match="reached"):
      run(*openai_argv(data, tmp_path / "cut", server, *prices, "--max_cost",
                       f"{budget:.6f}"))
    assert len(server.log) == len(first)
    again = run(*openai_argv(data, tmp_path / "cut", server, *prices, "--max_cost",
                             f"{20 * per_example:.6f}"))
  second = [p for p, _ in server.log[len(first):]]
  assert not set(second) & set(first) and len(first) + len(second) == 10
  assert read(again) == read(full)
  assert again.stats["cost_usd"] == pytest.approx(full.stats["cost_usd"])
  assert again.stats["usage"] == full.stats["usage"]


# ---------------------------------------------------------------- records of the old schema


def test_records_of_the_old_schema_read_with_defaults(tmp_path):
  import tensorflow as tf
  from sbs_jax.data.sources import AnnotationSource
  old_bytes = ("id", "dataset", "split", "input", "label", "llm_label", "rationale",
               "parse_error", "completion", "prompt_id", "teacher")
  folder = tmp_path / "ann" / "olds"
  folder.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(folder / "test.tfrecord-00000-of-00001")) as writer:
    for i in range(3):
      values = {k: f"{k}-{i}" for k in old_bytes}
      feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
                 for k, v in values.items()}
      for k, v in (("index", i), ("has_label", 1), ("parse_ok", int(i != 1))):
        feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())
  got = list(AnnotationSource("olds", tmp_path / "ann").get_dataset(
      "test", shuffle=False).as_numpy_iterator())
  assert [r["id"] for r in got] == [b"id-0", b"id-1", b"id-2"]
  assert [(r["sample"], r["num_samples"], r["kept"], r["vote_label"], r["vote_share"])
          for r in got] == [(0, 1, 1, b"", 0.0)] * 3
  assert [r["parse_ok"] for r in got] == [1, 0, 1] and got[2]["rationale"] == b"rationale-2"
  recs = records.read_records([folder / "test.tfrecord-00000-of-00001"])
  assert recs[1]["llm_label"] == "llm_label-1" and recs[1]["sample"] == 0
  assert recs[1]["vote_share"] == 0.0 and recs[1]["kept"] == 1


def test_split_stats_of_shards_add_up(tmp_path):
  data = write_jsonl(tmp_path / "rows.jsonl", SAMPLED_ROWS)
  one = run(*replay_argv(data, tmp_path / "one", "--keep", "vote")).stats
  merged = None
  for i in range(2):
    merged = run(*replay_argv(data, tmp_path / "two", "--keep", "vote", "--num_shards", "2",
                              "--shard_index", i)).split_stats
  counted = ("examples", "records", "parsed", "labeled", "correct", "vote_correct", "kept",
             "kept_labeled", "kept_correct", "examples_without_kept", "teacher_accuracy",
             "vote_accuracy", "kept_accuracy", "usage", "num_samples", "keep")
  assert {k: merged[k] for k in counted} == {k: one[k] for k in counted}
  assert merged["manifest"]["num_samples"] == 3 and merged["manifest"]["keep"] == "vote"


def test_requests_in_flight_finish_and_are_journalled_at_the_budget(tmp_path):
  data, _ = write_sums(tmp_path, n=20)
  prices = ["--price_in", "1000", "--price_out", "2000"]
  with FakeOpenAIServer(delay_seconds=0.05) as server:
    one = run(*openai_argv(data, tmp_path / "one", server, *prices)).stats["cost_usd"] / 20
    server.log.clear()
    with pytest.raises(SbsError, match="reached"):
      run(*openai_argv(data, tmp_path / "cut", server, *prices, "--concurrency", "4",
                       "--max_cost", f"{3.5 * one:.6f}"))
    journal = next((tmp_path / "cut/sums/.partial").glob("*/journal.jsonl"))
    # Every request that started was answered and journalled; none started past the budget
    # but those already in flight (up to 3 beside the one that reached it).
    assert journal.read_text().count("\n") == len(server.log)
    assert 4 <= len(server.log) <= 7
    # Prices are not pinned: the rest, at other prices and no budget, resumes.
    done = run(*openai_argv(data, tmp_path / "cut", server, "--price_in", "1",
                            "--price_out", "1"))
  assert len(server.log) == 20 and done.stats["prices_per_million"] == {"prompt": 1.0,
                                                                        "completion": 1.0}
  assert done.stats["cost_usd"] == pytest.approx(done.stats["usage"]["total_tokens"] / 1e6)
  assert run(*openai_argv(data, tmp_path / "cut", server, *prices)).already_done


def test_progress_line_shows_the_dollars(caplog, monkeypatch):
  import itertools
  import logging
  from sbs_jax.jobdir import progress as progress_lib
  clock = itertools.count(0.0, 5.0)
  monkeypatch.setattr(progress_lib.time, "monotonic", lambda: next(clock))
  ledger = Ledger(Prices(1.0, 2.0), prompt_tokens=1_000_000, completion_tokens=250_000)
  caplog.set_level("INFO")
  bar = progress_lib.Progress(10, 0, "rows/train", False, logger=logging.getLogger("t"),
                              unit="sample", note=ledger.shown)
  bar.update(5)
  assert "rows/train: 5/10" in caplog.text and "$1.5000)" in caplog.text


def test_the_vocabulary_reads_an_example_once_and_every_samples_rationale(tmp_path):
  from sbs_jax.data import vocab  # pylint: disable=import-outside-toplevel
  data = write_jsonl(tmp_path / "rows.jsonl", SAMPLED_ROWS)
  run(*replay_argv(data, tmp_path / "out"))
  from sbs_jax.data.sources import AnnotationSource  # pylint: disable=import-outside-toplevel
  train = list(AnnotationSource("rows", str(tmp_path / "out")).get_dataset("train")
               .as_numpy_iterator())  # train less the carved validation examples
  inputs = {r["input"].decode() for r in train}
  assert len(train) == 3 * len(inputs) >= 9
  texts = list(vocab.train_texts(str(tmp_path / "out"), ["rows"]))
  for row in SAMPLED_ROWS:  # an input once, however many samples it has
    assert texts.count(row["input"]) == int(row["input"] in inputs), row["input"]
  assert [t for t in texts if t.startswith("R")] == [  # every parsed sample's rationale
      r["rationale"].decode() for r in train if r["rationale"].decode().startswith("R")]
  assert sum(t.startswith("R") for t in texts) > len(inputs)
