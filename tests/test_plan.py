"""`sbs plan`: per-device memory on paper, and the README's claim about T5 XXL on 32 chips."""

import json
import pathlib

import pytest

from sbs_jax import cli
from sbs_jax.errors import SbsError
from sbs_jax.model.config import config_for
from sbs_jax.perf.plan import plan, plan_of_compiled
from tests.helpers.batches import run_config


def test_tiny_on_one_device_counts_every_parameter_once():
  tiny = config_for("tiny", vocab_size=512)
  got = plan(run_config(), tiny, 1, 1)
  b = got["per_device_bytes"]
  assert b["parameters"] == 4 * got["parameters"]
  # AdamW's mu and nu, and two int32 step counts (Adam's and the schedule's).
  assert b["optimizer_state"] == 2 * b["parameters"] + 8


def test_model_axis_shards_what_the_rules_say():
  c = config_for("tiny", vocab_size=512)
  one = plan(run_config(), c, 1, 1)["per_device_bytes"]["parameters"]
  # 1-D rules on a 1x4 mesh: every kernel, the embedding and the relpos tables have a
  # dimension sharded over 'model' (vocab, mlp, joined_kv or heads); only the RMS scales
  # ('embed' alone) are replicated.
  scales = 4 * c.emb_dim * (2 * c.num_encoder_layers + 3 * c.num_decoder_layers + 2)
  got = plan(run_config(), c, 1, 4)["per_device_bytes"]["parameters"]
  assert got == (one - scales) // 4 + scales


def test_xxl_fits_a_32_chip_v4_slice_only_with_2d_rules():
  xxl = config_for("xxl", dtype="bfloat16")
  two_d = plan(run_config(dims=(1, 2), accum=4), xxl, 8, 4)
  one_d = plan(run_config(dims=(1, 1), accum=4), xxl, 8, 4)
  assert 11.0e9 < two_d["parameters"] < 11.3e9
  assert two_d["per_device_total_gib"] <= 32 < one_d["per_device_total_gib"]
  # 2-D rules split the float32 parameters over all 32 chips.
  assert two_d["per_device_bytes"]["parameters"] == pytest.approx(
      4 * two_d["parameters"] / 32, rel=0.01)


def test_compute_weights_and_gradient_accumulator_follow_the_compiler():
  # What the TPU compiler keeps beside the state (docs/scale.md): the device's shard of the
  # weights in bfloat16 (2-D rules: split over all 32 chips) and, with accumulation, a
  # second gradient buffer. float32 computes on the parameters themselves.
  xxl = config_for("xxl", dtype="bfloat16")
  got = plan(run_config(dims=(1, 2), accum=4), xxl, 8, 4)
  b = got["per_device_bytes"]
  assert b["compute_weights"] == pytest.approx(2 * got["parameters"] / 32, rel=0.01)
  assert b["compute_weights"] == pytest.approx(b["parameters"] / 2, rel=0.001)
  assert b["gradient_accumulator"] == b["gradients"]
  tiny = config_for("tiny", vocab_size=512)
  b = plan(run_config(), tiny, 1, 1)["per_device_bytes"]
  assert b["compute_weights"] == 0 and b["gradient_accumulator"] == 0
  b = plan(run_config(), config_for("tiny", vocab_size=512, dtype="bfloat16"), 1, 1)
  assert b["per_device_bytes"]["compute_weights"] == 2 * b["parameters"]


# The TPU compiler's per-chip figures for the cqa recipe (batch 64 of 1024/352-token rows,
# bfloat16 compute), from `sbs plan --topology` as `benchmarks/plan_table.py run` recorded
# them with their commands in docs/scale_compiled.jsonl (the table of docs/scale.md).
RECORDS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "scale_compiled.jsonl"
COMPILED = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]


# The first table's rows (docs/scale.md, compiled 2026-12-01 10:24-10:56 UTC, before the
# records file): (size, data, model, rules, accumulation, per-chip GiB); AdamW, no remat.
FIRST_TABLE = [("small", 4, 1, (1, 1), 1, 8.119), ("base", 4, 1, (1, 1), 1, 23.712),
               ("base", 2, 2, (1, 2), 4, 6.708), ("xxl", 8, 4, (1, 2), 4, 16.55)]


@pytest.mark.parametrize("size, data, model, dims, accum, compiled", FIRST_TABLE)
def test_formula_is_within_15_percent_of_the_first_table(size, data, model, dims, accum,
                                                        compiled):
  got = plan(run_config(dims=dims, accum=accum), config_for(size, dtype="bfloat16"),
             data, model)
  assert got["per_device_total_gib"] == pytest.approx(compiled, rel=0.15)


