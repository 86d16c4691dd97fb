"""`sbs predict --input_file` hardening: an output that is the input, a finished output
checked against its input and settings, paths that cannot be written, its own logger, ids
from the rows' `id` field, and no libtpu start-up lines on a machine without a TPU."""

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest

from sbs_jax import cli, console
from sbs_jax.errors import DataError, SbsError
from sbs_jax.serve import job as job_lib
from sbs_jax.serve.predictor import DecodeSettings, Predictor
from tests.helpers import REPO
from tests.helpers.predict import make_model_dir, read_lines, write_rows

ROWS = [{"input": "Where do you keep a pen?"}, {"input": "What is a cat?"},
        {"input": "Who reads a book?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
  return make_model_dir(tmp_path_factory.mktemp("hardening"), data_dir)


@pytest.fixture(scope="module")
def predictor(model_dir):
  return Predictor.load(str(model_dir), DecodeSettings(batch_size=4, label_decode_length=4))


def sbs(capsys, *args) -> tuple[int, list[str]]:
  """`sbs ARGS` in this process (refusals come before the model is loaded): exit code,
  stderr lines."""
  capsys.readouterr()
  code = cli.main([str(a) for a in args])
  return code, capsys.readouterr().err.strip().splitlines()


def predict_file(model_dir, source, output, *extra):
  return ("predict", "--model_dir", model_dir, "--input_file", source, "--output_file",
          output, "--max_decode_length", "4", "--no_progress", *extra)


# ---------------------------------------------------------------- 1. output == input


@pytest.mark.parametrize("spelling", ["same", "dot", "absolute", "symlink", "hardlink",
                                      "symlinked_dir"])
@pytest.mark.parametrize("restart", [False, True])
def test_an_output_that_is_the_input_is_refused(model_dir, tmp_path, capsys, monkeypatch,
                                                spelling, restart):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  before = source.read_bytes()
  monkeypatch.chdir(tmp_path)
  if spelling == "symlink":
    (tmp_path / "link.jsonl").symlink_to(source)
  elif spelling == "hardlink":
    os.link(source, tmp_path / "link.jsonl")
  elif spelling == "symlinked_dir":
    (tmp_path / "alias").symlink_to(tmp_path)
  output = {"same": "rows.jsonl", "dot": "./rows.jsonl", "absolute": str(source),
            "symlink": "link.jsonl", "hardlink": "link.jsonl",
            "symlinked_dir": "alias/rows.jsonl"}[spelling]
  code, err = sbs(capsys, *predict_file(model_dir, "rows.jsonl", output,
                                        *(["--restart"] if restart else [])))
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith("sbs predict: error: --output_file") and "is the input" in err[0]
  assert "choose another --output_file" in err[0]
  assert source.read_bytes() == before
  assert not list(tmp_path.glob(".*.partial"))


def test_an_input_in_the_work_folder_or_at_the_summary_path_is_refused(model_dir, tmp_path,
                                                                      capsys):
  work = tmp_path / ".out.jsonl.partial"
  work.mkdir()
  inside = write_rows(work / "rows.jsonl", ROWS)
  code, err = sbs(capsys, *predict_file(model_dir, inside, tmp_path / "out.jsonl",
                                        "--restart"))
  assert code == 2 and len(err) == 1 and "work folder" in err[0], err
  assert inside.exists()
  summary = write_rows(tmp_path / "out.jsonl.stats.json", ROWS)
  before = summary.read_bytes()
  code, err = sbs(capsys, *predict_file(model_dir, summary, tmp_path / "out.jsonl"))
  assert code == 2 and len(err) == 1 and "summary" in err[0], err
  assert summary.read_bytes() == before


# ---------------------------------------------------------------- 2. a finished output


def test_a_finished_output_is_checked_against_its_input_and_settings(model_dir, predictor,
                                                                     tmp_path):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir), progress=False)
  first = job_lib.run(job, predictor)
  written = job.output_file.read_bytes()
  again = job_lib.run(job_lib.FileJob(source, job.output_file, str(model_dir),
                                      progress=False), predictor)
  assert again == first and "manifest" not in again  # the same summary, unchanged file
  assert job.output_file.read_bytes() == written

  def rerun(**kwargs):
    settings = kwargs.pop("settings", None)
    other = predictor if settings is None else Predictor(
        predictor.student, predictor.params, predictor.vocabulary, predictor.label_prefix,
        settings=settings, max_input_length=predictor.max_input_length)
    return job_lib.run(job_lib.FileJob(source, job.output_file, str(model_dir),
                                       progress=False, **kwargs), other)

  for change, named in [(dict(rationale=True), "rationale"),
                        (dict(input_key="question"), "input_key"),
                        (dict(label_key="gold"), "label_key"),
                        (dict(id_key="input"), "id_key"),
                        (dict(window=2), "window"),
                        (dict(settings=DecodeSettings(batch_size=4, label_decode_length=5)),
                         "label_decode_length")]:
    if "input_key" in change:  # the rows need the field to get past the row check
      write_rows(source, [{"question": r["input"]} for r in ROWS])
    with pytest.raises(SbsError, match=f"other settings or inputs.*{named}.*--restart"):
      rerun(**change)
    write_rows(source, ROWS)
  # The input changed (one more row, then the same number of other rows).
  write_rows(source, ROWS + [{"input": "One more?"}])
  with pytest.raises(SbsError, match="input_sha256.*rows.*--restart"):
    rerun()
  write_rows(source, [{"input": r["input"] + "!"} for r in ROWS])
  with pytest.raises(SbsError, match=r"input_sha256: .* -> .*--restart"):
    rerun()
  assert job.output_file.read_bytes() == written  # nothing was replaced
  stats = rerun(restart=True)
  assert stats["rows_this_run"] == len(ROWS)
  assert rerun()["rows"] == len(ROWS)  # and now it is finished with these
  # The finished output was edited afterwards.
  job.output_file.write_text(job.output_file.read_text().replace('"id": 0', '"id": 9'))
  with pytest.raises(SbsError, match="was changed after .*--restart"):
    rerun()


