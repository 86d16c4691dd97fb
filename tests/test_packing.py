"""Packing over windows (`DataConfig.packing = "best_fit"` or `"pair_fit"`,
sbs_jax/data/packing.py): every example once per epoch in SeqIO's features, fuller rows,
the same loss as next-fit, the same stream after a resume, one-line refusals, and old runs
resume only with next-fit."""

import collections
import dataclasses
import json

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from sbs_jax.data import packing
from sbs_jax.errors import SbsError
from sbs_jax.model.config import config_for
from sbs_jax.train import data as train_data
from sbs_jax.train import run_dir
from sbs_jax.train import state as state_lib
from sbs_jax.train.config import DataConfig
from sbs_jax.train.gin_check import ConfigError
from sbs_jax.train.state import BATCH_KEYS, build_student, init_state, make_mesh
from tests.helpers.batches import (packed_batch, paired_examples, register_token_task,
                                   run_config)
from tests.helpers.cli import run_sbs_here

KEYS = ("inputs", "targets", "inputs_part", "targets_part")
LENGTHS = {"inputs": 48, "targets": 20, "inputs_part": 48, "targets_part": 20}
TASK = "packing_test_task"


def _stream(count, seed=0):
  """Examples of 1-60 input and 1-25 target tokens (some longer than LENGTHS), with parts."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    a, b = int(rng.integers(1, 61)), int(rng.integers(1, 26))
    split_a, split_b = int(rng.integers(0, a + 1)), int(rng.integers(0, b + 1))
    out.append({"inputs": rng.integers(3, 100, a), "targets": rng.integers(3, 100, b),
                "inputs_part": np.repeat([1, 2], [split_a, a - split_a]),
                "targets_part": np.repeat([1, 2], [split_b, b - split_b])})
  return out


def _dataset(examples):
  sig = {k: tf.TensorSpec([None], tf.int32) for k in KEYS}
  return tf.data.Dataset.from_generator(
      lambda: ({k: np.asarray(v, np.int32) for k, v in ex.items()} for ex in examples),
      output_signature=sig)


def _segments(rows):
  """Each packed example as (tokens of every key, in KEYS order), from the segment ids."""
  out = []
  for row in rows:
    for s in range(1, int(row["inputs_segment_ids"].max()) + 1):
      out.append(tuple(tuple(row[k][row[f"{k}_segment_ids"] == s].tolist()) for k in KEYS))
  return out


def _check_segments(row):
  """Segment ids 1..m in order then padding, positions counting from 0 in each segment."""
  for key in KEYS:
    seg, pos = row[f"{key}_segment_ids"], row[f"{key}_positions"]
    real = row[key] != 0
    np.testing.assert_array_equal(seg > 0, real)
    assert real[:real.sum()].all()  # padding only at the end
    segs = seg[real]
    assert segs[0] == 1 and (np.diff(segs) >= 0).all() and (np.diff(segs) <= 1).all()
    starts = np.searchsorted(segs, segs)
    np.testing.assert_array_equal(pos[real], np.arange(real.sum()) - starts)
    assert (pos[~real] == 0).all()


@pytest.mark.parametrize("rule", packing.WINDOWED)
def test_every_example_once_per_epoch_in_seqios_features(rule):
  examples = _stream(90)  # windows of 40: the last one holds 10
  best = list(packing.pack_windows(_dataset(examples), LENGTHS, 40, rule).as_numpy_iterator())
  seqio_rows = list(seqio.utils.trim_and_pack_dataset(_dataset(examples), LENGTHS)
                    .as_numpy_iterator())
  assert set(best[0]) == set(seqio_rows[0])  # <key>, <key>_segment_ids, <key>_positions
  for row in best:
    for key, value in row.items():
      assert value.shape == (LENGTHS[key.replace("_segment_ids", "").replace("_positions",
                                                                            "")],)
    _check_segments(row)
  want = collections.Counter(tuple(tuple(ex[k][:LENGTHS[k]].tolist()) for k in KEYS)
                             for ex in examples)  # trimmed as SeqIO trims them
  assert collections.Counter(_segments(best)) == want == collections.Counter(
      _segments(seqio_rows))
  assert any(len(ex["inputs"]) > 48 for ex in examples)  # some are trimmed
  assert any(len(ex["targets"]) > 20 for ex in examples)
  assert len(best) < len(seqio_rows)  # fuller rows


def test_rows_of_a_window_follow_the_stream():
  """The fullest row where an example fits takes it (not the first); rows come in the
  stream order of the example that opened them, and in a row examples keep their order."""
  sizes = np.array([[4], [7], [1], [5]])
  # By decreasing size: 7 opens row A, 5 opens B, 4 fits only B, and 1 fits both: B, the
  # fuller (first-fit would take A). A's opener comes first in the stream: A is row 0.
  np.testing.assert_array_equal(packing.assign_rows(sizes, [10]), [1, 0, 1, 1])
  tokens, segments, positions = packing.pack_window(
      sizes, np.arange(1, 5)[:, None] * np.ones((4, 10), int), capacity=[10])
  np.testing.assert_array_equal(tokens, [[2] * 7 + [0] * 3, [1] * 4 + [3] + [4] * 5])
  np.testing.assert_array_equal(segments, [[1] * 7 + [0] * 3, [1] * 4 + [2] + [3] * 5])
  np.testing.assert_array_equal(positions, [list(range(7)) + [0] * 3,
                                            [0, 1, 2, 3, 0, 0, 1, 2, 3, 4]])


def test_pair_fit_fills_each_row_with_the_pair_that_fills_it_most():
  """The largest example left opens a row; the two left that fill most of its room join it
  (examples of one size in stream order); rows numbered by their opener's place."""
  sizes = np.array([[5], [4], [3], [3], [3], [2]])
  # 5 opens A (room 5): 3 + 2 fill it (4 finds no partner). 4 opens B (room 6): 3 + 3.
  np.testing.assert_array_equal(packing.assign_rows(sizes, [10], "pair_fit"),
                                [0, 1, 0, 1, 1, 0])
  assert packing.assign_rows(sizes, [10]).max() == 2  # best-fit decreasing needs 3 rows
  # Two features: both must fit. (6,2) opens A, room (4,8): (2,6) + (2,3) would fill
  # more inputs but 9 targets; (2,3) + (1,4) is the pair that fits and fills most.
  sizes = np.array([[6, 2], [2, 6], [2, 3], [4, 1], [1, 4]])
  np.testing.assert_array_equal(packing.assign_rows(sizes, [10, 10], "pair_fit"),
                                [0, 1, 0, 1, 0])
  # Room 4 after the 6: two examples of 2 fill it. With one example of 2, 2 + 2 (which
  # would take it twice) is no pair: the 4 fills the room, and the 2 and the 1 go on.
  np.testing.assert_array_equal(packing.assign_rows(np.array([[6], [2], [2]]), [10],
                                                    "pair_fit"), [0, 0, 0])
  np.testing.assert_array_equal(packing.assign_rows(np.array([[6], [2], [1], [4]]), [10],
                                                    "pair_fit"), [0, 1, 1, 0])
  with pytest.raises(ValueError, match="best_fit, pair_fit"):
    packing.assign_rows(sizes, [10, 10], "pairfit")


