"""`sbs export-t5x` and `sbs import-t5x`: our model dirs <-> T5X checkpoints.

    sbs export-t5x --model_dir runs/cqa --out t5x/cqa
        -> t5x/cqa/checkpoint_<step>/ (T5X's format, as the public T5 checkpoints),
           t5x/cqa/model.gin (a T5X model gin of the student), t5x/cqa/spm.model
    sbs import-t5x --checkpoint t5x/cqa/checkpoint_<step> --model_gin t5x/cqa/model.gin \
        [--vocab SPM] --out ckpt/cqa
    sbs import-t5x --checkpoint gs://t5-data/pretrained_models/t5x/t5_1_1_base/checkpoint_1000000 \
        --size base --vocab sentencepiece.model --out ckpt/t5_1_1_base

Export needs T5X installed (launch/install_t5x.sh); import does not. Import reads the
parameters and skips the optimizer state (public checkpoints hold Adafactor's), saying
how many arrays it skipped. See docs/t5x.md.
"""

from __future__ import annotations

import json

from sbs_jax.convert import replace
from sbs_jax.convert import t5x as t5x_format
from sbs_jax.errors import SbsError

MODEL_GIN = "model.gin"


def export_t5x(model_dir: str, out: str, overwrite: bool = False) -> dict:
  """Writes a model dir's best parameters as a T5X checkpoint, model gin and vocabulary;
  a non-empty `out` is refused unless `overwrite`."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from sbs_jax.model import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  from sbs_jax.model import student as student_lib  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("t5x") is None:
    raise SbsError("export-t5x writes with T5X's own code: install it with "
                   "`bash launch/install_t5x.sh` (docs/t5x.md)")
  if not overwrite:
    replace.refuse_nonempty(out)
  student, params, info = student_lib.load_student(model_dir)
  step = _params_step(model_dir)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  out = out.rstrip("/")
  vocab_file = f"{out}/{model_dir_lib.VOCAB_FILE}"
  if "://" not in vocab_file:
    import os  # pylint: disable=import-outside-toplevel
    vocab_file = os.path.abspath(vocab_file)
  gin_text = t5x_format.model_gin(student.config, vocab_file, int(info.get("extra_ids", 0)),
                           model_dir)
  _check_vocabulary(f"{model_dir}/{info['vocabulary']}", int(info.get("extra_ids", 0)),
                    student.config)
  if tf.io.gfile.exists(f"{out}/checkpoint_{step}"):
    tf.io.gfile.rmtree(f"{out}/checkpoint_{step}")  # --overwrite: T5X refuses a step it has
  checkpoint = t5x_format.write_checkpoint(out, student.config, params, step)
  tf.io.gfile.copy(f"{model_dir}/{info['vocabulary']}", vocab_file, overwrite=True)
  with tf.io.gfile.GFile(f"{out}/{MODEL_GIN}", "w") as f:
    f.write(gin_text)
  return {"checkpoint": checkpoint, "model_gin": f"{out}/{MODEL_GIN}",
          "vocabulary": vocab_file, "step": step}


def _params_step(model_dir: str) -> int:
  """The step of a model dir's kept parameters: `params/<step>`, or for a dir imported
  from T5X and not trained since, the T5X checkpoint's step (kept in the params' meta)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  steps = [int(p.rstrip("/").rsplit("/", 1)[-1]) for p in
           tf.io.gfile.glob(f"{model_dir}/params/*") if p.rstrip("/").rsplit("/", 1)[-1]
           .isdigit()]
  if not steps:
    return 0
  step = max(steps)
  meta = f"{model_dir}/params/{step}/meta/metadata"
  if step == 0 and tf.io.gfile.exists(meta):
    with tf.io.gfile.GFile(meta) as f:
      try:
        return int(json.load(f).get("t5x_step", 0))
      except (ValueError, TypeError, AttributeError):
        return 0
  return step


def _check_vocabulary(path: str, extra_ids: int, config) -> None:
  """The vocabulary must exist and fit the network's embedding."""
  from sbs_jax.data import vocab  # pylint: disable=import-outside-toplevel
  sp = vocab.sentencepiece_processor(path)
  size = sp.get_piece_size() + extra_ids
  if size > config.vocab_size:
    raise SbsError(f"{path}: {sp.get_piece_size()} pieces + {extra_ids} extra ids = {size} "
                   f"ids, more than the network's vocab_size {config.vocab_size}: give the "
                   "checkpoint's own vocabulary")


