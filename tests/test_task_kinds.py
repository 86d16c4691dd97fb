"""The task kinds' table (sbs_jax/task_kinds.py): names parse back to their dataset and kind
for dataset names that hold underscores and kind words, the scored label task and prefix of
each kind, and the sweep's methods."""

import pytest

from sbs_jax import task_kinds
from sbs_jax.experiments import sweep
from sbs_jax.train.config import default_eval_task

# Dataset names a user may give (a file stem): underscores, dots, and kind words inside.
DATASETS = ["cqa", "my_data", "a.b", "x_distill_gt", "label_gt", "foo_standard", "rationale",
            "d_distill_llm_paired"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_name_splits_back_to_its_dataset_and_kind(dataset):
  for kind, name in task_kinds.task_names(dataset).items():
    assert task_kinds.split_name(name) == (dataset, task_kinds.KINDS[kind]), name


def test_names_of_other_forms_do_not_split():
  for name in ("cqa_label_gt", "sbs_cqa_label", "sbs__label_gt", "sbs_cqa_label_gt_x",
               "sbs_cqa_paired", "t5_cqa_label_gt"):
    assert task_kinds.split_name(name) is None, name


@pytest.mark.parametrize("dataset", ["cqa", "my_data_distill_gt"])
def test_eval_task_of_each_kind(dataset):
  scored = {"label_gt": "label_gt", "label_llm": "label_llm", "standard_gt": "standard_gt",
            "standard_llm": "standard_llm", "distill_gt": "label_gt",
            "distill_llm": "label_llm", "distill_gt_paired": "label_gt",
            "distill_llm_paired": "label_llm"}
  names = task_kinds.task_names(dataset)
  assert set(scored) | {"rationale"} == set(names)
  for kind, expected in scored.items():
    assert default_eval_task(names[kind]) == names[expected]
  with pytest.raises(ValueError, match="set DataConfig.eval_task"):
    default_eval_task(names["rationale"])
  with pytest.raises(ValueError, match="set DataConfig.eval_task"):
    default_eval_task("my_own_task")


def test_label_prefix_follows_the_scored_task():
  names = task_kinds.task_names("standard_gt")  # a dataset named like a kind
  assert task_kinds.label_prefix(names["standard_gt"]) == ""
  assert task_kinds.label_prefix(names["standard_llm"]) == ""
  assert task_kinds.label_prefix(names["label_llm"]) == "predict: "
  assert task_kinds.label_prefix(task_kinds.eval_task(names["distill_llm_paired"])) == \
      "predict: "
  assert task_kinds.label_prefix("a_task_registered_by_hand") == "predict: "


def test_sweep_methods_train_their_kinds_with_their_alpha(tmp_path):
  settings = {"dataset": "my_data", "alpha": 0.3, "gin_files": [], "bindings": [],
              "annotation_dir": str(tmp_path), "vocab": str(tmp_path / "spm.model")}
  expected = {"standard_finetuning": ("sbs_my_data_standard_gt", "1.0"),
              "standard_distillation": ("sbs_my_data_standard_llm", "1.0"),
              "distill_gt": ("sbs_my_data_distill_gt_paired", "0.3"),
              "distill_llm": ("sbs_my_data_distill_llm_paired", "0.3")}
  assert set(expected) == set(sweep.METHODS)
  for method, (task, alpha) in expected.items():
    argv = sweep.train_argv(settings, sweep.Cell(method, 100.0, "", 0), str(tmp_path))
    assert f"--gin.MIXTURE_OR_TASK_NAME=\"{task}\"" in argv, argv
    assert f"--gin.ALPHA={alpha}" in argv, argv