def test_pair_fit_packs_a_window_of_too_many_distinct_sizes_best_fit():
  rng = np.random.default_rng(0)
  wide = np.stack([rng.integers(1, 1025, 2048), rng.integers(1, 353, 2048)], 1)
  assert len(np.unique(wide[:, 0])) * len(np.unique(wide[:, 1])) > packing.PAIR_FIT_CELLS
  np.testing.assert_array_equal(packing.assign_rows(wide, [1024, 352], "pair_fit"),
                                packing.assign_rows(wide, [1024, 352], "best_fit"))
  narrow = wide % [200, 80] + 1  # 200 x 80 sizes: within the table, packed pair-fit
  assert not np.array_equal(packing.assign_rows(narrow, [1024, 352], "pair_fit"),
                            packing.assign_rows(narrow, [1024, 352], "best_fit"))


@pytest.mark.parametrize("seed", range(3))
def test_pair_fit_rows_hold_every_example_within_the_lengths(seed):
  """About three examples a row (a CQA paired row's shape): pair-fit fills them fuller."""
  rng = np.random.default_rng(seed)
  sizes = np.stack([rng.integers(12, 29, 500), rng.integers(4, 13, 500)], 1)
  sizes[:5] = [[60, 1], [1, 25], [59, 24], [1, 1], [60, 25]]  # and some at the edges
  rows = packing.assign_rows(sizes, [60, 25], "pair_fit")
  assert sorted(set(rows.tolist())) == list(range(rows.max() + 1))
  for k, length in enumerate((60, 25)):
    assert np.bincount(rows, sizes[:, k]).max() <= length
  fill = lambda r: sizes.sum() / ((r.max() + 1) * 85)
  assert fill(rows) > fill(packing.assign_rows(sizes, [60, 25])) + 0.03


def _loss(batch, params, student):
  (loss, label_sum, rationale_sum, counts), grads = jax.jit(
      lambda p, b: state_lib.loss_and_grads(student, p, b, 0.3))(params, batch)
  return float(loss), float(label_sum), float(rationale_sum), [float(c) for c in counts], grads


@pytest.mark.parametrize("rule", packing.WINDOWED)
def test_the_same_examples_give_the_same_loss_packed_by_a_window_rule_or_next_fit(rule):
  examples = paired_examples(40, np.random.default_rng(3))
  next_rows = packed_batch(examples, 40, 32, "next_fit")
  best_rows = packed_batch(examples, 40, 32, rule, window=16)
  assert len(best_rows["encoder_input_tokens"]) < len(next_rows["encoder_input_tokens"])
  student = build_student(config_for("tiny", vocab_size=128), optax.sgd(0.1),
                          make_mesh((1, 1)))
  params = init_state(student, seed=0)["params"]
  want = _loss(next_rows, params, student)
  got = _loss(best_rows, params, student)
  assert got[3] == want[3]  # label and rationale token counts
  assert got[0] == pytest.approx(want[0], rel=1e-5)
  assert got[1] == pytest.approx(want[1], rel=1e-5)
  assert got[2] == pytest.approx(want[2], rel=1e-5)
  for g, w in zip(jax.tree.leaves(got[4]), jax.tree.leaves(want[4])):
    np.testing.assert_allclose(g, w, atol=2e-5)


