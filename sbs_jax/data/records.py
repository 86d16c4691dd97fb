"""The annotation TFRecord schema: the one form in which annotations reach the SeqIO tasks.

Each record is a `tf.train.Example` with these features:

    id           bytes   the example's id (dataset's own, else "<split>-<index>")
    index        int64   position of the row in its source file
    dataset      bytes   benchmark name or the custom file's stem
    split        bytes   split name as in the file names (train / valid / test)
    input        bytes   the student's input text
    label        bytes   gold label ("" when has_label = 0)
    has_label    int64   1 when the source row has a gold label
    llm_label    bytes   the teacher's normalised label ("" when parse_ok = 0)
    rationale    bytes   the teacher's rationale
    parse_ok     int64   1 when the completion parsed, else 0 (the record is still written)
    parse_error  bytes   why it did not parse ("" when parse_ok = 1)
    completion   bytes   the raw completion, for audit
    prompt_id    bytes   the prompt the teacher was given (see prompts.py)
    teacher      bytes   the teacher backend and model, e.g. "openai:llama-3-70b"

Files: `<out>/<dataset>/<split>.tfrecord-SSSSS-of-NNNNN`, records in index order.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Mapping

from sbs_jax.jobdir.files import discard, temp_path

BYTES_FEATURES = ("id", "dataset", "split", "input", "label", "llm_label", "rationale",
                  "parse_error", "completion", "prompt_id", "teacher")
INT_FEATURES = ("index", "has_label", "parse_ok")


def shard_name(split: str, shard_index: int, num_shards: int) -> str:
  return f"{split}.tfrecord-{shard_index:05d}-of-{num_shards:05d}"


def feature_spec():
  """The `tf.io.parse_single_example` spec of the schema (for SeqIO sources)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  spec = {k: tf.io.FixedLenFeature([], tf.string) for k in BYTES_FEATURES}
  spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in INT_FEATURES})
  return spec


def _serialize(record: Mapping) -> bytes:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  feature = {}
  for k in BYTES_FEATURES:
    feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[record[k].encode("utf-8")]))
  for k in INT_FEATURES:
    feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(record[k])]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _tf_error_as_os_error(e: Exception, path) -> OSError:
  """A TensorFlow file error as the OSError it stands for (TF keeps no errno)."""
  import errno  # pylint: disable=import-outside-toplevel
  message = getattr(e, "message", None) or str(e)
  lowered = message.lower()
  code = (errno.ENOSPC if "no space" in lowered else
          errno.EFBIG if "too large" in lowered else
          errno.EDQUOT if "quota" in lowered else
          errno.EACCES if "permission denied" in lowered else
          errno.EROFS if "read-only" in lowered else errno.EIO)
  return OSError(code, os.strerror(code), str(path))


def write_atomically(path, records: Iterable[Mapping]) -> int:
  """Writes records to `path` through a temporary file and a rename; returns the count.

  A reader sees either no file or the whole file. The temporary file is removed on every
  way out of this function (an error, a full disk, Ctrl-C); one left by a killed process
  is removed by `jobdir.files.remove_stale_temps`. A failed write raises OSError (with its errno).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  tmp = temp_path(path)
  n = 0
  try:
    try:
      with tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:
          writer.write(_serialize(record))
          n += 1
    except tf.errors.OpError as e:
      raise _tf_error_as_os_error(e, path) from None
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    discard(tmp)
  return n


def read_records(paths) -> list[dict]:
  """Reads annotation records back as dicts of Python values (for tests and tools)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = []
  for raw in tf.data.TFRecordDataset([str(p) for p in paths]).as_numpy_iterator():
    ex = tf.train.Example.FromString(raw)
    f = ex.features.feature
    rec = {k: f[k].bytes_list.value[0].decode("utf-8") for k in BYTES_FEATURES}
    rec.update({k: int(f[k].int64_list.value[0]) for k in INT_FEATURES})
    out.append(rec)
  return out
