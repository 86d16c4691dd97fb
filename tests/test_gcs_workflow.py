"""The workflow with gs:// paths on the GCS emulator (tests/conftest.py `gcs`).

Annotations made locally are copied up with the real `gcloud storage cp -r`; `sbs vocab`
writes to gs://; `sbs train` runs as two processes (as two hosts of a slice) with the
annotation dir, vocabulary, INITIAL_CHECKPOINT and MODEL_DIR on gs://, is SIGKILLed after
its first checkpoint and resumed, and ends with the losses and results of an uninterrupted
run (one process over as many devices, fed the two hosts' global batches by
tests/multihost_worker.py, which tests/test_multihost.py checks); `sbs eval` and `sbs predict` read the gs:// model dir. Commands that work
on local files only refuse a gs:// path in one line and write nothing (pathlib once turned
`gs://b/x` into a local folder `gs:/b/x`).
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from sbs_jax.model.model_dir import ModelDir
from tests.helpers import REPO, run_sbs, xla_devices
from tests.helpers.cli import run_sbs_here
from tests.helpers.multihost import tail, two_hosts, wait_all, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.multihost]

BUCKET = "sbs-test"
ROOT = f"gs://{BUCKET}/workflow"
STEPS = 6
CHECKPOINT_EVERY = 3  # one checkpoint before the SIGKILL, and room after it


def _train_flags(model_dir, *more) -> list[str]:
  return ["--gin_file=experiments/svamp_distill_llm.gin", "--gin_file=overlays/tiny_cpu.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.annotation_dir.path='{ROOT}/ann'",
          f"--gin.vocabulary_settings.path='{ROOT}/vocab/spm.model'",
          "--gin.student_config.vocab_size=1024", f"--gin.TRAIN_STEPS={STEPS}",
          "--gin.TrainConfig.log_every=1", f"--gin.TrainConfig.checkpoint_every={CHECKPOINT_EVERY}",
          f"--gin.EvalConfig.every={STEPS}", "--gin.EvalConfig.max_examples=8",
          "--gin.EvalConfig.max_test_examples=8", "--gin.EvalConfig.batch_size=8",
          "--gin.EvalConfig.rationale_samples=0", "--gin.BATCH_SIZE=8",
          "--gin.OptimizerConfig.warmup_steps=0",
          # Short rows for speed: most of SVAMP's paired rows are cut, which the trainer
          # refuses unless allowed; what this test checks does not depend on them.
          "--gin.DataConfig.task_feature_lengths={'inputs': 128, 'targets': 64}",
          "--gin.DataConfig.max_truncated_share=1.0", *more]


def _env(devices: int = 2) -> dict:
  """For `run_sbs`, which adds it to os.environ (where the emulator's settings are)."""
  return {"JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": xla_devices(devices)}


@pytest.fixture(scope="module")
def setup(gcs, data_dir, tmp_path_factory):
  import shutil  # pylint: disable=import-outside-toplevel
  if shutil.which("gcloud") is None:
    pytest.skip("the annotations go up with `gcloud storage cp -r`, and gcloud is not "
                "installed")
  from sbs_jax.annotate import build, job  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("gcs_workflow")
  for split in ("train", "test"):
    job.run(build.build_job(build.Options(
        dataset="svamp", split=split, teacher="replay", out_dir=str(root / "ann"),
        data_dir=str(data_dir), no_progress=True)))
  copy = subprocess.run(["gcloud", "storage", "cp", "-r", str(root / "ann"), f"{ROOT}/"],
                        capture_output=True, text=True, env=os.environ, timeout=300)
  assert copy.returncode == 0, copy.stderr[-2000:]
  proc = run_sbs_here("vocab", "--annotation_dir", f"{ROOT}/ann", "--datasets", "svamp",
                      "--out", f"{ROOT}/vocab/spm.model", "--vocab_size", "1000")
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.splitlines()[-1])["vocabulary"] == f"{ROOT}/vocab/spm.model"
  _init_model_dir(f"{ROOT}/init")
  return root


def _init_model_dir(path: str) -> None:
  """A model dir on gs:// to start from, as `sbs import-hf/import-t5x --out gs://` make one:
  the runs' network (their gin files and bindings), random-init, written in this process."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.network import Transformer  # pylint: disable=import-outside-toplevel
  from sbs_jax.train import config, gin_setup  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.state import init_params  # pylint: disable=import-outside-toplevel
  flags = _train_flags(path)
  gin_setup.parse_gin([f.split("=", 1)[1] for f in flags if f.startswith("--gin_file=")],
                      [f[len("--gin."):].replace("=", " = ", 1) for f in flags
                       if f.startswith("--gin.")])
  try:
    network = config.student_config()
  finally:
    gin.clear_config()
  ModelDir(path).write_info(network, f"{ROOT}/vocab/spm.model")
  params = nn.unbox(init_params(Transformer(network), jax.random.key(0)))
  ModelDir(path).save_params(0, params, {"step": 0})


def test_sbs_vocab_and_the_copied_annotations_are_on_gs(setup, gcs):
  names = gcs.list_objects(BUCKET, "workflow/")
  assert "workflow/vocab/spm.model" in names
  assert "workflow/ann/svamp/train.tfrecord-00000-of-00001" in names
  assert not (REPO / "gs:").exists()


@pytest.fixture(scope="module")
def trained(setup, gcs):
  """An uninterrupted run (one process, the two hosts' four devices), and a two-process
  run SIGKILLed after its first checkpoint and rerun, both from INITIAL_CHECKPOINT on gs://
  into a gs:// MODEL_DIR."""
  init = [f"--gin.INITIAL_CHECKPOINT='{ROOT}/init'"]
  logs = {name: [setup / f"{name}{i}.log" for i in range(2)] for name in
          ("killed", "resumed")}
  # The reference is fed the two hosts' global batches (tests/multihost_worker.py).
  whole = subprocess.run(
      [sys.executable, "tests/multihost_worker.py", "2", str(setup / "whole_report.json"),
       "train", *_train_flags(f"{ROOT}/whole", *init)], capture_output=True, text=True,
      cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **_env(4)), timeout=900)
  marker = f"workflow/killed/checkpoints/{CHECKPOINT_EVERY}/commit_success.txt"
  with two_hosts(_train_flags(f"{ROOT}/killed", *init), logs["killed"]) as procs:
    wait_for(lambda: marker in gcs.list_objects(BUCKET, "workflow/killed/checkpoints/"),
              procs, f"the step-{CHECKPOINT_EVERY} checkpoint on gs://", logs["killed"])
    for p in procs:
      p.send_signal(signal.SIGKILL)
  with two_hosts(_train_flags(f"{ROOT}/killed", *init), logs["resumed"]) as procs:
    resumed_codes = wait_all(procs)
  return dict(logs=logs, whole=whole, resumed_codes=resumed_codes)


