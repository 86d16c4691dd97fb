"""The tasks' vocabulary equals a model's when both name the same file and extra ids.

T5X refuses to train or evaluate when `task vocabulary != model vocabulary` (seqio compares
file name and extra ids); our tasks' vocabulary reads its settings late, so it must compare
by the settings in force, before and after first use.
"""

import gin
import pytest
import seqio

from sbs_jax.data import vocab


@pytest.fixture(name="spm_file", scope="module")
def fixture_spm_file(tmp_path_factory):
  root = tmp_path_factory.mktemp("vocab")
  return str(vocab.train_vocabulary(["a b c d e f g"] * 20, root / "v.model", 300))


def _bind(path, extra_ids):
  with gin.unlock_config():
    gin.bind_parameter("vocabulary_settings.path", path)
    gin.bind_parameter("vocabulary_settings.extra_ids", extra_ids)


@pytest.mark.parametrize("used_first", [False, True], ids=["unused", "used"])
def test_configured_equals_the_same_settings(spm_file, used_first):
  configured = vocab.ConfiguredVocabulary()  # made before the binding, as at `import tasks`
  _bind(spm_file, 0)
  try:
    if used_first:
      configured.encode("a b")
    model_vocab = seqio.SentencePieceVocabulary(spm_file)
    # T5X's check, both ways round, and as the tuple it builds.
    assert configured == model_vocab and model_vocab == configured
    assert not configured != model_vocab  # pylint: disable=unneeded-not
    assert (configured, configured) == (model_vocab, model_vocab)
    assert configured == vocab.ConfiguredVocabulary()
    assert configured.sentencepiece_model_file == spm_file
  finally:
    gin.clear_config()


def test_configured_differs_from_other_settings(spm_file, tmp_path):
  other = str(vocab.train_vocabulary(["x y z"] * 20, tmp_path / "other.model", 280))
  configured = vocab.ConfiguredVocabulary()
  _bind(spm_file, 0)
  try:
    assert configured != seqio.SentencePieceVocabulary(spm_file, extra_ids=100)
    assert configured != seqio.SentencePieceVocabulary(other)
    assert configured != seqio.PassThroughVocabulary(300)
  finally:
    gin.clear_config()


def test_loaded_vocabulary_keeps_its_settings(spm_file, tmp_path):
  """Once loaded, a vocabulary is what it loaded, whatever is bound later."""
  configured = vocab.ConfiguredVocabulary()
  _bind(spm_file, 0)
  try:
    configured.encode("a")
    _bind(str(tmp_path / "elsewhere.model"), 3)
    assert configured == seqio.SentencePieceVocabulary(spm_file)
  finally:
    gin.clear_config()
