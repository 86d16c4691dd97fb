"""Our students under the real T5X: `sbs train` -> `sbs export-t5x` -> `python -m t5x.train`
continues it with T5X's finetune.gin and our gin file -> `t5x.eval` and `t5x.infer` run on
the result and report our metrics -> `sbs import-t5x` -> `sbs predict` gives t5x.infer's
greedy labels. A tiny student, a few steps; one module fixture runs the chain once.

distill_llm runs end to end; the other three gin files each continue the exported student
for one step under T5X's own `train` (no evaluation; the three runs share one process,
tests/t5x_train_runs.py), and all four go through a check in this process (gin as T5X
parses it, the vocabulary check T5X makes, one batch of the family's data through the
model's feature converter and loss). Skipped where T5X is not installed
(`bash launch/install_t5x.sh ../shared/vendor`).
"""

import glob
import json
import os
import pathlib
import re
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

pytest.importorskip("t5x", reason="T5X is not installed: bash launch/install_t5x.sh "
                    "../shared/vendor")

# pylint: disable=wrong-import-position
import t5x
import tensorflow as tf

from sbs_jax.convert import t5x as t5x_format
from sbs_jax.convert import t5x_dirs
from sbs_jax.errors import SbsError
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.model.student import load_student
from tests.helpers import REPO
from tests.helpers.cli import run_sbs_here
from tests.helpers.tiny_cqa import train_tiny_cqa

pytestmark = [pytest.mark.t5x]

T5X_ROOT = pathlib.Path(t5x.__file__).parents[1]
FAMILIES = ("distill_llm", "distill_gt", "standard_gt", "standard_llm")
LABEL_TOKENS = 16


def run_t5x(script, *gin_args, timeout=900):
  """`python -m t5x.<script>` with our repository on PYTHONPATH; returns the process."""
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", f"t5x.{script}", f"--gin_search_paths={T5X_ROOT},{REPO}",
       *gin_args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def train_student(model_dir, steps=4, bindings=()):
  """`sbs train` of the tiny student on CQA (distilling step-by-step) for a few steps."""
  return train_tiny_cqa(model_dir, f"TRAIN_STEPS = {steps}", f"EvalConfig.every = {steps}",
                        *bindings)


def first_test_records(annotation_dir, out, n=20):
  """An annotation dir holding the first n CQA test records (t5x.eval / t5x.infer read all)."""
  files = sorted(glob.glob(f"{annotation_dir}/cqa/test.tfrecord-*"))
  (out / "cqa").mkdir(parents=True)
  with tf.io.TFRecordWriter(str(out / "cqa" / "test.tfrecord-00000-of-00001")) as writer:
    for record in tf.data.TFRecordDataset(files).take(n).as_numpy_iterator():
      writer.write(record)
  return out


@pytest.fixture(scope="module")
def chain(annotated, tmp_path_factory):
  root = tmp_path_factory.mktemp("t5x")
  student = root / "student"
  train_student(student)
  exported = t5x_dirs.export_t5x(str(student), str(root / "exported"))
  model_gin = exported["model_gin"]
  lengths = "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 128}"
  t5x_dir = root / "t5x_run"
  train_log = run_t5x(
      "train", "--gin_file=t5x/configs/runs/finetune.gin",
      "--gin_file=gin_configs/t5x/distill_llm.gin", f"--gin_file={model_gin}",
      f"--gin.MODEL_DIR='{t5x_dir}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{exported['checkpoint']}'",
      "--gin.TRAIN_STEPS=6", "--gin.EVAL_PERIOD=6", "--gin.EVAL_STEPS=1",
      "--gin.utils.SaveCheckpointConfig.period=6", "--gin.BATCH_SIZE=4",
      "--gin.EVALUATOR_NUM_EXAMPLES=8", lengths,
      f"--gin.vocab.annotation_dir.path='{annotated}'").stderr
  few = first_test_records(annotated, root / "ann20")
  on_few = [f"--gin.vocab.annotation_dir.path='{few}'", "--gin.TASK_FEATURE_LENGTHS=None",
            f"--gin.CHECKPOINT_PATH='{t5x_dir}/checkpoint_6'",
            "--gin.utils.RestoreCheckpointConfig.dtype='float32'"]
  run_t5x("eval", "--gin_file=t5x/configs/runs/eval.gin",
          "--gin_file=gin_configs/t5x/distill_llm.gin", f"--gin_file={model_gin}",
          f"--gin.EVAL_OUTPUT_DIR='{root / 'eval'}'", *on_few)
  run_t5x("infer", "--gin_file=t5x/configs/runs/infer.gin",
          "--gin_file=gin_configs/t5x/distill_llm.gin", f"--gin_file={model_gin}",
          "--gin.MIXTURE_OR_TASK_NAME='sbs_cqa_label_llm'", f"--gin.INFER_OUTPUT_DIR="
          f"'{root / 'infer'}'", *on_few,
          f"--gin.TASK_FEATURE_LENGTHS={{'inputs': 512, 'targets': {LABEL_TOKENS}}}")
  imported = t5x_dirs.import_t5x(f"{t5x_dir}/checkpoint_6", str(root / "imported"),
                                    model_gin=model_gin)
  return dict(root=root, student=student, exported=exported, t5x_dir=t5x_dir,
              train_log=train_log, imported=imported, model_gin=model_gin)


