"""sbs_jax.convert.hf against tiny random transformers T5 models (no hub access)."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position

from sbs_jax.convert import hf  # pylint: disable=wrong-import-position
from sbs_jax.errors import SbsError  # pylint: disable=wrong-import-position
from sbs_jax.model.config import T5Config  # pylint: disable=wrong-import-position
from sbs_jax.model.network import Transformer  # pylint: disable=wrong-import-position

TOL = 1e-4
# transformers 5.x forces T5Config.tie_word_embeddings=True, so every untied (T5 v1.1)
# checkpoint loads with this warning; config.json's tie_word_embeddings=false cannot silence it.
KNOWN_TIE_WARNING = "both are present in the checkpoints with different values"

HF_CONFIGS = {
    # T5 v1.1: gated-gelu, untied lm_head, no output rescaling.
    "t5_v1_1": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=0.0),
    # Flan-T5-like: more decoder than encoder layers, heads*d_kv != d_model, other relpos.
    "flan": dict(vocab_size=128, d_model=32, d_kv=6, d_ff=48, num_heads=4, num_layers=2,
                 num_decoder_layers=3, relative_attention_num_buckets=16,
                 relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.1),
    "gated_silu": dict(vocab_size=96, d_model=16, d_kv=4, d_ff=40, num_heads=2, num_layers=1,
                       feed_forward_proj="gated-silu", tie_word_embeddings=False),
    # Original T5: plain relu MLP, tied embedding with d_model**-0.5 output scaling.
    "t5_tied_relu": dict(vocab_size=96, d_model=16, d_kv=4, d_ff=40, num_heads=2, num_layers=2,
                         feed_forward_proj="relu", tie_word_embeddings=True),
}


def _batch(vocab, seed=0, enc_len=30, dec_len=12):
  """Random tokens with trailing padding; decoder inputs are the targets shifted right."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, vocab, size=(3, enc_len))
  tgt = rng.integers(3, vocab, size=(3, dec_len))
  for row, (e, t) in enumerate([(enc_len, dec_len), (enc_len - 7, dec_len - 4), (5, 2)]):
    enc[row, e:] = 0
    tgt[row, t:] = 0
  dec_in = np.concatenate([np.zeros((3, 1), tgt.dtype), tgt[:, :-1]], axis=1)
  return enc.astype(np.int32), dec_in.astype(np.int32), tgt.astype(np.int32)


def _hf_logits(model, enc, dec_in):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec_in, dtype=torch.long))
  return out.logits.numpy()


def _our_logits(config, params, enc, dec_in, tgt):
  return np.asarray(Transformer(config).apply({"params": params}, enc, dec_in, tgt))


def _max_diff(a, b, tgt):
  return float(np.abs(a - b)[tgt > 0].max())  # padded target rows are masked differently


def _hf_model(name, seed=0, untie=False):
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIGS[name]))
  if untie:  # transformers 5 ties lm_head to shared in memory; give it its own values
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
  return model.float().eval()


@pytest.fixture(autouse=True)
def _float32():
  previous = torch.get_default_dtype()
  torch.set_default_dtype(torch.float32)
  yield
  torch.set_default_dtype(previous)


@pytest.mark.parametrize("name,untie", [("t5_v1_1", False), ("flan", True),
                                        ("gated_silu", True), ("t5_tied_relu", False)])
