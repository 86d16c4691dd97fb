"""Preprocessors and the feature converter over in-memory sources (SeqIO-style unit tests)."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from sbs_jax.data import preprocessors as pp
from sbs_jax.data import vocab as vocab_lib
from sbs_jax.data.features import DistillFeatureConverter, segments_and_positions

TEXTS = ["predict: explain: where do trains stop?", "train station", "park", "bus stop",
         "Trains stop at stations. Of the choices only a train station fits."] * 20


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
  path = tmp_path_factory.mktemp("spm") / "tiny.model"
  vocab_lib.train_vocabulary(TEXTS, path, vocab_size=320)
  return seqio.SentencePieceVocabulary(str(path))


def record(i, label="train station", llm_label="park", rationale="Trains stop there.",
           parse_ok=1, has_label=1, evaluation=0):
  return {"id": f"r{i}", "index": i, "input": f"where do trains stop {i}?", "label": label,
          "llm_label": llm_label if parse_ok else "", "rationale": rationale,
          "parse_ok": parse_ok, "has_label": has_label, "evaluation": evaluation}


def dataset(records):
  keys = records[0].keys()
  return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in records] for k in keys})


def texts(ds):
  return [(ex["inputs"].decode(), ex["targets"].decode(), int(ex["task"]))
          for ex in ds.as_numpy_iterator()]


def test_label_examples_gold_and_teacher():
  recs = [record(0), record(1, has_label=0, label=""), record(2, parse_ok=0)]
  gold = texts(pp.label_examples(dataset(recs), "label"))
  assert gold == [("predict: where do trains stop 0?", "train station", pp.LABEL),
                  ("predict: where do trains stop 2?", "train station", pp.LABEL)]
  teacher = texts(pp.label_examples(dataset(recs), "llm_label", prefix=""))
  assert teacher == [("where do trains stop 0?", "park", pp.LABEL),
                     ("where do trains stop 1?", "park", pp.LABEL)]


def test_label_llm_on_evaluation_splits_uses_gold():
  recs = [record(0, evaluation=1), record(1, parse_ok=0, evaluation=1),
          record(2, has_label=0, label="", evaluation=1)]
  got = texts(pp.label_examples(dataset(recs), "llm_label"))
  assert [t for _, t, _ in got] == ["train station", "train station", "park"]


def test_rationale_examples_leave_out_unparsed_and_empty():
  recs = [record(0), record(1, parse_ok=0), record(2, rationale="  ")]
  assert texts(pp.rationale_examples(dataset(recs))) == [
      ("explain: where do trains stop 0?", "Trains stop there.", pp.RATIONALE)]


def test_bad_label_field_is_refused():
  with pytest.raises(ValueError):
    pp.label_examples(dataset([record(0)]), "gold")


def test_paired_examples(vocabulary):
  features = {"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)}
  recs = [record(0), record(1, parse_ok=0, rationale="")]
  got = list(pp.paired_examples(dataset(recs), features, "label", input_length=6,
                                label_length=64, rationale_length=3).as_numpy_iterator())
  eos = vocabulary.eos_id
  full, alone = got
  predict = list(vocabulary.encode("predict: where do trains stop 0?"))[:5] + [eos]
  explain = list(vocabulary.encode("explain: where do trains stop 0?"))[:5] + [eos]
  label = list(vocabulary.encode("train station")) + [eos]
  rationale = list(vocabulary.encode("Trains stop there."))[:2] + [eos]
  assert list(full["inputs"]) == predict + explain
  assert list(full["inputs_part"]) == [1] * 6 + [2] * 6
  assert list(full["targets"]) == label + rationale
  assert list(full["targets_part"]) == [1] * len(label) + [2] * 3
  assert list(alone["targets_part"]) == [1] * len(label)  # no rationale part
  assert list(alone["inputs_part"]) == [1] * 6


def convert(examples, lengths, pack=True):
  keys = examples[0].keys()
  def gen():
    yield from examples
  sig = {k: tf.TensorSpec([None] if np.ndim(examples[0][k]) else [], tf.int32)
         for k in keys}
  ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
  out = DistillFeatureConverter(pack=pack)(ds, lengths)
  return list(out.as_numpy_iterator())


def test_converter_packs_plain_examples_with_task_ids():
  examples = [{"inputs": [7, 8, 1], "targets": [3, 9, 1], "task": 1},
              {"inputs": [5, 1], "targets": [4, 4, 4, 1], "task": 2}]
  (row,) = convert(examples, {"inputs": 6, "targets": 8})
  np.testing.assert_array_equal(row["encoder_input_tokens"], [7, 8, 1, 5, 1, 0])
  np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 1, 4, 4, 0])
  np.testing.assert_array_equal(row["encoder_positions"], [0, 1, 2, 0, 1, 0])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [3, 9, 1, 4, 4, 4, 1, 0])
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 4, 4, 4, 4, 0])
  np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 3, 9, 0, 4, 4, 4, 0])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 0, 1, 2, 3, 0])
  np.testing.assert_array_equal(row["decoder_task_ids"], [1, 1, 1, 2, 2, 2, 2, 0])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [1] * 7 + [0])


def test_converter_keeps_both_parts_of_a_paired_example_together():
  unit = {"inputs": [7, 8, 1, 6, 1], "inputs_part": [1, 1, 1, 2, 2],
          "targets": [3, 1, 9, 9, 1], "targets_part": [1, 1, 2, 2, 2], "task": 1}
  rows = convert([unit, unit, unit], {"inputs": 12, "targets": 12})
  assert len(rows) == 2  # two units fit a row; the third goes whole into the next
  first = rows[0]
  np.testing.assert_array_equal(first["encoder_segment_ids"],
                                [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 0, 0])
  np.testing.assert_array_equal(first["decoder_segment_ids"],
                                [1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 0, 0])
  np.testing.assert_array_equal(first["decoder_task_ids"],
                                [1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 0, 0])
  np.testing.assert_array_equal(first["decoder_input_tokens"],
                                [0, 3, 0, 9, 9, 0, 3, 0, 9, 9, 0, 0])
  # Each label part pairs with its predict input, each rationale with its explain input.
  for seg in (1, 2, 3, 4):
    enc_part = set(np.asarray([1, 1, 1, 2, 2] * 2)[first["encoder_segment_ids"][:10] == seg])
    dec_part = set(first["decoder_task_ids"][first["decoder_segment_ids"] == seg])
    assert enc_part == dec_part and len(enc_part) == 1


def test_converter_without_packing():
  unit = {"inputs": [7, 1, 6, 1], "inputs_part": [1, 1, 2, 2], "targets": [3, 1, 9, 1],
          "targets_part": [1, 1, 2, 2], "task": 1}
  (row,) = convert([unit], {"inputs": 6, "targets": 5}, pack=False)
  np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 2, 2, 0, 0])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 3, 0, 9, 0])


def test_segments_and_positions():
  seg, pos = segments_and_positions(tf.constant([1, 1, 1, 2, 2, 0]),
                                    tf.constant([1, 2, 2, 1, 1, 1]))
  np.testing.assert_array_equal(seg, [1, 2, 2, 3, 3, 0])
  np.testing.assert_array_equal(pos, [0, 0, 1, 0, 1, 0])