def test_t5x_continues_the_exported_student_with_the_papers_loss(chain):
  log = chain["train_log"]
  assert "Restoring key from ckpt: target/token_embedder/embedding" in log
  assert "[6] collection=train" in log and "label_loss=" in log and "rationale_loss=" in log
  assert "sbs_cqa_label_llm/accuracy at step 6" in log  # T5X's inference evaluation
  assert (chain["t5x_dir"] / "checkpoint_6").is_dir()


def test_t5x_eval_reports_our_metrics(chain):
  [metrics_file] = glob.glob(f"{chain['root']}/eval/inference_eval/*label_llm-metrics.jsonl")
  rows = [json.loads(line) for line in pathlib.Path(metrics_file).read_text().splitlines()]
  assert rows and 0.0 <= rows[-1]["accuracy"] <= 100.0


def test_export_writes_t5x_format_that_t5x_reads_back(chain):
  """The exported checkpoint is T5X's own format (msgpack + tensorstore, Adafactor state),
  and T5X's own reader finds exactly the student's parameters in it."""
  from t5x import checkpoints  # pylint: disable=import-outside-toplevel
  path = chain["exported"]["checkpoint"]
  assert os.path.isfile(f"{path}/checkpoint")
  assert glob.glob(f"{path}/state.param_states.*")  # Adafactor's state, as the public ones
  theirs = checkpoints.load_t5x_checkpoint(path, restore_dtype=np.float32)
  _, params, _ = load_student(str(chain["student"]))
  flat_theirs = t5x_format._flatten(theirs["target"])  # pylint: disable=protected-access
  flat_ours = t5x_format._flatten(jax.device_get(params))  # pylint: disable=protected-access
  assert set(flat_theirs) == set(flat_ours)
  for key, value in flat_ours.items():
    np.testing.assert_array_equal(np.asarray(flat_theirs[key]), np.asarray(value))
  assert int(theirs["state"]["step"]) == chain["exported"]["step"] == 4


def test_imported_parameters_equal_the_t5x_checkpoint(chain):
  imported = chain["imported"]
  assert imported["t5x_step"] == 6 and imported["skipped_optimizer_arrays"] > 0
  t5x_params, _, _ = t5x_format.read_checkpoint(f"{chain['t5x_dir']}/checkpoint_6")
  exported_params, _, _ = t5x_format.read_checkpoint(chain["exported"]["checkpoint"])
  student, params, _ = load_student(imported["model_dir"])
  flat = t5x_format._flatten(jax.device_get(params))  # pylint: disable=protected-access
  for key, value in t5x_format._flatten(t5x_params).items():  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.asarray(flat[key]), value)
  moved = t5x_format._flatten(exported_params)  # pylint: disable=protected-access
  assert any(not np.array_equal(moved[k], v) for k, v in flat.items())  # T5X trained it
  assert student.config.vocab_size == 8000


def test_sbs_predict_gives_t5x_infers_greedy_labels(chain):
  [predictions] = [p for p in glob.glob(f"{chain['root']}/infer/sbs_cqa_label_llm-predict.*")
                   if not p.endswith(".COMPLETED")]
  rows = [json.loads(line) for line in pathlib.Path(predictions).read_text().splitlines()]
  assert len(rows) == 20
  texts = [r["inputs"]["inputs_pretokenized"][len("predict: "):] for r in rows]
  args = ["predict", "--model_dir", chain["imported"]["model_dir"],
          "--max_decode_length", LABEL_TOKENS]
  for text in texts:
    args += ["--input", text]
  proc = run_sbs_here(*args)  # the imported dir holds its vocabulary: no task is read
  assert proc.returncode == 0, proc.stderr
  ours = [json.loads(line)["label"] for line in proc.stdout.splitlines()
          if line.startswith("{")]
  assert ours == [r["prediction"] for r in rows]


