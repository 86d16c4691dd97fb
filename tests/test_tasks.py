"""The registered tasks and mixtures on the real annotated data."""

import numpy as np
import pytest
import seqio

import tasks
from sbs_jax.data.features import DistillFeatureConverter
from sbs_jax.data.preprocessors import LABEL, RATIONALE
from sbs_jax.data.sources import AnnotationSource
from sbs_jax.train.data import split_size

DATASETS = ("cqa", "svamp", "esnli", "anli1")
LENGTHS = {"inputs": 256, "targets": 128}


def batches(name, split, seed=0, pack=True, lengths=LENGTHS, n=2, batch_size=4, shuffle=True):
  ds = seqio.get_dataset(name, task_feature_lengths=lengths, dataset_split=split,
                         shuffle=shuffle, seed=seed, num_epochs=1,
                         feature_converter=DistillFeatureConverter(pack=pack))
  return list(ds.batch(batch_size).take(n).as_numpy_iterator())


def test_import_registers_every_name():
  for ds in DATASETS:
    for kind, name in tasks.task_names(ds).items():
      registry = seqio.MixtureRegistry if kind in ("distill_gt", "distill_llm") else (
          seqio.TaskRegistry)
      assert name in registry.names(), name


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_task_and_mixture_yields_batches(annotated, dataset):
  # esnli's train split is not in the released data here: its tasks use valid and test.
  train = "validation" if dataset == "esnli" else "train"
  names = tasks.task_names(dataset)
  runs = [(kind, name, train) for kind, name in names.items()]
  runs += [("label_gt", names["label_gt"], "test"),
           ("distill_llm", names["distill_llm"], "test")]
  for kind, name, split in runs:
    # In file order: the shapes and task ids asked here do not depend on the order, and
    # filling the shuffle buffer (1,000 tokenized examples per name) tripled the time.
    # test_same_seed_same_batches reads shuffled batches.
    got = batches(name, split, n=1, shuffle=False)
    assert got, (name, split)
    b = got[0]
    assert b["encoder_input_tokens"].shape[1:] == (LENGTHS["inputs"],)
    assert (b["decoder_loss_weights"].sum(axis=1) > 0).all()
    task_ids = set(np.unique(b["decoder_task_ids"])) - {0}
    if kind == "rationale":
      assert task_ids == {RATIONALE}, name
    elif kind.startswith("distill"):
      assert task_ids == {LABEL, RATIONALE}, (name, split)
    else:
      assert task_ids == {LABEL}, name


def test_same_seed_same_batches(annotated):
  a = batches("sbs_cqa_distill_llm", "train", seed=3)
  b = batches("sbs_cqa_distill_llm", "train", seed=3)
  c = batches("sbs_cqa_distill_llm", "train", seed=4)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["encoder_input_tokens"], z["encoder_input_tokens"])
             for x, z in zip(a, c))


def _ids(name, split):
  task = seqio.get_mixture_or_task(name)
  return [r["id"] for r in task.source.get_dataset(split).as_numpy_iterator()]


def test_validation_is_carved_from_train_where_no_valid_file(annotated):
  train = set(_ids("sbs_cqa_label_gt", "train"))
  val = set(_ids("sbs_cqa_label_gt", "validation"))
  assert not train & val
  assert len(train) + len(val) == 9741
  assert 0.09 < len(val) / 9741 < 0.11
  # esnli has its own valid file: validation is all of it.
  assert len(_ids("sbs_esnli_label_gt", "validation")) == 9842


def test_train_fractions_are_nested_and_deterministic(annotated):
  full = _ids("sbs_cqa_label_gt", "train")
  sizes = {}
  previous = set(full)
  for split, frac in (("train_50", .5), ("train_25", .25), ("train_12.5", .125)):
    ids = _ids("sbs_cqa_label_gt", split)
    assert ids == _ids("sbs_cqa_label_gt", split)
    assert set(ids) <= previous
    assert abs(len(ids) / len(full) - frac) < 0.02
    previous, sizes[split] = set(ids), len(ids)
  other_seed = AnnotationSource("cqa", annotated, subsample_seed=1)
  other = [r["id"] for r in other_seed.get_dataset("train_25").as_numpy_iterator()]
  assert set(other) != set(_ids("sbs_cqa_label_gt", "train_25"))


