"""Training rows cut by task_feature_lengths (or a paired example's part caps): counted,
reported, and refused with the lengths that fit when they are most of the data."""

import json

import pytest

import tasks  # noqa: F401  # registers the benchmarks' tasks

from sbs_jax.errors import SbsError
from sbs_jax.train import config
from sbs_jax.train.data import check_lengths, length_note, train_batches
from tests.helpers.cli import run_sbs_here
from tests.helpers.registry import forgotten_after


def _data(task, inputs, targets, **kwargs):
  return config.DataConfig(mixture_or_task=task, batch_size=4, pack=False,
                           task_feature_lengths={"inputs": inputs, "targets": targets},
                           **kwargs)


def test_lengths_that_cut_most_paired_rows_are_refused_with_lengths_that_fit(annotated):
  task = "sbs_svamp_distill_llm_paired"
  with pytest.raises(SbsError) as refused:
    check_lengths(_data(task, 48, 16))
  line = str(refused.value)
  assert "\n" not in line
  assert line.startswith('DataConfig.task_feature_lengths = {"inputs": 48, "targets": 16} '
                         f"cut ")
  assert f"checked training examples of {task}" in line
  assert "--gin.DataConfig.max_truncated_share=1.0" in line
  fit = json.loads(line.split("--gin.DataConfig.task_feature_lengths='")[1].split("'")[0])
  assert fit["inputs"] > 48 and fit["targets"] > 16
  assert fit["inputs"] % 8 == 0 and fit["targets"] % 8 == 0
  # The suggested lengths do fit every checked row, and the rows are really that long.
  report = check_lengths(_data(task, fit["inputs"], fit["targets"]))[task]
  assert report["cut"] == 0 and report["checked"] > 100
  assert fit["inputs"] - 8 < report["longest"]["inputs"] <= fit["inputs"]
  assert length_note({task: report}) is None
  # Allowing the cut: counted, not refused.
  allowed = check_lengths(_data(task, 48, 16, max_truncated_share=1.0))[task]
  assert allowed["checked"] == report["checked"]
  assert allowed["cut"] > allowed["checked"] / 2


def test_a_few_cut_rows_are_counted_and_said_not_refused(annotated):
  task = "sbs_svamp_distill_llm_paired"
  full = check_lengths(_data(task, 512, 256))[task]
  # One token shorter than the longest paired input: the longest rows (only) are cut.
  longest = full["longest"]["inputs"]
  report = check_lengths(_data(task, longest - 1, 256))
  r = report[task]
  assert 1 <= r["cut"] < r["checked"] / 2
  note = length_note(report)
  assert note.startswith("note: DataConfig.task_feature_lengths")
  assert f"{task}: {r['cut']:,} of {r['checked']:,} checked" in note


def test_every_task_of_a_mixture_is_checked(annotated):
  # The rationale task's targets are the long ones: cut there, not in the label task.
  report = check_lengths(_data("sbs_svamp_distill_llm", 512, 24, max_truncated_share=1.0))
  assert set(report) == {"sbs_svamp_label_llm", "sbs_svamp_rationale"}
  label, rationale = report["sbs_svamp_label_llm"], report["sbs_svamp_rationale"]
  assert label["cut"] < label["checked"] / 10  # a few long labels
  assert rationale["cut"] > rationale["checked"] / 2
  with pytest.raises(SbsError, match="checked training examples of sbs_svamp_rationale"):
    check_lengths(_data("sbs_svamp_distill_llm", 512, 24))


def test_the_paired_cut_is_the_one_the_trainer_sees(annotated):
  """A paired row over the input length loses its explain part's end and its EOS in the
  trainer's batches: what the check counts is what happens."""
  task = "sbs_svamp_distill_llm_paired"
  data = _data(task, 48, 64, max_truncated_share=1.0, seed=0)
  batch = next(train_batches(data))
  ids, segments = batch["encoder_input_tokens"], batch["encoder_segment_ids"]
  full_rows = (segments[:, -1] > 0).sum()  # rows whose last position is a real token
  assert full_rows >= 1  # cut rows fill the whole length ...
  assert (ids[segments[:, -1] > 0, -1] != 1).all()  # ... and end without EOS (id 1)


