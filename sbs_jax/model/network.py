"""T5 v1.1 encoder-decoder `Transformer` whose parameter tree matches T5X's T5 v1.1 network.

Parameter paths (checked against google-research/t5x `t5x/examples/t5/network.py` and
`layers.py`; the shapes are T5X's 2-D kernel layout, logical axes in brackets):

  token_embedder/embedding                          [vocab, embed]  ('vocab', 'embed')
  encoder/relpos_bias/rel_embedding                 [heads, buckets] ('heads', 'relpos_buckets')
  encoder/layers_{i}/pre_attention_layer_norm/scale [embed]         ('embed',)
  encoder/layers_{i}/attention/{query,key,value}/kernel
                                        [embed, heads*head_dim]     ('embed', 'joined_kv')
  encoder/layers_{i}/attention/out/kernel
                                        [heads*head_dim, embed]     ('joined_kv', 'embed')
  encoder/layers_{i}/pre_mlp_layer_norm/scale       [embed]         ('embed',)
  encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel         [embed, mlp]    ('embed', 'mlp')
  encoder/layers_{i}/mlp/wo/kernel                  [mlp, embed]    ('mlp', 'embed')
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/pre_self_attention_layer_norm/scale, self_attention/{query,key,value,out},
    pre_cross_attention_layer_norm/scale, encoder_decoder_attention/{query,key,value,out},
    pre_mlp_layer_norm/scale, mlp/{wi_0,wi_1,wo}
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                       [embed, vocab]  ('embed', 'vocab')

As in T5X, one relative position bias table is shared by all layers of a stack (the
encoder's is bidirectional, the decoder's causal), the encoder-decoder attention has no
position bias, the embedding is shared by encoder and decoder, and the output projection
is untied unless `logits_via_embedding`. As in T5X, the relative positions of the bias
are those of the row (arange), one [1, heads, q, k] bias for the whole batch: within a
packed segment they equal the differences of `*_positions` (a segment's positions count up
from 0 one by one), and across segments attention is masked. A per-row bias from
`*_positions` ([batch, q, k, heads] before the transpose) was what the TPU compiler
showed as the largest temporaries of the train step: two 4 GiB buffers of T5 small's
17.2 GiB per chip at 16 rows of 1024 tokens (docs/scale.md). `*_positions` are accepted,
as T5X's are, and unused.
The embedding lookup is a gather (T5X's example uses a one-hot matmul; same result).
Initialisers follow T5X: embedding N(0, 1), relpos fan-avg uniform, kernels fan-in
truncated normal (attention: fan-in normal, query divided by sqrt(head_dim)).

With `config.remat_policy` other than "none", each `layers_{i}` is wrapped in
`flax.linen.remat` (see `T5Config`): the parameter tree and the results are unchanged, the
backward pass recomputes what the policy does not keep.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbs_jax.model import layers
from sbs_jax.model.config import T5Config

Array = jax.Array


def _row_positions(length: int) -> Array:
  """0..length-1: the positions the relative position bias is computed from."""
  return jnp.arange(length, dtype=jnp.int32)


def _residual_dropout(config: T5Config) -> nn.Dropout:
  return nn.Dropout(rate=config.dropout_rate, broadcast_dims=(-2,))


def _attention(config: T5Config, name: str) -> layers.MultiHeadAttention:
  return layers.MultiHeadAttention(
      num_heads=config.num_heads, head_dim=config.head_dim, dtype=config.compute_dtype,
      dropout_rate=config.dropout_rate, float32_logits=config.float32_attention_logits,
      name=name)


def _mlp(config: T5Config) -> layers.MlpBlock:
  return layers.MlpBlock(intermediate_dim=config.mlp_dim, activations=config.mlp_activations,
                         dropout_rate=config.dropout_rate, dtype=config.compute_dtype,
                         name="mlp")


def _relpos_bias(config: T5Config) -> layers.RelativePositionBias:
  return layers.RelativePositionBias(
      num_buckets=config.relative_attention_num_buckets,
      max_distance=config.relative_attention_max_distance, num_heads=config.num_heads,
      dtype=config.compute_dtype, name="relpos_bias")


def _norm(config: T5Config, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(dtype=config.compute_dtype, name=name)


_REMAT_POLICIES = {"full": None,  # save nothing inside the layer: recompute all of it
                   "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _maybe_remat(layer_class: type[nn.Module], config: T5Config,
                 static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """`layer_class`, or it under `nn.remat` with the config's policy.

  `static_argnums` (counting `self` as 0) name the Python bool flags, which must then be
  passed positionally; remat keeps the module's name, so the parameter paths do not change.
  """
  if config.remat_policy == "none":
    return layer_class
  return nn.remat(layer_class, policy=_REMAT_POLICIES[config.remat_policy],
                  static_argnums=static_argnums)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention block then pre-norm MLP block, each with a residual."""
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None, bias: Array,
               deterministic: bool = True) -> Array:
    """Maps [batch, length, embed] to the same shape."""
    cfg = self.config
    x = _norm(cfg, "pre_attention_layer_norm")(inputs)
    x = _attention(cfg, "attention")(x, x, mask, bias, deterministic=deterministic)
    x = inputs + _residual_dropout(cfg)(x, deterministic=deterministic)
    y = _norm(cfg, "pre_mlp_layer_norm")(x)
    y = _mlp(cfg)(y, deterministic=deterministic)
    return x + _residual_dropout(cfg)(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP blocks, each with a residual."""
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, self_mask: Array | None, bias: Array,
               cross_mask: Array | None, deterministic: bool = True,
               decode: bool = False) -> Array:
    """Maps [batch, length, embed] decoder states to the same shape."""
    cfg = self.config
    x = _norm(cfg, "pre_self_attention_layer_norm")(inputs)
    x = _attention(cfg, "self_attention")(x, x, self_mask, bias, decode=decode,
                                          deterministic=deterministic)
    x = inputs + _residual_dropout(cfg)(x, deterministic=deterministic)
    y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
    y = _attention(cfg, "encoder_decoder_attention")(y, encoded, cross_mask,
                                                     deterministic=deterministic)
    y = x + _residual_dropout(cfg)(y, deterministic=deterministic)
    z = _norm(cfg, "pre_mlp_layer_norm")(y)
    z = _mlp(cfg)(z, deterministic=deterministic)
    return y + _residual_dropout(cfg)(z, deterministic=deterministic)


class Encoder(nn.Module):
  """Embedding, `num_encoder_layers` encoder layers and the final `encoder_norm`."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_mask: Array | None = None,
               encoder_positions: Array | None = None, deterministic: bool = True) -> Array:
    """Maps token ids [batch, length] to encoded states [batch, length, embed]."""
    cfg = self.config
    del encoder_positions  # the bias is the row's (module docstring)
    positions = _row_positions(encoder_input_tokens.shape[-1])
    bias = _relpos_bias(cfg)(positions, positions, bidirectional=True)
    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    x = _residual_dropout(cfg)(x, deterministic=deterministic).astype(cfg.compute_dtype)
    layer = _maybe_remat(EncoderLayer, cfg, static_argnums=(4,))  # deterministic
    for index in range(cfg.num_encoder_layers):
      x = layer(cfg, name=f"layers_{index}")(x, encoder_mask, bias, deterministic)
    x = _norm(cfg, "encoder_norm")(x)
    return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Embedding, `num_decoder_layers` decoder layers, `decoder_norm` and the logits head."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array,
               decoder_positions: Array | None = None, decoder_mask: Array | None = None,
               encoder_decoder_mask: Array | None = None, deterministic: bool = True,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
    """Returns float32 logits [batch, length, vocab].

    With `decode=True` the self-attention uses the cache; single-step calls must pass
    `max_decode_length` (the cache length) so the position bias row can be selected.
    """
    cfg = self.config
    length = decoder_input_tokens.shape[-1]
    del decoder_positions  # the bias is the row's (module docstring)
    positions = _row_positions((max_decode_length or length) if decode else length)
    bias = _relpos_bias(cfg)(positions, positions, bidirectional=False)
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _residual_dropout(cfg)(y, deterministic=deterministic).astype(cfg.compute_dtype)
    layer = _maybe_remat(DecoderLayer, cfg, static_argnums=(6, 7))  # deterministic, decode
    for index in range(cfg.num_decoder_layers):
      y = layer(cfg, name=f"layers_{index}")(y, encoded, decoder_mask, bias,
                                              encoder_decoder_mask, deterministic, decode)
    y = _norm(cfg, "decoder_norm")(y)
    y = _residual_dropout(cfg)(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32,
                                   kernel_axes=("embed", "vocab"), name="logits_dense")(y)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """T5 v1.1 encoder-decoder (parameter names as in T5X, see the module docstring)."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim,
                                       dtype=cfg.compute_dtype, attend_dtype=jnp.float32)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
             encoder_positions: Array | None = None, enable_dropout: bool = False) -> Array:
    """Encodes token ids [batch, length] (0 = padding) into [batch, length, embed]."""
    dtype = self.config.compute_dtype
    real = encoder_input_tokens > 0
    mask = layers.make_attention_mask(real, real, dtype=dtype)
    if encoder_segment_ids is not None:
      mask = layers.combine_masks(
          mask, layers.make_attention_mask(encoder_segment_ids, encoder_segment_ids,
                                           jnp.equal), dtype=dtype)
    return self.encoder(encoder_input_tokens, mask, encoder_positions,
                        deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: int | None = None) -> Array:
    """Decoder logits [batch, length, vocab] given the encoder output.

    `encoder_input_tokens` only provide the padding mask of the encoder positions. With
    `decode=True` (no packing) the 'cache' collection must be mutable: a full-length call
    creates it, then calls with one token per row [batch, 1] advance it by one step.
    """
    dtype = self.config.compute_dtype
    encoder_real = encoder_input_tokens > 0
    if decode:
      if encoder_segment_ids is not None or decoder_segment_ids is not None:
        raise ValueError("packed inputs (segment ids) cannot be decoded with the cache")
      self_mask = None
      cross_mask = layers.make_attention_mask(jnp.ones_like(decoder_target_tokens, bool),
                                              encoder_real, dtype=dtype)
    else:
      self_mask = layers.make_decoder_mask(decoder_target_tokens, dtype, decoder_segment_ids)
      cross_mask = layers.make_attention_mask(decoder_target_tokens > 0, encoder_real,
                                              dtype=dtype)
      if encoder_segment_ids is not None:
        if decoder_segment_ids is None:
          raise ValueError("encoder_segment_ids given without decoder_segment_ids")
        cross_mask = layers.combine_masks(
            cross_mask, layers.make_attention_mask(decoder_segment_ids, encoder_segment_ids,
                                                   jnp.equal), dtype=dtype)
    return self.decoder(encoded, decoder_input_tokens, decoder_positions, self_mask, cross_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               decode: bool = False) -> Array:
    """Float32 logits [batch, decoder_length, vocab] of the targets given the inputs.

    `decoder_input_tokens` are the targets shifted right (0 starts each segment); 0 in
    `decoder_target_tokens` / `encoder_input_tokens` marks padding.
    """
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, enable_dropout=enable_dropout, decode=decode)
