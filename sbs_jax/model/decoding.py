"""Greedy decoding and length-normalised beam search over the cached `Transformer` decoder,
and rank classification: the log-likelihood of given candidate targets.

The decoding functions are jit-compiled (the model and the lengths are static), encode
once, and then run the decoder one position per step with the 'cache' collection. Decoding
starts from token 0, stops a row at EOS (id 1, kept in the output) and pads with 0
afterwards. `score_candidates` encodes each input once too, then runs the decoder over
all candidates of all rows in one teacher-forced pass (no cache), each row's candidates
packed one after another in one decoder row.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sbs_jax.model.network import Transformer

Array = jax.Array

EOS_ID = 1
PAD_ID = 0
DECODER_START_ID = 0
_DEAD = -1.0e9  # log-probability of an empty beam slot (finite, so no inf - inf)


def init_decoding_cache(model: Transformer, params, encoded: Array, encoder_input_tokens: Array,
                        max_decode_length: int):
  """Zero key/value cache for decoding `max_decode_length` positions per row of `encoded`."""
  dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)

  def make_cache():
    _, variables = model.apply({"params": params}, encoded, encoder_input_tokens, dummy, dummy,
                               decode=True, max_decode_length=max_decode_length,
                               method=Transformer.decode, mutable=["cache"])
    return variables["cache"]

  shapes = jax.eval_shape(make_cache)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(model: Transformer, params, cache, encoded: Array, encoder_input_tokens: Array,
                tokens: Array, max_decode_length: int) -> tuple[Array, object]:
  """Feeds one token per row [batch] and returns (float32 logits [batch, vocab], new cache)."""
  tokens = tokens[:, None]
  logits, variables = model.apply({"params": params, "cache": cache}, encoded,
                                  encoder_input_tokens, tokens, tokens, decode=True,
                                  max_decode_length=max_decode_length, method=Transformer.decode,
                                  mutable=["cache"])
  return logits[:, 0, :], variables["cache"]


def _encode(model: Transformer, params, encoder_input_tokens: Array) -> Array:
  return model.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def greedy_decode(model: Transformer, params, encoder_input_tokens: Array,
                  max_decode_length: int, eos_id: int = EOS_ID) -> Array:
  """Most likely next token at every step; returns token ids [batch, max_decode_length]."""
  params = nn.unbox(params)
  batch = encoder_input_tokens.shape[0]
  encoded = _encode(model, params, encoder_input_tokens)
  cache = init_decoding_cache(model, params, encoded, encoder_input_tokens, max_decode_length)

  def not_done(state):
    step, _, _, finished, _ = state
    return (step < max_decode_length) & ~jnp.all(finished)

  def advance(state):
    step, cache, previous, finished, output = state
    logits, cache = decode_step(model, params, cache, encoded, encoder_input_tokens, previous,
                                max_decode_length)
    token = jnp.where(finished, PAD_ID, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    output = lax.dynamic_update_slice_in_dim(output, token[:, None], step, axis=1)
    return step + 1, cache, token, finished | (token == eos_id), output

  state = (jnp.array(0, jnp.int32), cache, jnp.full((batch,), DECODER_START_ID, jnp.int32),
           jnp.zeros((batch,), bool), jnp.full((batch, max_decode_length), PAD_ID, jnp.int32))
  return lax.while_loop(not_done, advance, state)[-1]


def length_penalty(length: Array, alpha: float) -> Array:
  """GNMT length normalisation ((5 + length) / 6) ** alpha (1 when alpha is 0)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, origin: Array) -> Array:
  """Selects x[b, origin[b, j]] for x [batch, beams, ...] and origin [batch, new_beams]."""
  return x[jnp.arange(x.shape[0])[:, None], origin]


def _reorder_cache(cache, origin: Array, beam_size: int):
  """Reorders the flattened [batch * beams, ...] cache entries after beam selection."""
  def reorder(leaf):
    if leaf.ndim == 0:  # the shared cache index
      return leaf
    split = leaf.reshape((-1, beam_size) + leaf.shape[1:])
    return _gather_beams(split, origin).reshape(leaf.shape)
  return jax.tree_util.tree_map(reorder, cache)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "beam_size",
                                             "alpha", "return_scores"))
