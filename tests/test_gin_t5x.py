"""The T5X gin files, parsed as `t5x.train` parses them (after T5X's model gin):
they name a registered mixture or task, select the paper's loss, and give the model and
the tasks one vocabulary, T5's public one by default, named as T5X's model gins name it."""

import pathlib

import gin
import pytest
import seqio

pytest.importorskip("t5x", reason="T5X is not installed: bash launch/install_t5x.sh "
                    "../shared/vendor")

# pylint: disable=wrong-import-position
import t5x
import tasks
from sbs_jax.data import vocab

pytestmark = [pytest.mark.t5x]

REPO = pathlib.Path(__file__).parents[1]
T5X_GIN = sorted((REPO / "gin_configs" / "t5x").glob("*.gin"))
T5X_ROOT = pathlib.Path(t5x.__file__).parents[1]  # holds t5x/examples/..., t5x/configs/...
ALPHA = {"distill_llm": 0.5, "distill_gt": 0.5, "standard_gt": 1.0, "standard_llm": 1.0}


def test_one_file_per_family():
  assert {p.stem for p in T5X_GIN} == set(ALPHA)


def parse(*files):
  gin.clear_config()
  gin.add_config_file_search_path(str(T5X_ROOT))
  gin.add_config_file_search_path(str(REPO))
  gin.parse_config_files_and_bindings(list(files), [], finalize_config=False)


@pytest.mark.parametrize("path", T5X_GIN, ids=lambda p: p.stem)
def test_t5x_gin_file(path):
  try:
    # (T5X's run gins import __main__, so `t5x.train` itself runs them: test_t5x_workflow.py)
    parse("t5x/examples/t5/t5_1_1/small.gin", str(path))
    name = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    assert gin.query_parameter("%MIXTURE_OR_TASK_MODULE") == "tasks"
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == tasks.DEFAULT_FEATURE_LENGTHS
    assert gin.query_parameter("%USE_CACHED_TASKS") is False
    assert name == f"sbs_cqa_{path.stem}"
    assert seqio.get_mixture_or_task(name) is not None
    assert gin.query_parameter("%ALPHA") == ALPHA[path.stem]
    assert gin.query_parameter("%MODEL").selector.endswith("t5x_model.DistillModel")
    assert gin.query_parameter("%VOCABULARY").selector.endswith(
        "vocab.ConfiguredVocabulary")
    # The default is the vocabulary T5X's own model gins name, with their extra ids.
    t5x_default = gin.query_parameter(
        "seqio.SentencePieceVocabulary.sentencepiece_model_file")
    assert vocab.vocabulary_settings() == (t5x_default, 0)
    assert t5x_default.endswith("cc_all.32000.100extra/sentencepiece.model")
    assert vocab.annotation_dir().startswith("gs://")
  finally:
    gin.clear_config()