def test_sbs_train_starts_from_the_imported_dir(chain, tmp_path):
  """With a zero learning rate the run keeps exactly the parameters T5X trained."""
  imported = chain["imported"]["model_dir"]
  train_student(tmp_path / "run", 1, [f"INITIAL_CHECKPOINT = '{imported}'",
                                      "OptimizerConfig.learning_rate = 0.0",
                                      "OptimizerConfig.warmup_steps = 0"])
  student, start, _ = load_student(imported)
  after, _ = ModelDir(str(tmp_path / "run")).load_params(student.abstract_state["params"])
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def family_logs(chain, annotated):
  """`t5x.train` with finetune.gin and each other family's gin file, one step from the
  exported student (no evaluation): T5X's own `train`, the three runs in one process
  (tests/t5x_train_runs.py); each family's part of the log."""
  runs = [{"name": family,
           "gin_files": ["t5x/configs/runs/finetune.gin", f"gin_configs/t5x/{family}.gin",
                         chain["model_gin"]],
           "bindings": [f"MODEL_DIR='{chain['root'] / f't5x_{family}'}'",
                        f"INITIAL_CHECKPOINT_PATH='{chain['exported']['checkpoint']}'",
                        "TRAIN_STEPS=5", "BATCH_SIZE=4", "train.train_eval_dataset_cfg=None",
                        "train.infer_eval_dataset_cfg=None",
                        "TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 128}",
                        f"vocab.annotation_dir.path='{annotated}'"]}
          for family in FAMILIES[1:]]
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "tests/t5x_train_runs.py", json.dumps(runs),
                         f"{T5X_ROOT},{REPO}"], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  parts = re.split(r"^=== t5x\.train run (\w+) ===$", proc.stderr, flags=re.M)
  logs = dict(zip(parts[1::2], parts[2::2]))
  assert list(logs) == list(FAMILIES[1:]), proc.stderr[-3000:]
  return logs


@pytest.mark.parametrize("family", FAMILIES[1:])  # distill_llm: the chain above
def test_t5x_train_continues_the_student_with_each_family_gin(chain, family_logs, family):
  """T5X's train with finetune.gin and the family's gin file trains the exported student on
  the family's CQA mixture with the family's loss (one step, no evaluation)."""
  t5x_dir = chain["root"] / f"t5x_{family}"
  log = family_logs[family]
  assert f"sbs_cqa_{family}" in log
  assert "Restoring key from ckpt: target/token_embedder/embedding" in log
  [line] = [l for l in log.splitlines() if "[5] collection=train" in l and " loss=" in l]
  label_loss = float(re.search(r"label_loss=([0-9.e+-]+)", line).group(1))
  assert np.isfinite(label_loss) and label_loss > 0
  rationale = re.search(r"rationale_loss=([^,]+)", line)
  if family.startswith("distill"):  # both tasks in the batch, weighed 0.5 / 0.5
    assert rationale and float(rationale.group(1)) > 0
  else:  # no rationale task in the mixture, and no rationale_loss=nan in the log
    assert not rationale, line
  assert (t5x_dir / "checkpoint_5").is_dir()


