"""An annotation dir, as `sbs annotate` writes it and everything else reads it (local or gs://):

    <dir>/<dataset>/<split>.tfrecord-SSSSS-of-NNNNN     the records (data/records.py)
    <dir>/<dataset>/<split>.stats.json                  the split's stats, once all shards
                                                        are done
    <dir>/<dataset>/<split>.stats-SSSSS-of-NNNNN.json   one shard's stats (several shards)
    <dir>/<dataset>/.partial/<split>-SSSSS-of-NNNNN/    an unfinished shard's manifest and
                                                        journal (annotate/job.py)

The annotation job, the SeqIO source, task discovery and `sbs report` name these files
through this class only.
"""

from __future__ import annotations

import logging
import re

from sbs_jax.data import records

log = logging.getLogger(__name__)

# What a dataset may be called (a custom file's stem, a folder here): it becomes part of SeqIO
# task names, and a leading '.' would hide the folder.
DATASET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")


def _shard(shard_index: int, num_shards: int) -> str:
  return f"{shard_index:05d}-of-{num_shards:05d}"


class AnnotationDir:
  """The files of one annotation dir; paths are strings (gs:// kept as given)."""

  def __init__(self, path):
    self.path = str(path).rstrip("/") or "/"

  def __repr__(self) -> str:
    return f"AnnotationDir({self.path!r})"

  def dataset_dir(self, dataset: str) -> str:
    return f"{self.path}/{dataset}"

  def records_file(self, dataset: str, split: str, shard_index: int = 0,
                   num_shards: int = 1) -> str:
    return f"{self.dataset_dir(dataset)}/{records.shard_name(split, shard_index, num_shards)}"

  def records_pattern(self, dataset: str, split: str) -> str:
    return f"{self.dataset_dir(dataset)}/{split}.tfrecord-*-of-*"

  def record_files(self, dataset: str, split: str) -> list[str]:
    """The split's record files, in shard order (none: an empty list)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return sorted(tf.io.gfile.glob(self.records_pattern(dataset, split)))

  def stats_file(self, dataset: str, split: str, shard_index: int = 0,
                 num_shards: int = 1) -> str:
    """The split's stats (one shard), or one shard's stats (several)."""
    if num_shards == 1:
      return f"{self.dataset_dir(dataset)}/{split}.stats.json"
    return f"{self.dataset_dir(dataset)}/{split}.stats-{_shard(shard_index, num_shards)}.json"

  def split_stats_files(self, dataset: str) -> list[str]:
    """The stats of the dataset's finished splits (`<split>.stats.json`), sorted."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
      return sorted(tf.io.gfile.glob(f"{self.dataset_dir(dataset)}/*.stats.json"))
    except tf.errors.OpError:
      return []

  def work_dir(self, dataset: str, split: str, shard_index: int = 0,
               num_shards: int = 1) -> str:
    """Where an unfinished shard keeps its manifest and journal."""
    return f"{self.dataset_dir(dataset)}/.partial/{split}-{_shard(shard_index, num_shards)}"

  def datasets(self) -> list[str]:
    """The datasets with records here, by name; a folder whose name cannot be part of a
    task name is left out with a warning. An unreadable dir (a bucket without access) has
    none."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
      files = tf.io.gfile.glob(f"{self.path}/*/*.tfrecord-*-of-*")
    except tf.errors.OpError:
      return []
    names = set()
    for path in files:
      name = path.rsplit("/", 2)[-2]
      if name.startswith("."):
        continue
      if not DATASET_NAME.fullmatch(name):
        log.warning("%s/%s: not registered (task names allow letters, digits, '_' and '.')",
                    self.path, name)
        continue
      names.add(name)
    return sorted(names)
