"""Bad settings, dirs and data for `sbs train` / `sbs eval`: one line each, before anything
is written; caps on evaluation are said; one run per model dir; a full disk is one line and
the rerun finishes."""

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import gin
import pytest

from sbs_jax.errors import SbsError
from sbs_jax.commands import train as train_command
from sbs_jax.jobdir import locks
from sbs_jax.train import config, gin_check, gin_setup, loop, run_dir
from sbs_jax.train.data import check_train_split, label_examples
from tests.helpers import REPO, gin_config, registry
from tests.helpers.cli import run_sbs_here
from tests.helpers.multihost import two_hosts, wait_all

EXPERIMENT = ["experiments/cqa_distill_llm.gin", "overlays/tiny_cpu.gin"]
SMOKE = ["TrainConfig.log_every = 1", "TrainConfig.checkpoint_every = 1",
         "EvalConfig.every = 1", "EvalConfig.batch_size = 64",
         "EvalConfig.rationale_samples = 0", "OptimizerConfig.warmup_steps = 0",
         "BATCH_SIZE = 4", "DataConfig.task_feature_lengths = {'inputs': 128, 'targets': 64}"]


def configure(bindings):
  """The run's config built as `sbs train` builds it; the SbsError's text, else None."""
  return gin_config.configure(EXPERIMENT, bindings)


