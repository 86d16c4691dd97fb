"""The annotation job with the replay teacher: the paper's numbers, sharding, resume, errors."""

import argparse
import dataclasses
import json

import pytest

from sbs_jax.annotate import build, job as job_lib
from sbs_jax.commands import annotate as annotate_command
from sbs_jax.data import records
from sbs_jax.annotate.teachers import Completion, ReplayTeacher
from sbs_jax.errors import SbsError
from tests.helpers.cli import run_sbs_here
from tests.helpers.data import ANLI_ROWS, annotate_args, make_anli, write_jsonl


def test_the_command_and_the_library_share_their_defaults():
  """`sbs annotate`'s flags left out give exactly `build.Options`' defaults, and a flag
  given reaches its field: the library (prepare, demo) and the command cannot drift."""
  parser = argparse.ArgumentParser()
  subparsers = parser.add_subparsers()
  annotate_command.add_parser(subparsers)
  args = parser.parse_args(["annotate", "--dataset", "cqa", "--teacher", "replay",
                            "--out_dir", "o"])
  assert build.options_of(args) == build.Options(dataset="cqa", teacher="replay", out_dir="o")
  args = parser.parse_args(["annotate", "--dataset", "cqa", "--teacher", "replay",
                            "--out_dir", "o", "--concurrency", "3", "--endpoint", "chat"])
  assert build.options_of(args) == build.Options(dataset="cqa", teacher="replay",
                                                 out_dir="o", concurrency=3, endpoint="chat")
  flags = {a.dest for a in subparsers.choices["annotate"]._actions}  # pylint: disable=protected-access
  assert {f.name for f in dataclasses.fields(build.Options)} == flags - {"help"}


@pytest.mark.parametrize("dataset,examples,accuracy,unparsable", [
    ("cqa", 1221, 77.2, 0),
    ("esnli", 9824, 73.0, 0),
    ("svamp", 200, None, None),
])
def test_replay_on_released_test_splits(tmp_path, data_dir, dataset, examples, accuracy,
                                        unparsable):
  job = build.build_job(annotate_args(dataset=dataset, split="test", teacher="replay",
                                        out_dir=tmp_path, data_dir=data_dir))
  result = job_lib.run(job)
  stats = json.loads((tmp_path / dataset / "test.stats.json").read_text())
  assert stats == result.split_stats
  assert stats["examples"] == examples == stats["parsed"] + stats["unparsable"]
  if accuracy is not None:
    assert stats["teacher_accuracy"] == pytest.approx(accuracy, abs=0.2)  # percent
  if unparsable is not None:
    assert stats["unparsable"] == unparsable
  recs = records.read_records([result.records_path])
  assert [r["index"] for r in recs] == list(range(examples))
  assert all(r["teacher"] == f"replay:{dataset}/llm/test_CoT" for r in recs)
  if dataset == "svamp":
    # Equations are compared by value: '(10 * 45)' is right for '( 10.0 * 45.0 )'.
    assert recs[0]["llm_label"] == "10 * 45" and recs[0]["label"] == "( 10.0 * 45.0 )"
    ok = [r for r in recs if r["parse_ok"]]
    from sbs_jax import arith
    assert stats["correct"] == sum(arith.same_value(r["llm_label"], r["label"]) for r in ok)
    assert stats["unparsable"] == len(recs) - len(ok) > 0
    assert sum(stats["unparsable_reasons"].values()) == stats["unparsable"]
    # Reasons are short categories; each shows its first cases in full, ids first.
    assert set(stats["unparsable_reasons"]) <= {"equation does not evaluate",
                                                "no parenthesised equation", "no answer phrase"}
    shown = stats["unparsable_examples"]["equation does not evaluate"]
    assert len(shown) == 3 and all(s.startswith("test-") for s in shown)
    assert "equation does not evaluate: " in shown[0] and "\\" not in shown[0]


