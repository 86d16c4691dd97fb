"""Row lengths from the data (`sbs plan --propose_lengths`, sbs_jax/perf/row_lengths.py):
the same examples give the same loss in long and short rows, the packing simulation is
SeqIO's packing, proposals cut at most the share and pass the length check, bad input is
one line, and the per-real-token fields are the arithmetic of the record."""

import dataclasses
import importlib.util
import json

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from sbs_jax import cli
from sbs_jax.data.lengths import check_lengths, example_lengths
from sbs_jax.data.packing import PAIR_FIT_SHUFFLE
from sbs_jax.errors import SbsError
from sbs_jax.model.config import config_for
from sbs_jax.perf import row_lengths
from sbs_jax.perf.flops import analytic_flops
from sbs_jax.train import data as train_data
from sbs_jax.train import state as state_lib
from sbs_jax.train.config import DataConfig
from sbs_jax.train.state import build_student, init_state, make_mesh
from tests.helpers import run_sbs
from tests.helpers.batches import (packed_batch, paired_examples, register_token_task,
                                   run_config)

TASK = "row_lengths_test_task"


def _loss(batch, params, student):
  (loss, label_sum, rationale_sum, counts), grads = jax.jit(
      lambda p, b: state_lib.loss_and_grads(student, p, b, 0.3))(params, batch)
  return float(loss), float(label_sum), float(rationale_sum), [float(c) for c in counts], grads


def test_same_examples_give_the_same_loss_in_long_and_short_rows():
  examples = paired_examples(24, np.random.default_rng(0))
  long_rows = packed_batch(examples, enc_len=256, dec_len=96)  # 1024/352-style: few, long
  short_rows = packed_batch(examples, enc_len=40, dec_len=32)  # derived-style: more, short
  assert len(short_rows["encoder_input_tokens"]) >= 2 * len(long_rows["encoder_input_tokens"])
  for key in ("encoder_input_tokens", "decoder_target_tokens"):  # nothing cut either way
    assert (long_rows[key] != 0).sum() == (short_rows[key] != 0).sum() == sum(
        len(p) + len(e) if key.startswith("encoder") else len(l) + len(r)
        for p, l, e, r in examples)
  student = build_student(config_for("tiny", vocab_size=128), optax.sgd(0.1),
                          make_mesh((1, 1)))
  params = init_state(student, seed=0)["params"]
  want = _loss(long_rows, params, student)
  got = _loss(short_rows, params, student)
  assert got[3] == want[3]  # label and rationale token counts
  assert got[0] == pytest.approx(want[0], rel=1e-5)
  assert got[1] == pytest.approx(want[1], rel=1e-5) and got[2] == pytest.approx(want[2],
                                                                                  rel=1e-5)
  for g, w in zip(jax.tree.leaves(got[4]), jax.tree.leaves(want[4])):
    np.testing.assert_allclose(g, w, atol=2e-5)
  # The comparison sees wrong segment ids: examples of a row attending to each other, or
  # each target attending to the next example's input, change the loss.
  merged = dict(long_rows, encoder_segment_ids=(long_rows["encoder_segment_ids"] > 0) * 1,
                decoder_segment_ids=(long_rows["decoder_segment_ids"] > 0) * 1)
  assert abs(_loss(merged, params, student)[0] - want[0]) > 1e-3
  dec = long_rows["decoder_segment_ids"]
  last = dec.max(axis=1, keepdims=True)
  shifted = dict(long_rows, decoder_segment_ids=np.where(dec > 0, dec % last + 1, 0))
  assert abs(_loss(shifted, params, student)[0] - want[0]) > 1e-3


@pytest.mark.parametrize("packing", ["next_fit", "best_fit", "pair_fit"])
def test_the_packing_simulation_is_the_trainers_packing(packing):
  examples = paired_examples(300, np.random.default_rng(1))
  ins = np.array([len(p) + len(e) for p, l, e, r in examples])
  tgs = np.array([len(l) + len(r) for p, l, e, r in examples])
  if packing == "pair_fit":  # the trainer shuffles first: simulate its order
    order = list(tf.data.Dataset.range(len(ins)).shuffle(
        PAIR_FIT_SHUFFLE, seed=0).as_numpy_iterator())
    ins, tgs = ins[order], tgs[order]
  for enc, dec in [(256, 96), (40, 32), (24, 24), (64, 16)]:
    rows = packed_batch(examples, enc, dec, packing, window=128)  # the last window: 44
    real = ((rows["encoder_input_tokens"] != 0).sum()
            + (rows["decoder_target_tokens"] != 0).sum())
    got = row_lengths.simulate_packing(ins, tgs, {"inputs": enc, "targets": dec}, packing,
                                       window=128)
    assert got == pytest.approx(real / len(rows["encoder_input_tokens"]))


