"""The SeqIO tasks over records with several samples per example, and over one sample: one
label row per example, a rationale row per kept rationale, the vote as the teacher's
label; with one sample and `--keep all`, exactly what the tasks gave before samples
existed (records of the old schema, and the preprocessors as they were)."""

import argparse
import importlib.util
import pathlib
import subprocess

import pytest
import seqio
import tensorflow as tf

import tasks
from sbs_jax import task_kinds
from sbs_jax.annotate import build
from sbs_jax.annotate import job as job_lib
from sbs_jax.commands import annotate as annotate_command
from sbs_jax.data import preprocessors as pp
from sbs_jax.data import records
from sbs_jax.data.sources import AnnotationSource
from sbs_jax.train.data import split_size
from tests.helpers import REPO
from tests.helpers.data import SAMPLED_ROWS, write_jsonl
from tests.helpers.registry import forget


@pytest.fixture(autouse=True)
def _forget_rows():
  """The tests here register a dataset "rows" (again); none is left for later files."""
  yield
  forget("rows")


VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 128, "targets": 128}
# The commit before samples existed: its preprocessors are the "before".
BEFORE_SAMPLES = "0a33104"

ONE_SAMPLE_ROWS = [
    {"input": "2+2?", "label": "4", "out": "Add them. So the answer is 4."},
    {"input": "3+3?", "label": "6", "out": "Add. So the answer is 7."},
    {"input": "Sky?", "out": "Look up. So the answer is blue.\n\nQ: next"},
    {"input": "??", "label": "x", "out": "garbage"},
    {"input": "7-2?", "label": "5", "out": "So the answer is 5."},  # an empty rationale
]


def annotate(rows, out, *extra):
  data = write_jsonl(out.parent / "rows.jsonl", rows)
  parser = argparse.ArgumentParser()
  annotate_command.add_parser(parser.add_subparsers())
  for split in ("train", "valid"):  # a valid file: train is then every train record
    args = parser.parse_args(["annotate", "--dataset", f"jsonl:{data}", "--teacher", "replay",
                              "--completion_key", "out", "--out_dir", str(out), "--split",
                              split, "--no_progress", *extra])
    job_lib.run(build.build_job(args))
  return out


def task_rows(kind: str, split: str) -> list[dict]:
  task = seqio.get_mixture_or_task(task_kinds.task_name("rows", kind))
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False)
  return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def texts(rows):
  return [(r["task"][0] if isinstance(r["task"], list) else r["task"],
           r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode())
          for r in rows]


def test_several_samples_one_label_row_per_example(tmp_path):
  tasks.register_dataset("rows", annotate(SAMPLED_ROWS, tmp_path / "ann", "--keep", "vote"),
                         vocabulary=VOCAB)
  gold = [t for _, _, t in texts(task_rows("label_gt", "train"))]
  assert gold == ["4", "6", "10", "1"]  # one per labeled example, not one per sample
  # The teacher's label of an example is its vote (no vote, no row: 1*1 never parsed).
  assert [t for _, _, t in texts(task_rows("label_llm", "train"))] == ["4", "7", "10",
                                                                      "blue"]
  assert [i for _, i, _ in texts(task_rows("standard_llm", "train"))] == [
      "2+2?", "3+3?", "5+5?", "Sky?"]
  # Every kept rationale (by the vote), none of the others; blank ones never.
  assert [t for _, _, t in texts(task_rows("rationale", "train"))] == [
      "R00.", "R02.", "R10.", "R21.", "R22.", "R30.", "R32."]
  paired = task_rows("distill_llm_paired", "train")
  assert texts(paired) == [
      (pp.LABEL, "predict: 2+2?", "4"), (pp.RATIONALE, "explain: 2+2?", "R02."),
      (pp.LABEL, "predict: 3+3?", "7"), (pp.LABEL, "predict: 5+5?", "10"),
      (pp.RATIONALE, "explain: 5+5?", "R21."), (pp.RATIONALE, "explain: 5+5?", "R22."),
      (pp.LABEL, "predict: Sky?", "blue"), (pp.RATIONALE, "explain: Sky?", "R32.")]

  def part(row, which):
    return VOCAB.decode([t for t, p in zip(row["targets"], row["targets_part"]) if p == which
                         and t != VOCAB.eos_id])

  assert [(part(r, pp.LABEL), part(r, pp.RATIONALE)) for r in paired] == [
      ("4", "R00."), ("", "R02."), ("7", "R10."), ("10", ""), ("", "R21."), ("", "R22."),
      ("blue", "R30."), ("", "R32.")]
  # The trainer's count of a split (which skips tokenizing) is the number of task rows,
  # not of records: 4 label rows and 7 rationale rows from the samples' records.
  for kind in ("label_gt", "label_llm", "standard_llm", "rationale", "distill_llm_paired"):
    task = seqio.get_mixture_or_task(task_kinds.task_name("rows", kind))
    assert split_size(task, "train") == len(task_rows(kind, "train")), kind
  assert split_size(seqio.get_mixture_or_task("sbs_rows_rationale"), "train") == 7
  # Gold labels: 1*1 has its label row alone; Sky? (no gold) gives nothing.
  assert [(t, i.split(" ")[1]) for t, i, _ in texts(task_rows("distill_gt_paired", "train"))
          ] == [(1, "2+2?"), (2, "2+2?"), (1, "3+3?"), (1, "5+5?"), (2, "5+5?"), (2, "5+5?"),
                (1, "1*1?")]
  # Evaluation splits: one example each, scored on gold where there is one.
  assert texts(task_rows("distill_llm_paired", "validation")) == [
      (pp.LABEL, f"predict: {r['input']}", r.get("label", "blue")) for r in SAMPLED_ROWS]
  assert [t for _, _, t in texts(task_rows("label_llm", "validation"))] == [
      "4", "6", "10", "blue", "1"]


