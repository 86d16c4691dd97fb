"""The paper's workflow with HF checkpoints: import a pretrained T5, train from it, export the
student, and serve it with transformers (tiny random-init models built here; no download)."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sbs_jax.convert import hf_dirs as convert  # pylint: disable=wrong-import-position
from sbs_jax.errors import SbsError  # pylint: disable=wrong-import-position
from sbs_jax.model.model_dir import ModelDir  # pylint: disable=wrong-import-position
from sbs_jax.model.student import load_student  # pylint: disable=wrong-import-position
from sbs_jax.train.data import label_examples  # pylint: disable=wrong-import-position
from sbs_jax.model.student import detokenize  # pylint: disable=wrong-import-position
from tests.helpers.tiny_cqa import train_tiny_cqa

pytestmark = [pytest.mark.slow]

# The tiny overlay's network, as an HF T5 v1.1 config with our 8k vocabulary.
HF_TINY = dict(vocab_size=8000, d_model=64, d_kv=16, d_ff=128, num_layers=2,
               num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
               tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1)


def hf_folder(path, spiece, **overrides):
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**dict(HF_TINY, **overrides)))
  model.save_pretrained(path, safe_serialization=True)
  (path / "spiece.model").write_bytes(spiece.read_bytes())
  return path


def train(model_dir, bindings):
  return train_tiny_cqa(model_dir, "TrainConfig.log_every = 1", "EvalConfig.every = 4",
                        *bindings)


@pytest.fixture(scope="module")
def imported(annotated, tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  spiece = pathlib.Path(os.environ["SBS_VOCAB"])
  hf_dir = hf_folder(root / "hf_tiny", spiece)
  out = root / "imported"
  summary = convert.import_hf(hf_dir, str(out))
  return hf_dir, out, summary


def test_import_writes_a_model_dir_training_starts_from(imported, tmp_path):
  hf_dir, out, summary = imported
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  # Every tensor of the checkpoint, lm_head included (transformers may tie it in memory).
  assert summary["parameters"] == sum(
      v.numel() for k, v in model.state_dict().items() if "embed_tokens" not in k)
  # With a zero learning rate the trained model keeps exactly the imported parameters.
  train(tmp_path / "run", [f"INITIAL_CHECKPOINT = '{out}'", "TRAIN_STEPS = 2",
                           "OptimizerConfig.learning_rate = 0.0",
                           "OptimizerConfig.warmup_steps = 0"])
  student, start, _ = load_student(str(out))
  after, _ = ModelDir(str(tmp_path / "run")).load_params(student.abstract_state["params"])
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_checkpoint_lists_the_offending_parameters(annotated, tmp_path):
  spiece = pathlib.Path(os.environ["SBS_VOCAB"])
  other = convert.import_hf(hf_folder(tmp_path / "hf", spiece, d_ff=96), str(tmp_path / "x"))
  with pytest.raises(SbsError) as err:
    train(tmp_path / "run", [f"INITIAL_CHECKPOINT = '{other['model_dir']}'",
                             "TRAIN_STEPS = 1"])
  message = str(err.value)
  assert "wrong shape: encoder/layers_0/mlp/wi_0/kernel: saved (64, 96), network (64, 128)" \
      in message
  assert message.count("wrong shape") == 12  # wi_0, wi_1, wo in 4 layers


def test_trained_student_exported_serves_the_same_greedy_outputs(imported, tmp_path):
  _, out, _ = imported
  model_dir = tmp_path / "student"
  train(model_dir, [f"INITIAL_CHECKPOINT = '{out}'", "TRAIN_STEPS = 8"])
  hf_out = convert.export_hf(str(model_dir), str(tmp_path / "hf_student"))
  assert json.loads((hf_out / convert.PREFIXES_FILE).read_text())["label_prefix"] == \
      "predict: "

  model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      hf_out, output_loading_info=True)
  assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
  model.eval()
  tokenizer = transformers.T5TokenizerFast.from_pretrained(hf_out)

  # 20 validation inputs the HF tokenizer encodes exactly as SentencePiece does (it has
  # no byte fallback for characters outside the vocabulary).
  import seqio
  vocab = seqio.SentencePieceVocabulary(f"{model_dir}/spm.model")
  examples = label_examples("sbs_cqa_label_llm", "validation", max_examples=60)
  texts = [t for t in examples.input_texts
           if tokenizer(t).input_ids == list(vocab.encode(t)) + [1]][:20]
  assert len(texts) == 20

  from sbs_jax.serve.predictor import predict_labels
  student, params, _ = load_student(str(model_dir))
  raw = [t[len("predict: "):] for t in texts]
  ours = predict_labels(student, params, vocab, raw, "predict: ", max_decode_length=16)

  batch = tokenizer(texts, return_tensors="pt", padding=True)
  with torch.no_grad():
    generated = model.generate(**batch, max_new_tokens=16, do_sample=False, num_beams=1)
  theirs = [detokenize(vocab, row[1:]) for row in generated.numpy()]  # drop the start token
  assert theirs == ours


def test_import_into_an_existing_dir_is_refused_unless_overwrite(imported, tmp_path, gcs):
  """A trained or imported dir is never rewritten in part: refused, or replaced whole (also
  on gs://, the emulator)."""
  hf_dir, _, _ = imported
  other_hf = hf_folder(tmp_path / "hf", hf_dir / "spiece.model", d_ff=96)
  for out in (str(tmp_path / "out"), f"gs://sbs-test/hf_import/{tmp_path.name}"):
    convert.import_hf(hf_dir, out)
    config_before, _ = ModelDir(out).read_info()
    with pytest.raises(SbsError, match="exists and is not empty: choose a new --out, or pass "
                       "--overwrite"):
      convert.import_hf(other_hf, out)
    assert ModelDir(out).read_info()[0] == config_before  # untouched
    convert.import_hf(other_hf, out, overwrite=True)
    config_after, _ = ModelDir(out).read_info()
    assert (config_before.mlp_dim, config_after.mlp_dim) == (128, 96)
    student, params, _ = load_student(out)
    assert params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].shape == (64, 96)
