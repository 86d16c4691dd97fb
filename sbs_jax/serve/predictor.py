"""A trained student ready to answer: its model dir loaded on all devices, texts in, labels
(and rationales) out, in length-sorted bucketed batches split over the mesh's data axis."""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from sbs_jax.errors import SbsError
from sbs_jax.serve import batching
from sbs_jax.task_kinds import RATIONALE_PREFIX
from sbs_jax.model import student as student_lib

log = logging.getLogger(__name__)
# The input length for model dirs whose model.json does not record the training run's
# (older dirs, `sbs import-hf` output): T5's pretraining length.
DEFAULT_MAX_INPUT_LENGTH = 512


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How `sbs predict` decodes: rows per batch (over all devices), input and output lengths."""
  batch_size: int = 32
  max_input_length: int | None = None  # None: model.json's, else DEFAULT_MAX_INPUT_LENGTH
  label_decode_length: int = 64
  rationale_decode_length: int = 256

  def __post_init__(self):
    for name in ("batch_size", "label_decode_length", "rationale_decode_length"):
      if getattr(self, name) < 1:
        raise SbsError(f"--{name} must be at least 1, got {getattr(self, name)}")
    if self.max_input_length is not None and self.max_input_length < 2:
      raise SbsError(f"--max_input_length must be at least 2, got {self.max_input_length}")


class Predictor:
  """A student, its parameters and vocabulary, decoding bucketed batches over its mesh."""

  def __init__(self, student, params, vocabulary, label_prefix: str,
               rationale_prefix: str = RATIONALE_PREFIX,
               settings: DecodeSettings = DecodeSettings(),
               max_input_length: int = DEFAULT_MAX_INPUT_LENGTH):
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
    student, params, info = student_lib.load_student(model_dir, mesh=(-1, 1))
    vocabulary = seqio.SentencePieceVocabulary(f"{model_dir}/{info['vocabulary']}",
                                               extra_ids=info.get("extra_ids", 0))
    return cls(student, params, vocabulary, info["label_prefix"],
               info.get("rationale_prefix", RATIONALE_PREFIX), settings,
               info.get("max_input_length") or DEFAULT_MAX_INPUT_LENGTH)

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

  def predict(self, texts: Sequence[str], rationale: bool = False) -> list[dict]:
    """{"label", "truncated", "input_tokens"[, "rationale"]} for each text, in order.

    `truncated`: the input (with its task prefix) was longer than `max_input_length`
    tokens and was cut to fit; `input_tokens` is its length before the cut.
    """
    encoded = self.encode(texts, self.label_prefix)
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
