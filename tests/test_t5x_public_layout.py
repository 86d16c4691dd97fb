"""`sbs import-t5x` on checkpoints in the layout of the public T5 v1.1 checkpoints.

T5X's own code builds a T5 v1.1 network from a model gin in the form of
t5x/examples/t5/t5_1_1/*.gin (tiny dimensions, float32) with Adafactor, and T5X's own
`Checkpointer` saves it at step 1000000 to gs:// on the GCS emulator: each array's
tensorstore spec then names the `gcs` driver, the placeholder bucket `t5x-dummy-bucket`
and a path relative to the checkpoint dir. Imported from gs://, from a local copy of it
(as `gcloud storage cp -r` makes one) and from the older spec form (tensorstore < 0.1.14,
path beside kvstore), the student's float32 logits and greedy decodes equal T5X's own
model on the same weights. Skipped where T5X or the emulator is absent.
"""

import json
import os
import pathlib

import numpy as np
import pytest

pytest.importorskip("t5x", reason="T5X is not installed: bash launch/install_t5x.sh "
                    "../shared/vendor")

# pylint: disable=wrong-import-position
import gin
import jax
import jax.numpy as jnp
import tensorflow as tf
from flax import serialization

from sbs_jax.convert import t5x as t5x_format
from sbs_jax.convert import t5x_dirs
from sbs_jax.data import vocab
from sbs_jax.errors import SbsError
from sbs_jax.model import decoding
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.model.student import load_student
from tests.helpers import run_sbs
from tests.helpers.cli import run_sbs_here

pytestmark = [pytest.mark.t5x]

STEP = 1000000
BUCKET = "sbs-test"
PREFIX = "pretrained_models/t5x/t5_1_1_tiny"
GS_CHECKPOINT = f"gs://{BUCKET}/{PREFIX}/checkpoint_{STEP}"

# A tiny model gin as T5X's own t5_1_1/tiny.gin is written: T5X's base.gin (copied from the
# installed T5X, beside it in T5X's folder layout), then the network's size. Encoder and
# decoder depths differ, so that a swap shows.
MODEL_GIN = """# As t5x/examples/t5/t5_1_1/tiny.gin: the base model, then its size.
include 't5x/examples/t5/t5_1_1/base.gin'

DROPOUT_RATE = 0.0
seqio.SentencePieceVocabulary.sentencepiece_model_file = "{vocab}"

network.T5Config:
  vocab_size = 384
  dtype = 'float32'
  emb_dim = 32
  num_heads = 4
  num_encoder_layers = 2
  num_decoder_layers = 3
  head_dim = 8
  mlp_dim = 48
"""


def write_model_gin(root: pathlib.Path, vocab_path: str) -> pathlib.Path:
  """T5X's t5_1_1/base.gin and MODEL_GIN beside it, under root/t5x/examples/t5/t5_1_1/."""
  import shutil  # pylint: disable=import-outside-toplevel
  import t5x  # pylint: disable=import-outside-toplevel
  folder = root / "t5x" / "examples" / "t5" / "t5_1_1"
  folder.mkdir(parents=True)
  shutil.copy(pathlib.Path(t5x.__file__).parent / "examples" / "t5" / "t5_1_1" / "base.gin",
              folder / "base.gin")
  path = folder / "sbs_tiny.gin"
  path.write_text(MODEL_GIN.format(vocab=vocab_path))
  return path


@gin.configurable("sbs_test_public_model")
def _configured(model=gin.REQUIRED):
  return model


def t5x_model(model_gin: pathlib.Path):
  """T5X's EncoderDecoderModel, built by gin from the model gin (T5X's own code)."""
  gin.clear_config()
  try:
    # Its include is found as T5X finds it: under a search path (the folder above t5x/).
    gin.add_config_file_search_path(str(model_gin.parents[4]))
    gin.parse_config_files_and_bindings([str(model_gin)], ["sbs_test_public_model.model = "
                                                           "%MODEL"], finalize_config=False)
    return _configured()
  finally:
    gin.clear_config()


def save_with_t5x(model, directory: str, seed: int = 0) -> None:
  """Random init, Adafactor state, step STEP, saved by T5X's Checkpointer to `directory`."""
  from t5x import checkpoints, partitioning  # pylint: disable=import-outside-toplevel
  from t5x import train_state as train_state_lib  # pylint: disable=import-outside-toplevel
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 4)}
  variables = model.get_initial_variables(jax.random.key(seed), shapes)
  state = train_state_lib.FlaxOptimTrainState.create(model.optimizer_def, variables)
  state = state.replace_step(jnp.asarray(STEP, jnp.int32))
  checkpoints.Checkpointer(state, partitioning.PjitPartitioner(num_partitions=1),
                           directory).save(state)


