"""A random-init tiny student in a model dir, and the rows `sbs predict` reads and writes."""

import json
import pathlib

import jax

from sbs_jax.data.readers import cqa_input, read_json_rows
from sbs_jax.model.config import T5Config
from sbs_jax.model.model_dir import ModelDir

TINY = T5Config(vocab_size=512, emb_dim=32, num_heads=2, num_encoder_layers=2,
                num_decoder_layers=2, head_dim=16, mlp_dim=64)
MAX_INPUT = 256  # recorded in model.json, as a training run records its input length


def cqa_texts(data_dir, n: int) -> list[str]:
  rows = read_json_rows(data_dir / "cqa" / "cqa_test.json")[:n]
  return [cqa_input(r["question"], r["choices"]) for _, r in rows]


def make_model_dir(root: pathlib.Path, data_dir, max_input_length=MAX_INPUT) -> pathlib.Path:
  """A random-init tiny student with a 512-piece vocabulary of CQA questions."""
  from sbs_jax.data import vocab
  from sbs_jax.train.state import init_params
  spm = vocab.train_vocabulary(cqa_texts(data_dir, 1000), root / "vocab" / "spm.model",
                               TINY.vocab_size)
  model_dir = root / "model"
  ModelDir(str(model_dir)).write_info(TINY, str(spm), max_input_length=max_input_length)
  import flax.linen as nn
  from sbs_jax.model.network import Transformer
  params = nn.unbox(init_params(Transformer(TINY), jax.random.key(3)))
  ModelDir(str(model_dir)).save_params(0, params, {"step": 0})
  return model_dir


def write_rows(path, rows) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return path


def read_lines(path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]