@pytest.mark.parametrize("dataset", ["svamp", "anli1"])  # a carved and an own validation
def test_counts_without_tokenizing_equal_the_pipelines(annotated, dataset):
  """The source's record counts (ids only) and the trainer's task counts (the steps before
  tokenizing) equal what the pipelines yield, in every split."""
  names = tasks.task_names(dataset)
  source = seqio.get_mixture_or_task(names["label_gt"]).source
  fresh = AnnotationSource(dataset, annotated)  # nothing counted yet
  for split in ("train", "train_25", "validation", "test"):
    assert fresh.num_input_examples(split) == sum(1 for _ in source.get_dataset(split)), split
    for kind in ("label_gt", "label_llm", "rationale", "distill_llm_paired"):
      task = seqio.get_mixture_or_task(names[kind])
      full = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
      assert split_size(task, split) == sum(1 for _ in full), (kind, split)


def _pretokenized(name, split, n=50):
  ds = seqio.get_dataset(name, task_feature_lengths=LENGTHS, dataset_split=split,
                         shuffle=False, feature_converter=seqio.PassThroughFeatureConverter())
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in ds.take(n).as_numpy_iterator()]


def test_label_llm_trains_on_teacher_labels_and_is_scored_on_gold(annotated):
  source = seqio.get_mixture_or_task("sbs_cqa_label_llm").source
  test_gold = [r["label"].decode() for r in source.get_dataset("test").as_numpy_iterator()]
  assert [t for _, t in _pretokenized("sbs_cqa_label_llm", "test")] == test_gold[:50]
  train_llm = [r["llm_label"].decode() for r in source.get_dataset("train").as_numpy_iterator()
               if r["parse_ok"]]
  assert [t for _, t in _pretokenized("sbs_cqa_label_llm", "train")] == train_llm[:50]
  assert train_llm[:50] != [r["label"].decode() for r in source.get_dataset(
      "train").as_numpy_iterator() if r["parse_ok"]][:50]


def test_prefixes(annotated):
  (label_in, _), = _pretokenized("sbs_svamp_label_gt", "test", 1)
  (rat_in, rat_out), = _pretokenized("sbs_svamp_rationale", "test", 1)
  (std_in, _), = _pretokenized("sbs_svamp_standard_llm", "test", 1)
  assert label_in.startswith("predict: ") and rat_in.startswith("explain: ")
  assert std_in == label_in[len("predict: "):]
  assert "The answer is" not in rat_out and rat_out


def test_rationale_task_leaves_out_unparsed_records(annotated):
  source = seqio.get_mixture_or_task("sbs_svamp_rationale").source
  records = list(source.get_dataset("test").as_numpy_iterator())
  unparsed = sum(1 for r in records if not r["parse_ok"])
  assert unparsed == 7
  assert len(_pretokenized("sbs_svamp_rationale", "test", 1000)) == len(records) - unparsed


def test_packed_cqa_train_fills_rows(annotated):
  ds = seqio.get_dataset("sbs_cqa_distill_llm_paired",
                         task_feature_lengths=tasks.DEFAULT_FEATURE_LENGTHS,
                         dataset_split="train", shuffle=True, seed=0, num_epochs=1,
                         feature_converter=DistillFeatureConverter(pack=True))
  enc = dec = rows = 0
  for ex in ds.as_numpy_iterator():
    rows += 1
    enc += (ex["encoder_input_tokens"] != 0).sum()
    dec += (ex["decoder_target_tokens"] != 0).sum()
  enc_fill = enc / (rows * tasks.DEFAULT_FEATURE_LENGTHS["inputs"])
  dec_fill = dec / (rows * tasks.DEFAULT_FEATURE_LENGTHS["targets"])
  print(f"CQA train packed: {rows} rows, encoder {enc_fill:.3f}, decoder {dec_fill:.3f}")
  assert enc_fill >= 0.85 and dec_fill >= 0.85
