"""Hyperparameters of the T5 v1.1 student networks and the published model sizes."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5 v1.1 encoder-decoder.

  `dtype` is the compute dtype ("float32" or "bfloat16"); parameters are always
  stored in float32 and logits are always returned in float32.

  `remat_policy` trades compute for memory in training: which activations of each encoder
  and decoder layer the forward pass keeps for the backward pass (`flax.linen.remat`). It
  changes neither the parameters nor the results, only what a gradient costs.
    "none": keep them all (fastest; activation memory grows with every layer's internals).
    "full": keep only each layer's inputs and recompute the whole layer in the backward
      pass (about one more forward pass of compute; the least memory).
    "dots": keep the layer inputs and the outputs of the projections (the matmuls
      without batch dimensions: query/key/value/out, wi_0/wi_1; wo's output only feeds
      the residual sum and is not needed) and recompute the rest (norms, attention scores
      and softmax, the gated GELU) in the backward pass:
      `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`. In between: no matmul
      with weights is recomputed, and the attention probabilities are not kept.
  """
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  head_dim: int
  mlp_dim: int
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False
  dtype: str = "float32"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  float32_attention_logits: bool = False
  remat_policy: str = "none"

  def __post_init__(self):
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {list(REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    # Accept lists from config files but keep the dataclass hashable.
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))

  @property
  def compute_dtype(self):
    """The jnp dtype activations are computed in."""
    return _DTYPES[self.dtype]


_T5_V1_1_VOCAB = 32128

SIZES: dict[str, T5Config] = {
    "tiny": T5Config(vocab_size=512, emb_dim=32, num_heads=4, num_encoder_layers=2,
                     num_decoder_layers=2, head_dim=8, mlp_dim=64),
    "small": T5Config(vocab_size=_T5_V1_1_VOCAB, emb_dim=512, num_heads=6, num_encoder_layers=8,
                      num_decoder_layers=8, head_dim=64, mlp_dim=1024),
    "base": T5Config(vocab_size=_T5_V1_1_VOCAB, emb_dim=768, num_heads=12, num_encoder_layers=12,
                     num_decoder_layers=12, head_dim=64, mlp_dim=2048),
    "large": T5Config(vocab_size=_T5_V1_1_VOCAB, emb_dim=1024, num_heads=16,
                      num_encoder_layers=24, num_decoder_layers=24, head_dim=64, mlp_dim=2816),
    "xl": T5Config(vocab_size=_T5_V1_1_VOCAB, emb_dim=2048, num_heads=32, num_encoder_layers=24,
                   num_decoder_layers=24, head_dim=64, mlp_dim=5120),
    "xxl": T5Config(vocab_size=_T5_V1_1_VOCAB, emb_dim=4096, num_heads=64, num_encoder_layers=24,
                    num_decoder_layers=24, head_dim=64, mlp_dim=10240),
}


def config_for(size: str, **overrides) -> T5Config:
  """Returns the config of a named size ("tiny", "small", ... "xxl") with fields overridden."""
  if size not in SIZES:
    raise KeyError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
  return dataclasses.replace(SIZES[size], **overrides)


def size_order(size: str) -> float:
  """Known sizes in parameter order (tiny < small < ... < xxl), others after."""
  names = list(SIZES)
  return names.index(size) if size in names else math.inf
