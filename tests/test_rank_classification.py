"""Rank classification (`sbs eval` / `sbs predict --label_mode rank`): the label sets of the
datasets, the scores against a direct teacher-forced computation, the answer (argmax, ties
to the first), the same labels at any batch size, over two devices and over two hosts,
refusals of data without a closed label set, and a `sbs predict` job that never mixes
the two modes."""

import functools
import json
import math
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from sbs_jax import cli
from sbs_jax.annotate import answer_formats, benchmarks
from sbs_jax.annotate.answer_formats import CHOICE, NLI, LabelSet
from sbs_jax.data.readers import NLI_LABELS, cqa_input, read_json_rows
from sbs_jax.errors import DataError, SbsError
from sbs_jax.model import decoding
from sbs_jax.model import student as student_lib
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.model.network import Transformer
from sbs_jax.serve import batching, job as job_lib
from sbs_jax.serve.predictor import DecodeSettings, Predictor, recorded_label_set
from tests.helpers import REPO
from tests.helpers.multihost import cluster_env
from tests.helpers.predict import write_rows
from tests.helpers.registry import forgotten_after
from tests.helpers.rank import (TINY, CharVocabulary, cqa_like_texts, predictor,
                                rank_labels, tiny_student)


@pytest.fixture(scope="module")
def tiny():
  return tiny_student()


def log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda params, x, previous, y: model.apply({"params": params}, x, previous, y))


@functools.lru_cache(maxsize=None)
def _encoder(model):
  return jax.jit(lambda params, x: model.apply({"params": params}, x,
                                               method=Transformer.encode))


@functools.lru_cache(maxsize=None)
def _step(model, length: int):
  return jax.jit(lambda params, cache, encoded, x, token: decoding.decode_step(
      model, params, cache, encoded, x, token, length))


def _padded(ids, length: int) -> np.ndarray:
  out = np.zeros((1, length), np.int32)
  out[0, :len(ids)] = ids
  return out


def teacher_forced(model, params, input_ids, target, pad: tuple[int, int] | None = (256, 16)
                   ) -> float:
  """log p(target | input) of one row by the network's full forward pass (the decoder sees
  0 then the target), summed on the host in float64; `pad`: zero-padded to these input
  and target lengths (one compilation for all rows), None: unpadded."""
  forward = _forward(model) if pad else (
      lambda p, *a: model.apply({"params": p}, *a))
  x, y = (_padded(input_ids, pad[0]), _padded(target, pad[1])) if pad else (
      np.array([input_ids], np.int32), np.array([target], np.int32))
  previous = np.pad(y[:, :-1], ((0, 0), (1, 0)))
  logp = log_softmax(forward(params, x, previous, y)[0])
  return float(sum(logp[t, token] for t, token in enumerate(target)))


def step_by_step(model, params, input_ids, target, length: int = 16) -> float:
  """log p(target | input) through the cached decoder, a token at a time (what greedy
  decoding runs)."""
  x = _padded(input_ids, 256)
  encoded = _encoder(model)(params, x)
  cache = decoding.init_decoding_cache(model, params, encoded, x, length)
  total, previous = 0.0, 0
  for token in target:
    logits, cache = _step(model, length)(params, cache, encoded, x,
                                         np.array([previous], np.int32))
    total += log_softmax(logits[0])[token]
    previous = token
  return float(total)


def char_ids(text: str) -> list[int]:
  return CharVocabulary.encode(text) + [decoding.EOS_ID]


# ---------------------------------------------------------------- label sets


def test_label_sets_come_from_the_benchmarks_and_answer_formats():
  sets = {name: b.label_set for name, b in benchmarks.BENCHMARKS.items()}
  assert sets["esnli"] == sets["anli1"] == LabelSet(NLI_LABELS)
  assert sets["cqa"] == LabelSet(from_input=True) and not sets["svamp"].closed
  assert benchmarks.custom("mine", "choice").label_set == CHOICE.label_set
  assert benchmarks.custom("mine", "nli").label_set.labels == NLI_LABELS
  for fmt in ("number", "text", "auto"):
    assert not benchmarks.custom("mine", fmt).label_set.closed
  for label_set in (CHOICE.label_set, NLI.label_set, answer_formats.OPEN):
    assert LabelSet.from_json(json.loads(json.dumps(label_set.to_json()))) == label_set