@pytest.fixture(scope="module")
def public(gcs, tmp_path_factory):
  import shutil  # pylint: disable=import-outside-toplevel
  if shutil.which("gcloud") is None:
    pytest.skip("T5X's checkpointer moves a finished gs:// checkpoint with `gcloud storage "
                "mv`, and gcloud is not installed")
  root = tmp_path_factory.mktemp("public")
  spm_path = vocab.train_vocabulary(
      [f"question {i}: which of these is a fruit? apple, stone, train {i * 7}" for i in
       range(200)], root / "spm.model", 300)
  gs_vocab = f"gs://{BUCKET}/vocabs/tiny/sentencepiece.model"
  tf.io.gfile.makedirs(gs_vocab.rsplit("/", 1)[0])
  tf.io.gfile.copy(str(spm_path), gs_vocab, overwrite=True)
  model_gin = write_model_gin(root, gs_vocab)
  model = t5x_model(model_gin)
  save_with_t5x(model, f"gs://{BUCKET}/{PREFIX}")
  local_copy = root / "copy" / f"checkpoint_{STEP}"
  gcs.download_prefix(BUCKET, f"{PREFIX}/checkpoint_{STEP}", local_copy)
  return dict(root=root, model=model, model_gin=model_gin, local_copy=local_copy,
              spm=spm_path, gs_vocab=gs_vocab)


def _msgpack(path) -> dict:
  with tf.io.gfile.GFile(f"{path}/checkpoint", "rb") as f:
    return serialization.msgpack_restore(f.read())


def _specs(tree):
  if isinstance(tree, dict) and "driver" in tree and "kvstore" in tree:
    yield tree
  elif isinstance(tree, dict):
    for value in tree.values():
      yield from _specs(value)


def test_the_fixture_is_the_public_layout(public, gcs):
  """What T5X wrote to gs:// is the form the public checkpoints have."""
  specs = list(_specs(_msgpack(GS_CHECKPOINT)["optimizer"]["target"]))
  assert specs and all(s["kvstore"]["driver"] == "gcs" and s["kvstore"]["bucket"] ==
                       "t5x-dummy-bucket" and not s["kvstore"]["path"].startswith("/")
                       for s in specs)
  names = gcs.list_objects(BUCKET, f"{PREFIX}/checkpoint_{STEP}/")
  assert f"{PREFIX}/checkpoint_{STEP}/checkpoint" in names
  assert any(".zarray" in n for n in names)
  assert {"www.googleapis.com", "storage.googleapis.com"} <= gcs.hosts_seen


def _t5x_params(path):
  from t5x import checkpoints  # pylint: disable=import-outside-toplevel
  return checkpoints.load_t5x_checkpoint(str(path), restore_dtype=np.float32)["target"]


def _inputs(spm_path, texts, length=24):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sp = spm.SentencePieceProcessor(model_file=str(spm_path))
  rows = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = sp.encode(text)[:length - 1] + [1]
    rows[i, :len(ids)] = ids
  return rows


TEXTS = ["which of these is a fruit? apple", "question 3: stone, train 21",
         "a train is not a fruit", "apple apple stone"]


def _check_equals_t5x(public, model_dir, t5x_params):
  """Float32 logits and greedy decodes of our imported student == T5X's own model."""
  student, params, info = load_student(str(model_dir))
  assert student.config.dtype == "float32" and info["vocabulary"] == "spm.model"
  encoder = _inputs(public["spm"], TEXTS)
  targets = _inputs(public["spm"], ["apple", "stone train", "fruit", "train 7"], 6)
  decoder_in = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  model = public["model"]
  theirs = model.module.apply({"params": t5x_params}, encoder, decoder_in, targets,
                              enable_dropout=False)
  ours = student.model.apply({"params": params}, encoder, decoder_in, targets)
  assert theirs.dtype == ours.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  batch = {"encoder_input_tokens": encoder, "decoder_input_tokens": np.zeros((4, 10),
                                                                              np.int32)}
  t5x_decodes = np.asarray(model.predict_batch(t5x_params, batch))
  our_decodes = np.asarray(decoding.greedy_decode(student.model, params, jnp.asarray(encoder),
                                                  10))
  for a, b in zip(our_decodes, t5x_decodes):
    cut = lambda row: list(row[:list(row).index(1) + 1]) if 1 in list(row) else list(row)
    assert cut(a) == cut(b)


