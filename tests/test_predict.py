"""`sbs predict`: bucketing, the file job (order, resume, bad rows, truncation, accuracy)
and the command, on a tiny random-init student with a small vocabulary trained here."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sbs_jax.data.readers import load_jsonl
from sbs_jax.errors import DataError, SbsError
from sbs_jax.serve import batching, job as job_lib
from sbs_jax.serve.predictor import DecodeSettings, Predictor, predict_labels
from sbs_jax.model import student as student_lib
from tests.helpers import REPO
from tests.helpers.cli import run_sbs_here
from tests.helpers.predict import MAX_INPUT, cqa_texts, make_model_dir, read_lines, write_rows

DECODE = ["--max_decode_length", "6", "--no_progress"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
  return make_model_dir(tmp_path_factory.mktemp("predict"), data_dir)


@pytest.fixture(scope="module")
def texts(data_dir):
  return cqa_texts(data_dir, 37)


def make_job(tmp_path, rows, **kwargs) -> job_lib.FileJob:
  source = write_rows(tmp_path / "rows.jsonl", rows)
  return job_lib.FileJob(source, tmp_path / "out.jsonl", kwargs.pop("model_dir"),
                         progress=False, **kwargs)


# ---------------------------------------------------------------- batching


def test_bucket_lengths_are_few_and_bounded():
  buckets = batching.bucket_lengths(512)
  assert buckets == (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
  assert batching.bucket_lengths(100)[-1] == 100 and batching.bucket_for(97, (96, 100)) == 100
  assert all(b / a <= 1.5 for a, b in zip(buckets, buckets[1:]))  # at most 1/3 padding
  with pytest.raises(ValueError):
    batching.bucket_for(513, buckets)


def test_length_sorted_batches_place_every_row_once_in_few_shapes():
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 200, size=203)
  rows = [batching.Encoded(tuple(range(2, n + 1)) + (1,), False, n) for n in lengths]
  seen, shapes, previous = [], set(), 0
  for positions, ids in batching.length_sorted_batches(rows, 16, batching.bucket_lengths(256)):
    shapes.add(ids.shape[1])
    assert len(ids) == len(positions) <= 16
    for pos, row in zip(positions, ids):
      assert list(row[:len(rows[pos].ids)]) == list(rows[pos].ids)
      assert not row[len(rows[pos].ids):].any()
    widths = [len(rows[p].ids) for p in positions]
    assert previous <= min(widths) and batching.bucket_for(max(widths), (
        batching.bucket_lengths(256))) == ids.shape[1]
    previous = max(widths)
    seen += positions
  assert sorted(seen) == list(range(len(rows)))
  assert shapes <= set(batching.bucket_lengths(256)) and len(shapes) <= 8


def test_encode_cuts_to_the_length_with_eos():
  class Chars:  # a vocabulary of one token per character
    @staticmethod
    def encode(text):
      return [ord(c) for c in text]
  short, long = batching.encode(Chars, "abc", 8), batching.encode(Chars, "x" * 20, 8)
  assert short == batching.Encoded((97, 98, 99, 1), False, 4)
  assert long.ids == (120,) * 7 + (1,) and long.truncated and long.tokens == 21


# ---------------------------------------------------------------- the predictor and the job


def test_batched_file_rows_keep_order_and_equal_one_at_a_time(model_dir, texts, tmp_path):
  """37 rows over 3 windows, each cut into length-sorted batches of 4 in several buckets:
  every output row is that of its input decoded alone."""
  predictor = Predictor.load(str(model_dir), DecodeSettings(batch_size=4, label_decode_length=6))
  job = make_job(tmp_path, [{"input": t, "n": i} for i, t in enumerate(texts)],
                 model_dir=str(model_dir), window=16)
  stats = job_lib.run(job, predictor)
  out = read_lines(tmp_path / "out.jsonl")
  alone = [predict_labels(predictor.student, predictor.params, predictor.vocabulary, [t],
                          predictor.label_prefix, max_decode_length=6)[0] for t in texts]
  assert [r["id"] for r in out] == list(range(len(texts)))
  assert [r["label"] for r in out] == alone
  assert len(set(alone)) > 5  # the rows differ, so a mix-up of rows would show
  widths = {len(predictor.encode([t], predictor.label_prefix)[0].ids) for t in texts}
  assert len({batching.bucket_for(w, predictor.buckets) for w in widths}) >= 2
  assert stats["rows"] == len(texts) and stats["labelled"] == 0 and stats["accuracy"] is None
  assert not job.work_dir.exists()


def test_kill_and_resume_gives_the_uninterrupted_file(model_dir, texts, tmp_path):
  predictor = Predictor.load(str(model_dir), DecodeSettings(batch_size=4, label_decode_length=6))
  rows = [{"input": t, "key": f"q{i}"} for i, t in enumerate(texts)]
  (tmp_path / "a").mkdir()
  whole = make_job(tmp_path / "a", rows, model_dir=str(model_dir), window=8, id_key="key",
                   rationale=True)
  job_lib.run(whole, predictor)

  class Killed(Exception):
    pass

  def kill_after_two_windows(done):
    if done == 16:
      raise Killed

  (tmp_path / "b").mkdir()
  job = make_job(tmp_path / "b", rows, model_dir=str(model_dir), window=8, id_key="key",
                 rationale=True)
  with pytest.raises(Killed):
    job_lib.run(job, predictor, on_window=kill_after_two_windows)
  assert not job.output_file.exists() and len(read_lines(job.rows_path)) == 16
  with open(job.rows_path, "a", encoding="utf-8") as f:  # the next window, half written
    f.write(json.dumps({"id": "q16", "label": "x"}) + "\n" + '{"id": "q1')
  stats = job_lib.run(job, predictor)
  assert stats["rows_this_run"] == len(texts) - 16
  assert job.output_file.read_bytes() == whole.output_file.read_bytes()
  out = read_lines(job.output_file)
  assert [r["id"] for r in out] == [r["key"] for r in rows] and "rationale" in out[0]
  # A finished file is not redone; a partial run with other settings is refused.
  assert job_lib.run(job, predictor)["rows"] == len(texts)
  other = make_job(tmp_path / "b", rows, model_dir=str(model_dir), window=8, id_key="key")
  other.output_file = tmp_path / "b" / "other.jsonl"
  with pytest.raises(Killed):
    job_lib.run(other, predictor, on_window=kill_after_two_windows)
  changed = make_job(tmp_path / "b", rows, model_dir=str(model_dir), window=4, id_key="key")
  changed.output_file = other.output_file
  with pytest.raises(SbsError, match="--restart"):
    job_lib.run(changed, predictor)


def test_accuracy_uses_evaluation_normalisation(model_dir, texts, tmp_path):
  predictor = Predictor.load(str(model_dir), DecodeSettings(batch_size=8, label_decode_length=6))
  labels = [o["label"] for o in predictor.predict(texts[:10])]
  gold = [f"  {' '.join(l.split())}  " if i % 2 else "not it" for i, l in enumerate(labels)]
  rows = [{"question": t, "answer": g} for t, g in zip(texts[:10], gold)]
  rows.append({"question": texts[10]})  # unlabeled: not counted
  job = make_job(tmp_path, rows, model_dir=str(model_dir), input_key="question",
                 label_key="answer")
  stats = job_lib.run(job, predictor)
  assert (stats["labelled"], stats["correct"], stats["accuracy"]) == (10, 5, 50.0)
  assert json.loads(job.stats_path.read_text())["accuracy"] == 50.0
  out = read_lines(job.output_file)
  assert [r.get("correct") for r in out] == [bool(i % 2) for i in range(10)] + [None]


def test_over_long_input_is_truncated_and_counted(model_dir, texts, tmp_path):
  predictor = Predictor.load(str(model_dir), DecodeSettings(batch_size=4, label_decode_length=6))
  assert predictor.max_input_length == MAX_INPUT  # from model.json
  long_text = " ".join(texts) * 16  # ~100 KB
  assert len(long_text) > 100_000
  job = make_job(tmp_path, [{"input": texts[0]}, {"input": long_text}],
                 model_dir=str(model_dir))
  stats = job_lib.run(job, predictor)
  out = read_lines(job.output_file)
  assert stats["truncated"] == 1 and [r["truncated"] for r in out] == [False, True]
  assert out[1]["input_tokens"] > 20_000
  # The label is that of the input's first MAX_INPUT - 1 tokens.
  ids = list(predictor.vocabulary.encode(predictor.label_prefix + long_text))[:MAX_INPUT - 1]
  decoded = student_lib.decode(predictor.student, predictor.params,
                            np.array([ids + [1]], np.int32), 1, 6)
  assert out[1]["label"] == student_lib.detokenize(predictor.vocabulary, decoded[0])


# ---------------------------------------------------------------- the command


def test_file_command_equals_input_command(model_dir, texts, tmp_path):
  chosen = texts[:6]
  source = write_rows(tmp_path / "rows.jsonl", [{"input": t} for t in chosen])
  inputs = [a for t in chosen for a in ("--input", t)]
  single = run_sbs_here("predict", "--model_dir", model_dir, *inputs, "--rationale",
                        "--rationale_decode_length", "8", *DECODE)
  assert single.returncode == 0, single.stderr[-2000:]
  proc = run_sbs_here("predict", "--model_dir", model_dir, "--input_file", source,
                      "--output_file", tmp_path / "out.jsonl", "--rationale",
                      "--rationale_decode_length", "8", "--batch_size", "4", *DECODE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  expected = [json.loads(line) for line in single.stdout.splitlines()]
  got = read_lines(tmp_path / "out.jsonl")
  assert [e["input"] for e in expected] == chosen
  assert [(g["label"], g["rationale"]) for g in got] == [(e["label"], e["rationale"])
                                                         for e in expected]
  assert json.loads(proc.stdout.splitlines()[-1])["rows"] == 6


def test_long_input_command_reports_the_cut(model_dir, texts):
  proc = run_sbs_here("predict", "--model_dir", model_dir, "--input", " ".join(texts) * 16,
                      "--max_input_length", "32", *DECODE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "1 of 1 inputs were longer than 32 tokens" in proc.stderr
  assert json.loads(proc.stdout.splitlines()[-1])["truncated"] is True


@pytest.mark.parametrize("bad, field", [({"text": "no input field"}, "input"),
                                        ({"input": 7}, "input"), ({"input": "  "}, "input"),
                                        ("{not json", None), ("[1, 2]", None)])
def test_bad_rows_get_the_annotate_readers_error(model_dir, tmp_path, bad, field):
  lines = [json.dumps({"input": "fine"}), json.dumps({"input": "also fine"}),
           bad if isinstance(bad, str) else json.dumps(bad)]
  source = tmp_path / "rows.jsonl"
  source.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError) as reader:
    load_jsonl(source)
  assert "line 3" in str(reader.value) and (field is None or reader.value.field == field)
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir))
  with pytest.raises(DataError) as ours:
    job_lib.count_rows(job)
  assert str(ours.value) == str(reader.value)
  if field == "input":  # the command: one line, exit 2, nothing written
    proc = run_sbs_here("predict", "--model_dir", model_dir, "--input_file", source,
                        "--output_file", tmp_path / "out.jsonl", *DECODE)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"sbs predict: error: {reader.value}"
    assert not (tmp_path / "out.jsonl").exists() and not job.work_dir.exists()


def test_sigkill_and_rerun_gives_the_uninterrupted_file(model_dir, data_dir, tmp_path):
  """A real `kill -9` mid-run (possibly mid-window), then the same command again."""
  texts = cqa_texts(data_dir, 80)
  source = write_rows(tmp_path / "rows.jsonl", [{"input": t} for t in texts])
  flags = ["--batch_size", "4", "--window", "4", "--max_decode_length", "6"]
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir), window=4,
                        progress=False)
  proc = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, "-m", "sbs_jax.cli", "predict", "--model_dir", str(model_dir),
       "--input_file", str(source), "--output_file", str(job.output_file), *flags,
       "--no_progress"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    if job.rows_path.exists() and job.rows_path.read_bytes().count(b"\n") >= 8:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = job.rows_path.read_bytes().count(b"\n")
  assert 8 <= written < len(texts) and not job.output_file.exists()
  rerun = run_sbs_here("predict", "--model_dir", model_dir, "--input_file", source,
                       "--output_file", job.output_file, *flags, "--no_progress")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert json.loads(rerun.stdout.splitlines()[-1])["rows_this_run"] <= len(texts) - 8
  predictor = Predictor.load(str(model_dir), DecodeSettings(batch_size=4, label_decode_length=6))
  reference = job_lib.FileJob(source, tmp_path / "reference.jsonl", str(model_dir), window=4,
                              progress=False)
  job_lib.run(reference, predictor)
  assert job.output_file.read_bytes() == reference.output_file.read_bytes()


def test_a_second_process_on_the_same_output_is_refused(model_dir, tmp_path):
  from sbs_jax.jobdir.locks import lock_exclusively
  job = make_job(tmp_path, [{"input": "a question"}], model_dir=str(model_dir))
  job.work_dir.mkdir()
  held = lock_exclusively(job.work_dir / "lock", "held by the test")
  try:
    with pytest.raises(SbsError, match="another `sbs predict` is writing"):
      job_lib.run(job, predictor=None)  # refused before the model is needed
  finally:
    held.close()
  assert not job.output_file.exists()
