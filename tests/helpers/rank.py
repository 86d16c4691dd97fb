"""Rank classification on a tiny random-init student, with a vocabulary of one token per
character (no SentencePiece model needed): what tests/test_rank_classification.py checks in
its own process and, with 2 forced CPU devices, in a fresh one (`python -m
tests.helpers.rank`)."""

import json
import sys

import flax.linen as nn
import jax
import numpy as np
import optax

from sbs_jax.annotate.answer_formats import CHOICE
from sbs_jax.data.readers import cqa_input
from sbs_jax.model import student as student_lib
from sbs_jax.model.config import T5Config
from sbs_jax.model.network import Transformer
from sbs_jax.serve.predictor import DecodeSettings, Predictor

TINY = T5Config(vocab_size=96, emb_dim=32, num_heads=2, num_encoder_layers=2,
                num_decoder_layers=2, head_dim=16, mlp_dim=64)
WORDS = ("bank", "river", "table", "house", "park", "city", "shop", "car", "tree", "lake",
         "door", "school", "office", "garden", "street", "a big red box", "x")


class CharVocabulary:
  """Token id 2 + (code point mod 94) per character: ids below TINY.vocab_size, no 0 or 1."""
  vocab_size = TINY.vocab_size

  @staticmethod
  def encode(text: str) -> list[int]:
    return [2 + ord(c) % (TINY.vocab_size - 2) for c in text]

  @staticmethod
  def decode(ids) -> str:  # what greedy decoding shows: one character per id
    return "".join(chr(30 + int(i)) for i in ids)


def tiny_student(data_shards: int = 1, seed: int = 3):
  """A random-init TINY student on a (data_shards, 1) mesh, and its params."""
  student = student_lib.build_student(TINY, optax.identity(),
                                      student_lib.make_mesh((data_shards, 1)))
  params = nn.unbox(student_lib.init_params(Transformer(TINY), jax.random.key(seed)))
  return student, params


def cqa_like_texts(n: int, seed: int = 0) -> list[str]:
  """CQA-layout inputs (a question, `Answer Choices:`, 2 to 5 choices) of varied lengths."""
  rng = np.random.default_rng(seed)
  texts = []
  for _ in range(n):
    question = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 30))))
    count = int(rng.integers(2, 6))
    texts.append(cqa_input(question + "?", list(rng.choice(WORDS, size=count,
                                                           replace=False))))
  return texts


def predictor(student, params, batch_size: int) -> Predictor:
  return Predictor(student, params, CharVocabulary(), "predict: ",
                   settings=DecodeSettings(batch_size=batch_size, label_mode="rank"),
                   max_input_length=256, label_set=CHOICE.label_set)


def rank_labels(data_shards: int, batch_sizes=(1, 3, 8), n: int = 19) -> dict:
  """{batch size: the rank labels of `n` CQA-like inputs} on a (data_shards, 1) mesh."""
  student, params = tiny_student(data_shards)
  texts = cqa_like_texts(n)
  return {str(b): [row["label"] for row in predictor(student, params, b).predict(texts)]
          for b in batch_sizes}


if __name__ == "__main__":  # run with XLA_FLAGS forcing several CPU devices
  print(json.dumps({"devices": jax.device_count(),
                    "labels": rank_labels(int(sys.argv[1]))}))
