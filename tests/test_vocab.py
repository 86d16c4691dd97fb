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


def test_the_same_texts_give_the_same_file(tmp_path):
  """Trained twice (each run in its own temporary folder), the vocabulary is byte for byte
  the same, so the sha256 a sweep pins still matches after the data is prepared again; the
  trainer's paths are not kept in it. Other texts give another file."""
  texts = [f"{w} sat on the mat number {i}" for i, w in enumerate(["cat", "dog"] * 40)]
  a = vocab.train_vocabulary(texts, tmp_path / "a" / "v.model", 300, model_type="bpe")
  b = vocab.train_vocabulary(texts, tmp_path / "b" / "v.model", 300, model_type="bpe")
  assert a.read_bytes() == b.read_bytes()
  assert b"corpus.txt" not in a.read_bytes() and str(tmp_path).encode() not in a.read_bytes()
  c = vocab.train_vocabulary(texts + ["a bird flew over the house"] * 30,
                             tmp_path / "c" / "v.model", 300, model_type="bpe")
  assert c.read_bytes() != a.read_bytes()
  assert spm.SentencePieceProcessor(model_file=str(a)).decode(
      spm.SentencePieceProcessor(model_file=str(a)).encode("dog sat")) == "dog sat"


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


def _synthetic_records(tmp_path, n=400):
  """Annotation records of the marked-selection task (a small, repetitive corpus)."""
  import random
  from sbs_jax.data import records
  from sbs_jax.experiments import synthetic
  rng = random.Random(0)
  form = synthetic.Form("marked", "sum_last_digit")
  rows = []
  for i in range(n):
    p = synthetic.make_problem(rng, form=form)
    steps, answer = synthetic.explain(synthetic.solve(p["input"]))
    rows.append({"id": f"r{i}", "dataset": "marks", "split": "train", "input": p["input"],
                 "label": p["label"], "llm_label": str(answer), "rationale": steps,
                 "parse_error": "", "completion": "", "prompt_id": "p", "teacher": "t",
                 "index": i, "has_label": 1, "parse_ok": 1})
  (tmp_path / "ann" / "marks").mkdir(parents=True)
  records.write_atomically(tmp_path / "ann" / "marks" / records.shard_name("train", 0, 1), rows)
  return tmp_path / "ann"


def test_vocab_notes_a_small_repetitive_corpus_and_bpe_shortens_it(tmp_path, capsys):
  import argparse
  import json
  from sbs_jax.commands import vocab as vocab_command
  ann = _synthetic_records(tmp_path)
  parser = argparse.ArgumentParser()
  vocab_command.add_parser(parser.add_subparsers())
  outs = {}
  for model_type, size in (("unigram", "8000"), ("bpe", "600")):
    args = parser.parse_args(["vocab", "--annotation_dir", str(ann), "--datasets", "marks",
                              "--out", str(tmp_path / model_type / "spm.model"),
                              "--vocab_size", size, "--model_type", model_type])
    assert vocab_command.main(args) == 0
    captured = capsys.readouterr()
    outs[model_type] = (json.loads(captured.out.strip().splitlines()[-1]), captured.err)
  unigram, bpe = outs["unigram"][0], outs["bpe"][0]
  assert unigram["model_type"] == "unigram" and bpe["model_type"] == "bpe"
  assert unigram["pieces"] < 4000 and unigram["tokens_per_word"] > 1.5
  assert f"note: the texts gave {unigram['pieces']} pieces of the 8000 asked" in outs[
      "unigram"][1]
  assert "--model_type bpe" in outs["unigram"][1]
  assert bpe["tokens_per_word"] < unigram["tokens_per_word"] - 0.5
  assert "note:" not in outs["bpe"][1]
