"""T5 v1.1 building blocks in flax.linen, with T5X parameter names and logical axis names.

Every parameter is created in float32 and boxed with `nn.with_logical_partitioning`, so
`nn.get_partition_spec` on the variables from `init` / `jax.eval_shape(init)` gives the
logical axes that `partitioning.standard_logical_axis_rules` maps onto a device mesh.
Kernels are stored 2-D as in T5X checkpoints: (prod(input dims), prod(output dims)).
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

NEG_INF = -1e10  # additive attention bias of a masked position, as in T5X

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _boxed_param(module: nn.Module, name: str, init: Initializer, shape, axes) -> Array:
  """Creates a float32 parameter annotated with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      jnp.float32)


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class RMSNorm(nn.Module):
  """T5 layer norm: scales by the root mean square, no mean subtraction and no bias."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Normalises the last axis of `x`."""
    x = jnp.asarray(x, jnp.float32)
    mean_square = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = (x * lax.rsqrt(mean_square + self.epsilon)).astype(self.dtype)
    scale = _boxed_param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    return y * scale.astype(self.dtype)


class DenseGeneral(nn.Module):
  """A bias-free linear map contracting `axis` of the input into `features` output dims."""
  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  dtype: Any = jnp.float32
  kernel_init: Initializer = default_kernel_init
  kernel_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """Applies the linear map; output shape is inputs' kept dims followed by `features`."""
    features = _as_tuple(self.features)
    inputs = jnp.asarray(inputs, self.dtype)
    axis = tuple(a % inputs.ndim for a in _as_tuple(self.axis))
    in_dims = tuple(inputs.shape[a] for a in axis)
    kernel = _boxed_param(self, "kernel", self.kernel_init,
                          (int(np.prod(in_dims)), int(np.prod(features))), self.kernel_axes)
    kernel = jnp.reshape(kernel.astype(self.dtype), in_dims + features)
    contracting = (axis, tuple(range(len(axis))))
    return lax.dot_general(inputs, kernel, (contracting, ((), ())))


def _activation(name: str | Callable) -> Callable:
  """Maps "linear" to identity and other names to `flax.linen` activation functions."""
  if callable(name):
    return name
  if name == "linear":
    return lambda x: x
  return getattr(nn, name)


class MlpBlock(nn.Module):
  """Feed-forward block; ("gelu", "linear") activations give T5 v1.1's gated GELU."""
  intermediate_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    """Maps [batch, length, embed] to the same shape."""
    hidden = []
    for index, activation in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{index}"
      x = DenseGeneral(self.intermediate_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                       kernel_axes=("embed", "mlp"), name=name)(inputs)
      hidden.append(_activation(activation)(x))
    x = functools.reduce(operator.mul, hidden)
    x = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "mlp"))
    return DenseGeneral(inputs.shape[-1], dtype=self.dtype, kernel_init=self.kernel_init,
                        kernel_axes=("mlp", "embed"), name="wo")(x)


