"""The paper's multi-task loss over one packed forward pass.

    L = alpha * CE_label + (1 - alpha) * CE_rationale

each CE the mean token cross-entropy over that task's target tokens in the (whole,
accumulated) batch, told apart by `decoder_task_ids` (1 label, 2 rationale, 0 padding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LABEL, RATIONALE = 1, 2


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token cross-entropy [batch, length] in float32: logsumexp(z) - z[target].

  The gradient is written by hand, softmax(z) - onehot(target) scaled by the incoming
  cotangent, so that XLA computes it in one elementwise pass over the [batch, length,
  vocab] logits; differentiating `log_softmax` + `take_along_axis` instead costs a
  zero-filled buffer and a scatter of that size.
  """
  return _cross_entropy(logits, targets)


def _onehot(targets, vocab: int, dtype):
  return (jax.lax.broadcasted_iota(jnp.int32, targets.shape + (vocab,), targets.ndim)
          == targets[..., None]).astype(dtype)


@jax.custom_vjp
def _cross_entropy(logits, targets):
  return _cross_entropy_fwd(logits, targets)[0]


def _cross_entropy_fwd(logits, targets):
  z = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  target_logit = jnp.sum(z * _onehot(targets, z.shape[-1], z.dtype), axis=-1)
  return lse - target_logit, (logits, targets, lse)


def _cross_entropy_bwd(residuals, g):
  logits, targets, lse = residuals
  z = logits.astype(jnp.float32)
  grad = (jnp.exp(z - lse[..., None]) - _onehot(targets, z.shape[-1], z.dtype)) * g[..., None]
  return grad.astype(logits.dtype), None


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def task_token_counts(task_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Numbers of label and rationale target tokens."""
  return ((task_ids == LABEL).sum().astype(jnp.float32),
          (task_ids == RATIONALE).sum().astype(jnp.float32))


def task_sums(logits: jax.Array, targets: jax.Array, task_ids: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
  """Summed cross-entropy of label tokens and of rationale tokens."""
  ce = token_cross_entropy(logits, targets)
  return ((ce * (task_ids == LABEL)).sum(), (ce * (task_ids == RATIONALE)).sum())


def distill_loss(label_sum, rationale_sum, label_count, rationale_count, alpha: float):
  """alpha * mean label CE + (1 - alpha) * mean rationale CE; a task absent adds 0.

  The counts are those of the whole batch, so that sums over micro-batches of gradient
  accumulation give exactly the loss of the whole batch.
  """
  label_term = label_sum / jnp.maximum(label_count, 1.0)
  rationale_term = rationale_sum / jnp.maximum(rationale_count, 1.0)
  return alpha * label_term + (1.0 - alpha) * rationale_term
