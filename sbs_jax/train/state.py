"""The sharded train state and the train step.

Shape first (`jax.eval_shape`), then shardings from T5X's logical axis rules, then a
sharded init; the step is `jax.jit` with those shardings in and out (pjit semantics) over a
('data', 'model') mesh. The state is a plain dict: {"params", "opt_state", "step"}.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sbs_jax.model.student import (  # pylint: disable=unused-import
    BATCH_KEYS, Student, build_student, init_params, make_mesh)
from sbs_jax.train import loss as loss_lib


def init_state(student: Student, seed: int, params: Any = None) -> dict:
  """A sharded train state from a random init, or from given (e.g. imported) params."""

  def make(rng, given):
    p = nn.unbox(init_params(student.model, rng)) if given is None else given
    return {"params": p, "opt_state": student.tx.init(p), "step": jnp.zeros((), jnp.int32)}

  with student.sharding_context():
    if params is None:
      return jax.jit(lambda rng: make(rng, None), out_shardings=student.state_shardings)(
          jax.random.key(seed))
    params = jax.device_put(params, student.param_shardings)
    return jax.jit(lambda given: make(None, given), in_shardings=(student.param_shardings,),
                   out_shardings=student.state_shardings)(params)


def loss_and_grads(student: Student, params, batch: dict, alpha: float,
                   grad_accum_steps: int = 1, rng=None):
  """The paper's loss of a global batch and its gradient (summed over micro-batches).

  With gradient accumulation the batch is cut into `grad_accum_steps` micro-batches; each
  task's token count is that of the whole batch, so the loss and its gradient are exactly
  those of the whole batch in one pass. Returns (loss, label_sum, rationale_sum), grads.
  """
  model = student.model
  dropout = student.config.dropout_rate > 0
  counts = loss_lib.task_token_counts(batch["decoder_task_ids"])

  def micro_loss(p, micro, micro_rng):
    logits = model.apply(
        {"params": p}, micro["encoder_input_tokens"], micro["decoder_input_tokens"],
        micro["decoder_target_tokens"], micro["encoder_segment_ids"],
        micro["decoder_segment_ids"], micro["encoder_positions"], micro["decoder_positions"],
        enable_dropout=dropout, rngs={"dropout": micro_rng} if dropout else None)
    label_sum, rationale_sum = loss_lib.task_sums(logits, micro["decoder_target_tokens"],
                                                  micro["decoder_task_ids"])
    return loss_lib.distill_loss(label_sum, rationale_sum, *counts, alpha), (label_sum,
                                                                             rationale_sum)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
  rng = jax.random.key(0) if rng is None else rng
  # Micro-batch i holds rows i, i + k, i + 2k, ...: every data shard splits its own rows
  # among the micro-batches. (Consecutive rows per micro-batch put each one on a few
  # shards, and the TPU compiler moved the batch between chips at every micro-step.)
  micro = jax.tree.map(
      lambda x: x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps)
                          + x.shape[1:]).swapaxes(0, 1),
      batch)

  def accumulate(carry, inputs):
    mb, i = inputs
    (loss, sums), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    total_loss, total_sums, total_grads = carry
    return (total_loss + loss, jax.tree.map(jnp.add, total_sums, sums),
            jax.tree.map(jnp.add, total_grads, grads)), None

  if grad_accum_steps == 1:  # no loop: XLA then fuses and lays out the step as a whole
    (loss, (label_sum, rationale_sum)), grads = grad_fn(params, batch, jax.random.fold_in(rng, 0))
    return (loss, label_sum, rationale_sum, counts), grads
  zeros = (jnp.zeros(()), (jnp.zeros(()), jnp.zeros(())), jax.tree.map(jnp.zeros_like, params))
  (loss, (label_sum, rationale_sum), grads), _ = jax.lax.scan(
      accumulate, zeros, (micro, jnp.arange(grad_accum_steps)))
  return (loss, label_sum, rationale_sum, counts), grads


def make_train_step(student: Student, alpha: float, grad_accum_steps: int = 1,
                    seed: int = 0):
  """jit(state, batch) -> (state, metrics): one optimizer step over a global batch."""

  def step_fn(state, batch):
    params = state["params"]
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    (loss, label_sum, rationale_sum, counts), grads = loss_and_grads(
        student, params, batch, alpha, grad_accum_steps, rng)
    updates, opt_state = student.tx.update(grads, state["opt_state"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
                 "step": state["step"] + 1}
    metrics = {
        "loss": loss,
        "label_loss": label_sum / jnp.maximum(counts[0], 1.0),
        "rationale_loss": rationale_sum / jnp.maximum(counts[1], 1.0),
        "label_tokens": counts[0], "rationale_tokens": counts[1],
        # Label targets begun in this batch: one per example (paired: per record).
        "examples": jnp.sum((batch["decoder_positions"] == 0)
                            & (batch["decoder_task_ids"] == loss_lib.LABEL)),
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics

  jitted = jax.jit(step_fn, in_shardings=(student.state_shardings, batch_shardings(student)),
                   out_shardings=(student.state_shardings, student.replicated),
                   donate_argnums=(0,))

  def train_step(state, batch):
    with student.sharding_context():
      return jitted(state, batch)

  train_step.jitted = jitted  # for ahead-of-time lowering (cost analysis in `sbs bench`)
  return train_step


def batch_shardings(student: Student) -> dict:
  return {k: student.batch_sharding for k in BATCH_KEYS}


def global_batch(student: Student, local_batch: dict) -> dict:
  """Per-host numpy rows -> global arrays sharded over the 'data' axis."""
  return {k: jax.make_array_from_process_local_data(student.batch_sharding, local_batch[k])
          for k in BATCH_KEYS}