def test_parts_over_their_caps_are_counted(tmp_path):
  """A rationale longer than the paired part cap (PART_LENGTHS) is cut before the row
  lengths apply: counted as a cut example."""
  import seqio
  import tasks
  from sbs_jax.data import records
  from sbs_jax.data import vocab as vocab_lib
  from sbs_jax.data.sources import _in_bucket
  rows, i = [], 0
  while len(rows) < 6:
    rid = f"long-{i}"
    i += 1
    if bool(_in_bucket("sbs-validation:", [rid], 0.1)[0]):
      continue
    n = len(rows)
    rationale = " ".join(["step"] * (400 if n < 4 else 5)) + f" so {n}."
    rows.append({"id": rid, "dataset": "longset", "split": "train", "input": f"What is {n}?",
                 "label": str(n), "llm_label": str(n), "rationale": rationale,
                 "parse_error": "", "completion": "", "prompt_id": "p", "teacher": "replay",
                 "index": n, "has_label": 1, "parse_ok": 1})
  (tmp_path / "longset").mkdir()
  records.write_atomically(tmp_path / "longset" / records.shard_name("train", 0, 1), rows)
  vocab = tmp_path / "spm.model"
  vocab_lib.train_vocabulary([r["input"] + " " + r["rationale"] for r in rows] * 20, vocab,
                             vocab_size=300)
  with forgotten_after("longset"):
    names = tasks.register_dataset("longset", annotation_dir=str(tmp_path),
                                   vocabulary=seqio.SentencePieceVocabulary(str(vocab)))
    with pytest.raises(SbsError, match=r"cut 4 of 6 checked .*paired parts are longer than "
                       r"their caps"):
      check_lengths(_data(names["distill_llm_paired"], 4096, 4096))
    report = check_lengths(_data(names["distill_llm_paired"], 4096, 4096,
                                 max_truncated_share=1.0))
    assert report[names["distill_llm_paired"]]["parts_cut"] == 4


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_the_share_is_range_checked(share):
  from sbs_jax.train.gin_check import ConfigError
  with pytest.raises(ConfigError, match="max_truncated_share"):
    _data("x", 8, 8, max_truncated_share=share)


def test_sbs_train_refuses_before_the_model_dir_is_made(annotated, tmp_path):
  model_dir = tmp_path / "run"
  done = run_sbs_here("train", "--gin_file=experiments/svamp_distill_llm.gin",
                 "--gin_file=overlays/tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
                 "--gin.MIXTURE_OR_TASK_NAME='sbs_svamp_distill_llm_paired'",
                 "--gin.DataConfig.pack=False",
                 "--gin.DataConfig.task_feature_lengths={'inputs': 40, 'targets': 16}")
  assert done.returncode == 2, done.stderr
  errors = [l for l in done.stderr.splitlines() if l.startswith("sbs train: error: ")]
  assert len(errors) == 1 and "DataConfig.task_feature_lengths" in errors[0], done.stderr
  assert "Traceback" not in done.stderr
  assert not model_dir.exists()


def test_the_check_reads_at_most_length_check_examples(annotated):
  task = "sbs_svamp_distill_llm_paired"
  report = check_lengths(_data(task, 48, 16, length_check_examples=50,
                               max_truncated_share=1.0))[task]
  assert report["checked"] == 50 and 25 < report["cut"] <= 50


def test_fit_lengths_refuses_a_partial_check_and_packed_rows(annotated):
  from sbs_jax.train.data import fitted_lengths
  from sbs_jax.train.gin_check import ConfigError
  task = "sbs_svamp_distill_llm_paired"
  data = _data(task, 512, 256, length_check_examples=50, fit_lengths=True)
  with pytest.raises(SbsError, match=r"read only the first 50 training examples of "
                     f"{task}.*length_check_examples above"):
    fitted_lengths(data, check_lengths(data))
  whole = _data(task, 512, 256, fit_lengths=True)
  report = check_lengths(whole)[task]
  fit = fitted_lengths(whole, {task: report})
  for key in ("inputs", "targets"):  # the longest row fits, at most 7 tokens of slack
    assert report["longest"][key] <= fit[key] < report["longest"][key] + 8
    assert fit[key] % 8 == 0
  assert fitted_lengths(_data(task, 16, 256, fit_lengths=True),
                        {task: report})["inputs"] == 16  # never beyond the configured
  with pytest.raises(ConfigError, match="fit_lengths"):
    config.DataConfig(mixture_or_task=task, pack=True, fit_lengths=True)


@pytest.mark.slow
def test_fit_lengths_trains_the_same_losses_on_shorter_rows(annotated, tmp_path):
  """Padding is masked out: rows cut down to the longest example give the same losses."""
  losses, results = {}, {}
  for fit in (False, True):
    model_dir = tmp_path / f"fit_{fit}"
    # In this process: the same trainer, without a new process's 5-7 s of imports twice.
    done = run_sbs_here("train", "--gin_file=experiments/svamp_distill_llm.gin",
                        "--gin_file=overlays/tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.MIXTURE_OR_TASK_NAME='sbs_svamp_distill_llm_paired'",
                   "--gin.DataConfig.pack=False", "--gin.TRAIN_STEPS=3",
                   "--gin.DataConfig.task_feature_lengths={'inputs': 512, 'targets': 256}",
                   f"--gin.DataConfig.fit_lengths={fit}", "--gin.EvalConfig.every=3",
                   "--gin.EvalConfig.max_examples=4", "--gin.EvalConfig.max_test_examples=4",
                   "--gin.TrainConfig.log_every=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("fit_lengths: rows of" in done.stderr) == fit
    lines = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
    losses[fit] = [l["loss"] for l in lines if l.get("split") == "train"]
    results[fit] = json.loads((model_dir / "results.json").read_text())["length_check"]
  assert len(losses[True]) == 3
  assert losses[True] == pytest.approx(losses[False], rel=1e-4)
  fitted = results[True]["fitted_lengths"]
  assert fitted["inputs"] < 512 and fitted["targets"] < 256
  assert results[True]["task_feature_lengths"] == {"inputs": 512, "targets": 256}
  assert "fitted_lengths" not in results[False]
