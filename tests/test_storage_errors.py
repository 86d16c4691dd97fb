"""A full disk, a file size limit or an unwritable path is one line and exit 2 from every
command, whichever library met it; an output path that cannot be written is refused before
the work, and a failed write leaves no partial file."""

import errno
import os
import pathlib
import subprocess
import sys

import pytest

from sbs_jax import paths
from sbs_jax.errors import SbsError, storage_error_line
from tests.helpers import REPO
from tests.helpers.cli import run_sbs_here


def _raised(make):
  try:
    make()
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError("nothing raised")


def test_a_full_disk_is_found_under_a_library_error():
  def inner():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/ckpt/x")

  def outer():
    try:
      inner()
    except OSError as e:
      raise RuntimeError("checkpoint save failed") from e
  line = storage_error_line(_raised(outer))
  assert line.startswith(f"/data/ckpt/x: {os.strerror(errno.ENOSPC)}")
  assert "free some space" in line


def test_a_library_message_that_quotes_the_system_is_recognised():
  e = ValueError(f"Error writing \"x/0.data\": [OS error: {os.strerror(errno.EFBIG)}]\nmore")
  line = storage_error_line(e)
  assert line.startswith(os.strerror(errno.EFBIG)) and "ulimit -f" in line
  assert "\n" not in line
  group = ExceptionGroup("many", [ValueError("x"), OSError(errno.EROFS, "Read-only file system",
                                                           "/ro")])
  assert storage_error_line(group).startswith("/ro: Read-only file system")


def test_other_errors_are_not_taken_for_storage_errors():
  assert storage_error_line(ValueError("shapes (3,) and (4,) do not match")) is None
  assert storage_error_line(KeyError("params")) is None
  # a missing file named by nobody is a bug's symptom, not a path the user gave
  assert storage_error_line(OSError(errno.ENOENT, "No such file or directory")) is None


def test_output_paths_that_cannot_be_written_are_refused_up_front(tmp_path):
  (tmp_path / "afile").write_text("x")
  (tmp_path / "adir").mkdir()
  with pytest.raises(SbsError, match=r"--out .*afile is a file, so nothing can be written"):
    paths.check_output_path(tmp_path / "afile" / "deeper" / "v.model", "--out")
  with pytest.raises(SbsError, match="is a folder, not a file"):
    paths.check_output_path(tmp_path / "adir", "--out")
  with pytest.raises(SbsError, match="is a file, not a folder"):
    paths.check_output_path(tmp_path / "afile", "--out_dir", is_dir=True)
  paths.check_output_path(tmp_path / "new" / "deeper" / "v.model", "--out")  # creatable
  paths.check_output_path(tmp_path / "adir", "--out_dir", is_dir=True)
  paths.check_output_path("gs://bucket/x", "--out")  # not checked here
  if os.geteuid() != 0:  # root writes anywhere
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(SbsError, match="is not writable"):
      paths.check_output_path(ro / "v.model", "--out")


def _sbs(args, limit_blocks=None, cwd=None):
  command = [sys.executable, "-m", "sbs_jax.cli", *map(str, args)]
  if limit_blocks is not None:
    command = ["bash", "-c", f"ulimit -f {limit_blocks}; exec \"$@\"", "bash", *command]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                        cwd=cwd or REPO)


@pytest.fixture(scope="module")
def small_annotations(tmp_path_factory, data_dir):
  out = tmp_path_factory.mktemp("ann")
  result = _sbs(["annotate", "--dataset", "svamp", "--split", "train", "--teacher", "replay",
                 "--out_dir", out, "--data_dir", data_dir, "--no_progress"])
  assert result.returncode == 0, result.stderr
  return out


def test_vocab_under_a_file_is_one_line_before_any_work(tmp_path):
  (tmp_path / "afile").write_text("keep me")
  result = run_sbs_here("vocab", "--annotation_dir", tmp_path / "no-annotations", "--datasets",
                        "svamp", "--out", tmp_path / "afile" / "spm.model")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"sbs vocab: error: the vocabulary path {tmp_path / 'afile' / 'spm.model'}: "
      f"{tmp_path / 'afile'} is a file, so nothing can be written under it; choose another path"]
  assert (tmp_path / "afile").read_text() == "keep me"


def test_a_file_size_limit_is_one_line_and_leaves_nothing_behind(tmp_path, small_annotations):
  out = tmp_path / "v" / "spm.model"
  limited = _sbs(["vocab", "--annotation_dir", small_annotations, "--datasets", "svamp",
                  "--out", out, "--vocab_size", "600"], limit_blocks=20)
  assert limited.returncode == 2, limited.stderr
  lines = limited.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("sbs vocab: error: ")
  assert os.strerror(errno.EFBIG) in lines[0] and "ulimit -f" in lines[0]
  assert not out.parent.exists() or not any(out.parent.iterdir())
  # -v asks for the traceback, and gets it
  verbose = _sbs(["-v", "vocab", "--annotation_dir", small_annotations, "--datasets", "svamp",
                  "--out", out, "--vocab_size", "600"], limit_blocks=20)
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
  fine = _sbs(["vocab", "--annotation_dir", small_annotations, "--datasets", "svamp",
               "--out", out, "--vocab_size", "600"])
  assert fine.returncode == 0, fine.stderr
  assert sorted(p.name for p in out.parent.iterdir()) == ["spm.model"]


def test_generated_data_cut_by_a_size_limit_is_not_left_behind(tmp_path):
  # A cut marbles.jsonl would be annotated later as a smaller dataset, with no error.
  out = tmp_path / "syn"
  limited = _sbs(["synthetic", "generate", "--out_dir", out], limit_blocks=5)
  assert limited.returncode == 2
  assert len(limited.stderr.strip().splitlines()) == 1
  assert os.strerror(errno.EFBIG) in limited.stderr
  assert [p for p in out.rglob("*") if p.is_file()] == []
  fine = _sbs(["synthetic", "generate", "--out_dir", out])
  assert fine.returncode == 0, fine.stderr
  assert len((out / "train" / "marbles.jsonl").read_text().splitlines()) == 2000
