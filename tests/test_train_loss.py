"""The paper's loss from one packed pass equals the two-pass computation; accumulation is exact."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbs_jax.model.config import config_for
from sbs_jax.train import loss as loss_lib
from sbs_jax.train import state as state_lib
from sbs_jax.train.state import build_student, init_state, make_mesh
from tests.helpers.batches import packed_batch, paired_examples

ALPHA = 0.3


def loss_and_grads(student, params, batch, alpha, accum=1):
  fn = jax.jit(lambda p, b: state_lib.loss_and_grads(student, p, b, alpha, accum))
  return fn(params, batch)


def one_example_ce(student, params, inputs, targets, length=16):
  """Token cross-entropies of one example run alone (padded to a fixed shape)."""
  pad = lambda ids: jnp.asarray([ids + [0] * (length - len(ids))])
  enc, tgt = pad(inputs), pad(targets)
  dec_in = pad([0] + targets[:-1])
  ce = _ce(student.model, params, enc, dec_in, tgt)
  return np.asarray(ce[0, :len(targets)])


@functools.partial(jax.jit, static_argnums=0)
def _ce(model, params, enc, dec_in, tgt):
  return loss_lib.token_cross_entropy(model.apply({"params": params}, enc, dec_in, tgt), tgt)


@pytest.fixture(scope="module")
def student_and_params():
  config = config_for("tiny", vocab_size=128)
  student = build_student(config, optax.sgd(0.1), make_mesh((1, 1)))
  return student, init_state(student, seed=0)["params"]


def test_one_packed_pass_equals_two_passes(student_and_params):
  student, params = student_and_params
  examples = paired_examples(6, np.random.default_rng(0))
  batch = packed_batch(examples)
  assert batch["encoder_input_tokens"].shape[0] < len(examples)  # really packed
  (loss, _, _, _), _ = loss_and_grads(student, params, batch, ALPHA)

  label_ce, rationale_ce = [], []
  for p, l, e, r in examples:  # pass 1: predict -> label; pass 2: explain -> rationale
    for inputs, targets, bucket in ((p, l, label_ce), (e, r, rationale_ce)):
      bucket.extend(one_example_ce(student, params, inputs, targets))
  direct = ALPHA * np.mean(label_ce) + (1 - ALPHA) * np.mean(rationale_ce)
  assert abs(float(loss) - direct) < 1e-5


def test_label_only_batches_give_the_label_loss(student_and_params):
  student, params = student_and_params
  examples = [(p, l, [], []) for p, l, _, _ in paired_examples(4, np.random.default_rng(1))]
  batch = packed_batch(examples)
  (loss_half, _, _, _), _ = loss_and_grads(student, params, batch, 0.5)
  (loss_one, label_sum, _, counts), _ = loss_and_grads(student, params, batch, 1.0)
  assert float(counts[1]) == 0
  assert float(loss_one) == pytest.approx(float(label_sum / counts[0]), abs=1e-6)
  assert float(loss_half) == pytest.approx(0.5 * float(loss_one), abs=1e-6)


def test_gradient_accumulation_is_exact(student_and_params):
  student, params = student_and_params
  batch = packed_batch(paired_examples(12, np.random.default_rng(2)), enc_len=32, dec_len=24)
  rows = batch["encoder_input_tokens"].shape[0] // 2 * 2
  batch = {k: v[:rows] for k, v in batch.items()}
  (loss1, *_), grads1 = loss_and_grads(student, params, batch, ALPHA, 1)
  (loss2, *_), grads2 = loss_and_grads(student, params, batch, ALPHA, 2)
  assert abs(float(loss1) - float(loss2)) < 1e-5
  for g1, g2 in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads2)):
    np.testing.assert_allclose(g1, g2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_both_optimizers_step_and_fit_a_batch(name):
  from sbs_jax.train.config import OptimizerConfig
  from sbs_jax.train.optim import make_optimizer
  config = config_for("tiny", vocab_size=128)
  tx = make_optimizer(OptimizerConfig(name=name, learning_rate=1e-2, schedule="constant"), 10)
  student = build_student(config, tx, make_mesh((1, 1)))
  state = init_state(student, seed=0)
  batch = state_lib.global_batch(student, packed_batch(paired_examples(
      6, np.random.default_rng(3))))
  step = state_lib.make_train_step(student, ALPHA)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.1
  assert int(state["step"]) == 4


def test_linear_schedule_warms_up_and_decays_to_zero():
  from sbs_jax.train.config import OptimizerConfig
  from sbs_jax.train.optim import learning_rate_schedule
  schedule = learning_rate_schedule(OptimizerConfig(learning_rate=5e-5, warmup_steps=10), 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(5e-5)
  assert float(schedule(60)) == pytest.approx(2.5e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cross_entropy_and_its_hand_written_gradient_match_autodiff(dtype):
  """token_cross_entropy's custom gradient equals autodiff of log_softmax + a gather."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(0, 3, (3, 5, 37)), dtype)
  targets = jnp.asarray(rng.integers(0, 37, (3, 5)), jnp.int32)
  weights = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)  # an arbitrary cotangent

  def plain(z):
    log_probs = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]

  ours = loss_lib.token_cross_entropy(logits, targets)
  np.testing.assert_allclose(ours, plain(logits), rtol=1e-6, atol=1e-5)
  grad = jax.grad(lambda z: (loss_lib.token_cross_entropy(z, targets) * weights).sum())
  want = jax.grad(lambda z: (plain(z) * weights).sum())
  assert grad(logits).dtype == dtype
  np.testing.assert_allclose(np.asarray(grad(logits), np.float32),
                             np.asarray(want(logits), np.float32), rtol=1e-5, atol=1e-6)