def rewrite_in_old_schema(src: pathlib.Path, dst: pathlib.Path) -> None:
  """The records again, with only the features records had before samples existed."""
  old_bytes = [k for k in records.BYTES_FEATURES if k != "vote_label"]
  old_ints = ("index", "has_label", "parse_ok")
  for path in src.rglob("*.tfrecord-*"):
    target = dst / path.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
      for rec in records.read_records([path]):
        feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[rec[k].encode()])) for k in old_bytes}
        feature.update({k: tf.train.Feature(int64_list=tf.train.Int64List(value=[rec[k]]))
                        for k in old_ints})
        writer.write(tf.train.Example(features=tf.train.Features(
            feature=feature)).SerializeToString())


def every_task_output(annotation_dir) -> dict:
  tasks.register_dataset("rows", str(annotation_dir), vocabulary=VOCAB)
  return {(kind.name, split): task_rows(kind.name, split)
          for kind in task_kinds.KINDS.values() if kind.structure != "mixture"
          for split in ("train", "validation")}


def test_one_sample_keep_all_gives_what_the_tasks_gave_before(tmp_path):
  new = annotate(ONE_SAMPLE_ROWS, tmp_path / "ann")
  assert {r["kept"] for r in records.read_records(new.rglob("*.tfrecord-*"))} == {0, 1}
  rewrite_in_old_schema(new, tmp_path / "old")
  now = every_task_output(new)
  assert sum(len(v) for v in now.values()) > 30
  assert every_task_output(tmp_path / "old") == now
  assert [t for _, _, t in texts(now["rationale", "train"])] == ["Add them.", "Add.",
                                                                 "Look up."]


def test_one_sample_against_the_preprocessors_before_samples(tmp_path):
  """The preprocessors of the commit before samples, run on the same new records."""
  try:
    source = subprocess.run(["git", "show", f"{BEFORE_SAMPLES}:sbs_jax/data/preprocessors.py"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip(f"no git history with {BEFORE_SAMPLES} here")
  path = tmp_path / "preprocessors_before.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location("preprocessors_before", path)
  before = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(before)
  out = annotate(ONE_SAMPLE_ROWS, tmp_path / "ann")
  features = {"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}
  steps = [lambda m, ds: m.label_examples(ds, "label"),
           lambda m, ds: m.label_examples(ds, "llm_label", prefix=""),
           lambda m, ds: m.rationale_examples(ds),
           lambda m, ds: m.paired_examples(ds, features, "label"),
           lambda m, ds: m.paired_examples(ds, features, "llm_label")]
  source = AnnotationSource("rows", out)
  compared = 0
  for split in ("train", "validation"):
    for step in steps:
      a, b = (list(step(m, source.get_dataset(split, shuffle=False)).as_numpy_iterator())
              for m in (before, pp))
      assert len(a) == len(b)
      for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
          assert tf.reduce_all(tf.equal(x[k], y[k])), (split, k)
      compared += len(a)
  assert compared > 20