def test_records_carry_the_schema(tmp_path, data_dir):
  job = build.build_job(annotate_args(dataset="cqa", split="test", teacher="replay",
                                        out_dir=tmp_path, data_dir=data_dir))
  rec = records.read_records([job_lib.run(job).records_path])[0]
  assert set(rec) == (set(records.BYTES_FEATURES) | set(records.INT_FEATURES)
                      | set(records.FLOAT_FEATURES))
  # One sample: the vote is the sample's label and its rationale is kept.
  assert (rec["sample"], rec["num_samples"], rec["vote_label"], rec["vote_share"],
          rec["kept"]) == (0, 1, "wooded area", 1.0, 1)
  assert rec["id"] == "080ef6941410139d6869e78122bc741e"
  assert (rec["label"], rec["llm_label"], rec["parse_ok"]) == ("wooded area",
                                                              "wooded area", 1)
  assert rec["rationale"].startswith("The answer must be") and "Q:" not in rec["rationale"]
  assert rec["prompt_id"] == "released-cqa-cot" and rec["has_label"] == 1


def test_anli1_through_the_command(tmp_path):
  data = tmp_path / "data"
  make_anli(data, ["Built in 1932. So the answer is entailment.\n\nPremise: x",
                   "Nothing about jazz. So the answer is neutral.",
                   "I cannot tell.\n\nPremise: next"])
  proc = run_sbs_here("annotate", "--dataset", "anli1", "--split", "test", "--teacher", "replay",
                 "--out_dir", tmp_path / "out", "--data_dir", data)
  assert proc.returncode == 0, proc.stderr
  stats = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (stats["examples"], stats["parsed"], stats["unparsable"]) == (3, 2, 1)
  assert stats["teacher_accuracy"] == 66.67  # percent, two decimals
  assert stats["answer_format"] == "anli1"
  recs = records.read_records([tmp_path / "out/anli1/test.tfrecord-00000-of-00001"])
  assert [r["id"] for r in recs] == [r["uid"] for r in ANLI_ROWS]
  assert recs[2]["parse_ok"] == 0 and recs[2]["llm_label"] == ""
  assert "So the answer is" in recs[2]["parse_error"]


def test_shards_together_equal_one_run(tmp_path, data_dir):
  one = job_lib.run(build.build_job(annotate_args(
      dataset="svamp", split="test", teacher="replay", out_dir=tmp_path / "one",
      data_dir=data_dir)))
  merged = None
  for i in range(3):
    r = job_lib.run(build.build_job(annotate_args(
        dataset="svamp", split="test", teacher="replay", out_dir=tmp_path / "three",
        data_dir=data_dir, num_shards=3, shard_index=i)))
    assert (r.split_stats is None) == (i < 2)
    merged = r.split_stats
  shards = sorted((tmp_path / "three/svamp").glob("test.tfrecord-*-of-00003"))
  assert len(shards) == 3
  assert records.read_records(shards) == records.read_records([one.records_path])
  assert {k: merged[k] for k in ("examples", "parsed", "correct", "teacher_accuracy")} == {
      k: one.split_stats[k] for k in ("examples", "parsed", "correct", "teacher_accuracy")}


def test_custom_data_replay_unlabeled_rows_and_stem_name(tmp_path):
  path = write_jsonl(tmp_path / "my_faq.jsonl", [
      {"input": "2+2?", "label": "4", "out": "Add them. So the answer is 4."},
      {"input": "3+3?", "label": "6", "out": "Add. So the answer is 7."},
      {"input": "Sky?", "out": "Look up. The answer is blue.\n\nQ: next"},
      {"input": "??", "out": "garbage"}])
  proc = run_sbs_here("annotate", "--dataset", f"jsonl:{path}", "--teacher", "replay",
                 "--completion_key", "out", "--out_dir", tmp_path / "out")
  assert proc.returncode == 0, proc.stderr
  stats = json.loads((tmp_path / "out/my_faq/train.stats.json").read_text())
  assert (stats["labeled"], stats["correct"], stats["unparsable"]) == (2, 1, 1)
  recs = records.read_records([tmp_path / "out/my_faq/train.tfrecord-00000-of-00001"])
  assert [(r["llm_label"], r["has_label"]) for r in recs] == [
      ("4", 1), ("7", 1), ("blue", 0), ("", 0)]
  assert recs[2]["rationale"] == "Look up." and recs[0]["prompt_id"] == "external"