def test_custom_data_takes_the_answer_format_its_stats_record(tmp_path):
  for dataset, formats in {"quiz": ("choice", "choice"), "pairs": ("nli",),
                           "digits": ("number", "number"), "mixed": ("choice", "text")}.items():
    (tmp_path / dataset).mkdir()
    for split, fmt in zip(("train", "test"), formats):
      (tmp_path / dataset / f"{split}.stats.json").write_text(json.dumps(
          {"answer_format": fmt, "examples": 3}))
  found = {d: benchmarks.label_set(d, str(tmp_path))
           for d in ("quiz", "pairs", "digits", "mixed", "absent")}
  assert found["quiz"] == CHOICE.label_set and found["pairs"] == NLI.label_set
  assert not any(found[d].closed for d in ("digits", "mixed", "absent"))
  assert benchmarks.label_set("esnli", str(tmp_path)) == NLI.label_set  # no file read


def test_candidates_are_the_choices_parsed_from_cqa_inputs(data_dir):
  """Every CQA test input gives its five choices back, in order, its answer among them:
  the label target CQA's label task trains on (the choice's text)."""
  rows = read_json_rows(data_dir / "cqa" / "cqa_test.json")
  label_set = benchmarks.BENCHMARKS["cqa"].label_set
  for _, row in rows:
    text = cqa_input(row["question"], row["choices"])
    assert label_set.candidates(text) == tuple(row["choices"])
    assert label_set.candidates("predict: " + text) == tuple(row["choices"])
    assert row["answer"] in label_set.candidates(text)
  assert label_set.candidates("Where is it?\nAnswer Choices: (a) here (b) there") == (
      "here", "there")
  assert label_set.candidates("Where is it? here or there") == ()
  assert NLI.label_set.candidates("Premise: a\nHypothesis: b") == NLI_LABELS


# ---------------------------------------------------------------- the scores


def test_scores_equal_a_teacher_forced_computation(tiny):
  """Batched scores (each row's candidates packed in one decoder row over its input's one
  encoding) equal each candidate's log-likelihood computed alone by the full forward pass
  (padded, and once unpadded) and by the cached decoder step by step, within float32
  rounding."""
  student, params = tiny
  inputs = ["predict: where is the bank?", "predict: a", "predict: " + "tree " * 9,
            "predict: what?"]
  candidates = [["bank", "river", "a big red box"], ["x", "y"],
                ["park", "city", "shop", "car", "door"], ["entailment"]]
  input_ids = [CharVocabulary.encode(t) + [decoding.EOS_ID] for t in inputs]
  target_ids = [[char_ids(c) for c in row] for row in candidates]
  scores = student_lib.score(student, params, student_lib.pad_rows(input_ids, 16),
                             *student_lib.pack_candidates(target_ids), batch_size=3)
  assert scores.shape == (4, 5)
  unpadded = teacher_forced(student.model, params, input_ids[2], target_ids[2][-1], pad=None)
  assert scores[2, 4] == pytest.approx(unpadded, abs=2e-4)  # padding changes nothing
  for i, row in enumerate(target_ids):
    assert np.all(np.isneginf(scores[i, len(row):]))  # empty slots never win
    for j, target in enumerate(row):
      direct = teacher_forced(student.model, params, input_ids[i], target)
      assert scores[i, j] == pytest.approx(direct, abs=2e-4), (i, j)
      assert scores[i, j] == pytest.approx(
          step_by_step(student.model, params, input_ids[i], target), abs=2e-4), (i, j)
      assert scores[i, j] < 0


def test_a_uniform_model_prefers_the_shortest_candidate_and_ties_go_first(tiny):
  """With the decoder's last norm at zero every logit is 0: each token has probability
  1 / vocab, a candidate of n tokens (EOS included) scores -n log(vocab), and the fewest
  tokens win; of equal scores the first candidate listed wins."""
  student, params = tiny
  flat = dict(params, decoder=dict(params["decoder"], decoder_norm={
      "scale": np.zeros_like(params["decoder"]["decoder_norm"]["scale"])}))
  inputs = student_lib.pad_rows([char_ids("predict: which?")] * 3, 16)
  rows = [("bank", "car", "river"), ("house", "x", "y"), ("y", "x", "house")]
  scores = student_lib.score(student, flat, inputs, *student_lib.pack_candidates(
      [[char_ids(c) for c in row] for row in rows]), batch_size=2)
  for row, row_scores in zip(rows, scores):
    for candidate, value in zip(row, row_scores):
      assert value == pytest.approx(-(len(candidate) + 1) * math.log(TINY.vocab_size),
                                    rel=1e-5)
  assert student_lib.rank(student, flat, CharVocabulary(), inputs, rows, 2) == [
      "car", "x", "y"]