def test_candidates_within_a_tolerance_are_those_of_the_whole_ranking():
  """The proposal leaves out pairs it need not simulate (their cost at full rows is above
  the tolerance already), and never one within it."""
  rng = np.random.default_rng(4)
  lengths = {"t": (rng.integers(10, 90, 500), rng.integers(2, 40, 500), np.zeros(500, int))}
  tiny = config_for("tiny", vocab_size=128)
  for packing in ("next_fit", "best_fit", "pair_fit"):
    whole = row_lengths.candidates(lengths, tiny, {"inputs": 512, "targets": 192}, 0.0,
                                   length_multiple=16, packing=packing, window=256)
    near = row_lengths.candidates(lengths, tiny, {"inputs": 512, "targets": 192}, 0.0,
                                  length_multiple=16, packing=packing, window=256,
                                  within=0.05)
    limit = whole[0].flops_per_real_token * 1.05
    assert [c for c in whole if c.flops_per_real_token <= limit] == [
        c for c in near if c.flops_per_real_token <= limit]
    assert len(near) < len(whole) / 2  # most were left out


def _register(lengths):
  """A task of examples with these (input, target) token counts, tokens 3..: train split."""
  register_token_task(TASK, [
      {"inputs": np.arange(3, 3 + a) % 120 + 3, "targets": np.arange(5, 5 + b) % 120 + 3,
       "task": i % 2 + 1} for i, (a, b) in enumerate(lengths)])


@pytest.fixture
def known_task():
  rng = np.random.default_rng(2)
  # 400 examples: inputs 20-80 tokens, targets 4-30, and 10 long ones (the last 2.5%).
  lengths = [(int(rng.integers(20, 81)), int(rng.integers(4, 31))) for _ in range(390)]
  lengths += [(int(rng.integers(150, 200)), int(rng.integers(40, 60))) for _ in range(10)]
  _register(lengths)
  yield np.array(lengths)
  seqio.TaskRegistry.remove(TASK)


def _cfg(lengths=None, batch=16, share=0.5):
  cfg = run_config(batch=batch)
  return dataclasses.replace(cfg, data=DataConfig(
      mixture_or_task=TASK, batch_size=batch, max_truncated_share=share,
      task_feature_lengths=lengths or {"inputs": 512, "targets": 128}))


