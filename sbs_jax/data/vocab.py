"""The student's vocabulary: a SentencePiece model, set by path in gin, trained offline here.

`sbs vocab` trains one on the annotated *train* inputs, labels and rationales (never on
validation or test text), with T5's special ids: 0 pad, 1 EOS, 2 unknown, no BOS. T5's own
32k vocabulary works the same way by path (`vocabulary_settings.path`, `extra_ids = 100`).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Iterable

import gin
import seqio

from sbs_jax.errors import DataError
from sbs_jax.paths import check_output_path

VOCAB_ENV = "SBS_VOCAB"
ANNOTATION_DIR_ENV = "SBS_ANNOTATION_DIR"
DEFAULT_VOCAB = "runs/demo/vocab/spm.model"
DEFAULT_ANNOTATION_DIR = "runs/demo/annotations"
# The annotation fields a vocabulary is trained on.
TEXT_FIELDS = ("input", "label", "llm_label", "rationale")


@gin.configurable
def vocabulary_settings(path: str | None = None, extra_ids: int = 0) -> tuple[str, int]:
  """The SentencePiece model path (gin, else $SBS_VOCAB, else the demo's) and extra ids."""
  return path or os.environ.get(VOCAB_ENV) or DEFAULT_VOCAB, extra_ids


@gin.configurable
def annotation_dir(path: str | None = None) -> str:
  """Where `sbs annotate` wrote the records (gin, else $SBS_ANNOTATION_DIR, else the demo's)."""
  return path or os.environ.get(ANNOTATION_DIR_ENV) or DEFAULT_ANNOTATION_DIR


def sentencepiece_processor(path):
  """The SentencePiece model at `path` (local or gs://), or one DataError naming the file."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    if not tf.io.gfile.exists(str(path)):
      raise DataError(path, "no such SentencePiece model file")
    with tf.io.gfile.GFile(str(path), "rb") as f:
      proto = f.read()
  except tf.errors.OpError as e:  # e.g. gs:// unreachable, after TensorFlow's retries
    first = str(e.message).strip().splitlines()[0][:200] if str(e.message).strip() else ""
    raise DataError(path, f"cannot read the vocabulary ({first}); point to a copy you can "
                    "reach") from None
  try:
    return spm.SentencePieceProcessor(model_proto=proto)
  except Exception as e:  # pylint: disable=broad-except  # protobuf DecodeError, RuntimeError
    raise DataError(path, f"not a SentencePiece model ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:120] if str(e) else ''}): point to the .model "
                    "file that `sbs vocab` (or spm_train) wrote") from None


class ConfiguredVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose path is read from `vocabulary_settings` at first use.

  Tasks are registered when `tasks` is imported, which in T5X happens while gin files are
  still being parsed; reading the path only when the model is first needed lets a binding
  anywhere in the gin files apply.
  """

  def __init__(self):
    super().__init__(sentencepiece_model_file="", extra_ids=0)

  def _model_context(self):
    if self._model is None:
      path, extra_ids = vocabulary_settings()
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      if not tf.io.gfile.exists(path):
        raise DataError(path, f"no SentencePiece model: run `sbs vocab --out {path}`, set "
                        f"${VOCAB_ENV}, or bind vocabulary_settings.path in gin")
      sentencepiece_processor(path)  # a damaged file: one error naming it
      self._sentencepiece_model_file = path
      self._extra_ids = extra_ids
    return super()._model_context()

  @property
  def extra_ids(self) -> int:
    self._model_context()
    return self._extra_ids

  def _settings(self) -> tuple[str, int]:
    """The file and extra ids: those loaded, else those configured now (nothing loaded)."""
    if self._model is not None:
      return self._sentencepiece_model_file, self._extra_ids
    return vocabulary_settings()

  @property
  def sentencepiece_model_file(self) -> str:
    return self._settings()[0]

  def __eq__(self, other):
    # seqio compares the stored settings (T5X requires the model's and the tasks'
    # vocabularies to be equal): compare the configured ones, not the empty placeholder.
    if not isinstance(other, seqio.SentencePieceVocabulary):
      return False
    return _comparable_state(self) == _comparable_state(other)

  __hash__ = None  # as seqio's: equal vocabularies need not hash alike


def _comparable_state(vocabulary: seqio.SentencePieceVocabulary) -> dict:
  """seqio's equality state, with a ConfiguredVocabulary's settings resolved."""
  state = vocabulary.__getstate__()
  if isinstance(vocabulary, ConfiguredVocabulary):
    settings = vocabulary._settings()  # pylint: disable=protected-access
    state["_sentencepiece_model_file"], state["_extra_ids"] = settings
  return state


def _without_temp_paths(model: bytes) -> bytes:
  """The model with the trainer's corpus and output paths (this run's temporary folder)
  cleared: the same texts and settings then give the same bytes, so a vocabulary trained
  again (another machine, a fresh checkout) matches the sha256 a sweep or run pinned."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model)
  del proto.trainer_spec.input[:]
  proto.trainer_spec.model_prefix = ""
  return proto.SerializeToString()


def train_vocabulary(texts: Iterable[str], out_path, vocab_size: int = 8000,
                     model_type: str = "unigram") -> pathlib.Path:
  """Trains a SentencePiece model with T5's special ids; returns the .model path (local, or
  gs://: one object, which appears whole or not at all)."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  remote = "://" in str(out_path)
  out_path = str(out_path) if remote else pathlib.Path(out_path)
  if not str(out_path).endswith(".model"):
    raise DataError(out_path, "the vocabulary path must end in .model")
  check_output_path(out_path, "the vocabulary path")
  with tempfile.TemporaryDirectory() as tmp:
    corpus = pathlib.Path(tmp) / "corpus.txt"
    n = 0
    with open(corpus, "w", encoding="utf-8") as f:
      for text in texts:
        for line in text.splitlines():
          if line.strip():
            f.write(line.strip() + "\n")
            n += 1
    if n == 0:
      raise DataError(out_path, "no text to train a vocabulary on")
    prefix = pathlib.Path(tmp) / "spm"
    try:
      spm.SentencePieceTrainer.train(
          input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size,
          model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
          character_coverage=1.0, byte_fallback=True, split_digits=True,
          hard_vocab_limit=False, num_threads=2, minloglevel=2,
          input_sentence_size=2_000_000, shuffle_input_sentence=False)
    except RuntimeError as e:  # e.g. a vocab_size below the 256 byte pieces + characters
      raise DataError(out_path, f"SentencePiece training failed: {e}") from None
    model = _without_temp_paths(prefix.with_suffix(".model").read_bytes())
    if remote:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      with tf.io.gfile.GFile(out_path, "wb") as f:
        f.write(model)
      return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)  # only now: a failure leaves no dir
    tmp_model = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
      tmp_model.write_bytes(model)
      os.replace(tmp_model, out_path)
    finally:  # a full disk or a size limit leaves no partial file behind
      tmp_model.unlink(missing_ok=True)
  return out_path


def train_texts(annotation_dir: str, datasets: list[str]):
  """Every non-empty text field of the train records of `datasets`, prefixes included; an
  example's input and labels once (its sample 0), each further sample's rationale alone."""
  # pylint: disable-next=import-outside-toplevel  (TensorFlow loads only here)
  from sbs_jax.data.sources import AnnotationSource
  yield from ("predict:", "explain:")
  for name in datasets:
    for record in AnnotationSource(name, annotation_dir).get_dataset("train").as_numpy_iterator():
      for field in TEXT_FIELDS if record["sample"] == 0 else ("rationale",):
        text = record[field].decode("utf-8")
        if text:
          yield text


def tokens_per_word(processor, texts: list[str]) -> float:
  """Mean SentencePiece tokens per whitespace-separated word over `texts`."""
  words = sum(len(t.split()) for t in texts)
  return sum(len(processor.encode(t)) for t in texts) / max(words, 1)
