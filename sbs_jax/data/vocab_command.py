"""`sbs vocab`: train the student's SentencePiece vocabulary on annotated train text."""

from __future__ import annotations

import json

from sbs_jax.data import vocab
from sbs_jax.data.sources import AnnotationSource

TEXT_FIELDS = ("input", "label", "llm_label", "rationale")


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "vocab", help="train a SentencePiece vocabulary on annotated train text",
      description="Trains a SentencePiece model (T5 ids: 0 pad, 1 EOS, 2 unk) on the inputs, "
      "labels and rationales of the train split (validation carve and test excluded).")
  p.add_argument("--annotation_dir", required=True)
  p.add_argument("--datasets", required=True, help="comma-separated, e.g. cqa,svamp")
  p.add_argument("--out", required=True, help="path of the .model file to write")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.set_defaults(func=main)


def train_texts(annotation_dir: str, datasets: list[str]):
  """Every non-empty text field of the train records of `datasets`, prefixes included."""
  yield from ("predict:", "explain:")
  for name in datasets:
    for record in AnnotationSource(name, annotation_dir).get_dataset("train").as_numpy_iterator():
      for field in TEXT_FIELDS:
        text = record[field].decode("utf-8")
        if text:
          yield text


def main(args) -> int:
  datasets = [d for d in args.datasets.split(",") if d]
  path = vocab.train_vocabulary(train_texts(args.annotation_dir, datasets), args.out,
                                vocab_size=args.vocab_size)
  size = vocab.sentencepiece_processor(str(path)).get_piece_size()
  print(json.dumps({"vocabulary": str(path), "pieces": size, "datasets": datasets}))
  return 0