def test_the_answer_is_the_most_likely_candidate_at_any_batch_size(tiny):
  """Batch sizes 1, 3 and 8 (other buckets, other padding) give the same labels, each the
  argmax of its candidates' log-likelihoods computed one at a time."""
  student, params = tiny
  texts = cqa_like_texts(19)
  labels = rank_labels(1)
  assert labels["1"] == labels["3"] == labels["8"]
  for text, label in zip(texts, labels["1"]):
    choices = CHOICE.label_set.candidates(text)
    ids = batching.encode(CharVocabulary, "predict: " + text, 256).ids
    direct = [teacher_forced(student.model, params, ids, char_ids(c)) for c in choices]
    assert label == choices[int(np.argmax(direct))]
  assert len(set(labels["1"])) > 3  # the rows differ: a mix-up would show


def test_two_devices_give_the_labels_of_one():
  """The batch split over a data axis of 2 forced CPU devices (a fresh process: the
  device count is fixed when jax starts) gives, at every batch size, one device's labels."""
  done = subprocess.run([sys.executable, "-m", "tests.helpers.rank", "2"], cwd=REPO,
                        env=cluster_env(2), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["devices"] == 2
  assert report["labels"] == rank_labels(1)


# ---------------------------------------------------------------- eval


def test_eval_ranks_the_choices_of_each_input(tmp_path, data_dir):
  """`evaluate(label_mode="rank")` on a custom choice dataset answers, for each input, the
  choice the predictor ranks first, scored against gold."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel,unused-import
  from sbs_jax.data import vocab  # pylint: disable=import-outside-toplevel
  from sbs_jax.train import evaluate as eval_lib  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.config import EvalConfig  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.data import LabelExamples  # pylint: disable=import-outside-toplevel
  from tasks.registry import register_dataset  # pylint: disable=import-outside-toplevel
  from tests.helpers import predict as predict_helpers  # pylint: disable=import-outside-toplevel
  rows = [r for _, r in read_json_rows(data_dir / "cqa" / "cqa_test.json")[:24]]
  texts = [cqa_input(r["question"], r["choices"]) for r in rows]
  spm = vocab.train_vocabulary(predict_helpers.cqa_texts(data_dir, 1000),
                               tmp_path / "spm.model", predict_helpers.TINY.vocab_size)
  vocabulary = seqio.SentencePieceVocabulary(str(spm))
  with forgotten_after("rank_quiz"):
    (tmp_path / "ann" / "rank_quiz").mkdir(parents=True)
    (tmp_path / "ann" / "rank_quiz" / "test.stats.json").write_text(
        '{"answer_format": "choice"}')
    names = register_dataset("rank_quiz", annotation_dir=str(tmp_path / "ann"),
                             vocabulary=vocabulary)
    student = student_lib.build_student(predict_helpers.TINY, optax.identity(),
                                        student_lib.make_mesh((1, 1)))
    params = tiny_params(predict_helpers.TINY)
    ids = [batching.encode(vocabulary, "predict: " + t, 256).ids for t in texts]
    examples = LabelExamples(student_lib.pad_rows(ids), ["predict: " + t for t in texts],
                             [r["answer"] for r in rows], [r["id"] for r in rows])
    metrics, out = eval_lib.evaluate(student, params, names["label_gt"], "test",
                                     EvalConfig(batch_size=5), examples, label_mode="rank")
    served = Predictor(student, params, vocabulary, "predict: ",
                       settings=DecodeSettings(batch_size=8, label_mode="rank"),
                       max_input_length=256, label_set=CHOICE.label_set).predict(texts)
    assert [r["prediction"] for r in out] == [s["label"] for s in served]
    assert all(r["prediction"] in row["choices"] for r, row in zip(out, rows))
    hits = sum(r["prediction"] == row["answer"] for r, row in zip(out, rows))
    assert metrics == {"examples": 24, "accuracy": pytest.approx(100.0 * hits / 24)}


def tiny_params(config):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  return nn.unbox(student_lib.init_params(Transformer(config), jax.random.key(5)))


def test_eval_refuses_a_dataset_without_a_closed_label_set(tmp_path):
  import tasks  # pylint: disable=import-outside-toplevel,unused-import
  from sbs_jax.train import evaluate as eval_lib  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.data import LabelExamples  # pylint: disable=import-outside-toplevel
  from tasks.registry import register_dataset  # pylint: disable=import-outside-toplevel
  (tmp_path / "rank_digits").mkdir()
  (tmp_path / "rank_digits" / "train.stats.json").write_text('{"answer_format": "number"}')
  with forgotten_after("rank_digits", "rank_quiz2"):
    digits = register_dataset("rank_digits", annotation_dir=str(tmp_path))["label_llm"]
    examples = LabelExamples(np.ones((1, 4), np.int32), ["predict: 3 + 4?"], ["7"], ["0"])
    for task in ("sbs_svamp_label_llm", digits):
      with pytest.raises(SbsError) as e:
        eval_lib.candidates(task, examples)
      assert "\n" not in str(e.value) and "--label_mode rank needs a closed set" in str(e.value)
    quiz = register_dataset("rank_quiz2", annotation_dir=str(tmp_path))["label_gt"]
    (tmp_path / "rank_quiz2").mkdir()
    (tmp_path / "rank_quiz2" / "train.stats.json").write_text('{"answer_format": "choice"}')
    with pytest.raises(SbsError, match="example 0: the input lists no answer choices"):
      eval_lib.candidates(quiz, examples)


# ---------------------------------------------------------------- predict


def sbs(capsys, *args) -> tuple[int, list[str]]:
  """`sbs ARGS` in this process (the refusals come before a model loads): exit code and
  stderr lines."""
  capsys.readouterr()
  code = cli.main([str(a) for a in args])
  return code, capsys.readouterr().err.strip().splitlines()


def test_predict_refuses_a_model_without_a_closed_label_set(tmp_path, capsys):
  rows = write_rows(tmp_path / "rows.jsonl", [{"input": "3 + 4?"}])
  for name, label_set in (("open", {"labels": []}), ("old", None)):
    ModelDir(str(tmp_path / name)).write_info(TINY, "", label_set=label_set)
    with pytest.raises(SbsError) as e:
      recorded_label_set(str(tmp_path / name))
    assert "--label_mode rank needs a closed set" in str(e.value)
    for flags in (["--input", "3 + 4?"], ["--input_file", rows, "--output_file",
                                          tmp_path / f"{name}.jsonl"]):
      code, err = sbs(capsys, "predict", "--model_dir", tmp_path / name, "--label_mode",
                      "rank", *flags)
      assert code == 2 and len(err) == 1 and "--label_mode rank needs a closed set" in err[0]
    assert not (tmp_path / f"{name}.jsonl").exists()
  assert "records no label set" in err[0]
  ModelDir(str(tmp_path / "nli")).write_info(TINY, "", label_set=NLI.label_set.to_json())
  assert recorded_label_set(str(tmp_path / "nli")) == NLI.label_set


class Stop(Exception):
  pass


def test_predict_job_never_mixes_label_modes(tmp_path, tiny):
  """A partial or finished output of one mode is refused in the other (a manifest of an
  older sbs counts as greedy); --restart redoes it whole; rank rows have greedy's fields."""
  student, params = tiny
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  texts = cqa_like_texts(10, seed=1)
  choices = [CHOICE.label_set.candidates(t) for t in texts]
  source = write_rows(tmp_path / "rows.jsonl", [
      {"input": t, "label": c[0]} for t, c in zip(texts, choices)])
  greedy = Predictor(student, params, CharVocabulary(), "predict: ",
                     settings=DecodeSettings(batch_size=4, label_decode_length=3),
                     max_input_length=256)
  ranked = predictor(student, params, 4)

  def job(rank: bool, restart: bool = False) -> job_lib.FileJob:
    return job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir), window=4,
                           restart=restart, progress=False,
                           label_set=CHOICE.label_set if rank else None)

  def stop(_):
    raise Stop

  with pytest.raises(Stop):
    job_lib.run(job(False), greedy, on_window=stop)
  with pytest.raises(SbsError, match=r'partial run with other settings \(.*label_mode: '
                     r'"greedy" -> "rank"'):
    job_lib.run(job(True), ranked)
  assert job_lib.run(job(False), greedy)["label_mode"] == "greedy"
  greedy_rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]

  stats_path = tmp_path / "out.jsonl.stats.json"  # as an sbs before label modes wrote it
  stats = json.loads(stats_path.read_text())
  del stats["manifest"]["label_mode"], stats["label_mode"]
  stats_path.write_text(json.dumps(stats))
  assert job_lib.run(job(False), greedy)["rows"] == 10  # finished: not redone
  with pytest.raises(SbsError, match=r'is finished but was made with other settings or inputs '
                     r'\(.*label_mode: "greedy" -> "rank"'):
    job_lib.run(job(True), ranked)

  summary = job_lib.run(job(True, restart=True), ranked)
  assert summary["label_mode"] == "rank" and summary["rows_this_run"] == 10
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [list(r) for r in rows] == [list(r) for r in greedy_rows]
  assert [r["label"] for r in rows] == [p["label"] for p in ranked.predict(texts)]
  assert all(r["label"] in c for r, c in zip(rows, choices))
  assert json.loads(stats_path.read_text())["manifest"]["label_mode"] == "rank"
  with pytest.raises(SbsError, match=r'label_mode: "rank" -> "greedy"'):
    job_lib.run(job(False), greedy)