def test_the_recorded_rows_cover_what_the_table_promises():
  rows = [r for r in COMPILED if "per_chip_gib" in r]
  assert {r["size"] for r in rows} >= {"base", "large", "xl", "xxl"}
  assert {r["optimizer"] for r in rows} == {"adamw", "adafactor"}
  assert {r["remat_policy"] for r in rows} == {"none", "dots", "full"}
  assert {r["grad_accum_steps"] for r in rows} >= {1, 4}
  assert {r["topology"].split("-")[0] for r in rows} >= {"v4", "v5e", "v5p"}
  for r in COMPILED:  # each record is the output of its own command
    assert f"--topology={r['topology']}" in r["command"]
    assert f"models/{r['size']}.gin" in r["command"]
    assert f"--mesh={r['mesh']}" in r["command"]


def refused(record) -> bool:
  """Remat with 2-D rules over several data shards: the formula gives no estimate."""
  return (record["remat_policy"] != "none" and record["partitioning_dims"][1] == 2
          and int(record["mesh"].split("x")[0]) > 1)


@pytest.mark.parametrize("record", [r for r in COMPILED if "per_chip_gib" in r],
                         ids=lambda r: r["row"])
def test_formula_is_within_15_percent_of_the_compiler_or_refuses(record):
  if refused(record):
    # The formula missed these by 10-50% (docs/scale.md): it says so instead of a number.
    with pytest.raises(SbsError, match="no estimate for remat with 2-D rules.*--topology"):
      plan_of_compiled(record, record["size"])
    return
  got = plan_of_compiled(record, record["size"])
  assert got["mesh"] == record["mesh"] and got["optimizer"] == record["optimizer"]
  assert got["chip"] == record["topology"].split("-")[0]
  assert got["per_device_total_gib"] == pytest.approx(record["per_chip_gib"], rel=0.15)


def test_recorded_remat_2d_rows_include_refused_answered_and_lean_ones():
  """The records hold both sides of the refusal among remat rows with 2-D rules (several
  data shards: refused; one: answered), and refused rows compiled with libtpu's lean
  collective matmuls too, so the test above checks the refusal on both compiles."""
  remat_2d = [r for r in COMPILED if r["remat_policy"] != "none"
              and r["partitioning_dims"][1] == 2]
  assert {refused(r) for r in remat_2d} == {True, False}
  assert any(r.get("libtpu_init_args") for r in remat_2d if refused(r))


def test_plan_command_refuses_remat_with_2d_rules_in_one_line(capsys):
  args = ["plan", "--mesh=8x4", "--gin_file=experiments/cqa_distill_llm.gin",
          "--gin_file=models/xxl.gin", "--gin.ParallelismConfig.partitioning_dims=(1,2)",
          "--gin.ParallelismConfig.remat_policy='full'", "--chip=v5e"]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert "no estimate for remat with 2-D rules over 8 data shards" in err
  assert "--topology" in err and len(err.splitlines()) == 1
  assert cli.main([*args, "--mesh=1x4"]) == 0  # one data shard: an estimate
  assert json.loads(capsys.readouterr().out)["per_device_total_gib"] > 0


def test_the_chip_generation_changes_the_activations_only():
  """The same run on paper for a v4 and a v5p chip: the state is the same, the v4 step
  keeps more activations (docs/scale.md: xl 4 + 4 layers, 1x4, 8.03 vs 6.58 GiB)."""
  xl = config_for("xl", dtype="bfloat16")
  v4, v5p = (plan(run_config(dims=(1, 2), accum=4), xl, 1, 4, chip)["per_device_bytes"]
             for chip in ("v4", "v5p"))
  assert {k: v for k, v in v4.items() if k != "activations_estimate"} == {
      k: v for k, v in v5p.items() if k != "activations_estimate"}
  assert v5p["activations_estimate"] < 0.7 * v4["activations_estimate"]
  v5e, v6e = (plan(run_config(), xl, 4, 1, chip) for chip in ("v5e", "v6e"))
  assert v6e["chip"] == "v6e"
  # twice v5e's attention bytes per layer
  assert (v6e["per_device_bytes"]["activations_estimate"]
          > v5e["per_device_bytes"]["activations_estimate"])
  with pytest.raises(SbsError, match="chip must be one of"):
    plan(run_config(), xl, 4, 1, "v5")


def test_chip_must_agree_with_the_topology(capsys):
  assert cli.main(["plan", "--topology=v4-8", "--chip=v5p", "--mesh=4x1"]) == 2
  assert "--chip v5p contradicts --topology v4-8" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # argparse: not one of the choices
    cli.main(["plan", "--mesh=4x1", "--chip=v5"])
  assert "invalid choice: 'v5'" in capsys.readouterr().err