def test_two_hosts_on_gs_resume_a_killed_run_exactly(trained, gcs):
  logs = trained["logs"]
  whole = trained["whole"]
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert trained["resumed_codes"] == [0, 0], "\n".join(tail(l) for l in logs["resumed"])
  assert "starting from gs://sbs-test/workflow/init" in whole.stdout + whole.stderr
  assert "starting from gs://sbs-test/workflow/init" in logs["killed"][0].read_text()
  resumed_log = logs["resumed"][0].read_text()
  assert "resumed from step" in resumed_log
  resumed_from = int(resumed_log.split("resumed from step ")[1].split()[0])
  assert resumed_from == CHECKPOINT_EVERY  # killed mid-run, resumed from its checkpoint
  whole = ModelDir(f"{ROOT}/whole").read_metrics("train")
  killed = ModelDir(f"{ROOT}/killed").read_metrics("train")
  assert [m["step"] for m in whole] == [m["step"] for m in killed] == list(range(1, STEPS + 1))
  for a, b in zip(whole, killed):
    for key in ("loss", "label_loss", "rationale_loss"):
      assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  results = [json.loads(tf.io.gfile.GFile(f"{ROOT}/{name}/results.json").read())
             for name in ("whole", "killed")]
  assert results[0]["test"] == results[1]["test"]
  assert results[0]["best_step"] == results[1]["best_step"]


def test_eval_and_predict_read_the_gs_model_dir(trained, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  results = json.loads(tf.io.gfile.GFile(f"{ROOT}/killed/results.json").read())
  proc = run_sbs("eval", "--model_dir", f"{ROOT}/killed", "--split", "test", env=_env())
  assert proc.returncode == 0, proc.stderr[-2000:]
  scored = json.loads(proc.stdout.splitlines()[-1])
  assert scored["step"] == results["best_step"]
  assert scored["examples"] == results["test"]["examples"]
  assert scored["accuracy_pct"] == pytest.approx(results["test"]["accuracy"])
  rows = tmp_path / "in.jsonl"
  rows.write_text("".join(json.dumps({"input": f"Jack has {i} apples and buys 4 more. How "
                                      "many apples does he have?"}) + "\n" for i in range(3)))
  # In this process (the model dir holds its vocabulary; no task is read).
  proc = run_sbs_here("predict", "--model_dir", f"{ROOT}/killed", "--input_file", rows,
                      "--output_file", tmp_path / "out.jsonl")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
  again = run_sbs_here("predict", "--model_dir", f"{ROOT}/killed", "--input_file", rows,
                       "--output_file", tmp_path / "out.jsonl")
  assert again.returncode == 0 and "already" in (again.stdout + again.stderr)


@pytest.mark.parametrize("args, flag", [
    (["annotate", "--dataset", "svamp", "--split", "test", "--teacher", "replay",
      "--out_dir", f"{ROOT}/ann2"], "out_dir"),
    (["predict", "--model_dir", "m", "--input_file", f"{ROOT}/in.jsonl", "--output_file",
      "out.jsonl"], "input_file"),
    (["sweep", "--annotation_dir", "ann", "--vocab", "v.model", "--dataset", "svamp",
      "--out_dir", f"{ROOT}/sweep"], "out_dir"),
    (["report", f"{ROOT}/sweep"], "sweep_dir"),
    (["export-hf", "--model_dir", "m", "--out", f"{ROOT}/hf"], "out"),
    (["synthetic", "generate", "--out_dir", f"{ROOT}/synthetic"], "out_dir"),
])
def test_local_only_commands_refuse_gs_paths_in_one_line(tmp_path, monkeypatch, capsys,
                                                         args, flag):
  from sbs_jax import cli  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  code = cli.main(args)
  err = capsys.readouterr().err
  assert code == 2, err[-2000:]
  [line] = err.strip().splitlines()
  assert line.startswith(f"sbs {args[0]}: error: --{flag} gs://"), line
  assert "works on local files only" in line and "gcloud storage cp -r" in line
  assert list(tmp_path.iterdir()) == []  # no local `gs:` folder, nothing else either
