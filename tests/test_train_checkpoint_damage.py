"""Damaged checkpoints: the newest intact train state is restored with a warning, else one
error; damaged best parameters are one error naming their dir."""

import logging

import jax
import numpy as np
import pytest

from sbs_jax.errors import SbsError
from sbs_jax.model.config import config_for
from sbs_jax.model import model_dir
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.train import checkpoint as ckpt
from sbs_jax.train.config import OptimizerConfig
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.state import build_student, init_state, make_mesh

CONFIG = config_for("tiny", vocab_size=64, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64)


@pytest.fixture(scope="module")
def student():
  return build_student(CONFIG, make_optimizer(OptimizerConfig(), 10), make_mesh((1, 1)))


def saved_states(student, model_dir) -> dict:
  """Checkpoints of steps 1 and 2 (different parameters); {step: state}."""
  checkpoints = ckpt.StateCheckpoints(str(model_dir), 3)
  states = {}
  for step in (1, 2):
    state = dict(init_state(student, seed=step), step=jax.numpy.int32(step))
    checkpoints.save(step, state, {"best": None, "data_position": step})
    states[step] = jax.device_get(state)
  checkpoints.close()
  return states


def data_files(model_dir, step: int) -> list:
  """The checkpoint's array data files, largest first."""
  files = (model_dir / "checkpoints" / str(step) / "state").rglob("d/*")
  return sorted(files, key=lambda p: -p.stat().st_size)


def truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def garble(path):
  data = bytearray(path.read_bytes())
  for i in range(len(data) // 3, min(len(data), len(data) // 3 + 4096)):
    data[i] = (data[i] + 77) % 256
  path.write_bytes(bytes(data))


def same(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("damage", [truncate, garble])
def test_damaged_latest_falls_back_to_the_newest_intact(student, tmp_path, caplog, damage):
  states = saved_states(student, tmp_path)
  damage(data_files(tmp_path, 2)[0])
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.StateCheckpoints(str(tmp_path), 3).restore(student.abstract_state)
  assert int(state["step"]) == 1 and meta["data_position"] == 1
  assert same(state, states[1])
  assert "resuming from step 1: the newer checkpoint(s) [2] are damaged" in caplog.text


def test_readable_but_wrong_arrays_are_caught_by_the_saved_sums(student, tmp_path, caplog):
  """Step 2's array files replaced by step 1's: storage reads them without complaint,
  but they are not what step 2 saved."""
  import shutil  # pylint: disable=import-outside-toplevel
  states = saved_states(student, tmp_path)
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "state")
  shutil.copytree(tmp_path / "checkpoints" / "1" / "state",
                  tmp_path / "checkpoints" / "2" / "state")
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.StateCheckpoints(str(tmp_path), 3).restore(student.abstract_state)
  assert "arrays differ from what was saved" in caplog.text
  assert meta["data_position"] == 1 and same(state, states[1])


def test_every_checkpoint_damaged_is_one_error(student, tmp_path):
  saved_states(student, tmp_path)
  for step in (1, 2):
    (tmp_path / "checkpoints" / str(step) / "state" / "_METADATA").write_text("{garbage")
  with pytest.raises(SbsError) as err:
    ckpt.StateCheckpoints(str(tmp_path), 3).restore(student.abstract_state)
  assert str(err.value) == (f"no checkpoint in {tmp_path}/checkpoints can be read (steps "
                            "[2, 1] damaged): delete the model dir to start over, or use a "
                            "new MODEL_DIR")


@pytest.mark.parametrize("damage", [truncate, garble])
def test_damaged_best_params_are_one_error_naming_the_dir(student, tmp_path, damage):
  params = init_state(student, seed=0)["params"]
  ModelDir(str(tmp_path)).save_params(4, params, {"step": 4})
  assert same(ModelDir(str(tmp_path)).load_params(student.abstract_state["params"])[0], params)
  for path in (tmp_path / "params" / "4" / "params").rglob("d/*"):
    damage(path)
  with pytest.raises(SbsError) as err:
    ModelDir(str(tmp_path)).load_params(student.abstract_state["params"])
  message = str(err.value)
  assert message.startswith(f"the parameters in {tmp_path}/params/4 cannot be read (")
  assert message.endswith("the files are damaged; restore the dir from a copy, or train "
                          "again") and "\n" not in message


def test_host_and_device_arrays_sum_alike(student):
  """Imported (numpy) parameters are summed on the host, trained ones on the device; a
  checkpoint saved from one and checked from the other agrees."""
  params = init_state(student, seed=3)["params"]
  on_host = jax.tree.map(np.asarray, jax.device_get(params))
  device, host = model_dir.leaf_sums(params), model_dir.leaf_sums(on_host)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(on_host))
  assert np.allclose(device, host, rtol=1e-5) and min(device) > 0