@pytest.fixture
def task():
  register_token_task(TASK, [dict(ex, task=i % 2 + 1)
                             for i, ex in enumerate(_stream(200, seed=5))])
  yield TASK
  seqio.TaskRegistry.remove(TASK)


def _batches(cfg, start_step, count):
  stream = train_data.train_batches(cfg, start_step)
  return [next(stream) for _ in range(count)]


@pytest.mark.parametrize("rule", packing.WINDOWED)
def test_a_resumed_stream_is_the_uninterrupted_one(task, rule):
  cfg = DataConfig(mixture_or_task=task, task_feature_lengths={"inputs": 64, "targets": 24},
                   batch_size=4, packing=rule, packing_window=48)
  whole = _batches(cfg, 0, 30)  # past the first epoch (about 80 rows of 200 examples)
  again = _batches(cfg, 0, 30)  # a second pipeline, built anew
  resumed = _batches(cfg, 23, 7)
  for a, b in zip(whole, again):
    assert all(np.array_equal(a[k], b[k]) for k in BATCH_KEYS)
  for a, b in zip(whole[23:], resumed):
    assert all(np.array_equal(a[k], b[k]) for k in BATCH_KEYS)
  # The config reaches the pipeline: next-fit's rows of the same stream are emptier.
  next_fit = _batches(dataclasses.replace(cfg, packing="next_fit"), 0, 30)
  real = lambda batches: sum(int((b["encoder_input_tokens"] > 0).sum()) for b in batches)
  assert real(whole) > 1.05 * real(next_fit)


def test_a_packing_typo_is_refused_in_one_line(capsys):
  with pytest.raises(ConfigError, match=r"DataConfig.packing = 'bestfit' is out of range: it "
                     r"must be next_fit or best_fit or pair_fit"):
    DataConfig(mixture_or_task="t", packing="bestfit")
  with pytest.raises(ConfigError, match="packing_window = 0"):
    DataConfig(mixture_or_task="t", packing="best_fit", packing_window=0)
  done = run_sbs_here("plan", "--mesh=4x1", "--gin_file=experiments/cqa_distill_llm.gin",
                      "--gin.DataConfig.packing='best-fit'")
  err = done.stderr.strip()
  assert done.returncode == 2 and len(err.splitlines()) == 1, err
  assert "next_fit or best_fit or pair_fit" in err and "Traceback" not in err


def _identity(cfg):
  return run_dir.identity(cfg, config_for("tiny", vocab_size=128), "label_task", None, 0,
                          None)


def test_an_old_run_resumes_only_with_next_fit(tmp_path):
  """run.json written before DataConfig.packing existed (no packing field): the run packed
  next-fit; it resumes with next_fit and is refused, naming how to resume, with best_fit."""
  cfg = run_config()
  old = _identity(cfg)  # next_fit, the dataclass default
  assert old["packing"] == "next_fit" and old["packing_window"] is None
  best = _identity(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                     packing="best_fit")))
  assert best["packing"] == "best_fit" and best["packing_window"] == 1024
  model_dir = tmp_path / "old_run"
  model_dir.mkdir()
  stored = {k: v for k, v in old.items() if k not in ("packing", "packing_window")}
  (model_dir / run_dir.RUN_FILE).write_text(json.dumps(
      {"format": 1, "identity": stored, "train_steps": 10}))
  with pytest.raises(SbsError) as refused:
    run_dir.RunDir(str(model_dir), best, 10)
  line = str(refused.value)
  assert len(line.splitlines()) == 1
  assert 'packing "next_fit" (this run: "best_fit")' in line
  assert "--gin.DataConfig.packing=\"'next_fit'\"" in line
  assert json.loads((model_dir / run_dir.RUN_FILE).read_text())["identity"] == stored
  resumed = run_dir.RunDir(str(model_dir), old, 10)
  try:
    assert not resumed.fresh
  finally:
    resumed.release()
  assert json.loads((model_dir / run_dir.RUN_FILE).read_text())["identity"] == old
  # A best_fit run pins its window too.
  (model_dir / run_dir.RUN_FILE).write_text(json.dumps(
      {"format": 1, "identity": best, "train_steps": 10}))
  other = dict(best, packing_window=256)
  with pytest.raises(SbsError, match=r"packing_window 1024 \(this run: 256\).*"
                     r"--gin.DataConfig.packing_window=1024"):
    run_dir.RunDir(str(model_dir), other, 10)
  # A pair_fit run pins its window, and a best_fit run does not resume as one.
  pair = _identity(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                     packing="pair_fit")))
  assert pair["packing"] == "pair_fit" and pair["packing_window"] == 1024
  with pytest.raises(SbsError, match=r'packing "best_fit" \(this run: "pair_fit"\)'):
    run_dir.RunDir(str(model_dir), pair, 10)
