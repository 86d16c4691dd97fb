"""sbs_jax.model.model_dir: a model dir's files read and written without the trainer, on a
local disk and on gs:// through the GCS emulator."""

import time

import jax
import numpy as np
import pytest

from sbs_jax.errors import SbsError
from sbs_jax.model import model_dir as model_dir_lib
from sbs_jax.model.config import config_for
from sbs_jax.model.model_dir import ModelDir


def _params():
  rng = np.random.default_rng(0)
  return {"encoder": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)},
          "bias": rng.normal(size=(3,)).astype(np.float32)}


def _abstract(params):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)


@pytest.fixture(params=["local", "gs"])
def where(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "model")
  request.getfixturevalue("gcs")
  return f"gs://sbs-test/model_dir/{time.time_ns()}"


def test_info_params_metrics_and_results_round_trip(where):
  model = ModelDir(where + "/")
  assert model.path == where and model.read_metrics() is None and model.read_results() is None
  with pytest.raises(SbsError, match=f"^{where} is not a model dir: no model.json$"):
    model.read_info()
  config = config_for("tiny")
  model.write_info(config, "", extra_ids=3, max_input_length=64)
  read, info = model.read_info()
  assert read == config and info["extra_ids"] == 3 and info["max_input_length"] == 64

  params = _params()
  assert model.params_steps() == []
  model.save_params(7, params, {"step": 7})
  assert model.params_steps() == ["7"]
  loaded, meta = model.load_params(_abstract(params))
  assert meta == {"step": 7}
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  model.write_metrics(['{"step": 1, "split": "train", "loss": 2.0}',
                       '{"step": 1, "split": "validation", "accuracy": 0.5}',
                       '{"step": 2, "split": "tra'])  # a line cut by a crash
  assert [r["loss"] for r in model.read_metrics("train")] == [2.0]
  assert len(model.read_metrics()) == 2
  model.write_results({"best_step": 1, "test": {"accuracy": 50.0}})
  assert model.read_results()["test"] == {"accuracy": 50.0}


def test_params_that_do_not_fit_are_listed_and_damaged_ones_refused(tmp_path):
  model = ModelDir(str(tmp_path))
  with pytest.raises(SbsError, match="holds no trained parameters"):
    model.load_params({})
  params = _params()
  model.save_params(1, params, {})
  wrong = dict(params, bias=np.zeros((5,), np.float32), extra=np.zeros((2,), np.float32))
  with pytest.raises(SbsError, match=r"do not fit this network \(2 problems\)") as refused:
    model.load_params(_abstract(wrong))
  assert "wrong shape: bias: saved (3,), network (5,)" in str(refused.value)
  assert "missing: extra (2,)" in str(refused.value)


def test_results_that_are_not_the_trainers_raise_and_the_fingerprint_follows_rewrites(
    tmp_path):
  model = ModelDir(str(tmp_path))
  (tmp_path / model_dir_lib.RESULTS_FILE).write_text('{"test": {}}')
  with pytest.raises(ValueError, match="no best_step"):
    model.read_results()
  (tmp_path / model_dir_lib.RESULTS_FILE).write_text('{"best_st')
  with pytest.raises(ValueError):
    model.read_results()
  model.write_info(config_for("tiny"), "")
  before = model.fingerprint()
  assert model.fingerprint() == before
  time.sleep(0.01)
  model.write_info(config_for("tiny"), "", extra_ids=1)
  assert model.fingerprint() != before