def beam_search(model: Transformer, params, encoder_input_tokens: Array, max_decode_length: int,
                beam_size: int = 4, alpha: float = 0.6, eos_id: int = EOS_ID,
                return_scores: bool = False):
  """Length-normalised beam search; returns the best token ids [batch, max_decode_length].

  A hypothesis is scored by log p / length_penalty(length, alpha) when it emits EOS or
  reaches `max_decode_length`. With `return_scores` also returns those scores [batch].
  """
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0 for the early-stopping bound, got {alpha}")
  params = nn.unbox(params)
  batch, k, length = encoder_input_tokens.shape[0], beam_size, max_decode_length
  encoded = _encode(model, params, encoder_input_tokens)
  encoded = jnp.repeat(encoded, k, axis=0)
  encoder_tokens = jnp.repeat(encoder_input_tokens, k, axis=0)
  cache = init_decoding_cache(model, params, encoded, encoder_tokens, length)
  positions = jnp.arange(length)

  def not_done(state):
    step, _, _, live_logprobs, _, finished_scores = state
    best_possible = jnp.max(live_logprobs, axis=1) / length_penalty(length, alpha)
    settled = jnp.min(finished_scores, axis=1) >= best_possible
    return (step < length) & ~jnp.all(settled)

  def advance(state):
    step, cache, live_seqs, live_logprobs, finished_seqs, finished_scores = state
    previous = lax.dynamic_index_in_dim(live_seqs, jnp.maximum(step - 1, 0), axis=2,
                                        keepdims=False)
    previous = jnp.where(step == 0, DECODER_START_ID, previous).reshape(batch * k)
    logits, cache = decode_step(model, params, cache, encoded, encoder_tokens, previous, length)
    vocab = logits.shape[-1]
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
    candidates = (live_logprobs[:, :, None] + logprobs).reshape(batch, k * vocab)
    # 2k candidates leave k that do not end in EOS even if k of them do.
    top_logprobs, top_index = lax.top_k(candidates, 2 * k)
    origin, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = jnp.where(positions == step, token[:, :, None], _gather_beams(live_seqs, origin))
    ends = token == eos_id

    done_now = ends | (step == length - 1)
    scores = jnp.where(done_now, top_logprobs / length_penalty(step + 1, alpha), _DEAD)
    all_scores = jnp.concatenate([finished_scores, scores], axis=1)
    finished_scores, keep = lax.top_k(all_scores, k)
    finished_seqs = _gather_beams(jnp.concatenate([finished_seqs, seqs], axis=1), keep)

    live_logprobs, keep = lax.top_k(jnp.where(ends, _DEAD, top_logprobs), k)
    live_seqs = _gather_beams(seqs, keep)
    cache = _reorder_cache(cache, _gather_beams(origin, keep), k)
    return step + 1, cache, live_seqs, live_logprobs, finished_seqs, finished_scores

  empty = jnp.full((batch, k, length), PAD_ID, jnp.int32)
  live_logprobs = jnp.tile(jnp.array([0.0] + [_DEAD] * (k - 1), jnp.float32), (batch, 1))
  state = (jnp.array(0, jnp.int32), cache, empty, live_logprobs, empty,
           jnp.full((batch, k), _DEAD, jnp.float32))
  *_, finished_seqs, finished_scores = lax.while_loop(not_done, advance, state)
  if return_scores:
    return finished_seqs[:, 0], finished_scores[:, 0]
  return finished_seqs[:, 0]


@functools.partial(jax.jit, static_argnames=("model", "slots"))
def score_candidates(model: Transformer, params, encoder_input_tokens: Array,
                     candidate_tokens: Array, candidate_segments: Array, slots: int) -> Array:
  """Log-likelihood [batch, slots] of each row's candidate targets given its input.

  A row's candidates lie one after another in `candidate_tokens` [batch, length], each
  its ids ending with EOS, as the label task's targets are; `candidate_segments` is j + 1
  on candidate j's tokens and 0 on the padding after them. A score is the sum of the
  log-probabilities of the candidate's tokens, EOS included, teacher-forced (the decoder
  sees 0 then the candidate's own tokens, as in training).

  Each input is encoded once, and the decoder runs once over the row of packed candidates:
  they all attend to the same encoder states (neither copied nor projected again per
  candidate), and, through the causal and segment mask, each to its own earlier tokens
  alone. The relative position bias depends only on the distance between two positions,
  so a candidate sees what a decoder row of its own would. A slot with no candidate (a row
  with fewer than `slots`) scores -inf.
  """
  params = nn.unbox(params)
  encoded = _encode(model, params, encoder_input_tokens)
  previous = jnp.pad(candidate_tokens[:, :-1], ((0, 0), (1, 0)))
  starts = candidate_segments != jnp.pad(candidate_segments[:, :-1], ((0, 0), (1, 0)))
  inputs = jnp.where(starts, DECODER_START_ID, previous)  # shifted right within a candidate
  logits = model.apply({"params": params}, encoded, encoder_input_tokens, inputs,
                       candidate_tokens, decoder_segment_ids=candidate_segments,
                       method=Transformer.decode)
  logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logprobs = jnp.take_along_axis(logprobs, candidate_tokens[..., None], axis=-1)
  slot = candidate_segments[:, :, None] == jnp.arange(1, slots + 1)[None, None, :]
  scores = jnp.sum(jnp.where(slot, token_logprobs, 0.0), axis=1)  # [batch, slots]
  return jnp.where(jnp.any(slot, axis=1), scores, -jnp.inf)