def train(model_dir, steps=1, extra=(), experiment="svamp_distill_llm"):
  gin.clear_config()
  gin_setup.parse_gin([f"experiments/{experiment}.gin", "overlays/tiny_cpu.gin"],
                    [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", *SMOKE, *extra])
  try:
    return loop.train(gin_check.configured(config.TrainConfig),
                      gin_check.configured(config.student_config))
  finally:
    gin.clear_config()


def snapshot(model_dir) -> dict:
  return {str(p.relative_to(model_dir)): p.read_bytes()
          for p in sorted(model_dir.rglob("*")) if p.is_file()}


# ---- Settings out of range: one line naming the value, the range and the binding.

@pytest.mark.parametrize("binding,expected", [
    ("ALPHA = 50", "TrainConfig.alpha = 50 is out of range: it must be between 0 and 1"),
    ("ALPHA = -0.1", "TrainConfig.alpha = -0.1 is out of range: it must be between 0 and 1"),
    ("ALPHA = 1e999", "TrainConfig.alpha = inf is out of range"),
    ("TRAIN_STEPS = 0", "TrainConfig.train_steps = 0 is out of range: it must be at least 1 "
     "(set by --gin.TRAIN_STEPS)"),
    ("TRAIN_STEPS = -5", "TrainConfig.train_steps = -5 is out of range"),
    ("BATCH_SIZE = 0", "DataConfig.batch_size = 0 is out of range: it must be at least 1 "
     "(set by --gin.BATCH_SIZE)"),
    ("EvalConfig.every = 0", "EvalConfig.every = 0 is out of range: it must be at least 1"),
    ("EvalConfig.max_examples = 0", "EvalConfig.max_examples = 0 is out of range: it must "
     "be at least 1, or None for all"),
    ("OptimizerConfig.learning_rate = 1e400", "OptimizerConfig.learning_rate = inf "
     "is out of range: it must be 0 or more"),
    ("OptimizerConfig.learning_rate = -1e-4", "OptimizerConfig.learning_rate = -0.0001 is "
     "out of range"),
    ("OptimizerConfig.name = 'sgd'", "OptimizerConfig.name = 'sgd' is out of range: it must "
     "be adamw or adafactor"),
    ("DataConfig.task_feature_lengths = {'inputs': 0, 'targets': 64}",
     "DataConfig.task_feature_lengths = {'inputs': 0, 'targets': 64} is out of range"),
    ("DataConfig.task_feature_lengths = {'inputs': 128}",
     "DataConfig.task_feature_lengths = {'inputs': 128} is out of range"),
    ("TrainConfig.checkpoint_every = 0", "TrainConfig.checkpoint_every = 0 is out of range"),
    ("ParallelismConfig.partitioning_dims = (1, 3)",
     "ParallelismConfig.partitioning_dims = (1, 3) is "
     "out of range"),
])
def test_out_of_range_settings_are_one_line(binding, expected):
  message = configure([binding, "MODEL_DIR = 'runs/x'"])
  assert message is not None and message.startswith(expected), message
  assert "\n" not in message


def test_nan_alpha_is_refused():
  gin.clear_config()
  with pytest.raises(SbsError, match=r"TrainConfig.alpha = nan is out of range"):
    config.TrainConfig(model_dir="x", train_steps=1, alpha=float("nan"),
                       data=config.DataConfig(mixture_or_task="x"))


def test_t5x_glue_refuses_alpha_outside_0_1():
  t5x_model = pytest.importorskip("sbs_jax.t5x_model")
  for alpha in (50, -0.5, float("nan"), "half", True):
    with pytest.raises(ValueError, match="out of range: it must be a number between 0 and 1"):
      t5x_model.check_alpha(alpha)
  for alpha in (0, 0.5, 1.0):
    t5x_model.check_alpha(alpha)


@pytest.mark.parametrize("binding,expected", [
    ("--gin.ALPHA=50", "TrainConfig.alpha = 50 is out of range"),
    ("--gin.TRAIN_STEPS=0", "TrainConfig.train_steps = 0 is out of range"),
])
def test_the_command_refuses_before_creating_anything(binding, expected, tmp_path):
  model_dir = tmp_path / "new" / "run"
  proc = run_sbs_here("train", *[f"--gin_file={f}" for f in EXPERIMENT],
                      f"--gin.MODEL_DIR='{model_dir}'", binding)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith(f"sbs train: error: {expected}"), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "new").exists()


# ---- Evaluation caps: said beside the number, recorded; other splits are scored whole.

@pytest.fixture(scope="module")
def capped_run(annotated, tmp_path_factory):
  """A 1-step svamp run whose validation is capped at 4 examples and test is not."""
  model_dir = tmp_path_factory.mktemp("capped") / "svamp"
  results = train(model_dir, 1, ["EvalConfig.max_examples = 4"])
  return model_dir, results


def eval_args(*argv) -> argparse.Namespace:
  """`sbs eval ARGV` parsed as the command parses it (every flag's default included)."""
  from sbs_jax import cli  # pylint: disable=import-outside-toplevel
  args, extra = cli.build_parser(["eval"]).parse_known_args(["eval", *map(str, argv)])
  args.gin_bindings = extra
  return args


def sbs_eval(model_dir, split, *more, capsys):
  gin.clear_config()
  args = eval_args("--model_dir", model_dir, "--split", split, *more)
  capsys.readouterr()
  try:
    assert train_command.eval_main(args) == 0
  finally:
    gin.clear_config()
  out, err = capsys.readouterr()
  return json.loads(out.strip().splitlines()[-1]), err


def test_training_says_and_records_the_validation_cap(capped_run, capsys):
  _, results = capped_run
  validation = results["validation"]
  split_size = len(label_examples("sbs_svamp_label_llm", "validation").ids)
  assert validation["examples"] == 4 and validation["split_examples"] == split_size > 4
  assert results["caps"] == {"validation": "EvalConfig.max_examples = 4", "test": None}
  test_size = len(label_examples("sbs_svamp_label_llm", "test").ids)
  assert results["test"]["examples"] == test_size and "split_examples" not in results["test"]


def test_eval_scores_the_whole_test_split(capped_run, capsys):
  model_dir, _ = capped_run
  test_size = len(label_examples("sbs_svamp_label_llm", "test").ids)
  got, err = sbs_eval(model_dir, "test", capsys=capsys)
  assert got["examples"] == test_size and "capped_by" not in got
  assert "test accuracy" in err and f"({test_size:,} examples)" in err


def test_eval_says_every_cap(capped_run, capsys):
  model_dir, _ = capped_run
  split_size = len(label_examples("sbs_svamp_label_llm", "validation").ids)
  got, err = sbs_eval(model_dir, "validation", capsys=capsys)
  assert (got["examples"], got["split_examples"]) == (4, split_size)
  assert got["capped_by"] == "EvalConfig.max_examples"
  assert f"on 4 of {split_size:,} examples (capped by EvalConfig.max_examples)" in err
  got, err = sbs_eval(model_dir, "test", "--max_examples=5", capsys=capsys)
  assert got["examples"] == 5 and got["capped_by"] == "--max_examples"
  got, _ = sbs_eval(model_dir, "validation", "--max_examples=all", capsys=capsys)
  assert got["examples"] == split_size and "capped_by" not in got


@pytest.mark.parametrize("argv,expected", [
    (["--split", "bogus"], "no split 'bogus'; splits: train"),
    (["--max_examples", "0"], "--max_examples '0' is not a positive whole number or 'all'"),
])
def test_eval_mistakes_are_one_line(capped_run, argv, expected):
  model_dir, _ = capped_run
  proc = run_sbs_here("eval", "--model_dir", model_dir, *argv)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("sbs eval: error: ") and expected in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_eval_of_a_dir_that_is_not_a_model_dir_is_one_line(tmp_path):
  gin.clear_config()
  args = eval_args("--model_dir", tmp_path, "--split", "test")
  with pytest.raises(SbsError, match="is not a model dir of `sbs train`"):
    train_command.eval_main(args)


# ---- One run per model dir.

def test_a_second_run_on_a_locked_dir_is_refused_untouched(capped_run):
  model_dir, _ = capped_run
  holder = run_dir.lock_model_dir(str(model_dir))
  try:
    before = snapshot(model_dir)
    with pytest.raises(SbsError) as refused:
      train(model_dir, 1, ["EvalConfig.max_examples = 4"])
    assert snapshot(model_dir) == before
  finally:
    holder.release()
  message = str(refused.value)
  assert message.startswith(f"MODEL_DIR {model_dir} is in use by another `sbs train` "
                            f"(pid {os.getpid()} on {socket.gethostname()}")
  assert "use another MODEL_DIR" in message and "\n" not in message
  assert not (model_dir / locks.LOCK_FILE).exists()  # released: the file is gone


def test_the_lock_of_a_killed_run_is_free_at_once(tmp_path):
  script = ("import sys, time; from sbs_jax.train import run_dir; "
            "held = run_dir.lock_model_dir(sys.argv[1]); print('locked', flush=True); "
            "time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(SbsError, match=f"in use by another `sbs train` \\(pid {proc.pid} "):
      run_dir.lock_model_dir(str(tmp_path))
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  run_dir.lock_model_dir(str(tmp_path)).release()  # the kernel released the dead run's lock


def _new_lease(path):
  return locks.Lease(str(path), run_dir.model_dir_busy(str(path)), settle_s=0)


def _lease(path, **fields):
  now = time.time()
  lease = dict(dict(host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now,
                    token="other"), **fields)
  (path / locks.LEASE_FILE).write_text(json.dumps(lease))


def test_lease_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, caplog):
  lease = _new_lease(tmp_path)
  with pytest.raises(SbsError, match=f"in use by another `sbs train` \\(pid {os.getpid()} "):
    _new_lease(tmp_path)
  lease.release()
  assert not (tmp_path / locks.LEASE_FILE).exists()

  dead = subprocess.Popen(["true"])
  dead.wait()
  _lease(tmp_path, pid=dead.pid)  # this host, a pid that has ended
  with caplog.at_level(logging.WARNING):
    _new_lease(tmp_path).release()
  assert "taking over the stale lease" in caplog.text

  _lease(tmp_path, host="elsewhere", pid=1)  # another host, heartbeat fresh
  with pytest.raises(SbsError, match="pid 1 on elsewhere"):
    _new_lease(tmp_path)
  _lease(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - locks.STALE_S - 1)
  _new_lease(tmp_path).release()
  (tmp_path / locks.LEASE_FILE).write_text("{half a lea")  # unreadable: stale
  _new_lease(tmp_path).release()


def test_two_hosts_on_a_locked_dir_both_refuse(capped_run, tmp_path):
  """Host 0 alone takes the lock; its refusal reaches host 1, and neither hangs."""
  model_dir, _ = capped_run
  flags = ["--gin_file=experiments/svamp_distill_llm.gin", "--gin_file=overlays/tiny_cpu.gin",
           f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=1",
           "--gin.EvalConfig.max_examples=4", *[f"--gin.{b.replace(' = ', '=')}" for b in SMOKE]]
  logs = [tmp_path / f"host{i}.log" for i in range(2)]
  holder = run_dir.lock_model_dir(str(model_dir))
  try:
    with two_hosts(flags, logs) as procs:
      codes = wait_all(procs, expected=2)
  finally:
    holder.release()
  texts = [log.read_text() for log in logs]
  assert codes == [2, 2], "\n".join(t[-2000:] for t in texts)
  for text in texts:  # (gloo's own notices may follow on the same log)
    errors = [l for l in text.splitlines() if l.startswith("sbs train: error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"sbs train: error: MODEL_DIR {model_dir} is in use by another `sbs train`"), text
    assert "Traceback" not in text


# ---- Empty splits: one line naming the dataset and split, before anything is written.

def _record(i, rid):
  return {"id": rid, "dataset": "tinyset", "split": "train", "input": f"What is {i} plus 1?",
          "label": str(i + 1), "llm_label": str(i + 1), "rationale": f"{i} plus 1 is {i + 1}.",
          "parse_error": "", "completion": "", "prompt_id": "p", "teacher": "replay",
          "index": i, "has_label": 1, "parse_ok": 1}


@pytest.fixture(scope="module")
def tiny_dataset(annotated, tmp_path_factory):
  """3 train records, none in the validation carve (10%) nor in train_12.5."""
  import tasks  # pylint: disable=import-outside-toplevel
  from sbs_jax.data import records  # pylint: disable=import-outside-toplevel
  from sbs_jax.data.sources import _in_bucket  # pylint: disable=import-outside-toplevel
  ids = []
  for n in range(1000):
    rid = f"tiny-{n}"
    if not bool(_in_bucket("sbs-validation:", [rid], 0.1)[0]) and \
       not bool(_in_bucket("sbs-subsample-0:", [rid], 0.125)[0]):
      ids.append(rid)
    if len(ids) == 3:
      break
  ann = tmp_path_factory.mktemp("tiny") / "ann"
  (ann / "tinyset").mkdir(parents=True)
  records.write_atomically(ann / "tinyset" / records.shard_name("train", 0, 1),
                           [_record(i, rid) for i, rid in enumerate(ids)])
  tasks.register_annotation_dir(str(ann))
  yield ann
  registry.forget("tinyset")


def test_an_empty_validation_carve_is_one_line(tiny_dataset):
  with pytest.raises(SbsError) as refused:
    label_examples("sbs_tinyset_label_llm", "validation")
  message = str(refused.value)
  assert message.startswith("dataset tinyset: the validation split is empty: with no valid "
                            "records, validation is a 10% carve of the train records")
  assert "annotate more train examples" in message and "\n" not in message


def test_an_empty_training_split_is_one_line(tiny_dataset):
  check_train_split(config.DataConfig(mixture_or_task="sbs_tinyset_distill_llm_paired"))
  with pytest.raises(SbsError, match=r"dataset tinyset: split 'train_12.5' has no examples "
                     r"for sbs_tinyset_distill_llm_paired: annotate more examples"):
    check_train_split(config.DataConfig(mixture_or_task="sbs_tinyset_distill_llm_paired",
                                        train_split="train_12.5"))


@pytest.fixture(scope="module")
def tiny_with_valid(tiny_dataset, tmp_path_factory):
  """tinyset's 3 train records (none in train_12.5) as dataset tinyval, with 2 valid
  records of its own: its validation holds examples and its train_12.5 none."""
  import tasks  # pylint: disable=import-outside-toplevel
  from sbs_jax.data import records  # pylint: disable=import-outside-toplevel
  train_rows = [dict(r, dataset="tinyval") for r in records.read_records(
      [tiny_dataset / "tinyset" / records.shard_name("train", 0, 1)])]
  ann = tmp_path_factory.mktemp("tinyval") / "ann"
  (ann / "tinyval").mkdir(parents=True)
  records.write_atomically(ann / "tinyval" / records.shard_name("train", 0, 1), train_rows)
  records.write_atomically(ann / "tinyval" / records.shard_name("valid", 0, 1),
                           [dict(_record(i, f"val-{i}"), dataset="tinyval", split="valid")
                            for i in range(2)])
  tasks.register_annotation_dir(str(ann))
  yield ann
  registry.forget("tinyval")


def test_train_on_an_empty_training_split_is_refused_and_creates_nothing(tiny_with_valid,
                                                                         tmp_path):
  # The trainer learns of the empty split from the length check's counts and refuses in
  # check_train_split's words, before the model dir is made.
  with pytest.raises(SbsError, match=r"dataset tinyval: split 'train_12.5' has no examples "
                     r"for sbs_tinyval_distill_llm_paired: annotate more examples"):
    train(tmp_path / "run", extra=[
        "MIXTURE_OR_TASK_NAME = 'sbs_tinyval_distill_llm_paired'",
        f"annotation_dir.path = '{tiny_with_valid}'", "DataConfig.train_split = 'train_12.5'"])
  assert not (tmp_path / "run").exists()


def test_train_on_an_empty_validation_creates_nothing(tiny_dataset, tmp_path):
  with pytest.raises(SbsError, match="the validation split is empty"):
    train(tmp_path / "run", extra=[
        "MIXTURE_OR_TASK_NAME = 'sbs_tinyset_distill_llm_paired'",
        f"annotation_dir.path = '{tiny_dataset}'"])
  assert not (tmp_path / "run").exists()


# ---- Model dirs that cannot be written; a full disk mid-run.

@pytest.mark.parametrize("where,expected", [
    ("file", "is a file, not a directory"),
    ("under_file", "lies under the file"),
    ("unwritable", ""),
])
def test_model_dirs_that_cannot_be_written_are_one_line(annotated, tmp_path, where, expected):
  (tmp_path / "file").write_text("not a dir")
  model_dir = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "run",
               "unwritable": "/sys/sbs_hardening_test/run"}[where]
  # (/sys refuses new dirs even to root, whom a read-only chmod would not stop)
  with pytest.raises(SbsError) as refused:
    train(model_dir)
  message = str(refused.value)
  assert message.startswith(f"MODEL_DIR {model_dir} ") and expected in message, message
  assert "MODEL_DIR you can write to" in message or "use another MODEL_DIR" in message
  assert "\n" not in message
  assert (tmp_path / "file").read_text() == "not a dir"


def test_storage_errors_are_found_in_the_whole_chain():
  import errno  # pylint: disable=import-outside-toplevel
  try:
    try:
      raise OSError(errno.EFBIG, "File too large")
    except OSError as inner:
      raise RuntimeError("orbax: save failed") from inner
  except RuntimeError as outer:
    assert loop.storage_problem(outer).startswith("file too large")
  wrapped = ValueError("Error writing local file \"/x/d/abc\": [OS error 28: No space left on "
                       "device]")
  assert loop.storage_problem(RuntimeError("x")) is None
  assert loop.storage_problem(wrapped).startswith("no space left on device")
  assert loop.storage_problem(SbsError("no space left on device")) is None


def test_a_file_size_limit_mid_run_is_one_line_and_the_rerun_finishes(annotated, tmp_path):
  model_dir = tmp_path / "run"
  flags = ["train", "--gin_file=experiments/svamp_distill_llm.gin",
           "--gin_file=overlays/tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
           "--gin.TRAIN_STEPS=2", "--gin.EvalConfig.max_examples=4",
           "--gin.EvalConfig.max_test_examples=4",
           *[f"--gin.{b.replace(' = ', '=')}" for b in SMOKE]]
  command_line = " ".join(f"'{a}'" if "'" not in a else f"\"{a}\"" for a in flags)
  limited = subprocess.run(
      ["bash", "-c", f"ulimit -f 600; exec {sys.executable} -m sbs_jax.cli {command_line}"],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
  assert limited.returncode == 2, limited.stderr[-3000:]
  lines = limited.stderr.strip().splitlines()
  assert lines[-1].startswith(f"sbs train: error: writing to MODEL_DIR {model_dir} failed: "
                              "file too large"), limited.stderr[-3000:]
  assert "rerun the same command" in lines[-1]
  assert "Traceback" not in limited.stderr
  assert len(lines) < 40, limited.stderr[-3000:]
  again = run_sbs_here(*flags)  # the rerun in this process: it needs no limit
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((model_dir / "results.json").read_text())["train_steps"] == 2


@pytest.mark.parametrize("extra,expected", [
    (["SELECTION_METRIC = 'f1'"], "EvalConfig.selection_metric 'f1' is not a metric of "
     "sbs_svamp_label_llm (it has accuracy, equation_accuracy): set --gin.SELECTION_METRIC="),
    (["INITIAL_CHECKPOINT = '/nonexistent/init'"], "INITIAL_CHECKPOINT /nonexistent/init is "
     "not a model dir (no params/)"),
    (["DataConfig.train_split = 'train_10'"], "svamp: no split 'train_10'; splits: train, "
     "train_50"),
])
def test_settings_found_wrong_before_training_create_nothing(annotated, tmp_path, extra,
                                                            expected):
  with pytest.raises(SbsError) as refused:
    train(tmp_path / "run", extra=extra)
  assert expected in str(refused.value) and "\n" not in str(refused.value)
  assert not (tmp_path / "run").exists() and not os.path.exists("/nonexistent")
