"""A trained student ready to answer: its model dir loaded on all devices, texts in, labels
(and rationales) out, in length-sorted bucketed batches split over the mesh's data axis.

Labels are decoded greedily (`label_mode` greedy), or, for a task whose labels are a closed
set, chosen by rank classification (`rank`): every candidate label of an input (the
task's label set as model.json records it: NLI's three words, or the choices the input
lists) is scored by its log-likelihood under the label task, and the most likely one is
the answer (ties: the first candidate listed).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from sbs_jax.annotate import benchmarks
from sbs_jax.annotate.answer_formats import NO_CHOICES, LabelSet
from sbs_jax.errors import SbsError
from sbs_jax.model.model_dir import ModelDir
from sbs_jax.serve import batching
from sbs_jax.task_kinds import RATIONALE_PREFIX
from sbs_jax.model import student as student_lib

log = logging.getLogger(__name__)
# The input length for model dirs whose model.json does not record the training run's
# (older dirs, `sbs import-hf` output): T5's pretraining length.
DEFAULT_MAX_INPUT_LENGTH = 512
LABEL_MODES = ("greedy", "rank")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How `sbs predict` decodes: rows per batch (over all devices), input and output lengths,
  and how labels are found (`label_mode`: greedy decoding, or rank classification)."""
  batch_size: int = 32
  max_input_length: int | None = None  # None: model.json's, else DEFAULT_MAX_INPUT_LENGTH
  label_decode_length: int = 64
  rationale_decode_length: int = 256
  label_mode: str = "greedy"

  def __post_init__(self):
    if self.label_mode not in LABEL_MODES:
      raise SbsError(f"--label_mode {self.label_mode!r}: expected one of "
                     f"{', '.join(LABEL_MODES)}")
    for name in ("batch_size", "label_decode_length", "rationale_decode_length"):
      if getattr(self, name) < 1:
        raise SbsError(f"--{name} must be at least 1, got {getattr(self, name)}")
    if self.max_input_length is not None and self.max_input_length < 2:
      raise SbsError(f"--max_input_length must be at least 2, got {self.max_input_length}")


def recorded_label_set(model_dir: str) -> LabelSet:
  """The closed label set model.json records for the model's task (what `sbs train`
  writes); one SbsError where it records none or an open one."""
  _, info = ModelDir(model_dir).read_info()
  if "label_set" not in info:
    raise SbsError(benchmarks.no_label_set(
        f"the model dir {model_dir} (its model.json records no label set: it was imported, "
        "or trained by an sbs from before label sets were recorded)"))
  found = LabelSet.from_json(info["label_set"])
  if not found.closed:
    raise SbsError(benchmarks.no_label_set(f"the task of the model dir {model_dir}"))
  return found


class Predictor:
  """A student, its parameters and vocabulary, decoding bucketed batches over its mesh.
  `label_set`: the candidates of `label_mode` rank (settings)."""

  def __init__(self, student, params, vocabulary, label_prefix: str,
               rationale_prefix: str = RATIONALE_PREFIX,
               settings: DecodeSettings = DecodeSettings(),
               max_input_length: int = DEFAULT_MAX_INPUT_LENGTH,
               label_set: LabelSet | None = None):
    if settings.label_mode == "rank" and not (label_set and label_set.closed):
      raise SbsError(benchmarks.no_label_set("this predictor (no closed label set given)"))
    self.label_set = label_set
    self.student, self.params, self.vocabulary = student, params, vocabulary
    self.label_prefix, self.rationale_prefix = label_prefix, rationale_prefix
    self.settings = settings
    self.max_input_length = settings.max_input_length or max_input_length
    self.batch_size = student_lib.decode_batch_size(student, settings.batch_size)
    self.buckets = batching.bucket_lengths(self.max_input_length)

  @classmethod
  def load(cls, model_dir: str, settings: DecodeSettings = DecodeSettings()) -> "Predictor":
    """A model dir's student on a (data, 1) mesh of every device of every host; inputs cut
    to --max_input_length, else model.json's, else DEFAULT_MAX_INPUT_LENGTH tokens."""
    import seqio  # pylint: disable=import-outside-toplevel
    label_set = recorded_label_set(model_dir) if settings.label_mode == "rank" else None
    student, params, info = student_lib.load_student(model_dir, mesh=(-1, 1))
    vocabulary = seqio.SentencePieceVocabulary(f"{model_dir}/{info['vocabulary']}",
                                               extra_ids=info.get("extra_ids", 0))
    return cls(student, params, vocabulary, info["label_prefix"],
               info.get("rationale_prefix", RATIONALE_PREFIX), settings,
               info.get("max_input_length") or DEFAULT_MAX_INPUT_LENGTH, label_set)

  def encode(self, texts: Sequence[str], prefix: str) -> list[batching.Encoded]:
    return [batching.encode(self.vocabulary, prefix + t, self.max_input_length)
            for t in texts]

  def decode(self, rows: Sequence[batching.Encoded], max_decode_length: int) -> list[str]:
    """Greedy texts for encoded inputs, in their order."""
    out: list[str] = [""] * len(rows)
    for positions, inputs in batching.length_sorted_batches(rows, self.batch_size,
                                                            self.buckets):
      ids = student_lib.decode(self.student, self.params, inputs, self.batch_size,
                            max_decode_length)
      for position, row in zip(positions, ids):
        out[position] = student_lib.detokenize(self.vocabulary, row)
    return out

  def rank(self, texts: Sequence[str], rows: Sequence[batching.Encoded]) -> list[str]:
    """The most likely candidate label of each text (`rows`: the texts encoded with the
    label prefix), in their order; ties go to the first candidate."""
    candidates = [self.label_set.candidates(text) for text in texts]
    for i, found in enumerate(candidates):
      if not found:
        raise SbsError(f"input {i + 1} {NO_CHOICES}")
    out: list[str] = [""] * len(rows)
    for positions, inputs in batching.length_sorted_batches(rows, self.batch_size,
                                                            self.buckets):
      labels = student_lib.rank(self.student, self.params, self.vocabulary, inputs,
                                [candidates[p] for p in positions], self.batch_size)
      for position, label in zip(positions, labels):
        out[position] = label
    return out

  def predict(self, texts: Sequence[str], rationale: bool = False) -> list[dict]:
    """{"label", "truncated", "input_tokens"[, "rationale"]} for each text, in order.

    `truncated`: the input (with its task prefix) was longer than `max_input_length`
    tokens and was cut to fit; `input_tokens` is its length before the cut.
    """
    encoded = self.encode(texts, self.label_prefix)
    if self.settings.label_mode == "rank":
      labels = self.rank(texts, encoded)
    else:
      labels = self.decode(encoded, self.settings.label_decode_length)
    outputs = [{"label": label, "truncated": e.truncated, "input_tokens": e.tokens}
               for label, e in zip(labels, encoded)]
    if rationale:
      explained = self.decode(self.encode(texts, self.rationale_prefix),
                              self.settings.rationale_decode_length)
      for out, text in zip(outputs, explained):
        out["rationale"] = text
    return outputs


def predict_labels(student, params, vocabulary, texts: list[str], label_prefix: str,
                   max_decode_length: int = 64) -> list[str]:
  """Greedy label predictions for raw input texts with an already loaded student."""
  settings = DecodeSettings(batch_size=max(len(texts), 1), label_decode_length=max_decode_length)
  predictor = Predictor(student, params, vocabulary, label_prefix, settings=settings)
  return [out["label"] for out in predictor.predict(texts)]