@pytest.mark.parametrize("existing", ["hello", "empty", "finished_by_an_older_sbs"])
def test_a_file_the_job_did_not_write_is_not_taken_for_finished(model_dir, predictor,
                                                                tmp_path, existing):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  output = tmp_path / "out.jsonl"
  output.write_text({"hello": "hello\n", "empty": ""}.get(existing, '{"id": 0}\n'))
  if existing == "finished_by_an_older_sbs":  # a summary without a manifest
    (tmp_path / "out.jsonl.stats.json").write_text(json.dumps({"rows": 3}))
  before = output.read_bytes()
  job = job_lib.FileJob(source, output, str(model_dir), progress=False)
  with pytest.raises(SbsError, match="not the finished output of this job.*--restart"):
    job_lib.run(job, predictor)
  assert output.read_bytes() == before
  job.restart = True
  assert job_lib.run(job, predictor)["rows_this_run"] == len(ROWS)
  assert [r["id"] for r in read_lines(output)] == [0, 1, 2]


def test_a_foreign_output_is_refused_by_the_command_in_one_line(model_dir, tmp_path, capsys):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  (tmp_path / "out.jsonl").write_text("hello\n")
  code, err = sbs(capsys, *predict_file(model_dir, source, tmp_path / "out.jsonl"))
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith("sbs predict: error: --output_file") and "--restart" in err[0]
  assert (tmp_path / "out.jsonl").read_text() == "hello\n"


@pytest.mark.parametrize("restart", [False, True])
def test_a_directory_output_is_refused_even_with_restart(model_dir, tmp_path, capsys,
                                                         restart):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  (tmp_path / "out").mkdir()
  for output in (tmp_path / "out", f"{tmp_path}/new/"):
    code, err = sbs(capsys, *predict_file(model_dir, source, output,
                                          *(["--restart"] if restart else [])))
    assert code == 2 and len(err) == 1 and "directory" in err[0], err
  assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "new").exists()


# ---------------------------------------------------------------- 3. unwritable paths


def test_an_output_under_a_file_is_refused_in_one_line(model_dir, tmp_path, capsys):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  (tmp_path / "plain").write_text("a file\n")
  for output in (tmp_path / "plain" / "out.jsonl", tmp_path / "plain" / "deeper" / "o.jsonl"):
    code, err = sbs(capsys, *predict_file(model_dir, source, output))
    assert code == 2 and len(err) == 1, err
    assert "is a file, not a folder" in err[0] and "choose another" in err[0]


def test_an_output_in_a_read_only_folder_is_refused_in_one_line(model_dir, tmp_path, capsys):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  if os.geteuid() != 0:  # root writes into a mode 555 folder; /proc stops root too
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code, err = sbs(capsys, *predict_file(model_dir, source, locked / "out.jsonl"))
    locked.chmod(0o755)
    assert code == 2 and len(err) == 1 and "not writable" in err[0], err
  if sys.platform.startswith("linux"):
    code, err = sbs(capsys, *predict_file(model_dir, source, "/proc/sbs-predict-out.jsonl"))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("sbs predict: error: ") and "--output_file" in err[0], err


def test_a_failing_write_at_the_end_is_one_line(model_dir, predictor, tmp_path, monkeypatch):
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir), progress=False)

  def full_disk(*_):
    raise OSError(28, "No space left on device", str(job.stats_path))
  monkeypatch.setattr(job_lib, "write_json_atomically", full_disk)
  with pytest.raises(SbsError, match="No space left on device.*writable --output_file"):
    job_lib.run(job, predictor)
  assert not job.output_file.exists()


# ---------------------------------------------------------------- 4. its own logger