@pytest.mark.parametrize("content,message", [
    (b'{"input": "a", "out": "x"}\n{"input": "b", "out": \n', "line 2: invalid JSON"),
    (b'{"input": "a", "out": "x"}\n{"out": "y"}\n', "line 2: field 'input': missing field"),
    (b'{"input": "", "out": "x"}\n', "line 1: field 'input': empty text"),
    (b'{"input": "\xff", "out": "x"}\n', "line 1: invalid UTF-8"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(tmp_path, content, message):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(content)
  out = tmp_path / "out"
  proc = run_sbs_here("annotate", "--dataset", f"jsonl:{path}", "--teacher", "replay",
                      "--completion_key", "out", "--out_dir", out)
  assert proc.returncode == 2
  assert f"{path}: {message}" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists()


def test_completion_mismatch_exits_non_zero_and_writes_nothing(tmp_path):
  make_anli(tmp_path / "data", ["a", "b"])
  proc = run_sbs_here("annotate", "--dataset", "anli1", "--split", "test", "--teacher",
                      "replay", "--out_dir", tmp_path / "out", "--data_dir", tmp_path / "data")
  assert proc.returncode == 2 and "2 completions for 3 rows" in proc.stderr
  assert not (tmp_path / "out").exists()


class FlakyTeacher(ReplayTeacher):
  """Answers `budget` examples, then fails like a server going down."""

  def __init__(self, completions, budget):
    super().__init__(completions, "flaky")
    self.budget = budget
    self.asked = []

  async def complete(self, example, prompt, samples=(0,)):
    if len(self.asked) >= self.budget:
      raise SbsError("teacher down")
    self.asked.append(example.index)
    return [Completion(self._completions[example.index], prompt_tokens=3,
                       completion_tokens=2)]


def test_interrupted_job_resumes_asking_only_for_missing(tmp_path, data_dir):
  def make(budget):
    j = build.build_job(annotate_args(dataset="svamp", split="test", teacher="replay",
                                        out_dir=tmp_path, data_dir=data_dir, concurrency=4))
    j.teacher = FlakyTeacher(j.teacher._completions, budget)  # pylint: disable=protected-access
    return j

  first = make(70)
  with pytest.raises(SbsError, match="teacher down"):
    job_lib.run(first)
  records_path = tmp_path / "svamp/test.tfrecord-00000-of-00001"
  assert not records_path.exists() and not (tmp_path / "svamp/test.stats.json").exists()
  # A half-written journal line, as a kill in mid-write leaves it, is dropped on resume.
  journal = first.work_dir / "journal.jsonl"
  with open(journal, "a") as f:
    f.write('{"i": 199, "h": "abc", "c": "trunc')
  second = make(10_000)
  result = job_lib.run(second)
  assert sorted(first.teacher.asked + second.teacher.asked) == list(range(200))
  assert result.asked == 130
  recs = records.read_records([records_path])
  assert [r["index"] for r in recs] == list(range(200))
  assert result.stats["usage"] == {"prompt_tokens": 600, "completion_tokens": 400,
                                   "total_tokens": 1000}
  assert not first.work_dir.exists()
  # Once done, the same command does nothing more.
  assert job_lib.run(make(0)).already_done


def test_resume_with_other_settings_is_refused(tmp_path, data_dir):
  j = build.build_job(annotate_args(dataset="svamp", split="test", teacher="replay",
                                      out_dir=tmp_path, data_dir=data_dir))
  j.work_dir.mkdir(parents=True)
  (j.work_dir / "manifest.json").write_text(json.dumps(dict(j.manifest(), teacher="other")))
  with pytest.raises(SbsError, match="other settings.*--restart"):
    job_lib.run(j)
  j.restart = True
  assert job_lib.run(j).stats["examples"] == 200


QA_ROWS = [{"input": "2+2?", "label": "4", "out": "Add. So the answer is 4."},
           {"input": "3+3?", "label": "6", "out": "Add. Final: 6\nSo the answer is 7."},
           {"input": "5+5?", "label": "10", "out": "Count. So the answer is 10 apples."}]


def test_finished_run_returns_at_once_only_with_the_same_settings(tmp_path):
  path = write_jsonl(tmp_path / "a" / "qa.jsonl", QA_ROWS)
  same_stem = write_jsonl(tmp_path / "b" / "qa.jsonl", [dict(r, label="x") for r in QA_ROWS])
  other_answers = write_jsonl(tmp_path / "c" / "qa.jsonl",
                              [dict(r, out="So the answer is 5.") for r in QA_ROWS])
  base = dict(dataset=f"jsonl:{path}", teacher="replay", completion_key="out",
              out_dir=tmp_path / "out")
  first = job_lib.run(build.build_job(annotate_args(**base)))
  assert not first.already_done and first.stats["correct"] == 1  # "10 apples" is not "10"
  again = job_lib.run(build.build_job(annotate_args(**base)))
  assert again.already_done and again.stats == first.stats

  changes = [({"answer_regex": "Final:"}, "parser_settings"),
             ({"answer_format": "number"}, "answer_format"),
             ({"dataset": f"jsonl:{same_stem}"}, "examples_sha256"),
             ({"dataset": f"jsonl:{other_answers}"}, "teacher_settings"),
             ({"input_key": "input", "id_key": "input"}, "first_id")]
  for change, key in changes:
    with pytest.raises(SbsError, match=rf"finished but was made with other settings "
                       rf"\(.*{key}: .* -> .*\): pass --restart"):
      job_lib.run(build.build_job(annotate_args(**dict(base, **change))))
  records_path = tmp_path / "out/qa/train.tfrecord-00000-of-00001"
  assert [r["llm_label"] for r in records.read_records([records_path])] == ["4", "7",
                                                                            "10 apples"]

  restarted = build.build_job(annotate_args(**base, answer_regex="Final:"))
  restarted.restart = True
  result = job_lib.run(restarted)
  assert not result.already_done and result.stats["correct"] == 1  # only row 2 has Final:
  assert [r["llm_label"] for r in records.read_records([records_path])] == ["", "6", ""]
  # The new settings are now the recorded ones.
  assert job_lib.run(build.build_job(annotate_args(**base, answer_regex="Final:"))).already_done


def test_finished_rerun_refusal_is_one_line_through_the_command(tmp_path):
  path = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
  argv = ["annotate", "--dataset", f"jsonl:{path}", "--teacher", "replay", "--completion_key",
          "out", "--out_dir", tmp_path / "out", "--no_progress"]
  assert run_sbs_here(*argv).returncode == 0
  proc = run_sbs_here(*argv, "--answer_regex", "Final:")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if "--restart" in l]
  assert len(lines) == 1 and "answer_regex" in lines[0], proc.stderr
  proc = run_sbs_here(*argv, "--answer_regex", "Final:", "--restart")
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.strip().splitlines()[-1])["parsed"] == 1


def test_shards_made_with_other_settings_are_not_merged(tmp_path):
  path = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
  base = dict(dataset=f"jsonl:{path}", teacher="replay", completion_key="out",
              out_dir=tmp_path / "out", num_shards=2)
  assert job_lib.run(build.build_job(annotate_args(**base, shard_index=0))).split_stats is None
  other = job_lib.run(build.build_job(annotate_args(**base, shard_index=1,
                                                      answer_regex="Final:")))
  assert other.split_stats is None and not (tmp_path / "out/qa/train.stats.json").exists()
  fixed = build.build_job(annotate_args(**base, shard_index=1))
  fixed.restart = True
  merged = job_lib.run(fixed).split_stats
  assert merged["examples"] == 3 and merged["correct"] == 1
  assert merged["manifest"]["parser_settings"]["answer_regex"] == r"[Aa]nswer is\s*:?"
