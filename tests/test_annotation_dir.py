"""The annotation dir's layout (sbs_jax/data/annotation_dir.py) is what `sbs annotate`
writes and what the SeqIO source, discovery and `sbs report` read: checked against a real
sharded annotation run, not against the class's own strings."""

import logging

from sbs_jax.annotate import build
from sbs_jax.annotate import job as job_lib
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.data.sources import AnnotationSource
from tests.helpers.data import annotate_args


def test_the_layout_is_what_a_sharded_annotation_run_writes(tmp_path, data_dir):
  out = tmp_path / "ann"
  for i in range(2):
    result = job_lib.run(build.build_job(annotate_args(
        dataset="svamp", split="test", teacher="replay", out_dir=out, data_dir=data_dir,
        num_shards=2, shard_index=i)))
  adir = AnnotationDir(f"{out}/")  # a trailing slash names the same dir
  written = sorted(str(p) for p in (out / "svamp").iterdir())
  assert adir.record_files("svamp", "test") == [
      adir.records_file("svamp", "test", i, 2) for i in range(2)]
  assert written == sorted([*adir.record_files("svamp", "test"),
                            *(adir.stats_file("svamp", "test", i, 2) for i in range(2)),
                            adir.stats_file("svamp", "test")])
  assert str(result.records_path) == adir.records_file("svamp", "test", 1, 2)
  assert not (out / "svamp" / ".partial").exists()  # finished shards leave no work dir
  assert adir.datasets() == ["svamp"]
  assert AnnotationSource("svamp", str(out)).list_shards("test") == adir.record_files(
      "svamp", "test")
  assert adir.record_files("svamp", "train") == []


def test_datasets_skip_names_a_task_cannot_hold(tmp_path, caplog):
  for name in ("good_one", "a.b", "bad-name", ".hidden", "empty"):
    (tmp_path / name).mkdir()
  for name in ("good_one", "a.b", "bad-name", ".hidden"):
    (tmp_path / name / "train.tfrecord-00000-of-00001").write_bytes(b"")
  (tmp_path / "empty" / "notes.txt").write_text("no records")
  with caplog.at_level(logging.WARNING):
    assert AnnotationDir(tmp_path).datasets() == ["a.b", "good_one"]
  assert "bad-name: not registered" in caplog.text
  assert AnnotationDir(tmp_path / "missing").datasets() == []
