"""T5X checkpoints and model gin files <-> the student's config and parameters.

Parameter names and shapes are the same on both sides (our network uses T5X's), so a
checkpoint's `target` tree is the student's params tree. Two checkpoint formats exist:

- T5X's own, which the public `gs://t5-data/pretrained_models/t5x/t5_1_1_*` checkpoints
  have: `checkpoint_<step>/checkpoint` (msgpack: the tree, small arrays inline, large ones
  as tensorstore specs of zarr arrays in `target.<path>/` and `state.param_states.<path>/`)
  and the optimizer's state beside the parameters;
- Orbax's, which `t5x.train` of this T5X version writes: `checkpoint_<step>/state/`
  holding {"target": params, "state": {"step", "param_states"}}.

Reading either needs only tensorstore / orbax (no T5X); the optimizer state is skipped
and counted. Writing uses T5X's own `t5x.checkpoints.Checkpointer`, with a fresh Adafactor
state as T5X's T5 v1.1 gin files configure it, so that `t5x.train` continues from it
exactly as from a public checkpoint.

A model gin (`model_gin`) is a T5X model gin of the student: T5X's T5 v1.1 network
(`t5x.examples.t5.network`) with the student's config, `sbs_jax.t5x_model.DistillModel`
and the student's vocabulary. `read_model_gin` reads the network config back from such a
file, or from T5X's own `t5_1_1/*.gin` (following `include`s), without importing T5X.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sbs_jax.convert.hf import ConversionError, _flatten, _raise_problems
from sbs_jax.model.config import T5Config

CHECKPOINT_FILE = "checkpoint"  # T5X's msgpack file in a checkpoint dir
ORBAX_ITEM = "state"  # the orbax item `t5x.train` writes in a checkpoint dir
# T5X's T5Config fields and their defaults (t5x/examples/t5/network.py).
_T5X_DEFAULTS = dict(emb_dim=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
                     head_dim=64, mlp_dim=2048, mlp_activations=("relu",), dropout_rate=0.1,
                     logits_via_embedding=False, dtype="float32",
                     float32_attention_logits=False)
_T5X_RELPOS = (32, 128)  # buckets, max distance: fixed in T5X's T5 v1.1 network


# ---- Model gin files.

def model_gin(config: T5Config, vocabulary_file: str, extra_ids: int, source: str) -> str:
  """A T5X model gin of `config` with the student's vocabulary (and T5X's Adafactor)."""
  if (config.relative_attention_num_buckets,
      config.relative_attention_max_distance) != _T5X_RELPOS:
    raise ConversionError(
        "T5X's T5 v1.1 network has 32 relative position buckets up to distance 128; this "
        f"student has {config.relative_attention_num_buckets} up to "
        f"{config.relative_attention_max_distance}")
  fields = "\n".join(f"  {k} = {getattr(config, k)!r}" for k in (
      "vocab_size", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers",
      "head_dim", "mlp_dim", "mlp_activations", "logits_via_embedding",
      "float32_attention_logits"))
  return f'''# T5X model gin of a student exported by `sbs export-t5x` from {source}.
# Give it after gin_configs/t5x/<family>.gin (those default to T5's public vocabulary;
# this file binds the student's). With T5X's own run gins (eval.gin, infer.gin) it is
# the model gin. The network is T5X's T5 v1.1 (t5x/examples/t5/network.py).
from __gin__ import dynamic_registration

from sbs_jax import t5x_model
from sbs_jax.data import vocab
from t5x import adafactor
from t5x.examples.t5 import network

DROPOUT_RATE = {config.dropout_rate!r}

# One vocabulary for the model and the tasks (T5X requires them equal).
VOCABULARY = @vocab.ConfiguredVocabulary()
vocab.vocabulary_settings.path = {vocabulary_file!r}
vocab.vocabulary_settings.extra_ids = {extra_ids!r}

# As T5X's T5 v1.1 gin files: the optimizer state in the checkpoint is this one's.
OPTIMIZER = @adafactor.Adafactor()
adafactor.Adafactor:
  decay_rate = 0.8
  step_offset = 0
  logical_factor_rules = @adafactor.standard_logical_factor_rules()

MODEL = @t5x_model.DistillModel()
t5x_model.DistillModel:
  module = @network.Transformer()
  input_vocabulary = %VOCABULARY
  output_vocabulary = %VOCABULARY
  optimizer_def = %OPTIMIZER

network.Transformer.config = @network.T5Config()
network.T5Config:
{fields}
  dtype = {config.dtype!r}
  dropout_rate = %DROPOUT_RATE
'''


class _Delegate:
  """gin's parser delegate: references and macros kept as tagged tuples."""

  def configurable_reference(self, scoped_name, evaluate):
    return ("@", scoped_name, evaluate)

  def macro(self, name):
    return ("%", name)