def test_proposal_cuts_at_most_the_share_and_passes_the_length_check(known_task):
  cfg = _cfg()
  lengths_read = example_lengths(cfg.data)
  got = lengths_read[TASK]
  np.testing.assert_array_equal(got[0], known_task[:, 0])
  np.testing.assert_array_equal(got[1], known_task[:, 1])
  configured = train_data.real_tokens(cfg.data, rows=8)
  tiny = config_for("tiny", vocab_size=128)
  for share in (0.0, 0.03):
    p = row_lengths.propose(lengths_read, cfg, tiny, 1, 1, "v4", 32.0, share,
                            configured["per_row"], batch_multiple=4)
    lengths = p["lengths"]
    cut = np.mean((known_task[:, 0] > lengths["inputs"])
                  | (known_task[:, 1] > lengths["targets"]))
    assert cut <= share and p["cut_share"] == pytest.approx(cut)
    assert lengths["inputs"] < 512 and lengths["targets"] < 128  # shorter rows
    assert lengths["inputs"] % 8 == 0 and lengths["targets"] % 8 == 0 and p["batch_size"] % 4 == 0
    if share == 0.0:
      assert lengths["inputs"] >= known_task[:, 0].max()
    report = check_lengths(_cfg(lengths, share=share).data)  # accepted: no SbsError
    assert report[TASK]["cut"] == round(cut * len(known_task))
    # The command counts from the lengths it holds: the same report as reading again.
    assert check_lengths(_cfg(lengths, share=share).data, measured=lengths_read) == report
    # The batch holds the configured real tokens per step, to the rounding of the batch.
    tokens = configured["per_row"] * cfg.data.batch_size
    assert abs(p["batch_size"] * p["simulated_real_tokens_per_row"] - tokens) <= max(
        0.05 * tokens, 2 * p["simulated_real_tokens_per_row"])
    # Nothing cheaper by the FLOP model cuts within the share, beyond the 2% tolerance.
    stream = known_task[np.random.default_rng(0).permutation(len(known_task))]
    best = min(analytic_flops(tiny, 1, a, b) / row_lengths.simulate_packing(
        stream[:, 0], stream[:, 1], {"inputs": a, "targets": b})
        for a in range(8, 513, 8) for b in range(8, 129, 8)
        if np.mean((known_task[:, 0] > a) | (known_task[:, 1] > b)) <= share)
    assert p["model_flops_per_real_token"] <= best * 1.02 + 1e-6
    # ... and never more than the configured rows, by the same model.
    assert p["model_flops_per_real_token"] <= analytic_flops(tiny, 1, 512, 128) / (
        row_lengths.simulate_packing(stream[:, 0], stream[:, 1], cfg.data.task_feature_lengths))
  for measured in (None, lengths_read):  # the same lengths, a share below their cut
    with pytest.raises(SbsError, match="cut"):
      check_lengths(_cfg(lengths, share=0.0).data, measured=measured)


def test_real_tokens_count_the_packed_rows(known_task):
  cfg = _cfg({"inputs": 256, "targets": 64})
  got = train_data.real_tokens(cfg.data, rows=10)
  rows = list(train_data.training_rows(cfg.data).take(10).as_numpy_iterator())
  enc = sum(int((r["encoder_input_tokens"] > 0).sum()) for r in rows)
  dec = sum(int((r["decoder_target_tokens"] > 0).sum()) for r in rows)
  assert got["per_row"] == pytest.approx((enc + dec) / 10)
  assert got["fill"] == pytest.approx((enc + dec) / (10 * 320))
  assert 0.5 < got["fill"] <= 1.0
  # rows=None: every row of one pass over the split, each example once (none cut at 256/64).
  whole = train_data.real_tokens(cfg.data, rows=None)
  assert whole["per_row"] * whole["rows"] == pytest.approx(known_task.sum())


def test_bad_input_is_refused_in_one_line(known_task):
  tiny = config_for("tiny", vocab_size=128)
  lengths = example_lengths(_cfg().data)
  for share in (-0.1, 1.0, 1.5):
    with pytest.raises(SbsError, match="--max_truncated_share.*below 1"):
      row_lengths.candidates(lengths, tiny, {"inputs": 512, "targets": 128}, share)
  with pytest.raises(SbsError, match="empty_task has no training examples"):
    row_lengths.candidates({"empty_task": (np.zeros(0, int),) * 3}, tiny,
                           {"inputs": 512, "targets": 128}, 0.0)
  with pytest.raises(SbsError, match=r"already cut 2\.5% of row_lengths_test_task.*raise the "
                     "lengths"):
    row_lengths.candidates(lengths, tiny, {"inputs": 128, "targets": 128}, 0.01)