def test_progress_is_logged_as_sbs_predict(model_dir, predictor, tmp_path, monkeypatch,
                                           caplog):
  real = job_lib.Progress

  def slow_progress(*args, **kwargs):  # as if the run had begun long ago: lines are logged
    progress = real(*args, **kwargs)
    progress._start -= 100  # pylint: disable=protected-access
    return progress
  monkeypatch.setattr(job_lib, "Progress", slow_progress)
  source = write_rows(tmp_path / "rows.jsonl", ROWS)
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir), window=1,
                        progress=False)
  with caplog.at_level(logging.INFO):
    job_lib.run(job, predictor)
  progress = [r for r in caplog.records if "rows.jsonl: " in r.getMessage()]
  assert progress and {r.name for r in progress} == {"sbs_jax.serve.job"}
  # the shared progress logs as whichever command it reports for
  with caplog.at_level(logging.INFO):
    caplog.clear()
    ann = real(2, 0, "ann", False, logger=logging.getLogger("sbs_jax.annotate.job"))
    ann._start -= 100  # pylint: disable=protected-access
    ann.update(2)
  assert [r.name for r in caplog.records] == ["sbs_jax.annotate.job"]


# ---------------------------------------------------------------- 5. ids


def test_rows_with_an_id_field_keep_their_ids(model_dir, predictor, tmp_path):
  rows = [{"id": f"q{i}", **r} for i, r in enumerate(ROWS)]
  source = write_rows(tmp_path / "rows.jsonl", rows)
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir), progress=False)
  job_lib.run(job, predictor)
  assert [r["id"] for r in read_lines(job.output_file)] == ["q0", "q1", "q2"]
  numbered = job_lib.FileJob(source, tmp_path / "index.jsonl", str(model_dir),
                             progress=False, index_ids=True)
  job_lib.run(numbered, predictor)
  assert [r["id"] for r in read_lines(numbered.output_file)] == [0, 1, 2]
  # The finished output pins which ids it has: the other choice is a difference.
  numbered.output_file = job.output_file
  with pytest.raises(SbsError, match="id_key.*--restart"):
    job_lib.run(numbered, predictor)
  with pytest.raises(SbsError, match="exclude each other"):
    job_lib.FileJob(source, tmp_path / "x.jsonl", str(model_dir), id_key="id",
                    index_ids=True)


@pytest.mark.parametrize("ids, where", [(["a", None, "c"], "line 2"),
                                        ([None, "b", "c"], "line 2"),
                                        (["a", "b", None], "line 3")])
def test_ids_on_some_rows_only_are_refused(model_dir, tmp_path, capsys, ids, where):
  rows = [({"id": i} if i else {}) | r for i, r in zip(ids, ROWS)]
  source = write_rows(tmp_path / "rows.jsonl", rows)
  job = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir))
  with pytest.raises(DataError, match=f"{where}: field 'id': .*--index_ids"):
    job_lib.count_rows(job)
  code, err = sbs(capsys, *predict_file(model_dir, source, tmp_path / "out.jsonl"))
  assert code == 2 and len(err) == 1 and where in err[0] and "--index_ids" in err[0], err
  assert not (tmp_path / "out.jsonl").exists()
  with_index = job_lib.FileJob(source, tmp_path / "out.jsonl", str(model_dir),
                               index_ids=True)
  assert job_lib.count_rows(with_index) == 3 and with_index.row_id_key() is None


# ---------------------------------------------------------------- 6. libtpu's start-up


def test_quiet_environment_chooses_cpu_only_without_tpu_chips_or_gpu(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name == "libtpu" else None)

  def environment(chips=False, gpu=False, **env):
    for name in ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT", "TPU_SKIP_MDS_QUERY"):
      monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
      monkeypatch.setenv(name, value)
    monkeypatch.setattr(console, "tpu_chips_present", lambda: chips)
    monkeypatch.setattr(console, "gpu_present", lambda: gpu)
    console.quiet_environment()
    return os.environ.get("JAX_PLATFORMS")

  assert environment() == "cpu"
  assert environment(chips=True) is None  # a TPU VM: unchanged
  assert environment(gpu=True) is None  # JAX picks the GPU as before
  assert environment(JAX_PLATFORMS="") == ""  # the user's choice, even empty
  assert environment(JAX_PLATFORMS="tpu,cpu") == "tpu,cpu"
  assert environment(JAX_FORCE_TPU_INIT="1") is None


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None or console.tpu_chips_present()
                    or console.gpu_present(), reason="needs libtpu without TPU chips or GPU")
def test_predict_prints_no_libtpu_lines_without_a_tpu(model_dir):
  # As a user runs it: no JAX_PLATFORMS (the tests' environment may set it).
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY", "TF_CPP_MIN_LOG_LEVEL")}
  proc = subprocess.run([sys.executable, "-m", "sbs_jax.cli", "predict", "--model_dir",
                         str(model_dir), "--input", "Where is the cat?",
                         "--max_decode_length", "4"], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.splitlines()[-1])["input"] == "Where is the cat?"
  assert proc.stderr.strip() == "", proc.stderr[-2000:]  # no libtpu (nor other) lines