def test_import_from_gs_equals_t5x(public, tmp_path):
  summary = t5x_dirs.import_t5x(GS_CHECKPOINT, str(tmp_path / "m"),
                                   model_gin=str(public["model_gin"]))
  assert summary["t5x_step"] == STEP and summary["skipped_optimizer_arrays"] > 0
  _check_equals_t5x(public, tmp_path / "m", _t5x_params(GS_CHECKPOINT))
  assert (tmp_path / "m" / "spm.model").read_bytes() == public["spm"].read_bytes()


def test_import_from_a_local_copy_equals_t5x(public, tmp_path):
  """The local copy's specs still say gs://t5x-dummy-bucket: read from the copy itself."""
  t5x_dirs.import_t5x(str(public["local_copy"]), str(tmp_path / "m"),
                         model_gin=str(public["model_gin"]), vocab=str(public["spm"]))
  _check_equals_t5x(public, tmp_path / "m", _t5x_params(public["local_copy"]))


def test_the_msgpack_file_itself_is_accepted(public, tmp_path):
  summary = t5x_dirs.import_t5x(f"{public['local_copy']}/checkpoint", str(tmp_path / "m"),
                                   model_gin=str(public["model_gin"]), vocab=str(public["spm"]))
  assert summary["t5x_step"] == STEP
  _check_equals_t5x(public, tmp_path / "m", _t5x_params(public["local_copy"]))


def _old_form(tree):
  """Specs as tensorstore < 0.1.14 wrote them: `path` beside `kvstore`."""
  if isinstance(tree, dict) and "driver" in tree and "kvstore" in tree:
    spec = dict(tree, kvstore=dict(tree["kvstore"]))
    spec["path"] = spec["kvstore"].pop("path")
    return spec
  if isinstance(tree, dict):
    return {k: _old_form(v) for k, v in tree.items()}
  return tree


@pytest.mark.parametrize("where", ["local", "gs"])
def test_older_spec_form_reads_as_t5x_reads_it(public, gcs, tmp_path, where):
  import shutil  # pylint: disable=import-outside-toplevel
  old = tmp_path / "old" / f"checkpoint_{STEP}"
  shutil.copytree(public["local_copy"], old)
  contents = _old_form(_msgpack(old))
  assert "path" in next(_specs(contents["optimizer"]["target"]))
  (old / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
  source = str(old)
  if where == "gs":
    prefix = f"old_form/{tmp_path.name}/checkpoint_{STEP}"
    gcs.upload_folder(old, BUCKET, prefix)
    source = f"gs://{BUCKET}/{prefix}"
  ours, step, _ = t5x_format.read_checkpoint(source)
  assert step == STEP
  expected = [_t5x_params(public["local_copy"])]
  if where == "gs":  # T5X's own reader takes this form from gs:// (from a local copy of
    expected.append(_t5x_params(source))  # gcs-driver specs it fails: KeyError 'path')
  flat = t5x_format._flatten(ours)  # pylint: disable=protected-access
  for theirs in expected:
    for key, value in t5x_format._flatten(theirs).items():  # pylint: disable=protected-access
      np.testing.assert_array_equal(flat[key], np.asarray(value))


def _tree_bytes(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def test_reimport_into_an_existing_dir(public, tmp_path, monkeypatch):
  out = tmp_path / "m"
  t5x_dirs.import_t5x(str(public["local_copy"]), str(out), model_gin=str(public["model_gin"]),
                         vocab=str(public["spm"]))
  before = _tree_bytes(out)
  other_spm = vocab.train_vocabulary(
      [f"another vocabulary {i}: zebra, quartz, lantern {i * 3}" for i in range(200)],
      tmp_path / "other.model", 300)
  proc = run_sbs_here("import-t5x", "--checkpoint", public["local_copy"], "--model_gin",
                      public["model_gin"], "--vocab", other_spm, "--out", out)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f"sbs import-t5x: error: {out} exists and is not empty: choose a new --out, or pass "
      "--overwrite to replace it whole")
  assert _tree_bytes(out) == before

  # A crash while the new dir is written leaves the old one, whole.
  def crash(*args, **kwargs):
    raise RuntimeError("killed while writing the parameters")
  monkeypatch.setattr(ModelDir, "save_params", crash)
  with pytest.raises(RuntimeError, match="killed"):
    t5x_dirs.import_t5x(str(public["local_copy"]), str(out),
                           model_gin=str(public["model_gin"]), vocab=str(other_spm),
                           overwrite=True)
  monkeypatch.undo()
  assert _tree_bytes(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "other.model"]  # no staging left

  proc = run_sbs_here("import-t5x", "--checkpoint", public["local_copy"], "--model_gin",
                      public["model_gin"], "--vocab", other_spm, "--out", out, "--overwrite")
  assert proc.returncode == 0, proc.stderr
  assert (out / "spm.model").read_bytes() == other_spm.read_bytes()
  assert sorted(p.name for p in (out / "params").iterdir()) == ["0"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "other.model"]


def test_reimport_into_an_existing_gs_dir(public, gcs):
  """Refused, then replaced whole: the same objects as a first import (the marker copied
  last, no staging prefix left), and the parameters read back as T5X's."""
  import re  # pylint: disable=import-outside-toplevel
  prefix = "imported/overwrite"
  out = f"gs://{BUCKET}/{prefix}"

  def objects():  # orbax names its data files by a random hash, and how many it writes
    # varies from write to write (3 or 4 here): each data dir counts once.
    return sorted({re.sub(r"/d/[0-9a-f]+$", "/d/*", n) for n in gcs.list_objects(BUCKET,
                                                                                   prefix)})
  t5x_dirs.import_t5x(GS_CHECKPOINT, out, model_gin=str(public["model_gin"]))
  first = objects()
  with pytest.raises(SbsError, match="exists and is not empty"):
    t5x_dirs.import_t5x(GS_CHECKPOINT, out, model_gin=str(public["model_gin"]))
  t5x_dirs.import_t5x(GS_CHECKPOINT, out, model_gin=str(public["model_gin"]),
                         overwrite=True)
  assert objects() == first
  assert f"{prefix}/model.json" in first
  _check_equals_t5x(public, out, _t5x_params(GS_CHECKPOINT))


def test_wrong_size_is_one_line_naming_the_size(public, tmp_path):
  proc = run_sbs_here("import-t5x", "--checkpoint", public["local_copy"], "--size", "base",
                      "--vocab", public["spm"], "--out", tmp_path / "m")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"sbs import-t5x: error: {public['local_copy']} is no published T5 v1.1 size (emb_dim "
      "32, 2 + 3 layers, mlp_dim 48), not base: pass --model_gin with its network's gin file"]
  assert not (tmp_path / "m").exists()


