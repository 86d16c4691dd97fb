"""`sbs bench`: its batches, its FLOP counts, the mixture mode on real data and the reference.

No timing is asserted: only what the numbers are made of.
"""

import argparse
import json
import math

import numpy as np
import pytest

from sbs_jax.commands import bench as bench_command
from sbs_jax.perf import bench, flops
from sbs_jax.model.config import config_for
from tests.helpers import run_sbs


def parse(*argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser()
  bench_command.add_parser(parser.add_subparsers())
  return parser.parse_args(["bench", *map(str, argv)])


def run(capsys, *argv) -> list[dict]:
  assert bench_command.main(parse(*argv)) == 0
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_synthetic_batch_is_paired_rows_without_padding():
  b = bench.synthetic_batch(3, input_len=5, label_len=2, rationale_len=4, vocab_size=100)
  assert {k: v.shape for k, v in b.items()} == {
      "encoder_input_tokens": (3, 10), "encoder_segment_ids": (3, 10),
      "encoder_positions": (3, 10), "decoder_input_tokens": (3, 6),
      "decoder_target_tokens": (3, 6), "decoder_segment_ids": (3, 6),
      "decoder_positions": (3, 6), "decoder_task_ids": (3, 6)}
  assert b["encoder_segment_ids"][1].tolist() == [1] * 5 + [2] * 5
  assert b["encoder_positions"][2].tolist() == [0, 1, 2, 3, 4] * 2
  assert b["decoder_segment_ids"][0].tolist() == [1, 1, 2, 2, 2, 2]
  assert b["decoder_task_ids"][0].tolist() == [1, 1, 2, 2, 2, 2]
  assert b["decoder_positions"][0].tolist() == [0, 1, 0, 1, 2, 3]
  targets, inputs = b["decoder_target_tokens"], b["decoder_input_tokens"]
  assert (targets >= 2).all() and (targets < 100).all()
  assert (b["encoder_input_tokens"] >= 2).all()
  # Shifted right within each segment; 0 starts a segment.
  assert inputs[:, [0, 2]].tolist() == [[0, 0]] * 3
  assert (inputs[:, 1] == targets[:, 0]).all() and (inputs[:, 3:] == targets[:, 2:5]).all()
  stats = bench.batch_stats([b, b])
  assert stats["examples"] == 6 and stats["target_tokens"] == 36
  assert stats["non_padding_fraction"] == 1.0


def test_xla_flops_are_close_to_the_analytic_count():
  config = config_for("tiny")
  b = bench.synthetic_batch(4, 32, 4, 16, config.vocab_size)
  got, run = bench.prepare_ours(config, [b], [b])
  assert run(1) > 0
  analytic = flops.analytic_flops(config, 4, 64, 20)
  assert got["flops_per_step_xla"] > 0 and math.isfinite(got["loss"])
  assert analytic / 3 < got["flops_per_step_xla"] < analytic * 3


def test_an_undercounted_flop_measure_gives_no_mfu():
  stats = {"examples": 64, "target_tokens": 4608}
  # As an H200 measured base: XLA:GPU counted 2.13 of 13.79 TFLOP (cuBLAS matmuls left out).
  got = bench.rates(0.752, 10, stats, 2.13e12, 13.79e12, 989)
  assert "mfu" not in got and "tflops_per_s" not in got and "15%" in got["flops_note"]
  assert got["mfu_analytic"] == pytest.approx(13.79e12 / 0.0752 / 1e12 / 989, abs=1e-4)
  whole = bench.rates(0.752, 10, stats, 14.0e12, 13.79e12, 989)  # a count of the whole step
  assert "flops_note" not in whole
  assert whole["mfu"] == pytest.approx(14.0e12 / 0.0752 / 1e12 / 989, abs=1e-4)


def test_synthetic_command_prints_one_line(capsys):
  lines = run(capsys, "--size", "tiny", "--batch", "2", "--input_len", "16", "--label_len",
              "2", "--rationale_len", "8", "--steps", "1", "--peak_tflops", "1")
  assert len(lines) == 1
  line = lines[0]
  assert line["mode"] == "synthetic" and line["impl"] == "sbs_jax"
  assert line["non_padding_fraction"] == 1.0 and line["examples_per_s"] > 0
  assert line["target_tokens_per_s"] == pytest.approx(line["examples_per_s"] * 10, rel=0.01)
  assert line["flops_per_step_xla"] > 0 and 0 < line["mfu"] < 1
  for key in ("device_kind", "jax_version", "date", "flops_per_step_analytic"):
    assert line[key]


def test_mixture_mode_packs_real_cqa(annotated, capsys):
  lines = run(capsys, "--mixture", "sbs_cqa_distill_llm_paired", "--size", "tiny",
              "--batch", "4", "--task_feature_lengths", "1024,352", "--steps", "2")
  line = lines[0]
  assert "error" not in line, line
  assert line["mode"] == "mixture" and line["input_batches"] == 4
  assert line["non_padding_fraction"] >= 0.85
  assert line["non_padding_encoder"] >= 0.85 and line["non_padding_decoder"] >= 0.8
  # Several examples per row: examples are label segments, not rows.
  assert line["examples"] > 2 * 4 * 2


def test_paired_examples_are_cut_back_out_of_packed_rows():
  a = bench.synthetic_batch(1, 3, 1, 2, vocab_size=50, seed=1)
  b = bench.synthetic_batch(1, 4, 2, 1, vocab_size=50, seed=2)
  packed = {k: np.concatenate([a[k], b[k] + (k.endswith("segment_ids") and 2)], axis=1)
            for k in a}
  examples = bench.paired_examples([packed])
  assert [tuple(len(x) for x in e) for e in examples] == [(3, 3, 1, 2), (4, 4, 2, 1)]
  assert examples[1][2].tolist() == b["decoder_target_tokens"][0, :2].tolist()
  ref = bench.reference_batches(examples, 2)
  assert len(ref) == 1
  pred = ref[0]["pred"]
  assert pred["input_ids"].shape == (2, 4) and pred["attention_mask"][0].tolist() == [1, 1, 1, 0]
  assert ref[0]["expl"]["labels"][1].tolist() == [b["decoder_target_tokens"][0, 2], -100]


def test_reference_step_and_decoding(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  config = config_for("tiny")
  ones = np.ones((2, 6), np.int64)
  batch = {"pred": {"input_ids": ones * 5, "attention_mask": ones,
                    "labels": np.full((2, 2), 7, np.int64)},
           "expl": {"input_ids": ones * 9, "attention_mask": ones,
                    "labels": np.full((2, 3), 11, np.int64)}}
  got, step = bench.prepare_reference(config, [batch], [batch])
  assert step(1) > 0
  assert math.isfinite(got["loss"]) and got["flops_per_step_torch"] > 0
  lines = run(capsys, "--size", "tiny", "--batch", "2", "--input_len", "8", "--steps", "1",
              "--inference", "--decode_len", "4", "--reference", "--rounds", "2")
  ours, ref, ratio = lines
  assert ours["decoded_shape"] == [2, 4] and ref["decoded_shape"] == [2, 5]  # + start id
  assert len(ours["round_seconds"]) == len(ref["round_seconds"]) == 2
  assert ratio["value"] > 0


def test_synthetic_reference_line_has_the_same_work(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  ours, ref, ratio = run(capsys, "--size", "tiny", "--batch", "2", "--input_len", "8",
                         "--label_len", "2", "--rationale_len", "4", "--steps", "1",
                         "--reference")
  assert ref["impl"] == "hf_reference" and ref["examples"] == ours["examples"] == 2
  assert ref["target_tokens"] == ours["target_tokens"] == 12
  assert ref["flops_per_step_torch"] > 0 and math.isfinite(ref["loss"])
  assert ratio["value"] > 0
  assert ours["pid"] == ref["pid"]  # one process, unless --isolate


def test_isolate_runs_each_side_in_its_own_worker_process():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  done = run_sbs("bench", "--size", "tiny", "--batch", "3", "--input_len", "8",
                 "--label_len", "2", "--rationale_len", "4", "--steps", "1", "--rounds", "2",
                 "--reference", "--isolate")
  assert done.returncode == 0, done.stderr[-3000:]
  ours, ref, ratio = [json.loads(line) for line in done.stdout.splitlines()]
  assert (ours["impl"], ref["impl"]) == ("sbs_jax", "hf_reference")
  assert ours["pid"] != ref["pid"]
  assert ours["jax_version"] and ref["torch_version"] and "torch_version" not in ours
  assert len(ours["round_seconds"]) == len(ref["round_seconds"]) == 2
  assert ours["examples"] == ref["examples"] == 3 and ours["flops_per_step_xla"] > 0
  assert ratio["value"] == pytest.approx(ours["examples_per_s"] / ref["examples_per_s"],
                                         rel=1e-2)
