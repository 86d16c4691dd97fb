"""Bad files around the HF conversion and the vocabulary are one error naming the file;
export-hf never overwrites a user's dir unasked and writes files with normal permissions."""

import json
import os
import stat

import pytest

from sbs_jax.convert import hf_dirs as convert
from sbs_jax.convert import hf
from sbs_jax.data import vocab
from sbs_jax.errors import SbsError
from sbs_jax.model.config import config_for
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.train.config import OptimizerConfig
from sbs_jax.train.optim import make_optimizer
from sbs_jax.train.state import build_student, init_state, make_mesh
from tests.helpers.cli import run_sbs_here

CONFIG = config_for("tiny", vocab_size=320, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64)


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
  return vocab.train_vocabulary(["the cat sat on the mat with a hat"] * 50,
                                tmp_path_factory.mktemp("v") / "v.model", 300)


@pytest.fixture(scope="module")
def model_dir(spm_file, tmp_path_factory):
  """A model dir of a random tiny network (model.json, spm.model, params/0)."""
  out = tmp_path_factory.mktemp("model") / "m"
  student = build_student(CONFIG, make_optimizer(OptimizerConfig(), 10), make_mesh((1, 1)))
  ModelDir(str(out)).write_info(CONFIG, str(spm_file))
  ModelDir(str(out)).save_params(0, init_state(student, 0)["params"], {"step": 0})
  return out


def hf_dir_with(tmp_path, weights: bytes, spiece: bytes):
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(hf.config_to_hf(CONFIG)))
  (d / "model.safetensors").write_bytes(weights)
  (d / "spiece.model").write_bytes(spiece)
  return d


def test_garbage_safetensors_is_one_error_naming_it(tmp_path, spm_file):
  d = hf_dir_with(tmp_path, os.urandom(4096), spm_file.read_bytes())
  with pytest.raises(SbsError) as err:
    convert.import_hf(d, str(tmp_path / "out"))
  message = str(err.value)
  assert message.startswith(f"{d / 'model.safetensors'}: cannot read the weights (")
  assert "\n" not in message and not (tmp_path / "out").exists()


def test_garbage_spiece_in_an_hf_dir_is_one_error_naming_it(tmp_path, model_dir):
  exported = convert.export_hf(str(model_dir), str(tmp_path / "good"))
  d = hf_dir_with(tmp_path, (exported / "model.safetensors").read_bytes(), b"not a model")
  with pytest.raises(SbsError) as err:
    convert.import_hf(d, str(tmp_path / "out"))
  assert str(err.value).startswith(f"{d / 'spiece.model'}: not a SentencePiece model (")
  assert not (tmp_path / "out").exists()


def test_garbage_vocabulary_path_is_one_error_naming_it(tmp_path, monkeypatch):
  bad = tmp_path / "bad.model"
  bad.write_bytes(os.urandom(2048))
  monkeypatch.setenv(vocab.VOCAB_ENV, str(bad))
  with pytest.raises(SbsError) as err:
    vocab.ConfiguredVocabulary().encode("x")
  assert str(err.value).startswith(f"{bad}: not a SentencePiece model (")


def test_export_into_a_non_empty_dir_needs_overwrite(tmp_path, model_dir):
  out = tmp_path / "hf_out"
  out.mkdir()
  (out / "config.json").write_text("the user's own file")
  with pytest.raises(SbsError, match="exists and is not an empty dir: choose a new --out, "
                     "or pass --overwrite"):
    convert.export_hf(str(model_dir), str(out))
  assert (out / "config.json").read_text() == "the user's own file"
  convert.export_hf(str(model_dir), str(out), overwrite=True)
  assert json.loads((out / "config.json").read_text())["d_model"] == 32


def test_exported_files_have_the_umask_mode(tmp_path, model_dir):
  old = os.umask(0o022)
  try:
    out = convert.export_hf(str(model_dir), str(tmp_path / "hf_out"))
  finally:
    os.umask(old)
  modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
  assert modes["model.safetensors"] == 0o644, modes
  assert set(modes.values()) == {0o644}


def test_failed_vocab_leaves_no_dir(tmp_path):
  with pytest.raises(SbsError):
    vocab.train_vocabulary(["   "], tmp_path / "new" / "spm.model")
  with pytest.raises(SbsError):
    vocab.train_vocabulary(["the cat sat"] * 10, tmp_path / "new2" / "spm.model", 50)
  assert not (tmp_path / "new").exists() and not (tmp_path / "new2").exists()


def _tree_bytes(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


def test_import_onto_a_trained_run_is_refused_before_anything_is_read(tmp_path, model_dir):
  import shutil  # pylint: disable=import-outside-toplevel
  run = tmp_path / "run"
  shutil.copytree(model_dir, run)
  (run / "run.json").write_text('{"train_steps": 10}')
  (run / "results.json").write_text('{"test": {"accuracy": 0.5}}')
  before = _tree_bytes(run)
  # the HF folder does not even exist: the refusal comes first, one line, nothing changed
  result = run_sbs_here("import-hf", "--hf_dir", tmp_path / "no-such-hf", "--out", run)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"sbs import-hf: error: {run} exists and is not empty: choose a new --out, or pass "
      "--overwrite to replace it whole"]
  assert _tree_bytes(run) == before