def test_t5x_train_counts_cut_rows_and_refuses_lengths_that_cut_most(chain, annotated):
  """SeqIO trims rows to TASK_FEATURE_LENGTHS before T5X sees them; our model gin counts
  the cut training rows under t5x.train, as `sbs train` does, and refuses most cut."""
  assert "sbs length check: TASK_FEATURE_LENGTHS" in chain["train_log"] or (
      "sbs note: TASK_FEATURE_LENGTHS (or paired part caps) cut" in chain["train_log"])
  t5x_dir = chain["root"] / "t5x_cut"
  proc = subprocess.run(
      [sys.executable, "-m", "t5x.train", f"--gin_search_paths={T5X_ROOT},{REPO}",
       "--gin_file=t5x/configs/runs/finetune.gin",
       "--gin_file=gin_configs/t5x/distill_llm.gin", f"--gin_file={chain['model_gin']}",
       f"--gin.MODEL_DIR='{t5x_dir}'",
       f"--gin.INITIAL_CHECKPOINT_PATH='{chain['exported']['checkpoint']}'",
       "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=4",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
       f"--gin.vocab.annotation_dir.path='{annotated}'"],
      capture_output=True, text=True, timeout=600, cwd=REPO,
      env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("sbs: TASK_FEATURE_LENGTHS = {\"inputs\": 64, \"targets\": 16} cut ")
  assert "--gin.TASK_FEATURE_LENGTHS='{\"inputs\": " in last
  assert "--gin.t5x_model.DistillModel.max_truncated_share=1.0" in last
  assert "Traceback" not in proc.stderr and not (t5x_dir / "checkpoint_1").exists()


@gin.configurable("sbs_test_t5x_model")
def _configured_model(model=gin.REQUIRED):
  return model


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gin_builds_a_model_t5x_accepts(chain, annotated, family):
  """T5X's vocabulary check, its data pipeline with the model's converter, and the loss."""
  from t5x import utils  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    gin.add_config_file_search_path(str(REPO))
    gin.parse_config_files_and_bindings(
        [f"gin_configs/t5x/{family}.gin", chain["model_gin"]],
        ["sbs_test_t5x_model.model = %MODEL", f"vocab.annotation_dir.path = '{annotated}'",
         # The same file as the exported copy; this process's tasks loaded it already.
         f"vocab.vocabulary_settings.path = '{os.environ['SBS_VOCAB']}'"],
        finalize_config=False)
    model = _configured_model()
    name = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    cfg = utils.DatasetConfig(mixture_or_task_name=name, split="validation", batch_size=4,
                              shuffle=False, seed=0, use_cached=False, pack=True,
                              task_feature_lengths={"inputs": 256, "targets": 128},
                              module="tasks")
    utils.verify_matching_vocabs(cfg, model)
    batch = next(iter(utils.get_dataset(cfg, 0, 1, model.FEATURE_CONVERTER_CLS)))
    params, _, _ = t5x_format.read_checkpoint(chain["exported"]["checkpoint"])
    loss, metrics = model.loss_fn(params, jax.tree.map(np.asarray, batch), None)
    assert model.alpha == (0.5 if family.startswith("distill") else 1.0)
    tasks_seen = set(np.unique(batch["decoder_task_ids"])) - {0}
    assert tasks_seen == ({1, 2} if family.startswith("distill") else {1})
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert "label_loss" in metrics
  finally:
    gin.clear_config()


def test_checkpoint_of_another_shape_names_every_offending_parameter(chain, tmp_path):
  text = pathlib.Path(chain["model_gin"]).read_text().replace("mlp_dim = 128", "mlp_dim = 96")
  (tmp_path / "other.gin").write_text(text)
  with pytest.raises(SbsError) as err:
    t5x_dirs.import_t5x(chain["exported"]["checkpoint"], str(tmp_path / "m"),
                           model_gin=str(tmp_path / "other.gin"))
  message = str(err.value)
  assert "wrong shape: encoder/layers_0/mlp/wi_0/kernel: got (64, 128), expected (64, 96)" \
      in message
  assert message.count("wrong shape") == 12  # wi_0, wi_1, wo in 4 layers
  assert not (tmp_path / "m").exists()


def test_bad_import_input_is_one_clear_line(chain, tmp_path):
  checkpoint = chain["exported"]["checkpoint"]
  proc = run_sbs_here("import-t5x", "--checkpoint", checkpoint, "--model_gin",
                      tmp_path / "none.gin", "--out", tmp_path / "m")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("sbs import-t5x: error: ")
  assert "no such model gin file" in proc.stderr and "Traceback" not in proc.stderr
  small = pathlib.Path(chain["model_gin"]).read_text().replace("vocab_size = 8000",
                                                                "vocab_size = 512")
  (tmp_path / "small.gin").write_text(small)
  with pytest.raises(SbsError, match="8000 ids, more than the network's vocab_size 512"):
    t5x_dirs.import_t5x(checkpoint, str(tmp_path / "m"), model_gin=str(tmp_path /
                                                                           "small.gin"))
  with pytest.raises(SbsError, match="not a T5X checkpoint dir"):
    t5x_dirs.import_t5x(str(tmp_path), str(tmp_path / "m"), model_gin=chain["model_gin"])


def test_seqio_evaluator_measures_our_tasks(annotated, tmp_path, monkeypatch):
  """T5X's inference evaluation and t5x.eval build seqio's Evaluator over our tasks: it
  measures every output feature (the rank-0 `task` feature crashed it with an IndexError)."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel,unused-import
  from sbs_jax import t5x_model  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("SBS_ANNOTATION_DIR", str(first_test_records(annotated, tmp_path, 6)))
  evaluator = seqio.Evaluator("sbs_cqa_distill_llm", t5x_model.FeatureConverter(pack=False),
                              eval_split="test", use_memory_cache=False)
  [task] = evaluator.eval_tasks  # the label task: the rationale task has no metrics
  assert task.name == "sbs_cqa_label_llm"
  assert "decoder_task_ids" in evaluator.model_feature_shapes
  rows = [ex for _, ex in evaluator.cached_model_datasets[task.name].as_numpy_iterator()]
  assert len(rows) == 6 and all(set(r["decoder_task_ids"]) <= {0, 1} for r in rows)