def test_predict_job_refuses_a_row_without_choices_before_decoding(tmp_path):
  texts = cqa_like_texts(3)
  source = write_rows(tmp_path / "rows.jsonl", [{"input": texts[0]}, {"input": texts[1]},
                                                {"input": "Which one? red or blue"}])
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(tmp_path), progress=False,
                        label_set=CHOICE.label_set)
  with pytest.raises(DataError) as e:
    job_lib.count_rows(job)
  assert "line 3" in str(e.value) and "'input'" in str(e.value)
  assert "lists no answer choices" in str(e.value) and "\n" not in str(e.value)
  nli = job_lib.FileJob(source, tmp_path / "out.jsonl", str(tmp_path), progress=False,
                        label_set=NLI.label_set)
  assert job_lib.count_rows(nli) == 3  # NLI's labels need nothing from the input


@pytest.mark.slow
@pytest.mark.multihost
def test_two_hosts_write_the_one_host_file(tmp_path, data_dir):
  """`sbs predict --label_mode rank` on two JAX processes (2 CPU devices each, joined by
  jax.distributed.initialize; each scores its share of every batch) writes, byte for byte,
  the file of one process with 4 devices."""
  from tests.helpers.multihost import free_port, wait_all  # pylint: disable=import-outside-toplevel
  from tests.helpers.predict import cqa_texts, make_model_dir  # pylint: disable=import-outside-toplevel
  model_dir = make_model_dir(tmp_path, data_dir)
  info = json.loads((model_dir / "model.json").read_text())
  (model_dir / "model.json").write_text(json.dumps(dict(info, label_set={"from_input": True})))
  texts = cqa_texts(data_dir, 29)
  source = write_rows(tmp_path / "rows.jsonl", [{"input": t} for t in texts])

  def predict(output, *extra):
    return [sys.executable, "-m", "sbs_jax.cli", "predict", "--model_dir", str(model_dir),
            "--input_file", str(source), "--output_file", str(tmp_path / output),
            "--label_mode", "rank", "--batch_size", "8", "--window", "16", "--no_progress",
            *extra]

  one = subprocess.run(predict("one.jsonl"), cwd=REPO, env=cluster_env(4),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  address, procs, logs = f"127.0.0.1:{free_port()}", [], []
  try:
    for i in range(2):
      logs.append(tmp_path / f"host{i}.log")
      with open(logs[-1], "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
            predict("two.jsonl", "--coordinator_address", address, "--num_processes", "2",
                    "--process_id", str(i)),
            cwd=REPO, env=cluster_env(2), stdout=out, stderr=subprocess.STDOUT))
    codes = wait_all(procs)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
  assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
  labels = [json.loads(line)["label"] for line in (tmp_path / "two.jsonl").read_text()
            .splitlines()]
  assert all(label in CHOICE.label_set.candidates(t) for label, t in zip(labels, texts))
  assert len(set(labels)) > 5  # rows differ: a mix-up would show
  summary = json.loads(logs[0].read_text().strip().splitlines()[-1])
  assert summary["rows"] == len(texts) and summary["label_mode"] == "rank"
