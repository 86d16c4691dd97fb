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
    sample       int64   which of the example's samples this is, 0 .. num_samples - 1
    num_samples  int64   the samples asked per example (`sbs annotate --num_samples`)
    vote_label   bytes   the example's majority label over its parsed samples ("" when
                         none parsed); the same in every record of the example
    vote_share   float32 the share of the example's samples, unparsable ones included,
                         that gave vote_label (0..1)
    kept         int64   1 when this sample's rationale is kept for training (by
                         `--keep`: all parsed ones, those matching gold, or the vote)

One record per (example, sample); with one sample (the default) vote_label is llm_label,
vote_share is 1 (0 when it did not parse) and kept is parse_ok. Records written before
these features existed read with their defaults (sample 0 of 1, kept 1, vote_label "",
vote_share 0): `feature_spec` and `read_records` fill them in, and the preprocessors treat
such a record as the one sample of its example, as before.

Files: `<out>/<dataset>/<split>.tfrecord-SSSSS-of-NNNNN`, records in (index, sample) order.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Mapping

from sbs_jax.jobdir.files import discard, temp_path

BYTES_FEATURES = ("id", "dataset", "split", "input", "label", "llm_label", "rationale",
                  "parse_error", "completion", "prompt_id", "teacher", "vote_label")
INT_FEATURES = ("index", "has_label", "parse_ok", "sample", "num_samples", "kept")
FLOAT_FEATURES = ("vote_share",)
# What a record written before a feature existed reads as (see the module doc).
DEFAULTS = {"vote_label": "", "sample": 0, "num_samples": 1, "kept": 1, "vote_share": 0.0}


def shard_name(split: str, shard_index: int, num_shards: int) -> str:
  return f"{split}.tfrecord-{shard_index:05d}-of-{num_shards:05d}"


def feature_spec():
  """The `tf.io.parse_single_example` spec of the schema (for SeqIO sources)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  kinds = ([(k, tf.string) for k in BYTES_FEATURES] + [(k, tf.int64) for k in INT_FEATURES]
           + [(k, tf.float32) for k in FLOAT_FEATURES])
  return {k: tf.io.FixedLenFeature([], dtype, default_value=DEFAULTS.get(k))
          for k, dtype in kinds}


def _serialize(record: Mapping) -> bytes:
  """A record as a tf.train.Example; features added to the schema later (DEFAULTS) may be
  left out, and are written with the value a reader gives them when absent."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  record = {**DEFAULTS, **record}
  feature = {}
  for k in BYTES_FEATURES:
    feature[k] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[record[k].encode("utf-8")]))
  for k in INT_FEATURES:
    feature[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(record[k])]))
  for k in FLOAT_FEATURES:
    feature[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(record[k])]))
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
  """Reads annotation records back as dicts of Python values (for tests and tools); a
  feature the record lacks (written before it existed) reads as its default."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = []
  for raw in tf.data.TFRecordDataset([str(p) for p in paths]).as_numpy_iterator():
    f = tf.train.Example.FromString(raw).features.feature
    rec = {}
    for k in BYTES_FEATURES:
      rec[k] = f[k].bytes_list.value[0].decode("utf-8") if k in f else DEFAULTS[k]
    for k in INT_FEATURES:
      rec[k] = int(f[k].int64_list.value[0]) if k in f else DEFAULTS[k]
    for k in FLOAT_FEATURES:
      rec[k] = float(f[k].float_list.value[0]) if k in f else DEFAULTS[k]
    out.append(rec)
  return out
