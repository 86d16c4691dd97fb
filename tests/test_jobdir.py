"""sbs_jax.jobdir: whole-or-nothing writes (local and gs:// through the GCS emulator), the
cleanup of a killed writer's temporaries, pinned-settings differences, locks, progress."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import pytest

from sbs_jax.errors import SbsError
from sbs_jax.jobdir import files, locks, manifest, progress
from tests.helpers import REPO


def _leftovers(folder):
  return sorted(p.name for p in folder.iterdir() if files.TEMP_MARK in p.name)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / "stats.json"
  files.write_json_atomically(target, {"b": 1, "a": [1, 2]})
  assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
  with pytest.raises(ZeroDivisionError):
    with files.atomic_file(target, encoding="utf-8") as f:
      f.write("half of a new fi")
      _ = 1 / 0
  assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
  assert _leftovers(tmp_path) == []
  files.write_json_atomically(target, {"b": 1, "a": 2}, sort_keys=False)
  assert list(json.loads(target.read_text())) == ["b", "a"]


def test_the_temporaries_of_a_killed_writer_are_removed_and_a_live_ones_kept(tmp_path):
  target = tmp_path / "out.tfrecord"
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = tmp_path / f".out.tfrecord{files.TEMP_MARK}{dead.pid}"
  live = tmp_path / f".out.tfrecord{files.TEMP_MARK}{os.getppid()}"
  other = tmp_path / f".other{files.TEMP_MARK}{dead.pid}"
  for p in (stale, live, other):
    p.write_text("x")
  assert files.remove_stale_temps([target]) == [stale]
  assert _leftovers(tmp_path) == sorted([live.name, other.name])


def test_file_sha256_reads_local_files_whole():
  path = REPO / "setup.py"
  assert files.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_whole_or_nothing_on_gs_through_the_emulator(gcs):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  target = "gs://sbs-test/jobdir/results.json"
  files.write_json_atomically(target, {"step": 3})
  with pytest.raises(RuntimeError):
    with files.atomic_file(target) as f:
      f.write('{"step": 4')
      raise RuntimeError("killed midway")
  with tf.io.gfile.GFile(target) as f:
    assert json.loads(f.read()) == {"step": 3}
  assert gcs.list_objects("sbs-test", "jobdir/") == ["jobdir/results.json"]
  assert files.file_sha256(target) == hashlib.sha256(
      (json.dumps({"step": 3}, indent=2) + "\n").encode()).hexdigest()


def test_differences_name_each_changed_leaf_in_both_forms():
  stored = {"teacher": "a", "network": {"d_model": 64, "heads": 2}, "steps": 3,
            "vocabulary_sha256": "0" * 64}
  current = {"teacher": "b", "network": {"d_model": 32, "heads": 2}, "steps": 3,
             "vocabulary_sha256": "1" * 64, "new": True}
  assert manifest.differences(stored, current) == [
      ("network.d_model", 64, 32), ("new", None, True), ("teacher", "a", "b"),
      ("vocabulary_sha256", "0" * 64, "1" * 64)]
  assert manifest.differences(stored, current, skip=["teacher", "new"],
                              nested=False)[0] == ("network", stored["network"],
                                                   current["network"])
  flat = manifest.describe_difference(stored, current, skip=["vocabulary_sha256"])
  assert flat == ('network: {"d_model": 64, "heads": 2} -> {"d_model": 32, "heads": 2}; '
                  'new: null -> true; teacher: "a" -> "b"')
  nested = manifest.describe_nested(stored, current)
  assert nested[0] == "network.d_model 64 (this run: 32)"
  assert nested[-1] == "vocabulary_sha256 000000000000... (this run: 111111111111...)"
  assert manifest.differences(stored, dict(stored)) == []


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
  path = tmp_path / "lock"
  script = ("import sys, time; from sbs_jax.jobdir import locks; "
            "held = locks.lock_exclusively(sys.argv[1], 'busy'); print('locked', flush=True); "
            "time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(SbsError, match=rf"^another job is here \(pid {proc.pid} on "):
      locks.lock_exclusively(path, "another job is here")
  finally:
    proc.kill()
    proc.wait()
  held = locks.lock_exclusively(path, "another job is here")
  held.close()
  assert not path.exists()
  assert locks.acquire(str(tmp_path), SbsError).release() is None


def test_progress_logs_every_tenth_with_rate_as_its_command(caplog):
  logger = logging.getLogger("sbs_jax.some_command")
  bar = progress.Progress(20, 0, "rows", False, logger=logger, unit="row")
  bar._start -= 100  # pylint: disable=protected-access  # as if it had run for a while
  with caplog.at_level(logging.INFO):
    for _ in range(20):
      bar.update()
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 10 and {r.name for r in caplog.records} == {"sbs_jax.some_command"}
  assert lines[0].startswith("rows: 2/20 (") and " row/s, ETA " in lines[0]
  assert lines[-1].startswith("rows: 20/20 (") and lines[-1].endswith("ETA 0s)")
