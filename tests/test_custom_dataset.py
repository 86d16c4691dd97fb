"""Custom data from the command line: annotate a JSONL file, build a vocabulary, train on
`sbs_<stem>_*` with no Python; unknown task names get one line listing the known ones."""

import json
import re
import os
import subprocess
import sys

import pytest

import tasks
from sbs_jax.data import records
from sbs_jax.errors import SbsError
from tests.helpers import REPO, run_sbs
from tests.helpers.cli import run_sbs_here
from tests.helpers.data import write_jsonl
from tests.helpers.registry import forgotten_after


def arithmetic_rows(n=60):
  rows = []
  for i in range(n):
    a, b = i % 7 + 1, i % 5 + 2
    answer = a + b if i % 4 else a + b + 1  # the teacher is wrong on every fourth
    gold = f"{a + b}.0" if i % 3 == 0 else str(a + b)  # read as a number: "3.0" is "3"
    rows.append({"input": f"What is {a} plus {b}?", "label": gold,
                 "out": f"{a} plus {b} makes {answer}. So the answer is {answer}."})
  return rows


@pytest.fixture(scope="module")
def annotated_custom(tmp_path_factory):
  """my_data.jsonl annotated (replay teacher) and a vocabulary, both by the command line."""
  root = tmp_path_factory.mktemp("custom")
  data = write_jsonl(root / "my_data.jsonl", arithmetic_rows())
  ann = root / "ann"
  proc = run_sbs_here("annotate", "--dataset", f"jsonl:{data}", "--teacher", "replay",
                      "--completion_key", "out", "--answer_format", "number", "--out_dir",
                      ann, "--no_progress")
  assert proc.returncode == 0, proc.stderr
  stats = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (stats["examples"], stats["teacher_accuracy"]) == (60, 75.0)
  spm = root / "vocab" / "spm.model"
  proc = run_sbs_here("vocab", "--annotation_dir", ann, "--datasets", "my_data", "--out",
                      spm, "--vocab_size", "300")
  assert proc.returncode == 0, proc.stderr
  return root, ann, spm


def train_argv(model_dir, ann, spm, task="sbs_my_data_distill_llm_paired"):
  return ["train", "--gin_file", "experiments/cqa_distill_llm.gin",
          "--gin_file", "overlays/tiny_cpu.gin",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
          "--gin.DataConfig.task_feature_lengths={'inputs': 128, 'targets': 64}",
          "--gin.EvalConfig.batch_size=8", "--gin.EvalConfig.rationale_samples=1",
          f"--gin.annotation_dir.path='{ann}'", f"--gin.vocabulary_settings.path='{spm}'"]


def test_train_on_a_custom_dataset_from_the_command_line(annotated_custom):
  root, ann, spm = annotated_custom
  model_dir = root / "model"
  env = {"SBS_ANNOTATION_DIR": str(root / "elsewhere")}  # gin's binding is the one read
  proc = run_sbs(*train_argv(model_dir, ann, spm), env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((model_dir / "results.json").read_text())
  assert results["mixture_or_task"] == "sbs_my_data_distill_llm_paired"
  assert results["eval_task"] == "sbs_my_data_label_llm" and results["train_steps"] == 2
  assert results["validation"]["examples"] > 0  # the carved 10% of train


def test_unknown_task_name_is_one_line_listing_the_registered(annotated_custom):
  root, ann, spm = annotated_custom
  proc = run_sbs(*train_argv(root / "typo", ann, spm, task="sbs_my_dta_distill_llm_paired"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if "sbs_my_dta_distill_llm_paired" in l]
  assert len(lines) == 1, proc.stderr
  line = lines[0]
  assert "did you mean 'sbs_my_data_distill_llm_paired'?" in line
  assert "sbs_{anli1,cqa,esnli,my_data,svamp}_{label_gt,label_llm,rationale," in line
  assert f"annotation dir {ann} with records (my_data;" in line
  assert not (root / "typo" / "checkpoints").exists()


def test_import_tasks_registers_the_env_annotation_dir(annotated_custom):
  _, ann, _ = annotated_custom
  code = ("import json, seqio, tasks; print(json.dumps(sorted(n for n in "
          "list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names()) "
          "if 'my_data' in n)))")
  env = dict(os.environ, SBS_ANNOTATION_DIR=str(ann), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert printed(proc.stdout) == sorted(tasks.task_names("my_data").values())
  env["SBS_ANNOTATION_DIR"] = str(ann.parent / "empty")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0 and printed(proc.stdout) == []


def printed(stdout: str) -> list[str]:
  return json.loads(stdout.strip().splitlines()[-1])


def test_register_annotation_dir_registers_each_dataset_with_records(tmp_path):
  for name, files in [("alpha", ["train.tfrecord-00000-of-00001"]),
                      ("beta", ["test.tfrecord-00000-of-00002"]),
                      ("no_records", ["train.stats.json"]), (".partial", ["x.tfrecord-0-of-1"]),
                      ("bad-name", ["train.tfrecord-00000-of-00001"])]:
    for f in files:
      (tmp_path / name).mkdir(exist_ok=True)
      (tmp_path / name / f).write_bytes(b"")
  with forgotten_after("alpha", "beta"):
    assert tasks.register_annotation_dir(str(tmp_path)) == ["alpha", "beta"]
    task = tasks.get_task_or_mixture("sbs_alpha_label_gt")
    assert task.source.annotation_dir == str(tmp_path)
    assert [m.__name__ for m in task.metric_fns] == ["label_accuracy"]
    summary = tasks.registered_summary()
    # Other tests in this process may have registered datasets of their own: the check is
    # that alpha and beta joined the benchmarks' group, and the three others did not.
    [group] = re.findall(r"sbs_\{([^}]*)\}_\{label_gt,label_llm,rationale,", summary)
    assert {"alpha", "beta", "anli1", "cqa", "esnli", "svamp"} <= set(group.split(","))
    assert not {"no_records", ".partial", "partial", "bad-name"} & set(re.findall(r"[\w.-]+",
                                                                            summary))
    with pytest.raises(SbsError) as unknown:
      tasks.get_task_or_mixture("sbs_gamma_label_gt")
    assert str(unknown.value).startswith("no task or mixture 'sbs_gamma_label_gt': registered: "
                                         + summary)


def test_custom_records_carry_normalised_labels(annotated_custom):
  _, ann, _ = annotated_custom
  recs = records.read_records(sorted((ann / "my_data").glob("train.tfrecord-*")))
  assert [r["llm_label"] for r in recs[:4]] == ["4", "5", "7", "9"]
  assert [r["label"] for r in recs[:4]] == ["3", "5", "7", "9"]  # gold "3.0" read as 3
