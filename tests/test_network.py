"""Tests of the T5 v1.1 student network, its cached decoding, and parameter annotations.

Every forward pass is jitted and the tests share a few input shapes, because XLA compiles
per shape (and eager mode compiles every op per shape), which dominates the run time.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.model import decoding, partitioning
from sbs_jax.model.config import SIZES, config_for
from sbs_jax.model.layers import relative_position_bucket
from sbs_jax.model.network import Transformer

P = jax.sharding.PartitionSpec
TINY = config_for("tiny")


def _tokens(seed, shape, vocab=TINY.vocab_size):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 2, vocab, dtype=jnp.int32)


def _shift_right(targets):
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


# The shared batch: encoder [2, 8] (row 1 padded after 6 tokens), decoder [2, 6].
ENC = _tokens(1, (2, 8)).at[1, 6:].set(0)
TARGETS = _tokens(2, (2, 6))
DEC_IN = _shift_right(TARGETS)


@functools.partial(jax.jit, static_argnames=("model", "enable_dropout"))
def _forward(model, params, enc, dec_inputs, dec_targets, enable_dropout=False, rngs=None,
             **features):
  """Jitted `model.apply` returning logits."""
  return model.apply({"params": params}, enc, dec_inputs, dec_targets, **features,
                     enable_dropout=enable_dropout, rngs=rngs)


@functools.partial(jax.jit, static_argnames="model")
def _encode(model, params, enc):
  return model.apply({"params": params}, enc, method=Transformer.encode)


_decode_step = jax.jit(decoding.decode_step, static_argnames=("model", "max_decode_length"))


def _abstract_variables(config):
  tokens = jnp.ones((1, 4), jnp.int32)
  return jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), tokens, tokens, tokens)


@pytest.fixture(scope="module")
def tiny():
  model = Transformer(TINY)
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, tokens, tokens)
  return model, nn.unbox(variables)["params"]


def _flat(tree):
  return {"/".join(str(k.key) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _expected_params(c):
  joined = c.num_heads * c.head_dim
  attention = {"query": (c.emb_dim, joined), "key": (c.emb_dim, joined),
               "value": (c.emb_dim, joined), "out": (joined, c.emb_dim)}
  mlp = {"wi_0": (c.emb_dim, c.mlp_dim), "wi_1": (c.emb_dim, c.mlp_dim),
         "wo": (c.mlp_dim, c.emb_dim)}
  expected = {"token_embedder/embedding": (c.vocab_size, c.emb_dim),
              "encoder/relpos_bias/rel_embedding": (c.num_heads, 32),
              "encoder/encoder_norm/scale": (c.emb_dim,),
              "decoder/relpos_bias/rel_embedding": (c.num_heads, 32),
              "decoder/decoder_norm/scale": (c.emb_dim,),
              "decoder/logits_dense/kernel": (c.emb_dim, c.vocab_size)}
  for i in range(c.num_encoder_layers):
    layer = f"encoder/layers_{i}"
    for norm in ("pre_attention_layer_norm", "pre_mlp_layer_norm"):
      expected[f"{layer}/{norm}/scale"] = (c.emb_dim,)
    expected.update({f"{layer}/attention/{n}/kernel": s for n, s in attention.items()})
    expected.update({f"{layer}/mlp/{n}/kernel": s for n, s in mlp.items()})
  for i in range(c.num_decoder_layers):
    layer = f"decoder/layers_{i}"
    for norm in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
                 "pre_mlp_layer_norm"):
      expected[f"{layer}/{norm}/scale"] = (c.emb_dim,)
    for block in ("self_attention", "encoder_decoder_attention"):
      expected.update({f"{layer}/{block}/{n}/kernel": s for n, s in attention.items()})
    expected.update({f"{layer}/mlp/{n}/kernel": s for n, s in mlp.items()})
  return expected


@pytest.mark.parametrize("overrides", [{}, {"num_heads": 3}])
def test_parameter_paths_shapes_and_axes(overrides):
  config = config_for("tiny", **overrides)  # 3 heads: joined_kv (24) != embed (32)
  variables = _abstract_variables(config)
  params = _flat(nn.unbox(variables)["params"])
  assert {path: leaf.shape for path, leaf in params.items()} == _expected_params(config)
  assert len(params) == 6 + 2 * 9 + 2 * 14  # tiny: 2 encoder + 2 decoder layers
  assert all(leaf.dtype == jnp.float32 for leaf in params.values())
  specs = _flat(nn.get_partition_spec(variables)["params"])
  assert specs["token_embedder/embedding"] == P("vocab", "embed")
  assert specs["decoder/layers_1/self_attention/query/kernel"] == P("embed", "joined_kv")
  assert specs["encoder/layers_0/attention/out/kernel"] == P("joined_kv", "embed")
  assert specs["encoder/layers_0/mlp/wi_1/kernel"] == P("embed", "mlp")
  assert specs["decoder/layers_0/mlp/wo/kernel"] == P("mlp", "embed")
  assert specs["decoder/relpos_bias/rel_embedding"] == P("heads", "relpos_buckets")
  assert specs["decoder/logits_dense/kernel"] == P("embed", "vocab")
  assert specs["encoder/encoder_norm/scale"] == P("embed")


def test_tied_output_head_has_no_logits_dense():
  config = config_for("tiny", logits_via_embedding=True)
  params = _flat(nn.unbox(_abstract_variables(config))["params"])
  assert set(params) == set(_expected_params(config)) - {"decoder/logits_dense/kernel"}
  logits = jax.eval_shape(functools.partial(_forward.__wrapped__, Transformer(config)),
                          params=nn.unbox(_abstract_variables(config))["params"], enc=ENC,
                          dec_inputs=DEC_IN, dec_targets=TARGETS)
  assert logits.shape == (2, 6, config.vocab_size) and logits.dtype == jnp.float32


def test_sizes_are_t5_v1_1():
  dims = {name: (c.emb_dim, c.num_heads, c.num_encoder_layers, c.head_dim, c.mlp_dim)
          for name, c in SIZES.items() if name != "tiny"}
  assert dims == {"small": (512, 6, 8, 64, 1024), "base": (768, 12, 12, 64, 2048),
                  "large": (1024, 16, 24, 64, 2816), "xl": (2048, 32, 24, 64, 5120),
                  "xxl": (4096, 64, 24, 64, 10240)}
  assert {c.vocab_size for name, c in SIZES.items() if name != "tiny"} == {32128}
  assert config_for("base", dropout_rate=0.1).dropout_rate == 0.1


def test_logits_shape_and_dtype(tiny):
  logits = _forward(*tiny, ENC, DEC_IN, TARGETS)
  assert logits.shape == (2, 6, TINY.vocab_size)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_padding_does_not_change_real_positions(tiny):
  enc, targets = _tokens(3, (2, 5)), _tokens(4, (2, 4))
  logits = _forward(*tiny, enc, _shift_right(targets), targets)
  enc_padded, targets_padded = jnp.pad(enc, ((0, 0), (0, 3))), jnp.pad(targets, ((0, 0), (0, 2)))
  padded = _forward(*tiny, enc_padded, _shift_right(targets_padded), targets_padded)
  np.testing.assert_allclose(padded[:, :4], logits, atol=1e-5, rtol=1e-5)


def test_packed_examples_match_separate_runs(tiny):
  enc_a, tgt_a = _tokens(5, (4,)), _tokens(6, (3,))
  enc_b, tgt_b = _tokens(7, (3,)), _tokens(8, (4,))
  # Alone: one example per row, right-padded to a common length (padding is masked).
  enc = jnp.stack([enc_a, jnp.pad(enc_b, (0, 1))])
  targets = jnp.stack([jnp.pad(tgt_a, (0, 1)), tgt_b])
  alone = _forward(*tiny, enc, _shift_right(targets), targets)
  packed = _forward(
      *tiny,
      enc=jnp.concatenate([enc_a, enc_b])[None],
      dec_inputs=jnp.concatenate([_shift_right(tgt_a[None]), _shift_right(tgt_b[None])], 1),
      dec_targets=jnp.concatenate([tgt_a, tgt_b])[None],
      encoder_segment_ids=jnp.array([[1, 1, 1, 1, 2, 2, 2]]),
      decoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2]]),
      encoder_positions=jnp.array([[0, 1, 2, 3, 0, 1, 2]]),
      decoder_positions=jnp.array([[0, 1, 2, 0, 1, 2, 3]]))
  np.testing.assert_allclose(packed[0, :3], alone[0, :3], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 3:], alone[1], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal(tiny):
  changed = DEC_IN.at[:, 3].set((DEC_IN[:, 3] + 7) % TINY.vocab_size)
  before = _forward(*tiny, ENC, DEC_IN, TARGETS)
  after = _forward(*tiny, ENC, changed, TARGETS)
  np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6)
  assert float(jnp.max(jnp.abs(after[:, 3:] - before[:, 3:]))) > 1e-3


def test_cached_steps_reproduce_full_logits(tiny):
  model, params = tiny
  length = DEC_IN.shape[1]
  full = _forward(model, params, ENC, DEC_IN, jnp.ones_like(DEC_IN))
  encoded = _encode(model, params, ENC)
  cache = decoding.init_decoding_cache(model, params, encoded, ENC, length)
  steps = []
  for i in range(length):
    logits, cache = _decode_step(model, params, cache, encoded, ENC, DEC_IN[:, i],
                                 max_decode_length=length)
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def _uncached_greedy(model, params, enc, length, eos_id):
  """Argmax rollout that reruns the whole decoder on the prefix at every step."""
  out = np.zeros((enc.shape[0], length), np.int32)
  finished = np.zeros(enc.shape[0], bool)
  for i in range(length):
    inputs = _shift_right(jnp.asarray(out))
    logits = _forward(model, params, enc, inputs, jnp.ones_like(inputs))
    token = np.asarray(jnp.argmax(logits[:, i], -1))
    out[:, i] = np.where(finished, 0, token)
    finished |= out[:, i] == eos_id
  return out


def test_greedy_decoding_matches_uncached_rollout(tiny):
  no_eos = _uncached_greedy(*tiny, ENC, 6, eos_id=-1)
  np.testing.assert_array_equal(decoding.greedy_decode(*tiny, ENC, 6, eos_id=-1), no_eos)
  # Use the token row 0 emits at step 2 as EOS: its output must stop there, padded with 0.
  eos = int(no_eos[0, 2])
  expected = _uncached_greedy(*tiny, ENC, 6, eos_id=eos)
  assert expected[0, 2] == eos and not expected[0, 3:].any()
  np.testing.assert_array_equal(decoding.greedy_decode(*tiny, ENC, 6, eos_id=eos), expected)


def test_beam_search_with_one_beam_is_greedy(tiny):
  some_token = int(decoding.greedy_decode(*tiny, ENC, 6, eos_id=-1)[1, 1])
  for eos in (decoding.EOS_ID, some_token):
    greedy = decoding.greedy_decode(*tiny, ENC, 6, eos_id=eos)
    beam = decoding.beam_search(*tiny, ENC, 6, beam_size=1, alpha=0.0, eos_id=eos)
    np.testing.assert_array_equal(beam, greedy)


def test_beam_search_finds_best_normalised_hypothesis(tiny):
  # An 8-token vocabulary (the tiny parameters, cut down) makes exhaustive search cheap.
  vocab, length, alpha, eos = 8, 3, 0.6, decoding.EOS_ID
  model = Transformer(config_for("tiny", vocab_size=vocab))
  params = jax.tree_util.tree_map(lambda x: x, tiny[1])
  params["token_embedder"] = {"embedding": params["token_embedder"]["embedding"][:vocab]}
  logits_kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"] = {"kernel": logits_kernel[:, :vocab]}
  enc = ENC % vocab + (ENC > 0) * (ENC % vocab < 2) * 2  # keep padding, avoid ids 0 and 1
  # All 8**3 continuations; a hypothesis ends at its first EOS or after `length` tokens.
  seqs = jnp.array(list(itertools.product(range(vocab), repeat=length)), jnp.int32)
  is_eos = np.asarray(seqs) == eos
  end = np.where(is_eos.any(1), is_eos.argmax(1), length - 1)
  expected_tokens, expected_scores = [], []
  for row in range(enc.shape[0]):
    inputs = _shift_right(seqs)
    logits = _forward(model, params, jnp.repeat(enc[row:row + 1], len(seqs), 0), inputs,
                      jnp.ones_like(inputs))
    token_lp = jnp.take_along_axis(jax.nn.log_softmax(logits), seqs[..., None], -1)[..., 0]
    cumulative = np.asarray(jnp.cumsum(token_lp, 1))
    scores = cumulative[np.arange(len(seqs)), end] / ((5.0 + end + 1) / 6.0) ** alpha
    best = int(np.argmax(scores))
    tokens = np.asarray(seqs[best]).copy()
    tokens[end[best] + 1:] = 0
    expected_tokens.append(tokens)
    expected_scores.append(scores[best])
  tokens, scores = decoding.beam_search(model, params, enc, length, beam_size=64, alpha=alpha,
                                        return_scores=True)
  np.testing.assert_array_equal(tokens, np.stack(expected_tokens))
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


@pytest.mark.parametrize("relative, bidirectional, bucket", [
    (0, True, 0), (-1, True, 1), (1, True, 17), (-7, True, 7), (3, True, 19),
    (-20, True, 10), (-50, True, 13), (50, True, 29), (-100, True, 15), (-1000, True, 15),
    (0, False, 0), (7, False, 0), (-3, False, 3), (-15, False, 15), (-20, False, 17),
    (-50, False, 24), (-100, False, 30), (-1000, False, 31),
])
def test_relative_position_bucket(relative, bidirectional, bucket):
  # relative = key position - query position; negative: the key precedes the query.
  got = relative_position_bucket(np.array([relative]), bidirectional, 32, 128)
  assert int(got[0]) == bucket


def test_parameters_annotated_and_sharded_on_1x1_mesh(tiny):
  model, params = tiny
  abstract = _abstract_variables(TINY)
  assert partitioning.is_fully_annotated(abstract)
  mesh = partitioning.make_mesh(1, 1)
  rules = partitioning.standard_logical_axis_rules()
  shardings = partitioning.param_shardings(abstract, mesh, rules)
  kernel = partitioning.sharding_of(shardings, "params/encoder/layers_0/mlp/wi_0/kernel")
  assert kernel.mesh.axis_names == ("data", "model") and kernel.spec == P(None, "model")
  assert len(jax.tree_util.tree_leaves(shardings)) == len(jax.tree_util.tree_leaves(params))
  placed = jax.device_put(params, shardings["params"])
  np.testing.assert_allclose(_forward(model, placed, ENC, DEC_IN, TARGETS),
                             _forward(model, params, ENC, DEC_IN, TARGETS), atol=1e-6)


def test_dropout_only_when_enabled(tiny):
  model = Transformer(config_for("tiny", dropout_rate=0.3))
  plain = _forward(*tiny, ENC, DEC_IN, TARGETS)
  noisy = _forward(model, tiny[1], ENC, DEC_IN, TARGETS, enable_dropout=True,
                   rngs={"dropout": jax.random.PRNGKey(0)})
  assert float(jnp.max(jnp.abs(noisy - plain))) > 1e-2


def test_bfloat16_compute_is_close_to_float32(tiny):
  model, params = tiny
  bf16_model = Transformer(config_for("tiny", dtype="bfloat16"))
  reference = _forward(model, params, ENC, DEC_IN, TARGETS)
  logits = _forward(bf16_model, params, ENC, DEC_IN, TARGETS)
  assert logits.dtype == jnp.float32
  error = float(jnp.max(jnp.abs(logits - reference)))
  assert 0 < error < 0.05 * float(jnp.max(jnp.abs(reference)))  # > 0: bf16 really was used
  assert decoding.greedy_decode(bf16_model, params, ENC, 4).shape == (2, 4)


def test_mesh_rows_may_not_span_hosts():
  """Every host feeds its own batch rows, so a mesh row must lie on one host."""
  import types
  from sbs_jax.model import partitioning
  fake = [types.SimpleNamespace(process_index=p, id=i) for i, p in enumerate([0, 0, 1, 1])]
  with pytest.raises(ValueError, match="several hosts"):
    partitioning.make_mesh(1, 4, devices=fake)