def _folders_up(path: str) -> list[str]:
  """The folder of `path` and every folder above it (local or gs://)."""
  scheme, rest = (path.split("://", 1)[0] + "://", path.split("://", 1)[1]) \
      if "://" in path else ("", os.path.abspath(path))
  parts = rest.split("/")[:-1]
  return [scheme + "/".join(parts[:i]) for i in range(len(parts), 0, -1)
          if scheme + "/".join(parts[:i])]


def _find_include(name: str, including: str) -> str | None:
  """An included gin file, relative to the including file's folder or one above it."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for folder in _folders_up(including):
    if tf.io.gfile.exists(f"{folder}/{name}") and not tf.io.gfile.isdir(f"{folder}/{name}"):
      return f"{folder}/{name}"
  return None


def _gin_statements(path: str, seen: set | None = None):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from gin import config_parser  # pylint: disable=import-outside-toplevel
  seen = set() if seen is None else seen
  key = path if "://" in path else os.path.realpath(path)
  if key in seen:
    return
  seen.add(key)
  with tf.io.gfile.GFile(path, "rb") as f:
    text = f.read().decode("utf-8")
  try:
    statements = list(config_parser.ConfigParser(text, _Delegate()))
  except SyntaxError as e:
    raise ConversionError(f"{path}: not a gin file: {e}") from None
  for statement in statements:
    if isinstance(statement, config_parser.IncludeStatement):
      found = _find_include(statement.filename, path)
      if found is None:
        raise ConversionError(f"{path}: included file {statement.filename!r} not found "
                              "beside it or in a folder above it")
      yield from _gin_statements(found, seen)
    elif isinstance(statement, config_parser.BindingStatement):
      yield statement


def read_model_gin(path) -> tuple[T5Config, str | None, int]:
  """(network config, vocabulary path or None, extra ids) of a T5X model gin file (local
  or gs://)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = str(path)
  try:
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
      raise ConversionError(f"{path}: no such model gin file (`sbs export-t5x` writes "
                            "model.gin beside the checkpoint)")
    return _read_model_gin(path)
  except UnicodeDecodeError:
    raise ConversionError(f"{path}: not a gin file (not UTF-8 text)") from None
  except tf.errors.OpError as e:
    raise ConversionError(f"{path}: cannot read the model gin: {_first_line(e.message)}") \
        from None


def _read_model_gin(path: str) -> tuple[T5Config, str | None, int]:
  # The last binding of each wins, as in gin: a model gin that includes T5X's base.gin and
  # then names its own vocabulary reads that one. Our vocabulary_settings (model.gin of
  # `sbs export-t5x`) come before seqio.SentencePieceVocabulary's.
  macros, fields = {}, {}
  vocabulary = {"settings": {}, "seqio": {}}
  for s in _gin_statements(path):
    if not s.arg_name:
      macros[s.selector] = s.value
    elif s.selector.endswith("T5Config") and s.selector.split(".")[-2:-1] == ["network"]:
      fields[s.arg_name] = s.value
    elif s.selector.endswith("vocabulary_settings") and s.arg_name in ("path", "extra_ids"):
      vocabulary["settings"][s.arg_name] = s.value
    elif s.selector.endswith("SentencePieceVocabulary") and s.arg_name in (
        "sentencepiece_model_file", "extra_ids"):
      key = "path" if s.arg_name == "sentencepiece_model_file" else s.arg_name
      vocabulary["seqio"][key] = s.value
  chosen = vocabulary["settings"] if "path" in vocabulary["settings"] else vocabulary["seqio"]
  vocab, extra_ids = chosen.get("path"), chosen.get("extra_ids", 0)

  def resolve(value, default):
    for _ in range(10):  # macros of macros
      if not (isinstance(value, tuple) and value[:1] == ("%",)):
        return value
      value = macros.get(value[1], default)
    return default

  unknown = sorted(set(fields) - set(_T5X_DEFAULTS) - {"vocab_size"})
  if "vocab_size" not in fields or unknown:
    raise ConversionError(f"{path}: no network.T5Config.vocab_size binding" if not unknown
                          else f"{path}: network.T5Config fields the student lacks: "
                          f"{unknown}")
  values = {k: resolve(fields.get(k, d), d) for k, d in _T5X_DEFAULTS.items()}
  if not isinstance(values["dropout_rate"], (int, float)):
    values["dropout_rate"] = 0.0  # %gin.REQUIRED in T5X's model gins: a run gin sets it
  values["vocab_size"] = resolve(fields["vocab_size"], None)
  values["mlp_activations"] = tuple(values["mlp_activations"])
  try:
    config = T5Config(**values)
  except (TypeError, ValueError) as e:
    raise ConversionError(f"{path}: network.T5Config: {e}") from None
  return config, resolve(vocab, None), int(resolve(extra_ids, 0))


# ---- Reading checkpoints (no T5X needed).

def _is_spec(node) -> bool:
  return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _absolute_kvstore(spec: dict, checkpoint_dir: str) -> dict:
  """A T5X tensorstore spec resolved against the checkpoint dir it was read from.

  T5X stores each array's path relative to its checkpoint dir, whatever the driver: `file`
  or `gfile` when it wrote to a local folder; `gcs` with the placeholder bucket
  `t5x-dummy-bucket` when it wrote to gs:// (the public checkpoints). The path sits in
  `kvstore` (tensorstore 0.1.14 and later) or beside it (earlier). As T5X's reader does,
  the location is where the checkpoint is now: the bucket and prefix of a gs:// dir, or
  the local folder of a copy, never the driver or bucket in the file.
  """
  spec = dict(spec)
  kvstore = dict(spec["kvstore"]) if isinstance(spec["kvstore"], dict) else {}
  if "path" in kvstore:
    rel = kvstore["path"]
    spec.pop("path", None)
  elif "path" in spec:  # tensorstore < 0.1.14
    rel = spec.pop("path")
  else:
    raise ConversionError(f"{checkpoint_dir}: a tensorstore spec with no path: {spec}")
  driver = kvstore.get("driver")
  if driver not in ("file", "gfile", "gcs"):
    raise ConversionError(f"{checkpoint_dir}: a tensorstore spec with the kvstore driver "
                          f"{driver!r} (T5X writes file, gfile or gcs)")
  if driver in ("file", "gfile") and rel.startswith(("/", "gs://")):
    location = rel  # an absolute path, as os.path.join in T5X's reader keeps it
  else:
    location = f"{checkpoint_dir}/{rel.lstrip('/')}"
  if location.startswith("gs://"):
    bucket, _, prefix = location[len("gs://"):].partition("/")
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": prefix}
  else:
    spec["kvstore"] = {"driver": "file", "path": os.path.abspath(location)}
  return spec


def _read_msgpack_checkpoint(checkpoint_dir: str) -> tuple[dict, int, int]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  from flax import serialization  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(f"{checkpoint_dir}/{CHECKPOINT_FILE}", "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  optimizer = contents.get("optimizer", contents)  # version 0 files have no wrapper
  if "target" not in optimizer:
    raise ConversionError(f"{checkpoint_dir}/{CHECKPOINT_FILE} has no `target` (the "
                          "parameters): not a T5X checkpoint")
  ignored = _count_leaves(optimizer.get("state", {}).get("param_states", {}))

  def read(node, where):
    if _is_spec(node):
      try:
        return np.asarray(ts.open(_absolute_kvstore(node, checkpoint_dir)).result()
                          .read().result(), dtype=np.float32)
      except ValueError as e:
        raise ConversionError(f"{checkpoint_dir}: cannot read {where}: {e}") from None
    if isinstance(node, dict):
      return {k: read(v, f"{where}/{k}") for k, v in node.items()}
    return np.asarray(node, dtype=np.float32)

  step = int(np.asarray(optimizer.get("state", {}).get("step", 0)))
  return read(optimizer["target"], "target"), step, ignored


def _count_leaves(tree) -> int:
  if _is_spec(tree) or not isinstance(tree, dict):
    return 0 if tree is None else 1
  return sum(_count_leaves(v) for v in tree.values())


def _read_orbax_checkpoint(checkpoint_dir: str) -> tuple[dict, int, int]:
  import logging  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax: T5X writes no metadata file
  path = f"{checkpoint_dir}/{ORBAX_ITEM}"
  if "://" not in path:
    path = os.path.abspath(path)
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = dict(getattr(metadata, "item_metadata", None) or metadata)
  if "target" not in tree:
    raise ConversionError(f"{path} has no `target` (the parameters): not a T5X checkpoint")
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=tree, restore_args=restore_args))
  ignored = len(jax.tree.leaves(restored.get("state", {}).get("param_states", {})))
  step = int(np.asarray(restored.get("state", {}).get("step", 0)))
  target = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), dict(restored["target"]))
  return target, step, ignored


def read_checkpoint(checkpoint_dir: str) -> tuple[dict, int, int]:
  """(params tree as float32 numpy, step, optimizer-state arrays skipped) of a T5X
  checkpoint in either format: its `checkpoint_<step>` dir, or (as T5X accepts) the
  msgpack file `checkpoint_<step>/checkpoint` itself; local or gs://."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  checkpoint_dir = str(checkpoint_dir).rstrip("/")
  try:
    if (checkpoint_dir.rsplit("/", 1)[-1] == CHECKPOINT_FILE
        and not tf.io.gfile.isdir(checkpoint_dir) and tf.io.gfile.exists(checkpoint_dir)):
      checkpoint_dir = checkpoint_dir.rsplit("/", 1)[0]
    if tf.io.gfile.exists(f"{checkpoint_dir}/{CHECKPOINT_FILE}"):
      return _read_msgpack_checkpoint(checkpoint_dir)
    if tf.io.gfile.isdir(f"{checkpoint_dir}/{ORBAX_ITEM}"):
      return _read_orbax_checkpoint(checkpoint_dir)
  except tf.errors.OpError as e:
    raise ConversionError(f"{checkpoint_dir}: cannot read the checkpoint: "
                          f"{_first_line(e.message)}") from None
  raise ConversionError(f"{checkpoint_dir}: not a T5X checkpoint dir (no `{CHECKPOINT_FILE}` "
                        f"file, no `{ORBAX_ITEM}/` folder); give checkpoint_<step>/")


def _first_line(text: str) -> str:
  return str(text).strip().splitlines()[0] if str(text).strip() else str(text)


def check_params(params: dict, config: T5Config, what: str) -> None:
  """Every parameter name and shape against `config`'s network; lists each mismatch."""
  import jax  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.network import Transformer  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.student import init_params  # pylint: disable=import-outside-toplevel
  wanted = {"/".join(k): tuple(v.shape) for k, v in _flatten(nn.unbox(jax.eval_shape(
      lambda: init_params(Transformer(config), jax.random.key(0))))).items()}
  got = {"/".join(k): tuple(np.shape(v)) for k, v in _flatten(params).items()}
  _raise_problems(what, [f"{k} {wanted[k]}" for k in sorted(set(wanted) - set(got))],
                  [f"{k} {got[k]}" for k in sorted(set(got) - set(wanted))],
                  [(k, got[k], wanted[k]) for k in sorted(set(got) & set(wanted))
                   if got[k] != wanted[k]])


# ---- Writing checkpoints (T5X's own code).

def t5x_network_config(config: T5Config):
  """T5X's `network.T5Config` of the student (T5X must be installed)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from t5x.examples.t5 import network  # pylint: disable=import-outside-toplevel
  values = {k: getattr(config, k) for k in _T5X_DEFAULTS}
  values["dtype"] = jnp.dtype(config.dtype)
  return network.T5Config(vocab_size=config.vocab_size, **values)


def write_checkpoint(out_dir: str, config: T5Config, params: dict, step: int) -> str:
  """Writes `out_dir/checkpoint_<step>/` with T5X's Checkpointer; returns its path."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import core  # pylint: disable=import-outside-toplevel
  from t5x import adafactor, checkpoints, partitioning  # pylint: disable=import-outside-toplevel
  from t5x import train_state as train_state_lib  # pylint: disable=import-outside-toplevel
  from t5x.examples.t5 import network  # pylint: disable=import-outside-toplevel
  check_params(params, config, "the student's parameters")
  module = network.Transformer(t5x_network_config(dataclasses.replace(config,
                                                                      dropout_rate=0.0)))
  ones = jnp.ones((1, 1), jnp.int32)
  variables = core.unfreeze(module.init(jax.random.key(0), ones, ones, ones,
                                        enable_dropout=False))
  variables["params"] = jax.tree.map(jnp.asarray, params)
  optimizer = adafactor.Adafactor(  # as t5x/examples/t5/t5_1_1/base.gin
      decay_rate=0.8, step_offset=0,
      logical_factor_rules=adafactor.standard_logical_factor_rules())
  state = train_state_lib.FlaxOptimTrainState.create(optimizer, core.freeze(variables))
  state = state.replace_step(jnp.asarray(step, jnp.int32))
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  checkpointer = checkpoints.Checkpointer(state, partitioner, out_dir)
  checkpointer.save(state)
  return f"{str(out_dir).rstrip('/')}/checkpoint_{step}"