def test_hf_model_logits_match(tmp_path, name, untie):
  model = _hf_model(name, untie=untie)
  model.save_pretrained(tmp_path, safe_serialization=True)
  config, params, spiece = hf.read_hf_dir(tmp_path)
  assert spiece is None
  assert config.logits_via_embedding == (name == "t5_tied_relu")
  assert config.num_decoder_layers == model.config.num_decoder_layers
  enc, dec_in, tgt = _batch(config.vocab_size)
  ours = _our_logits(config, params, enc, dec_in, tgt)
  diff = _max_diff(_hf_logits(model, enc, dec_in), ours, tgt)
  assert diff <= TOL, diff
  # The in-memory state dict (with the tied embed_tokens copies) converts the same way.
  direct = hf.params_from_hf(model.state_dict(), config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, direct, params)


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.mark.parametrize("logits_via_embedding", [False, True])
def test_round_trip_through_transformers(tmp_path, logits_via_embedding):
  config = T5Config(vocab_size=128, emb_dim=32, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=3, head_dim=8, mlp_dim=64,
                    relative_attention_num_buckets=16, relative_attention_max_distance=24,
                    logits_via_embedding=logits_via_embedding)
  enc, dec_in, tgt = _batch(config.vocab_size, seed=1)
  boxed = Transformer(config).init(jax.random.PRNGKey(0), enc, dec_in, tgt)["params"]
  # Perturb every leaf so that e.g. swapped layer norm scales (all ones at init) would show.
  leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(nn.unbox(boxed)))
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_unflatten(treedef, [
      (np.asarray(x) * (1 + 0.2 * rng.standard_normal(x.shape))).astype(np.float32)
      for x in leaves])

  state = hf.params_to_hf(params, config)
  back = hf.params_from_hf(state, config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
  assert set(hf.params_to_hf(boxed, config)) == set(state)  # boxed params are accepted too
  assert hf.config_from_hf(hf.config_to_hf(config)) == config

  hf.write_hf_dir(tmp_path, config, params)
  records = _Records()
  root = transformers.utils.logging.get_logger()
  root.addHandler(records)
  try:
    model, info = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True)
  finally:
    root.removeHandler(records)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info.get("error_msgs"), info
  assert [m for m in records.messages if KNOWN_TIE_WARNING not in m] == []
  model = model.float().eval()
  assert hf.config_from_hf(model.config.to_dict()) == config
  ours = _our_logits(config, params, enc, dec_in, tgt)
  diff = _max_diff(_hf_logits(model, enc, dec_in), ours, tgt)
  assert diff <= TOL, diff
  generation = json.loads((tmp_path / "generation_config.json").read_text())
  assert generation == {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
  assert model.generation_config.decoder_start_token_id == 0


def test_mismatch_names_every_problem():
  config = hf.config_from_hf(HF_CONFIGS["t5_v1_1"])
  state = {k: v.numpy() for k, v in _hf_model("t5_v1_1").state_dict().items()}
  state["encoder.block.1.layer.0.SelfAttention.q.weight"] = np.zeros((32, 31), np.float32)
  del state["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
  state["decoder.block.7.layer.0.layer_norm.weight"] = np.ones(32, np.float32)
  with pytest.raises(hf.ConversionError) as err:
    hf.params_from_hf(state, config)
  message = str(err.value)
  assert "3 problems" in message
  assert "missing: decoder.block.1.layer.2.DenseReluDense.wo.weight" in message
  assert "unexpected: decoder.block.7.layer.0.layer_norm.weight" in message
  assert ("wrong shape: encoder.block.1.layer.0.SelfAttention.q.weight: got (32, 31), "
          "expected (32, 32)") in message
  assert isinstance(err.value, SbsError)


def test_unsupported_configs_are_refused():
  with pytest.raises(hf.ConversionError, match="gelu"):
    hf.config_from_hf(dict(HF_CONFIGS["t5_v1_1"], feed_forward_proj="gelu"))  # exact erf GELU
  with pytest.raises(hf.ConversionError, match="layer_norm_epsilon"):
    hf.config_from_hf(dict(HF_CONFIGS["t5_v1_1"], layer_norm_epsilon=1e-5))
  with pytest.raises(hf.ConversionError, match="mlp_activations"):
    hf.config_to_hf(T5Config(vocab_size=8, emb_dim=4, num_heads=1, num_encoder_layers=1,
                             num_decoder_layers=1, head_dim=4, mlp_dim=4,
                             mlp_activations=("linear", "gelu")))
  # A tied (output-rescaled) config whose checkpoint has its own lm_head cannot be expressed.
  tied = _hf_model("t5_tied_relu", untie=True)
  with pytest.raises(hf.ConversionError, match="lm_head.weight differs from shared.weight"):
    hf.params_from_hf(tied.state_dict(), hf.config_from_hf(tied.config.to_dict()))


def test_pickle_needs_allow_pickle(tmp_path):
  model = _hf_model("t5_v1_1")
  (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  with pytest.raises(hf.ConversionError, match="--allow_pickle"):
    hf.read_hf_dir(tmp_path)
  config, params, _ = hf.read_hf_dir(tmp_path, allow_pickle=True)
  enc, dec_in, tgt = _batch(config.vocab_size)
  assert _max_diff(_hf_logits(model, enc, dec_in),
                   _our_logits(config, params, enc, dec_in, tgt), tgt) <= TOL


def test_sharded_and_bfloat16_safetensors(tmp_path):
  model = _hf_model("flan", untie=True)
  model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  config, params, _ = hf.read_hf_dir(tmp_path / "sharded")
  expected = hf.params_from_hf(model.state_dict(), config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)

  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
  _, params16, _ = hf.read_hf_dir(tmp_path / "bf16")
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2),
                         params16, expected)


def test_tokenizer_matches_sentencepiece(tmp_path):
  import sentencepiece as spm
  from sbs_jax.data.vocab import train_vocabulary
  texts = [f"the quick brown fox jumps over the lazy dog {i} times." for i in range(200)]
  texts.append("sally has 12 apples and gives 5 to tom. how many are left?")
  spm_path = train_vocabulary(texts, tmp_path / "vocab" / "spm.model", vocab_size=300)
  sp = spm.SentencePieceProcessor(model_file=str(spm_path))
  config = T5Config(vocab_size=304, emb_dim=8, num_heads=1, num_encoder_layers=1,
                    num_decoder_layers=1, head_dim=8, mlp_dim=8)
  params = Transformer(config).init(jax.random.PRNGKey(0), *_batch(64, enc_len=4, dec_len=3))
  out = hf.write_hf_dir(tmp_path / "hf", config, params["params"], spiece_model_path=spm_path)
  _, _, spiece = hf.read_hf_dir(out)
  assert spiece == str(out / "spiece.model")
  # Only characters the vocabulary covers: transformers' T5Tokenizer has no byte fallback, so
  # it maps other characters to <unk> where sentencepiece emits byte pieces (see hf.py).
  strings = ["the quick brown fox.", "sally has 123 apples. how many are left?",
             "  two   spaces  here ", "tom\ngives 5", ""]
  for cls in (transformers.T5Tokenizer, transformers.T5TokenizerFast):
    tokenizer = cls.from_pretrained(out)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == sp.get_piece_size()
    for text in strings:
      assert tokenizer(text).input_ids == sp.encode(text) + [1], (cls, text)


def test_import_does_not_load_torch():
  code = ("import sys, sbs_jax.convert.hf; print(sorted(m for m in "
          "('torch', 'transformers', 'safetensors') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout
