"""The vocabulary: T5's special ids, the gin-set path, and clear errors."""

import gin
import pytest
import sentencepiece as spm

from sbs_jax.data import vocab
from sbs_jax.errors import DataError


def test_trained_vocabulary_has_t5_special_ids(tmp_path):
  path = vocab.train_vocabulary(["the cat sat on the mat"] * 50, tmp_path / "v.model", 300)
  sp = spm.SentencePieceProcessor(model_file=str(path))
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert sp.decode(sp.encode("the cat")) == "the cat"


def test_configured_vocabulary_reads_gin_at_first_use(tmp_path):
  path = vocab.train_vocabulary(["a b c d e f g"] * 20, tmp_path / "v.model", 300)
  configured = vocab.ConfiguredVocabulary()  # made before the binding, as at `import tasks`
  with gin.unlock_config():
    gin.bind_parameter("vocabulary_settings.path", str(path))
    gin.bind_parameter("vocabulary_settings.extra_ids", 5)
  try:
    assert configured.extra_ids == 5
    assert configured.vocab_size == spm.SentencePieceProcessor(
        model_file=str(path)).get_piece_size() + 5
    assert configured.decode(configured.encode("a b c")) == "a b c"
  finally:
    gin.clear_config()


def test_missing_vocabulary_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv(vocab.VOCAB_ENV, str(tmp_path / "none.model"))
  with pytest.raises(DataError, match="sbs vocab"):
    vocab.ConfiguredVocabulary().encode("x")


def test_empty_corpus_and_bad_suffix(tmp_path):
  with pytest.raises(DataError, match="no text"):
    vocab.train_vocabulary(["  "], tmp_path / "v.model")
  with pytest.raises(DataError, match=".model"):
    vocab.train_vocabulary(["a"], tmp_path / "v.spm")


def test_too_small_vocab_size_is_a_clear_error(tmp_path):
  with pytest.raises(DataError, match="SentencePiece training failed"):
    vocab.train_vocabulary(["the cat sat"] * 10, tmp_path / "v.model", 50)