class Embed(nn.Module):
  """Token embedding table `embedding` [vocab, embed]; `attend` gives tied-output logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  attend_dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)
  one_hot: bool = False

  def setup(self):
    self.embedding = _boxed_param(self, "embedding", self.embedding_init,
                                  (self.num_embeddings, self.features), ("vocab", "embed"))

  def __call__(self, ids: Array) -> Array:
    """Looks up integer ids [...] and returns [..., features] in `dtype`."""
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"token ids must be integers, got {ids.dtype}")
    table = self.embedding.astype(self.dtype)
    if self.one_hot:
      one_hot = jax.nn.one_hot(ids, self.num_embeddings, dtype=self.dtype)
      out = jnp.dot(one_hot, table)
    else:
      out = jnp.take(table, ids, axis=0)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))

  def attend(self, query: Array) -> Array:
    """Returns query · embeddingᵀ, i.e. one logit per vocabulary entry."""
    return jnp.dot(query.astype(self.attend_dtype), self.embedding.astype(self.attend_dtype).T)


def relative_position_bucket(relative_position: Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
  """T5's bucket index of `relative_position` = key position - query position.

  Small distances get their own bucket, larger ones share logarithmically sized buckets,
  and distances >= `max_distance` share the last one. Bidirectional bucketing spends half
  of the buckets on keys after the query; unidirectional (causal) maps those to bucket 0.
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  distance = -relative_position  # > 0 when the key precedes the query
  bucket = jnp.zeros_like(distance)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (distance < 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(distance)
  else:
    distance = jnp.maximum(distance, 0)
  max_exact = num_buckets // 2
  log_ratio = (jnp.log(distance.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
               / np.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
  """Learned per-head attention bias indexed by the bucketed relative position."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array,
               bidirectional: bool = True) -> Array:
    """Returns the bias [1, heads, q_len, k_len] for positions [q_len] and [k_len], one
    for the whole batch (per-row positions would make a [batch, q, k, heads] gather that
    the TPU pads 21x; docs/scale.md)."""
    table = _boxed_param(self, "rel_embedding", self.embedding_init,
                         (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    query_positions, key_positions = jnp.asarray(query_positions), jnp.asarray(key_positions)
    if query_positions.ndim != 1 or key_positions.ndim != 1:
      raise ValueError("relative position bias: positions must be 1-D (one row's arange)")
    relative = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets,
                                       self.max_distance)
    return jnp.take(table.astype(self.dtype), buckets, axis=1)[None]  # [1, heads, q, k]


# ------------------------------------------------------------------------------------------
# Masks: 1 where the query may attend to the key, 0 elsewhere; shape [batch, 1, q, k].
# ------------------------------------------------------------------------------------------
def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable = jnp.multiply, dtype: Any = jnp.float32) -> Array:
  """Mask from `pairwise_fn(query_input[b, q], key_input[b, k])`."""
  mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
  return jnp.expand_dims(mask, -3).astype(dtype)


def make_causal_mask(tokens: Array, dtype: Any = jnp.float32) -> Array:
  """Mask letting each position attend to itself and earlier positions only."""
  index = jnp.broadcast_to(jnp.arange(tokens.shape[-1], dtype=jnp.int32), tokens.shape)
  return make_attention_mask(index, index, jnp.greater_equal, dtype=dtype)


def combine_masks(*masks: Array | None, dtype: Any = jnp.float32) -> Array | None:
  """Logical AND of the masks that are not None (None when all are None)."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  return functools.reduce(jnp.logical_and, present).astype(dtype)


def make_decoder_mask(decoder_target_tokens: Array, dtype: Any = jnp.float32,
                      decoder_segment_ids: Array | None = None) -> Array:
  """Decoder self-attention mask: causal AND non-padding AND same packed segment."""
  real = decoder_target_tokens > 0
  masks = [make_causal_mask(decoder_target_tokens, dtype), make_attention_mask(real, real)]
  if decoder_segment_ids is not None:
    masks.append(make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal))
  return combine_masks(*masks, dtype=dtype)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array | None,
                          dropout: Callable[[Array], Array], dtype: Any = jnp.float32,
                          float32_logits: bool = False) -> Array:
  """Softmax(q·k + bias)·v over [batch, len, heads, head_dim] inputs (no 1/sqrt(d) scaling)."""
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = dropout(jax.nn.softmax(logits).astype(dtype))
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class MultiHeadAttention(nn.Module):
  """T5 multi-head dot-product attention with `query`, `key`, `value`, `out` projections.

  The 1/sqrt(head_dim) logit scaling is folded into the query initialiser, as in T5.
  With `decode=True` the keys and values are kept in the 'cache' collection
  (`cached_key`, `cached_value` [batch, heads, head_dim, max_len] and `cache_index`): the
  first call (full-length inputs) creates the cache, later calls take one position each.
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
  float32_logits: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None,
               bias: Array | None = None, *, decode: bool = False,
               deterministic: bool = True) -> Array:
    """Attends [batch, q_len, embed] queries over [batch, kv_len, embed] keys/values.

    `mask` is [batch, 1, q_len, kv_len] (1 = attend); `bias` broadcasts to
    [batch, heads, q_len, kv_len] (during single-step decoding: the full-length bias, of
    which the row of the current position is used).
    """
    kernel_init = self.kernel_init
    query_init = lambda *args: kernel_init(*args) / np.sqrt(self.head_dim).astype(np.float32)
    projection = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                                   axis=-1, kernel_axes=("embed", "joined_kv"), dtype=self.dtype)
    query = projection(kernel_init=query_init, name="query")(inputs_q)
    key = projection(kernel_init=kernel_init, name="key")(inputs_kv)
    value = projection(kernel_init=kernel_init, name="value")(inputs_kv)
    axes = ("batch", "length", "heads", "kv")
    query, key, value = (nn.with_logical_constraint(t, axes) for t in (query, key, value))

    if decode:
      key, value, mask, bias = self._use_cache(query, key, value, mask, bias)

    attention_bias = None
    if mask is not None:
      attention_bias = jnp.where(mask > 0, 0.0, NEG_INF).astype(self.dtype)
    if bias is not None:
      attention_bias = bias if attention_bias is None else attention_bias + bias

    dropout = functools.partial(
        nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic)
    x = dot_product_attention(query, key, value, attention_bias, dropout, dtype=self.dtype,
                              float32_logits=self.float32_logits)
    return DenseGeneral(inputs_q.shape[-1], axis=(-2, -1), kernel_init=kernel_init,
                        kernel_axes=("joined_kv", "embed"), dtype=self.dtype, name="out")(x)

  def _use_cache(self, query, key, value, mask, bias):
    """Creates the cache, or writes one step into it and returns all cached keys/values."""
    initialised = self.has_variable("cache", "cached_key")
    cache_shape = key.shape[:-3] + (key.shape[-2], key.shape[-1], key.shape[-3])
    cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialised:
      return key, value, mask, bias
    batch, heads, head_dim, max_length = cached_key.value.shape
    if query.shape != (batch, 1, heads, head_dim):
      raise ValueError(f"single-step decoding expects query shape {(batch, 1, heads, head_dim)}"
                       f", got {query.shape}")
    index = cache_index.value
    step_key = jnp.moveaxis(key, -3, -1)  # [batch, heads, head_dim, 1]
    step_value = jnp.moveaxis(value, -3, -1)
    cached_key.value = lax.dynamic_update_slice_in_dim(cached_key.value, step_key, index, -1)
    cached_value.value = lax.dynamic_update_slice_in_dim(cached_value.value, step_value, index,
                                                         -1)
    cache_index.value = index + 1
    key = jnp.moveaxis(cached_key.value, -1, -3)
    value = jnp.moveaxis(cached_value.value, -1, -3)
    filled = jnp.broadcast_to(jnp.arange(max_length) <= index, (batch, 1, 1, max_length))
    mask = combine_masks(mask, filled)
    if bias is not None:
      bias = lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
    return key, value, mask, bias
