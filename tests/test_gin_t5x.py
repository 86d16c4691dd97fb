"""The T5X gin files: they parse, name a registered mixture or task, and set what
t5x/train.py reads."""

import pathlib

import gin
import pytest
import seqio

import tasks
from sbs_jax.data import vocab

T5X_GIN = sorted((pathlib.Path(__file__).parents[1] / "gin_configs" / "t5x").glob("*.gin"))


def test_one_file_per_family():
  assert {p.stem for p in T5X_GIN} == {"distill_llm", "distill_gt", "standard_gt",
                                       "standard_llm"}


@pytest.mark.parametrize("path", T5X_GIN, ids=lambda p: p.stem)
def test_t5x_gin_file(path):
  gin.clear_config()
  try:
    gin.parse_config_file(str(path))
    name = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    assert gin.query_parameter("%MIXTURE_OR_TASK_MODULE") == "tasks"
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == tasks.DEFAULT_FEATURE_LENGTHS
    assert gin.query_parameter("%USE_CACHED_TASKS") is False
    assert name == f"sbs_cqa_{path.stem}"
    assert seqio.get_mixture_or_task(name) is not None
    path_bound, extra_ids = vocab.vocabulary_settings()
    assert path_bound.endswith("sentencepiece.model") and extra_ids == 100
    assert vocab.annotation_dir().startswith("gs://")
  finally:
    gin.clear_config()
