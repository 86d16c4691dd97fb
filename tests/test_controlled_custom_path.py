"""A controlled task of the family through the custom-data path, as docs/experiments.md
gives it: JSONL with the teacher's completions -> sbs annotate --teacher replay -> sbs vocab
--model_type bpe -> sbs train with overlays/marked_cpu.gin (shrunk to a few steps)."""

import json

import pytest

from sbs_jax.experiments import synthetic
from tests.helpers import run_sbs
from tests.helpers.cli import run_sbs_here


@pytest.mark.slow
def test_a_marked_task_through_replay_vocab_and_train(tmp_path):
  form = synthetic.Form("marked", "max", people=5)
  paths = synthetic.generate(tmp_path / "data", "marks", train=400, test=40, seed=7,
                             form=form)
  ann = tmp_path / "ann"
  for split, path in paths.items():  # the teacher's completion beside each row
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    for r in rows:
      r["completion"] = synthetic.teacher_completion(f"Q: {r['input']}\nA:")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run_sbs_here("annotate", "--dataset", f"jsonl:{path}", "--split", split, "--teacher",
                        "replay", "--completion_key", "completion", "--answer_format",
                        "number", "--out_dir", ann, "--no_progress")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["teacher_accuracy"] == 100.0 and stats["parsed"] == len(rows)
  spm = tmp_path / "vocab" / "spm.model"
  done = run_sbs_here("vocab", "--annotation_dir", ann, "--datasets", "marks", "--out", spm,
                      "--model_type", "bpe", "--vocab_size", "600")
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_word"] < 2.0
  model_dir = tmp_path / "run"
  done = run_sbs("train", "--gin_file=models/base.gin", "--gin_file=runs/finetune.gin",
                 "--gin_file=overlays/marked_cpu.gin",
                 "--gin.MIXTURE_OR_TASK_NAME='sbs_marks_distill_llm_paired'",
                 "--gin.ALPHA=0.5", f"--gin.MODEL_DIR='{model_dir}'",
                 f"--gin.annotation_dir.path='{ann}'",
                 f"--gin.vocabulary_settings.path='{spm}'",
                 "--gin.TRAIN_STEPS=3", "--gin.EvalConfig.every=3",
                 "--gin.EvalConfig.max_examples=8", timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((model_dir / "results.json").read_text())
  assert results["test"]["examples"] == 40
  check = results["length_check"]["tasks"]["sbs_marks_distill_llm_paired"]
  assert check["cut"] == 0 and check["longest"]["inputs"] <= 96  # the overlay's rows fit