def test_the_command_refuses_a_bad_share_before_reading_anything(capsys):
  assert cli.main(["plan", "--propose_lengths", "--mesh=4x1", "--max_truncated_share=1",
                   "--gin_file=experiments/cqa_distill_llm.gin"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "--max_truncated_share 1" in err


@pytest.mark.parametrize("flags, named", [
    (["--configured_packing=next_fit"], "--configured_packing"),
    (["--batch_multiple=32", "--max_truncated_share=0.01"],
     "--batch_multiple, --max_truncated_share"),
    (["--real_tokens_epoch"], "--real_tokens_epoch"),
])
def test_proposal_flags_without_propose_lengths_are_refused_not_ignored(capsys, flags, named):
  assert cli.main(["plan", "--mesh=4x1", *flags,
                   "--gin_file=experiments/cqa_distill_llm.gin"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"{named} only change" in err
  assert "add --propose_lengths" in err


def test_per_real_token_fields_are_the_records_arithmetic():
  record = {"chips": 4, "flops_per_step": 3.0e12,
            "xla_bytes": {"argument": 1000, "output": 900, "alias": 800, "temp": 5000}}
  real = {"per_row": 250.0, "fill": 0.8, "rows": 64}
  got = row_lengths.per_real_token(record, real, batch_size=32)
  assert got["real_tokens_per_step"] == 8000.0
  assert got["flops_per_real_token"] == pytest.approx(3.0e12 * 4 / 8000)
  assert got["temp_bytes_per_real_token"] == pytest.approx(5000 * 4 / 8000, abs=0.05)
  assert got["per_chip_bytes_per_real_token"] == pytest.approx(6100 * 4 / 8000, abs=0.05)
  assert "inputs + targets" in got["real_tokens_counted"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu (pip install -e '.[tpu]') is not installed")
def test_compiled_step_per_real_token_of_the_configured_data(annotated):
  """`sbs plan --topology`: a tiny student on a v4-8, its rows read from the real CQA
  records (the `annotated` fixture's environment, inherited by the command)."""
  lengths = {"inputs": 256, "targets": 96}
  proc = run_sbs("plan", "--topology", "v4-8", "--mesh", "1x4", "--programs=train_step",
                 "--gin_file=experiments/cqa_distill_llm.gin", "--gin_file=models/tiny.gin",
                 "--gin.BATCH_SIZE=8", "--real_tokens_rows=16",
                 f"--gin.DataConfig.task_feature_lengths={lengths}", timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (train,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  # The same 16 rows counted here: the trainer's stream of the configured mixture.
  import tasks  # pylint: disable=import-outside-toplevel,unused-import  (registers them)
  cfg = DataConfig(mixture_or_task="sbs_cqa_distill_llm_paired", task_feature_lengths=lengths,
                   batch_size=8, packing="pair_fit")  # the experiment's (runs/finetune.gin)
  real = 0
  for row in train_data.training_rows(cfg).take(16).as_numpy_iterator():
    real += int((row["encoder_input_tokens"] > 0).sum() + (row["decoder_target_tokens"] > 0).sum())
  tokens = real / 16 * 8
  assert train["real_tokens_per_step"] == pytest.approx(tokens, abs=0.05)
  assert train["real_token_fill"] == pytest.approx(real / (16 * 352), abs=1e-4)
  assert train["flops_per_real_token"] == pytest.approx(train["flops_per_step"] * 4 / tokens)
  b = train["xla_bytes"]
  assert train["temp_bytes_per_real_token"] == pytest.approx(b["temp"] * 4 / tokens, abs=0.05)
  peak = b["argument"] + b["output"] - b["alias"] + b["temp"]
  assert train["per_chip_bytes_per_real_token"] == pytest.approx(peak * 4 / tokens, abs=0.05)


def test_window_packing_fills_short_rows_of_real_cqa_better(annotated):
  """CQA's paired training rows (the `annotated` records and vocabulary) at 336/112, over
  one pass of a quarter of the split: SeqIO's next-fit leaves about a fifth of each row
  empty, best-fit much less, pair-fit less still."""
  import tasks  # pylint: disable=import-outside-toplevel,unused-import  (registers them)
  cfg = DataConfig(mixture_or_task="sbs_cqa_distill_llm_paired", batch_size=8,
                   task_feature_lengths={"inputs": 336, "targets": 112},
                   train_split="train_25")
  next_fit = train_data.real_tokens(cfg, rows=None)  # one pass
  best_fit = train_data.real_tokens(dataclasses.replace(cfg, packing="best_fit"), rows=None)
  assert best_fit["fill"] > next_fit["fill"] + 0.06, (next_fit, best_fit)
  pair_fit = train_data.real_tokens(dataclasses.replace(cfg, packing="pair_fit"), rows=None)
  # One pass of train_25 here: 81.9%, 88.3% and 89.7% real; of the whole split (three
  # times the test's time) 81.3%, 87.4% and 89.9% (2026-12-08).
  assert pair_fit["fill"] > best_fit["fill"] + 0.01, (best_fit, pair_fit)
