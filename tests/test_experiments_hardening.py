"""Bad inputs and stale state of `sbs sweep`, `sbs report`, `sbs demo`, `sbs plan`,
`sbs bench` and launch/tpu.py: one line and exit 2, nothing good overwritten, no mixing.

Everything runs in this process with fake cells (no trainer), in seconds.
"""

import hashlib
import json
import pathlib

import pytest

from sbs_jax import cli
from sbs_jax.errors import SbsError
from sbs_jax.experiments import report, sweep
from tests.helpers import REPO


def _one_line(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  return err


def _fake_cell(settings, cell, out_dir, test=50.0):
  """What a finished cell leaves: its record, a log and results.json."""
  sweep.cell_file(out_dir, cell, ".json").write_text(json.dumps(
      sweep.cell_record(settings, cell)))
  sweep.cell_file(out_dir, cell, ".log").write_text("$ sbs train ...\n")
  (pathlib.Path(out_dir) / cell.name).mkdir(parents=True, exist_ok=True)
  (pathlib.Path(out_dir) / cell.name / "results.json").write_text(json.dumps(
      {"best_step": 3, "train_steps": 3, "validation": {"accuracy": test - 1, "examples": 8},
       "test": {"accuracy": test, "examples": 8}}))


@pytest.fixture
def fake_cells(monkeypatch):
  """`sbs sweep` runs fake cells: the list of cells run."""
  ran = []
  real_run = sweep.run

  def run(settings, grid, out_dir):
    def run_cell(s, cell, o):
      ran.append(cell.name)
      _fake_cell(s, cell, o)
    return real_run(settings, grid, out_dir, run_cell)
  monkeypatch.setattr(sweep, "run", run)
  return ran


@pytest.fixture
def inputs(tmp_path):
  """An annotation dir holding 'marbles' records (empty files will do) and a vocabulary."""
  ann = tmp_path / "ann"
  (ann / "marbles").mkdir(parents=True)
  (ann / "marbles" / "train.tfrecord-00000-of-00001").write_bytes(b"")
  (tmp_path / "spm.model").write_bytes(b"x")
  return tmp_path


def _sweep_argv(root, *extra, dataset="marbles", out="sweep"):
  return ["sweep", "--dataset", dataset, "--methods", "distill_llm", "--seeds", "0,1",
          "--annotation_dir", str(root / "ann"), "--vocab", str(root / "spm.model"),
          "--out_dir", str(root / out), *extra]


# ---- 1. Gin contents are pinned.

def test_a_changed_gin_file_is_refused_on_rerun(inputs, fake_cells, capsys):
  gin = inputs / "budget.gin"
  gin.write_text("TRAIN_STEPS = 4\n")
  argv = _sweep_argv(inputs, f"--gin_file={gin}")
  assert cli.main(argv) == 0 and len(fake_cells) == 2
  assert "all cells done" in capsys.readouterr().out
  record = sweep.load_sweep(inputs / "sweep")
  digest = hashlib.sha256(b"TRAIN_STEPS = 4\n").hexdigest()
  assert record["gin_sha256"][str(gin)] == digest
  assert "experiments/marbles_distill_llm.gin" not in record["gin_sha256"]  # no such file
  assert "models/base.gin" in record["gin_sha256"]  # what the cells read, pinned too
  cell_json = json.loads(sweep.cell_file(inputs / "sweep", sweep.cells(record["grid"])[0],
                                         ".json").read_text())
  assert cell_json["gin_sha256"][str(gin)] == digest
  gin.write_text("TRAIN_STEPS = 6\n")
  assert cli.main(_sweep_argv(inputs, f"--gin_file={gin}", "--seeds", "0,1,2")) == 2
  err = _one_line(capsys)
  assert f"gin file {gin} changed since" in err and "fresh --out_dir" in err
  assert sweep.load_sweep(inputs / "sweep")["grid"]["seeds"] == [0, 1]  # nothing recorded


def test_an_included_gin_file_is_pinned_too(inputs, fake_cells, capsys):
  inner = inputs / "inner.gin"
  inner.write_text("TRAIN_STEPS = 4\n")
  outer = inputs / "outer.gin"
  outer.write_text(f"include '{inner}'\n")
  assert cli.main(_sweep_argv(inputs, f"--gin_file={outer}")) == 0
  assert str(inner) in sweep.load_sweep(inputs / "sweep")["gin_sha256"]
  inner.write_text("TRAIN_STEPS = 6\n")
  assert cli.main(_sweep_argv(inputs, f"--gin_file={outer}")) == 2
  assert f"gin file {inner} changed" in _one_line(capsys)


def test_a_relative_gin_file_is_made_absolute(inputs, fake_cells, capsys, monkeypatch):
  (inputs / "mine.gin").write_text("TRAIN_STEPS = 4\n")
  monkeypatch.chdir(inputs)
  assert cli.main(_sweep_argv(inputs, "--gin_file=mine.gin", "--print_commands")) == 0
  assert f"--gin_file={inputs / 'mine.gin'}" in capsys.readouterr().out
  assert cli.main(_sweep_argv(inputs, "--gin_file=mine.gin")) == 0
  assert sweep.load_sweep(inputs / "sweep")["settings"]["gin_files"] == [
      str(inputs / "mine.gin")]
  # gin_configs' own files keep their short names; a missing file is one line.
  assert sweep.resolve_gin_file("overlays/marbles_cpu.gin") == "overlays/marbles_cpu.gin"
  assert cli.main(_sweep_argv(inputs, "--gin_file=nosuch.gin")) == 2
  assert "--gin_file nosuch.gin: no such file" in _one_line(capsys)


def test_a_sweep_json_without_pins_is_pinned_with_a_note(inputs, fake_cells, capsys):
  assert cli.main(_sweep_argv(inputs, "--gin_file=overlays/marbles_cpu.gin")) == 0
  path = inputs / "sweep" / "sweep.json"
  old = json.loads(path.read_text())
  del old["gin_sha256"]
  path.write_text(json.dumps(old))
  capsys.readouterr()
  assert cli.main(_sweep_argv(inputs, "--gin_file=overlays/marbles_cpu.gin")) == 0
  assert "predates pinned gin contents" in capsys.readouterr().out
  assert "overlays/marbles_cpu.gin" in sweep.load_sweep(inputs / "sweep")["gin_sha256"]


def test_report_refuses_cells_that_ran_other_gin_contents(inputs, fake_cells, capsys):
  assert cli.main(_sweep_argv(inputs)) == 0
  out = inputs / "sweep"
  cell = sweep.cells(sweep.load_sweep(out)["grid"])[1]
  record = json.loads(sweep.cell_file(out, cell, ".json").read_text())
  record["gin_sha256"]["models/base.gin"] = "0" * 64
  sweep.cell_file(out, cell, ".json").write_text(json.dumps(record))
  capsys.readouterr()
  assert cli.main(["report", str(out)]) == 2
  assert f"mixes gin contents: {cell.name} ran models/base.gin" in _one_line(capsys)


@pytest.mark.parametrize("args, message", [
    (("distill_llm", "100", "../runs/finetune", "0"), "no gin_configs/models/../runs"),
    (("", "100", "", "0"), "--methods is empty"),
    (("distill_llm", "100", "", ","), "--seeds is empty"),
])
def test_odd_grids_are_one_line_errors(args, message):
  with pytest.raises(SbsError, match=message.replace(".", r"\.")):
    sweep.parse_grid(*args)
  assert [c.name for c in sweep.cells(sweep.parse_grid(" distill_llm", "100", "", "0 "))] == [
      "distill_llm-f100-s0"]


# ---- 2. --alpha.

@pytest.mark.parametrize("alpha", ["7", "-0.1", "nan"])
def test_alpha_outside_0_1_is_refused(inputs, alpha, capsys):
  assert cli.main(_sweep_argv(inputs, "--alpha", alpha)) == 2
  assert "must be between 0 and 1" in _one_line(capsys)
  assert not (inputs / "sweep").exists()


# ---- 3. --metric.

def _done_sweep(inputs, fake_cells, capsys):
  assert cli.main(_sweep_argv(inputs)) == 0
  assert cli.main(["report", str(inputs / "sweep")]) == 0
  capsys.readouterr()
  out = inputs / "sweep"
  return {p: p.read_bytes() for p in [out / "results.md", out / "results.csv",
                                      *sorted((out / "figures").rglob("*.*"))]}


@pytest.mark.parametrize("metric, message", [
    ("acuracy", "not a label accuracy; use one of accuracy, equation_accuracy"),
    ("examples", "not a label accuracy"),
    ("equation_accuracy", "no finished cell's results hold it"),
])
def test_a_bad_metric_overwrites_nothing(inputs, fake_cells, capsys, metric, message):
  before = _done_sweep(inputs, fake_cells, capsys)
  assert cli.main(["report", str(inputs / "sweep"), "--metric", metric]) == 2
  assert message in _one_line(capsys)
  assert {p: p.read_bytes() for p in before} == before
  assert not list((inputs / "sweep").rglob(".*.tmp*"))


# ---- 4. Damaged sweep.json, cell records and results.

@pytest.mark.parametrize("text, message", [
    ('{"settings": {', "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"grid": {}}', "no 'settings' object"),
    ('{"settings": {"dataset": "marbles"}, "grid": {}}', "'settings' has no 'alpha'"),
])
def test_a_bad_sweep_json_is_one_line(inputs, fake_cells, capsys, text, message):
  assert cli.main(_sweep_argv(inputs)) == 0
  (inputs / "sweep" / "sweep.json").write_text(text)
  capsys.readouterr()
  for argv in (["report", str(inputs / "sweep")], _sweep_argv(inputs)):
    assert cli.main(argv) == 2
    err = _one_line(capsys)
    assert str(inputs / "sweep" / "sweep.json") in err and message in err


def test_a_truncated_results_json_names_the_cell_and_how_to_rerun(inputs, fake_cells,
                                                                  capsys):
  assert cli.main(_sweep_argv(inputs)) == 0
  results = inputs / "sweep" / "distill_llm-f100-s1" / "results.json"
  results.write_text(results.read_text()[:20])
  capsys.readouterr()
  assert cli.main(["report", str(inputs / "sweep")]) == 2
  err = _one_line(capsys)
  assert str(results) in err and "cell distill_llm-f100-s1 has damaged results" in err
  assert "delete that file and rerun the same `sbs sweep` command" in err
  assert not (inputs / "sweep" / "results.md").exists()


def test_an_unwritable_output_is_one_line(inputs, fake_cells, capsys):
  assert cli.main(_sweep_argv(inputs)) == 0
  (inputs / "sweep" / "results.md").mkdir()  # cannot be replaced by a file (even by root)
  capsys.readouterr()
  assert cli.main(["report", str(inputs / "sweep")]) == 2
  assert "cannot write the report in" in _one_line(capsys)
  (inputs / "file").write_text("")
  assert cli.main(_sweep_argv(inputs, out="file/sweep")) == 2
  assert "choose a writable --out_dir" in _one_line(capsys)


# ---- 5. Cells running elsewhere.

def test_all_cells_done_only_when_every_cell_has_results(inputs, fake_cells, capsys):
  out = inputs / "sweep"
  argv = _sweep_argv(inputs)
  held = sweep.Cell("distill_llm", 100.0, "", 0)
  with sweep._cell_lock(str(out), held) as mine:  # another sweep process runs it
    assert mine
    assert cli.main(argv) == sweep.NOT_DONE_EXIT_CODE
  printed = capsys.readouterr().out
  assert fake_cells == ["distill_llm-f100-s1"]
  assert "all cells done" not in printed
  assert ("sweep not finished: 1 cell (distill_llm-f100-s0) running in another sweep "
          "process") in printed
  # The other process stopped without results: this one says so, and a rerun finishes it.
  assert sweep.finish_line(str(out), sweep.load_sweep(out)["grid"])[0].startswith(
      "sweep not finished: 1 cell (distill_llm-f100-s0) unfinished")
  assert cli.main(argv) == 0 and "all cells done" in capsys.readouterr().out


# ---- 6. A typo is not pinned.

def test_a_dataset_typo_is_refused_before_anything_is_written(inputs, fake_cells, capsys):
  assert cli.main(_sweep_argv(inputs, dataset="marbels")) == 2
  err = _one_line(capsys)
  assert "--dataset marbels: no annotation records" in err and "annotated there: marbles" in err
  assert not (inputs / "sweep" / "sweep.json").exists()
  assert cli.main(_sweep_argv(inputs)) == 0 and len(fake_cells) == 2
  assert cli.main(_sweep_argv(inputs, "--vocab", str(inputs / "nope.model"))) == 2
  assert "--vocab" in _one_line(capsys)


def test_settings_may_change_while_no_cell_has_trained(tmp_path):
  settings = {"dataset": "marbles", "alpha": 0.5, "annotation_dir": "/a", "vocab": "/v",
              "gin_files": [], "bindings": ["TrainConfig.no_such_field=1"]}
  grid = sweep.parse_grid("distill_llm", "100", "", "0")
  sweep.record_sweep(tmp_path, settings, grid)
  cell = sweep.cells(grid)[0]  # it ran, and stopped at the bad binding: no model dir
  sweep.cell_file(tmp_path, cell, ".json").parent.mkdir()
  sweep.cell_file(tmp_path, cell, ".json").write_text(json.dumps(
      sweep.cell_record(settings, cell)))
  fixed = dict(settings, bindings=["TRAIN_STEPS=3"])
  sweep.record_sweep(tmp_path, fixed, grid)
  assert sweep.load_sweep(tmp_path)["settings"]["bindings"] == ["TRAIN_STEPS=3"]
  assert not sweep.cell_file(tmp_path, cell, ".json").exists()  # the old record is gone
  (tmp_path / cell.name).mkdir()  # now it has trained: the settings are fixed
  with pytest.raises(SbsError, match="other settings"):
    sweep.record_sweep(tmp_path, settings, grid)


# ---- 7. `sbs demo`: arguments first, and no stale vocabulary.

@pytest.mark.parametrize("argv, message", [
    (["--fraction", "30"], "--fractions: 30 is not one of the prepared subsamples"),
    (["--fraction", "nan"], "not one of the prepared subsamples"),
    (["--seeds", "0,x"], "--seeds: cannot read"),
    (["--data_dir", "/no/such/dir"], "--data_dir /no/such/dir: no such directory"),
    (["--no_such_flag"], "unrecognised argument '--no_such_flag'"),
])
def test_demo_checks_its_arguments_first(tmp_path, capsys, argv, message):
  assert cli.main(["demo", "--out_dir", str(tmp_path / "demo"), *argv]) == 2
  assert message in _one_line(capsys)
  assert not (tmp_path / "demo").exists()  # refused before any work


def test_demo_refuses_an_unwritable_out_dir(tmp_path, capsys):
  (tmp_path / "file").write_text("")
  assert cli.main(["demo", "--out_dir", str(tmp_path / "file" / "demo")]) == 2
  assert "cannot write there" in _one_line(capsys)


def test_a_stale_or_damaged_vocabulary_is_trained_again(tmp_path, monkeypatch, capsys):
  from sbs_jax.experiments import prepare
  texts = {"a": [f"alpha beta gamma {i} delta" for i in range(200)],
           "b": [f"one two three {i} four five" for i in range(200)]}
  monkeypatch.setattr(prepare.vocab_lib, "train_texts",
                      lambda annotation_dir, datasets: iter(texts[datasets[0]]))
  path = tmp_path / "vocab" / "spm.model"
  kwargs = {"vocab_size": 300, "model_type": "bpe"}
  assert prepare.ensure_vocabulary(tmp_path, ["a"], path, **kwargs)
  first = path.read_bytes()
  assert not prepare.ensure_vocabulary(tmp_path, ["a"], path, **kwargs)  # reused
  assert prepare.ensure_vocabulary(tmp_path, ["b"], path, **kwargs)  # another dataset
  assert path.read_bytes() != first
  assert "was not trained from these annotations" in capsys.readouterr().out
  path.write_bytes(path.read_bytes()[:100])  # truncated
  assert prepare.ensure_vocabulary(tmp_path, ["b"], path, **kwargs)
  assert prepare._loads(path)
  (path.parent / "spm.model.source.json").unlink()  # of an older run: no record
  assert prepare.ensure_vocabulary(tmp_path, ["b"], path, **kwargs)


def test_a_changed_vocabulary_is_refused_by_the_sweep(inputs, fake_cells, capsys):
  assert cli.main(_sweep_argv(inputs)) == 0
  (inputs / "spm.model").write_bytes(b"another vocabulary")
  assert cli.main(_sweep_argv(inputs)) == 2
  assert f"vocabulary {inputs / 'spm.model'} changed since" in _one_line(capsys)


# ---- 8. `sbs plan`: meshes and gin files.

PLAN = ["plan", "--gin_file=experiments/cqa_distill_llm.gin"]


@pytest.mark.parametrize("mesh, message", [
    ("-2x4", "DATA and MODEL must be positive device counts"),
    ("0x4", "DATA and MODEL must be positive device counts"),
    ("-1x4", "-1 needs --topology"),
    ("4", "--mesh must look like 8x4"),
    ("3x1", "batch_size 224 does not split evenly over 3 data shards"),
])
def test_plan_refuses_bad_meshes(capsys, mesh, message):
  assert cli.main([*PLAN, f"--mesh={mesh}"]) == 2
  assert message in _one_line(capsys)


def test_plan_refuses_a_batch_that_does_not_split_into_micro_batches(capsys):
  assert cli.main([*PLAN, "--mesh=4x1", "--gin.ParallelismConfig.grad_accum_steps=3"]) == 2
  assert "into ParallelismConfig.grad_accum_steps = 3 micro-batches" in _one_line(capsys)


def test_plan_without_a_gin_file_is_one_line(capsys):
  assert cli.main(["plan", "--mesh=8x4"]) == 2
  assert "give the run's gin files" in _one_line(capsys)
  assert cli.main([*PLAN, "--mesh=8x4", "--hbm_gib=0"]) == 2
  assert "--hbm_gib" in _one_line(capsys)


# ---- 9. `sbs bench`.

@pytest.mark.parametrize("argv, message", [
    (["--batch", "abc"], "--batch 'abc': give rows per step as positive integers"),
    (["--batch", "0"], "positive integers"),
    (["--size", "huge"], "--size 'huge': one of tiny"),
    (["--steps", "0"], "--steps 0: must be 1 or more"),
    (["--task_feature_lengths", "1024"], "INPUTS,TARGETS"),
    (["--out", "/no/such/dir/bench.jsonl"], "cannot append to it"),
])
def test_bench_checks_its_arguments(capsys, argv, message):
  assert cli.main(["bench", *argv]) == 2
  assert message in _one_line(capsys)


def test_bench_that_fails_exits_non_zero_and_keeps_the_json(capsys, monkeypatch, tmp_path):
  from sbs_jax.perf import bench

  def broken(args, batch):
    raise RuntimeError(f"RESOURCE_EXHAUSTED: out of memory at batch {batch}\nmore")
    yield  # pylint: disable=unreachable
  monkeypatch.setattr(bench, "bench", broken)
  out = tmp_path / "bench.jsonl"
  assert cli.main(["bench", "--size", "tiny", "--batch", "2,4", "--out", str(out)]) == 2
  captured = capsys.readouterr()
  lines = [json.loads(l) for l in captured.out.splitlines()]
  assert [l["batch"] for l in lines] == [2, 4] and "out of memory" in lines[0]["error"]
  assert [json.loads(l) for l in out.read_text().splitlines()] == lines
  err = captured.err.strip()
  assert len(err.splitlines()) == 1 and "2 of 2 batch sizes failed" in err


# ---- 10. launch/tpu.py knows the slices `sbs plan` knows.

def _launcher():
  import importlib.util
  spec = importlib.util.spec_from_file_location("sbs_launch_tpu_h", REPO / "launch" / "tpu.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("accelerator, ok", [
    ("v4-7", False), ("v4-12", False), ("v5e-3", False), ("v9-8", False), ("v3-12", False),
    ("v4-8", True), ("v4-64", True), ("v4-1536", True), ("v5litepod-16", True),
    ("v6e-8", True), ("v3-8", True), ("v5p-8", True)])
def test_launcher_refuses_what_is_no_slice(tmp_path, capsys, accelerator, ok):
  tpu = _launcher()
  code = tpu.main(["create", "--name", "sbs", "--zone", "us-central2-b", "--dry_run",
                   "--state_dir", str(tmp_path), "--accelerator_type", accelerator])
  captured = capsys.readouterr()
  if ok:
    assert code == 0 and f"--accelerator-type={accelerator}" in captured.out
  else:
    assert code == 2 and not captured.out
    assert len(captured.err.strip().splitlines()) == 1
    assert f"--accelerator_type {accelerator}: " in captured.err


def test_launcher_checks_the_form_only_without_the_package(monkeypatch):
  tpu = _launcher()
  monkeypatch.setattr(tpu, "_slices_module", lambda: None)
  tpu.check_accelerator_type("v4-8")
  with pytest.raises(tpu.LaunchError, match="not an accelerator type"):
    tpu.check_accelerator_type("tpu")
