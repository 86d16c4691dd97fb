"""Run as a script with 8 forced CPU devices (see test_sharded_train.py): one sharded step of
the paper's loss on a data x model mesh vs one device. Prints one JSON line."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # pylint: disable=wrong-import-position

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from sbs_jax.model.config import config_for  # pylint: disable=wrong-import-position
from sbs_jax.model import student as student_lib  # pylint: disable=wrong-import-position
from sbs_jax.train import state as state_lib  # pylint: disable=wrong-import-position

# An independent statement of T5X's rules for parameters (1-D and 2-D parameter sharding).
EXPECTED_AXIS = {1: {"vocab": "model", "mlp": "model", "joined_kv": "model", "heads": "model",
                     "embed": None, "relpos_buckets": None},
                 2: {"vocab": "model", "mlp": "model", "joined_kv": "model", "heads": "model",
                     "embed": "data", "relpos_buckets": None}}


def batch(rng, rows=8, enc=16, dec=12):
  tokens = lambda n: rng.integers(2, 120, (rows, n)).astype(np.int32)
  b = {"encoder_input_tokens": tokens(enc), "decoder_target_tokens": tokens(dec)}
  b["encoder_input_tokens"][:, -3:] = 0
  b["decoder_target_tokens"][:, -2:] = 0
  b["decoder_input_tokens"] = np.pad(b["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
  for side, key in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
    real = (b[key] != 0).astype(np.int32)
    b[f"{side}_segment_ids"] = real
    b[f"{side}_positions"] = (np.cumsum(real, axis=1) - 1) * real
  task = rng.integers(1, 3, (rows, dec)).astype(np.int32)
  b["decoder_task_ids"] = task * (b["decoder_target_tokens"] != 0)
  return b


def main():
  param_dims = int(sys.argv[1])
  config = config_for("tiny", vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64)
  tx = optax.adamw(1e-3)
  single = state_lib.build_student(config, tx, state_lib.make_mesh((1, 1)))
  sharded = state_lib.build_student(config, tx, state_lib.make_mesh((2, 4)), (1, param_dims))
  state = state_lib.init_state(single, seed=0)
  params_1 = state["params"]
  params_8 = jax.device_put(jax.device_get(params_1), sharded.param_shardings)
  b = batch(np.random.default_rng(0))

  def run(student, params):
    fn = jax.jit(lambda p, x: state_lib.loss_and_grads(student, p, x, 0.4),
                 in_shardings=(student.param_shardings, state_lib.batch_shardings(student)))
    with student.sharding_context():
      (loss, *_), grads = fn(params, state_lib.global_batch(student, b))
    return float(loss), jax.device_get(grads), grads

  loss_1, grads_1, _ = run(single, params_1)
  loss_8, grads_8, grads_8_dev = run(sharded, params_8)
  grad_diff = max(float(np.max(np.abs(a - b_))) for a, b_ in
                  zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8)))

  # Every parameter placed as the rules say.
  boxed = jax.eval_shape(lambda: state_lib.init_params(sharded.model, jax.random.key(0)))
  names = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  wrong = []
  full = state_lib.init_state(sharded, seed=0)["params"]
  for (path, arr), logical in zip(jax.tree_util.tree_leaves_with_path(full), names):
    want = tuple(EXPECTED_AXIS[param_dims][n] for n in logical)
    got = tuple(arr.sharding.spec) + (None,) * (arr.ndim - len(arr.sharding.spec))
    if got != want:
      wrong.append(f"{jax.tree_util.keystr(path)}: {got} != {want}")
  # One full train step (AdamW) on the mesh gives the same loss as on one device.
  step_8 = state_lib.make_train_step(sharded, 0.4)
  state_8 = state_lib.init_state(sharded, seed=0)
  _, metrics_8 = step_8(state_8, state_lib.global_batch(sharded, b))
  # Evaluation decoding split over the data axis gives the single device's ids.
  rows = np.random.default_rng(1).integers(2, 128, (5, 10)).astype(np.int32)
  decoded = {}
  for beam in (1, 2):
    ids_1 = student_lib.decode(single, params_1, rows, 3, 6, beam_size=beam)
    ids_8 = student_lib.decode(sharded, params_8, rows, 3, 6, beam_size=beam)
    decoded[beam] = {"equal": bool(np.array_equal(ids_1, ids_8)), "shape": list(ids_8.shape)}
  chunk = student_lib.sharded_rows(sharded, rows[:4])
  print(json.dumps({"devices": jax.device_count(), "loss_1": loss_1, "loss_8": loss_8,
                    "decoded": decoded, "decode_rows_spec": str(chunk.sharding.spec),
                    "decode_rows_per_device": sorted({s.data.shape[0]
                                                      for s in chunk.addressable_shards}),
                    "grad_max_abs_diff": grad_diff, "wrong_shardings": wrong,
                    "step_loss_8": float(metrics_8["loss"]),
                    "grad_leaf_sharded": str(jax.tree.leaves(grads_8_dev)[-1].sharding.spec)}))


if __name__ == "__main__":
  main()
