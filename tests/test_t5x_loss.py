"""Under T5X (its network, its model class API) the loss and gradients are our trainer's."""

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf

pytest.importorskip("t5x", reason="T5X is not installed: bash launch/install_t5x.sh "
                    "../shared/vendor")

# pylint: disable=wrong-import-position
from t5x import adafactor, models
from t5x.examples.t5 import network

from sbs_jax import t5x_model
from sbs_jax.convert import t5x as t5x_format
from sbs_jax.model.config import config_for
from sbs_jax.train import state as state_lib
from tests.helpers.batches import packed_batch, paired_examples

pytestmark = [pytest.mark.t5x]

ALPHA = 0.3


class _Vocab:  # the model classes only ask a vocabulary its size
  vocab_size = 128


@pytest.fixture(scope="module")
def setup():
  config = config_for("tiny", vocab_size=128)
  student = state_lib.build_student(config, optax.sgd(0.1), state_lib.make_mesh((1, 1)))
  params = state_lib.init_state(student, seed=0)["params"]
  module = network.Transformer(t5x_format.t5x_network_config(config))
  kwargs = dict(module=module, input_vocabulary=_Vocab(), output_vocabulary=_Vocab(),
                optimizer_def=adafactor.Adafactor())
  batch = packed_batch(paired_examples(6, np.random.default_rng(0)))
  batch["decoder_loss_weights"] = (batch["decoder_target_tokens"] > 0).astype(np.int32)
  return student, params, kwargs, batch


def test_loss_and_gradients_equal_our_trainers(setup):
  student, params, kwargs, batch = setup
  model = t5x_model.DistillModel(alpha=ALPHA, **kwargs)
  (theirs, metrics), their_grads = jax.value_and_grad(
      lambda p: model.loss_fn(p, batch, None), has_aux=True)(params)
  (ours, label_sum, rationale_sum, counts), our_grads = jax.jit(
      lambda p: state_lib.loss_and_grads(student, p, batch, ALPHA))(params)
  assert abs(float(theirs) - float(ours)) < 1e-5
  for a, b in zip(jax.tree.leaves(their_grads), jax.tree.leaves(our_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
  assert float(metrics["label_loss"].compute()) == pytest.approx(
      float(label_sum / counts[0]), abs=1e-5)
  assert float(metrics["rationale_loss"].compute()) == pytest.approx(
      float(rationale_sum / counts[1]), abs=1e-5)


def test_t5x_stock_loss_is_not_the_papers(setup):
  """What the model class is for: T5X's own loss weighs the tasks by their token counts."""
  _, params, kwargs, batch = setup
  stock, _ = models.EncoderDecoderModel(**kwargs).loss_fn(params, batch, None)
  ours, _ = t5x_model.DistillModel(alpha=ALPHA, **kwargs).loss_fn(params, batch, None)
  assert abs(float(stock) - float(ours)) > 1.0


def test_model_refuses_a_vocabulary_larger_than_the_network(setup):
  _, _, kwargs, _ = setup

  class Big:
    vocab_size = 32100

  with pytest.raises(Exception, match="32100 ids, more than the network's vocab_size 128"):
    t5x_model.DistillModel(**dict(kwargs, output_vocabulary=Big()))


@pytest.mark.parametrize("bad", [dict(max_truncated_share=1.5),
                                 dict(max_truncated_share=-0.1),
                                 dict(length_check_examples=0)])
def test_model_refuses_length_check_settings_out_of_range(setup, bad):
  """Checked in every T5X program, not only where t5x.train runs the check."""
  _, _, kwargs, _ = setup
  with pytest.raises(ValueError, match="out of range: fix its binding"):
    t5x_model.DistillModel(**kwargs, **bad)


def test_converter_takes_the_evaluators_lengths():
  """seqio's Evaluator passes a length for every output feature, `task` included."""
  examples = [{"inputs": [7, 8, 1], "targets": [3, 1], "task": [1]},
              {"inputs": [5, 1], "targets": [4, 4, 1], "task": [1]}]
  sig = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
         "task": tf.TensorSpec([1], tf.int32)}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=sig)
  converter = t5x_model.FeatureConverter(pack=False)
  rows = list(converter(ds, {"inputs": 4, "targets": 3, "task": 1}).as_numpy_iterator())
  assert [list(r["decoder_task_ids"]) for r in rows] == [[1, 1, 0], [1, 1, 1]]
  assert [list(r["decoder_input_tokens"]) for r in rows] == [[0, 3, 0], [0, 4, 4]]
