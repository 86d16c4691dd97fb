"""A SeqIO data source over the annotation TFRecords, with the splits the paper needs.

Splits:
    train                    the training records (less the carved validation part)
    train_50 / train_25 / train_12.5
                             a deterministic subsample of train, by a hash of (seed, id);
                             smaller fractions are subsets of larger ones
    validation               for model selection: the benchmark's own `valid` records, or,
                             where it has none (CQA, SVAMP), a deterministic 10% of train
    test                     for the final number only

Each record is the annotation schema (`sbs_jax/data/records.py`) plus `evaluation`
(1 on validation and test). Membership is decided per record from a hash of its id, so it does not depend on record
order, sharding or the number of hosts.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from sbs_jax.data import records as records_lib
from sbs_jax.data.annotation_dir import AnnotationDir
from sbs_jax.data.preprocessors import as_graph
from sbs_jax.errors import DataError

TRAIN_FRACTIONS = {"train": 1.0, "train_50": 0.5, "train_25": 0.25, "train_12.5": 0.125}
SPLITS = tuple(TRAIN_FRACTIONS) + ("validation", "test")
_BUCKETS = 1_000_000


def _in_bucket(salt: str, ids: tf.Tensor, fraction: float) -> tf.Tensor:
  """Whether hash(salt + id) falls in the first `fraction` of the hash space."""
  bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([salt, ids]), _BUCKETS)
  return bucket < int(round(fraction * _BUCKETS))


class AnnotationSource(seqio.DataSource):
  """Reads `<annotation_dir>/<dataset>/<file split>.tfrecord-*` written by `sbs annotate`.

  Args:
    dataset: the dataset's directory name under the annotation dir.
    annotation_dir: a directory or a callable returning one (resolved at read time, so
      that gin bindings made after `import tasks` apply); gs:// paths work.
    validation_fraction: the part of train carved out when there are no `valid` records.
    subsample_seed: the seed of the train_<pct> subsamples.
  """

  def __init__(self, dataset: str, annotation_dir, validation_fraction: float = 0.1,
               subsample_seed: int = 0):
    super().__init__(splits=SPLITS)
    self.dataset = dataset
    self._annotation_dir = annotation_dir
    self.validation_fraction = validation_fraction
    self.subsample_seed = subsample_seed
    self._counts: dict = {}

  @property
  def annotation_dir(self) -> str:
    d = self._annotation_dir
    return str(d() if callable(d) else d)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def _glob(self, file_split: str) -> list[str]:
    return AnnotationDir(self.annotation_dir).record_files(self.dataset, file_split)

  def has_own_validation(self) -> bool:
    return bool(self._glob("valid"))

  def _file_split(self, split: str) -> str:
    if split not in SPLITS:
      raise DataError(self.dataset, f"no split {split!r}; splits: {', '.join(SPLITS)}")
    if split == "test":
      return "test"
    if split == "validation" and self.has_own_validation():
      return "valid"
    return "train"

  def list_shards(self, split: str) -> list[str]:
    file_split = self._file_split(split)
    files = self._glob(file_split)
    if not files:
      raise DataError(f"{self.annotation_dir}/{self.dataset}",
                      f"no annotation records for split {file_split!r}: run `sbs annotate "
                      f"--dataset {self.dataset} --split {file_split} ...` first")
    return files

  def _keep(self, split: str):
    """The record filter that makes `split` out of its file split."""
    if split == "test" or (split == "validation" and self.has_own_validation()):
      return None
    carve = not self.has_own_validation()
    val_salt = "sbs-validation:"
    if split == "validation":
      return lambda r: _in_bucket(val_salt, r["id"], self.validation_fraction)
    fraction = TRAIN_FRACTIONS[split]
    if not carve and fraction == 1.0:
      return None  # all of the train files
    frac_salt = f"sbs-subsample-{self.subsample_seed}:"

    def keep(r):
      ok = tf.constant(True)
      if carve:
        ok = tf.logical_not(_in_bucket(val_salt, r["id"], self.validation_fraction))
      if fraction < 1.0:
        ok = tf.logical_and(ok, _in_bucket(frac_salt, r["id"], fraction))
      return ok

    return keep

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # unused, as for other seqio sources
    files = self.list_shards(split)
    ds = tf.data.TFRecordDataset(files)  # files in sorted order; records in row order
    if shard_info:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    spec = records_lib.feature_spec()
    evaluation = tf.constant(int(split in ("validation", "test")), tf.int64)

    def parse(raw):
      # `evaluation` tells the preprocessors to score against gold labels.
      return dict(tf.io.parse_single_example(raw, spec), evaluation=evaluation)

    ds = ds.map(as_graph(parse),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    keep = self._keep(split)
    if keep is not None:
      ds = ds.filter(as_graph(keep))
    return ds

  def num_input_examples(self, split: str) -> int:
    """The records of `split` (as many as get_dataset yields), counted once per dir.

    SeqIO asks for it whenever it builds a pipeline. Only the ids are parsed, a batch at a
    time, and only where the split is a filter of its files: a record-by-record parse of
    every field took seconds of each run's start."""
    key = (self.annotation_dir, split)
    if key not in self._counts:
      raw = tf.data.TFRecordDataset(self.list_shards(split))
      keep = self._keep(split)
      if keep is None:
        count = raw.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
      else:
        ids = {"id": records_lib.feature_spec()["id"]}
        count = raw.batch(4096).map(as_graph(lambda b: tf.io.parse_example(b, ids))).reduce(
            tf.constant(0, tf.int64), as_graph(lambda n, r: n + tf.reduce_sum(tf.cast(
                tf.broadcast_to(keep(r), tf.shape(r["id"])), tf.int64))))
      self._counts[key] = int(count)
    return self._counts[key]