def test_wrong_size_names_the_published_size():
  """A checkpoint of T5 v1.1 small given as base (zero-stride arrays of small's shapes)."""
  from sbs_jax.model.config import config_for  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.network import Transformer  # pylint: disable=import-outside-toplevel
  from sbs_jax.train.state import init_params  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  shapes = nn.unbox(jax.eval_shape(lambda: init_params(Transformer(config_for("small")),
                                                       jax.random.key(0))))
  params = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
  with pytest.raises(SbsError) as err:
    t5x_dirs._check_size(params, "base", "ck")  # pylint: disable=protected-access
  assert str(err.value) == ("ck is T5 v1.1 small (emb_dim 512, 8 + 8 layers, mlp_dim 1024), "
                            "not base: pass --size small")
  t5x_dirs._check_size(params, "small", "ck")  # pylint: disable=protected-access


def test_unreachable_gs_vocabulary_is_one_line(public, tmp_path):
  """The model gin names a gs:// vocabulary that cannot be reached (no --vocab)."""
  env = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
         "GCS_RETRY_CONFIG_MAX_RETRIES": "1", "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
         "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000"}
  proc = run_sbs("import-t5x", "--checkpoint", public["local_copy"], "--model_gin",
                 public["model_gin"], "--out", tmp_path / "m", env=env, timeout=240)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith(f"sbs import-t5x: error: {public['gs_vocab']}: cannot read the "
                         "vocabulary (")
  assert line.endswith("point to a copy you can reach")


def test_export_keeps_the_step_and_round_trips_through_gs(public, tmp_path):
  """import (step 1000000) -> export-t5x to gs:// -> T5X reads checkpoint_1000000 back ->
  import again: the same parameters, bit for bit."""
  t5x_dirs.import_t5x(GS_CHECKPOINT, str(tmp_path / "m"), model_gin=str(public["model_gin"]))
  out = f"gs://{BUCKET}/exported/{tmp_path.name}"
  exported = t5x_dirs.export_t5x(str(tmp_path / "m"), out)
  assert exported["step"] == STEP and exported["checkpoint"] == f"{out}/checkpoint_{STEP}"
  theirs = _t5x_params(exported["checkpoint"])
  first = _t5x_params(GS_CHECKPOINT)
  flat = t5x_format._flatten(first)  # pylint: disable=protected-access
  for key, value in t5x_format._flatten(theirs).items():  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat[key]))
  with pytest.raises(SbsError, match="exists and is not empty"):
    t5x_dirs.export_t5x(str(tmp_path / "m"), out)
  t5x_dirs.import_t5x(exported["checkpoint"], str(tmp_path / "again"),
                         model_gin=exported["model_gin"])
  _, a, _ = load_student(str(tmp_path / "m"))
  _, b, _ = load_student(str(tmp_path / "again"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