def import_t5x(checkpoint: str, out: str, model_gin: str | None = None,
               size: str | None = None, vocab: str | None = None,
               extra_ids: int | None = None, overwrite: bool = False) -> dict:
  """Writes a T5X checkpoint's parameters as a model dir; returns a summary. A non-empty
  `out` is refused unless `overwrite`, and then replaced whole (replace.write_whole_dir)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.config import SIZES, config_for  # pylint: disable=import-outside-toplevel
  from sbs_jax.model.model_dir import ModelDir  # pylint: disable=import-outside-toplevel
  if not overwrite:
    replace.refuse_nonempty(out)
  gin_vocab, gin_extra_ids = None, 0
  if model_gin:
    config, gin_vocab, gin_extra_ids = t5x_format.read_model_gin(model_gin)
  else:
    if size not in SIZES or size == "tiny":
      raise SbsError(f"--size {size!r}: the published sizes are "
                     f"{[s for s in SIZES if s != 'tiny']}")
    config = config_for(size)
  vocab = vocab or gin_vocab
  if not vocab:
    raise SbsError("no vocabulary: pass --vocab (the checkpoint's SentencePiece model)")
  extra_ids = gin_extra_ids if extra_ids is None else extra_ids
  _check_vocabulary(vocab, extra_ids, config)
  params, step, skipped = t5x_format.read_checkpoint(checkpoint)
  if size:
    _check_size(params, size, checkpoint)
  t5x_format.check_params(params, config, f"the T5X checkpoint {checkpoint}")

  def write(folder: str) -> None:
    ModelDir(folder).write_info(config, vocab, extra_ids)
    ModelDir(folder).save_params(0, params, {"step": 0, "source": checkpoint, "t5x_step": step})

  replace.write_whole_dir(out, write)
  return {"model_dir": out, "t5x_step": step,
          "parameters": int(sum(np.size(x) for x in _leaves(params))),
          "skipped_optimizer_arrays": skipped, "extra_ids": extra_ids}


def _shape_summary(params: dict) -> dict:
  """The network dimensions a T5 v1.1 parameter tree has."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  def layers(stack):
    return sum(1 for k in params.get(stack, {}) if str(k).startswith("layers_"))
  first = params.get("encoder", {}).get("layers_0", {})
  emb = np.shape(params.get("token_embedder", {}).get("embedding", ()))
  mlp = np.shape(first.get("mlp", {}).get("wi_0", {}).get("kernel", ()))
  query = np.shape(first.get("attention", {}).get("query", {}).get("kernel", ()))
  return {"emb_dim": emb[1] if len(emb) == 2 else None,
          "num_encoder_layers": layers("encoder"), "num_decoder_layers": layers("decoder"),
          "mlp_dim": mlp[1] if len(mlp) == 2 else None,
          "joined_heads": query[1] if len(query) == 2 else None}


def _check_size(params: dict, size: str, checkpoint: str) -> None:
  """One line when the checkpoint is not the `--size` asked for, naming the size it is."""
  from sbs_jax.model.config import SIZES  # pylint: disable=import-outside-toplevel
  have = _shape_summary(params)

  def dims(c):
    return {"emb_dim": c.emb_dim, "num_encoder_layers": c.num_encoder_layers,
            "num_decoder_layers": c.num_decoder_layers, "mlp_dim": c.mlp_dim,
            "joined_heads": c.num_heads * c.head_dim}
  if have == dims(SIZES[size]):
    return
  described = (f"emb_dim {have['emb_dim']}, {have['num_encoder_layers']} + "
               f"{have['num_decoder_layers']} layers, mlp_dim {have['mlp_dim']}")
  matches = [name for name, c in SIZES.items() if name != "tiny" and dims(c) == have]
  if matches:
    raise SbsError(f"{checkpoint} is T5 v1.1 {matches[0]} ({described}), not {size}: pass "
                   f"--size {matches[0]}")
  raise SbsError(f"{checkpoint} is no published T5 v1.1 size ({described}), not {size}: "
                 "pass --model_gin with its network's gin file")


def _leaves(tree):
  for value in tree.values():
    if isinstance(value, dict):
      yield from _leaves(value)
    else:
      yield value
